//! The RPC socket's front door: dmabufd accepts connections itself and
//! hands each admitted one to rsbinder's server as an already-connected
//! transport ([`RpcServer::serve_connection`]).
//!
//! rsbinder's own accept loop has a total cap (`set_max_connections`,
//! which stops accepting and leaves everyone, new clients included, in the
//! listen backlog), an authorizer hook that sees a peer but never its
//! connection's end (so per-uid counts cannot be kept with it), and an idle
//! timeout only on the android-13+ wire (dmabufd's clients speak the r34
//! wire). Hence this gate, in front and without patching rsbinder:
//!
//! - **Admission** ([`Admission`]): per uid and in total, with a reserve
//!   for uids holding no connection; a refused connection is closed at once
//!   and logged in one rate-limited line ([`RefusalLog`]).
//! - **Counting**: each admitted connection carries a [`Slot`] inside its
//!   transport ([`GatedTransport`]); rsbinder drops the transport when the
//!   session ends, which frees the slot.
//! - **Idle timeout**: the transport caps every read and write deadline
//!   rsbinder asks for (including "none") at the idle timeout, so a
//!   connection that sends nothing for that long ends its session.
//! - **Caller pid**: the pid an RPC call reports is the connection's
//!   opener, from `SO_PEERCRED` at connect. [`GatedTransport`] records the
//!   opener's start time and marks the serving thread with it
//!   ([`current_peer`]), so the service can tell when that pid no longer
//!   names the opener ([`RpcPeer::opener_alive`]).
//!
//! rsbinder's own listener is bound in a private directory and unlinked at
//! once: nobody can reach it, and its accept loop is never run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rsbinder::rpc::{FileDescriptorTransportMode, PeerIdentity, RpcServer, RpcTransport};
use rsbinder::SIBinder;

use crate::config::RpcConfig;

/// rsbinder's default bound on a connection's handshake; the idle timeout
/// lowers it when shorter.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one refusal line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Who holds how many connections, and the rules to admit one more.
pub struct Admission {
    limits: RpcConfig,
    /// Exempt from the per-uid cap (root and the privileged uids).
    privileged: Vec<u32>,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Why a connection was refused (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub uid: u32,
    /// Connections the uid held.
    pub held: usize,
    /// Connections open in all.
    pub total: usize,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uid {} holds {} connection(s), {} open in all: {}",
            self.uid, self.held, self.total, self.reason
        )
    }
}

/// One admitted connection's place in the counts; freed on drop.
pub struct Slot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: RpcConfig, privileged: Vec<u32>) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            privileged,
            state: Mutex::new(Counts::default()),
        })
    }

    fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || self.privileged.contains(&uid)
    }

    /// Admits one more connection of `uid`, or says why not:
    /// - never more than `max_connections` in all;
    /// - never more than `max_connections_per_uid` of one uid, unless
    ///   privileged;
    /// - the last `reserved_connections` only to a uid that holds none,
    ///   so a new client always finds a place while the others sit at their
    ///   caps (privileged uids included: the reserve is for newcomers).
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let l = &self.limits;
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = c.per_uid.get(&uid).copied().unwrap_or(0);
        let refuse = |reason: String| Refusal {
            uid,
            held,
            total: c.total,
            reason,
        };
        if c.total >= l.max_connections {
            return Err(refuse(format!(
                "the total limit rpc.max_connections = {} is reached",
                l.max_connections
            )));
        }
        if held >= l.max_connections_per_uid && !self.is_privileged(uid) {
            return Err(refuse(format!(
                "the per-uid limit rpc.max_connections_per_uid = {} is reached",
                l.max_connections_per_uid
            )));
        }
        let unreserved = l.max_connections - l.reserved_connections;
        if c.total >= unreserved && held > 0 {
            return Err(refuse(format!(
                "only the {} connections of rpc.reserved_connections are left (of \
                 rpc.max_connections = {}), kept for uids that hold none",
                l.max_connections - c.total,
                l.max_connections
            )));
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            admission: self.clone(),
            uid,
        })
    }

    /// (total, connections of `uid`).
    pub fn counts(&self, uid: u32) -> (usize, usize) {
        let c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.per_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// Logs refusals at most once per [`REFUSAL_LOG_INTERVAL`], each line
/// with the number left unlogged since the previous one: a flood of
/// connections cannot flood the log.
#[derive(Default)]
pub struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// The line to log for this refusal, or None while rate-limited.
    pub fn line(&self, now: Instant, what: &str) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *s;
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            *suppressed += 1;
            return None;
        }
        let more = match *suppressed {
            0 => String::new(),
            n => format!(" ({n} more refused since the last such line, not logged)"),
        };
        *last = Some(now);
        *suppressed = 0;
        Some(format!("RPC connection refused: {what}{more}"))
    }

    fn log(&self, what: &str) {
        if let Some(l) = self.line(Instant::now(), what) {
            log::warn!("{l}");
        }
    }
}

/// The process that opened an RPC connection, as the service accepted it.
#[derive(Debug, Clone)]
pub struct RpcPeer {
    pub uid: u32,
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22) at accept; None when
    /// unreadable (then it is never taken for alive).
    pub start_time: Option<u64>,
    /// `/proc/<pid>/stat`, opened at accept and kept for the connection: it
    /// stays bound to that process, so a read fails once the process is
    /// reaped (even if its pid is recycled), and each call's check is one
    /// `pread` instead of an open, a stat, several reads and a close.
    stat: Option<Arc<std::fs::File>>,
}

impl RpcPeer {
    pub fn at_accept(uid: u32, pid: i32) -> RpcPeer {
        let stat = (pid > 0)
            .then(|| std::fs::File::open(format!("/proc/{pid}/stat")).ok())
            .flatten()
            .map(Arc::new);
        let start_time = stat.as_deref().and_then(read_stat).map(|(start, _)| start);
        RpcPeer {
            uid,
            pid,
            start_time,
            stat,
        }
    }

    /// Whether `pid` still names the process that opened the connection:
    /// its stat file still reads (the process is not reaped), with the same
    /// start time, and it has not exited (a zombie is gone).
    pub fn opener_alive(&self) -> bool {
        match (self.start_time, self.stat.as_deref().and_then(read_stat)) {
            (Some(then), Some((now, state))) => then == now && !matches!(state, 'Z' | 'X' | 'x'),
            _ => false,
        }
    }
}

/// (start time, state) from an open `/proc/<pid>/stat`, read in one call.
fn read_stat(file: &std::fs::File) -> Option<(u64, char)> {
    use std::os::unix::fs::FileExt;
    // The line is at most a few hundred bytes (52 numbers and a 15-byte
    // command); procfs hands it out whole from offset 0.
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_stat(std::str::from_utf8(&buf[..n]).ok()?)
}

/// Fields after the command (which may hold spaces and parentheses): state
/// is field 3, start time field 22.
fn parse_stat(stat: &str) -> Option<(u64, char)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // Field 3 was taken; field 22 is 19 further on.
    let start = f.nth(18)?.parse().ok()?;
    Some((start, state))
}

thread_local! {
    /// The connection the current thread serves (rsbinder runs each RPC
    /// connection's calls on the thread that reads it).
    static CURRENT: RefCell<Option<Arc<RpcPeer>>> = const { RefCell::new(None) };
}

/// The opener of the RPC connection whose call this thread is running, if
/// it runs one (None on kernel binder threads).
pub fn current_peer() -> Option<Arc<RpcPeer>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// An admitted connection: rsbinder's Unix transport with the slot it
/// holds, deadlines capped at the idle timeout, and its opener recorded.
pub struct GatedTransport {
    inner: rsbinder::rpc::transport::UnixTransport,
    idle: Duration,
    peer: Arc<RpcPeer>,
    _slot: Slot,
}

impl GatedTransport {
    fn cap(&self, t: Option<Duration>) -> Option<Duration> {
        Some(t.map_or(self.idle, |t| t.min(self.idle)))
    }

    fn mark_thread(&self) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if !c.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.peer)) {
                *c = Some(self.peer.clone());
            }
        });
    }
}

type RpcResult<T> = rsbinder::rpc::RpcResult<T>;

impl RpcTransport for GatedTransport {
    fn send_frame(&self, buf: &[u8]) -> RpcResult<()> {
        self.inner.send_frame(buf)
    }
    fn recv_frame(&self) -> RpcResult<Vec<u8>> {
        self.mark_thread();
        self.inner.recv_frame()
    }
    fn peer_identity(&self) -> PeerIdentity {
        self.inner.peer_identity()
    }
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> RpcResult<()> {
        self.inner.set_read_timeout(self.cap(timeout))
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> RpcResult<()> {
        self.inner.set_write_timeout(self.cap(timeout))
    }
    fn set_liveness(&self, timeout: Option<Duration>) -> RpcResult<()> {
        self.inner.set_liveness(timeout)
    }
    fn peer_closed(&self) -> Option<bool> {
        self.inner.peer_closed()
    }
    fn shutdown_handle(&self) -> Option<Box<dyn FnOnce() + Send>> {
        self.inner.shutdown_handle()
    }
    fn shutdown(&self) -> RpcResult<()> {
        self.inner.shutdown()
    }
    fn supports_fd_passing(&self) -> bool {
        self.inner.supports_fd_passing()
    }
    fn send_frame_with_fds(
        &self,
        buf: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> RpcResult<()> {
        self.inner.send_frame_with_fds(buf, fds)
    }
    fn recv_frame_with_fds(&self) -> RpcResult<(Vec<u8>, Vec<std::os::fd::OwnedFd>)> {
        self.mark_thread();
        self.inner.recv_frame_with_fds()
    }
    fn send_raw(&self, buf: &[u8]) -> RpcResult<()> {
        self.inner.send_raw(buf)
    }
    fn recv_raw(&self, buf: &mut [u8]) -> RpcResult<usize> {
        self.mark_thread();
        self.inner.recv_raw(buf)
    }
    fn send_raw_with_fds(&self, buf: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> RpcResult<()> {
        self.inner.send_raw_with_fds(buf, fds)
    }
    fn recv_raw_with_fds(&self, buf: &mut [u8]) -> RpcResult<(usize, Vec<std::os::fd::OwnedFd>)> {
        self.mark_thread();
        self.inner.recv_raw_with_fds(buf)
    }
    fn send_raw_draining(
        &self,
        buf: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
        drain: &mut dyn FnMut() -> RpcResult<()>,
    ) -> RpcResult<()> {
        self.inner.send_raw_draining(buf, fds, drain)
    }
}

/// A running gated RPC server; dropping it stops accepting, ends every
/// session and removes the socket.
pub struct RpcGuard {
    server: Arc<RpcServer>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
    /// (device, inode) of the socket this guard bound.
    bound: Option<(u64, u64)>,
    admission: Arc<Admission>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl RpcGuard {
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.server.terminate();
        self.server.join_workers();
        // Only the socket this guard bound: a successor may own the path.
        if self.bound.is_some() && file_id(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// rsbinder's server, on a listener nobody can reach: bound in a fresh
/// 0700 directory beside `public`, then unlinked with the directory.
fn private_server(public: &Path) -> std::io::Result<Arc<RpcServer>> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = public.parent().unwrap_or(Path::new("/")).join(format!(
        ".dmabufd-rsbinder-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let sock = dir.join("s");
    let server = RpcServer::setup_unix_server(&sock);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir(&dir);
    server.map_err(|e| std::io::Error::other(format!("rsbinder server: {e:?}")))
}

/// Serves `binder` as `name` on the Unix socket `path` (which must be free;
/// the caller removes a stale one) behind the gate.
pub fn serve(
    path: &Path,
    services: Vec<(&str, SIBinder)>,
    limits: &RpcConfig,
    privileged: Vec<u32>,
) -> std::io::Result<RpcGuard> {
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    check_fd_limit(limits.max_connections);
    let server = private_server(path)?;
    server.set_max_threads(8);
    server.set_supported_fd_modes(&[FileDescriptorTransportMode::Unix]);
    server.set_handshake_timeout(Some(HANDSHAKE_TIMEOUT.min(idle)));
    for (name, binder) in services {
        server
            .add_service(name, binder)
            .map_err(|e| std::io::Error::other(format!("rsbinder add_service {name}: {e:?}")))?;
    }
    let listener = UnixListener::bind(path)?;
    let bound = file_id(path);
    listener.set_nonblocking(true)?;
    let admission = Admission::new(limits.clone(), privileged);
    let stop = Arc::new(AtomicBool::new(false));
    let accept = {
        let (server, admission, stop) = (server.clone(), admission.clone(), stop.clone());
        std::thread::Builder::new()
            .name("dmabufd-rpc-accept".into())
            .spawn(move || accept_loop(listener, server, admission, idle, stop))?
    };
    Ok(RpcGuard {
        server,
        stop,
        accept: Some(accept),
        path: path.to_path_buf(),
        bound,
        admission,
    })
}

/// Warns when the fd limit cannot hold `max_connections` connections (the
/// socket, its opener's stat file, and a second socket during a handshake)
/// with room for buffers in flight.
fn check_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, Resource};
    let need = 3 * max_connections as u64 + 128;
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < need {
            log::warn!(
                "RLIMIT_NOFILE is {soft}: rpc.max_connections = {max_connections} needs about \
                 {need}; lower rpc.max_connections or raise the limit (LimitNOFILE=)"
            );
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    server: Arc<RpcServer>,
    admission: Arc<Admission>,
    idle: Duration,
    stop: Arc<AtomicBool>,
) {
    let refusals = RefusalLog::default();
    let errors = RefusalLog::default();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, &server, &admission, idle, &refusals),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Sleep in the kernel until a client connects (or half a
                // second passes, to notice `stop`): an idle service must
                // not wake up hundreds of times a second.
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                use std::os::fd::AsFd;
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(500u16));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM heal as connections close; the
                // others accept(2) documents are per-connection. Never end
                // the service over them.
                if let Some(l) = errors.line(Instant::now(), &format!("accept failed: {e}")) {
                    log::warn!("{l}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn admit(
    stream: UnixStream,
    server: &Arc<RpcServer>,
    admission: &Arc<Admission>,
    idle: Duration,
    refusals: &RefusalLog,
) {
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    let Ok(cred) = cred else {
        refusals.log("no peer credentials (SO_PEERCRED failed); closed");
        return;
    };
    let (uid, pid) = (cred.uid(), cred.pid());
    let slot = match admission.admit(uid) {
        Ok(s) => s,
        Err(r) => {
            refusals.log(&format!("pid {pid}: {r}; closed"));
            return;
        }
    };
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let inner = match rsbinder::rpc::transport::UnixTransport::from_stream(stream) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("RPC connection of uid {uid} pid {pid} dropped: {e:?}");
            return;
        }
    };
    let t = GatedTransport {
        inner,
        idle,
        peer: Arc::new(RpcPeer::at_accept(uid, pid)),
        _slot: slot,
    };
    server.serve_connection(Box::new(t));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_uid: usize, reserve: usize) -> RpcConfig {
        RpcConfig {
            max_connections: max,
            max_connections_per_uid: per_uid,
            reserved_connections: reserve,
            idle_timeout_ms: 1000,
        }
    }

    #[test]
    fn per_uid_cap_total_cap_and_the_reserve_for_newcomers() {
        let a = Admission::new(limits(10, 4, 2), vec![1000]);
        let mut held: Vec<Slot> = (0..4).map(|_| a.admit(10001).unwrap()).collect();
        let e = a.admit(10001).err().unwrap();
        assert!(e.reason.contains("max_connections_per_uid = 4"), "{e}");
        assert_eq!((e.uid, e.held, e.total), (10001, 4, 4));
        held.extend((0..4).map(|_| a.admit(10002).unwrap()));
        // 8 of 10 held: the last 2 are for uids holding none.
        // Root holds none: it may take a reserved slot, but not a second.
        held.push(a.admit(0).unwrap());
        let e = a.admit(0).err().unwrap();
        assert!(e.reason.contains("reserved"), "{e}");
        held.push(a.admit(10003).unwrap());
        let e = a.admit(10004).err().unwrap();
        assert!(e.reason.contains("total"), "{e}");
        drop(held);
        assert_eq!(a.counts(10001), (0, 0));
    }

    #[test]
    fn privileged_uids_skip_the_per_uid_cap_only() {
        let a = Admission::new(limits(6, 2, 1), vec![1000]);
        let held: Vec<Slot> = (0..5).map(|_| a.admit(1000).unwrap()).collect();
        assert!(a.admit(1000).is_err(), "held to the reserve");
        let last = a.admit(10001).unwrap();
        assert!(a.admit(0).is_err(), "held to the total");
        drop((held, last));
        assert_eq!(a.counts(1000), (0, 0));
    }

    #[test]
    fn refusal_lines_are_rate_limited_and_count_what_they_left_out() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert!(log.line(t0, "a").unwrap().contains("refused: a"));
        for i in 1..100 {
            assert!(log.line(t0 + Duration::from_millis(i), "b").is_none());
        }
        let l = log.line(t0 + Duration::from_secs(2), "c").unwrap();
        assert!(l.contains("refused: c (99 more refused"), "{l}");
        let l = log.line(t0 + Duration::from_secs(4), "d").unwrap();
        assert!(!l.contains("more"), "{l}");
    }

    #[test]
    fn stat_start_time_and_state_survive_odd_command_names() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((987654, 'S')));
        let me = RpcPeer::at_accept(0, std::process::id() as i32);
        assert!(me.start_time.is_some() && me.opener_alive());
        let other = RpcPeer {
            start_time: me.start_time.map(|t| t + 1),
            ..me.clone()
        };
        assert!(
            !other.opener_alive(),
            "a recycled pid has another start time"
        );
        assert!(!RpcPeer::at_accept(0, 0).opener_alive());
    }

    /// The stat file opened at accept stays bound to that process: once it
    /// has exited and been reaped, the opener is gone, whatever pid it had.
    #[test]
    fn an_opener_that_exited_and_was_reaped_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let peer = RpcPeer::at_accept(0, child.id() as i32);
        assert!(peer.opener_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!peer.opener_alive(), "a reaped opener counted as alive");
    }
}
