//! Counters the service keeps for its Prometheus metrics (allocations and
//! refusals, scans), and the exposition built from them, the heaps and the
//! latest accounting (`dmabufctl metrics`, `dmabufd --metrics-textfile`).
//! Drawing the text is `report::prometheus`; this module only counts and
//! gathers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::accounting::Accounting;
use crate::allocator::Allocator;
use crate::error::Kind;
use crate::report::prometheus::{self, Inputs};

/// Every refusal code an allocation can get, in the order they are shown
/// (the AIDL `ErrorCode` names, then the exceptions). All are shown, zero
/// included, so a rate over any of them is defined from the start.
pub const REFUSAL_CODES: &[&str] = &[
    "UNKNOWN_HEAP",
    "INVALID_SIZE",
    "INVALID_NAME",
    "INVALID_FLAGS",
    "QUOTA_EXCEEDED",
    "NO_MEMORY",
    "NO_SUCH_PROCESS",
    "REPORT_TOO_LARGE",
    "STALE_SNAPSHOT",
    "EX_SECURITY",
    "EX_ILLEGAL_ARGUMENT",
    "EX_UNSUPPORTED_OPERATION",
    "EX_ILLEGAL_STATE",
];

/// The label a refusal of `kind` is counted under (one of [`REFUSAL_CODES`]).
pub fn refusal_code(kind: Kind) -> &'static str {
    match kind {
        Kind::UnknownHeap => "UNKNOWN_HEAP",
        Kind::InvalidSize => "INVALID_SIZE",
        Kind::InvalidName => "INVALID_NAME",
        Kind::InvalidFlags => "INVALID_FLAGS",
        Kind::QuotaExceeded => "QUOTA_EXCEEDED",
        Kind::NoMemory => "NO_MEMORY",
        Kind::NoSuchProcess => "NO_SUCH_PROCESS",
        Kind::ReportTooLarge => "REPORT_TOO_LARGE",
        Kind::StaleSnapshot => "STALE_SNAPSHOT",
        Kind::Permission => "EX_SECURITY",
        Kind::IllegalArgument => "EX_ILLEGAL_ARGUMENT",
        Kind::Unsupported => "EX_UNSUPPORTED_OPERATION",
        Kind::Internal => "EX_ILLEGAL_STATE",
    }
}

/// Allocations served from one heap since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapCounts {
    pub allocations: u64,
    pub bytes: u64,
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// By heap name (the heap that served, never the alias asked for).
    pub allocations: BTreeMap<String, HeapCounts>,
    /// By [`REFUSAL_CODES`] label.
    pub refusals: BTreeMap<&'static str, u64>,
    pub scans_ok: u64,
    pub scans_failed: u64,
    /// How long the latest successful scan took.
    pub last_scan: Option<Duration>,
    /// The scan source's name (`bpf`, `procfs`).
    pub scan_source: String,
}

/// The service's counters: cheap to update from any binder thread.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn new(scan_source: &str) -> Metrics {
        Metrics {
            counters: Mutex::new(Counters {
                scan_source: scan_source.to_string(),
                ..Counters::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A buffer of `bytes` was handed out from `heap`.
    pub fn allocated(&self, heap: &str, bytes: u64) {
        self.with(|c| {
            let h = c.allocations.entry(heap.to_string()).or_default();
            h.allocations += 1;
            h.bytes = h.bytes.saturating_add(bytes);
        })
    }

    /// An allocation was refused with `kind`.
    pub fn refused(&self, kind: Kind) {
        self.with(|c| *c.refusals.entry(refusal_code(kind)).or_default() += 1)
    }

    /// A scan finished (`took` is None for a failed one).
    pub fn scanned(&self, took: Option<Duration>) {
        self.with(|c| match took {
            Some(d) => {
                c.scans_ok += 1;
                c.last_scan = Some(d);
            }
            None => c.scans_failed += 1,
        })
    }

    pub fn counters(&self) -> Counters {
        self.with(|c| c.clone())
    }
}

/// The exposition from the allocator's heaps, the counters and the latest
/// accounting (None when the scan failed: the scan series are left out).
pub fn exposition(allocator: &Allocator, metrics: &Metrics, acc: Option<&Accounting>) -> String {
    let heaps = allocator.heaps();
    // The bytes each heap's reserve pool holds (allocated from the kernel,
    // handed to nobody); heaps without a pool are absent.
    let mut pool_bytes: BTreeMap<String, u64> = BTreeMap::new();
    for c in allocator.pools().map(|p| p.status()).unwrap_or_default() {
        *pool_bytes.entry(c.heap.clone()).or_default() += c.size * c.available as u64;
    }
    prometheus::render(&Inputs {
        heaps: &heaps,
        pool_bytes: &pool_bytes,
        counters: &metrics.counters(),
        accounting: acc,
        max_processes: allocator.config().service.metrics_max_processes,
    })
}

/// Writes `text` to `path` for node_exporter's textfile collector: a temp
/// file in the same directory (hidden, not `*.prom`, so the collector never
/// reads it half-written), then a rename over `path`. Writes from this
/// process take turns: the start-up write overlaps the after-scan hook
/// (which runs on whichever thread scanned), and two writers sharing the
/// temp name would rename it from under each other.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_refusals_and_scans() {
        let m = Metrics::new("procfs");
        m.allocated("system", 4096);
        m.allocated("system", 8192);
        m.allocated("udmabuf", 4096);
        m.refused(Kind::QuotaExceeded);
        m.refused(Kind::QuotaExceeded);
        m.refused(Kind::Permission);
        m.scanned(Some(Duration::from_millis(7)));
        m.scanned(None);
        let c = m.counters();
        assert_eq!(
            c.allocations["system"],
            HeapCounts {
                allocations: 2,
                bytes: 12288
            }
        );
        assert_eq!(c.allocations["udmabuf"].allocations, 1);
        assert_eq!(c.refusals["QUOTA_EXCEEDED"], 2);
        assert_eq!(c.refusals["EX_SECURITY"], 1);
        assert_eq!((c.scans_ok, c.scans_failed), (1, 1));
        assert_eq!(c.last_scan, Some(Duration::from_millis(7)));
        assert_eq!(c.scan_source, "procfs");
    }

    #[test]
    fn every_kind_has_a_listed_code() {
        for k in [
            Kind::UnknownHeap,
            Kind::InvalidSize,
            Kind::InvalidName,
            Kind::InvalidFlags,
            Kind::QuotaExceeded,
            Kind::NoMemory,
            Kind::NoSuchProcess,
            Kind::ReportTooLarge,
            Kind::StaleSnapshot,
            Kind::Permission,
            Kind::IllegalArgument,
            Kind::Unsupported,
            Kind::Internal,
        ] {
            assert!(REFUSAL_CODES.contains(&refusal_code(k)), "{k:?}");
        }
    }

    #[test]
    fn textfile_is_replaced_whole_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("dmabufd-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dmabufd.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dmabufd.prom")]);
        let e = write_textfile(&dir.join("missing/x.prom"), "c 3\n").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The start-up write and the after-scan hook (on whichever thread
    /// scanned) overlap. Each write must still land whole: none may fail
    /// because another renamed its temp file away (CI saw start-up die of
    /// that).
    #[test]
    fn concurrent_writers_of_one_textfile_all_succeed() {
        let dir = std::env::temp_dir().join(format!("dmabufd-textfile-mt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dmabufd.prom");
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let text = format!("w{t} {i}\n");
                        write_textfile(&path, &text)
                            .unwrap_or_else(|e| panic!("writer {t}, write {i}: {e}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.starts_with('w') && last.ends_with(" 99\n"), "{last:?}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dmabufd.prom")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
