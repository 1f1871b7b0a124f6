//! Turns procfs scans plus the registry into per-process figures (rss, pss,
//! hwm), a per-buffer view (owner and holders) and totals.
//!
//! Semantics (reports.md, after Android's dmabuf_rss/dmabuf_pss):
//! - a process references a buffer while it holds at least one fd or one
//!   mapping of it (partial mappings count; a mapping outliving its fd counts);
//! - `rss` = sum of the full sizes of the distinct buffers it references
//!   (dup'd fds and repeated mappings count once);
//! - `pss` = sum over those buffers of size / number of referencing
//!   processes. Integer bytes: each holder gets `size / n`, and the
//!   `size % n` remaining bytes go one each to the holders with the lowest
//!   pids, so the pss of all processes adds up exactly to the bytes of the
//!   referenced buffers;
//! - `hwm` = the highest rss observed for the pid since it was first seen or
//!   reset ([`HwmTracker`]). It is only as fine as the observations: each
//!   [`build`] (reports, periodic scans) observes every readable process.
//!
//! A memfd counts as a buffer only when the registry holds it (kind Memfd):
//! other memfds are ordinary shared memory, not the memfd heap's buffers.
//! Dma-bufs count whether or not the service allocated them; those it did
//! not are shown with the exporter from fdinfo and an unknown owner.
//!
//! [`build`] expects the scans of every process ([`crate::procfs::scan_all`]):
//! pss and "gone" are only meaningful over the whole system.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::procfs::{self, BufferKey, BufferKind, ProcessScan, ScanError};
use crate::registry::BufferRecord;
use crate::scan::LiveBuffer;

/// procfs fallback only (no kernel list of live buffers): a record younger
/// than this (monotonic clock) is never declared gone, because between the
/// reply leaving the service and the client receiving the fd no process
/// holds the buffer. With the kernel's list liveness is exact and no
/// allowance is used.
pub const FREED_GRACE: Duration = Duration::from_secs(1);

/// Exporter shown for a buffer seen only through mappings (maps do not name
/// the exporter) and not allocated by the service.
pub const UNKNOWN_EXPORTER: &str = "unknown";

/// Who allocated a buffer through the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub pid: i32,
    pub name: String,
}

/// A process referencing a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderView {
    pub pid: i32,
    pub uid: u32,
    pub name: String,
    pub fd_refs: u32,
    pub map_refs: u32,
    /// This holder's share of the buffer in bytes (its pss contribution).
    pub pss: u64,
}

/// One live buffer: what it is, who allocated it, who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferView {
    pub key: BufferKey,
    pub size: u64,
    /// Registry heap name for service buffers, else fdinfo `exp_name`.
    pub exporter: String,
    /// Current name (as seen by the scan, so renames show).
    pub name: String,
    /// `None`: not allocated through the service.
    pub owner: Option<Owner>,
    pub allocated_at: Option<SystemTime>,
    /// Ordered by pid. Empty for a registry buffer no readable process
    /// references but that is not known to be gone.
    pub holders: Vec<HolderView>,
}

impl BufferView {
    pub fn inode(&self) -> u64 {
        self.key.inode
    }
}

/// One buffer as seen from one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessBuffer {
    pub key: BufferKey,
    pub size: u64,
    pub exporter: String,
    pub name: String,
    pub owner: Option<Owner>,
    pub fd_refs: u32,
    pub map_refs: u32,
    /// Number of processes referencing the buffer (this one included).
    pub shared_with: u32,
    /// This process's share of the buffer in bytes.
    pub pss: u64,
}

/// The figures of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFigures {
    pub pid: i32,
    pub uid: u32,
    pub name: String,
    pub rss: u64,
    pub pss: u64,
    pub hwm: u64,
    /// Ordered by buffer key.
    pub buffers: Vec<ProcessBuffer>,
    /// Why the process could not be read; its figures are then 0 (hwm is
    /// the last one observed) and must not be read as "holds nothing".
    pub error: Option<ScanError>,
}

impl ProcessFigures {
    pub fn readable(&self) -> bool {
        self.error.is_none()
    }
}

/// Count and bytes of a group of buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Total {
    pub count: u64,
    pub bytes: u64,
}

impl Total {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// The service's reserve pools at the time of a scan: buffers the service
/// itself holds, no app's. Shown on a line of their own, never in a
/// process's or owner's figures, and not in `total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFigures {
    /// The service's pid (the holder of every pooled fd).
    pub pid: i32,
    pub classes: Vec<crate::pool::ClassStatus>,
}

impl PoolFigures {
    /// Buffers and bytes held in all classes.
    pub fn held(&self) -> Total {
        self.classes.iter().fold(Total::default(), |t, c| Total {
            count: t.count + c.available as u64,
            bytes: t.bytes + c.size * c.available as u64,
        })
    }
}

/// Everything a report needs, built from one full scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accounting {
    pub built_at: SystemTime,
    /// Every scanned process (holding buffers or not, readable or not), by pid.
    pub processes: Vec<ProcessFigures>,
    /// Every buffer referenced by a readable process, plus registry buffers
    /// kept though unreferenced; by key.
    pub buffers: Vec<BufferView>,
    /// Per exporter (heap name or fdinfo exp_name).
    pub exporter_totals: BTreeMap<String, Total>,
    /// Per owner uid; `None` gathers the buffers of unknown owner.
    pub owner_totals: BTreeMap<Option<u32>, Total>,
    pub total: Total,
    /// Bytes of live buffers no process references (held by the kernel:
    /// a driver, an in-flight SCM_RIGHTS message). Exact when
    /// `exact_liveness`; otherwise registry buffers not known to be gone.
    pub unreferenced_bytes: u64,
    /// Whether liveness came from the kernel's list of live buffers.
    pub exact_liveness: bool,
    /// The service's pools (None: none configured); their buffers are in
    /// no other field.
    pub pool: Option<PoolFigures>,
    /// Registry keys whose buffers are gone: pass to
    /// `Registry::remove_freed(|r| gone.contains(&r.key()))`.
    pub gone: BTreeSet<BufferKey>,
    /// Registry buffers whose name changed: `(key, new name)` for
    /// `Registry::rename`.
    pub renamed: Vec<(BufferKey, String)>,
}

impl Accounting {
    pub fn process(&self, pid: i32) -> Option<&ProcessFigures> {
        self.processes
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .map(|i| &self.processes[i])
    }

    pub fn buffer(&self, key: BufferKey) -> Option<&BufferView> {
        self.buffers
            .binary_search_by_key(&key, |b| b.key)
            .ok()
            .map(|i| &self.buffers[i])
    }

    /// Processes that could not be read.
    pub fn unreadable(&self) -> impl Iterator<Item = &ProcessFigures> {
        self.processes.iter().filter(|p| !p.readable())
    }

    /// Processes worth a row in a report: holding buffers, with a non-zero
    /// hwm, or unreadable.
    pub fn reported_processes(&self) -> impl Iterator<Item = &ProcessFigures> {
        self.processes
            .iter()
            .filter(|p| p.rss > 0 || p.hwm > 0 || !p.readable())
    }

    /// Sum of the processes' rss (shared buffers counted in each holder).
    pub fn userspace_rss(&self) -> u64 {
        self.processes.iter().map(|p| p.rss).sum()
    }

    /// Sum of the processes' pss (= bytes of referenced buffers).
    pub fn userspace_pss(&self) -> u64 {
        self.processes.iter().map(|p| p.pss).sum()
    }
}

/// Highest rss seen per pid.
#[derive(Clone, Debug, Default)]
pub struct HwmTracker {
    by_pid: HashMap<i32, u64>,
}

impl HwmTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an observed rss; returns the pid's hwm.
    pub fn observe(&mut self, pid: i32, rss: u64) -> u64 {
        let h = self.by_pid.entry(pid).or_insert(0);
        *h = (*h).max(rss);
        *h
    }

    /// The hwm of `pid`, 0 if never observed (or reset and not observed since).
    pub fn get(&self, pid: i32) -> u64 {
        self.by_pid.get(&pid).copied().unwrap_or(0)
    }

    /// Forgets the pid's hwm: the next observation starts it again.
    pub fn reset(&mut self, pid: i32) {
        self.by_pid.remove(&pid);
    }

    pub fn reset_all(&mut self) {
        self.by_pid.clear();
    }

    /// Keeps only the pids for which `alive` holds (dead pids are forgotten
    /// so that a reused pid does not inherit an hwm).
    pub fn retain(&mut self, mut alive: impl FnMut(i32) -> bool) {
        self.by_pid.retain(|&pid, _| alive(pid));
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// The pids with an observed hwm.
    pub fn pids(&self) -> Vec<i32> {
        self.by_pid.keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// What the scans say about one buffer, before figures are computed.
#[derive(Default)]
struct Seen {
    holders: Vec<HolderView>,
    fd_size: Option<u64>,
    map_extent: u64,
    exporter: Option<String>,
    /// Name seen through an fd (fdinfo/link: current), else through maps.
    fd_name: Option<String>,
    map_name: Option<String>,
}

/// Builds the accounting of one full scan. `hwm` observes every readable
/// process and forgets pids that are no longer there. `live` is the
/// kernel's list of live buffers where the scan source has one. `now` is
/// the monotonic time of the scan.
///
/// Gone rule with the kernel's list: a registry dma-buf is gone exactly
/// when it is not in the list; buffers in the list that no process
/// references are held by the kernel and stay (owned, counted).
/// Without it (procfs fallback; memfds): a record is gone when no readable
/// process references it, it is older than [`FREED_GRACE`], and its owner
/// pid is not among the unreadable processes (an owner we cannot see into
/// may still hold it). That is approximate: a buffer only the kernel holds
/// looks freed.
pub fn build(
    scans: &[ProcessScan],
    live: Option<&[LiveBuffer]>,
    registry: &[BufferRecord],
    hwm: &mut HwmTracker,
    now: Instant,
) -> Accounting {
    let records: HashMap<BufferKey, &BufferRecord> =
        registry.iter().map(|r| (r.key(), r)).collect();
    let listed: HashMap<BufferKey, &LiveBuffer> = live
        .unwrap_or_default()
        .iter()
        .map(|b| (b.key, b))
        .collect();

    let mut seen: BTreeMap<BufferKey, Seen> = BTreeMap::new();
    for scan in scans {
        let Ok(uses) = &scan.result else { continue };
        for u in uses {
            if u.key.kind == BufferKind::Memfd && !records.contains_key(&u.key) {
                continue;
            }
            let s = seen.entry(u.key).or_default();
            s.holders.push(HolderView {
                pid: scan.pid,
                uid: scan.uid,
                name: scan.comm.clone(),
                fd_refs: u.fd_refs,
                map_refs: u.map_refs,
                pss: 0,
            });
            if let Some(size) = u.size {
                s.fd_size = Some(s.fd_size.unwrap_or(0).max(size));
            }
            s.map_extent = s.map_extent.max(u.map_extent);
            if u.exporter.is_some() && s.exporter.is_none() {
                s.exporter = u.exporter.clone();
            }
            if u.fd_refs > 0 {
                s.fd_name.get_or_insert_with(|| u.name.clone());
            } else {
                s.map_name.get_or_insert_with(|| u.name.clone());
            }
        }
    }
    // Buffers only the kernel holds: in its list, referenced by no process.
    for key in listed.keys() {
        seen.entry(*key).or_default();
    }

    let unreadable_pids: BTreeSet<i32> = scans
        .iter()
        .filter(|s| s.result.is_err())
        .map(|s| s.pid)
        .collect();

    let mut buffers = Vec::with_capacity(seen.len());
    let mut renamed = Vec::new();
    let mut unreferenced_bytes = 0;
    for (key, mut s) in seen {
        let record = records.get(&key).copied();
        let kernel = listed.get(&key).copied();
        let size = record
            .map(|r| r.size)
            .or(kernel.map(|k| k.size))
            .or(s.fd_size)
            .unwrap_or(s.map_extent);
        // The kernel's list has the current name; else what a holder showed.
        let current_name = kernel.map(|k| k.name.clone()).or(s.fd_name).or(s.map_name);
        let name = match (record, current_name) {
            (Some(r), Some(n)) => {
                if n != r.name && key.kind == BufferKind::DmaBuf {
                    renamed.push((key, n.clone()));
                }
                // A memfd's name cannot change; the registry's is complete
                // (the link may be truncated by the kernel's name limit).
                if key.kind == BufferKind::Memfd {
                    r.name.clone()
                } else {
                    n
                }
            }
            (Some(r), None) => r.name.clone(),
            (None, n) => n.unwrap_or_default(),
        };
        let exporter = match (record, kernel) {
            (Some(r), _) => r.heap.clone(),
            (None, Some(k)) => k.exporter.clone(),
            (None, None) => s
                .exporter
                .take()
                .unwrap_or_else(|| UNKNOWN_EXPORTER.to_string()),
        };
        if s.holders.is_empty() {
            unreferenced_bytes += size;
        }
        s.holders.sort_by_key(|h| h.pid);
        split_pss(size, &mut s.holders);
        buffers.push(BufferView {
            key,
            size,
            exporter,
            name,
            owner: record.map(owner_of),
            allocated_at: record.map(|r| r.allocated_at),
            holders: s.holders,
        });
    }

    // Registry buffers neither referenced nor in the kernel's list.
    let mut gone = BTreeSet::new();
    for r in registry {
        let key = r.key();
        if buffers.binary_search_by_key(&key, |b| b.key).is_ok() {
            continue;
        }
        let exact = live.is_some() && key.kind == BufferKind::DmaBuf;
        let young = now.saturating_duration_since(r.committed_at) < FREED_GRACE;
        if exact || (!young && !unreadable_pids.contains(&r.owner_pid)) {
            gone.insert(key);
            continue;
        }
        unreferenced_bytes += r.size;
        let pos = buffers.binary_search_by_key(&key, |b| b.key).unwrap_err();
        buffers.insert(
            pos,
            BufferView {
                key,
                size: r.size,
                exporter: r.heap.clone(),
                name: r.name.clone(),
                owner: Some(owner_of(r)),
                allocated_at: Some(r.allocated_at),
                holders: Vec::new(),
            },
        );
    }

    // Per-process figures from the per-buffer holders.
    let mut per_pid: HashMap<i32, Vec<ProcessBuffer>> = HashMap::new();
    for b in &buffers {
        for h in &b.holders {
            per_pid.entry(h.pid).or_default().push(ProcessBuffer {
                key: b.key,
                size: b.size,
                exporter: b.exporter.clone(),
                name: b.name.clone(),
                owner: b.owner.clone(),
                fd_refs: h.fd_refs,
                map_refs: h.map_refs,
                shared_with: b.holders.len() as u32,
                pss: h.pss,
            });
        }
    }
    let mut processes: Vec<ProcessFigures> = scans
        .iter()
        .map(|scan| {
            let bufs = per_pid.remove(&scan.pid).unwrap_or_default();
            let rss = bufs.iter().map(|b| b.size).sum();
            let pss = bufs.iter().map(|b| b.pss).sum();
            let (hwm_now, error) = match &scan.result {
                Ok(_) => (hwm.observe(scan.pid, rss), None),
                Err(e) => (hwm.get(scan.pid), Some(e.clone())),
            };
            ProcessFigures {
                pid: scan.pid,
                uid: scan.uid,
                name: scan.comm.clone(),
                rss,
                pss,
                hwm: hwm_now,
                buffers: bufs,
                error,
            }
        })
        .collect();
    processes.sort_by_key(|p| p.pid);
    let present: BTreeSet<i32> = processes.iter().map(|p| p.pid).collect();
    hwm.retain(|pid| present.contains(&pid));

    let mut exporter_totals: BTreeMap<String, Total> = BTreeMap::new();
    let mut owner_totals: BTreeMap<Option<u32>, Total> = BTreeMap::new();
    let mut total = Total::default();
    for b in &buffers {
        exporter_totals
            .entry(b.exporter.clone())
            .or_default()
            .add(b.size);
        owner_totals
            .entry(b.owner.as_ref().map(|o| o.uid))
            .or_default()
            .add(b.size);
        total.add(b.size);
    }

    Accounting {
        built_at: SystemTime::now(),
        processes,
        buffers,
        exporter_totals,
        owner_totals,
        total,
        unreferenced_bytes,
        exact_liveness: live.is_some(),
        pool: None,
        gone,
        renamed,
    }
}

fn owner_of(r: &BufferRecord) -> Owner {
    Owner {
        uid: r.owner_uid,
        pid: r.owner_pid,
        name: r.owner_name.clone(),
    }
}

/// Splits `size` over `holders` (ordered by pid): `size / n` each, and one
/// more byte to each of the first `size % n`, so the shares add up to `size`.
fn split_pss(size: u64, holders: &mut [HolderView]) {
    let n = holders.len() as u64;
    if n == 0 {
        return;
    }
    let (share, rest) = (size / n, size % n);
    for (i, h) in holders.iter_mut().enumerate() {
        h.pss = share + u64::from((i as u64) < rest);
    }
}

/// The baseline for the benchmark: the figures built the way `dmabuf_dump`
/// gathers them, re-reading everything each time (fdinfo of every fd, then
/// maps) with nothing cached. `registry` only decides which memfds are
/// buffers (pass an empty slice where the kernel has real dma-bufs) and
/// supplies owners, so the figures equal those of `build(scan_all(..))`.
pub fn dmabuf_dump_style(
    proc_root: &Path,
    registry: &[BufferRecord],
) -> std::io::Result<Accounting> {
    let scans = procfs::scan_all_like_dmabuf_dump(proc_root)?;
    Ok(build(
        &scans,
        None,
        registry,
        &mut HwmTracker::new(),
        Instant::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::HeapKind;
    use crate::procfs::BufferUse;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// The monotonic time every test record was committed at.
    fn m0() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    const MB: u64 = 1 << 20;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// A scan time well after every record's commit.
    fn later() -> Instant {
        m0() + Duration::from_secs(60)
    }

    fn dmabuf(inode: u64) -> BufferKey {
        BufferKey {
            kind: BufferKind::DmaBuf,
            inode,
        }
    }

    /// A dma-buf held through `fds` fds and `maps` mappings.
    fn holds(inode: u64, size: u64, fds: u32, maps: u32) -> BufferUse {
        BufferUse {
            key: dmabuf(inode),
            size: (fds > 0).then_some(size),
            map_extent: if maps > 0 { size } else { 0 },
            exporter: (fds > 0).then(|| "system".to_string()),
            name: format!("buf{inode}"),
            fd_refs: fds,
            map_refs: maps,
        }
    }

    fn proc(pid: i32, uid: u32, uses: Vec<BufferUse>) -> ProcessScan {
        ProcessScan {
            pid,
            uid,
            comm: format!("p{pid}"),
            result: Ok(uses),
        }
    }

    fn unreadable(pid: i32, uid: u32) -> ProcessScan {
        ProcessScan {
            pid,
            uid,
            comm: format!("p{pid}"),
            result: Err(ScanError {
                path: PathBuf::from(format!("/proc/{pid}/fd")),
                kind: std::io::ErrorKind::PermissionDenied,
                errno: Some(13),
                message: "Permission denied (os error 13)".into(),
            }),
        }
    }

    fn record(inode: u64, size: u64, uid: u32, pid: i32) -> BufferRecord {
        BufferRecord {
            inode,
            heap: "system".into(),
            kind: HeapKind::DmaHeap,
            size,
            name: format!("buf{inode}"),
            owner_uid: uid,
            owner_pid: pid,
            owner_name: format!("p{pid}"),
            allocated_at: t0(),
            committed_at: m0(),
        }
    }

    fn figures(scans: &[ProcessScan], reg: &[BufferRecord]) -> Accounting {
        build(scans, None, reg, &mut HwmTracker::new(), later())
    }

    fn rss_pss(a: &Accounting, pid: i32) -> (u64, u64) {
        let p = a.process(pid).unwrap();
        (p.rss, p.pss)
    }

    #[test]
    fn fd_only_counts_full_size() {
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 1, 0)])], &[]);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
    }

    #[test]
    fn dup_then_close_one_still_counts_once() {
        // Two fds (dup): counted once.
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 2, 0)])], &[]);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
        assert_eq!(a.process(10).unwrap().buffers[0].fd_refs, 2);
        // One of them closed: still referenced, same figures.
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 1, 0)])], &[]);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
    }

    #[test]
    fn two_buffers_add_up() {
        let a = figures(
            &[proc(
                10,
                1,
                vec![holds(1, MB, 1, 0), holds(2, 2 * MB, 1, 1)],
            )],
            &[],
        );
        assert_eq!(rss_pss(&a, 10), (3 * MB, 3 * MB));
        assert_eq!(
            a.total,
            Total {
                count: 2,
                bytes: 3 * MB
            }
        );
    }

    #[test]
    fn map_then_close_fd_still_counts() {
        // Only a mapping left; the size comes from the registry.
        let reg = [record(1, MB, 1, 10)];
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 0, 1)])], &reg);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
        assert!(a.gone.is_empty());
        // Not a service buffer: the size comes from the mapping extent (or
        // from another process's fd), the exporter is unknown.
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 0, 1)])], &[]);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
        assert_eq!(a.buffers[0].exporter, UNKNOWN_EXPORTER);
        let a = figures(
            &[
                proc(10, 1, vec![holds(1, MB, 0, 1)]),
                proc(11, 1, vec![holds(1, 4 * MB, 1, 0)]),
            ],
            &[],
        );
        assert_eq!(a.buffers[0].size, 4 * MB);
        assert_eq!(a.buffers[0].exporter, "system");
    }

    #[test]
    fn map_twice_counts_once() {
        let a = figures(&[proc(10, 1, vec![holds(1, MB, 1, 2)])], &[]);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
        assert_eq!(a.process(10).unwrap().buffers[0].map_refs, 2);
    }

    #[test]
    fn partial_map_counts_full_size() {
        let mut partial = holds(1, MB, 0, 1);
        partial.map_extent = 4096;
        let reg = [record(1, MB, 1, 10)];
        let a = figures(&[proc(10, 1, vec![partial])], &reg);
        assert_eq!(rss_pss(&a, 10), (MB, MB));
    }

    #[test]
    fn unmap_and_close_everything_drops_to_zero_and_hwm_stays() {
        let reg = [record(1, MB, 1, 10)];
        let mut hwm = HwmTracker::new();
        let a = build(
            &[proc(10, 1, vec![holds(1, MB, 1, 1)])],
            None,
            &reg,
            &mut hwm,
            later(),
        );
        assert_eq!(a.process(10).unwrap().hwm, MB);
        // Unmapped, fd still open: unchanged.
        let a = build(
            &[proc(10, 1, vec![holds(1, MB, 1, 0)])],
            None,
            &reg,
            &mut hwm,
            later(),
        );
        assert_eq!(rss_pss(&a, 10), (MB, MB));
        // Everything released: zeros (not an error), hwm keeps the peak,
        // the record is gone.
        let a = build(&[proc(10, 1, vec![])], None, &reg, &mut hwm, later());
        let p = a.process(10).unwrap();
        assert_eq!((p.rss, p.pss, p.hwm), (0, 0, MB));
        assert!(p.readable());
        assert_eq!(a.gone, BTreeSet::from([dmabuf(1)]));
        assert_eq!(a.total, Total::default());
    }

    #[test]
    fn shared_by_two_and_three_processes_splits_pss() {
        let a = figures(
            &[
                proc(10, 1, vec![holds(1, MB, 1, 0)]),
                proc(11, 2, vec![holds(1, MB, 0, 1)]),
            ],
            &[],
        );
        assert_eq!(rss_pss(&a, 10), (MB, MB / 2));
        assert_eq!(rss_pss(&a, 11), (MB, MB / 2));
        assert_eq!(a.process(10).unwrap().buffers[0].shared_with, 2);

        // Three holders of a size not divisible by 3: remainders go to the
        // lowest pids, and pss adds up to the buffer size.
        let size = 3 * 4096 + 2;
        let a = figures(
            &[
                proc(12, 1, vec![holds(1, size, 1, 0)]),
                proc(10, 1, vec![holds(1, size, 1, 0), holds(2, MB, 1, 0)]),
                proc(11, 1, vec![holds(1, size, 2, 3)]),
            ],
            &[],
        );
        assert_eq!(rss_pss(&a, 10), (size + MB, 4097 + MB));
        assert_eq!(rss_pss(&a, 11), (size, 4097));
        assert_eq!(rss_pss(&a, 12), (size, 4096));
        assert_eq!(a.userspace_pss(), size + MB);
        assert_eq!(a.userspace_pss(), a.total.bytes);
        assert_eq!(a.userspace_rss(), 3 * size + MB);
        let holders: Vec<i32> = a
            .buffer(dmabuf(1))
            .unwrap()
            .holders
            .iter()
            .map(|h| h.pid)
            .collect();
        assert_eq!(holders, vec![10, 11, 12]);
    }

    #[test]
    fn hwm_rises_only_until_reset_and_forgets_dead_pids() {
        let mut hwm = HwmTracker::new();
        let reg = [record(1, MB, 1, 10), record(2, 2 * MB, 1, 10)];
        build(
            &[proc(
                10,
                1,
                vec![holds(1, MB, 1, 0), holds(2, 2 * MB, 1, 0)],
            )],
            None,
            &reg,
            &mut hwm,
            later(),
        );
        let a = build(
            &[proc(10, 1, vec![holds(1, MB, 1, 0)])],
            None,
            &reg,
            &mut hwm,
            later(),
        );
        assert_eq!(a.process(10).unwrap().hwm, 3 * MB);
        hwm.reset(10);
        let a = build(
            &[proc(10, 1, vec![holds(1, MB, 1, 0)])],
            None,
            &reg,
            &mut hwm,
            later(),
        );
        assert_eq!(a.process(10).unwrap().hwm, MB);
        assert_eq!(hwm.observe(10, 5), MB);
        // pid 10 exits: forgotten, so a new pid 10 starts from its own rss.
        build(&[proc(11, 1, vec![])], None, &[], &mut hwm, later());
        assert_eq!(hwm.get(10), 0);
        assert_eq!(hwm.len(), 1);
        hwm.observe(12, 1);
        hwm.reset_all();
        assert!(hwm.is_empty());
    }

    #[test]
    fn owner_versus_holders() {
        // App 10001 (pid 100) allocated, passed it to app 10002 (pid 200)
        // and closed its own fd: the owner stays 10001, the holder is 200.
        let reg = [record(1, MB, 10001, 100)];
        let a = figures(
            &[
                proc(100, 10001, vec![]),
                proc(200, 10002, vec![holds(1, MB, 1, 1)]),
            ],
            &reg,
        );
        let b = a.buffer(dmabuf(1)).unwrap();
        assert_eq!(
            b.owner,
            Some(Owner {
                uid: 10001,
                pid: 100,
                name: "p100".into()
            })
        );
        assert_eq!(b.holders.len(), 1);
        assert_eq!((b.holders[0].pid, b.holders[0].uid), (200, 10002));
        assert_eq!(rss_pss(&a, 100), (0, 0));
        assert_eq!(rss_pss(&a, 200), (MB, MB));
        assert_eq!(
            a.owner_totals[&Some(10001)],
            Total {
                count: 1,
                bytes: MB
            }
        );
        assert_eq!(
            a.process(200).unwrap().buffers[0]
                .owner
                .as_ref()
                .unwrap()
                .uid,
            10001
        );
        assert_eq!(
            a.exporter_totals["system"],
            Total {
                count: 1,
                bytes: MB
            }
        );
    }

    #[test]
    fn foreign_buffers_have_unknown_owner_and_their_exporter() {
        let mut u = holds(7, 8192, 1, 0);
        u.exporter = Some("udmabuf".into());
        let a = figures(&[proc(10, 1, vec![u])], &[record(1, MB, 1, 10)]);
        let b = a.buffer(dmabuf(7)).unwrap();
        assert_eq!(b.owner, None);
        assert_eq!(b.exporter, "udmabuf");
        assert_eq!(
            a.owner_totals[&None],
            Total {
                count: 1,
                bytes: 8192
            }
        );
        // The unreferenced service record is old and its owner readable: gone.
        assert_eq!(a.gone, BTreeSet::from([dmabuf(1)]));
    }

    #[test]
    fn memfds_count_only_when_the_registry_knows_them() {
        let memfd = |inode| BufferUse {
            key: BufferKey {
                kind: BufferKind::Memfd,
                inode,
            },
            size: Some(4096),
            map_extent: 0,
            exporter: None,
            name: "m".into(),
            fd_refs: 1,
            map_refs: 0,
        };
        let mut r = record(5, 4096, 1, 10);
        r.kind = HeapKind::Memfd;
        r.name = "heap-buffer".into();
        // Inode 5 as a dma-buf is another buffer than memfd inode 5.
        let a = figures(
            &[proc(10, 1, vec![memfd(5), memfd(6), holds(5, MB, 1, 0)])],
            &[r],
        );
        assert_eq!(
            a.total,
            Total {
                count: 2,
                bytes: MB + 4096
            }
        );
        let m = a
            .buffer(BufferKey {
                kind: BufferKind::Memfd,
                inode: 5,
            })
            .unwrap();
        assert_eq!(
            (m.name.as_str(), m.exporter.as_str()),
            ("heap-buffer", "system")
        );
        assert_eq!(a.buffer(dmabuf(5)).unwrap().owner, None);
        assert!(a.renamed.is_empty());
    }

    #[test]
    fn renames_are_seen() {
        let mut u = holds(1, MB, 1, 0);
        u.name = "new-name".into();
        let a = figures(&[proc(10, 1, vec![u])], &[record(1, MB, 1, 10)]);
        assert_eq!(a.buffers[0].name, "new-name");
        assert_eq!(a.renamed, vec![(dmabuf(1), "new-name".to_string())]);
    }

    fn listed(inode: u64, size: u64, exporter: &str, name: &str) -> LiveBuffer {
        LiveBuffer {
            key: dmabuf(inode),
            size,
            exporter: exporter.into(),
            name: name.into(),
        }
    }

    /// A buffer only the kernel holds (imported by a driver, or in flight
    /// in an SCM_RIGHTS message) is still alive: with the kernel's list it
    /// stays owned and counted, held by no process; only a buffer missing
    /// from the list is gone, however young.
    #[test]
    fn with_the_kernel_list_a_kernel_held_buffer_stays_owned_and_only_unlisted_ones_are_gone() {
        let kernel_held = record(1, MB, 10001, 10); // owner alive, holds nothing
        let mut freed_young = record(2, 2 * MB, 10001, 10);
        freed_young.committed_at = later();
        let held = record(3, 4 * MB, 10002, 20);
        let live = [
            listed(1, MB, "system", "buf1"),
            listed(3, 4 * MB, "system", "buf3"),
            // Not ours, held by nobody (a driver's): shown, unknown owner.
            listed(9, 8 * MB, "drm", "scanout"),
        ];
        let mut hwm = HwmTracker::new();
        let a = build(
            &[
                proc(10, 10001, vec![]),
                proc(20, 10002, vec![holds(3, 4 * MB, 1, 0)]),
            ],
            Some(&live),
            &[kernel_held, freed_young, held],
            &mut hwm,
            later(),
        );
        assert!(a.exact_liveness);
        assert_eq!(a.gone, BTreeSet::from([dmabuf(2)]));
        let b = a.buffer(dmabuf(1)).unwrap();
        assert!(b.holders.is_empty());
        assert_eq!(b.owner.as_ref().unwrap().uid, 10001);
        let foreign = a.buffer(dmabuf(9)).unwrap();
        assert_eq!(
            (foreign.exporter.as_str(), foreign.owner.is_none()),
            ("drm", true)
        );
        // kernel_rss is exact: the two buffers no process references.
        assert_eq!(a.unreferenced_bytes, MB + 8 * MB);
        assert_eq!(
            a.owner_totals[&Some(10001)],
            Total {
                count: 1,
                bytes: MB
            }
        );
        assert_eq!(
            a.total,
            Total {
                count: 3,
                bytes: 13 * MB
            }
        );
        assert_eq!(rss_pss(&a, 20), (4 * MB, 4 * MB));
    }

    /// The name shown is the kernel's current one, not an fdinfo line.
    #[test]
    fn the_kernel_list_names_buffers_and_renames_are_recorded() {
        let live = [listed(1, MB, "system", "x\nino:\t1")];
        let a = build(
            &[proc(10, 1, vec![holds(1, MB, 1, 0)])],
            Some(&live),
            &[record(1, MB, 1, 10)],
            &mut HwmTracker::new(),
            later(),
        );
        assert_eq!(a.buffer(dmabuf(1)).unwrap().name, "x\nino:\t1");
        assert_eq!(a.renamed, vec![(dmabuf(1), "x\nino:\t1".to_string())]);
    }

    #[test]
    fn gone_rule_spares_young_buffers_and_unreadable_owners() {
        let mut young = record(1, MB, 1, 10);
        young.committed_at = later() - FREED_GRACE / 2;
        let hidden = record(2, 2 * MB, 2, 20); // owner pid 20 unreadable
        let dead_owner = record(3, 4 * MB, 3, 30); // owner gone, nobody holds it
        let a = figures(
            &[proc(10, 1, vec![]), unreadable(20, 2)],
            &[young, hidden, dead_owner],
        );
        assert_eq!(a.gone, BTreeSet::from([dmabuf(3)]));
        assert_eq!(a.unreferenced_bytes, 3 * MB);
        assert_eq!(
            a.total,
            Total {
                count: 2,
                bytes: 3 * MB
            }
        );
        assert!(a.buffer(dmabuf(2)).unwrap().holders.is_empty());
        let bad: Vec<i32> = a.unreadable().map(|p| p.pid).collect();
        assert_eq!(bad, vec![20]);
        let p20 = a.process(20).unwrap();
        assert_eq!(p20.error.as_ref().unwrap().errno, Some(13));
        assert_eq!(
            a.reported_processes().map(|p| p.pid).collect::<Vec<_>>(),
            vec![20]
        );
    }

    #[test]
    fn empty_system() {
        let a = figures(&[proc(1, 0, vec![])], &[]);
        assert!(a.buffers.is_empty());
        assert_eq!(a.total, Total::default());
        assert_eq!(rss_pss(&a, 1), (0, 0));
        assert_eq!(a.reported_processes().count(), 0);
    }

    mod real_processes {
        //! The same semantics on real processes holding memfd-heap buffers.
        use super::super::*;
        use crate::heap::HeapKind;
        use crate::procfs::test_child::{inode_of, memfd, TestChild};
        use crate::procfs::PROC_ROOT;
        use std::os::fd::AsRawFd;

        fn memfd_record(inode: u64, size: u64) -> BufferRecord {
            BufferRecord {
                inode,
                heap: "system".into(),
                kind: HeapKind::Memfd,
                size,
                name: "shared".into(),
                owner_uid: 10001,
                owner_pid: std::process::id() as i32,
                owner_name: "test".into(),
                allocated_at: SystemTime::UNIX_EPOCH,
                committed_at: Instant::now() - Duration::from_secs(60),
            }
        }

        fn key(inode: u64) -> BufferKey {
            BufferKey {
                kind: BufferKind::Memfd,
                inode,
            }
        }

        #[test]
        fn shared_by_three_real_processes() {
            let fd = memfd("shared", 3 * 4096);
            let ino = inode_of(&fd);
            let path = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
            let a = TestChild::spawn(&format!("open s {path}; dup s"));
            let b = TestChild::spawn(&format!("open s {path}; map s 4096; close s"));
            let reg = [memfd_record(ino, 3 * 4096)];
            let scans = procfs::scan_all(Path::new(PROC_ROOT)).unwrap();
            let acc = build(&scans, None, &reg, &mut HwmTracker::new(), Instant::now());
            let buf = acc.buffer(key(ino)).unwrap();
            let me = std::process::id() as i32;
            let mut holders: Vec<(i32, u32, u32, u64)> = buf
                .holders
                .iter()
                .map(|h| (h.pid, h.fd_refs, h.map_refs, h.pss))
                .collect();
            holders.sort();
            let mut want = vec![
                (me, 1, 0, 4096),
                (a.pid(), 2, 0, 4096),
                (b.pid(), 0, 1, 4096),
            ];
            want.sort();
            assert_eq!(holders, want);
            for pid in [me, a.pid(), b.pid()] {
                let p = acc.process(pid).unwrap();
                let mine = p.buffers.iter().find(|x| x.key == key(ino)).unwrap();
                assert_eq!((mine.size, mine.shared_with, mine.pss), (3 * 4096, 3, 4096));
            }
            assert!(acc.gone.is_empty());
            // The child with only a partial mapping counts the whole buffer.
            assert_eq!(acc.process(b.pid()).unwrap().rss, 3 * 4096);

            // b exits: the split is now by two.
            drop(b);
            let scans = procfs::scan_all(Path::new(PROC_ROOT)).unwrap();
            let acc = build(&scans, None, &reg, &mut HwmTracker::new(), Instant::now());
            let pss: u64 = acc
                .buffer(key(ino))
                .unwrap()
                .holders
                .iter()
                .map(|h| h.pss)
                .sum();
            assert_eq!(pss, 3 * 4096);
            assert_eq!(acc.buffer(key(ino)).unwrap().holders.len(), 2);
            // Everyone lets go: the record is gone.
            drop(a);
            drop(fd);
            let scans = procfs::scan_all(Path::new(PROC_ROOT)).unwrap();
            let acc = build(&scans, None, &reg, &mut HwmTracker::new(), Instant::now());
            assert_eq!(acc.gone, BTreeSet::from([key(ino)]));
        }

        #[test]
        fn baseline_builds_the_same_figures() {
            let c =
                TestChild::spawn("new a 8192; dup a; map a 4096; new b 4096; map b 4096; close b");
            let reg = [
                memfd_record(c.inode("a"), 8192),
                memfd_record(c.inode("b"), 4096),
            ];
            let root = Path::new(PROC_ROOT);
            let ours = procfs::scan_process(root, c.pid()).unwrap();
            let theirs = procfs::scan_process_like_dmabuf_dump(root, c.pid()).unwrap();
            assert_eq!(ours, theirs);
            let now = Instant::now();
            let a = build(&[ours], None, &reg, &mut HwmTracker::new(), now);
            let mut b = build(&[theirs], None, &reg, &mut HwmTracker::new(), now);
            b.built_at = a.built_at;
            assert_eq!(a, b);
            assert_eq!(a.process(c.pid()).unwrap().rss, 8192 + 4096);
            let full = dmabuf_dump_style(root, &reg).unwrap();
            assert_eq!(full.process(c.pid()).unwrap().rss, 8192 + 4096);
        }
    }
}
