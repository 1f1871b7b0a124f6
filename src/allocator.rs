//! Where allocations happen: request validation, heap selection, quota,
//! the memory guard, the kernel call, and the registry record.
//!
//! The allocator keeps no fd or mapping of a buffer after handing it out:
//! [`Allocation::fd`] is the only reference and goes to the caller.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::heap::dma_heap::DmaHeap;
use crate::heap::memfd::MemfdHeap;
use crate::heap::udmabuf::UdmabufHeap;
use crate::heap::{page_align, Heap, HeapKind};
use crate::pool::{self, Pools, POOL_BUFFER_NAME};
use crate::registry::{BufferRecord, Registry, Usage};
use crate::sys::DMA_BUF_NAME_MAX;

/// `IDmaBufAllocator.FLAG_NO_CPU_ACCESS`: prefer "<heap>-uncached".
pub const FLAG_NO_CPU_ACCESS: i32 = 1;
const KNOWN_FLAGS: i32 = FLAG_NO_CPU_ACCESS;

/// Who is asking (from the binder transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: i32,
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub heap: &'a str,
    pub size: i64,
    pub name: &'a str,
    pub flags: i32,
}

/// A buffer on its way to the caller.
#[derive(Debug)]
pub struct Allocation {
    pub fd: OwnedFd,
    pub inode: u64,
    pub size: u64,
    pub heap: String,
    /// The kind of heap that served it (a dma-buf, or a memfd).
    pub kind: HeapKind,
    pub name: String,
}

/// A heap as reported by getHeaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapSummary {
    pub name: String,
    pub kind: HeapKind,
    pub max_size: u64,
    pub allocated_bytes: u64,
    pub buffer_count: u64,
    pub aliases: Vec<String>,
}

/// What start-up found, for the one-line start-up message.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Human-readable reasons for fallbacks and failures.
    pub notes: Vec<String>,
}

/// Drops the records of buffers that are gone and returns how many: run
/// before refusing an allocation for quota, since freed buffers count until
/// the monitor notices them (with the kernel's list that is one read of the
/// list, no procfs).
pub type Reclaim = Box<dyn Fn() -> Reclaimed + Send + Sync>;

/// What a reclaim found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Records of freed buffers dropped.
    pub dropped: usize,
    /// Buffer fds the service itself still holds: replies in flight, each
    /// closed a moment after its reply was sent. A buffer its client has
    /// already freed stays alive until then.
    pub own_in_flight: usize,
    /// Without the kernel's list of live buffers (procfs; memfds) a record
    /// younger than this may belong to a reply still in flight and is never
    /// declared gone: a refusal then waits until the records made before it
    /// are this old and looks once more. `None` where liveness is exact.
    pub young_for: Option<std::time::Duration>,
}

/// How many times a refusal reads the kernel's list before refusing.
const RELEASE_LOOKS: u32 = 4;

/// How long a refusal waits, at most, for the service's own replies in
/// flight to let go of buffers their clients already freed (re-reading the
/// live list 1, 2, 4, ... ms apart). Only while such replies exist.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Where the memory guard reads `/proc/meminfo` text from (a test injects
/// its own).
pub type MeminfoSource = Box<dyn Fn() -> std::io::Result<String> + Send + Sync>;

/// The file the memory guard reads.
pub const MEMINFO: &str = "/proc/meminfo";

pub struct Allocator {
    heaps: Vec<Box<dyn Heap>>,
    config: Config,
    registry: Arc<Registry>,
    reclaim: std::sync::OnceLock<Reclaim>,
    meminfo: MeminfoSource,
    /// The memory guard's state: requests in flight and the last meminfo
    /// figures read.
    memory: std::sync::Mutex<MemoryState>,
    /// The reserve pools, once started ([`Allocator::start_pools`]).
    pools: std::sync::OnceLock<Arc<Pools>>,
    /// Uids with a refusal waiting for freed records to age (approximate
    /// liveness only): one waiter per uid, so an app at its quota cannot
    /// park every binder thread for a second each.
    aging_waits: std::sync::Mutex<std::collections::HashSet<u32>>,
}

/// The most buffers one [`Allocator::allocate_batch`] makes
/// (`IDmaBufAllocator.MAX_BATCH_COUNT`).
pub const MAX_BATCH_COUNT: usize =
    crate::aidl::vendor::dmabuf::IDmaBufAllocator::MAX_BATCH_COUNT as usize;

/// How long the memory guard trusts a meminfo read for small requests that
/// fit (less what it let through since, at most 4 MiB in all); any other
/// request re-reads, and none is refused on an old read.
pub const MEMINFO_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Default)]
struct MemoryState {
    /// Bytes of requests between the memory guard and the heap's answer.
    in_flight: u64,
    /// The last figures read, if younger than [`MEMINFO_MAX_AGE`].
    figures: Option<MemoryFigures>,
}

#[derive(Clone, Copy)]
struct MemoryFigures {
    read_at: std::time::Instant,
    available: u64,
    total: u64,
    /// Bytes let through since the read (not yet in `available`).
    passed_since: u64,
}

/// The memory guard keeps this much of MemAvailable free at least ...
pub const MEMORY_MARGIN_MIN: u64 = 64 << 20;
/// ... or this share of MemTotal (1/20 = 5%) when that is more.
pub const MEMORY_MARGIN_TOTAL_DIVISOR: u64 = 20;

/// The bytes of one request counted as in flight by the memory guard until
/// dropped (once the heap answered).
struct InFlight<'a> {
    counter: &'a std::sync::Mutex<MemoryState>,
    bytes: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self.counter.lock().unwrap_or_else(|e| e.into_inner());
        m.in_flight = m.in_flight.saturating_sub(self.bytes);
    }
}

impl Allocator {
    pub fn new(heaps: Vec<Box<dyn Heap>>, config: Config, registry: Arc<Registry>) -> Allocator {
        Allocator {
            heaps,
            config,
            registry,
            reclaim: std::sync::OnceLock::new(),
            meminfo: Box::new(|| std::fs::read_to_string(MEMINFO)),
            memory: std::sync::Mutex::default(),
            pools: std::sync::OnceLock::new(),
            aging_waits: std::sync::Mutex::default(),
        }
    }

    /// Reads the memory guard's meminfo text from `source` instead of
    /// [`MEMINFO`].
    pub fn with_meminfo(mut self, source: MeminfoSource) -> Allocator {
        self.meminfo = source;
        self
    }

    /// Installs the quota reclaim hook (once; later calls are ignored).
    pub fn set_reclaim(&self, reclaim: Reclaim) {
        let _ = self.reclaim.set(reclaim);
    }

    /// Runs the reclaim hook (the monitor shares and bounds the work).
    fn reclaim(&self) -> Option<Reclaimed> {
        self.reclaim.get().map(|f| f())
    }

    /// The memory guard: counts `size` as in flight if it fits, with every
    /// other request in flight, below MemAvailable less the margin
    /// ([`check_memory`]). Under the lock, so two requests never both count
    /// on the same free memory. A meminfo read younger than
    /// [`MEMINFO_MAX_AGE`], less what passed since, answers a request that
    /// fits; one that does not fit re-reads before it is refused. Fails
    /// closed.
    fn reserve_memory(&self, size: u64) -> Result<InFlight<'_>> {
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let cached = m
            .figures
            .filter(|f| now.saturating_duration_since(f.read_at) < MEMINFO_MAX_AGE);
        // Only small requests ride on a recent read: together they stay
        // within a sixteenth of the margin until the next read.
        let fits_cached = cached.is_some_and(|f| {
            f.passed_since.saturating_add(size) <= MEMORY_MARGIN_MIN / 16
                && check_figures(
                    f.available.saturating_sub(f.passed_since),
                    f.total,
                    m.in_flight,
                    size,
                )
                .is_ok()
        });
        if !fits_cached {
            m.figures = None;
            let text = (self.meminfo)().map_err(|e| {
                Error::new(
                    Kind::NoMemory,
                    format!(
                        "cannot read {MEMINFO} ({e}) to check that {size} bytes fit in memory; \
                         allocations are refused until it is readable"
                    ),
                )
            })?;
            let (available, total) = memory_figures(&text, size)?;
            check_figures(available, total, m.in_flight, size)?;
            m.figures = Some(MemoryFigures {
                read_at: now,
                available,
                total,
                passed_since: 0,
            });
        }
        m.in_flight += size;
        if let Some(f) = &mut m.figures {
            f.passed_since += size;
        }
        Ok(InFlight {
            counter: &self.memory,
            bytes: size,
        })
    }

    /// Reserves quota for `count` buffers of `size` bytes (all or none).
    fn reserve(
        &self,
        caller: Caller,
        size: u64,
        count: u64,
    ) -> Result<crate::registry::Reservation<'_>> {
        let quota = self.config.quota_for(caller.uid);
        let limit = Usage {
            bytes: quota.bytes,
            count: quota.buffers,
        };
        let mut attempt = self.registry.reserve_many(caller.uid, size, count, limit);
        // Usage counts records until the monitor sees their buffers freed:
        // look before refusing. A closed buffer leaves the kernel's list a
        // moment after its last fd is closed (the release runs when the
        // closing thread returns to user space; the service's own reply
        // threads close their copies just after sending), so look again a
        // few times (2, 8, 32 ms), and for longer while the service itself
        // still holds buffer fds of replies in flight.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        let mut looks = 0;
        // A request larger than the whole quota fits whatever is freed.
        let hopeless = size.saturating_mul(count) > limit.bytes || count > limit.count;
        let mut young_for = None;
        while attempt.is_err() && !hopeless {
            let Some(found) = self.reclaim() else { break };
            young_for = found.young_for;
            looks += 1;
            attempt = self.registry.reserve_many(caller.uid, size, count, limit);
            let waited = start.elapsed();
            if attempt.is_ok()
                || (looks >= RELEASE_LOOKS
                    && (found.own_in_flight == 0 || waited >= IN_FLIGHT_WAIT))
            {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 4).min(std::time::Duration::from_millis(32));
        }
        // Approximate liveness: buffers the caller freed within the last
        // young_for still count. Wait until every record made before this
        // request has aged out of it, then look once more, so a client
        // that frees as fast as it allocates is slowed, not refused.
        // One waiter per uid: another request of the uid is refused now.
        if let (Err(_), Some(young_for)) = (&attempt, young_for) {
            let waiting = || self.aging_waits.lock().unwrap_or_else(|e| e.into_inner());
            if waiting().insert(caller.uid) {
                let settled = start + young_for + std::time::Duration::from_millis(20);
                std::thread::sleep(settled.saturating_duration_since(std::time::Instant::now()));
                if self.reclaim().is_some() {
                    attempt = self.registry.reserve_many(caller.uid, size, count, limit);
                }
                waiting().remove(&caller.uid);
            }
        }
        attempt.map_err(|used| {
            log::info!(
                "uid {} over quota after {} ms of reclaim ({} bytes / {} buffers live)",
                caller.uid,
                start.elapsed().as_millis(),
                used.bytes,
                used.count
            );
            let needs = if count == 1 {
                format!("this request needs {size} more bytes")
            } else {
                format!(
                    "this batch needs {} more bytes in {count} buffers",
                    size.saturating_mul(count)
                )
            };
            Error::new(
                Kind::QuotaExceeded,
                format!(
                    "uid {} quota exceeded: {} bytes in {} buffers live, limit {} bytes / {} buffers; \
                     {needs}",
                    caller.uid, used.bytes, used.count, quota.bytes, quota.buffers
                ),
            )
        })
    }

    /// Opens the heaps the machine has: every /dev/dma_heap device, udmabuf
    /// when present, and the memfd "system" heap when no kernel heap is
    /// called "system".
    pub fn discover(config: Config, registry: Arc<Registry>) -> (Allocator, Discovery) {
        let mut d = Discovery::default();
        let mut heaps: Vec<Box<dyn Heap>> = Vec::new();
        let dir = &config.heaps.dma_heap_dir;
        let (found, failed) = DmaHeap::discover(dir);
        if found.is_empty() && failed.is_empty() {
            d.notes
                .push(format!("no DMA-BUF heaps in {}", dir.display()));
        }
        for (path, e) in failed {
            d.notes.push(format!("cannot open {path}: {e}"));
        }
        heaps.extend(found.into_iter().map(|h| Box::new(h) as Box<dyn Heap>));
        let udev = &config.heaps.udmabuf_device;
        if Path::new(udev).exists() {
            match UdmabufHeap::open(udev) {
                Ok(h) => heaps.push(Box::new(h)),
                Err(e) => d.notes.push(format!("cannot open {}: {e}", udev.display())),
            }
        }
        if !heaps.iter().any(|h| h.name() == "system") {
            d.notes
                .push("serving \"system\" from sealed memfds (kind MEMFD, not dma-bufs)".into());
            heaps.push(Box::new(MemfdHeap::new("system")));
        }
        for (alias, target) in &config.aliases {
            if heaps.iter().any(|h| h.name() == alias) {
                d.notes.push(format!(
                    "config error: alias {alias} -> {target} is named like the heap {alias}; \
                     ignored, requests for {alias} go to that heap"
                ));
            } else if !heaps.iter().any(|h| h.name() == target) {
                d.notes
                    .push(format!("alias {alias} -> {target}: no such heap; ignored"));
            }
        }
        (Allocator::new(heaps, config, registry), d)
    }

    /// [`discover`](Self::discover), refusing a config whose aliases
    /// shadow a heap: the start-up error names each one.
    pub fn try_discover(
        config: Config,
        registry: Arc<Registry>,
    ) -> std::result::Result<(Allocator, Discovery), String> {
        let (a, d) = Self::discover(config, registry);
        let bad = a.shadowing_aliases();
        if bad.is_empty() {
            return Ok((a, d));
        }
        Err(format!(
            "config: {} named like a heap the machine has; an alias must be a new name \
             for a heap (heaps: {})",
            bad.iter()
                .map(|(a, t)| format!("aliases.{a} = {t:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            a.heaps
                .iter()
                .map(|h| h.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Aliases named like a heap (alias, target): ignored, the heap wins.
    pub fn shadowing_aliases(&self) -> Vec<(String, String)> {
        self.config
            .aliases
            .iter()
            .filter(|(a, _)| self.heap(a).is_some())
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn heap(&self, name: &str) -> Option<&dyn Heap> {
        self.heaps
            .iter()
            .find(|h| h.name() == name)
            .map(|h| h.as_ref())
    }

    fn heap_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.heaps.iter().map(|h| h.name().to_string()).collect();
        v.extend(self.live_aliases().into_keys());
        v
    }

    fn live_aliases(&self) -> BTreeMap<String, String> {
        self.config
            .aliases
            .iter()
            .filter(|(a, t)| self.heap(t).is_some() && self.heap(a).is_none())
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect()
    }

    pub fn heaps(&self) -> Vec<HeapSummary> {
        let usage = self.registry.heap_usage();
        let aliases = self.live_aliases();
        self.heaps
            .iter()
            .map(|h| {
                let u = usage.get(h.name()).copied().unwrap_or_default();
                HeapSummary {
                    name: h.name().to_string(),
                    kind: h.kind(),
                    max_size: self.config.max_size(h.name()),
                    allocated_bytes: u.bytes,
                    buffer_count: u.count,
                    aliases: aliases
                        .iter()
                        .filter(|(_, t)| *t == h.name())
                        .map(|(a, _)| a.clone())
                        .collect(),
                }
            })
            .collect()
    }

    /// Resolves aliases and FLAG_NO_CPU_ACCESS to the heap that serves.
    fn resolve(&self, requested: &str, flags: i32) -> Result<&dyn Heap> {
        // A heap's own name always means that heap, whatever the aliases say.
        let base = match self.heap(requested) {
            Some(_) => requested,
            None => self
                .config
                .aliases
                .get(requested)
                .map(String::as_str)
                .unwrap_or(requested),
        };
        let Some(heap) = self.heap(base) else {
            return Err(Error::new(
                Kind::UnknownHeap,
                format!(
                    "unknown heap {:?}; available: {}",
                    shown(requested),
                    self.heap_names().join(", ")
                ),
            ));
        };
        if flags & FLAG_NO_CPU_ACCESS != 0 {
            if let Some(uncached) = self.heap(&format!("{base}-uncached")) {
                return Ok(uncached);
            }
        }
        Ok(heap)
    }

    /// Allocates one buffer: from the heap's pool when a class of its
    /// page-rounded size has one ready, else fresh from the heap.
    pub fn allocate(&self, caller: Caller, req: &Request<'_>) -> Result<Allocation> {
        let mut v = self.allocate_n(caller, req, 1, false)?;
        v.pop()
            .ok_or_else(|| Error::new(Kind::Internal, "no buffer made"))
    }

    /// Allocates `count` buffers (1 to [`MAX_BATCH_COUNT`]) of one request,
    /// all or nothing: quota for the whole batch is reserved first; when a
    /// buffer cannot be made, every one already made is closed, none is
    /// recorded, and the error names the failing index and why. Every
    /// buffer carries the request's name (or the heap-derived default).
    pub fn allocate_batch(
        &self,
        caller: Caller,
        req: &Request<'_>,
        count: i32,
    ) -> Result<Vec<Allocation>> {
        let n = usize::try_from(count)
            .ok()
            .filter(|n| (1..=MAX_BATCH_COUNT).contains(n))
            .ok_or_else(|| {
                Error::new(
                    Kind::IllegalArgument,
                    format!(
                        "allocateBatch count {count}: allowed 1 to {MAX_BATCH_COUNT} \
                         (MAX_BATCH_COUNT)"
                    ),
                )
            })?;
        self.allocate_n(caller, req, n, true)
    }

    fn allocate_n(
        &self,
        caller: Caller,
        req: &Request<'_>,
        count: usize,
        batch: bool,
    ) -> Result<Vec<Allocation>> {
        if req.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::new(
                Kind::InvalidFlags,
                format!(
                    "unknown flag bits {:#x}; allowed: FLAG_NO_CPU_ACCESS ({FLAG_NO_CPU_ACCESS:#x})",
                    req.flags & !KNOWN_FLAGS
                ),
            ));
        }
        let heap = self.resolve(req.heap, req.flags)?;
        validate_name(req.name)?;
        let default_name;
        let name = if req.name.is_empty() {
            default_name = buffer_name_of_heap(heap.name());
            default_name.as_str()
        } else {
            req.name
        };
        let max = self.config.max_size(heap.name());
        let size = checked_size(req.size, max, heap.name())?;
        // Where the buffer failed, for a batch.
        let at = |i: usize, e: Error| -> Error {
            if batch {
                Error::new(
                    e.kind,
                    format!(
                        "buffer {i} of {count} failed, none of the batch was kept: {}",
                        e.message
                    ),
                )
            } else {
                e
            }
        };
        let pools = self.pools.get().filter(|p| p.has_class(heap.name(), size));
        // Memory first for fresh buffers (a request RAM cannot hold is
        // NO_MEMORY, whatever the quota); pooled ones are memory already.
        let mut in_flight = match pools {
            None => Some(self.reserve_memory(size.saturating_mul(count as u64))?),
            Some(_) => None,
        };
        let reservation = self.reserve(caller, size, count as u64)?;
        let mut made: Vec<(OwnedFd, u64)> = Vec::with_capacity(count);
        if let Some(p) = pools {
            while made.len() < count {
                let Some(b) = p.take(heap.name(), size) else {
                    break;
                };
                // Named before the fd leaves the service, like a fresh one.
                match heap.rename(b.fd.as_fd(), name) {
                    Ok(()) => made.push((b.fd, b.key.inode)),
                    Err(e) => {
                        log::warn!("cannot name a pooled buffer of {}: {e}", heap.name());
                        break;
                    }
                }
            }
            let fresh = (count - made.len()) as u64;
            if fresh > 0 {
                in_flight = Some(
                    self.reserve_memory(size.saturating_mul(fresh))
                        .map_err(|e| at(made.len(), e))?,
                );
            }
        }
        while made.len() < count {
            let fd = heap
                .allocate(size, name)
                .map_err(|e| at(made.len(), kernel_error(e, heap.name(), size)))?;
            let inode = nix::sys::stat::fstat(fd.as_fd())
                .map_err(|e| {
                    at(
                        made.len(),
                        Error::new(Kind::Internal, format!("fstat of new buffer: {e}")),
                    )
                })?
                .st_ino;
            made.push((fd, inode));
        }
        // The kernel has answered: the bytes show in MemAvailable now.
        drop(in_flight);
        let heap_name = heap.name().to_string();
        let now = SystemTime::now();
        let committed_at = std::time::Instant::now();
        let records = made
            .iter()
            .map(|(_, inode)| BufferRecord {
                inode: *inode,
                heap: heap_name.clone(),
                kind: heap.kind(),
                size,
                name: name.to_string(),
                owner_uid: caller.uid,
                owner_pid: caller.pid,
                // Filled in at report time (Registry::fill_owner_names).
                owner_name: String::new(),
                allocated_at: now,
                committed_at,
            })
            .collect();
        self.registry.commit_many(reservation, records);
        Ok(made
            .into_iter()
            .map(|(fd, inode)| Allocation {
                fd,
                inode,
                size,
                heap: heap_name.clone(),
                kind: heap.kind(),
                name: name.to_string(),
            })
            .collect())
    }

    /// Plans the configured pools against this machine's heaps (the
    /// start-up error names what is wrong) and installs them; the caller
    /// starts their filler ([`Allocator::pool_maker`], [`Pools::run`]).
    /// `None` when no pool is configured.
    pub fn plan_pools(&self) -> std::result::Result<Option<Arc<Pools>>, String> {
        let cfg = &self.config.pools;
        if cfg.is_empty() {
            return Ok(None);
        }
        let limits: Vec<pool::HeapLimit<'_>> = self
            .heaps
            .iter()
            .map(|h| pool::HeapLimit {
                name: h.name(),
                max_size: self.config.max_size(h.name()),
            })
            .collect();
        let plans = pool::plan(cfg, &limits, |n| {
            self.resolve(n, 0).ok().map(|h| h.name().to_string())
        })
        .map_err(|e| format!("config: {e}"))?;
        let pools = Arc::new(Pools::new(plans, cfg));
        let _ = self.pools.set(pools.clone());
        Ok(Some(pools))
    }

    /// The pools, when configured and planned.
    pub fn pools(&self) -> Option<&Arc<Pools>> {
        self.pools.get()
    }

    /// What the pools' filler calls to make one buffer: fresh from the
    /// heap, named [`POOL_BUFFER_NAME`], through the memory guard and only
    /// while MemAvailable stays above `pools.min_available` after it.
    pub fn pool_maker(self: &Arc<Self>) -> pool::Maker {
        let me = Arc::downgrade(self);
        Box::new(move |heap, size| {
            let a = me
                .upgrade()
                .ok_or_else(|| Error::new(Kind::Internal, "the allocator is gone"))?;
            a.make_pooled(heap, size)
        })
    }

    fn make_pooled(&self, heap: &str, size: u64) -> Result<pool::Pooled> {
        let h = self
            .heap(heap)
            .ok_or_else(|| Error::new(Kind::UnknownHeap, format!("no heap {heap:?}")))?;
        let floor = self.config.pools.min_available;
        if floor > 0 {
            let text = (self.meminfo)()
                .map_err(|e| Error::new(Kind::NoMemory, format!("cannot read {MEMINFO}: {e}")))?;
            let avail = mem_available(&text).unwrap_or(0);
            if avail.saturating_sub(size) < floor {
                return Err(Error::new(
                    Kind::NoMemory,
                    format!(
                        "MemAvailable {avail} bytes less {size} would fall below \
                         pools.min_available ({floor} bytes)"
                    ),
                ));
            }
        }
        let in_flight = self.reserve_memory(size)?;
        let fd = h
            .allocate(size, POOL_BUFFER_NAME)
            .map_err(|e| kernel_error(e, heap, size))?;
        drop(in_flight);
        let inode = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| Error::new(Kind::Internal, format!("fstat of a pooled buffer: {e}")))?
            .st_ino;
        let key = match h.kind() {
            HeapKind::Memfd => crate::scan::BufferKey::memfd(inode),
            HeapKind::DmaHeap | HeapKind::Udmabuf => crate::scan::BufferKey::dmabuf(inode),
        };
        Ok(pool::Pooled { fd, key })
    }
}

/// At most 31 bytes (the kernel's DMA_BUF_NAME_LEN with its NUL), no NUL or
/// control characters. Empty is allowed: the buffer is named after the heap.
pub fn validate_name(name: &str) -> Result<()> {
    if name.len() > DMA_BUF_NAME_MAX {
        return Err(Error::new(
            Kind::InvalidName,
            format!(
                "name {:?} is {} bytes; at most {DMA_BUF_NAME_MAX} bytes are allowed",
                shown(name),
                name.len()
            ),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::new(
            Kind::InvalidName,
            format!(
                "name {:?} contains control character {:#04x}; only printable characters are allowed",
                shown(name),
                c as u32
            ),
        ));
    }
    Ok(())
}

/// The name an unnamed buffer gets: its heap's name, made valid for
/// [`validate_name`] (control characters become `_`, cut to 31 bytes on a
/// character boundary, as libdmabufheap truncates), since a heap is named
/// after whatever its device node is called.
fn buffer_name_of_heap(heap: &str) -> String {
    let mut out = String::new();
    for c in heap.chars() {
        let c = if c.is_control() { '_' } else { c };
        if out.len() + c.len_utf8() > DMA_BUF_NAME_MAX {
            break;
        }
        out.push(c);
    }
    debug_assert!(validate_name(&out).is_ok());
    out
}

/// A client string as quoted in messages and logs: at most 48 characters,
/// so a megabyte-long name cannot flood the log or the reply.
fn shown(s: &str) -> String {
    const MAX: usize = 48;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn checked_size(size: i64, max: u64, heap: &str) -> Result<u64> {
    let bad = |why: String| Error::new(Kind::InvalidSize, why);
    if size <= 0 {
        return Err(bad(format!(
            "size {size} is not positive; allowed: 1 to {max} bytes on heap {heap:?}"
        )));
    }
    let size = size as u64;
    if size > max {
        return Err(bad(format!(
            "size {size} exceeds the maximum of {max} bytes on heap {heap:?}"
        )));
    }
    page_align(size).ok_or_else(|| bad(format!("size {size} overflows when page-aligned")))
}

/// Refuses what memory cannot hold before the kernel sees it: the system
/// heap does not fail such requests cleanly, the OOM killer acts instead.
///
/// A request fits when it and every request still in flight (`in_flight`:
/// passed this check, heap not yet answered) stay within MemAvailable less
/// a margin of max(64 MiB, 5% of MemTotal), the memory left for everything
/// else on the machine. Fails closed: meminfo without MemAvailable or
/// MemTotal refuses.
pub fn check_memory(meminfo: &str, in_flight: u64, size: u64) -> Result<()> {
    let (avail, total) = memory_figures(meminfo, size)?;
    check_figures(avail, total, in_flight, size)
}

/// MemAvailable and MemTotal from meminfo text; refuses (fails closed)
/// when either is missing.
fn memory_figures(meminfo: &str, size: u64) -> Result<(u64, u64)> {
    let field = |name: &str| {
        meminfo_kb(meminfo, name).ok_or_else(|| {
            Error::new(
                Kind::NoMemory,
                format!(
                    "{MEMINFO} has no readable {name}: line, so {size} bytes cannot be \
                     checked against free memory; allocations are refused"
                ),
            )
        })
    };
    Ok((field("MemAvailable")?, field("MemTotal")?))
}

/// [`check_memory`] on figures already read.
fn check_figures(avail: u64, total: u64, in_flight: u64, size: u64) -> Result<()> {
    let margin = MEMORY_MARGIN_MIN.max(total / MEMORY_MARGIN_TOTAL_DIVISOR);
    let room = avail.saturating_sub(margin);
    if in_flight.saturating_add(size) > room {
        return Err(Error::new(
            Kind::NoMemory,
            format!(
                "size {size} with {in_flight} bytes of other requests in flight exceeds the \
                 {avail} bytes of memory available less a margin of {margin} bytes \
                 (max(64 MiB, 5% of MemTotal)); at most {} bytes fit now",
                room.saturating_sub(in_flight)
            ),
        ));
    }
    Ok(())
}

/// A `Name:   123 kB` field of /proc/meminfo text, in bytes.
fn meminfo_kb(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// MemAvailable from /proc/meminfo text, in bytes.
pub fn mem_available(text: &str) -> Option<u64> {
    meminfo_kb(text, "MemAvailable")
}

fn kernel_error(e: std::io::Error, heap: &str, size: u64) -> Error {
    if e.raw_os_error() == Some(nix::errno::Errno::ENOMEM as i32) {
        Error::new(
            Kind::NoMemory,
            format!("heap {heap:?} could not allocate {size} bytes: out of memory"),
        )
    } else {
        Error::new(
            Kind::Internal,
            format!("heap {heap:?} failed to allocate {size} bytes: {e}"),
        )
    }
}

/// The command name of `pid` (for reports), or "" when it is gone.
pub fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc_with(config: Config) -> Allocator {
        let heaps: Vec<Box<dyn Heap>> = vec![
            Box::new(MemfdHeap::new("system")),
            Box::new(MemfdHeap::new("system-uncached")),
        ];
        Allocator::new(heaps, config, Arc::new(Registry::new()))
    }

    fn req<'a>(heap: &'a str, size: i64, name: &'a str, flags: i32) -> Request<'a> {
        Request {
            heap,
            size,
            name,
            flags,
        }
    }

    const ME: Caller = Caller { uid: 10001, pid: 1 };

    #[test]
    fn allocates_named_page_rounded_and_records_owner() {
        let a = alloc_with(Config::default());
        let b = a.allocate(ME, &req("system", 5000, "cam", 0)).unwrap();
        assert_eq!(b.size, 8192);
        assert_eq!(b.heap, "system");
        let st = nix::sys::stat::fstat(b.fd.as_fd()).unwrap();
        assert_eq!(st.st_ino, b.inode);
        assert_eq!(st.st_size, 8192);
        let rec = a
            .registry()
            .get(crate::scan::BufferKey::memfd(b.inode))
            .unwrap();
        assert_eq!(
            (rec.owner_uid, rec.size, rec.name.as_str()),
            (10001, 8192, "cam")
        );
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&b.fd)
        ))
        .unwrap();
        assert_eq!(link.to_str().unwrap(), "/memfd:cam (deleted)");
    }

    #[test]
    fn empty_name_is_the_heap_name_and_no_cpu_access_prefers_uncached() {
        let a = alloc_with(Config::default());
        let b = a
            .allocate(ME, &req("system", 1, "", FLAG_NO_CPU_ACCESS))
            .unwrap();
        assert_eq!(b.heap, "system-uncached");
        assert_eq!(b.name, "system-uncached");
    }

    /// An empty request name names the buffer after its heap; a heap name
    /// is whatever the device node is called, so it is made a valid buffer
    /// name (at most 31 bytes, printable) rather than failing every such
    /// request.
    #[test]
    fn the_heap_name_given_to_unnamed_buffers_is_a_valid_buffer_name() {
        let long = format!("{}é", "h".repeat(30));
        let heaps: Vec<Box<dyn Heap>> = vec![
            Box::new(MemfdHeap::new(&long)),
            Box::new(MemfdHeap::new("tab\theap")),
        ];
        let a = Allocator::new(heaps, Config::default(), Arc::new(Registry::new()));
        let b = a.allocate(ME, &req(&long, 1, "", 0)).unwrap();
        // 30 bytes: the two-byte 'é' would make 32.
        assert_eq!(b.name, "h".repeat(30));
        let b = a.allocate(ME, &req("tab\theap", 1, "", 0)).unwrap();
        assert_eq!(b.name, "tab_heap");
        let key = crate::scan::BufferKey::memfd(b.inode);
        assert_eq!(a.registry().get(key).unwrap().name, "tab_heap");
    }

    /// An alias named like a real heap would silently send that heap's
    /// requests elsewhere: the real heap wins, and start-up refuses it.
    #[test]
    fn an_alias_never_shadows_a_real_heap() {
        let heaps: Vec<Box<dyn Heap>> = vec![
            Box::new(MemfdHeap::new("system")),
            Box::new(MemfdHeap::new("camera")),
        ];
        let config = Config::parse("[aliases]\ncamera = \"system\"").unwrap();
        let a = Allocator::new(heaps, config, Arc::new(Registry::new()));
        assert_eq!(
            a.allocate(ME, &req("camera", 1, "x", 0)).unwrap().heap,
            "camera"
        );
        assert!(a.heaps().iter().all(|h| h.aliases.is_empty()));
        assert_eq!(
            a.shadowing_aliases(),
            vec![("camera".to_string(), "system".to_string())]
        );
        // At start-up it is a config error.
        let dir = std::env::temp_dir().join(format!("dmabufd-no-heaps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[heaps]\ndma_heap_dir = {:?}\nudmabuf_device = \"/nonexistent/udmabuf\"\n\
             [aliases]\nsystem = \"udmabuf\"\n",
            dir.display().to_string()
        );
        let config = Config::parse(&text).unwrap();
        let e = Allocator::try_discover(config.clone(), Arc::new(Registry::new()))
            .err()
            .expect("a shadowing alias was accepted");
        assert!(
            e.contains("aliases.system") && e.contains("heaps: system"),
            "{e}"
        );
        let (_, d) = Allocator::discover(config, Arc::new(Registry::new()));
        assert!(d
            .notes
            .iter()
            .any(|n| n.starts_with("config error: alias system")));
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn aliases_resolve() {
        let a = alloc_with(Config::parse("[aliases]\ncamera = \"system\"").unwrap());
        assert_eq!(
            a.allocate(ME, &req("camera", 1, "x", 0)).unwrap().heap,
            "system"
        );
        assert_eq!(a.heaps()[0].aliases, vec!["camera".to_string()]);
    }

    #[test]
    fn each_refusal_has_its_kind_and_says_what_is_allowed() {
        let a = alloc_with(
            Config::parse("[heaps]\ndefault_max_size = \"1M\"\n[quota]\ndefault_buffers = 1")
                .unwrap(),
        );
        let e = a.allocate(ME, &req("nope", 1, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::UnknownHeap);
        assert!(e.message.contains("system, system-uncached"), "{e}");
        let e = a.allocate(ME, &req("system", 0, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidSize);
        assert!(e.message.contains("1 to 1048576"), "{e}");
        assert_eq!(
            a.allocate(ME, &req("system", -1, "", 0)).unwrap_err().kind,
            Kind::InvalidSize
        );
        let e = a
            .allocate(ME, &req("system", (1 << 20) + 1, "", 0))
            .unwrap_err();
        assert_eq!(e.kind, Kind::InvalidSize);
        let e = a
            .allocate(ME, &req("system", 1, &"n".repeat(32), 0))
            .unwrap_err();
        assert_eq!(e.kind, Kind::InvalidName);
        assert!(e.message.contains("31"), "{e}");
        assert!(a
            .allocate(ME, &req("system", 1, &"n".repeat(31), 0))
            .is_ok());
        assert_eq!(
            a.allocate(ME, &req("system", 1, "a\nb", 0))
                .unwrap_err()
                .kind,
            Kind::InvalidName
        );
        let e = a.allocate(ME, &req("system", 1, "", 6)).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidFlags);
        assert!(
            e.message.contains("0x6") && e.message.contains("FLAG_NO_CPU_ACCESS"),
            "{e}"
        );
        // The 31-byte buffer above used the one-buffer quota.
        let e = a.allocate(ME, &req("system", 1, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded);
        assert!(e.message.contains("limit"), "{e}");
        // Another uid is not affected.
        assert!(a
            .allocate(Caller { uid: 10002, pid: 1 }, &req("system", 1, "", 0))
            .is_ok());
    }

    #[test]
    fn quota_refusal_first_reclaims_freed_buffers_and_waits_only_for_own_replies() {
        let a = Arc::new(alloc_with(
            Config::parse("[quota]\ndefault_buffers = 1").unwrap(),
        ));
        let first = a.allocate(ME, &req("system", 1, "", 0)).unwrap();
        let inode = first.inode;
        drop(first); // freed, but its record stays until a scan notices
        let reg = a.registry().clone();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = runs.clone();
        a.set_reclaim(Box::new(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Reclaimed {
                dropped: reg.remove_freed(|rec| rec.inode == inode),
                own_in_flight: 0,
                young_for: None,
            }
        }));
        let second = a.allocate(ME, &req("system", 1, "", 0)).expect("reclaimed");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Held, so a refusal now, after a bounded number of looks (the
        // monitor shares and rate-limits the work behind each look).
        let e = a.allocate(ME, &req("system", 1, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded);
        // Nothing of ours in flight: a bounded number of looks.
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1 + RELEASE_LOOKS
        );
        drop(second);
    }

    /// Without the kernel's list (procfs, memfds) a freed record is gone
    /// only once it is older than the reclaim's `young_for`: a client that
    /// frees as fast as it allocates was refused with half its quota live.
    /// Now the refusal waits for the records made before it to age, looks
    /// again, and allocates; a caller really over quota is still refused.
    #[test]
    fn without_exact_liveness_a_refusal_waits_for_freed_records_to_age() {
        let a = Arc::new(alloc_with(
            Config::parse("[quota]\ndefault_buffers = 1").unwrap(),
        ));
        let young_for = std::time::Duration::from_millis(300);
        let reg = a.registry().clone();
        // The inodes the test still holds (what a scan would see).
        let held = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let h = held.clone();
        a.set_reclaim(Box::new(move || Reclaimed {
            // The procfs gone rule: unreferenced and no longer young.
            dropped: reg.remove_freed(|rec| {
                rec.committed_at.elapsed() >= young_for && !h.lock().unwrap().contains(&rec.inode)
            }),
            own_in_flight: 0,
            young_for: Some(young_for),
        }));
        drop(a.allocate(ME, &req("system", 1, "", 0)).unwrap());
        let asked = std::time::Instant::now();
        let kept = a
            .allocate(ME, &req("system", 1, "", 0))
            .expect("the freed buffer aged out of young_for: not a refusal");
        assert!(asked.elapsed() < young_for * 3, "{:?}", asked.elapsed());
        held.lock().unwrap().push(kept.inode);
        // Held: a refusal, after the one extra wait; and one waiter per
        // uid: of two requests at once, one waits, the other is refused
        // without waiting.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let both: Vec<_> = (0..2)
            .map(|_| {
                let (a, barrier) = (a.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let t = std::time::Instant::now();
                    let e = a.allocate(ME, &req("system", 1, "", 0)).unwrap_err();
                    (e.kind, t.elapsed())
                })
            })
            .collect();
        let mut waited: Vec<_> = both
            .into_iter()
            .map(|t| {
                let (kind, took) = t.join().unwrap();
                assert_eq!(kind, Kind::QuotaExceeded);
                took
            })
            .collect();
        waited.sort();
        assert!(
            waited[0] < young_for && waited[1] >= young_for,
            "both or neither waited: {waited:?}"
        );
        drop(kept);
    }

    #[test]
    fn huge_names_are_refused_with_a_short_message() {
        let a = alloc_with(Config::default());
        let big = "n".repeat(1 << 20);
        let e = a.allocate(ME, &req("system", 1, &big, 0)).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidName);
        assert!(e.message.len() < 200, "{} bytes", e.message.len());
        assert!(e.message.contains("1048576 bytes"), "{}", e.message);
        let e = a.allocate(ME, &req(&big, 1, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::UnknownHeap);
        assert!(e.message.len() < 200);
    }

    /// /proc/meminfo text of a machine with `total` and `avail` bytes.
    fn meminfo(total: u64, avail: u64) -> MeminfoSource {
        let text = format!(
            "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
            total >> 10,
            avail >> 10,
            avail >> 10
        );
        Box::new(move || Ok(text.clone()))
    }

    const MIB: u64 = 1 << 20;

    /// A memfd heap whose allocations wait for `gate` to open, so requests
    /// stay in flight together.
    struct GatedHeap {
        inner: MemfdHeap,
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl Heap for GatedHeap {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn kind(&self) -> HeapKind {
            self.inner.kind()
        }
        fn allocate(&self, size: u64, name: &str) -> std::io::Result<OwnedFd> {
            let (open, cv) = &*self.gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            drop(g);
            self.inner.allocate(size, name)
        }
    }

    /// Eight 200 MiB requests on a 1 GiB machine with 1 GiB available:
    /// each fits, together they do not. With the 64 MiB margin 960 MiB may
    /// be in flight: four pass, the other four are refused while the first
    /// four are still in the heap.
    #[test]
    fn eight_concurrent_requests_that_each_fit_but_together_do_not_the_excess_are_refused() {
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let heaps: Vec<Box<dyn Heap>> = vec![Box::new(GatedHeap {
            inner: MemfdHeap::new("system"),
            gate: gate.clone(),
        })];
        let config = Config::parse("[quota]\ndefault_bytes = \"64G\"").unwrap();
        let a = Allocator::new(heaps, config, Arc::new(Registry::new()))
            .with_meminfo(meminfo(1 << 30, 1 << 30));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for i in 0..8 {
                let (a, tx) = (&a, tx.clone());
                s.spawn(move || {
                    let name = format!("r{i}");
                    let r = a.allocate(ME, &req("system", (200 * MIB) as i64, &name, 0));
                    tx.send(r.map(|b| b.size)).unwrap();
                });
            }
            // The refused ones answer while the others wait in the heap.
            let mut early = Vec::new();
            while early.len() < 4 {
                match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                    Ok(r) => early.push(r),
                    Err(_) => break,
                }
            }
            *gate.0.lock().unwrap() = true;
            gate.1.notify_all();
            assert_eq!(early.len(), 4, "requests refused before the heap answered");
            for r in &early {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind, Kind::NoMemory, "{e}");
                assert!(e.message.contains("in flight"), "{e}");
            }
        });
        drop(tx);
        let late: Vec<_> = rx.iter().collect();
        assert_eq!(late.len(), 4);
        assert!(late
            .iter()
            .all(|r| r.as_ref().is_ok_and(|&s| s == 200 * MIB)));
        // Nothing is in flight any more: one more request fits again.
        gate.0.lock().map(|mut g| *g = true).unwrap();
        assert!(a
            .allocate(ME, &req("system", (200 * MIB) as i64, "", 0))
            .is_ok());
    }

    #[test]
    fn the_memory_guard_keeps_a_margin_and_fails_closed() {
        // 8 GiB machine: the margin is 5% (409 MiB) rather than 64 MiB.
        let a = alloc_with(Config::parse("[heaps]\ndefault_max_size = \"4G\"").unwrap())
            .with_meminfo(meminfo(8 << 30, 1 << 30));
        let e = a
            .allocate(ME, &req("system", (700 * MIB) as i64, "", 0))
            .unwrap_err();
        assert_eq!(e.kind, Kind::NoMemory, "{e}");
        assert!(e.message.contains("margin"), "{e}");
        assert!(a
            .allocate(ME, &req("system", (600 * MIB) as i64, "", 0))
            .is_ok());
        // Unreadable or unparsable meminfo: refuse, saying why.
        let a = alloc_with(Config::default()).with_meminfo(Box::new(|| {
            Err(std::io::Error::from_raw_os_error(nix::libc::EACCES))
        }));
        let e = a.allocate(ME, &req("system", 4096, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::NoMemory, "{e}");
        assert!(e.message.contains("/proc/meminfo"), "{e}");
        assert_eq!(a.registry().usage_of(ME.uid), Usage::default());
        let a =
            alloc_with(Config::default()).with_meminfo(Box::new(|| Ok("MemTotal: 1 kB\n".into())));
        let e = a.allocate(ME, &req("system", 4096, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::NoMemory, "{e}");
        assert!(e.message.contains("MemAvailable"), "{e}");
    }

    #[test]
    fn more_than_memory_is_no_memory_before_the_kernel() {
        let a = alloc_with(Config::parse("[heaps]\ndefault_max_size = \"64T\"").unwrap());
        let e = a.allocate(ME, &req("system", 1 << 40, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::NoMemory);
        assert!(a.registry().is_empty());
        assert_eq!(
            a.registry().usage_of(ME.uid),
            Usage::default(),
            "reservation released"
        );
    }

    /// A memfd heap whose `fail_at`-th allocation (0-based, counted over
    /// its life) fails with EIO; it counts its calls and keeps the inodes
    /// it made.
    struct FailingHeap {
        inner: MemfdHeap,
        made: Arc<std::sync::Mutex<Vec<u64>>>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
        fail_at: usize,
    }

    impl Heap for FailingHeap {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn kind(&self) -> HeapKind {
            self.inner.kind()
        }
        fn allocate(&self, size: u64, name: &str) -> std::io::Result<OwnedFd> {
            let i = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if i == self.fail_at {
                return Err(std::io::Error::from_raw_os_error(nix::libc::EIO));
            }
            let fd = self.inner.allocate(size, name)?;
            let ino = nix::sys::stat::fstat(fd.as_fd())?.st_ino;
            self.made.lock().unwrap().push(ino);
            Ok(fd)
        }
    }

    type Made = Arc<std::sync::Mutex<Vec<u64>>>;
    type Calls = Arc<std::sync::atomic::AtomicUsize>;

    fn failing_allocator(config: Config, fail_at: usize) -> (Allocator, Made, Calls) {
        let made = Made::default();
        let calls = Calls::default();
        let heaps: Vec<Box<dyn Heap>> = vec![Box::new(FailingHeap {
            inner: MemfdHeap::new("system"),
            made: made.clone(),
            calls: calls.clone(),
            fail_at,
        })];
        (
            Allocator::new(heaps, config, Arc::new(Registry::new())),
            made,
            calls,
        )
    }

    /// Which of `inodes` this process still has an fd of.
    fn still_open(inodes: &[u64]) -> Vec<u64> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("/memfd:"))
                    .unwrap_or(false)
            })
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .filter(|i| inodes.contains(i))
            .collect()
    }

    #[test]
    fn a_batch_is_named_recorded_and_owned_like_single_allocations() {
        let a = alloc_with(Config::default());
        let v = a
            .allocate_batch(ME, &req("system", 5000, "burst", 0), 16)
            .unwrap();
        assert_eq!(v.len(), 16);
        let inodes: std::collections::BTreeSet<u64> = v.iter().map(|b| b.inode).collect();
        assert_eq!(inodes.len(), 16, "16 distinct buffers");
        for b in &v {
            assert_eq!((b.size, b.name.as_str()), (8192, "burst"));
            let rec = a
                .registry()
                .get(crate::scan::BufferKey::memfd(b.inode))
                .unwrap();
            assert_eq!(
                (rec.owner_uid, rec.owner_pid, rec.name.as_str()),
                (ME.uid, ME.pid, "burst")
            );
        }
        assert_eq!(
            a.registry().usage_of(ME.uid),
            Usage {
                bytes: 16 * 8192,
                count: 16
            }
        );
        // Unnamed: the heap's name, on every buffer.
        let v = a.allocate_batch(ME, &req("system", 1, "", 0), 2).unwrap();
        assert!(v.iter().all(|b| b.name == "system"));
    }

    #[test]
    fn batch_count_outside_1_to_64_is_refused_naming_the_range() {
        let a = alloc_with(Config::default());
        for n in [0, -1, 65, i32::MAX] {
            let e = a
                .allocate_batch(ME, &req("system", 4096, "", 0), n)
                .unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            assert!(e.message.contains("allowed 1 to 64"), "{e}");
        }
        assert!(a.registry().is_empty());
        assert_eq!(
            a.allocate_batch(ME, &req("system", 4096, "", 0), 64)
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn a_batch_crossing_the_quota_is_refused_whole_and_usage_is_unchanged() {
        let (a, _, calls) = failing_allocator(
            Config::parse("[quota]\ndefault_buffers = 10\ndefault_bytes = \"1M\"").unwrap(),
            usize::MAX,
        );
        let held = a.allocate(ME, &req("system", 4096, "", 0)).unwrap();
        let before = a.registry().usage_of(ME.uid);
        // 10 more would make 11 buffers.
        let e = a
            .allocate_batch(ME, &req("system", 4096, "b", 0), 10)
            .unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded, "{e}");
        assert!(
            e.message
                .contains("this batch needs 40960 more bytes in 10 buffers"),
            "{e}"
        );
        // Larger than the whole quota: refused without looking for freed
        // buffers (nothing freed could make it fit).
        let looks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let l = looks.clone();
        a.set_reclaim(Box::new(move || {
            l.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Reclaimed::default()
        }));
        let e = a
            .allocate_batch(ME, &req("system", 4096, "b", 0), 11)
            .unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded, "{e}");
        assert_eq!(looks.load(std::sync::atomic::Ordering::SeqCst), 0);
        // By bytes: 4 x 256 KiB over 1 MiB with the 4 KiB held.
        let e = a
            .allocate_batch(ME, &req("system", 256 << 10, "b", 0), 4)
            .unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded, "{e}");
        assert_eq!(a.registry().usage_of(ME.uid), before);
        assert_eq!(a.registry().len(), 1);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the heap was asked only for the first buffer"
        );
        // What fits still goes through.
        assert_eq!(
            a.allocate_batch(ME, &req("system", 4096, "b", 0), 9)
                .unwrap()
                .len(),
            9
        );
        drop(held);
    }

    #[test]
    fn a_batch_failing_at_one_buffer_releases_every_buffer_already_made() {
        let (a, made, _) = failing_allocator(Config::default(), 5);
        let e = a
            .allocate_batch(ME, &req("system", 4096, "b", 0), 8)
            .unwrap_err();
        assert_eq!(e.kind, Kind::Internal, "{e}");
        assert!(
            e.message.contains("buffer 5 of 8 failed") && e.message.contains("none of the batch"),
            "{e}"
        );
        assert!(e.message.contains("heap \"system\""), "{e}");
        assert!(a.registry().is_empty());
        assert_eq!(a.registry().usage_of(ME.uid), Usage::default());
        let made: Vec<u64> = made.lock().unwrap().clone();
        assert_eq!(made.len(), 5);
        assert_eq!(
            still_open(&made),
            Vec::<u64>::new(),
            "the 5 made were closed"
        );
        // The heap works again: the next batch is whole.
        assert_eq!(
            a.allocate_batch(ME, &req("system", 4096, "b", 0), 8)
                .unwrap()
                .len(),
            8
        );
    }

    fn pooled_allocator(pools: &str) -> (Arc<Allocator>, Arc<Pools>) {
        let a = Arc::new(alloc_with(Config::parse(pools).unwrap()));
        let p = a.plan_pools().unwrap().expect("pools configured");
        let make = a.pool_maker();
        while let pool::Next::Fill(_) = p.step(&make) {}
        (a, p)
    }

    #[test]
    fn a_request_of_a_class_size_takes_a_pooled_buffer_recorded_like_a_fresh_one() {
        let (a, p) = pooled_allocator(
            "[pools]\nrefill_delay_ms = 60000\nmin_available = 0\n\
             [pools.system]\nclasses = [{ size = \"64K\", count = 4 }]",
        );
        assert_eq!(p.held(), (4, 4 * 65536));
        let pooled: std::collections::BTreeSet<u64> = p.keys().iter().map(|k| k.inode).collect();
        assert!(a.registry().is_empty(), "pooled buffers are nobody's");
        assert_eq!(a.registry().usage_of(ME.uid), Usage::default());
        // 65000 bytes rounds up to the 64 KiB class.
        let b = a.allocate(ME, &req("system", 65000, "cam", 0)).unwrap();
        assert!(pooled.contains(&b.inode), "taken from the pool");
        assert_eq!((b.size, b.name.as_str()), (65536, "cam"));
        let rec = a
            .registry()
            .get(crate::scan::BufferKey::memfd(b.inode))
            .unwrap();
        assert_eq!((rec.owner_uid, rec.name.as_str()), (ME.uid, "cam"));
        assert_eq!(p.held(), (3, 3 * 65536));
        // Not a class size: fresh.
        let f = a.allocate(ME, &req("system", 4096, "x", 0)).unwrap();
        assert!(!pooled.contains(&f.inode));
        // A batch takes the rest of the pool and makes what it lacks.
        let v = a
            .allocate_batch(ME, &req("system", 65536, "burst", 0), 5)
            .unwrap();
        assert_eq!(v.iter().filter(|b| pooled.contains(&b.inode)).count(), 3);
        assert_eq!(p.held(), (0, 0));
        assert_eq!(a.registry().usage_of(ME.uid).count, 7);
    }

    #[test]
    fn a_pooled_buffer_is_not_taken_when_the_quota_refuses() {
        let (a, p) = pooled_allocator(
            "[quota]\ndefault_buffers = 1\n[pools]\nmin_available = 0\n\
             [pools.system]\nclasses = [{ size = \"4K\", count = 2 }]",
        );
        let _b = a.allocate(ME, &req("system", 4096, "", 0)).unwrap();
        assert_eq!(p.held().0, 1);
        let e = a.allocate(ME, &req("system", 4096, "", 0)).unwrap_err();
        assert_eq!(e.kind, Kind::QuotaExceeded);
        assert_eq!(p.held().0, 1, "the pool kept its buffer");
    }

    #[test]
    fn the_memory_guard_reuses_a_recent_read_but_rereads_before_refusing() {
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let avail = Arc::new(std::sync::atomic::AtomicU64::new(1 << 30));
        let (r, av) = (reads.clone(), avail.clone());
        let a = alloc_with(Config::parse("[heaps]\ndefault_max_size = \"1G\"").unwrap())
            .with_meminfo(Box::new(move || {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let kb = av.load(std::sync::atomic::Ordering::SeqCst) >> 10;
                Ok(format!(
                    "MemTotal: {} kB\nMemAvailable: {kb} kB\n",
                    1u64 << 20
                ))
            }));
        for _ in 0..10 {
            a.allocate(ME, &req("system", 4096, "", 0)).unwrap();
        }
        let n = reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n < 10, "{n} reads for 10 small allocations");
        // Memory went away since the read: a request that no longer fits
        // by the cached figure re-reads, and is refused on the fresh one.
        avail.store(100 << 20, std::sync::atomic::Ordering::SeqCst);
        let e = a
            .allocate(ME, &req("system", (900 * MIB) as i64, "", 0))
            .unwrap_err();
        assert_eq!(e.kind, Kind::NoMemory, "{e}");
        assert!(
            e.message.contains("104857600 bytes of memory available"),
            "{e}"
        );
    }
}
