//! The record of every buffer this service handed out: who owns it, which
//! heap served it, its size and current name. Keyed by kind AND inode
//! ([`BufferKey`]): dma-buf and memfd inode numbers are counted separately
//! by the kernel and do collide.
//!
//! A record lives until its buffer leaves the kernel's list of live
//! buffers (see `monitor.rs`), not until procfs stops seeing holders.
//! Per-uid usage is kept as counters, so a quota check is O(1). With a
//! [`Journal`] every commit is appended to a file that survives a restart
//! of the service (see `journal.rs`).
//!
//! The registry holds records only, never an fd or a mapping: a buffer the
//! service kept open would be attributed to the service.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::heap::HeapKind;
use crate::journal::Journal;
use crate::scan::{BufferKey, BufferKind};

/// One buffer allocated through the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferRecord {
    pub inode: u64,
    /// The heap that served it (after alias resolution).
    pub heap: String,
    pub kind: HeapKind,
    /// Page-rounded size.
    pub size: u64,
    /// Current name (kept current by scans: a holder may rename it).
    pub name: String,
    pub owner_uid: u32,
    pub owner_pid: i32,
    pub owner_name: String,
    pub allocated_at: SystemTime,
    /// When this service instance committed (or reloaded) the record: the
    /// monotonic clock of the procfs fallback's in-flight allowance.
    pub committed_at: Instant,
}

impl BufferRecord {
    /// The identity under which the kernel and procfs show the buffer.
    pub fn key(&self) -> BufferKey {
        let kind = match self.kind {
            HeapKind::Memfd => BufferKind::Memfd,
            HeapKind::DmaHeap | HeapKind::Udmabuf => BufferKind::DmaBuf,
        };
        BufferKey {
            kind,
            inode: self.inode,
        }
    }
}

/// Live usage of one uid, counted for quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub count: u64,
}

/// Per-heap totals of live records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapUsage {
    pub bytes: u64,
    pub count: u64,
}

#[derive(Default)]
struct Inner {
    buffers: HashMap<BufferKey, BufferRecord>,
    /// Live records per owner uid (kept in step with `buffers`).
    owned: HashMap<u32, Usage>,
    /// Bytes/count reserved by allocations in flight, so that concurrent
    /// requests of one uid cannot overshoot its quota together.
    pending: HashMap<u32, Usage>,
    freed_total: u64,
}

/// Thread-safe buffer registry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    journal: Option<Journal>,
}

/// A reservation of quota for an allocation in flight. Call
/// [`Registry::commit`] with it once the buffer exists, or
/// [`Registry::cancel`] when the allocation failed. Dropped any other way
/// (an early return, a panic between reserve and commit) it releases the
/// quota itself, so nothing stays charged for a buffer that never came.
#[must_use]
pub struct Reservation<'a> {
    registry: &'a Registry,
    uid: u32,
    bytes: u64,
    /// Buffers reserved (1, or a batch's count).
    count: u64,
    /// Set once commit or cancel released it.
    released: bool,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("uid", &self.uid)
            .field("bytes", &self.bytes)
            .field("count", &self.count)
            .field("released", &self.released)
            .finish()
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.released {
            let mut inner = self.registry.lock();
            release_locked(&mut inner, self);
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that appends every commit to `journal`.
    pub fn with_journal(journal: Journal) -> Self {
        Registry {
            inner: Mutex::default(),
            journal: Some(journal),
        }
    }

    /// Adds records a previous instance left whose buffers are still alive.
    pub fn restore(&self, records: Vec<BufferRecord>) {
        let mut inner = self.lock();
        for r in records {
            insert_locked(&mut inner, r);
        }
    }

    /// Rewrites the journal to hold exactly the live records (off the
    /// allocation path: after the monitor removed freed records).
    pub fn compact_journal(&self) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.compact(|| self.snapshot()) {
                log::warn!("cannot compact {}: {e}", j.path().display());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take accounting down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live usage of `uid` (owned buffers plus reservations in flight).
    pub fn usage_of(&self, uid: u32) -> Usage {
        let inner = self.lock();
        usage_locked(&inner, uid)
    }

    /// Reserves `bytes` (one buffer) for `uid` if that stays within
    /// `limit`; otherwise returns the usage that made it fail.
    pub fn reserve(&self, uid: u32, bytes: u64, limit: Usage) -> Result<Reservation<'_>, Usage> {
        self.reserve_many(uid, bytes, 1, limit)
    }

    /// Reserves `count` buffers of `bytes` each for `uid` at once (a
    /// batch) if all of them stay within `limit`; otherwise reserves
    /// nothing and returns the usage that made it fail.
    pub fn reserve_many(
        &self,
        uid: u32,
        bytes: u64,
        count: u64,
        limit: Usage,
    ) -> Result<Reservation<'_>, Usage> {
        let total = bytes.saturating_mul(count);
        let mut inner = self.lock();
        let used = usage_locked(&inner, uid);
        if used.bytes.saturating_add(total) > limit.bytes
            || used.count.saturating_add(count) > limit.count
        {
            return Err(used);
        }
        let p = inner.pending.entry(uid).or_default();
        p.bytes += total;
        p.count += count;
        Ok(Reservation {
            registry: self,
            uid,
            bytes: total,
            count,
            released: false,
        })
    }

    /// Releases a reservation whose allocation failed.
    pub fn cancel(&self, mut r: Reservation<'_>) {
        let mut inner = self.lock();
        release_locked(&mut inner, &r);
        r.released = true;
    }

    /// Turns a reservation into a live record (appended to the journal).
    pub fn commit(&self, r: Reservation<'_>, record: BufferRecord) {
        self.commit_many(r, vec![record]);
    }

    /// Turns a reservation into live records, all under one lock (a batch
    /// appears in the registry whole or not at all).
    pub fn commit_many(&self, mut r: Reservation<'_>, records: Vec<BufferRecord>) {
        debug_assert_eq!(records.len() as u64, r.count);
        // One write for the whole batch.
        let lines: Option<String> = self
            .journal
            .as_ref()
            .map(|_| records.iter().map(Journal::line_of).collect());
        {
            let mut inner = self.lock();
            release_locked(&mut inner, &r);
            r.released = true;
            for record in records {
                insert_locked(&mut inner, record);
            }
        }
        // After the insert: a compaction in between keeps the record from
        // its snapshot, and a replay drops the duplicate line.
        if let (Some(j), Some(lines)) = (&self.journal, lines) {
            if let Err(e) = j.append(&lines) {
                log::warn!("cannot append to {}: {e}", j.path().display());
            }
        }
    }

    /// Fills in the owner names left empty at allocation (the allocation
    /// path does not read `/proc/<pid>/comm`): `name_of(pid)` is asked once
    /// per owner pid at report time. An owner already gone keeps "".
    pub fn fill_owner_names(&self, mut name_of: impl FnMut(i32) -> Option<String>) {
        let pids: std::collections::BTreeSet<i32> = {
            let inner = self.lock();
            inner
                .buffers
                .values()
                .filter(|r| r.owner_name.is_empty())
                .map(|r| r.owner_pid)
                .collect()
        };
        if pids.is_empty() {
            return;
        }
        let names: HashMap<i32, String> = pids
            .into_iter()
            .filter_map(|pid| name_of(pid).map(|n| (pid, n)))
            .collect();
        let mut inner = self.lock();
        for r in inner.buffers.values_mut() {
            if r.owner_name.is_empty() {
                if let Some(n) = names.get(&r.owner_pid) {
                    r.owner_name = n.clone();
                }
            }
        }
    }

    pub fn get(&self, key: BufferKey) -> Option<BufferRecord> {
        self.lock().buffers.get(&key).cloned()
    }

    /// All live records, ordered by key.
    pub fn snapshot(&self) -> Vec<BufferRecord> {
        let inner = self.lock();
        let mut v: Vec<_> = inner.buffers.values().cloned().collect();
        v.sort_by_key(|r| r.key());
        v
    }

    pub fn len(&self) -> usize {
        self.lock().buffers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a new name seen for a buffer (a holder renamed it).
    pub fn rename(&self, key: BufferKey, name: &str) {
        if let Some(r) = self.lock().buffers.get_mut(&key) {
            if r.name != name {
                r.name = name.to_string();
            }
        }
    }

    /// Removes the records of buffers that are gone. Returns how many.
    pub fn remove_freed(&self, mut is_gone: impl FnMut(&BufferRecord) -> bool) -> usize {
        let mut inner = self.lock();
        let gone: Vec<BufferKey> = inner
            .buffers
            .values()
            .filter(|r| is_gone(r))
            .map(|r| r.key())
            .collect();
        for key in &gone {
            remove_locked(&mut inner, key);
        }
        inner.freed_total += gone.len() as u64;
        gone.len()
    }

    /// How many records were removed as freed since start.
    pub fn freed_total(&self) -> u64 {
        self.lock().freed_total
    }

    /// Live totals per heap name.
    pub fn heap_usage(&self) -> BTreeMap<String, HeapUsage> {
        let inner = self.lock();
        let mut m: BTreeMap<String, HeapUsage> = BTreeMap::new();
        for r in inner.buffers.values() {
            let e = m.entry(r.heap.clone()).or_default();
            e.bytes += r.size;
            e.count += 1;
        }
        m
    }
}

fn usage_locked(inner: &Inner, uid: u32) -> Usage {
    let p = inner.pending.get(&uid).copied().unwrap_or_default();
    let o = inner.owned.get(&uid).copied().unwrap_or_default();
    Usage {
        bytes: p.bytes + o.bytes,
        count: p.count + o.count,
    }
}

fn insert_locked(inner: &mut Inner, record: BufferRecord) {
    let key = record.key();
    if inner.buffers.contains_key(&key) {
        // The inode was recycled: the old buffer is gone.
        log::debug!("{key:?} reused; dropping the stale record");
        remove_locked(inner, &key);
        inner.freed_total += 1;
    }
    let o = inner.owned.entry(record.owner_uid).or_default();
    o.bytes += record.size;
    o.count += 1;
    inner.buffers.insert(key, record);
}

fn remove_locked(inner: &mut Inner, key: &BufferKey) {
    let Some(r) = inner.buffers.remove(key) else {
        return;
    };
    if let Some(o) = inner.owned.get_mut(&r.owner_uid) {
        o.bytes = o.bytes.saturating_sub(r.size);
        o.count = o.count.saturating_sub(1);
        if o.count == 0 {
            inner.owned.remove(&r.owner_uid);
        }
    }
}

fn release_locked(inner: &mut Inner, r: &Reservation<'_>) {
    if let Some(p) = inner.pending.get_mut(&r.uid) {
        p.bytes = p.bytes.saturating_sub(r.bytes);
        p.count = p.count.saturating_sub(r.count);
        if p.count == 0 {
            inner.pending.remove(&r.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(inode: u64, uid: u32, size: u64) -> BufferRecord {
        BufferRecord {
            inode,
            heap: "system".into(),
            kind: HeapKind::Memfd,
            size,
            name: format!("b{inode}"),
            owner_uid: uid,
            owner_pid: 1,
            owner_name: "t".into(),
            allocated_at: SystemTime::now(),
            committed_at: Instant::now(),
        }
    }

    #[test]
    fn reservation_counts_until_committed_or_cancelled() {
        let reg = Registry::new();
        let limit = Usage {
            bytes: 10_000,
            count: 2,
        };
        let a = reg.reserve(7, 4096, limit).unwrap();
        assert_eq!(
            reg.usage_of(7),
            Usage {
                bytes: 4096,
                count: 1
            }
        );
        reg.commit(a, rec(1, 7, 4096));
        assert_eq!(
            reg.usage_of(7),
            Usage {
                bytes: 4096,
                count: 1
            }
        );
        let b = reg.reserve(7, 4096, limit).unwrap();
        // Third buffer exceeds the count limit while b is still in flight.
        assert_eq!(
            reg.reserve(7, 1, limit).unwrap_err(),
            Usage {
                bytes: 8192,
                count: 2
            }
        );
        reg.cancel(b);
        assert_eq!(
            reg.usage_of(7),
            Usage {
                bytes: 4096,
                count: 1
            }
        );
        // Bytes limit.
        assert!(reg.reserve(7, 8192, limit).is_err());
        assert!(reg.reserve(8, 8192, limit).is_ok());
    }

    /// A panic between reserve and commit (here: in another thread) must
    /// not leak the reservation's quota.
    #[test]
    fn a_reservation_dropped_without_commit_or_cancel_releases_its_quota() {
        let reg = Registry::new();
        let limit = Usage {
            bytes: 8192,
            count: 1,
        };
        std::thread::scope(|s| {
            let r = s.spawn(|| {
                let _r = reg.reserve(7, 4096, limit).unwrap();
                panic!("allocation code panicked mid-way");
            });
            assert!(r.join().is_err());
        });
        assert_eq!(reg.usage_of(7), Usage::default(), "quota leaked");
        // The full quota is there again.
        let r = reg.reserve(7, 8192, limit).expect("quota whole again");
        drop(r);
        assert_eq!(reg.usage_of(7), Usage::default());
    }

    /// dma-buf and shmem inode numbers are counted separately by the
    /// kernel: the same number names two different buffers.
    #[test]
    fn a_memfd_and_a_dmabuf_with_the_same_inode_keep_both_records() {
        let reg = Registry::new();
        let l = Usage {
            bytes: u64::MAX,
            count: u64::MAX,
        };
        let mut dmabuf = rec(77, 1, 4096);
        dmabuf.kind = HeapKind::DmaHeap;
        let memfd = rec(77, 2, 8192);
        reg.commit(reg.reserve(1, 4096, l).unwrap(), dmabuf.clone());
        reg.commit(reg.reserve(2, 8192, l).unwrap(), memfd.clone());
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.freed_total(), 0);
        assert_eq!(reg.get(dmabuf.key()).unwrap().owner_uid, 1);
        assert_eq!(reg.get(memfd.key()).unwrap().owner_uid, 2);
        assert_eq!(
            reg.usage_of(1),
            Usage {
                bytes: 4096,
                count: 1
            }
        );
        assert_eq!(
            reg.usage_of(2),
            Usage {
                bytes: 8192,
                count: 1
            }
        );
        // Freeing one leaves the other and its owner's usage alone.
        reg.remove_freed(|r| r.key() == dmabuf.key());
        assert_eq!(reg.usage_of(1), Usage::default());
        assert_eq!(
            reg.usage_of(2),
            Usage {
                bytes: 8192,
                count: 1
            }
        );
    }

    #[test]
    fn remove_freed_and_totals() {
        let reg = Registry::new();
        let l = Usage {
            bytes: u64::MAX,
            count: u64::MAX,
        };
        for i in 1..=3 {
            let r = reg.reserve(1, 4096, l).unwrap();
            reg.commit(r, rec(i, 1, 4096));
        }
        assert_eq!(
            reg.heap_usage()["system"],
            HeapUsage {
                bytes: 3 * 4096,
                count: 3
            }
        );
        assert_eq!(reg.remove_freed(|r| r.inode != 2), 2);
        assert_eq!(reg.freed_total(), 2);
        assert_eq!(
            reg.snapshot().iter().map(|r| r.inode).collect::<Vec<_>>(),
            vec![2]
        );
        let key = rec(2, 1, 4096).key();
        reg.rename(key, "renamed");
        assert_eq!(reg.get(key).unwrap().name, "renamed");
    }
}
