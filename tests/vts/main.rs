//! VTS-like suite: dmabufd on a real kernel (binder driver, DMA-BUF system
//! heap, udmabuf). It only runs inside the VM that `tests/vm/run.sh` boots,
//! where /init starts rsb_hub and dmabufd and runs this binary as root with
//! DMABUFD_VTS=1. Unprivileged app processes are this same binary re-executed
//! as `vts --app ROLE ARGS...` under app uids.
//!
//! `cargo test` on a development machine runs it too; there it only says
//! where it runs and exits 0.

mod app;
mod bench;
mod cases;
// The host fuzzer's engine; the guest has no corpus files (it encodes the
// same seeds), so their loader is unused here.
#[allow(dead_code)]
#[path = "../common/fuzz.rs"]
mod fuzz;
mod harness;
mod proc_scan;
#[path = "../common/rng.rs"]
mod rng;
mod scan_bench;
mod stand_in;
mod support;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--app") => return app::main(&args[1..]),
        Some("--stand-in-service") => return stand_in::main(),
        Some("--bench") => return bench::main(&args[1..]),
        _ => {}
    }
    if std::env::var("DMABUFD_VTS").as_deref() != Ok("1") {
        println!(
            "vts: skipped here; this suite needs a binder kernel and runs only in the VM: tests/vm/run.sh"
        );
        return ExitCode::SUCCESS;
    }
    let filter: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    harness::run(cases::all(), &filter)
}
