//! Pieces of the load harness shared by the host load and chaos tests
//! (`tests/load.rs`, `tests/chaos.rs`) and the VM suite's load case
//! (`tests/vts/cases/load.rs`, which includes this file by path): the mixed
//! request sizes, the allocate/free cycles a load app runs, a chaos app, latency
//! percentiles and the service footprint samples judged flat from the
//! second quarter of a run to its end.
#![allow(dead_code)]

/// Buffers an app holds at most; the oldest is freed for a new one.
pub const HOLD: usize = 4;
/// The largest request.
pub const MAX_SIZE: u64 = 1 << 20;

/// A request size from one random word: mostly powers of two from 4 KiB to
/// 1 MiB, one in four an odd size up to 1 MiB (page-rounded by the service).
pub fn mixed_size(r: u64) -> u64 {
    if r % 4 == 0 {
        1 + (r >> 8) % MAX_SIZE
    } else {
        4096 << ((r >> 8) % 9)
    }
}

/// What one app's allocate/free cycles came to ([`run_cycles`]).
#[derive(Debug, Default)]
pub struct Cycles {
    pub ok: u64,
    pub failed: u64,
    /// How many of the failures were QUOTA_EXCEEDED.
    pub quota: u64,
    /// The first failure, on one line.
    pub first: String,
    /// Allocation latencies (µs) of the calls that succeeded.
    pub latencies: Vec<u32>,
}

impl Cycles {
    /// `ok failed quota first-error`, the line an app prints.
    pub fn summary(&self) -> String {
        format!("{} {} {} {}", self.ok, self.failed, self.quota, self.first)
    }
}

/// `cycles` allocate/free cycles of [`mixed_size`] requests (one random
/// word from `next` each) named `load-<cycle>`, holding at most [`HOLD`]
/// buffers (the oldest freed for a new one) and touching each through a
/// mapping, as an app would. A failed allocation is counted; a failed
/// touch is an error.
pub fn run_cycles(
    alloc: &dmabufd::client::Allocator,
    cycles: u64,
    mut next: impl FnMut() -> u64,
) -> Result<Cycles, String> {
    use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
    let mut held = std::collections::VecDeque::new();
    let mut r = Cycles {
        latencies: Vec::with_capacity(cycles as usize),
        ..Cycles::default()
    };
    for c in 0..cycles {
        if held.len() == HOLD {
            held.pop_front();
        }
        let size = mixed_size(next());
        let t = std::time::Instant::now();
        let got = alloc.allocate("system", size, &format!("load-{c}"));
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match got {
            Ok(mut b) => {
                r.ok += 1;
                r.latencies.push(us);
                let mut m = b
                    .map(dmabufd::sys::SyncDirection::Write)
                    .map_err(|e| e.to_string())?;
                m.write_at(0, &[1]).map_err(|e| e.to_string())?;
                drop(m);
                held.push_back(b);
            }
            Err(e) => {
                r.failed += 1;
                if e.error_code() == Some(ErrorCode::QUOTA_EXCEEDED) {
                    r.quota += 1;
                }
                if r.first.is_empty() {
                    r.first = format!("cycle {c}, {size} bytes: {e}").replace('\n', " ");
                }
            }
        }
    }
    Ok(r)
}

/// Whether `e` is the connection failing (the service died or restarted),
/// not the service refusing the call.
pub fn is_transport(e: &dmabufd::client::Error) -> bool {
    e.exception() != rsbinder::ExceptionCode::ServiceSpecific
}

/// `text` into `path` through a temporary file and a rename, so a reader
/// never sees half of it.
fn write_whole(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A chaos app: allocates a 64 KiB "anchor" it holds throughout, then
/// churns [`mixed_size`] requests (one random word from `next` each; at
/// most [`HOLD`] more held), touching each buffer, and writes its
/// allocation count to `dir/app<index>.progress` after each. After a lost
/// allocation (`ServiceRestarted`: the client library reconnected by
/// itself) it retries; when the library gives up it takes a new connection
/// from `reconnect`. Once `dir/hold` exists it writes the inodes it holds
/// (anchor first) to `dir/app<index>.held`, waits for `dir/release` and
/// frees them. Returns `allocations refusals interruptions first-refusal`.
pub fn run_chaos_app(
    mut alloc: dmabufd::client::Allocator,
    dir: &std::path::Path,
    index: &str,
    mut next: impl FnMut() -> u64,
    mut reconnect: impl FnMut() -> Result<dmabufd::client::Allocator, String>,
) -> Result<String, String> {
    let progress = dir.join(format!("app{index}.progress"));
    let (mut ok, mut refused, mut interrupted, mut first) = (0u64, 0u64, 0u64, String::new());
    let mut anchor = None;
    let mut held = std::collections::VecDeque::new();
    while !dir.join("hold").exists() {
        let (size, name) = if anchor.is_none() {
            (64 << 10, "anchor".to_string())
        } else {
            (mixed_size(next()), format!("chaos-{ok}"))
        };
        match alloc.allocate("system", size, &name) {
            Ok(mut b) => {
                ok += 1;
                let mut m = b
                    .map(dmabufd::sys::SyncDirection::Write)
                    .map_err(|e| e.to_string())?;
                m.write_at(0, &[1]).map_err(|e| e.to_string())?;
                drop(m);
                if anchor.is_none() {
                    anchor = Some(b);
                } else {
                    if held.len() == HOLD {
                        held.pop_front();
                    }
                    held.push_back(b);
                }
                write_whole(&progress, &ok.to_string())?;
            }
            Err(e) if e.kind() == dmabufd::client::ErrorKind::ServiceRestarted => {
                interrupted += 1;
            }
            Err(e) if is_transport(&e) => {
                interrupted += 1;
                alloc = reconnect().map_err(|e| format!("the service never came back: {e}"))?;
            }
            Err(e) => {
                refused += 1;
                if first.is_empty() {
                    first = format!("{size} bytes: {e}").replace('\n', " ");
                }
            }
        }
    }
    let inodes: Vec<String> = anchor
        .iter()
        .chain(held.iter())
        .map(|b| b.inode().to_string())
        .collect();
    write_whole(&dir.join(format!("app{index}.held")), &inodes.join(" "))?;
    while !dir.join("release").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop((anchor, held));
    Ok(format!("{ok} {refused} {interrupted} {first}"))
}

/// The `p` quantile (0..=1) of sorted latencies; 0 for none.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latencies (µs) as an app writes them: u32 little-endian each.
pub fn encode_latencies(lat: &[u32]) -> Vec<u8> {
    lat.iter().flat_map(|l| l.to_le_bytes()).collect()
}

/// The latencies of every file in `paths`, sorted.
pub fn read_latencies(paths: &[std::path::PathBuf]) -> Vec<u32> {
    let mut v: Vec<u32> = paths
        .iter()
        .flat_map(|p| {
            std::fs::read(p)
                .unwrap_or_default()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Open fds of `pid`, leaving out buffers in flight (memfd or dma-buf) and
/// the procfs files its scanner holds for a moment.
pub fn fds_without_buffers(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| {
                            let l = l.to_string_lossy();
                            !l.starts_with("/proc/")
                                && !l.starts_with("/memfd:")
                                && !l.contains("dmabuf")
                        })
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// VmRSS of `pid` in bytes (0 when unreadable).
pub fn vm_rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// One look at the service during a run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: f64,
    pub fds: usize,
    pub rss: u64,
}

impl Sample {
    pub fn take(pid: i32, start: std::time::Instant) -> Sample {
        Sample {
            at: start.elapsed().as_secs_f64(),
            fds: fds_without_buffers(pid),
            rss: vm_rss(pid),
        }
    }
}

/// The footprint of a run from its second quarter to its end: the peak of
/// the second quarter against the peak of the rest. Peaks, not the first
/// sample of the quarter: the service's RSS moves by megabytes with every
/// report it renders, so one sample may land in a trough and a flat run
/// would look like growth. A leak still shows: the later peak outgrows the
/// earlier one.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// The first sample of the second quarter.
    pub q2: Sample,
    /// The highest fd count and VmRSS in the second quarter.
    pub q2_fds: usize,
    pub q2_rss: u64,
    /// The highest fd count and VmRSS after the second quarter.
    pub max_fds: usize,
    pub max_rss: u64,
}

impl Footprint {
    /// `samples` of a run that lasted `total` seconds (at least one sample).
    pub fn from_second_quarter(samples: &[Sample], total: f64) -> Footprint {
        let q2 = samples
            .iter()
            .find(|s| s.at >= total / 4.0)
            .or(samples.last())
            .copied()
            .expect("no footprint sample");
        let peak = |from: f64, to: f64| {
            samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .fold((0, 0), |(f, r), s| (f.max(s.fds), r.max(s.rss)))
        };
        let (q2_fds, q2_rss) = peak(q2.at, total / 2.0);
        let (q2_fds, q2_rss) = (q2_fds.max(q2.fds), q2_rss.max(q2.rss));
        let (max_fds, max_rss) = peak(total / 2.0, f64::INFINITY);
        Footprint {
            q2,
            q2_fds,
            q2_rss,
            max_fds,
            max_rss,
        }
    }

    /// Err naming what rose when, after the second quarter, the fd count
    /// peaked more than `fd_slack` or VmRSS more than `rss_slack` bytes
    /// above their second-quarter peaks.
    pub fn check(&self, fd_slack: usize, rss_slack: u64) -> Result<(), String> {
        if self.max_fds > self.q2_fds + fd_slack {
            return Err(format!(
                "service fds rose from a peak of {} in the second quarter to {} after it \
                 (allowed +{fd_slack})",
                self.q2_fds, self.max_fds
            ));
        }
        if self.max_rss > self.q2_rss + rss_slack {
            return Err(format!(
                "service VmRSS rose from a peak of {} KiB in the second quarter to {} KiB after it \
                 (allowed +{} KiB)",
                self.q2_rss / 1024,
                self.max_rss / 1024,
                rss_slack / 1024
            ));
        }
        Ok(())
    }
}
