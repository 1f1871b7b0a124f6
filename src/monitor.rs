//! Keeps the accounting current off the allocation path: builds reports on
//! demand, and in the background after allocations (coalesced) and on a
//! period, so hwm is observed at each allocation, each report and each
//! periodic scan, and records of freed buffers are dropped.
//!
//! Scans are single-flight: at most one runs, and every request that
//! arrived while it ran shares the next one (a view that started after the
//! request, so it is fresh), so any number of callers cause at most one
//! scan in flight and one queued. A failed scan changes nothing (it never drops records).
//! Quota reclaim reads only the kernel's list of live buffers where the
//! source has one (O(live buffers), no procfs).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accounting::{self, Accounting, HwmTracker};
use crate::procfs::{self, ProcessScan};
use crate::registry::Registry;
use crate::scan::{BufferKind, ScanSource};

/// How long the background scanner waits after an allocation before
/// scanning, so a burst of allocations costs one scan.
pub const ALLOCATION_SCAN_DELAY: Duration = Duration::from_millis(500);

struct Shared {
    started: Instant,
    accounting: Arc<Accounting>,
}

pub struct Monitor {
    registry: Arc<Registry>,
    source: Box<dyn ScanSource>,
    /// One line: which source and why (start-up log, dump, dmabufctl).
    source_reason: String,
    hwm: Mutex<HwmTracker>,
    /// Wakes the background scanner after an allocation.
    allocated: tokio::sync::Notify,
    /// Held while scanning: the single flight.
    scanning: Mutex<()>,
    last: Mutex<Option<Shared>>,
}

/// A scan that could not be made (nothing was changed).
#[derive(Clone, Debug)]
pub struct ScanFailed(pub String);

impl std::fmt::Display for ScanFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Monitor {
    /// A monitor over the procfs source (tests, tools).
    pub fn new(registry: Arc<Registry>) -> Monitor {
        Monitor::with_source(
            registry,
            Box::new(crate::scan::ProcfsSource::new()),
            "procfs".into(),
        )
    }

    pub fn with_source(
        registry: Arc<Registry>,
        source: Box<dyn ScanSource>,
        source_reason: String,
    ) -> Monitor {
        Monitor {
            registry,
            source,
            source_reason,
            hwm: Mutex::new(HwmTracker::new()),
            allocated: tokio::sync::Notify::new(),
            scanning: Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// `bpf` or `procfs`.
    pub fn source_name(&self) -> &'static str {
        self.source.name()
    }

    /// Which source and why, in one line.
    pub fn source_reason(&self) -> &str {
        &self.source_reason
    }

    pub fn exact_liveness(&self) -> bool {
        self.source.exact_liveness()
    }

    /// A view that started no earlier than this call: made here, or by
    /// another caller that got the scan lock first. Applies what the scan learnt (renames,
    /// freed buffers) to the registry.
    pub fn refresh(&self) -> Result<Arc<Accounting>, ScanFailed> {
        let asked = Instant::now();
        let _flight = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            if last.started >= asked {
                return Ok(last.accounting.clone());
            }
        }
        let started = Instant::now();
        let acc = Arc::new(self.scan_now()?);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Shared {
            started,
            accounting: acc.clone(),
        });
        Ok(acc)
    }

    fn scan_now(&self) -> Result<Accounting, ScanFailed> {
        // Records before the scan: each was committed before the kernel's
        // list was read, so if its buffer lives, the list has it.
        let records = self.registry.snapshot();
        let scan = self
            .source
            .scan()
            .map_err(|e| ScanFailed(format!("{} scan failed: {e}", self.source.name())))?;
        let mut processes = scan.processes;
        let acc = {
            let mut hwm = self.hwm.lock().unwrap_or_else(|e| e.into_inner());
            // Sources that list only referencing processes: keep a process
            // that dropped its buffers visible while it lives (its hwm).
            add_tracked_processes(&mut processes, &hwm);
            accounting::build(
                &processes,
                scan.live.as_deref(),
                &records,
                &mut hwm,
                Instant::now(),
            )
        };
        for (key, name) in &acc.renamed {
            self.registry.rename(*key, name);
        }
        let freed = self.registry.remove_freed(|r| acc.gone.contains(&r.key()));
        if freed > 0 {
            log::debug!("{freed} buffers freed since the last scan");
            self.registry.compact_journal();
        }
        Ok(acc)
    }

    /// One raw scan from the source (start-up recovery).
    pub fn current_scan(&self) -> std::io::Result<crate::scan::Scan> {
        self.source.scan()
    }

    /// Drops the records of freed buffers before a quota refusal. With the
    /// kernel's list this reads only the list; otherwise it takes a shared
    /// full scan. Returns how many records were dropped.
    pub fn reclaim(&self) -> usize {
        if !self.source.exact_liveness() {
            let before = self.registry.len();
            if let Err(e) = self.refresh() {
                log::warn!("reclaim: {e}");
            }
            return before.saturating_sub(self.registry.len());
        }
        let records = self.registry.snapshot();
        let live = match self.source.live() {
            Ok(Some(l)) => l,
            Ok(None) => return 0,
            Err(e) => {
                log::warn!("reclaim: cannot read the kernel's buffer list: {e}");
                return 0;
            }
        };
        let alive: BTreeSet<_> = live.iter().map(|b| b.key).collect();
        let gone: BTreeSet<_> = records
            .iter()
            .map(|r| r.key())
            .filter(|k| k.kind == BufferKind::DmaBuf && !alive.contains(k))
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let n = self.registry.remove_freed(|r| gone.contains(&r.key()));
        self.registry.compact_journal();
        n
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
            match tokio::task::spawn_blocking(move || me.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::warn!("background scan: {e}; records kept"),
                Err(e) => log::error!("background scan failed: {e}"),
            }
        }
    }
}

/// Adds an empty entry for each pid the hwm tracker knows that the scan
/// left out but that still exists.
fn add_tracked_processes(processes: &mut Vec<ProcessScan>, hwm: &HwmTracker) {
    let listed: BTreeSet<i32> = processes.iter().map(|p| p.pid).collect();
    let root = std::path::Path::new(procfs::PROC_ROOT);
    let mut added = false;
    for pid in hwm.pids() {
        if listed.contains(&pid) {
            continue;
        }
        if let Some((uid, comm)) = procfs::identity(root, pid) {
            processes.push(ProcessScan {
                pid,
                uid,
                comm,
                result: Ok(Vec::new()),
            });
            added = true;
        }
    }
    if added {
        processes.sort_by_key(|p| p.pid);
    }
}
