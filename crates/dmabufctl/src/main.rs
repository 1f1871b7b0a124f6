//! dmabufctl: the allocator service from a shell.

use dmabufd_client::aidl::vendor::dmabuf::IDmaBufAllocator::MAX_BATCH_COUNT;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dmabufd_client::aidl::vendor::dmabuf::{
    MemoryReport::MemoryReport, ProcessMemory::ProcessMemory,
};
use dmabufd_client::escape::escape;
use dmabufd_client::{heap_kind_name, parse_size, Allocator};

const USAGE: &str = "usage: dmabufctl [--rpc PATH] COMMAND
  heaps                                      list heaps, limits and usage
  alloc HEAP SIZE [--name NAME] [--count N] [--hold SECONDS]
                                             allocate (SIZE: bytes or K/M/G); --count N: N buffers in
                                             one all-or-nothing batch; --hold keeps them alive
  dump [ARGS...]                             the service's dump (try `dump -h`)
  report [--pid N] [--json]                  per-process DMA-BUF memory
  metrics                                    the metrics in the Prometheus text format

The service is found like the client library finds it: --rpc PATH or $DMABUFD_SOCKET
names an RPC socket; else kernel binder when a binder device exists; else the default
socket /run/dmabufd/dmabufd.sock.";

fn main() -> ExitCode {
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
        "metrics" if rest.is_empty() => dump(&alloc, &["--prometheus".to_string()]),
        "metrics" => return usage_error("metrics takes no argument"),
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
        if !h.poolClasses.is_empty() {
            let classes: Vec<String> = h
                .poolClasses
                .iter()
                .map(|c| format!("{} x {}/{}", c.size, c.availableCount, c.targetCount))
                .collect();
            println!(
                "  pool (held by dmabufd, no app's): {} bytes; {}",
                h.pooledBytes,
                classes.join(", ")
            );
        }
    }
    // Which scan source the service uses (the dump is privileged: others
    // see only the heaps).
    if let Some(line) = scan_source(a) {
        println!("{line}");
    }
    Ok(())
}

/// The service's "scan source: ..." line, for privileged callers.
fn scan_source(a: &Allocator) -> Option<String> {
    let bytes = a.service().renderDump(&["--source".to_string()]).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .find(|l| l.starts_with("scan source: "))
        .map(str::to_string)
}

fn alloc_cmd(a: &Allocator, args: &[String]) -> Result<(), String> {
    let mut pos = Vec::new();
    let mut name = String::new();
    let mut hold = None;
    let mut count = None;
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--name" => name = it.next().ok_or("--name needs a value")?.clone(),
            "--count" => {
                let v = it.next().ok_or("--count needs a number")?;
                count = Some(v.parse::<usize>().map_err(|_| {
                    format!("--count {v:?}: expected a number of buffers (1 to {MAX_BATCH_COUNT})")
                })?);
            }
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
    let bufs = match count {
        // One batch, all or nothing.
        Some(n) => a
            .allocate_batch(heap, bytes as u64, &name, 0, n)
            .map_err(|e| e.to_string())?,
        None => vec![a
            .allocate_raw(heap, bytes, &name, 0)
            .map_err(|e| e.to_string())?],
    };
    for b in &bufs {
        println!(
            "allocated {} bytes from {} named {:?}: inode {}",
            b.size(),
            b.heap(),
            b.name().unwrap_or_default(),
            b.inode()
        );
    }
    if let Some(s) = hold {
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(s.max(0.0)));
    }
    Ok(())
}

fn dump(a: &Allocator, args: &[String]) -> Result<(), String> {
    let bytes = a.render_dump(args).map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| e.to_string())
}

fn report(a: &Allocator, args: &[String]) -> Result<(), String> {
    let mut pid = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--json" => json = true,
            "--pid" => {
                let v = it.next().ok_or("--pid needs a process id")?;
                pid = Some(
                    v.parse::<i32>()
                        .map_err(|_| format!("--pid {v:?}: expected a process id"))?,
                );
            }
            other => {
                return Err(format!(
                    "report: unknown argument {other:?}; accepted: --pid N, --json"
                ))
            }
        }
    }
    let err = |e: dmabufd_client::Error| e.to_string();
    match (pid, json) {
        (Some(p), true) => print_json(&process_json(&a.process_memory(p).map_err(err)?)),
        (None, true) => {
            let mut v = report_json(&a.memory_report().map_err(err)?);
            if let Some(line) = scan_source(a) {
                v["scan_source"] = line.trim_start_matches("scan source: ").into();
            }
            print_json(&v)
        }
        (Some(p), false) => {
            let m = a.process_memory(p).map_err(err)?;
            print_process(&m);
            Ok(())
        }
        (None, false) => dump(a, &[]),
    }
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn print_process(m: &ProcessMemory) {
    println!(
        "{}:{} uid {}  rss {} kB  pss {} kB  hwm {} kB",
        escape(&m.name),
        m.pid,
        m.uid,
        m.rssBytes / 1024,
        m.pssBytes / 1024,
        m.hwmBytes / 1024
    );
    if !m.readable {
        println!("  unreadable: {}", escape(&m.error));
    }
    for b in &m.buffers {
        let owner = if b.ownerUid < 0 {
            "unknown".to_string()
        } else {
            format!("uid {} pid {}", b.ownerUid, b.ownerPid)
        };
        println!(
            "  ino {:<8} {:>10} kB  {:<12} {:<32} fds {} maps {} procs {}  owner {owner}",
            b.inode,
            b.size / 1024,
            escape(&b.exporter),
            escape(&b.name),
            b.fdRefs,
            b.mapRefs,
            b.sharedWith
        );
    }
}

fn process_json(m: &ProcessMemory) -> serde_json::Value {
    serde_json::json!({
        "pid": m.pid, "uid": m.uid, "name": m.name,
        "rss_bytes": m.rssBytes, "pss_bytes": m.pssBytes, "hwm_bytes": m.hwmBytes,
        "readable": m.readable, "error": m.error,
        "buffers": m.buffers.iter().map(|b| serde_json::json!({
            "inode": b.inode, "size": b.size, "exporter": b.exporter, "name": b.name,
            "owner_uid": b.ownerUid, "owner_pid": b.ownerPid,
            "fd_refs": b.fdRefs, "map_refs": b.mapRefs, "shared_with": b.sharedWith,
        })).collect::<Vec<_>>(),
    })
}

fn report_json(r: &MemoryReport) -> serde_json::Value {
    serde_json::json!({
        "timestamp_ms": r.timestampMs,
        "processes": r.processes.iter().map(process_json).collect::<Vec<_>>(),
        "buffers": r.buffers.iter().map(|b| serde_json::json!({
            "inode": b.inode, "size": b.size, "exporter": b.exporter, "name": b.name,
            "owner_uid": b.ownerUid, "owner_pid": b.ownerPid, "owner_name": b.ownerName,
            "allocated_at_ms": b.allocatedAtMs,
            "holders": b.holders.iter().map(|h| serde_json::json!({
                "pid": h.pid, "uid": h.uid, "name": h.name, "fd_refs": h.fdRefs, "map_refs": h.mapRefs,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "heap_totals": r.heapTotals.iter().map(|t| serde_json::json!({"exporter": t.exporter, "count": t.count, "bytes": t.bytes})).collect::<Vec<_>>(),
        "owner_totals": r.ownerTotals.iter().map(|t| serde_json::json!({"uid": t.uid, "count": t.count, "bytes": t.bytes})).collect::<Vec<_>>(),
        "total_count": r.totalCount, "total_bytes": r.totalBytes, "unreferenced_bytes": r.unreferencedBytes,
    })
}
