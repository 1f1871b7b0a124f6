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
use crate::allocator::Reclaimed;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::procfs::{self, ProcessScan};
use crate::registry::Registry;
use crate::scan::{BufferKind, ScanSource};

/// An unprivileged uid forces at most one fresh scan this often.
pub const PER_UID_INTERVAL: Duration = Duration::from_millis(500);

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
    /// `Registry::freed_total` at the last journal compaction.
    compacted_at: Mutex<u64>,
    /// When each unprivileged uid last forced a fresh scan.
    asked_by: Mutex<std::collections::HashMap<u32, Instant>>,
    /// The service's reserve pools: their buffers are the service's own
    /// fds, reported as the pool, not as the service holding buffers.
    pools: std::sync::OnceLock<Arc<Pools>>,
    /// The service's counters (scans here; allocations in the service).
    metrics: Arc<Metrics>,
    /// Called with each new accounting, under the scan lock (so in scan
    /// order): the metrics textfile.
    after_scan: std::sync::OnceLock<AfterScan>,
    /// Perfetto counter tracks (checks tracing once per scan).
    tracer: crate::trace::Tracer,
    /// Told of every record dropped because its buffer was freed.
    freed_listeners: Mutex<Vec<FreedListener>>,
}

/// See [`Monitor::set_after_scan`].
pub type AfterScan = Box<dyn Fn(&Accounting) + Send + Sync>;

/// Called with the records of freed buffers, after they left the registry.
pub type FreedListener = Box<dyn Fn(&[crate::registry::BufferRecord]) + Send + Sync>;

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
        let metrics = Arc::new(Metrics::new(source.name()));
        Monitor {
            registry,
            source,
            source_reason,
            hwm: Mutex::new(HwmTracker::new()),
            allocated: tokio::sync::Notify::new(),
            scanning: Mutex::new(()),
            last: Mutex::new(None),
            compacted_at: Mutex::new(0),
            asked_by: Mutex::new(std::collections::HashMap::new()),
            pools: std::sync::OnceLock::new(),
            metrics,
            after_scan: std::sync::OnceLock::new(),
            tracer: crate::trace::Tracer::system(),
            freed_listeners: Mutex::new(Vec::new()),
        }
    }

    /// Traces to another tracefs (tests).
    pub fn with_tracer(mut self, tracer: crate::trace::Tracer) -> Monitor {
        self.tracer = tracer;
        self
    }

    /// The counter-track writer (the allocation path writes its instants).
    pub fn tracer(&self) -> &crate::trace::Tracer {
        &self.tracer
    }

    /// Calls `listener` with the records of buffers found freed, at each
    /// scan and quota reclaim that drops some.
    pub fn on_freed(&self, listener: FreedListener) {
        self.freed_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    fn tell_freed(&self, freed: &[crate::registry::BufferRecord]) {
        if freed.is_empty() {
            return;
        }
        for l in self
            .freed_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l(freed);
        }
    }

    /// The latest view when its scan started at most `max_age` ago, else a
    /// fresh one ([`Monitor::refresh`], or [`Monitor::refresh_for`] `uid`
    /// for an unprivileged caller). `max_age` zero always scans.
    pub fn recent(
        &self,
        max_age: Duration,
        uid: Option<u32>,
    ) -> Result<Arc<Accounting>, ScanFailed> {
        if !max_age.is_zero() {
            if let Some(last) = &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
                if last.started.elapsed() <= max_age {
                    return Ok(last.accounting.clone());
                }
            }
        }
        match uid {
            Some(uid) => self.refresh_for(uid),
            None => self.refresh(),
        }
    }

    /// Reports `pools` as the service's pool (once; later calls are ignored).
    pub fn set_pools(&self, pools: Arc<Pools>) {
        let _ = self.pools.set(pools);
    }

    /// The service's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The scan source's name (`bpf`, `procfs`).
    pub fn source_name(&self) -> &'static str {
        self.source.name()
    }

    /// Runs `f` after every successful scan with its accounting (set once;
    /// a second call is ignored and returns false).
    pub fn set_after_scan(&self, f: AfterScan) -> bool {
        self.after_scan.set(f).is_ok()
    }

    /// Which source and why, in one line.
    pub fn source_reason(&self) -> &str {
        &self.source_reason
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
        let acc = match self.scan_now() {
            Ok(a) => Arc::new(a),
            Err(e) => {
                self.metrics.scanned(None);
                return Err(e);
            }
        };
        self.metrics.scanned(Some(started.elapsed()));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Shared {
            started,
            accounting: acc.clone(),
        });
        if let Some(f) = self.after_scan.get() {
            f(&acc);
        }
        Ok(acc)
    }

    fn scan_now(&self) -> Result<Accounting, ScanFailed> {
        // Records before the scan: each was committed before the kernel's
        // list was read, so if its buffer lives, the list has it.
        let pooled_before = self.pools.get().map(|p| p.keys());
        let records = self.registry.snapshot();
        let mut scan = self
            .source
            .scan()
            .map_err(|e| ScanFailed(format!("{} scan failed: {e}", self.source.name())))?;
        // The pool's buffers are the service's own fds: out of the scan,
        // onto the pool's line. Any buffer pooled before or after the scan
        // (one handed out meanwhile is in the registry by now).
        let pool = self.pools.get().map(|p| {
            let mut keys = pooled_before.unwrap_or_default();
            keys.extend(p.keys());
            strip_pool(&mut scan, &keys, std::process::id() as i32);
            accounting::PoolFigures {
                pid: std::process::id() as i32,
                classes: p.status(),
            }
        });
        // Owner names are taken here, not on the allocation path (the
        // records read before the scan get them too; they are not re-read,
        // since a record committed after the scan's list was read would
        // look freed).
        let mut records = records;
        let mut names = std::collections::HashMap::new();
        self.registry.fill_owner_names(|pid| {
            let n = scan
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.comm.clone())
                .or_else(|| {
                    let n = crate::allocator::process_name(pid);
                    (!n.is_empty()).then_some(n)
                });
            if let Some(n) = &n {
                names.insert(pid, n.clone());
            }
            n
        });
        for r in records.iter_mut().filter(|r| r.owner_name.is_empty()) {
            if let Some(n) = names.get(&r.owner_pid) {
                r.owner_name = n.clone();
            }
        }
        let mut processes = scan.processes;
        let mut acc = {
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
        acc.pool = pool;
        for (key, name) in &acc.renamed {
            self.registry.rename(*key, name);
        }
        let freed = self.registry.remove_freed(|r| acc.gone.contains(&r.key()));
        if freed > 0 {
            log::debug!("{freed} buffers freed since the last scan");
        }
        let freed_records: Vec<_> = records
            .into_iter()
            .filter(|r| acc.gone.contains(&r.key()))
            .collect();
        self.tell_freed(&freed_records);
        self.tracer.after_scan(&acc, &freed_records);
        // Compact when anything was freed since the last compaction (here
        // or by a quota reclaim), so the journal stays O(live records).
        let total = self.registry.freed_total();
        let mut compacted = self.compacted_at.lock().unwrap_or_else(|e| e.into_inner());
        if *compacted != total {
            self.registry.compact_journal();
            *compacted = total;
        }
        Ok(acc)
    }

    /// [`Monitor::refresh`] for an unprivileged caller: a uid gets at most
    /// one fresh scan per [`PER_UID_INTERVAL`]; asking again sooner returns
    /// the latest view (at most that old), so no app can keep the scanner
    /// busy for everyone else.
    pub fn refresh_for(&self, uid: u32) -> Result<Arc<Accounting>, ScanFailed> {
        let now = Instant::now();
        {
            let mut asked = self.asked_by.lock().unwrap_or_else(|e| e.into_inner());
            asked.retain(|_, t| now.duration_since(*t) < PER_UID_INTERVAL);
            if asked.contains_key(&uid) {
                if let Some(last) = &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
                    return Ok(last.accounting.clone());
                }
            }
            asked.insert(uid, now);
        }
        self.refresh()
    }

    /// One raw scan from the source (start-up recovery).
    pub fn current_scan(&self) -> std::io::Result<crate::scan::Scan> {
        self.source.scan()
    }

    /// Drops the records of freed buffers before a quota refusal. With the
    /// kernel's list this reads only the list; otherwise it takes a shared
    /// full scan. Returns how many records were dropped.
    pub fn reclaim(&self) -> Reclaimed {
        // Own fds first: one closed between the two reads was still held
        // when the list was read.
        // The pool's buffers are the service's own fds too, but no reply.
        let pooled = self.pools.get().map_or(0, |p| p.held().0);
        let own_in_flight = procfs::own_buffer_fds().saturating_sub(pooled);
        Reclaimed {
            dropped: self.drop_freed(),
            own_in_flight,
            young_for: (!self.source.exact_liveness()).then_some(crate::accounting::FREED_GRACE),
        }
    }

    fn drop_freed(&self) -> usize {
        if !self.source.exact_liveness() {
            let before = self.registry.len();
            if let Err(e) = self.refresh() {
                log::warn!("reclaim: {e}");
            }
            return before.saturating_sub(self.registry.len());
        }
        // Not while a full scan runs: its iterators hold a reference on each
        // file they visit, so a buffer its client closed meanwhile is only
        // released when the scan lets go of it (seen in the VM as churn
        // refused about once in a thousand cycles).
        let _flight = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
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
        // The journal is compacted by the next background scan, not here
        // on the allocation path.
        let dropped = self.registry.remove_freed(|r| gone.contains(&r.key()));
        let freed: Vec<_> = records
            .into_iter()
            .filter(|r| gone.contains(&r.key()))
            .collect();
        self.tell_freed(&freed);
        self.tracer.freed(&freed);
        dropped
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
                Ok(Ok(_)) => crate::sys::release_free_heap(),
                Ok(Err(e)) => log::warn!("background scan: {e}; records kept"),
                Err(e) => log::error!("background scan failed: {e}"),
            }
        }
    }
}

/// Takes the pool's buffers (`keys`) out of the service's own process
/// (`me`) and out of the kernel's list: they are reported as the pool.
fn strip_pool(scan: &mut crate::scan::Scan, keys: &BTreeSet<crate::scan::BufferKey>, me: i32) {
    if keys.is_empty() {
        return;
    }
    for p in scan.processes.iter_mut().filter(|p| p.pid == me) {
        if let Ok(uses) = &mut p.result {
            uses.retain(|u| !keys.contains(&u.key));
        }
    }
    if let Some(live) = &mut scan.live {
        live.retain(|b| !keys.contains(&b.key));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::HeapKind;
    use crate::registry::{BufferRecord, Usage};
    use crate::scan::{BufferKey, LiveBuffer, Scan};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    /// A source whose answers the test sets.
    #[derive(Default)]
    struct Scripted {
        fail: std::sync::atomic::AtomicBool,
        live: Mutex<Vec<LiveBuffer>>,
        scans: AtomicUsize,
        lists: AtomicUsize,
        delay: Duration,
    }

    impl ScanSource for Arc<Scripted> {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn exact_liveness(&self) -> bool {
            true
        }
        fn scan(&self) -> std::io::Result<Scan> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if self.fail.load(Ordering::SeqCst) {
                // What a full fd table gives when listing /proc.
                return Err(std::io::Error::from_raw_os_error(nix::libc::EMFILE));
            }
            Ok(Scan {
                processes: Vec::new(),
                live: Some(self.live.lock().unwrap().clone()),
            })
        }
        fn live(&self) -> std::io::Result<Option<Vec<LiveBuffer>>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(Some(self.live.lock().unwrap().clone()))
        }
    }

    fn record(inode: u64) -> BufferRecord {
        BufferRecord {
            inode,
            heap: "system".into(),
            kind: HeapKind::DmaHeap,
            size: 4096,
            name: "b".into(),
            owner_uid: 10001,
            owner_pid: 1,
            owner_name: "app".into(),
            allocated_at: SystemTime::now(),
            committed_at: Instant::now(),
        }
    }

    fn setup(delay: Duration) -> (Arc<Scripted>, Arc<Registry>, Arc<Monitor>) {
        let src = Arc::new(Scripted {
            delay,
            ..Default::default()
        });
        let reg = Arc::new(Registry::new());
        let l = Usage {
            bytes: u64::MAX,
            count: u64::MAX,
        };
        for i in 1..=3 {
            reg.commit(reg.reserve(10001, 4096, l).unwrap(), record(i));
        }
        let m = Arc::new(Monitor::with_source(
            reg.clone(),
            Box::new(src.clone()),
            "scripted".into(),
        ));
        (src, reg, m)
    }

    fn listed(inode: u64) -> LiveBuffer {
        LiveBuffer {
            key: BufferKey::dmabuf(inode),
            size: 4096,
            exporter: "system".into(),
            name: "b".into(),
        }
    }

    /// Today's bug: an EMFILE listing /proc was an empty scan, which
    /// declared every buffer freed and wiped every owner.
    #[test]
    fn a_failed_scan_keeps_every_record() {
        let (src, reg, m) = setup(Duration::ZERO);
        src.fail.store(true, Ordering::SeqCst);
        assert!(m.refresh().is_err());
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.usage_of(10001).count, 3);
        src.fail.store(false, Ordering::SeqCst);
        *src.live.lock().unwrap() = vec![listed(1), listed(3)];
        m.refresh().unwrap();
        assert_eq!(reg.len(), 2);
    }

    /// Quota reclaim reads only the kernel's list, never a full scan.
    #[test]
    fn reclaim_reads_only_the_live_list() {
        let (src, reg, m) = setup(Duration::ZERO);
        *src.live.lock().unwrap() = vec![listed(2)];
        assert_eq!(m.reclaim().dropped, 2);
        assert_eq!(reg.usage_of(10001).count, 1);
        assert_eq!(src.scans.load(Ordering::SeqCst), 0);
        assert_eq!(src.lists.load(Ordering::SeqCst), 1);
    }

    /// One uid asking in a loop gets one fresh scan per interval; another
    /// uid still gets its own fresh view.
    #[test]
    fn an_unprivileged_uid_forces_at_most_one_scan_per_interval() {
        let (src, _reg, m) = setup(Duration::ZERO);
        for _ in 0..50 {
            m.refresh_for(10001).unwrap();
        }
        assert_eq!(src.scans.load(Ordering::SeqCst), 1);
        m.refresh_for(10002).unwrap();
        assert_eq!(src.scans.load(Ordering::SeqCst), 2);
    }

    /// memtrack's view: the latest scan while it is at most `max_age` old,
    /// a fresh one after that or always with zero.
    #[test]
    fn recent_reuses_a_young_scan_and_rescans_an_old_one() {
        let (src, _reg, m) = setup(Duration::ZERO);
        m.recent(Duration::from_secs(60), None).unwrap();
        m.recent(Duration::from_secs(60), None).unwrap();
        m.recent(Duration::from_secs(60), Some(10001)).unwrap();
        assert_eq!(src.scans.load(Ordering::SeqCst), 1);
        m.recent(Duration::ZERO, None).unwrap();
        assert_eq!(src.scans.load(Ordering::SeqCst), 2);
        std::thread::sleep(Duration::from_millis(20));
        m.recent(Duration::from_millis(10), None).unwrap();
        assert_eq!(src.scans.load(Ordering::SeqCst), 3);
    }

    /// Freed records reach the listeners from scans and from quota reclaim.
    #[test]
    fn freed_records_reach_the_listeners() {
        let (src, _reg, m) = setup(Duration::ZERO);
        let told = Arc::new(Mutex::new(Vec::new()));
        let t = told.clone();
        m.on_freed(Box::new(move |freed| {
            t.lock().unwrap().extend(freed.iter().map(|r| r.inode))
        }));
        *src.live.lock().unwrap() = vec![listed(2), listed(3)];
        m.refresh().unwrap();
        assert_eq!(*told.lock().unwrap(), [1]);
        *src.live.lock().unwrap() = vec![listed(3)];
        assert_eq!(m.reclaim().dropped, 1);
        assert_eq!(*told.lock().unwrap(), [1, 2]);
        // Nothing freed: nobody is called.
        m.refresh().unwrap();
        assert_eq!(told.lock().unwrap().len(), 2);
    }

    /// Sixteen callers at once cause one scan, never sixteen; each gets a
    /// view that started after it asked.
    #[test]
    fn concurrent_refreshes_share_scans() {
        let (src, _reg, m) = setup(Duration::ZERO);
        *src.live.lock().unwrap() = vec![listed(1), listed(2), listed(3)];
        // A scan "in progress" while the callers arrive.
        let in_progress = m.scanning.lock().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (m, arrived) = (m.clone(), arrived.clone());
                std::thread::spawn(move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    m.refresh().unwrap();
                })
            })
            .collect();
        while arrived.load(Ordering::SeqCst) < 16 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(in_progress);
        for t in threads {
            t.join().unwrap();
        }
        // One scan serves all of them (two only if a thread was descheduled
        // between arriving and asking for more than 50 ms).
        let n = src.scans.load(Ordering::SeqCst);
        assert!((1..=2).contains(&n), "{n} scans for 16 concurrent callers");
    }
}
