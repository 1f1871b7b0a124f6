//! Limits on the RPC socket, against a real dmabufd process: per-uid and
//! total connection caps with a reserve for new clients, the idle timeout,
//! a connection flood, and the caller pid of a connection whose opening
//! process has exited.
//!
//! Clients under other uids are this test binary run again as a helper
//! process (`rpc_helper_process`, which does nothing unless
//! `DMABUFD_RPC_HELPER` is set) under `Command::uid`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::Service;

/// Caps small enough to reach in a test: 8 per uid, 24 in all of which 4
/// are kept for uids holding no connection.
const LIMITS: &str = r#"
[heaps]
default_max_size = "16M"
[rpc]
max_connections = 24
max_connections_per_uid = 8
reserved_connections = 4
idle_timeout_ms = 60000
"#;

const HELPER_ENV: &str = "DMABUFD_RPC_HELPER";

/// Runs this test binary as a helper process (see `rpc_helper_process`)
/// doing `mode` against `socket`, under `uid` when given.
fn helper(socket: &Path, mode: &str, uid: Option<u32>) -> (Child, BufReader<ChildStdout>) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "rpc_helper_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ENV, mode)
    .env("DMABUFD_SOCKET", socket)
    .env("DMABUFD_LOG", "off")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    let mut child = c.spawn().expect("spawn helper");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The helper's next `HELPER ...` line (libtest's own lines skipped).
fn helper_line(out: &mut BufReader<ChildStdout>) -> String {
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "helper ended without its report");
        // libtest prints the test's name on the same line.
        if let Some(at) = line.find("HELPER ") {
            return line[at + "HELPER ".len()..].trim().to_string();
        }
    }
}

/// `key=value` from a helper line.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

/// Not a test of its own: the body of the helper processes. Modes:
/// - `hold:N`: opens N sessions, each proven with a getHeaps call; prints
///   `ok=K refused=R`, then holds the sessions until stdin closes.
/// - `orphan`: opens a session, prints `opener=PID`, then forks and lets
///   the opener exit (`daemon(3)`): the child keeps the inherited
///   connection, waits for a line on stdin, and calls through it as the
///   opener: resetHighWaterMark(opener) and allocate.
#[test]
fn rpc_helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let socket = dmabufd::transport::default_socket();
    let mut stdout = std::io::stdout();
    if let Some(n) = mode.strip_prefix("hold:") {
        let n: usize = n.parse().unwrap();
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..n {
            match dmabufd::client::Allocator::connect_rpc(&socket).and_then(|a| {
                a.heaps()?;
                Ok(a)
            }) {
                Ok(a) => held.push(a),
                Err(_) => refused += 1,
            }
        }
        writeln!(stdout, "HELPER ok={} refused={refused}", held.len()).unwrap();
        stdout.flush().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        drop(held);
        // Not back to libtest, whose summary would go to a closed pipe.
        std::process::exit(0);
    } else if mode == "orphan" {
        let a = dmabufd::client::Allocator::connect_rpc(&socket).expect("connect");
        a.heaps().expect("heaps");
        let opener = std::process::id();
        writeln!(stdout, "HELPER opener={opener}").unwrap();
        stdout.flush().unwrap();
        // The opener exits here; its child carries on with the connection.
        nix::unistd::daemon(true, true).expect("daemon");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        let verdict = |r: Result<(), dmabufd::client::Error>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!(
                "refused:{}",
                e.to_string().replace(char::is_whitespace, "_")
            ),
        };
        let reset = verdict(a.reset_high_water_mark(opener as i32));
        let alloc = verdict(a.allocate("system", 4096, "orphan").map(drop));
        writeln!(
            stdout,
            "HELPER child={} reset={reset} alloc={alloc}",
            std::process::id()
        )
        .unwrap();
        stdout.flush().unwrap();
        std::process::exit(0);
    } else {
        panic!("unknown helper mode {mode}");
    }
}

/// dmabufctl under `uid`: heaps, then one allocation.
fn heaps_and_allocate_as(svc: &Service, uid: u32) {
    for args in [vec!["heaps"], vec!["alloc", "system", "4K"]] {
        let out = svc.ctl().args(&args).uid(uid).gid(uid).output().unwrap();
        assert!(
            out.status.success(),
            "uid {uid}: dmabufctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Generous bound for fds to come back (a passing run returns at once).
const FDS_BACK: Duration = Duration::from_secs(30);

#[test]
fn sessions_over_the_per_uid_cap_are_refused_and_another_uid_still_allocates() {
    if !common::needs_root(
        "sessions_over_the_per_uid_cap_are_refused_and_another_uid_still_allocates",
    ) {
        return;
    }
    let svc = Service::start_logged(LIMITS);
    let base = svc.resting_fd_count();
    // One hostile uid asks for 20 sessions: 8 (its cap) are served.
    let (mut h1, mut o1) = helper(&svc.socket, "hold:20", Some(10002));
    let line = helper_line(&mut o1);
    assert_eq!(field(&line, "ok"), "8", "{line}");
    assert_eq!(field(&line, "refused"), "12", "{line}");
    let log = svc.wait_for_log("uid 10002");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("uid 10002"))
        .collect();
    assert!(!refusals.is_empty(), "{log}");
    // Rate-limited: twelve refusals in a burst are not twelve lines.
    assert!(refusals.len() < 12, "{log}");
    assert!(refusals[0].contains("8"), "the line gives the limit: {log}");
    // A second hostile uid takes its 8: 16 held, 20 is where the reserve
    // starts.
    let (mut h2, mut o2) = helper(&svc.socket, "hold:20", Some(10004));
    let line = helper_line(&mut o2);
    assert_eq!(field(&line, "ok"), "8", "{line}");
    let held = svc.fds_within(base + 16 + 2, FDS_BACK);
    assert!(
        held <= base + 16 + 2,
        "service fds {held} with 16 sessions held (base {base}): {:?}",
        svc.fd_targets()
    );
    // A third one fills the rest of the unreserved capacity (20 of 24)...
    let (mut h3, mut o3) = helper(&svc.socket, "hold:6", Some(10006));
    let line = helper_line(&mut o3);
    assert_eq!(field(&line, "ok"), "4", "{line}");
    // ... and still the next new uid gets heaps and an allocation, from the
    // reserve, as does root.
    heaps_and_allocate_as(&svc, 10003);
    heaps_and_allocate_as(&svc, 0);
    for (h, o) in [(&mut h1, o1), (&mut h2, o2), (&mut h3, o3)] {
        drop(h.stdin.take());
        drop(o);
        h.wait().unwrap();
    }
    // Released sessions free their slots: the first uid gets its 8 again.
    let (mut h4, mut o4) = helper(&svc.socket, "hold:8", Some(10002));
    let line = helper_line(&mut o4);
    assert_eq!(field(&line, "ok"), "8", "{line}");
    drop(h4.stdin.take());
    h4.wait().unwrap();
}

#[test]
fn idle_sessions_are_closed_after_the_idle_timeout() {
    let svc =
        Service::start("[heaps]\ndefault_max_size = \"16M\"\n[rpc]\nidle_timeout_ms = 1000\n");
    let base = svc.resting_fd_count();
    let idle = svc.connect();
    idle.heaps().unwrap();
    let busy = svc.connect();
    // A raw connection that never sends a byte is bounded by it too.
    let raw = UnixStream::connect(&svc.socket).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        busy.heaps()
            .expect("a session that keeps calling is not idle");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The service closed the idle session; the client library notices and
    // reconnects (a new session), so the call itself succeeds.
    idle.heaps()
        .expect("the client reconnects after its idle session was closed");
    assert_eq!(
        idle.connection_generation(),
        2,
        "the idle session was kept past its timeout"
    );
    assert_eq!(
        busy.connection_generation(),
        1,
        "the busy session was closed"
    );
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(
        (&raw).read(&mut b).ok(),
        Some(0),
        "the silent connection was not closed"
    );
    // (The reconnected idle client holds a new session: close it too.)
    drop((busy, idle));
    let after = svc.fds_within(base, FDS_BACK);
    assert!(after <= base, "service fds {after}, base {base}");
    // The service still serves new sessions.
    svc.connect().heaps().unwrap();
}

#[test]
fn a_thousand_connection_attempts_leave_the_service_bounded_and_serving() {
    let svc = Service::start_logged(LIMITS);
    let base = svc.resting_fd_count();
    let mut flood = Vec::new();
    for _ in 0..1000 {
        match UnixStream::connect(&svc.socket) {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connect #{}: {e}", flood.len()),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = svc.fd_count();
    // 24 connections at most, each with two fds while its handshake runs
    // (rsbinder's handshake deadline holds a duplicate to cut it), plus a
    // few of the scan's.
    assert!(
        during <= base + 2 * 24 + 4,
        "service fds {during} under a flood of 1000 (base {base})"
    );
    // Another uid is still served (from the reserve when this uid is root).
    if common::is_root() {
        heaps_and_allocate_as(&svc, 10003);
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "a_thousand_connection_attempts_leave_the_service_bounded_and_serving: the part \
             with a client of another uid skipped: needs root"
        );
    }
    let log = svc.log();
    let refusals = log.lines().filter(|l| l.contains("refused")).count();
    assert!(
        (1..50).contains(&refusals),
        "976 refusals must log a few rate-limited lines, not {refusals}:\n{log}"
    );
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    svc.connect().heaps().expect("serving after the flood");
    let after = svc.fds_within(base + 2, FDS_BACK);
    assert!(after <= base + 2, "service fds {after}, base {base}");
}

/// The pid an RPC connection reports is the opener's, taken at connect.
/// Once the opener has exited, a process that inherited the connection
/// (here its forked child) is not the owner of that pid: own-pid calls
/// and allocations through the connection are refused.
#[test]
fn calls_through_a_connection_whose_opener_exited_are_not_own_pid_calls() {
    let svc = Service::start("[heaps]\ndefault_max_size = \"16M\"\n");
    // An app uid: root may reset any pid's hwm, which would hide the check.
    let uid = common::is_root().then_some(10005);
    let (mut opener, mut out) = helper(&svc.socket, "orphan", uid);
    let line = helper_line(&mut out);
    let opener_pid: i32 = field(&line, "opener").parse().unwrap();
    assert_eq!(opener_pid as u32, opener.id());
    let mut stdin = opener.stdin.take().unwrap();
    opener.wait().unwrap();
    assert!(
        !Path::new(&format!("/proc/{opener_pid}")).exists(),
        "the opener was reaped"
    );
    writeln!(stdin, "go").unwrap();
    let line = helper_line(&mut out);
    let child: i32 = field(&line, "child").parse().unwrap();
    assert_ne!(child, opener_pid);
    let reset = field(&line, "reset");
    let alloc = field(&line, "alloc");
    assert!(
        reset.starts_with("refused") && reset.contains("exited"),
        "resetHighWaterMark(opener) through an orphaned connection: {line}"
    );
    assert!(
        alloc.starts_with("refused") && alloc.contains("exited"),
        "allocate through an orphaned connection: {line}"
    );
    // Nothing was recorded for the dead pid (the dump needs a privileged
    // reader: root).
    if !common::is_root() {
        let _ = writeln!(
            std::io::stderr(),
            "calls_through_a_connection_whose_opener_exited_are_not_own_pid_calls: the dump \
             check skipped: needs root"
        );
        return;
    }
    let dump = svc.connect().service().renderDump(&[]).unwrap();
    let dump = String::from_utf8_lossy(&dump);
    assert!(!dump.contains("orphan"), "{dump}");
}
