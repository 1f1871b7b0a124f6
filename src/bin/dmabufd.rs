//! dmabufd: the DMA-BUF allocator service.

use std::path::PathBuf;
use std::process::ExitCode;

use dmabufd::daemon::{self, Options};

const USAGE: &str = "usage: dmabufd [--config FILE] [--kernel | --rpc PATH] [--metrics-textfile PATH] [--verbose]
       dmabufd --demo

  --config FILE  service config (TOML); default /etc/dmabufd.toml when present
  --kernel       serve on kernel binder (default when /dev/binderfs/binder or /dev/binder exists)
  --rpc PATH     serve RPC binder on the Unix socket PATH
                 (default when there is no binder driver: $DMABUFD_SOCKET or /run/dmabufd/dmabufd.sock)
  --metrics-textfile PATH
                 rewrite PATH (e.g. /var/lib/prometheus/node-exporter/dmabufd.prom) with the
                 Prometheus metrics after each scan, for node_exporter's textfile collector
  --demo         run the service with a scripted multi-process workload and print the report";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "--verbose" || a == "-v");
    dmabufd::logging::init("dmabufd", verbose);
    if args.first().map(String::as_str) == Some("--demo-app") {
        return dmabufd::demo::app_main(&args[1..]);
    }
    let mut opts = Options::default();
    let mut demo = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => opts.config = it.next().map(PathBuf::from),
            "--rpc" => opts.rpc = it.next().map(PathBuf::from),
            "--kernel" => opts.kernel = true,
            "--metrics-textfile" => opts.metrics_textfile = it.next().map(PathBuf::from),
            "--demo" => demo = true,
            "--verbose" | "-v" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("dmabufd: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if (opts.config.is_none() && args.iter().any(|a| a == "--config"))
        || (opts.rpc.is_none() && args.iter().any(|a| a == "--rpc"))
        || (opts.metrics_textfile.is_none() && args.iter().any(|a| a == "--metrics-textfile"))
    {
        eprintln!("dmabufd: --config, --rpc and --metrics-textfile need a value\n{USAGE}");
        return ExitCode::from(2);
    }
    if demo {
        return dmabufd::demo::run();
    }
    match daemon::start(&opts) {
        Ok(running) => {
            daemon::wait_for_shutdown();
            log::info!("shutting down");
            running.stopping();
            if let dmabufd::transport::Transport::Rpc(p) = &running.transport {
                let _ = std::fs::remove_file(p);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
