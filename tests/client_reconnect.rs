//! The client library across a restart of the real service (`kill -9`,
//! then a new dmabufd on the same RPC socket): idempotent calls are sent
//! again on the new connection, an allocation that was in flight fails with
//! a "service restarted, retry" error the caller can match, and one made
//! after the restart simply works.

mod common;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Service;
use dmabufd::client::{ErrorKind, RECONNECT_WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CONFIG: &str = "[heaps]\ndefault_max_size = \"16M\"\n";

#[test]
fn heaps_and_reports_are_retried_on_the_restarted_service() {
    let mut svc = Service::start(CONFIG);
    let a = svc.connect();
    assert_eq!(a.heaps().unwrap()[0].name, "system");
    assert_eq!(a.connection_generation(), 1);

    svc.kill_and_restart();
    let heaps = a.heaps().expect("getHeaps after a restart");
    assert_eq!(heaps[0].name, "system");
    assert_eq!(a.connection_generation(), 2, "reconnected once");

    svc.kill_and_restart();
    let me = std::process::id() as i32;
    let mine = a
        .process_memory(me)
        .expect("getProcessMemory after a restart");
    assert_eq!(mine.pid, me);
    assert_eq!(a.connection_generation(), 3);
}

#[test]
fn an_allocation_made_after_a_restart_goes_to_the_new_service() {
    let mut svc = Service::start(CONFIG);
    let a = svc.connect();
    drop(a.allocate("system", 4096, "before").unwrap());
    svc.kill_and_restart();
    // The dead connection is seen before the call is sent, so it is sent
    // once, on the new connection.
    let b = a
        .allocate("system", 8192, "after")
        .expect("allocate after a restart");
    assert_eq!(b.size(), 8192);
    assert_eq!(a.connection_generation(), 2);
    assert_eq!(a.heaps().unwrap()[0].bufferCount, 1);
}

/// SIGSTOP takes effect per thread, when each next runs: wait until every
/// thread of `pid` is in state T.
fn wait_until_every_thread_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .filter_map(|s| Some(s.rsplit(')').next()?.split_whitespace().next()?.to_string()))
            .collect();
        if !states.is_empty() && states.iter().all(|s| s == "T") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dmabufd never stopped: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The thread `tid` of this process has been asleep for `settle` without
/// a break: blocked on the stopped service's reply.
fn wait_until_blocked(tid: i32, settle: Duration) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asleep_since: Option<Instant> = None;
    loop {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
            return; // the call ended without blocking: the caller sees how
        };
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        if state == Some("S") {
            let since = *asleep_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settle {
                return;
            }
        } else {
            asleep_since = None;
        }
        assert!(Instant::now() < deadline, "the call never blocked");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_allocation_in_flight_when_the_service_dies_fails_with_service_restarted() {
    let mut svc = Service::start(CONFIG);
    let a = Arc::new(svc.connect());
    a.heaps().unwrap();
    // A stopped service takes the request into its socket and never
    // answers: the call is certainly in flight when the service is killed.
    kill(Pid::from_raw(svc.pid()), Signal::SIGSTOP).unwrap();
    wait_until_every_thread_stopped(svc.pid());
    let tid = Arc::new(AtomicI32::new(0));
    let call = {
        let (a, tid) = (a.clone(), tid.clone());
        std::thread::spawn(move || {
            tid.store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
            a.allocate("system", 4096, "in-flight")
        })
    };
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    wait_until_blocked(tid.load(Ordering::SeqCst), Duration::from_millis(300));
    svc.kill_and_restart();

    let e = call.join().unwrap().expect_err("the in-flight allocation");
    assert_eq!(e.kind(), ErrorKind::ServiceRestarted, "{e}");
    assert!(e.to_string().contains("retry"), "{e}");
    assert_eq!(e.error_code(), None);

    // Retrying is safe: the new service has nothing of the first attempt.
    let b = a.allocate("system", 4096, "retried").expect("the retry");
    assert_eq!(b.size(), 4096);
    assert_eq!(a.heaps().unwrap()[0].bufferCount, 1);
}

#[test]
fn a_service_that_stays_down_is_reported_unavailable_after_the_reconnect_wait() {
    let mut svc = Service::start(CONFIG);
    let a = svc.connect();
    a.heaps().unwrap();
    svc.child.kill().unwrap();
    svc.child.wait().unwrap();

    let t0 = Instant::now();
    let e = a.heaps().expect_err("getHeaps with no service");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(t0.elapsed() >= RECONNECT_WAIT, "gave up before the wait");
    let e = a
        .allocate("system", 4096, "x")
        .expect_err("allocate with no service");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}
