//! The memtrack HAL dmabufd also serves (android.hardware.memtrack.IMemtrack/default)
//! and the Perfetto counter tracks, on a real kernel: the checks of AOSP's
//! VtsHalMemtrackTargetTest, GRAPHICS = the DMA-BUF pss of a process that
//! shares a buffer, and the counter of an app's rss in the ftrace buffer.

use std::io::Write;

use dmabufd::memtrack;
use dmabufd::memtrack_aidl::android::hardware::memtrack::{
    IMemtrack::IMemtrack, MemtrackRecord::MemtrackRecord, MemtrackType::MemtrackType,
};
use rsbinder::{ExceptionCode, Strong};

use super::reports::Running;
use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::support::{connect, MIB};

const SHARE_SOCKET: &str = "/tmp/vts-memtrack-share.sock";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "memtrack_is_registered_for_root_and_hidden_from_apps",
            run: memtrack_is_registered_for_root_and_hidden_from_apps,
        },
        Case {
            name: "memtrack_negative_pid_is_illegal_argument_for_every_type",
            run: memtrack_negative_pid_is_illegal_argument_for_every_type,
        },
        Case {
            name: "memtrack_unknown_type_is_unsupported_operation",
            run: memtrack_unknown_type_is_unsupported_operation,
        },
        Case {
            name: "memtrack_pid_1_is_ok_for_every_type_with_valid_flags",
            run: memtrack_pid_1_is_ok_for_every_type_with_valid_flags,
        },
        Case {
            name: "memtrack_gpu_device_info_lists_the_drm_cards_by_driver_name",
            run: memtrack_gpu_device_info_lists_the_drm_cards_by_driver_name,
        },
        Case {
            name: "memtrack_app_holding_4_mib_shared_with_one_other_process_gets_2_mib_graphics",
            run: memtrack_app_holding_4_mib_shared_with_one_other_process_gets_2_mib_graphics,
        },
        Case {
            name: "trace_marker_gets_app_a_rss_counter_and_the_allocation_while_tracing_is_on",
            run: trace_marker_gets_app_a_rss_counter_and_the_allocation_while_tracing_is_on,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("memtrack-find", memtrack_find),
        ("memtrack-hold", memtrack_hold),
    ]
}

fn memtrack() -> Result<Strong<dyn IMemtrack>, String> {
    dmabufd::transport::connect_memtrack_kernel(std::time::Duration::from_secs(5))
        .map_err(|e| format!("finding {}: {e:?}", dmabufd::MEMTRACK_SERVICE_NAME))
}

fn all_types() -> [MemtrackType; 5] {
    [
        MemtrackType::OTHER,
        MemtrackType::GL,
        MemtrackType::GRAPHICS,
        MemtrackType::MULTIMEDIA,
        MemtrackType::CAMERA,
    ]
}

/// What VtsHalMemtrackTargetTest accepts of a record's flags: only defined
/// bits; smaps-accounted or not (one of them); shared, shared-pss or
/// private (at most one); system or dedicated, non-secure or secure (at
/// most one of each); a size of 0 or more.
fn check_record(r: &MemtrackRecord) -> Result<(), String> {
    let known = (1 << 10) - 2;
    ensure!(
        r.flags & !known == 0,
        "undefined flag bits in {:#x}",
        r.flags
    );
    let one_of = |bits: &[i32]| bits.iter().filter(|b| r.flags & **b != 0).count();
    ensure!(
        one_of(&[
            memtrack::FLAG_SMAPS_ACCOUNTED,
            memtrack::FLAG_SMAPS_UNACCOUNTED
        ]) == 1,
        "smaps accounted and unaccounted: {:#x}",
        r.flags
    );
    ensure!(
        one_of(&[
            memtrack::FLAG_SHARED,
            memtrack::FLAG_SHARED_PSS,
            memtrack::FLAG_PRIVATE
        ]) <= 1,
        "sharing flags {:#x}",
        r.flags
    );
    ensure!(
        one_of(&[memtrack::FLAG_SYSTEM, memtrack::FLAG_DEDICATED]) <= 1
            && one_of(&[memtrack::FLAG_NONSECURE, memtrack::FLAG_SECURE]) <= 1,
        "memory kind flags {:#x}",
        r.flags
    );
    ensure!(r.sizeInBytes >= 0, "negative size {}", r.sizeInBytes);
    Ok(())
}

fn graphics(m: &Strong<dyn IMemtrack>, pid: i32) -> Result<Vec<MemtrackRecord>, String> {
    let r = m
        .getMemory(pid, MemtrackType::GRAPHICS)
        .map_err(|e| format!("getMemory({pid}, GRAPHICS): {e}"))?;
    for rec in &r {
        check_record(rec)?;
    }
    Ok(r)
}

/// The record of `flags` (exactly), its size.
fn size_of(records: &[MemtrackRecord], flags: i32) -> Option<u64> {
    records
        .iter()
        .find(|r| r.flags == flags)
        .map(|r| r.sizeInBytes as u64)
}

/// `memtrack-find`: an app looks memtrack up.
fn memtrack_find(_: &[&str]) -> RoleResult {
    let client = rsbinder::Client::open(rsbinder::Uri::kernel()).map_err(|e| e.to_string())?;
    match client.try_get::<dyn IMemtrack>(dmabufd::MEMTRACK_SERVICE_NAME) {
        Ok(Some(_)) => Ok("found".into()),
        Ok(None) => Ok("not found".into()),
        Err(e) => Ok(format!("refused: {e:?}")),
    }
}

fn memtrack_is_registered_for_root_and_hidden_from_apps() -> Outcome {
    let m = memtrack()?;
    let version = m.getInterfaceVersion().map_err(|e| e.to_string())?;
    ensure!(version == 1, "getInterfaceVersion {version}");
    let hash = m.getInterfaceHash().map_err(|e| e.to_string())?;
    ensure!(
        hash == "25438132a462bf5b6f4334d966c95b70824e66c0",
        "getInterfaceHash {hash}"
    );
    // rsb_hub's policy: only root and uid 1000 find memtrack.
    let out = app::run_as(APP_A, "memtrack-find", &[])?;
    ensure!(out != "found", "an app found memtrack: {out}");
    Ok(())
}

fn memtrack_negative_pid_is_illegal_argument_for_every_type() -> Outcome {
    let m = memtrack()?;
    for t in all_types().into_iter().chain([MemtrackType(-1)]) {
        match m.getMemory(-1, t) {
            Err(e) if e.exception_code() == ExceptionCode::IllegalArgument => {}
            other => return Err(format!("getMemory(-1, {}): {other:?}", t.0)),
        }
    }
    Ok(())
}

fn memtrack_unknown_type_is_unsupported_operation() -> Outcome {
    let m = memtrack()?;
    for t in [-1, 5, 1000] {
        match m.getMemory(1, MemtrackType(t)) {
            Err(e) if e.exception_code() == ExceptionCode::UnsupportedOperation => {}
            other => return Err(format!("getMemory(1, {t}): {other:?}")),
        }
    }
    Ok(())
}

fn memtrack_pid_1_is_ok_for_every_type_with_valid_flags() -> Outcome {
    let m = memtrack()?;
    for pid in [1, 0, std::process::id() as i32] {
        for t in all_types() {
            let records = m
                .getMemory(pid, t)
                .map_err(|e| format!("getMemory({pid}, {}): {e}", t.0))?;
            for r in &records {
                check_record(r).map_err(|e| format!("getMemory({pid}, {}): {e}", t.0))?;
            }
            if pid == 0 && t != MemtrackType::GL {
                let total: i64 = records.iter().map(|r| r.sizeInBytes).sum();
                ensure!(total == 0, "pid 0, type {}: {total} bytes", t.0);
            }
        }
    }
    Ok(())
}

fn memtrack_gpu_device_info_lists_the_drm_cards_by_driver_name() -> Outcome {
    let m = memtrack()?;
    let got = m.getGpuDeviceInfo().map_err(|e| e.to_string())?;
    for d in &got {
        ensure!(d.id >= 0 && !d.name.is_empty(), "device {d:?}");
    }
    // The kernel's own list: /sys/class/drm/card<N>, named after the driver.
    let mut want = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/class/drm") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("card")
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let driver = std::fs::read_link(e.path().join("device/driver"))
                .ok()
                .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()))
                .unwrap_or(name);
            want.push((id, driver));
        }
    }
    want.sort();
    let got: Vec<(i32, String)> = got.into_iter().map(|d| (d.id, d.name)).collect();
    ensure!(got == want, "getGpuDeviceInfo {got:?}, sysfs {want:?}");
    println!("  GPUs: {got:?} (the VM has no DRM device when the list is empty)");
    Ok(())
}

fn memtrack_app_holding_4_mib_shared_with_one_other_process_gets_2_mib_graphics() -> Outcome {
    let size = 4 * MIB;
    let mut b = Running::start(APP_B, "reports-recv", &[SHARE_SOCKET])?;
    ensure!(b.line()? == "listening", "receiver did not start");
    let mut a = Running::start(APP_A, "reports-give", &[SHARE_SOCKET, &size.to_string()])?;
    let la = a.line()?;
    let lb = b.line()?;
    ensure!(
        la.starts_with("holding ") && lb == la,
        "giver {la:?}, receiver {lb:?}"
    );

    // A fresh report first: memtrack answers from a scan at most
    // [memtrack] max_age_ms old, and this one started after both hold it.
    let alloc = connect()?;
    let m = memtrack()?;
    for p in [a.pid(), b.pid()] {
        let pm = alloc
            .process_memory(p)
            .map_err(|e| format!("getProcessMemory({p}): {e}"))?;
        let g = graphics(&m, p)?;
        let shared = size_of(
            &g,
            memtrack::FLAG_SMAPS_UNACCOUNTED | memtrack::FLAG_SHARED_PSS,
        );
        let private = size_of(
            &g,
            memtrack::FLAG_SMAPS_UNACCOUNTED | memtrack::FLAG_PRIVATE,
        );
        ensure!(
            shared == Some(2 * MIB) && private == Some(0),
            "pid {p}: GRAPHICS {g:?} (want 2 MiB shared pss, 0 private)"
        );
        ensure!(
            pm.pssBytes as u64 == 2 * MIB,
            "getProcessMemory({p}) pss {} disagrees",
            pm.pssBytes
        );
        // Types never overlap: nothing of it under another type.
        for t in [
            MemtrackType::CAMERA,
            MemtrackType::MULTIMEDIA,
            MemtrackType::GL,
            MemtrackType::OTHER,
        ] {
            let r = m.getMemory(p, t).map_err(|e| e.to_string())?;
            let total: i64 = r.iter().map(|r| r.sizeInBytes).sum();
            ensure!(total == 0, "pid {p}, type {}: {total} bytes", t.0);
        }
    }
    // B lets go: A's 4 MiB become private.
    drop(b);
    let _ = alloc.memory_report().map_err(|e| e.to_string())?;
    let g = graphics(&m, a.pid())?;
    ensure!(
        size_of(
            &g,
            memtrack::FLAG_SMAPS_UNACCOUNTED | memtrack::FLAG_PRIVATE
        ) == Some(size)
            && size_of(
                &g,
                memtrack::FLAG_SMAPS_UNACCOUNTED | memtrack::FLAG_SHARED_PSS
            ) == Some(0),
        "after B exited, A's GRAPHICS {g:?} (want 4 MiB private)"
    );
    Ok(())
}

/// `memtrack-hold SIZE`: allocates one buffer, says `holding PID INODE`, holds it.
fn memtrack_hold(args: &[&str]) -> RoleResult {
    let size: u64 = args
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or("memtrack-hold SIZE")?;
    let b = connect()?
        .allocate("system", size, "vts-traced")
        .map_err(|e| e.to_string())?;
    println!("holding {} {}", std::process::id(), b.inode());
    let _ = std::io::stdout().flush();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    Ok("released".into())
}

fn tracefs_write(file: &str, text: &str) -> Result<(), String> {
    std::fs::write(format!("{TRACEFS}/{file}"), text).map_err(|e| format!("{TRACEFS}/{file}: {e}"))
}

fn trace_marker_gets_app_a_rss_counter_and_the_allocation_while_tracing_is_on() -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    if !std::path::Path::new(TRACEFS).join("tracing_on").exists() {
        let st = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .status()
            .map_err(|e| format!("mount tracefs: {e}"))?;
        ensure!(st.success(), "mount -t tracefs failed: {st}");
    }
    // As Android's init does for atrace: the service (uid 1100, no
    // capability) reads tracing_on and writes trace_marker.
    for (path, mode) in [
        ("", 0o755),
        ("/tracing_on", 0o644),
        ("/trace_marker", 0o222),
    ] {
        std::fs::set_permissions(
            format!("{TRACEFS}{path}"),
            std::fs::Permissions::from_mode(mode),
        )
        .map_err(|e| format!("chmod {TRACEFS}{path}: {e}"))?;
    }
    tracefs_write("trace", "")?; // empties the buffer
    tracefs_write("tracing_on", "1")?;
    let result = traced_allocation();
    let _ = tracefs_write("tracing_on", "0");
    result
}

fn traced_allocation() -> Outcome {
    let alloc = connect()?;
    // A scan after tracing went on: the service now knows it is on.
    alloc.memory_report().map_err(|e| e.to_string())?;
    let size = 3 * MIB + 64 * 1024;
    let mut a = Running::start(APP_A, "memtrack-hold", &[&size.to_string()])?;
    let line = a.line()?;
    let mut words = line.split_whitespace().skip(1);
    let (pid, inode): (i32, u64) = match (words.next(), words.next()) {
        (Some(p), Some(i)) => (
            p.parse().map_err(|_| line.clone())?,
            i.parse().map_err(|_| line.clone())?,
        ),
        _ => return Err(format!("app A said {line:?}")),
    };
    // The scan this report makes writes A's changed figures.
    alloc.memory_report().map_err(|e| e.to_string())?;
    let trace = std::fs::read_to_string(format!("{TRACEFS}/trace"))
        .map_err(|e| format!("{TRACEFS}/trace: {e}"))?;
    let rss = format!("C|{pid}|mem.dmabuf.rss|{size}");
    let pss = format!("C|{pid}|mem.dmabuf.pss|{size}");
    let alloc_event =
        format!("|dmabuf.alloc heap=system size={size} ino={inode} owner=uid {APP_A} pid {pid}");
    let marks: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("tracing_mark_write"))
        .collect();
    ensure!(
        marks.iter().any(|l| l.ends_with(&rss)) && marks.iter().any(|l| l.ends_with(&pss)),
        "no {rss} / {pss} in the trace; its markers:\n{}",
        marks.join("\n")
    );
    ensure!(
        marks
            .iter()
            .any(|l| l.contains("I|") && l.ends_with(&alloc_event)),
        "no allocation instant {alloc_event:?}; markers:\n{}",
        marks.join("\n")
    );
    println!("  trace: {} marker lines, A's counter found", marks.len());
    Ok(())
}
