//! Batch allocation and reserve pools on the real system heap. The pool
//! cases start a second dmabufd of their own (RPC binder, with a `[pools]`
//! config), so the suite's main service stays pool-free for every other
//! case; it drops to uid 1100 like the main one.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use dmabufd::client::Allocator;
use dmabufd::sys::SyncDirection;

use crate::app::{self, RoleResult, APP_SMALL_QUOTA};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{connect, eventually, meminfo_bytes, oom_kills_in_kernel_log, KIB, MIB};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "batch_of_16_system_heap_buffers_is_named_in_fdinfo_and_all_or_nothing_on_quota",
            run: batch_on_the_system_heap,
        },
        Case {
            name:
                "pool_hands_out_zeroed_buffers_named_in_the_holders_fdinfo_and_keeps_no_fd_of_them",
            run: pool_hand_out,
        },
        Case {
            name: "pool_drains_within_1s_for_a_memory_hog_that_finishes_without_oom_then_refills",
            run: pool_drains_for_a_memory_hog,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("batch-quota", batch_quota), ("hog", hog)]
}

/// A dmabufd with `pools` (TOML lines) serving RPC binder at
/// `/run/dmabufd-pool/rpc.sock`, or kernel binder as a second allocator
/// instance ([`PoolService::start_kernel`]); killed when dropped.
pub struct PoolService {
    child: Child,
    pub socket: &'static str,
    /// The kernel-binder instance it registered, if it serves kernel binder.
    pub instance: Option<&'static str>,
}

pub const POOL_SOCKET: &str = "/run/dmabufd-pool/rpc.sock";

impl PoolService {
    pub fn start(pools: &str) -> Result<PoolService, String> {
        Self::start_on(pools, None)
    }

    /// On kernel binder as `vendor.dmabuf.IDmaBufAllocator/<instance>`
    /// (the hub policy lets uid 1100 register any `vendor.dmabuf.*`).
    pub fn start_kernel(pools: &str, instance: &'static str) -> Result<PoolService, String> {
        Self::start_on(pools, Some(instance))
    }

    fn start_on(pools: &str, instance: Option<&'static str>) -> Result<PoolService, String> {
        let dir = Path::new("/run/dmabufd-pool");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(1100)),
            Some(nix::unistd::Gid::from_raw(1100)),
        )
        .map_err(|e| e.to_string())?;
        let base = std::fs::read_to_string("/etc/dmabufd.toml").map_err(|e| e.to_string())?;
        let config = dir.join("dmabufd.toml");
        let base = match instance {
            Some(i) => base.replacen("[service]\n", &format!("[service]\ninstance = {i:?}\n"), 1),
            None => base,
        };
        std::fs::write(&config, format!("{base}\n{pools}\n")).map_err(|e| e.to_string())?;
        let log = std::fs::File::create("/run/dmabufd-pool.log").map_err(|e| e.to_string())?;
        let transport = match instance {
            Some(_) => vec!["--kernel"],
            None => vec!["--rpc", POOL_SOCKET],
        };
        let child = Command::new("dmabufd")
            .args(transport)
            .arg("--config")
            .arg(&config)
            .env("DMABUFD_LOG", "info")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning the pool dmabufd: {e}"))?;
        let svc = PoolService {
            child,
            socket: POOL_SOCKET,
            instance,
        };
        // Loading the BPF iterators alone takes seconds under TCG.
        let start = Instant::now();
        ensure!(
            eventually(180_000, || svc.connect().is_ok()),
            "the pool dmabufd did not come up in 180 s: {}",
            svc.log()
        );
        println!(
            "    pool dmabufd (pid {}) up in {} ms",
            svc.pid(),
            start.elapsed().as_millis()
        );
        Ok(svc)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string("/run/dmabufd-pool.log").unwrap_or_default()
    }

    pub fn connect(&self) -> Result<Allocator, String> {
        match self.instance {
            Some(i) => Allocator::connect_kernel_instance(i),
            None => Allocator::connect_rpc(Path::new(self.socket)),
        }
        .map_err(|e| e.to_string())
    }

    /// (pooled bytes, target bytes) of the system heap's pool.
    pub fn pooled(a: &Allocator) -> Result<(i64, i64), String> {
        let h = a
            .heaps()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|h| h.name == "system")
            .ok_or("no system heap")?;
        let target = h
            .poolClasses
            .iter()
            .map(|c| c.size * c.targetCount as i64)
            .sum();
        Ok((h.pooledBytes, target))
    }

    /// Waits up to `ms` for the pool to be full; returns how long it took.
    pub fn wait_full(a: &Allocator, ms: u64) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = (0, 0);
        let full = eventually(ms, || {
            last = Self::pooled(a).unwrap_or((-1, 0));
            last.1 > 0 && last.0 == last.1
        });
        ensure!(full, "pool not full after {ms} ms: {last:?}");
        Ok(start.elapsed())
    }

    /// Inodes of the dma-bufs the service holds an fd of.
    pub fn held_inodes(&self) -> BTreeSet<u64> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return BTreeSet::new();
        };
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("/dmabuf:"))
                    .unwrap_or(false)
            })
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .map(|m| m.ino())
            .collect()
    }
}

impl Drop for PoolService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch_on_the_system_heap() -> Outcome {
    let a = connect()?;
    let v = a
        .allocate_batch("system", 4 * KIB, "ui-tile", 0, 16)
        .map_err(|e| format!("allocateBatch: {e}"))?;
    ensure!(v.len() == 16, "{} buffers", v.len());
    let me = std::process::id() as i32;
    let inodes: BTreeSet<u64> = v.iter().map(|b| b.inode()).collect();
    ensure!(inodes.len() == 16, "not 16 distinct buffers");
    for b in &v {
        let info = proc_scan::fdinfo(me, b.fd().as_raw_fd())?;
        ensure!(
            info.get("name") == Some("ui-tile") && info.get("exp_name") == Some("system"),
            "fdinfo of a batch buffer: {info:?}"
        );
    }
    let out = app::run_as(APP_SMALL_QUOTA, "batch-quota", &[])?;
    ensure!(out == "ok", "batch-quota printed {out:?}");
    Ok(())
}

/// As uid 10003 (4 buffers / 1 MiB): a batch of 5 is refused whole and
/// leaves usage unchanged; a batch of 4 fits exactly.
fn batch_quota(_: &[&str]) -> RoleResult {
    let a = connect()?;
    let me = std::process::id() as i32;
    let e = match a.allocate_batch("system", 256 * KIB, "q", 0, 5) {
        Ok(_) => return Err("a batch of 5 passed a 4-buffer quota".into()),
        Err(e) => e,
    };
    if e.error_code() != Some(ErrorCode::QUOTA_EXCEEDED) {
        return Err(format!("batch of 5: {e}"));
    }
    let v = a
        .allocate_batch("system", 256 * KIB, "q", 0, 4)
        .map_err(|e| format!("batch of 4 after the refusal: {e}"))?;
    for b in &v {
        let info = proc_scan::fdinfo(me, b.fd().as_raw_fd())?;
        if info.get("name") != Some("q") {
            return Err(format!("fdinfo {info:?}"));
        }
    }
    match a.allocate("system", 4 * KIB, "one-more") {
        Ok(_) => Err("quota full, yet one more passed".into()),
        Err(e) if e.error_code() == Some(ErrorCode::QUOTA_EXCEEDED) => Ok("ok".into()),
        Err(e) => Err(format!("one more: {e}")),
    }
}

fn pool_hand_out() -> Outcome {
    let svc = PoolService::start(
        "[pools]\npsi_trigger = \"\"\nmin_available = 0\n\
         [pools.system]\nclasses = [{ size = \"1M\", count = 4 }]",
    )?;
    let a = svc.connect()?;
    let filled = PoolService::wait_full(&a, 30_000)?;
    println!("    pool of 4 x 1 MiB filled in {} ms", filled.as_millis());
    let pooled = svc.held_inodes();
    ensure!(pooled.len() == 4, "the service holds {pooled:?}");
    let me = std::process::id() as i32;
    let mut b = a
        .allocate("system", MIB, "cam-raw")
        .map_err(|e| format!("allocate: {e}"))?;
    ensure!(pooled.contains(&b.inode()), "not a pooled buffer");
    let info = proc_scan::fdinfo(me, b.fd().as_raw_fd())?;
    ensure!(
        info.get("name") == Some("cam-raw") && info.get("exp_name") == Some("system"),
        "the holder's fdinfo: {info:?}"
    );
    {
        let m = b.map(SyncDirection::Read).map_err(|e| e.to_string())?;
        ensure!(m.to_vec().iter().all(|&x| x == 0), "not zero-filled");
    }
    // Unmapped by anyone else: no process but us maps it.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", svc.pid())).unwrap_or_default();
    ensure!(
        !maps.contains("/dmabuf:"),
        "the service maps buffers:\n{maps}"
    );
    ensure!(
        eventually(2000, || !svc.held_inodes().contains(&b.inode())),
        "the service still holds the handed-out buffer"
    );
    ensure!(svc.held_inodes().len() == 3, "{:?}", svc.held_inodes());
    // Unpooled sizes leave no fd behind either.
    let f = a
        .allocate("system", 8 * KIB, "fresh")
        .map_err(|e| e.to_string())?;
    ensure!(
        eventually(2000, || !svc.held_inodes().contains(&f.inode())),
        "the service still holds a fresh buffer"
    );
    // The reports: the pool on the service's line, never as a holder.
    let dump = String::from_utf8(a.render_dump(&[]).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let line = dump
        .lines()
        .find(|l| l.starts_with("dmabufd pool"))
        .ok_or_else(|| format!("no pool line:\n{dump}"))?;
    ensure!(
        line.contains(&format!("pid {}", svc.pid())) && line.contains("3 buffers, 3072 kB"),
        "{line}"
    );
    ensure!(
        !dump.contains(&format!("dmabufd:{}", svc.pid())) && !dump.contains("dmabufd-pool"),
        "the service shows as a holder:\n{dump}"
    );
    let report = a.memory_report().map_err(|e| e.to_string())?;
    ensure!(
        report
            .processes
            .iter()
            .filter(|p| p.pid == svc.pid())
            .all(|p| p.rssBytes == 0),
        "the service has rss in the report"
    );
    ensure!(
        report
            .buffers
            .iter()
            .all(|x| !pooled.contains(&(x.inode as u64)) || x.inode as u64 == b.inode()),
        "a pooled buffer is listed as a buffer"
    );
    Ok(())
}

/// `hog BYTES`: touches BYTES of anonymous memory 1 MiB at a time, then
/// prints "done".
fn hog(args: &[&str]) -> RoleResult {
    let bytes: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("hog BYTES")?;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut done = 0;
    while done < bytes {
        let mut c = vec![0u8; MIB as usize];
        for i in (0..c.len()).step_by(4096) {
            c[i] = 1;
        }
        chunks.push(c);
        done += MIB as usize;
    }
    let sum: usize = chunks.iter().map(|c| c[0] as usize).sum();
    Ok(format!("done {sum}"))
}

fn pool_drains_for_a_memory_hog() -> Outcome {
    let svc = PoolService::start(
        "[pools]\npressure_quiet_ms = 3000\nmax_bytes = \"1G\"\n\
         [pools.system]\nclasses = [{ size = \"12M\", count = 24 }]",
    )?;
    let a = svc.connect()?;
    PoolService::wait_full(&a, 120_000)?;
    let (pool_bytes, _) = PoolService::pooled(&a)?;
    ensure!(
        svc.log().contains("from PSI trigger"),
        "no PSI trigger (psi=1 on the command line?): {}",
        svc.log()
    );
    // More than is available while the pool is full, less than with it
    // given back: without the drain the hog would be OOM-killed.
    let avail = meminfo_bytes("MemAvailable")?;
    let hog_bytes = avail + pool_bytes as u64 / 2;
    println!(
        "    pool {} MiB, MemAvailable {} MiB, hog {} MiB",
        pool_bytes >> 20,
        avail >> 20,
        hog_bytes >> 20
    );
    let oom_before = oom_kills_in_kernel_log()?.len();
    let mut child = app::command_as(0, "hog", &[&hog_bytes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Watch: when MemAvailable first falls below the pool's watermark
    // (128 MiB) or the pool first shrinks, and when it is empty.
    let start = Instant::now();
    let (mut low_at, mut empty_at) = (None, None);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        let now = start.elapsed();
        if low_at.is_none() && meminfo_bytes("MemAvailable")? < 128 * MIB {
            low_at = Some(now);
        }
        if empty_at.is_none() && PoolService::pooled(&a)?.0 == 0 {
            empty_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    ensure!(
        out.status.success(),
        "the hog did not finish ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let oom = oom_kills_in_kernel_log()?;
    ensure!(oom.len() == oom_before, "OOM kills: {oom:?}");
    let empty_at = empty_at.ok_or("the pool never drained")?;
    // The pool may drain on PSI before MemAvailable is low; if MemAvailable
    // got low first, within 1 s of that.
    let drain = match low_at {
        Some(low) if low < empty_at => empty_at - low,
        _ => Duration::ZERO,
    };
    println!(
        "    low at {:?}, drained at {} ms, {} ms after memory got low; hog took {} ms",
        low_at.map(|d| d.as_millis()),
        empty_at.as_millis(),
        drain.as_millis(),
        start.elapsed().as_millis()
    );
    ensure!(
        drain < Duration::from_secs(1),
        "drained {drain:?} after memory got low"
    );
    ensure!(
        svc.log().contains("memory pressure ("),
        "no drain logged: {}",
        svc.log()
    );
    // Refills once pressure has been gone for its quiet time.
    let refill = PoolService::wait_full(&a, 180_000)?;
    ensure!(
        svc.log().contains("pools refilling"),
        "refill not logged: {}",
        svc.log()
    );
    println!(
        "    refilled {} ms after the hog exited",
        refill.as_millis()
    );
    Ok(())
}
