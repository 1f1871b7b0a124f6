//! Keeps the accounting current off the allocation path: builds reports on
//! demand, and in the background after allocations (coalesced) and on a
//! period, so hwm is observed at each allocation, each report and each
//! periodic scan, and records of freed buffers are dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::accounting::{self, Accounting, HwmTracker};
use crate::procfs;
use crate::registry::Registry;

/// How long the background scanner waits after an allocation before
/// scanning, so a burst of allocations costs one scan: under sustained
/// allocation at most about two scans a second compete with the allocating
/// threads for CPU.
pub const ALLOCATION_SCAN_DELAY: Duration = Duration::from_millis(500);

pub struct Monitor {
    registry: Arc<Registry>,
    proc_root: PathBuf,
    hwm: Mutex<HwmTracker>,
    /// Wakes the background scanner after an allocation.
    allocated: tokio::sync::Notify,
}

impl Monitor {
    pub fn new(registry: Arc<Registry>) -> Monitor {
        Monitor {
            registry,
            proc_root: PathBuf::from(procfs::PROC_ROOT),
            hwm: Mutex::new(HwmTracker::new()),
            allocated: tokio::sync::Notify::new(),
        }
    }

    /// Scans every process, joins the scan with the registry, observes hwm,
    /// and applies what the scan learnt (renames, freed buffers).
    pub fn refresh(&self) -> Accounting {
        let scans = match procfs::scan_all(&self.proc_root) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot list {}: {e}", self.proc_root.display());
                Vec::new()
            }
        };
        let records = self.registry.snapshot();
        let acc = {
            let mut hwm = self.hwm.lock().unwrap_or_else(|e| e.into_inner());
            accounting::build(&scans, &records, &mut hwm, SystemTime::now())
        };
        for (inode, name) in &acc.renamed {
            self.registry.rename(*inode, name);
        }
        let freed = self.registry.remove_freed(|r| acc.gone.contains(&r.inode));
        if freed > 0 {
            log::debug!("{freed} buffers freed since the last scan");
        }
        acc
    }

    /// Resets the high-water mark of `pid`, or of every process for 0.
    pub fn reset_hwm(&self, pid: i32) {
        let mut hwm = self.hwm.lock().unwrap_or_else(|e| e.into_inner());
        if pid == 0 {
            hwm.reset_all();
        } else {
            hwm.reset(pid);
        }
    }

    /// Called after each allocation: cheap, never scans on the caller's thread.
    pub fn note_allocation(&self) {
        self.allocated.notify_one();
    }

    /// The background scanner: after allocations (coalesced) and every `period`.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.allocated.notified() => {
                    tokio::time::sleep(ALLOCATION_SCAN_DELAY).await;
                }
            }
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.refresh()).await {
                log::error!("background scan failed: {e}");
            }
        }
    }
}
