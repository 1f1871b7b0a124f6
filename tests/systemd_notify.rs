//! The real `dmabufd` started the way systemd starts a `Type=notify` unit:
//! `$NOTIFY_SOCKET` names a datagram socket this test binds, and
//! `$WATCHDOG_USEC` is set when the unit has `WatchdogSec=`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dmabufd::client::Allocator;

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmabufd-notify-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(dir: &Path, notify_socket: &str, watchdog_usec: Option<&str>) -> Daemon {
    std::fs::write(dir.join("dmabufd.toml"), "").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmabufd"));
    c.arg("--config")
        .arg(dir.join("dmabufd.toml"))
        .arg("--rpc")
        .arg(dir.join("dmabufd.sock"))
        .env("NOTIFY_SOCKET", notify_socket)
        .env("DMABUFD_LOG", "warn")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    if let Some(u) = watchdog_usec {
        c.env("WATCHDOG_USEC", u);
    }
    Daemon {
        child: c.spawn().expect("spawn dmabufd"),
        dir: dir.to_path_buf(),
    }
}

/// The next datagram, or None after `wait`.
fn next(s: &UnixDatagram, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    match s.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

/// Waits for READY=1 and checks, at that moment, that the RPC socket
/// accepts and the service answers with its heaps. Returns the message.
fn ready_then_serving(s: &UnixDatagram, d: &Daemon) -> String {
    let sock = d.dir.join("dmabufd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg = next(s, Duration::from_secs(20)).expect("no READY=1 within 20 s");
        if msg.lines().any(|l| l == "READY=1") {
            // No retry: READY=1 promises the service is up.
            let a = Allocator::connect_rpc(&sock)
                .unwrap_or_else(|e| panic!("READY=1 sent but the socket does not accept: {e}"));
            let heaps = a.heaps().expect("READY=1 sent but getHeaps fails");
            assert!(!heaps.is_empty());
            return msg;
        }
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn ready_comes_after_the_socket_accepts_with_a_status_line_and_no_watchdog_unless_asked() {
    let d = dir("ready");
    let path = d.join("notify");
    let s = UnixDatagram::bind(&path).unwrap();
    let daemon = spawn(&d, path.to_str().unwrap(), None);
    let msg = ready_then_serving(&s, &daemon);
    let status = msg
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {msg:?}"));
    let sock = daemon.dir.join("dmabufd.sock");
    assert!(
        status.contains(&format!("serving on RPC binder on unix:{}", sock.display())),
        "{status}"
    );
    let source = Command::new(common::dmabufctl_exe())
        .args(["dump", "--source"])
        .env("DMABUFD_SOCKET", &sock)
        .output()
        .unwrap();
    let source = String::from_utf8_lossy(&source.stdout);
    let name = source
        .strip_prefix("scan source: ")
        .and_then(|r| r.split([' ', '\n']).next())
        .unwrap_or_else(|| panic!("{source}"));
    assert!(
        status.contains(&format!("scan source: {name};")),
        "{status} vs {source}"
    );
    assert!(status.contains("heap(s)"), "{status}");
    // No WatchdogSec=: no pings.
    assert_eq!(next(&s, Duration::from_millis(600)), None);
    // SIGTERM: STOPPING=1 before it exits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        next(&s, Duration::from_secs(10)).as_deref(),
        Some("STOPPING=1")
    );
}

#[test]
fn watchdog_pings_come_at_half_of_watchdog_usec_to_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let d = dir("watchdog");
    let name = format!("dmabufd-notify-watchdog-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let s = UnixDatagram::bind_addr(&addr).unwrap();
    // WatchdogSec=400ms: a ping every 200 ms.
    let daemon = spawn(&d, &format!("@{name}"), Some("400000"));
    ready_then_serving(&s, &daemon);
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(2) {
        match next(&s, Duration::from_secs(2)) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) => panic!("unexpected notification {m:?}"),
            None => break,
        }
    }
    // 2 s at one ping per 200 ms is 10; a loaded machine may delay some,
    // never enough to miss the 400 ms deadline five times over.
    assert!(
        pings >= 5,
        "{pings} WATCHDOG=1 in 2 s with WATCHDOG_USEC=400000"
    );
    assert!(
        pings <= 12,
        "{pings} WATCHDOG=1 in 2 s: faster than half the interval"
    );
}

#[test]
fn an_unusable_notify_socket_is_a_start_up_error() {
    let d = dir("bad");
    let mut daemon = spawn(&d, "relative/notify", None);
    let status = daemon.child.wait().unwrap();
    assert!(!status.success());
}
