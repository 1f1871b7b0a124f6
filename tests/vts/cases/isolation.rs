//! Who may touch what: the heap devices stay root-only, only the service's
//! uid may register under `vendor.dmabuf.*`, and the dump reaches root.

use std::process::Command;

use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::cases::lifecycle::start_holder;
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::stand_in::SERVICE_UID;
use crate::support::{connect, KIB};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "app_uid_cannot_open_dma_heap_system_but_allocates_through_the_service",
            run: app_uid_cannot_open_dma_heap_system_but_allocates_through_the_service,
        },
        Case {
            name: "app_uid_cannot_open_udmabuf_directly",
            run: app_uid_cannot_open_udmabuf_directly,
        },
        Case {
            name: "app_uid_cannot_register_vendor_dmabuf_service",
            run: app_uid_cannot_register_vendor_dmabuf_service,
        },
        Case {
            name: "service_runs_as_its_own_uid_with_no_capability_in_any_set_of_any_thread",
            run: service_runs_as_its_own_uid_with_no_capability_in_any_set_of_any_thread,
        },
        Case {
            name: "rsb_service_dump_prints_the_service_dump",
            run: rsb_service_dump_prints_the_service_dump,
        },
    ]
}

const EACCES: i32 = 13;

fn app_cannot_open(path: &str) -> Outcome {
    // Root can (the check below is about permissions, not a missing node).
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("root cannot open {path} either: {e}"))?;
    for uid in [APP_A, APP_B] {
        let got = app::run_as(uid, "open", &[path])?;
        ensure!(
            got == format!("errno {EACCES}"),
            "uid {uid} opening {path}: expected errno {EACCES} (EACCES), got {got:?}"
        );
    }
    Ok(())
}

fn app_uid_cannot_open_dma_heap_system_but_allocates_through_the_service() -> Outcome {
    app_cannot_open("/dev/dma_heap/system")?;
    for uid in [APP_A, APP_B] {
        let got = app::run_as(uid, "alloc-one", &["system"])?;
        ensure!(
            got == "ok",
            "uid {uid} allocating through the service: {got}"
        );
    }
    Ok(())
}

fn app_uid_cannot_open_udmabuf_directly() -> Outcome {
    app_cannot_open("/dev/udmabuf")
}

/// The policy refuses `add` under vendor.dmabuf.* to app uids (EX_SECURITY),
/// both for a new instance and for the live service's own name, while the
/// service uid may add (so the refusal is the policy, not a broken hub).
fn app_uid_cannot_register_vendor_dmabuf_service() -> Outcome {
    for uid in [APP_A, APP_B] {
        for name in [
            "vendor.dmabuf.IDmaBufAllocator/impostor",
            dmabufd::SERVICE_NAME,
        ] {
            let got = app::run_as(uid, "register", &[name])?;
            ensure!(
                got == "refused Security",
                "uid {uid} adding {name}: expected a Security refusal, got {got:?}"
            );
        }
    }
    let control = app::run_as(
        SERVICE_UID,
        "register",
        &["vendor.dmabuf.IVtsControl/probe"],
    )?;
    ensure!(
        control == "ok",
        "the service uid {SERVICE_UID} could not add under vendor.dmabuf.*: {control}"
    );
    Ok(())
}

/// Every capability set of every thread of the service is empty: with the
/// BPF scan source (loaded while root) it needs none to read other uids'
/// buffers; the report cases prove it still does.
fn service_runs_as_its_own_uid_with_no_capability_in_any_set_of_any_thread() -> Outcome {
    let pid = proc_scan::service_pid()?;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let want = SERVICE_UID.to_string();
    for key in ["Uid", "Gid"] {
        let ids = line(key);
        ensure!(
            ids.len() == 4 && ids.iter().all(|id| *id == want),
            "service {key} (real, effective, saved, fs) is {ids:?}, want {want}"
        );
    }
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let task = task.map_err(|e| e.to_string())?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread exited meanwhile
        };
        threads += 1;
        for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let caps = status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .ok_or_else(|| format!("no {key} in {}/status", task.path().display()))?;
            ensure!(
                caps == 0,
                "thread {} of the service has {key} {caps:#x}; want none",
                task.file_name().to_string_lossy()
            );
        }
    }
    ensure!(
        threads > 1,
        "only {threads} thread(s) read; expected the binder threads too"
    );
    Ok(())
}

/// `rsb_service dump` reaches the live service (a buffer an app holds right
/// now shows up with its inode) and passes arguments through (`--pid`).
fn rsb_service_dump_prints_the_service_dump() -> Outcome {
    let holder = start_holder(APP_A, "system", 64 * KIB, 1, 0)?;
    let inode = holder.inodes[0].to_string();
    let pid = holder.child.id().to_string();
    for args in [vec![], vec!["--pid", pid.as_str()]] {
        let out = Command::new("rsb_service")
            .args(["dump", dmabufd::SERVICE_NAME])
            .args(&args)
            .output()
            .map_err(|e| format!("running rsb_service: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "rsb_service dump {args:?} exited {}: {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            stdout
                .split(|c: char| !c.is_ascii_digit())
                .any(|w| w == inode),
            "rsb_service dump {args:?} does not show the held buffer (inode {inode}): {stdout:?}"
        );
    }
    Ok(())
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("open", open_device),
        ("register", register),
        ("alloc-one", alloc_one),
    ]
}

/// `open PATH`: tries to open PATH read-write; prints `ok` or `errno N`.
fn open_device(args: &[&str]) -> RoleResult {
    let [path] = args else {
        return Err("open PATH".into());
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Ok("ok".into()),
        Err(e) => Ok(format!("errno {}", e.raw_os_error().unwrap_or(-1))),
    }
}

/// `register NAME`: tries to register an allocator under NAME with rsb_hub;
/// prints `ok` or `refused <exception code>`.
fn register(args: &[&str]) -> RoleResult {
    let [name] = args else {
        return Err("register NAME".into());
    };
    rsbinder::ProcessState::init_default().map_err(|e| format!("binder init: {e}"))?;
    match rsbinder::hub::add_service(name, crate::stand_in::new_binder()) {
        Ok(()) => Ok("ok".into()),
        Err(status) => Ok(format!("refused {:?}", status.exception_code())),
    }
}

/// `alloc-one HEAP`: one 64 KiB buffer through the service.
fn alloc_one(args: &[&str]) -> RoleResult {
    let [heap] = args else {
        return Err("alloc-one HEAP".into());
    };
    let buf = connect()?
        .allocate(heap, 64 * KIB, "vts-app")
        .map_err(|e| format!("allocate: {e}"))?;
    ensure!(buf.size() == 64 * KIB, "size {}", buf.size());
    Ok("ok".into())
}
