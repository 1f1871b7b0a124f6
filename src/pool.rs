//! Reserve pools: fresh buffers the service allocates ahead of demand, per
//! heap and size class, so a request of a pooled size (a camera burst) is
//! answered without waiting for the kernel to allocate and zero pages.
//!
//! - Pooled buffers are fresh from the heap, never mapped by the service
//!   and never ones a client freed: a buffer leaves the pool only to be
//!   handed out, and handed-out buffers never come back.
//! - They are held by the service, so they are its memory: the reports show
//!   them on a line of their own as the service's pool (count and bytes per
//!   heap and class), never as an app's, never counted in any uid's quota.
//! - Filled in the background at start; a class that drops below its
//!   low-water mark is refilled to its target only once no buffer was taken
//!   for `refill_delay` (so refilling never competes with a burst).
//! - Memory pressure ([`crate::pressure`]) drains every class to zero; they
//!   refill only after pressure has been gone for `pressure_quiet`.
//!
//! This module knows nothing of binder: the allocator hands out what
//! [`Pools::take`] gives it, and [`Pools::run`] fills through a closure.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::parse_size;
use crate::scan::BufferKey;

/// The name a pooled buffer carries while the service holds it (renamed to
/// the request's name at hand-out, where the heap can rename).
pub const POOL_BUFFER_NAME: &str = "dmabufd-pool";
/// Default cap on the bytes of all classes together.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;
/// The most buffers one class may keep.
pub const MAX_CLASS_COUNT: u32 = 1024;
/// Default low-water mark, percent of a class's target.
pub const DEFAULT_LOW_WATER_PERCENT: u32 = 50;
/// Default idle time after the last hand-out before a refill starts.
pub const DEFAULT_REFILL_DELAY_MS: u64 = 200;
/// Default time pressure must have been gone before pools refill.
pub const DEFAULT_PRESSURE_QUIET_MS: u64 = 5000;
/// Default PSI trigger: 150 ms of "some" memory stall within 1 s.
pub const DEFAULT_PSI_TRIGGER: &str = "some 150000 1000000";
/// Default MemAvailable low watermark: below it the pools drain.
pub const DEFAULT_MIN_AVAILABLE: u64 = 128 << 20;

/// One size class as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    pub size: u64,
    pub count: u32,
}

/// `[pools]`: settings, and one sub-table per heap (or alias) with its
/// classes. See etc/dmabufd.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Heap or alias name as written -> classes.
    pub heaps: BTreeMap<String, Vec<ClassConfig>>,
    pub max_bytes: u64,
    pub low_water_percent: u32,
    pub refill_delay_ms: u64,
    pub pressure_quiet_ms: u64,
    /// Written to /proc/pressure/memory; empty turns the trigger off.
    pub psi_trigger: String,
    /// MemAvailable below this drains the pools (0: off).
    pub min_available: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            heaps: BTreeMap::new(),
            max_bytes: DEFAULT_MAX_BYTES,
            low_water_percent: DEFAULT_LOW_WATER_PERCENT,
            refill_delay_ms: DEFAULT_REFILL_DELAY_MS,
            pressure_quiet_ms: DEFAULT_PRESSURE_QUIET_MS,
            psi_trigger: DEFAULT_PSI_TRIGGER.to_string(),
            min_available: DEFAULT_MIN_AVAILABLE,
        }
    }
}

const SETTINGS: &[&str] = &[
    "max_bytes",
    "low_water_percent",
    "refill_delay_ms",
    "pressure_quiet_ms",
    "psi_trigger",
    "min_available",
];

impl PoolConfig {
    /// Parses the `[pools]` table. Heap names are checked later, against
    /// the heaps the machine has ([`plan`]).
    pub fn from_toml(v: &toml::Value) -> Result<PoolConfig, String> {
        let t = v
            .as_table()
            .ok_or("pools must be a table: [pools.<heap>] classes = [...]")?;
        let mut c = PoolConfig::default();
        for (k, v) in t {
            match k.as_str() {
                "max_bytes" => c.max_bytes = size_of(v, "pools.max_bytes")?,
                "min_available" => c.min_available = size_of(v, "pools.min_available")?,
                "low_water_percent" => {
                    c.low_water_percent = int_of(v, "pools.low_water_percent", 0..=100)? as u32
                }
                "refill_delay_ms" => {
                    c.refill_delay_ms = int_of(v, "pools.refill_delay_ms", 0..=3_600_000)?
                }
                "pressure_quiet_ms" => {
                    c.pressure_quiet_ms = int_of(v, "pools.pressure_quiet_ms", 0..=3_600_000)?
                }
                "psi_trigger" => {
                    c.psi_trigger = v
                        .as_str()
                        .ok_or("pools.psi_trigger must be a string such as \"some 150000 1000000\" (or \"\" for none)")?
                        .to_string();
                    check_psi_trigger(&c.psi_trigger)?;
                }
                heap => {
                    let Some(h) = v.as_table() else {
                        return Err(format!(
                            "pools.{heap}: expected a table [pools.{heap}] with classes = [...], \
                             or one of the settings {}",
                            SETTINGS.join(", ")
                        ));
                    };
                    c.heaps.insert(heap.to_string(), classes_of(heap, h)?);
                }
            }
        }
        Ok(c)
    }

    pub fn is_empty(&self) -> bool {
        self.heaps.values().all(Vec::is_empty)
    }
}

fn size_of(v: &toml::Value, what: &str) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => parse_size(s).ok_or_else(|| {
            format!("{what} = {s:?}: expected bytes or a number with a K, M or G suffix")
        }),
        other => Err(format!(
            "{what} = {other}: expected bytes or a number with a K, M or G suffix"
        )),
    }
}

fn int_of(
    v: &toml::Value,
    what: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .filter(|i| range.contains(i))
        .ok_or_else(|| {
            format!(
                "{what} = {v}: expected a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

fn classes_of(heap: &str, t: &toml::value::Table) -> Result<Vec<ClassConfig>, String> {
    if let Some(k) = t.keys().find(|k| k.as_str() != "classes") {
        return Err(format!(
            "pools.{heap}.{k}: unknown key; a heap's pool has only classes = [{{ size = \"64K\", count = 32 }}, ...]"
        ));
    }
    let list = t.get("classes").and_then(|c| c.as_array()).ok_or_else(|| {
        format!("pools.{heap}: expected classes = [{{ size = \"64K\", count = 32 }}, ...]")
    })?;
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let what = format!("pools.{heap}.classes[{i}]");
        let c = c
            .as_table()
            .ok_or_else(|| format!("{what}: expected {{ size = \"64K\", count = 32 }}"))?;
        if let Some(k) = c.keys().find(|k| !matches!(k.as_str(), "size" | "count")) {
            return Err(format!("{what}.{k}: unknown key; allowed: size, count"));
        }
        let size = size_of(
            c.get("size")
                .ok_or_else(|| format!("{what}: size is missing"))?,
            &format!("{what}.size"),
        )?;
        let count = int_of(
            c.get("count")
                .ok_or_else(|| format!("{what}: count is missing"))?,
            &format!("{what}.count"),
            1..=u64::from(MAX_CLASS_COUNT),
        )? as u32;
        out.push(ClassConfig { size, count });
    }
    Ok(out)
}

/// A PSI trigger line: "some|full <stall us> <window us>", window 500 ms to
/// 10 s and stall within it (the kernel's rules).
fn check_psi_trigger(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Ok(());
    }
    let bad = || {
        format!(
            "pools.psi_trigger = {t:?}: expected \"some|full <stall us> <window us>\" with a \
             window of 500000 to 10000000 us and a stall below it (or \"\" for none)"
        )
    };
    let f: Vec<&str> = t.split_whitespace().collect();
    let [kind, stall, window] = f.as_slice() else {
        return Err(bad());
    };
    let (Ok(stall), Ok(window)) = (stall.parse::<u64>(), window.parse::<u64>()) else {
        return Err(bad());
    };
    if !matches!(*kind, "some" | "full")
        || !(500_000..=10_000_000).contains(&window)
        || stall == 0
        || stall > window
    {
        return Err(bad());
    }
    Ok(())
}

/// One class resolved against the machine's heaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassPlan {
    /// The heap that serves it (aliases resolved).
    pub heap: String,
    /// Page-rounded.
    pub size: u64,
    pub target: usize,
}

/// What [`plan`] needs to know of a heap.
pub struct HeapLimit<'a> {
    pub name: &'a str,
    pub max_size: u64,
}

/// Resolves the configured classes against the heaps the machine has
/// (`resolve` maps a heap or alias name to the heap's name). Every error is
/// a start-up message naming the key and what is allowed.
pub fn plan(
    config: &PoolConfig,
    heaps: &[HeapLimit<'_>],
    resolve: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ClassPlan>, String> {
    let names = || heaps.iter().map(|h| h.name).collect::<Vec<_>>().join(", ");
    let mut out: Vec<ClassPlan> = Vec::new();
    let mut total: u64 = 0;
    for (written, classes) in &config.heaps {
        let heap = resolve(written).ok_or_else(|| {
            format!(
                "pools.{written}: no heap or alias named {written:?} on this machine; heaps: {}",
                names()
            )
        })?;
        let max = heaps
            .iter()
            .find(|h| h.name == heap)
            .map(|h| h.max_size)
            .unwrap_or(0);
        for (i, c) in classes.iter().enumerate() {
            let what = format!("pools.{written}.classes[{i}]");
            if c.size == 0 || c.size > max {
                return Err(format!(
                    "{what}.size = {}: allowed 1 to {max} bytes (heap {heap:?}'s maximum \
                     allocation size)",
                    c.size
                ));
            }
            let size = crate::heap::page_align(c.size)
                .ok_or_else(|| format!("{what}.size = {}: too large", c.size))?;
            if out.iter().any(|p| p.heap == heap && p.size == size) {
                return Err(format!(
                    "{what}: a second class of {size} bytes on heap {heap:?}; one class per \
                     page-rounded size and heap"
                ));
            }
            total = total.saturating_add(size.saturating_mul(u64::from(c.count)));
            out.push(ClassPlan {
                heap: heap.clone(),
                size,
                target: c.count as usize,
            });
        }
    }
    if total > config.max_bytes {
        return Err(format!(
            "pools: the classes hold {total} bytes in all, more than pools.max_bytes ({} bytes); \
             lower counts or sizes, or raise pools.max_bytes",
            config.max_bytes
        ));
    }
    Ok(out)
}

/// A buffer the pool holds.
#[derive(Debug)]
pub struct Pooled {
    pub fd: OwnedFd,
    pub key: BufferKey,
}

/// One class as reported (getHeaps, the dump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStatus {
    pub heap: String,
    pub size: u64,
    pub target: usize,
    pub available: usize,
}

struct Class {
    plan: ClassPlan,
    ready: Vec<Pooled>,
    /// Filling towards the target (set below the low-water mark, at start
    /// and after a drain; cleared at the target).
    refilling: bool,
}

struct State {
    classes: Vec<Class>,
    last_take: Option<Instant>,
    /// The last time pressure was seen (None: never).
    last_pressure: Option<Instant>,
    /// Pressure seen and the pools not yet refilling again.
    pressured: bool,
    stop: bool,
}

/// What the filler does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Make one buffer for this class.
    Fill(usize),
    /// Nothing to do for this long (or until woken).
    Wait(Duration),
    Stop,
}

/// Makes one fresh buffer for the pool: (heap, size) -> buffer.
pub type Maker = Box<dyn Fn(&str, u64) -> crate::error::Result<Pooled> + Send + Sync>;

/// The pools of every heap.
pub struct Pools {
    state: Mutex<State>,
    wake: Condvar,
    low_water_percent: u32,
    refill_delay: Duration,
    pressure_quiet: Duration,
}

/// How long the filler sleeps when nothing is due (a take that starts a
/// refill, or pressure, wakes it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(1);

impl Pools {
    pub fn new(plans: Vec<ClassPlan>, config: &PoolConfig) -> Pools {
        Pools {
            state: Mutex::new(State {
                classes: plans
                    .into_iter()
                    .map(|plan| Class {
                        plan,
                        ready: Vec::new(),
                        refilling: true,
                    })
                    .collect(),
                last_take: None,
                last_pressure: None,
                pressured: false,
                stop: false,
            }),
            wake: Condvar::new(),
            low_water_percent: config.low_water_percent,
            refill_delay: Duration::from_millis(config.refill_delay_ms),
            pressure_quiet: Duration::from_millis(config.pressure_quiet_ms),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().classes.is_empty()
    }

    /// Whether `heap` has a class of `size` (page-rounded) bytes.
    pub fn has_class(&self, heap: &str, size: u64) -> bool {
        self.lock()
            .classes
            .iter()
            .any(|c| c.plan.heap == heap && c.plan.size == size)
    }

    /// A pooled buffer of exactly `size` bytes from `heap`, if one is ready.
    pub fn take(&self, heap: &str, size: u64) -> Option<Pooled> {
        self.take_at(heap, size, Instant::now())
    }

    fn take_at(&self, heap: &str, size: u64, now: Instant) -> Option<Pooled> {
        let mut s = self.lock();
        let low = self.low_water_percent;
        let class = s
            .classes
            .iter_mut()
            .find(|c| c.plan.heap == heap && c.plan.size == size)?;
        let taken = class.ready.pop()?;
        let starts_refill =
            !class.refilling && class.ready.len() * 100 < class.plan.target * low as usize;
        if starts_refill {
            class.refilling = true;
        }
        s.last_take = Some(now);
        drop(s);
        // Only a class that starts refilling needs the filler now. A filler
        // already waiting out the refill delay re-reads `last_take` when its
        // wait ends, so the takes of a burst wake no thread.
        if starts_refill {
            self.wake.notify_all();
        }
        Some(taken)
    }

    /// Every class with its target and what is ready now.
    pub fn status(&self) -> Vec<ClassStatus> {
        self.lock()
            .classes
            .iter()
            .map(|c| ClassStatus {
                heap: c.plan.heap.clone(),
                size: c.plan.size,
                target: c.plan.target,
                available: c.ready.len(),
            })
            .collect()
    }

    /// Buffers and bytes held now.
    pub fn held(&self) -> (usize, u64) {
        self.lock().classes.iter().fold((0, 0), |(n, b), c| {
            (n + c.ready.len(), b + c.plan.size * c.ready.len() as u64)
        })
    }

    /// The identities of the buffers held now (the service's own fds that
    /// are the pool, not replies in flight).
    pub fn keys(&self) -> BTreeSet<BufferKey> {
        self.lock()
            .classes
            .iter()
            .flat_map(|c| c.ready.iter().map(|p| p.key))
            .collect()
    }

    /// Memory pressure: closes every pooled buffer now and holds refills
    /// until pressure has been gone for `pressure_quiet`. Returns the
    /// buffers and bytes given back.
    pub fn drain(&self, why: &str) -> (usize, u64) {
        self.drain_at(why, Instant::now())
    }

    fn drain_at(&self, why: &str, now: Instant) -> (usize, u64) {
        let mut s = self.lock();
        s.last_pressure = Some(now);
        let first = !s.pressured;
        s.pressured = true;
        let mut dropped = Vec::new();
        let mut bytes = 0;
        for c in &mut s.classes {
            bytes += c.plan.size * c.ready.len() as u64;
            dropped.append(&mut c.ready);
            c.refilling = true;
        }
        drop(s);
        let n = dropped.len();
        // Closing the fds frees the memory (nobody else holds them).
        drop(dropped);
        if n > 0 || first {
            log::warn!(
                "memory pressure ({why}): pools drained, {n} buffers / {bytes} bytes given back; \
                 refilling {} ms after pressure ends",
                self.pressure_quiet.as_millis()
            );
        }
        self.wake.notify_all();
        (n, bytes)
    }

    /// Stops [`run`](Self::run).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    /// What to do at `now`: fill a class that is refilling, unless a take
    /// was too recent or pressure was seen too recently.
    pub fn next(&self, now: Instant) -> Next {
        let mut s = self.lock();
        self.next_locked(&mut s, now)
    }

    fn next_locked(&self, s: &mut State, now: Instant) -> Next {
        if s.stop {
            return Next::Stop;
        }
        if let Some(t) = s.last_pressure {
            let since = now.saturating_duration_since(t);
            if since < self.pressure_quiet {
                return Next::Wait(self.pressure_quiet - since);
            }
        }
        let Some(i) = s
            .classes
            .iter()
            .position(|c| c.refilling && c.ready.len() < c.plan.target)
        else {
            for c in &mut s.classes {
                c.refilling = false;
            }
            return Next::Wait(IDLE_WAIT);
        };
        if let Some(t) = s.last_take {
            let since = now.saturating_duration_since(t);
            if since < self.refill_delay {
                return Next::Wait(self.refill_delay - since);
            }
        }
        if s.pressured {
            s.pressured = false;
            log::info!(
                "memory pressure gone for {} ms: pools refilling",
                self.pressure_quiet.as_millis()
            );
        }
        Next::Fill(i)
    }

    /// Adds a buffer made for class `i`, unless pressure arrived or the
    /// class filled meanwhile (then it is closed).
    fn put(&self, i: usize, p: Pooled, made_at: Instant) {
        let mut s = self.lock();
        let fresh = s.last_pressure.is_none_or(|t| t < made_at);
        if let Some(c) = s.classes.get_mut(i) {
            if fresh && c.ready.len() < c.plan.target {
                c.ready.push(p);
                if c.ready.len() == c.plan.target {
                    c.refilling = false;
                }
            }
        }
    }

    /// Makes one buffer for what [`next`](Self::next) said, if anything;
    /// returns what it did (tests and [`run`](Self::run)).
    pub fn step(&self, make: &Maker) -> Next {
        let now = Instant::now();
        let next = self.next(now);
        if let Next::Fill(i) = next {
            let (heap, size) = {
                let s = self.lock();
                let c = &s.classes[i].plan;
                (c.heap.clone(), c.size)
            };
            match make(&heap, size) {
                Ok(p) => self.put(i, p, now),
                Err(e) => {
                    // Most likely memory: wait as after pressure.
                    log::warn!("pool {heap} {size} bytes: cannot refill: {e}");
                    self.lock().last_pressure = Some(Instant::now());
                }
            }
        }
        next
    }

    /// The filler: fills and refills until [`stop`](Self::stop). Run on a
    /// thread of its own, off every binder thread.
    pub fn run(&self, make: Maker) {
        let mut filled_since_idle = 0usize;
        let mut fill_started = None;
        loop {
            match self.step(&make) {
                Next::Stop => return,
                Next::Fill(_) => {
                    filled_since_idle += 1;
                    fill_started.get_or_insert_with(Instant::now);
                }
                Next::Wait(d) => {
                    if let Some(t) = fill_started.take() {
                        let (n, bytes) = self.held();
                        log::info!(
                            "pools filled: {filled_since_idle} buffers made in {} ms; holding {n} \
                             buffers / {bytes} bytes",
                            t.elapsed().as_millis()
                        );
                        filled_since_idle = 0;
                    }
                    let s = self.lock();
                    let _ = self.wake.wait_timeout(s, d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::memfd::MemfdHeap;
    use crate::heap::Heap;
    use std::os::fd::AsFd;

    fn config(text: &str) -> Result<PoolConfig, String> {
        let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        PoolConfig::from_toml(v.get("pools").expect("[pools]"))
    }

    const HEAPS: &[HeapLimit<'static>] = &[
        HeapLimit {
            name: "system",
            max_size: 256 << 20,
        },
        HeapLimit {
            name: "udmabuf",
            max_size: 64 << 20,
        },
    ];

    fn resolve(n: &str) -> Option<String> {
        match n {
            "system" | "udmabuf" => Some(n.to_string()),
            "camera" => Some("system".into()),
            _ => None,
        }
    }

    fn memfd_maker() -> Maker {
        let heap = MemfdHeap::new("system");
        Box::new(move |_h, size| {
            let fd = heap.allocate(size, POOL_BUFFER_NAME).unwrap();
            let ino = nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino;
            Ok(Pooled {
                fd,
                key: BufferKey::memfd(ino),
            })
        })
    }

    fn pools(text: &str) -> Pools {
        let c = config(text).unwrap();
        Pools::new(plan(&c, HEAPS, resolve).unwrap(), &c)
    }

    fn fill(p: &Pools, make: &Maker) -> usize {
        let mut n = 0;
        while let Next::Fill(_) = p.step(make) {
            n += 1;
        }
        n
    }

    #[test]
    fn classes_parse_and_resolve_through_aliases() {
        let c = config(
            "[pools]\nrefill_delay_ms = 50\n[pools.camera]\nclasses = [{ size = \"12M\", count = 8 }]\n\
             [pools.system]\nclasses = [{ size = 65536, count = 32 }, { size = \"5000\", count = 2 }]",
        )
        .unwrap();
        assert_eq!(c.refill_delay_ms, 50);
        let p = plan(&c, HEAPS, resolve).unwrap();
        assert_eq!(
            p,
            vec![
                ClassPlan {
                    heap: "system".into(),
                    size: 12 << 20,
                    target: 8
                },
                ClassPlan {
                    heap: "system".into(),
                    size: 64 << 10,
                    target: 32
                },
                ClassPlan {
                    heap: "system".into(),
                    size: 8192,
                    target: 2
                },
            ]
        );
        assert!(PoolConfig::default().is_empty());
    }

    #[test]
    fn bad_config_is_a_clear_start_up_error() {
        let err = |text: &str| match config(text) {
            Err(e) => e,
            Ok(c) => plan(&c, HEAPS, resolve).unwrap_err(),
        };
        let e = err("[pools.gpu]\nclasses = [{ size = \"1M\", count = 1 }]");
        assert!(
            e.contains("pools.gpu") && e.contains("heaps: system, udmabuf"),
            "{e}"
        );
        let e = err("[pools.system]\nclasses = [{ size = 0, count = 1 }]");
        assert!(
            e.contains("pools.system.classes[0].size = 0") && e.contains("allowed 1 to"),
            "{e}"
        );
        let e = err("[pools.udmabuf]\nclasses = [{ size = \"128M\", count = 1 }]");
        assert!(e.contains("allowed 1 to 67108864"), "{e}");
        let e = err("[pools.system]\nclasses = [{ size = \"1M\", count = 0 }]");
        assert!(e.contains("count = 0") && e.contains("1 to 1024"), "{e}");
        let e = err("[pools]\nmax_bytes = \"64M\"\n[pools.system]\nclasses = [{ size = \"12M\", count = 8 }]");
        assert!(
            e.contains("100663296 bytes") && e.contains("pools.max_bytes"),
            "{e}"
        );
        let e = err(
            "[pools.system]\nclasses = [{ size = \"4K\", count = 1 }, { size = 4000, count = 1 }]",
        );
        assert!(
            e.contains("classes[1]") && e.contains("second class"),
            "{e}"
        );
        let e = err("[pools]\nrefil_delay_ms = 5");
        assert!(
            e.contains("pools.refil_delay_ms") && e.contains("refill_delay_ms"),
            "{e}"
        );
        let e = err("[pools.system]\nclasses = [{ size = \"1M\", cont = 1 }]");
        assert!(
            e.contains("cont") && e.contains("allowed: size, count"),
            "{e}"
        );
        let e = err("[pools]\npsi_trigger = \"some 1 100\"");
        assert!(e.contains("window"), "{e}");
        assert!(config("[pools]\npsi_trigger = \"\"").is_ok());
    }

    #[test]
    fn fills_to_target_at_start_and_takes_exact_page_rounded_sizes() {
        let p = pools("[pools]\nrefill_delay_ms = 0\n[pools.system]\nclasses = [{ size = \"64K\", count = 4 }]");
        let make = memfd_maker();
        assert_eq!(fill(&p, &make), 4);
        assert_eq!(p.held(), (4, 4 * 65536));
        assert!(p.take("system", 65536 + 4096).is_none());
        assert!(p.take("udmabuf", 65536).is_none());
        let b = p.take("system", 65536).unwrap();
        let st = nix::sys::stat::fstat(b.fd.as_fd()).unwrap();
        assert_eq!((st.st_size, st.st_ino), (65536, b.key.inode));
        assert!(
            !p.keys().contains(&b.key),
            "handed out, no longer the pool's"
        );
        assert_eq!(p.status()[0].available, 3);
    }

    #[test]
    fn refills_only_below_low_water_and_only_after_the_idle_delay() {
        let p = pools(
            "[pools]\nrefill_delay_ms = 60000\nlow_water_percent = 50\n\
             [pools.system]\nclasses = [{ size = \"4K\", count = 4 }]",
        );
        let make = memfd_maker();
        assert_eq!(fill(&p, &make), 4, "the start fill does not wait");
        let t0 = Instant::now();
        p.take_at("system", 4096, t0).unwrap();
        // 3 of 4: above the 50% mark, nothing to do.
        assert_eq!(p.next(t0 + Duration::from_secs(120)), Next::Wait(IDLE_WAIT));
        p.take_at("system", 4096, t0).unwrap();
        p.take_at("system", 4096, t0).unwrap();
        // 1 of 4: below the mark, but a take was just now.
        assert!(
            matches!(p.next(t0 + Duration::from_secs(1)), Next::Wait(d) if d >= Duration::from_secs(58))
        );
        assert_eq!(p.next(t0 + Duration::from_secs(61)), Next::Fill(0));
    }

    /// The take that puts a class below its mark wakes a filler sleeping
    /// its idle wait; the takes after it wake nobody (the filler re-reads
    /// the last take when its refill-delay wait ends).
    #[test]
    fn a_take_that_starts_a_refill_wakes_the_idle_filler() {
        let p = std::sync::Arc::new(pools(
            "[pools]\nrefill_delay_ms = 50\nlow_water_percent = 100\n\
             [pools.system]\nclasses = [{ size = \"4K\", count = 2 }]",
        ));
        let filler = {
            let p = p.clone();
            std::thread::spawn(move || p.run(memfd_maker()))
        };
        let full = |p: &Pools| p.held().0 == 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !full(&p) {
            assert!(Instant::now() < deadline, "the start fill never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Now in its idle wait (IDLE_WAIT, 1 s) with nothing refilling.
        std::thread::sleep(Duration::from_millis(100));
        let taken = Instant::now();
        p.take("system", 4096).unwrap();
        while !full(&p) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = taken.elapsed();
        p.stop();
        filler.join().unwrap();
        // Unwoken, the filler would look again only when its 1 s wait ends.
        assert!(
            after >= Duration::from_millis(50) && after < Duration::from_millis(600),
            "refilled {after:?} after the take (refill delay 50 ms, idle wait {IDLE_WAIT:?})"
        );
    }

    #[test]
    fn pressure_drains_to_zero_and_refill_waits_until_it_has_been_gone_a_while() {
        let p = pools(
            "[pools]\nrefill_delay_ms = 0\npressure_quiet_ms = 5000\n\
             [pools.system]\nclasses = [{ size = \"4K\", count = 3 }]",
        );
        let make = memfd_maker();
        fill(&p, &make);
        let t0 = Instant::now();
        assert_eq!(p.drain_at("test", t0), (3, 3 * 4096));
        assert_eq!(p.held(), (0, 0));
        assert!(p.take("system", 4096).is_none());
        assert_eq!(
            p.next(t0 + Duration::from_secs(4)),
            Next::Wait(Duration::from_secs(1))
        );
        // Pressure again at 4 s: the quiet period starts over.
        p.drain_at("test", t0 + Duration::from_secs(4));
        assert!(matches!(p.next(t0 + Duration::from_secs(6)), Next::Wait(_)));
        assert_eq!(p.next(t0 + Duration::from_secs(9)), Next::Fill(0));
        // A buffer made before pressure arrived is not kept.
        let made = Instant::now();
        let b = make("system", 4096).unwrap();
        p.drain("test");
        p.put(0, b, made);
        assert_eq!(p.held(), (0, 0));
    }
}
