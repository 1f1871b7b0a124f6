//! The record of every buffer this service handed out: who owns it, which
//! heap served it, its size and current name. Keyed by the buffer's inode
//! (the identity fdinfo and maps show in every process).
//!
//! The registry holds records only, never an fd or a mapping: a buffer the
//! service kept open would be attributed to the service.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::heap::HeapKind;

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
    buffers: HashMap<u64, BufferRecord>,
    /// Bytes/count reserved by allocations in flight, so that concurrent
    /// requests of one uid cannot overshoot its quota together.
    pending: HashMap<u32, Usage>,
    freed_total: u64,
}

/// Thread-safe buffer registry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
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
    /// Set once commit or cancel released it.
    released: bool,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("uid", &self.uid)
            .field("bytes", &self.bytes)
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
        let mut inner = self.lock();
        let used = usage_locked(&inner, uid);
        if used.bytes.saturating_add(bytes) > limit.bytes || used.count + 1 > limit.count {
            return Err(used);
        }
        let p = inner.pending.entry(uid).or_default();
        p.bytes += bytes;
        p.count += 1;
        Ok(Reservation {
            registry: self,
            uid,
            bytes,
            released: false,
        })
    }

    /// Releases a reservation whose allocation failed.
    pub fn cancel(&self, mut r: Reservation<'_>) {
        let mut inner = self.lock();
        release_locked(&mut inner, &r);
        r.released = true;
    }

    /// Turns a reservation into a live record.
    pub fn commit(&self, mut r: Reservation<'_>, record: BufferRecord) {
        let mut inner = self.lock();
        release_locked(&mut inner, &r);
        r.released = true;
        if let Some(old) = inner.buffers.insert(record.inode, record) {
            // The inode was recycled: the old buffer is gone.
            log::debug!(
                "inode {} reused; dropping stale record of {:?}",
                old.inode,
                old.name
            );
            inner.freed_total += 1;
        }
    }

    pub fn get(&self, inode: u64) -> Option<BufferRecord> {
        self.lock().buffers.get(&inode).cloned()
    }

    /// All live records, ordered by inode.
    pub fn snapshot(&self) -> Vec<BufferRecord> {
        let inner = self.lock();
        let mut v: Vec<_> = inner.buffers.values().cloned().collect();
        v.sort_by_key(|r| r.inode);
        v
    }

    pub fn len(&self) -> usize {
        self.lock().buffers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a new name seen for a buffer (a holder renamed it).
    pub fn rename(&self, inode: u64, name: &str) {
        if let Some(r) = self.lock().buffers.get_mut(&inode) {
            if r.name != name {
                r.name = name.to_string();
            }
        }
    }

    /// Removes the records of buffers that are gone. Returns how many.
    pub fn remove_freed(&self, mut is_gone: impl FnMut(&BufferRecord) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.buffers.len();
        inner.buffers.retain(|_, r| !is_gone(r));
        let n = before - inner.buffers.len();
        inner.freed_total += n as u64;
        n
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
    let mut u = inner.pending.get(&uid).copied().unwrap_or_default();
    for r in inner.buffers.values().filter(|r| r.owner_uid == uid) {
        u.bytes += r.size;
        u.count += 1;
    }
    u
}

fn release_locked(inner: &mut Inner, r: &Reservation<'_>) {
    if let Some(p) = inner.pending.get_mut(&r.uid) {
        p.bytes = p.bytes.saturating_sub(r.bytes);
        p.count = p.count.saturating_sub(1);
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
        reg.rename(2, "renamed");
        assert_eq!(reg.get(2).unwrap().name, "renamed");
    }
}
