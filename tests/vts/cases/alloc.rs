//! Allocation from the real heaps, checked from the app's side: what the
//! kernel says about the fd (fdinfo), the memory's content, CPU sync.

use std::os::fd::AsRawFd;

use dmabufd::aidl::vendor::dmabuf::HeapKind::HeapKind;
use dmabufd::client::{heap_kind_name, DmaBuffer};
use dmabufd::heap::page_align;
use dmabufd::sys::SyncDirection;

use crate::app::{self, RoleResult, APP_A};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{connect, KIB, MIB};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "get_heaps_lists_system_as_dma_heap_and_udmabuf_as_udmabuf",
            run: get_heaps_lists_system_as_dma_heap_and_udmabuf_as_udmabuf,
        },
        Case {
            name: "system_heap_buffers_are_named_dmabufs_of_page_rounded_size",
            run: || app_role_ok("system-sizes"),
        },
        Case {
            name: "fresh_memory_reads_zero_after_a_freed_buffer_was_filled",
            run: || app_role_ok("zero-after-reuse"),
        },
        Case {
            name: "cpu_sync_start_and_end_succeed_for_read_write_and_read_write",
            run: || app_role_ok("cpu-sync"),
        },
        Case {
            name: "udmabuf_heap_buffers_are_named_mappable_dmabufs",
            run: || app_role_ok("udmabuf-basic"),
        },
        Case {
            name: "sync_file_export_and_import_work_and_rename_shows_in_fdinfo",
            run: || app_role_ok("sync-file-rename"),
        },
    ]
}

/// The app roles of this module.
pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("system-sizes", system_sizes),
        ("zero-after-reuse", zero_after_reuse),
        ("cpu-sync", cpu_sync),
        ("udmabuf-basic", udmabuf_basic),
        ("sync-file-rename", sync_file_rename),
    ]
}

/// The client library's sync_file export/import (kernel 6.0+) and set_name
/// on a real system-heap dma-buf, as an app.
fn sync_file_rename(_: &[&str]) -> RoleResult {
    let b = connect()?
        .allocate("system", 4 * KIB, "before-rename")
        .map_err(|e| e.to_string())?;
    let fence = b
        .export_sync_file(SyncDirection::Read)
        .map_err(|e| format!("export_sync_file: {e}"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fence.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    if !link.to_string_lossy().contains("sync_file") {
        return Err(format!("exported fd is {link:?}, not a sync_file"));
    }
    b.import_sync_file(SyncDirection::Write, std::os::fd::AsFd::as_fd(&fence))
        .map_err(|e| format!("import_sync_file: {e}"))?;
    b.set_name("after-rename")
        .map_err(|e| format!("set_name: {e}"))?;
    let name = b.name().map_err(|e| e.to_string())?;
    if name != "after-rename" {
        return Err(format!("fdinfo name is {name:?} after set_name"));
    }
    if b.set_name(&"x".repeat(32)).is_ok() {
        return Err("a 32-byte name was accepted by set_name".into());
    }
    Ok("ok".into())
}

/// Runs a role as app A; its own checks decide.
fn app_role_ok(role: &str) -> Outcome {
    let out = app::run_as(APP_A, role, &[])?;
    ensure!(out == "ok", "app {role} printed {out:?}");
    Ok(())
}

fn get_heaps_lists_system_as_dma_heap_and_udmabuf_as_udmabuf() -> Outcome {
    let heaps = connect()?.heaps().map_err(|e| format!("getHeaps: {e}"))?;
    let kind_of = |name: &str| heaps.iter().find(|h| h.name == name).map(|h| h.kind);
    let listed: Vec<String> = heaps
        .iter()
        .map(|h| format!("{}:{}", h.name, heap_kind_name(h.kind)))
        .collect();
    ensure!(
        kind_of("system") == Some(HeapKind::DMA_HEAP),
        "system is not listed as DMA_HEAP: {listed:?}"
    );
    ensure!(
        kind_of("udmabuf") == Some(HeapKind::UDMABUF),
        "udmabuf is not listed as UDMABUF: {listed:?}"
    );
    for h in &heaps {
        ensure!(
            h.maxAllocationSize > 0,
            "heap {} has max size {}",
            h.name,
            h.maxAllocationSize
        );
    }
    Ok(())
}

/// Checks one buffer against the app's own fdinfo.
fn check_fdinfo(buf: &DmaBuffer, exporter: &str, name: &str, want_size: u64) -> Result<(), String> {
    let info = proc_scan::fdinfo(std::process::id() as i32, buf.fd().as_raw_fd())?;
    let field = |k: &str| info.get(k).unwrap_or("<missing>").to_string();
    ensure!(
        info.get("exp_name") == Some(exporter),
        "exp_name {:?}, want {exporter:?}",
        field("exp_name")
    );
    ensure!(
        info.get("name") == Some(name),
        "fdinfo name {:?}, want {name:?}",
        field("name")
    );
    ensure!(
        info.get("ino").and_then(|v| v.parse::<u64>().ok()) == Some(buf.inode()),
        "fdinfo ino {} but the service said inode {}",
        field("ino"),
        buf.inode()
    );
    ensure!(
        buf.size() == want_size,
        "size {} reported, want {want_size}",
        buf.size()
    );
    ensure!(
        info.get("size").and_then(|v| v.parse::<u64>().ok()) == Some(want_size),
        "fdinfo size {}, want {want_size}",
        field("size")
    );
    Ok(())
}

fn system_sizes(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    let sizes = [4 * KIB, 64 * KIB, MIB, 2 * MIB, 32 * MIB, 4 * KIB + 1];
    for size in sizes {
        let name = format!("vts-sys-{size}");
        let buf = alloc
            .allocate("system", size, &name)
            .map_err(|e| format!("allocate {size}: {e}"))?;
        let want = page_align(size).ok_or("page_align overflow")?;
        check_fdinfo(&buf, "system", &name, want).map_err(|e| format!("{size} bytes: {e}"))?;
        ensure!(
            buf.heap() == "system",
            "{size} bytes: served by heap {:?}",
            buf.heap()
        );
        ensure!(
            buf.name().map_err(|e| e.to_string())? == name,
            "{size} bytes: name() disagrees with fdinfo"
        );
    }
    Ok("ok".into())
}

fn zero_after_reuse(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    let batch = |label: &str| -> Result<Vec<DmaBuffer>, String> {
        (0..16)
            .map(|i| {
                alloc
                    .allocate("system", 4 * KIB, &format!("vts-{label}-{i}"))
                    .map_err(|e| format!("allocate {label} {i}: {e}"))
            })
            .collect()
    };
    let mut dirty = batch("dirty")?;
    for buf in &mut dirty {
        let mut map = buf.map(SyncDirection::Write).map_err(|e| e.to_string())?;
        map.fill(0xaa).map_err(|e| e.to_string())?;
    }
    drop(dirty);
    for (i, buf) in batch("fresh")?.iter_mut().enumerate() {
        let bytes = buf
            .map(SyncDirection::Read)
            .map_err(|e| e.to_string())?
            .to_vec();
        if let Some(pos) = bytes.iter().position(|b| *b != 0) {
            return Err(format!(
                "fresh buffer {i} has {:#04x} at offset {pos}",
                bytes[pos]
            ));
        }
    }
    Ok("ok".into())
}

fn cpu_sync(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    let mut buf = alloc
        .allocate("system", 64 * KIB, "vts-sync")
        .map_err(|e| e.to_string())?;
    {
        let mut w = buf
            .map(SyncDirection::Write)
            .map_err(|e| format!("write start: {e}"))?;
        w.fill(0x5a).map_err(|e| e.to_string())?;
    }
    {
        let mut rw = buf
            .map(SyncDirection::ReadWrite)
            .map_err(|e| format!("read-write start: {e}"))?;
        ensure!(
            rw.to_vec().iter().all(|b| *b == 0x5a),
            "read-write sees other bytes than written"
        );
        rw.write_at(0, &[0xa5; 4096]).map_err(|e| e.to_string())?;
    }
    let r = buf
        .map(SyncDirection::Read)
        .map_err(|e| format!("read start: {e}"))?
        .to_vec();
    ensure!(
        r[..4096].iter().all(|b| *b == 0xa5) && r[4096..].iter().all(|b| *b == 0x5a),
        "read sees other bytes than written"
    );
    // The raw ioctls too, so a silently skipped sync cannot pass: start/end pairs.
    for dir in [
        SyncDirection::Read,
        SyncDirection::Write,
        SyncDirection::ReadWrite,
    ] {
        dmabufd::sys::dma_buf_sync(buf.fd(), dir, false)
            .map_err(|e| format!("{dir:?} start: {e}"))?;
        dmabufd::sys::dma_buf_sync(buf.fd(), dir, true).map_err(|e| format!("{dir:?} end: {e}"))?;
    }
    Ok("ok".into())
}

fn udmabuf_basic(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    for size in [4 * KIB, MIB, 8 * MIB + 1] {
        let name = format!("vts-udma-{size}");
        let mut buf = alloc
            .allocate("udmabuf", size, &name)
            .map_err(|e| format!("allocate udmabuf {size}: {e}"))?;
        let want = page_align(size).ok_or("page_align overflow")?;
        check_fdinfo(&buf, "udmabuf", &name, want).map_err(|e| format!("udmabuf {size}: {e}"))?;
        {
            let mut w = buf.map(SyncDirection::Write).map_err(|e| e.to_string())?;
            let pattern: Vec<u8> = (0..w.len()).map(|i| (i % 251) as u8).collect();
            w.write_at(0, &pattern).map_err(|e| e.to_string())?;
        }
        let r = buf
            .map(SyncDirection::Read)
            .map_err(|e| e.to_string())?
            .to_vec();
        ensure!(
            r.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
            "udmabuf {size}: read back differs from what was written"
        );
    }
    Ok("ok".into())
}
