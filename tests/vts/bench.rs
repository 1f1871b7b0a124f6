//! `vts --bench`: allocation latency and throughput (filled in later).

use std::process::ExitCode;

pub fn main(_args: &[String]) -> ExitCode {
    println!("vts --bench: not implemented yet");
    ExitCode::FAILURE
}
