//! Chaos: while 16 app processes allocate and free buffers of mixed sizes
//! against a real dmabufd over RPC (and this process reads reports in a
//! loop), `kill -9` random apps mid-call and `kill -9` the service itself,
//! twice; the test restarts it as a supervisor would (same socket, config
//! and journal: [`Service::kill_and_restart`]).
//!
//! The apps are this test binary re-executed (the ignored test
//! `chaos_app`); as root each runs under its own app uid (10200 + i). Each
//! allocates one "anchor" buffer first and holds it throughout, then churns
//! (at most `common::load::HOLD` more buffers held); on a transport error
//! it reconnects with backoff and carries on (`common::load::run_chaos_app`).
//!
//! Pass criteria (asserted): every surviving app recovers after each
//! restart (makes progress again) and never gets a refusal (no
//! service-specific error, so no quota false-refusal); after the restarts
//! every buffer a surviving app holds, its anchor included, is in the
//! report with the owner uid and pid of the app that allocated it; the
//! killed apps' buffers leave the report and (as root) their uids' owner
//! totals, the quota's usage, return to zero; the report loop never gets a
//! refusal; once every app is gone the heap's totals are zero.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{is_transport, run_chaos_app};
use common::{Rng, Service};
use dmabufd::client::Allocator;

const APPS: usize = 16;
/// First app uid (as root).
const FIRST_UID: u32 = 10_200;
/// Apps killed in each of the two rounds.
const KILLED_PER_ROUND: usize = 3;
/// How long an app keeps trying to reach a restarted service.
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Allocations every survivor makes after a restart to count as recovered.
const RECOVERED_AFTER: u64 = 20;
/// Generous bound for anything the test waits on (a passing run returns as
/// soon as the condition holds).
const WAIT: Duration = Duration::from_secs(60);

const APP_ENV: &str = "DMABUFD_CHAOS_APP";

fn config() -> String {
    let me = nix::unistd::geteuid().as_raw();
    // Not root: every app shares our uid (and one quota, raised), and the
    // report loop needs our uid privileged.
    let extra = if common::is_root() {
        String::new()
    } else {
        format!(
            "privileged_uids = [{me}]\n[quota]\ndefault_buffers = 1000000\ndefault_bytes = {}\n",
            1u64 << 40
        )
    };
    format!("[service]\nscan_interval_ms = 1000\n{extra}\n[heaps]\ndefault_max_size = \"16M\"\n")
}

/// Connects, retrying with backoff (10 ms doubling to 200 ms) for up to
/// [`RECONNECT_FOR`]: what an app does while its service restarts.
fn connect_with_backoff(socket: &Path) -> Result<Allocator, String> {
    let deadline = Instant::now() + RECONNECT_FOR;
    let mut pause = Duration::from_millis(10);
    loop {
        match Allocator::connect_rpc(socket) {
            Ok(a) => match a.heaps() {
                Ok(_) => return Ok(a),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => {}
            },
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// An app process (see the module doc). Does nothing unless started by
/// the chaos test.
#[test]
#[ignore = "an app process of the chaos test"]
fn chaos_app() {
    let Ok(spec) = std::env::var(APP_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let (socket, dir, i, uid, seed) = (
        PathBuf::from(f[0]),
        PathBuf::from(f[1]),
        f[2].parse::<usize>().unwrap(),
        f[3].parse::<u32>().unwrap(),
        f[4].parse::<u64>().unwrap(),
    );
    if uid != 0 {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        setgroups(&[]).unwrap();
        setgid(Gid::from_raw(uid)).unwrap();
        setuid(Uid::from_raw(uid)).unwrap();
    }
    let mut rng = Rng::new(seed);
    let a = connect_with_backoff(&socket).expect("connect");
    let summary = run_chaos_app(
        a,
        &dir,
        &i.to_string(),
        || rng.next(),
        || connect_with_backoff(&socket),
    )
    .unwrap_or_else(|e| panic!("app {i}: {e}"));
    let mut o = std::io::stdout().lock();
    writeln!(o, "\nchaos-app {summary}").unwrap();
}

struct App {
    uid: u32,
    child: Child,
}

fn spawn_app(svc: &Service, i: usize) -> App {
    let uid = if common::is_root() {
        FIRST_UID + i as u32
    } else {
        0
    };
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "chaos_app",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            APP_ENV,
            format!(
                "{}|{}|{i}|{uid}|{}",
                svc.socket.display(),
                svc.dir.display(),
                0xc4a0_5000 + i as u64
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    App { uid, child }
}

fn progress(dir: &Path, i: usize) -> u64 {
    std::fs::read_to_string(dir.join(format!("app{i}.progress")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until every app in `apps` has made `more` allocations past `from`.
fn wait_for_progress(
    dir: &Path,
    apps: &BTreeMap<usize, App>,
    from: &BTreeMap<usize, u64>,
    more: u64,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let behind: Vec<(usize, u64)> = apps
            .keys()
            .map(|&i| (i, progress(dir, i)))
            .filter(|(i, p)| *p < from.get(i).copied().unwrap_or(0) + more)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: apps (index, allocations) still short of {more} more allocations: {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -9` of `n` random apps, each after a random 0-30 ms (mid-call
/// for most: an app spends most of its time in a call).
fn kill_random_apps(apps: &mut BTreeMap<usize, App>, rng: &mut Rng, n: usize) -> Vec<(i32, u32)> {
    let mut killed = Vec::new();
    for _ in 0..n {
        let keys: Vec<usize> = apps.keys().copied().collect();
        let i = *rng.pick(&keys);
        let mut app = apps.remove(&i).unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(31) as u64));
        let pid = app.child.id() as i32;
        app.child.kill().unwrap();
        app.child.wait().unwrap();
        killed.push((pid, app.uid));
    }
    killed
}

/// Reads reports in a loop until `stop`, reconnecting across restarts:
/// (calls, refusals, first refusal). Transport errors while the service is
/// down are expected; a refusal is not.
fn report_loop(socket: PathBuf, stop: Arc<AtomicBool>) -> (u64, u64, String) {
    let (mut calls, mut refused, mut first) = (0u64, 0u64, String::new());
    let mut a = connect_with_backoff(&socket).expect("report loop: connect");
    while !stop.load(Ordering::Relaxed) {
        let r = if calls % 2 == 0 {
            a.memory_report().map(|_| ())
        } else {
            a.render_dump(&[]).map(|_| ())
        };
        calls += 1;
        match r {
            Ok(()) => {}
            Err(e) if is_transport(&e) => {
                a = connect_with_backoff(&socket).expect("report loop: the service never came back")
            }
            Err(e) => {
                refused += 1;
                if first.is_empty() {
                    first = e.to_string();
                }
            }
        }
    }
    (calls, refused, first)
}

#[test]
fn apps_and_the_service_killed_mid_load_survivors_recover_with_owners_intact_and_nothing_stays_charged(
) {
    let mut svc = Service::start(&config());
    let dir = svc.dir.clone();
    let mut rng = Rng::new(0xc4a05);
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (socket, stop) = (svc.socket.clone(), stop.clone());
        std::thread::spawn(move || report_loop(socket, stop))
    };
    let mut apps: BTreeMap<usize, App> = (0..APPS).map(|i| (i, spawn_app(&svc, i))).collect();
    let none = BTreeMap::new();
    wait_for_progress(&dir, &apps, &none, RECOVERED_AFTER, "start");

    let mut killed = Vec::new();
    let mut interruptions = Vec::new();
    for round in 1..=2 {
        killed.extend(kill_random_apps(&mut apps, &mut rng, KILLED_PER_ROUND));
        // Mid-load: the apps are in calls or between two.
        std::thread::sleep(Duration::from_millis(rng.below(50) as u64));
        let at: BTreeMap<usize, u64> = apps.keys().map(|&i| (i, progress(&dir, i))).collect();
        let t = Instant::now();
        svc.kill_and_restart();
        wait_for_progress(
            &dir,
            &apps,
            &at,
            RECOVERED_AFTER,
            &format!("recovery after restart {round}"),
        );
        interruptions.push(t.elapsed());
    }

    // Survivors stop churning and report what they hold.
    std::fs::write(dir.join("hold"), b"").unwrap();
    let deadline = Instant::now() + WAIT;
    let mut held: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    while held.len() < apps.len() {
        for &i in apps.keys() {
            if let Ok(s) = std::fs::read_to_string(dir.join(format!("app{i}.held"))) {
                held.insert(
                    i,
                    s.split_whitespace().map(|v| v.parse().unwrap()).collect(),
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "apps did not report what they hold"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = svc.connect();
    let report = a.memory_report().unwrap();
    for (i, inodes) in &held {
        let app = &apps[i];
        assert!(
            !inodes.is_empty(),
            "app {i} holds nothing, not even its anchor"
        );
        for ino in inodes {
            let b = report
                .buffers
                .iter()
                .find(|b| b.inode == *ino)
                .unwrap_or_else(|| panic!("buffer {ino} held by app {i} is not in the report"));
            assert_eq!(
                (b.ownerUid as u32, b.ownerPid),
                (app.uid, app.child.id() as i32),
                "owner of buffer {ino} held by app {i} (its first is the anchor, allocated \
                 before both restarts)"
            );
        }
    }

    // The killed apps: their buffers leave the report and their uids'
    // totals return to zero.
    let killed_pids: Vec<i32> = killed.iter().map(|k| k.0).collect();
    let killed_uids: Vec<u32> = killed.iter().map(|k| k.1).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = a.memory_report().unwrap();
        let left: Vec<(i64, i32, i32)> = r
            .buffers
            .iter()
            .filter(|b| killed_pids.contains(&b.ownerPid))
            .map(|b| (b.inode, b.ownerUid, b.ownerPid))
            .collect();
        let charged: Vec<(i32, i32, i64)> = if common::is_root() {
            r.ownerTotals
                .iter()
                .filter(|t| killed_uids.contains(&(t.uid as u32)) && (t.count, t.bytes) != (0, 0))
                .map(|t| (t.uid, t.count, t.bytes))
                .collect()
        } else {
            Vec::new()
        };
        if left.is_empty() && charged.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "killed apps still charged: buffers (inode, uid, pid) {left:?}; \
             uid totals (uid, buffers, bytes) {charged:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    std::fs::write(dir.join("release"), b"").unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut summary = Vec::new();
    for (i, app) in apps {
        let out = app.child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "app {i} failed: {text}");
        let line = text
            .lines()
            .find_map(|l| l.split_once("chaos-app ").map(|(_, r)| r.to_string()))
            .unwrap_or_else(|| panic!("no summary from app {i}: {text}"));
        let mut f = line.splitn(4, ' ');
        let mut n = || f.next().unwrap().parse::<u64>().unwrap();
        let (ok, failed, interrupted) = (n(), n(), n());
        assert_eq!(failed, 0, "app {i} was refused: {line}");
        summary.push((ok, interrupted));
    }
    let (calls, refused, first) = reporter.join().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "chaos: {} survivors, {} killed; allocations per survivor {:?}; calls cut by the \
         restarts per survivor {:?}; recovery after each restart {:?}; report loop {calls} \
         calls, {refused} refused",
        summary.len(),
        killed.len(),
        summary.iter().map(|s| s.0).collect::<Vec<_>>(),
        summary.iter().map(|s| s.1).collect::<Vec<_>>(),
        interruptions
    );
    assert_eq!(refused, 0, "report calls refused; first: {first}");
    assert!(svc.is_running());
    // Every app is gone: nothing stays charged.
    let left = common::fuzz::wait_for_totals(&a, (0, 0), WAIT).unwrap();
    assert_eq!(
        left,
        (0, 0),
        "buffers of exited apps still counted: (buffers, bytes) {left:?}"
    );
}
