//! dmabufctl: the allocator service from a shell.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dmabufd::client::{heap_kind_name, Allocator};
use dmabufd::config::parse_size;

const USAGE: &str = "usage: dmabufctl [--rpc PATH] COMMAND
  heaps                                      list heaps, limits and usage
  alloc HEAP SIZE [--name NAME] [--hold SECONDS]
                                             allocate (SIZE: bytes or K/M/G); --hold keeps it alive
  dump [ARGS...]                             the service's dump (try `dump -h`)
  report [--pid N] [--json]                  per-process DMA-BUF memory

The service is found like the client library finds it: --rpc PATH or $DMABUFD_SOCKET
names an RPC socket; else kernel binder when a binder device exists; else the default
socket /run/dmabufd/dmabufd.sock.";

fn main() -> ExitCode {
    dmabufd::logging::init("dmabufctl", false);
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut rpc = None;
    if let Some(i) = args.iter().position(|a| a == "--rpc") {
        if i + 1 >= args.len() {
            return usage_error("--rpc needs a socket path");
        }
        rpc = Some(PathBuf::from(args.remove(i + 1)));
        args.remove(i);
    }
    let Some(cmd) = args.first().cloned() else {
        return usage_error("no command");
    };
    if cmd == "-h" || cmd == "--help" || cmd == "help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let rest = &args[1..];
    let alloc = match Allocator::connect_to(rpc) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dmabufctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match cmd.as_str() {
        "heaps" => heaps(&alloc),
        "alloc" => alloc_cmd(&alloc, rest),
        "dump" => dump(&alloc, rest),
        "report" => report(&alloc, rest),
        other => return usage_error(&format!("unknown command {other:?}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmabufctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("dmabufctl: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn heaps(a: &Allocator) -> Result<(), String> {
    let heaps = a.heaps().map_err(|e| e.to_string())?;
    println!(
        "{:<20} {:<9} {:>14} {:>14} {:>8}  aliases",
        "heap", "kind", "max bytes", "allocated", "buffers"
    );
    for h in heaps {
        println!(
            "{:<20} {:<9} {:>14} {:>14} {:>8}  {}",
            h.name,
            heap_kind_name(h.kind),
            h.maxAllocationSize,
            h.allocatedBytes,
            h.bufferCount,
            h.aliases.join(",")
        );
    }
    Ok(())
}

fn alloc_cmd(a: &Allocator, args: &[String]) -> Result<(), String> {
    let mut pos = Vec::new();
    let mut name = String::new();
    let mut hold = None;
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--name" => name = it.next().ok_or("--name needs a value")?.clone(),
            "--hold" => {
                let v = it.next().ok_or("--hold needs seconds")?;
                hold = Some(
                    v.parse::<f64>()
                        .map_err(|_| format!("--hold {v:?}: expected seconds"))?,
                );
            }
            _ => pos.push(x.clone()),
        }
    }
    let [heap, size] = pos.as_slice() else {
        return Err(format!("alloc takes HEAP SIZE, got {pos:?}\n{USAGE}"));
    };
    let bytes = parse_size(size).ok_or(format!(
        "size {size:?}: expected bytes or a number with K, M or G"
    ))?;
    let bytes = i64::try_from(bytes).map_err(|_| format!("size {size:?} is too large"))?;
    let b = a
        .allocate_raw(heap, bytes, &name, 0)
        .map_err(|e| e.to_string())?;
    println!(
        "allocated {} bytes from {} named {:?}: inode {}",
        b.size(),
        b.heap(),
        b.name().unwrap_or_default(),
        b.inode()
    );
    if let Some(s) = hold {
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(s.max(0.0)));
    }
    Ok(())
}

fn dump(a: &Allocator, args: &[String]) -> Result<(), String> {
    let bytes = a
        .service()
        .renderDump(args)
        .map_err(|e| dmabufd::client::Error::from(e).to_string())?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| e.to_string())
}

fn report(a: &Allocator, args: &[String]) -> Result<(), String> {
    let _ = (a, args);
    Err("report: not implemented yet".into())
}
