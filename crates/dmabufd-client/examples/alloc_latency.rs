//! Single-allocation latency through the service against making the same
//! buffer in-process, for measuring what the service adds per allocation:
//!
//!     cargo run --release -p dmabufd-client --example alloc_latency -- \
//!         --rpc /path/to/dmabufd.sock [--size 4096] [--count 5000]
//!
//! Each sample is one `allocate` + drop (the buffer is freed before the
//! next); the in-process path is a sealed memfd of the same size (what the
//! host's memfd heap makes), interleaved with the service samples so both
//! see the same machine. Prints p50/p90/p99 of both and the difference of
//! the medians: the service-added time.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dmabufd_client::Allocator;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

fn direct(size: u64) -> Duration {
    let t = Instant::now();
    let name = CString::new("direct").unwrap();
    let fd = memfd_create(
        name.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .expect("memfd_create");
    nix::unistd::ftruncate(fd.as_fd(), size as i64).expect("ftruncate");
    fcntl(
        fd.as_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .expect("seal");
    let d = t.elapsed();
    drop(fd);
    d
}

fn percentile(v: &mut [Duration], p: f64) -> u128 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_micros()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rpc: Option<PathBuf> = None;
    let (mut size, mut count) = (4096u64, 5000usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--rpc" => rpc = Some(v.into()),
            "--size" => size = v.parse()?,
            "--count" => count = v.parse()?,
            _ => {
                return Err(format!("unknown argument {a}; allowed --rpc, --size, --count").into())
            }
        }
    }
    let alloc = match rpc {
        Some(p) => Allocator::connect_rpc(&p)?,
        None => Allocator::connect()?,
    };
    // Warm up both paths (connection, service threads, page cache).
    for _ in 0..200 {
        drop(alloc.allocate("system", size, "bench")?);
        direct(size);
    }
    let (mut service, mut inproc) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for _ in 0..count {
        let t = Instant::now();
        let b = alloc.allocate("system", size, "bench")?;
        service.push(t.elapsed());
        drop(b);
        inproc.push(direct(size));
    }
    let s50 = percentile(&mut service, 0.5);
    let d50 = percentile(&mut inproc, 0.5);
    println!(
        "size {size} count {count}: service p50 {s50} us p90 {} us p99 {} us; \
         in-process p50 {d50} us p90 {} us p99 {} us; service-added p50 {} us",
        percentile(&mut service, 0.9),
        percentile(&mut service, 0.99),
        percentile(&mut inproc, 0.9),
        percentile(&mut inproc, 0.99),
        s50.saturating_sub(d50),
    );
    Ok(())
}
