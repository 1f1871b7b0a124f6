//! Load over kernel binder: [`LOAD_APPS`] app processes, each under its own
//! app uid, allocate and free buffers of mixed sizes on the real system heap
//! while this process calls getMemoryReport (paged), renderDump (chunked)
//! and `rsb_service dump` (dump(fd)) in a loop.
//!
//! Pass: no app call and no report call fails; no quota refusal (an app
//! holds at most [`shared::HOLD`] buffers of at most 1 MiB, far under the VM's
//! default quota); after the second quarter the service's fd count (buffer
//! fds in flight left out) peaks at most [`FD_SLACK`] and its VmRSS at most
//! [`RSS_SLACK`] above their second-quarter peaks; once the apps exit no
//! buffer stays charged to their uids. The p50/p99 allocation latencies
//! under load are printed next to those of one app alone.
//!
//! Cycles per app: `DMABUFD_LOAD_CYCLES` (init.sh passes run.sh's
//! `DMABUFD_VM_LOAD_CYCLES`), default [`DEFAULT_CYCLES`] (the CI short form).

#[path = "../../common/load.rs"]
mod shared;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{self, RoleResult, LOAD_APPS, LOAD_FIRST_UID};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{connect, eventually, scan_deadline_ms, SETTLE_MS};
use shared::{Footprint, Sample};

pub fn cases() -> Vec<Case> {
    vec![Case {
        name:
            "load_16_app_uids_allocate_and_free_under_reports_with_no_failure_and_flat_fds_and_rss",
        run: load_16_app_uids_allocate_and_free_under_reports_with_no_failure_and_flat_fds_and_rss,
    }]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("load-app", load_app), ("chaos-app", chaos_app)]
}

/// Cycles per app in CI: about 40 s of TCG time with the idle run on a busy
/// 2-core host (150 took 99 s there).
const DEFAULT_CYCLES: u64 = 60;
/// The service's fds (buffers left out) may rise this much over the second
/// quarter: every app's binder connection is open by then; what comes and
/// goes is a BPF iterator's fd while a scan reads it, a journal
/// compaction's file and binder threads' transient fds (+3 seen in three
/// runs). A leak of one fd per 100 allocations would be +9 on the short form.
const FD_SLACK: usize = 6;
/// VmRSS may rise this much from the start of the second quarter to the
/// end: a leak of 1 KiB per allocation would be ~2.4 MiB on the short form
/// and ~160 MiB on the long one.
const RSS_SLACK: u64 = 4 << 20;
/// Where apps write their latencies (tmpfs, world-writable).
const OUT_DIR: &str = "/tmp/vts-load";

fn cycles() -> u64 {
    std::env::var("DMABUFD_LOAD_CYCLES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_CYCLES)
}

/// `load-app CYCLES SEED OUT`: CYCLES allocate/free cycles of mixed sizes,
/// holding at most [`shared::HOLD`] buffers, touching each; allocation latencies
/// (µs) written to OUT. Prints `allocations failures quota-refusals first-error`.
fn load_app(args: &[&str]) -> RoleResult {
    let [cycles, seed, out] = args else {
        return Err("load-app CYCLES SEED OUT".into());
    };
    let cycles: u64 = cycles.parse().map_err(|_| "bad cycles")?;
    let mut rng: u64 = seed.parse::<u64>().map_err(|_| "bad seed")?.max(1);
    let alloc = connect()?;
    let r = shared::run_cycles(&alloc, cycles, || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    })?;
    std::fs::write(out, shared::encode_latencies(&r.latencies))
        .map_err(|e| format!("{out}: {e}"))?;
    Ok(r.summary())
}

fn spawn_app(uid: u32, cycles: u64, seed: u64, out: &str) -> Result<Child, String> {
    app::command_as(
        uid,
        "load-app",
        &[&cycles.to_string(), &seed.to_string(), out],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| format!("spawning load-app as uid {uid}: {e}"))
}

/// (allocations, failures, quota refusals, first error) of a finished app.
fn app_result(child: Child, uid: u32) -> Result<(u64, u64, u64, String), String> {
    let line = app::finish(child, uid, "load-app")?;
    let mut f = line.splitn(4, ' ');
    let mut n = || -> Result<u64, String> {
        f.next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("load-app printed {line:?}"))
    };
    let (ok, failed, quota) = (n()?, n()?, n()?);
    let first = line.splitn(4, ' ').nth(3).unwrap_or("").to_string();
    Ok((ok, failed, quota, first))
}

/// Report calls in a loop until `stop`: (calls, failures, first failure).
fn report_loop(stop: Arc<AtomicBool>) -> (u64, u64, String) {
    let (mut calls, mut failed, mut first) = (0u64, 0u64, String::new());
    let alloc = match connect() {
        Ok(a) => a,
        Err(e) => return (0, 1, e),
    };
    while !stop.load(Ordering::Relaxed) {
        let r = match calls % 4 {
            0 | 2 => alloc.memory_report().map(|_| ()).map_err(|e| e.to_string()),
            1 => alloc
                .render_dump(&["-a".to_string()])
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => rsb_service_dump(),
        };
        calls += 1;
        if let Err(e) = r {
            failed += 1;
            if first.is_empty() {
                first = e.replace('\n', " ");
            }
        }
    }
    (calls, failed, first)
}

/// `rsb_service dump`: dump(fd) over kernel binder, as a user reads it.
fn rsb_service_dump() -> Result<(), String> {
    let out = Command::new("rsb_service")
        .args(["dump", dmabufd::SERVICE_NAME])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running rsb_service: {e}"))?;
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("dmabufd") {
        return Err(format!(
            "rsb_service dump exited {}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn load_16_app_uids_allocate_and_free_under_reports_with_no_failure_and_flat_fds_and_rss() -> Outcome
{
    let cycles = cycles();
    let pid = proc_scan::service_pid()?;
    let _ = std::fs::remove_dir_all(OUT_DIR);
    std::fs::create_dir_all(OUT_DIR).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(OUT_DIR, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| e.to_string())?;
    }

    // Idle: one app alone.
    let idle_out = format!("{OUT_DIR}/idle.lat");
    let idle_cycles = cycles.min(1000);
    let (ok, failed, quota, first) = app_result(
        spawn_app(LOAD_FIRST_UID, idle_cycles, 0x1d1e, &idle_out)?,
        LOAD_FIRST_UID,
    )?;
    ensure!(
        (ok, failed, quota) == (idle_cycles, 0, 0),
        "the idle app: {ok} allocations, {failed} failures ({quota} quota); first: {first}"
    );
    let idle = shared::read_latencies(&[PathBuf::from(&idle_out)]);

    // Load: the report loop and every app.
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = {
        let stop = stop.clone();
        std::thread::spawn(move || report_loop(stop))
    };
    let start = Instant::now();
    let outs: Vec<String> = (0..LOAD_APPS)
        .map(|i| format!("{OUT_DIR}/app{i}.lat"))
        .collect();
    let mut apps = Vec::new();
    for i in 0..LOAD_APPS {
        let uid = LOAD_FIRST_UID + i;
        apps.push((
            uid,
            spawn_app(uid, cycles, 0x10ad_0000 + i as u64, &outs[i as usize])?,
        ));
    }
    let mut samples = Vec::new();
    while apps
        .iter_mut()
        .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
    {
        samples.push(Sample::take(pid, start));
        std::thread::sleep(Duration::from_millis(50));
    }
    samples.push(Sample::take(pid, start));
    let load_time = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for (uid, c) in apps {
        results.push((uid, app_result(c, uid)?));
    }
    let (calls, report_failures, report_first) =
        reporter.join().map_err(|_| "the report loop panicked")?;

    let paths: Vec<PathBuf> = outs.iter().map(PathBuf::from).collect();
    let under_load = shared::read_latencies(&paths);
    let allocs: u64 = results.iter().map(|(_, r)| r.0).sum();
    let fp = Footprint::from_second_quarter(&samples, load_time);
    println!(
        "load: {LOAD_APPS} app uids x {cycles} cycles in {load_time:.1} s ({:.0} allocations/s), \
         {calls} report calls, {} samples",
        allocs as f64 / load_time,
        samples.len()
    );
    println!(
        "load: allocate latency idle p50 {} us p99 {} us ({} calls); under load p50 {} us p99 {} us ({} calls)",
        shared::percentile(&idle, 0.5),
        shared::percentile(&idle, 0.99),
        idle.len(),
        shared::percentile(&under_load, 0.5),
        shared::percentile(&under_load, 0.99),
        under_load.len()
    );
    println!(
        "load: service fds (buffers left out) first {}, Q2 peak {}, later peak {}; VmRSS Q2 peak {} KiB, later peak {} KiB",
        samples.first().map(|s| s.fds).unwrap_or(0),
        fp.q2_fds,
        fp.max_fds,
        fp.q2_rss / 1024,
        fp.max_rss / 1024
    );

    for (uid, (ok, failed, quota, first)) in &results {
        ensure!(
            (*failed, *quota) == (0, 0) && *ok == cycles,
            "app uid {uid}: {ok} allocations, {failed} failures ({quota} quota refusals); first: {first}"
        );
    }
    ensure!(calls > 0, "the report loop made no call");
    ensure!(
        report_failures == 0,
        "{report_failures} of {calls} report calls failed; first: {report_first}"
    );
    fp.check(FD_SLACK, RSS_SLACK)
        .map_err(|e| format!("{e}; fds now: {:?}", proc_scan::fd_targets(pid)))?;
    ensure!(
        proc_scan::service_pid()? == pid,
        "the service was restarted during the load"
    );

    // The apps are gone: nothing stays charged to their uids.
    let alloc = connect()?;
    let mut charged = Vec::new();
    let clean = eventually(scan_deadline_ms(), || {
        charged = alloc
            .memory_report()
            .map(|r| {
                r.ownerTotals
                    .into_iter()
                    .filter(|t| {
                        (LOAD_FIRST_UID..LOAD_FIRST_UID + LOAD_APPS).contains(&(t.uid as u32))
                            && (t.count, t.bytes) != (0, 0)
                    })
                    .map(|t| (t.uid, t.count, t.bytes))
                    .collect()
            })
            .unwrap_or_else(|e| vec![(-1, 0, e.message().len() as i64)]);
        charged.is_empty()
    });
    ensure!(
        clean,
        "still charged to exited apps (uid, buffers, bytes): {charged:?}"
    );
    Ok(())
}

/// Runs last: it kills and restarts the service.
pub fn chaos_cases() -> Vec<Case> {
    vec![Case {
        name: "chaos_apps_and_the_service_killed_mid_load_survivors_recover_with_owners_intact",
        run: chaos_apps_and_the_service_killed_mid_load_survivors_recover_with_owners_intact,
    }]
}

/// Where chaos apps report progress and what they hold, and where the case
/// tells them to hold and to leave.
const CHAOS_DIR: &str = "/tmp/vts-chaos";
/// Apps killed by the chaos case (the service is killed once, after them).
const CHAOS_KILLED: u32 = 4;
/// Allocations every survivor makes after the restart to count as recovered.
const RECOVERED_AFTER: u64 = 10;

/// Connects over kernel binder, retrying with backoff (10 ms doubling to
/// 500 ms) for up to a minute while the service restarts.
fn connect_with_backoff() -> Result<dmabufd::client::Allocator, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(10);
    loop {
        let r = connect().and_then(|a| a.heaps().map(|_| a).map_err(|e| e.to_string()));
        match r {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// `chaos-app INDEX SEED`: [`shared::run_chaos_app`] over kernel binder in
/// CHAOS_DIR, reconnecting with backoff when the service dies. Prints
/// `allocations refusals interruptions first-refusal`.
fn chaos_app(args: &[&str]) -> RoleResult {
    let [index, seed] = args else {
        return Err("chaos-app INDEX SEED".into());
    };
    let mut rng: u64 = seed.parse::<u64>().map_err(|_| "bad seed")?.max(1);
    let next = move || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = std::path::Path::new(CHAOS_DIR);
    shared::run_chaos_app(
        connect_with_backoff()?,
        dir,
        index,
        next,
        connect_with_backoff,
    )
}

fn chaos_progress(i: u32) -> u64 {
    std::fs::read_to_string(format!("{CHAOS_DIR}/app{i}.progress"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until every app index in `apps` made `more` allocations past `from`.
fn wait_for_progress(
    apps: &std::collections::BTreeMap<u32, Child>,
    from: &std::collections::BTreeMap<u32, u64>,
    more: u64,
    what: &str,
) -> Outcome {
    let mut behind = Vec::new();
    let done = eventually(SETTLE_MS, || {
        behind = apps
            .keys()
            .map(|&i| (i, chaos_progress(i)))
            .filter(|(i, p)| *p < from.get(i).copied().unwrap_or(0) + more)
            .collect();
        behind.is_empty()
    });
    ensure!(
        done,
        "{what}: apps (index, allocations) short of {more} more: {behind:?}"
    );
    Ok(())
}

fn chaos_apps_and_the_service_killed_mid_load_survivors_recover_with_owners_intact() -> Outcome {
    use std::collections::BTreeMap;
    let _ = std::fs::remove_dir_all(CHAOS_DIR);
    std::fs::create_dir_all(CHAOS_DIR).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(CHAOS_DIR, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| e.to_string())?;
    }
    let mut apps: BTreeMap<u32, Child> = BTreeMap::new();
    for i in 0..LOAD_APPS {
        let child = app::command_as(
            LOAD_FIRST_UID + i,
            "chaos-app",
            &[&i.to_string(), &(0xc4a0_5000 + i as u64).to_string()],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning chaos-app {i}: {e}"))?;
        apps.insert(i, child);
    }
    let none = BTreeMap::new();
    wait_for_progress(&apps, &none, RECOVERED_AFTER, "start")?;

    // kill -9 of apps, a few ms apart (most are in a call: an app spends
    // most of its time in one under TCG).
    let mut rng: u64 = 0xc4a05;
    let mut killed = Vec::new();
    for _ in 0..CHAOS_KILLED {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let keys: Vec<u32> = apps.keys().copied().collect();
        let i = keys[(rng % keys.len() as u64) as usize];
        let mut child = apps.remove(&i).ok_or("no such app")?;
        std::thread::sleep(Duration::from_millis(rng % 31));
        let pid = child.id() as i32;
        child.kill().map_err(|e| e.to_string())?;
        child.wait().map_err(|e| e.to_string())?;
        killed.push((pid, LOAD_FIRST_UID + i));
    }

    // kill -9 of the service mid-load; restarted as a supervisor would.
    let at: BTreeMap<u32, u64> = apps.keys().map(|&i| (i, chaos_progress(i))).collect();
    let old = proc_scan::service_pid()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| e.to_string())?;
    ensure!(
        eventually(SETTLE_MS, || std::fs::read_to_string(format!(
            "/proc/{old}/stat"
        ))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)),
        "dmabufd {old} did not die"
    );
    let restarted_at = Instant::now();
    let new = super::exact::start_service()?;
    // /init checks this one is alive at the end.
    std::fs::write("/run/dmabufd.restarted-pid", new.id().to_string())
        .map_err(|e| e.to_string())?;
    wait_for_progress(&apps, &at, RECOVERED_AFTER, "recovery after the restart")?;
    let recovery = restarted_at.elapsed();

    // Survivors hold still and say what they hold.
    std::fs::write(format!("{CHAOS_DIR}/hold"), b"").map_err(|e| e.to_string())?;
    let mut held: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let all_held = eventually(SETTLE_MS, || {
        for &i in apps.keys() {
            if let Ok(s) = std::fs::read_to_string(format!("{CHAOS_DIR}/app{i}.held")) {
                held.insert(
                    i,
                    s.split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect(),
                );
            }
        }
        held.len() == apps.len()
    });
    ensure!(
        all_held,
        "apps did not say what they hold: {:?}",
        held.keys()
    );
    let alloc = connect()?;
    let report = alloc.memory_report().map_err(|e| e.to_string())?;
    for (i, inodes) in &held {
        let uid = LOAD_FIRST_UID + i;
        let pid = apps[i].id() as i32;
        ensure!(
            !inodes.is_empty(),
            "app {i} holds nothing, not even its anchor"
        );
        for ino in inodes {
            let b = report
                .buffers
                .iter()
                .find(|b| b.inode == *ino)
                .ok_or(format!("buffer {ino} held by app {i} is not in the report"))?;
            ensure!(
                (b.ownerUid, b.ownerPid) == (uid as i32, pid),
                "owner of buffer {ino} held by app {i} (uid {uid}, pid {pid}; the first is \
                 its anchor, allocated before the restart): uid {} pid {}",
                b.ownerUid,
                b.ownerPid
            );
        }
    }

    // The killed apps: nothing of theirs stays in the report or charged.
    let mut left = Vec::new();
    let clean = eventually(scan_deadline_ms(), || {
        left = match alloc.memory_report() {
            Ok(r) => r
                .buffers
                .iter()
                .filter(|b| killed.iter().any(|k| k.0 == b.ownerPid))
                .map(|b| format!("buffer {} of pid {}", b.inode, b.ownerPid))
                .chain(
                    r.ownerTotals
                        .iter()
                        .filter(|t| {
                            killed.iter().any(|k| k.1 as i32 == t.uid)
                                && (t.count, t.bytes) != (0, 0)
                        })
                        .map(|t| format!("uid {}: {} buffers, {} bytes", t.uid, t.count, t.bytes)),
                )
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        left.is_empty()
    });
    ensure!(clean, "still charged for killed apps: {left:?}");

    std::fs::write(format!("{CHAOS_DIR}/release"), b"").map_err(|e| e.to_string())?;
    let mut summary = Vec::new();
    for (i, child) in apps {
        let line = app::finish(child, LOAD_FIRST_UID + i, "chaos-app")?;
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let n = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok());
        let (Some(ok), Some(refused), Some(interrupted)) = (n(0), n(1), n(2)) else {
            return Err(format!("chaos-app {i} printed {line:?}"));
        };
        ensure!(refused == 0, "app {i} was refused: {line}");
        summary.push((ok, interrupted));
    }
    println!(
        "chaos: {} survivors, {} killed, service restarted once; recovered {:.1} s after the \
         restart; allocations per survivor {:?}; calls cut by the restart {:?}",
        summary.len(),
        killed.len(),
        recovery.as_secs_f64(),
        summary.iter().map(|s| s.0).collect::<Vec<_>>(),
        summary.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    Ok(())
}
