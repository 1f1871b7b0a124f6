//! Load: long allocate/free churn and many concurrent apps, judged by the
//! service's fd count and RSS as the kernel reports them.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::process::Stdio;

use dmabufd::sys::SyncDirection;

use crate::app::{self, RoleResult, APP_A, APP_B, APP_SMALL_QUOTA};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{connect, eventually, service_answers, KIB, MIB, SETTLE_MS};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "allocate_free_1024_times_per_size_does_not_grow_service_fds_or_rss",
            run: allocate_free_1024_times_per_size_does_not_grow_service_fds_or_rss,
        },
        Case {
            name: "eight_apps_with_100_concurrent_allocations_all_succeed_without_service_fd_leak",
            run: eight_apps_with_100_concurrent_allocations_all_succeed_without_service_fd_leak,
        },
        Case {
            name: "alloc_free_churn_past_the_quota_total_is_not_refused_for_freed_buffers",
            run: alloc_free_churn_past_the_quota_total_is_not_refused_for_freed_buffers,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("churn", churn), ("concurrent", concurrent)]
}

const CHURN_SIZES: [u64; 4] = [4 * KIB, 64 * KIB, MIB, 2 * MIB];
const ROOT: u32 = 0;
/// RSS the service may gain over a second round of 4096 allocations. Seen
/// in the VM: 0.3-0.8 MiB as the heap settles. A leaked mapping or copy of
/// the buffers would be gigabytes; this also catches leaking 512+ bytes per
/// allocation.
const RSS_SLACK_KB: u64 = 2048;

/// The service's open fds (what each points at) and VmRSS in kB.
struct Footprint {
    fds: Vec<String>,
    rss_kb: u64,
}

fn service_footprint(pid: i32) -> Result<Footprint, String> {
    let mut fds: Vec<String> = proc_scan::fd_targets(pid)?
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    fds.sort();
    Ok(Footprint {
        fds,
        rss_kb: proc_scan::status_field(pid, "VmRSS")?,
    })
}

/// The service's fds are back to at most `before` within a few seconds; a
/// /proc scan in flight holds a directory fd for a moment, a leak stays.
fn fds_return_to(pid: i32, before: &Footprint) -> Result<Footprint, String> {
    let mut now = service_footprint(pid)?;
    eventually(SETTLE_MS, || {
        now = service_footprint(pid).unwrap_or(Footprint {
            fds: before.fds.clone(),
            rss_kb: 0,
        });
        now.fds.len() <= before.fds.len()
    });
    let mut extra = now.fds.clone();
    for fd in &before.fds {
        if let Some(i) = extra.iter().position(|e| e == fd) {
            extra.remove(i);
        }
    }
    ensure!(
        now.fds.len() <= before.fds.len(),
        "service fds grew from {} to {}; new: {extra:?}",
        before.fds.len(),
        now.fds.len()
    );
    Ok(now)
}

/// Runs as root, whose quota in the VM config is far above 1024 x 3 MiB:
/// this case is about leaks; quota under churn has its own case.
fn allocate_free_1024_times_per_size_does_not_grow_service_fds_or_rss() -> Outcome {
    let pid = proc_scan::service_pid()?;
    let sizes: Vec<String> = CHURN_SIZES.iter().map(u64::to_string).collect();
    let mut args = vec!["1024"];
    args.extend(sizes.iter().map(String::as_str));
    // The first round sets the service's steady state (heap high-water mark,
    // records awaiting their free grace); a leak shows as growth in the second.
    let warm = app::run_as(ROOT, "churn", &args)?;
    ensure!(warm == "ok", "first churn round printed {warm:?}");
    let before = service_footprint(pid)?;
    let out = app::run_as(ROOT, "churn", &args)?;
    ensure!(out == "ok", "second churn round printed {out:?}");
    let after = fds_return_to(pid, &before)?;
    let (rss_before, rss_after) = (before.rss_kb, after.rss_kb);
    ensure!(
        rss_after <= rss_before + RSS_SLACK_KB,
        "service RSS grew from {rss_before} kB to {rss_after} kB"
    );
    service_answers(&connect()?)
}

/// An app that never holds more than one buffer may allocate and free far
/// more than its quota's total: quota limits live buffers, not history.
/// Run as uid 10003 (4 buffers / 1 MiB in the VM config), so the quota is
/// reached every fourth cycle of the small sizes and every cycle of the
/// 1 MiB one however fast the machine is: each of those allocations goes
/// through the refusal path's look for freed buffers, not only through the
/// background scan keeping up (under the default 1 GiB quota, a slow
/// machine's scans dropped the freed records before the quota was ever
/// reached). 500 cycles per size: ~630 MiB through a 1 MiB quota.
fn alloc_free_churn_past_the_quota_total_is_not_refused_for_freed_buffers() -> Outcome {
    let sizes = [4 * KIB, 256 * KIB, MIB].map(|s| s.to_string());
    let mut args = vec!["500"];
    args.extend(sizes.iter().map(String::as_str));
    let out = app::run_as(APP_SMALL_QUOTA, "churn", &args)?;
    ensure!(out == "ok", "churn printed {out:?}");
    Ok(())
}

/// `churn COUNT SIZE...`: COUNT allocate/free cycles per size, touching each buffer.
fn churn(args: &[&str]) -> RoleResult {
    let (count, sizes) = args.split_first().ok_or("churn COUNT SIZE...")?;
    let count: usize = count.parse().map_err(|_| "bad count")?;
    let alloc = connect()?;
    for size in sizes {
        let size: u64 = size.parse().map_err(|_| "bad size")?;
        for i in 0..count {
            let mut buf = alloc
                .allocate("system", size, "vts-churn")
                .map_err(|e| format!("{size} bytes, cycle {i}: {e}; {}", churn_evidence()))?;
            if i % 64 == 0 {
                let mut m = buf.map(SyncDirection::Write).map_err(|e| e.to_string())?;
                m.write_at(0, &[1]).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok("ok".into())
}

/// What still holds buffers when a churn cycle is refused: this process's
/// buffer fds and the kernel's list (debugfs bufinfo), for the failure line.
fn churn_evidence() -> String {
    let mine: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| l.contains("dmabuf"))
                .collect()
        })
        .unwrap_or_default();
    let bufinfo = std::fs::read_to_string("/sys/kernel/debug/dma_buf/bufinfo").unwrap_or_default();
    let churn: Vec<&str> = bufinfo
        .lines()
        .filter(|l| l.contains("vts-churn"))
        .collect();
    format!("own dma-buf fds {mine:?}; bufinfo vts-churn lines {churn:?}")
}

fn eight_apps_with_100_concurrent_allocations_all_succeed_without_service_fd_leak() -> Outcome {
    let pid = proc_scan::service_pid()?;
    let before = service_footprint(pid)?;
    let apps: Vec<_> = (0..8)
        .map(|i| {
            let uid = if i % 2 == 0 { APP_A } else { APP_B };
            app::command_as(uid, "concurrent", &["100", "10"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(|c| (uid, c))
                .map_err(|e| format!("spawning app {i}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut failures = Vec::new();
    for (uid, child) in apps {
        match app::finish(child, uid, "concurrent") {
            Ok(out) if out == "ok" => {}
            Ok(out) => failures.push(format!("uid {uid}: {out}")),
            Err(e) => failures.push(e),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    fds_return_to(pid, &before)?;
    service_answers(&connect()?)
}

/// `concurrent TOTAL THREADS`: TOTAL allocations from THREADS threads at once,
/// all held until every one is checked (distinct live dma-bufs of the system heap).
fn concurrent(args: &[&str]) -> RoleResult {
    let [total, threads] = args else {
        return Err("concurrent TOTAL THREADS".into());
    };
    let total: usize = total.parse().map_err(|_| "bad total")?;
    let threads: usize = threads.parse().map_err(|_| "bad threads")?;
    let alloc = connect()?;
    let barrier = std::sync::Barrier::new(threads);
    let per_thread = total.div_ceil(threads);
    let buffers = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (alloc, barrier) = (&alloc, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (0..per_thread)
                        .filter(|i| t * per_thread + i < total)
                        .map(|i| {
                            alloc
                                .allocate("system", 64 * KIB, &format!("vts-conc-{t}-{i}"))
                                .map_err(|e| format!("thread {t} allocation {i}: {e}"))
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "allocating thread panicked".to_string())?
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let buffers: Vec<_> = buffers.into_iter().flatten().collect();
    ensure!(
        buffers.len() == total,
        "{} buffers, want {total}",
        buffers.len()
    );
    let me = std::process::id() as i32;
    let mut inodes = BTreeSet::new();
    for b in &buffers {
        let info = proc_scan::fdinfo(me, b.fd().as_raw_fd())?;
        ensure!(
            info.get("exp_name") == Some("system"),
            "buffer {} is not a system-heap dma-buf",
            b.inode()
        );
        inodes.insert(b.inode());
    }
    ensure!(
        inodes.len() == total,
        "only {} distinct inodes of {total}",
        inodes.len()
    );
    Ok("ok".into())
}
