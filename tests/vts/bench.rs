//! `vts --bench` (tests/vm/run.sh --bench): allocation latency of the direct
//! DMA_HEAP_IOCTL_ALLOC + DMA_BUF_SET_NAME_B path a libdmabufheap user
//! takes, against the same allocation through dmabufd over kernel binder and
//! over RPC binder, plus allocations per second with 8 concurrent apps.
//! Then the pools and batches: the same sizes from a dmabufd whose pool
//! has a class of each size (RPC binder), 16 x 4 KiB in one allocateBatch
//! against 16 direct ioctls + names, a camera burst of 30 x 12 MiB direct
//! against a pool of 30, and the pool's refill time while idle.
//! Under TCG only ratios taken within one run mean anything.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use dmabufd::client::Allocator;

use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::support::{KIB, MIB};

/// Where /init starts the second, RPC-only dmabufd for the benchmark.
const RPC_SOCKET: &str = "/run/dmabufd-bench/rpc.sock";
const SIZES: [(u64, &str, usize); 3] = [
    (4 * KIB, "4 KiB", 400),
    (MIB, "1 MiB", 200),
    (32 * MIB, "32 MiB", 40),
];
const APPS: usize = 8;
const ALLOCS_PER_APP: usize = 250;

pub fn roles() -> Vec<(&'static str, app::Role)> {
    let mut r: Vec<(&'static str, app::Role)> = vec![("bench-loop", bench_loop)];
    r.extend(crate::scan_bench::roles());
    r
}

pub fn main(_args: &[String]) -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("BENCH FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Microsecond samples of one path at one size.
struct Samples(Vec<f64>);

impl Samples {
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }
}

fn timed<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<f64, String> {
    let start = Instant::now();
    let out = f().map_err(|e| e.to_string())?;
    let us = start.elapsed().as_secs_f64() * 1e6;
    drop(out);
    Ok(us)
}

fn run() -> Result<(), String> {
    let heap = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/dma_heap/system")
        .map_err(|e| format!("/dev/dma_heap/system: {e} (the benchmark runs as root in the VM)"))?;
    let kernel = Allocator::connect_kernel().map_err(|e| e.to_string())?;
    let rpc = Allocator::connect_rpc(Path::new(RPC_SOCKET)).map_err(|e| e.to_string())?;
    println!("allocation latency in microseconds (alloc + name, buffer freed after each; paths interleaved)");
    println!(
        "{:<8} {:<14} {:>7} {:>10} {:>10} {:>11} {:>11}",
        "size", "path", "samples", "p50", "p99", "p50/direct", "p99/direct"
    );
    for (size, label, n) in SIZES {
        let (mut direct, mut binder, mut over_rpc) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            direct.push(timed(|| direct_alloc(&heap, size))?);
            binder.push(timed(|| kernel.allocate("system", size, "bench"))?);
            over_rpc.push(timed(|| rpc.allocate("system", size, "bench"))?);
            // Warm-up: the first rounds pay for page-pool and thread start-up.
            if i == 2 {
                direct.clear();
                binder.clear();
                over_rpc.clear();
            }
        }
        let direct = Samples(direct);
        let (d50, d99) = (direct.percentile(0.5), direct.percentile(0.99));
        for (path, s) in [
            ("direct ioctl", &direct),
            ("kernel binder", &Samples(binder)),
            ("rpc binder", &Samples(over_rpc)),
        ] {
            let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
            println!(
                "{label:<8} {path:<14} {:>7} {p50:>10.1} {p99:>10.1} {:>11.2} {:>11.2}",
                s.0.len(),
                p50 / d50,
                p99 / d99
            );
        }
    }
    pools(&heap)?;
    throughput()?;
    crate::scan_bench::run()
}

/// The bench's pooled dmabufd: a class for each single-allocation size
/// (as many buffers as samples, so each sample is a pool hit) and the
/// camera burst's 30 x 12 MiB. Refills wait 1 s of idle, out of the loops.
const BENCH_POOLS: &str =
    "[pools]\nmax_bytes = \"1G\"\nrefill_delay_ms = 1000\nlow_water_percent = 100\n\
    [pools.system]\nclasses = [{ size = \"4K\", count = 120 }, { size = \"1M\", count = 60 }, \
    { size = \"32M\", count = 10 }, { size = \"12M\", count = 30 }]";
const POOLED_SAMPLES: [(u64, &str, usize); 3] = [
    (4 * KIB, "4 KiB", 120),
    (MIB, "1 MiB", 60),
    (32 * MIB, "32 MiB", 10),
];
const BATCH: i32 = 16;
const BATCH_ROUNDS: usize = 40;
/// 7 x 16 = 112 of the 4 KiB class's 120: every buffer a pool hit.
const POOLED_BATCH_ROUNDS: usize = 7;
const BURST: usize = 30;

fn direct_alloc(heap: &std::fs::File, size: u64) -> Result<std::os::fd::OwnedFd, std::io::Error> {
    let fd = dmabufd::sys::dma_heap_alloc(std::os::fd::AsFd::as_fd(heap), size)?;
    dmabufd::sys::dma_buf_set_name(std::os::fd::AsFd::as_fd(&fd), "bench")?;
    Ok(fd)
}

fn pools(heap: &std::fs::File) -> Result<(), String> {
    use crate::cases::pools::PoolService;
    // A second allocator instance on kernel binder, so a pool hit costs
    // what a call to the main service costs.
    let svc = PoolService::start_kernel(BENCH_POOLS, "pool-bench")?;
    let pooled = svc.connect()?;
    let kernel = Allocator::connect_kernel().map_err(|e| e.to_string())?;
    let fill = PoolService::wait_full(&pooled, 600_000)?;
    let (bytes, _) = PoolService::pooled(&pooled)?;
    println!(
        "pool start fill: {} MiB in {} buffers classes filled in {} ms while idle",
        bytes >> 20,
        120 + 60 + 10 + 30,
        fill.as_millis()
    );
    // What any call costs: a round trip with no fd and no buffer, so a
    // pool hit's cost splits into the transport and the rest.
    let mut trips = Vec::new();
    for _ in 0..120 {
        trips.push(timed(|| pooled.heaps())?);
    }
    let trips = Samples(trips);
    println!(
        "kernel binder round trip (getHeaps of instance pool-bench, 120 calls): p50 {:.1} us, p99 {:.1} us",
        trips.percentile(0.5),
        trips.percentile(0.99)
    );
    println!(
        "pooled single allocations (kernel binder, instance pool-bench; every sample a pool hit; direct interleaved)"
    );
    println!(
        "{:<8} {:<14} {:>7} {:>10} {:>10} {:>11} {:>11}",
        "size", "path", "samples", "p50", "p99", "p50/direct", "p99/direct"
    );
    for (size, label, n) in POOLED_SAMPLES {
        let (mut direct, mut from_pool) = (Vec::new(), Vec::new());
        for _ in 0..n {
            direct.push(timed(|| direct_alloc(heap, size))?);
            from_pool.push(timed(|| pooled.allocate("system", size, "bench"))?);
        }
        let (direct, from_pool) = (Samples(direct), Samples(from_pool));
        let (d50, d99) = (direct.percentile(0.5), direct.percentile(0.99));
        for (path, s) in [("direct ioctl", &direct), ("pooled", &from_pool)] {
            let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
            println!(
                "{label:<8} {path:<14} {:>7} {p50:>10.1} {p99:>10.1} {:>11.2} {:>11.2}",
                s.0.len(),
                p50 / d50,
                p99 / d99
            );
        }
    }
    // Batch: 16 x 4 KiB in one call (kernel binder, unpooled) against 16
    // direct ioctls + names; per buffer.
    batch_against_direct(heap, &kernel, BATCH_ROUNDS, "")?;
    // The same batch from the pool (kernel binder): as many rounds as the
    // 4 KiB class holds, so every buffer is a pool hit.
    PoolService::wait_full(&pooled, 600_000)?;
    batch_against_direct(heap, &pooled, POOLED_BATCH_ROUNDS, " from the pool")?;
    // Camera burst: time to the last of 30 x 12 MiB.
    PoolService::wait_full(&pooled, 600_000)?;
    let burst_direct = timed(|| {
        (0..BURST)
            .map(|_| direct_alloc(heap, 12 * MIB))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let burst_pool = timed(|| {
        (0..BURST)
            .map(|_| pooled.allocate("system", 12 * MIB, "cam"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    println!(
        "camera burst {BURST} x 12 MiB, time to the last buffer: direct {:.1} ms, pool of {BURST} {:.1} ms = {:.3}x direct",
        burst_direct / 1000.0,
        burst_pool / 1000.0,
        burst_pool / burst_direct
    );
    // Refill while idle: from the burst's end until the class is full.
    let refill = PoolService::wait_full(&pooled, 600_000)?;
    println!(
        "pool refill while idle: {BURST} x 12 MiB back in {} ms after the burst (incl. the 1000 ms idle delay)",
        refill.as_millis()
    );
    Ok(())
}

/// `rounds` of [`BATCH`] x 4 KiB: direct ioctls + names against one
/// `allocateBatch` through `alloc`, interleaved; prints per-buffer p50/p99.
fn batch_against_direct(
    heap: &std::fs::File,
    alloc: &Allocator,
    rounds: usize,
    what: &str,
) -> Result<(), String> {
    let (mut direct, mut batch) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(
            timed(|| {
                (0..BATCH)
                    .map(|_| direct_alloc(heap, 4 * KIB))
                    .collect::<Result<Vec<_>, _>>()
            })? / f64::from(BATCH),
        );
        batch.push(
            timed(|| alloc.allocate_batch("system", 4 * KIB, "bench", 0, BATCH as usize))?
                / f64::from(BATCH),
        );
    }
    let (direct, batch) = (Samples(direct), Samples(batch));
    println!(
        "batch {BATCH} x 4 KiB{what}, per buffer ({rounds} rounds): direct p50 {:.1} us, allocateBatch (kernel binder) p50 {:.1} us = {:.2}x direct (p99 {:.1} / {:.1} = {:.2}x)",
        direct.percentile(0.5),
        batch.percentile(0.5),
        batch.percentile(0.5) / direct.percentile(0.5),
        direct.percentile(0.99),
        batch.percentile(0.99),
        batch.percentile(0.99) / direct.percentile(0.99)
    );
    Ok(())
}

/// 8 app processes (uids 10001/10002), each allocating and freeing 4 KiB
/// buffers over kernel binder, all released at once.
fn throughput() -> Result<(), String> {
    let mut apps = Vec::new();
    for i in 0..APPS {
        let uid = if i % 2 == 0 { APP_A } else { APP_B };
        let child = app::start_ready(
            app::command_as(uid, "bench-loop", &[&ALLOCS_PER_APP.to_string()]),
            &format!("app {i}"),
        )?;
        apps.push((uid, child));
    }
    let start = Instant::now();
    for (_, child) in &mut apps {
        // Closing stdin is the start signal.
        drop(child.stdin.take());
    }
    for (uid, child) in apps {
        let out = app::finish(child, uid, "bench-loop")?;
        if out != "done" {
            return Err(format!("bench app printed {out:?}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = APPS * ALLOCS_PER_APP;
    println!(
        "throughput: {APPS} apps x {ALLOCS_PER_APP} allocate+free of 4 KiB over kernel binder: \
         {:.0} allocations/s ({total} in {secs:.2} s)",
        total as f64 / secs
    );
    Ok(())
}

/// `bench-loop COUNT`: connects, prints `ready`, waits for stdin to close,
/// then allocates and frees COUNT 4 KiB buffers.
fn bench_loop(args: &[&str]) -> RoleResult {
    let count: usize = args
        .first()
        .and_then(|c| c.parse().ok())
        .ok_or("bench-loop COUNT")?;
    let alloc = Allocator::connect_kernel().map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for i in 0..count {
        alloc
            .allocate("system", 4 * KIB, "bench")
            .map_err(|e| format!("allocation {i}: {e}"))?;
    }
    Ok("done".into())
}
