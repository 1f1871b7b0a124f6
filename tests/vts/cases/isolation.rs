//! Who may touch what: the heap devices stay root-only, only the service's
//! uid may register under `vendor.dmabuf.*`, and the dump reaches root.

use std::process::Command;

use crate::app::{self, APP_A, APP_B};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::stand_in::SERVICE_UID;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "app_uid_cannot_open_dma_heap_system_directly",
            run: app_uid_cannot_open_dma_heap_system_directly,
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

fn app_uid_cannot_open_dma_heap_system_directly() -> Outcome {
    app_cannot_open("/dev/dma_heap/system")
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
    let control = app::run_as(SERVICE_UID, "register", &["vendor.dmabuf.IVtsControl/probe"])?;
    ensure!(
        control == "ok",
        "the service uid {SERVICE_UID} could not add under vendor.dmabuf.*: {control}"
    );
    Ok(())
}

fn rsb_service_dump_prints_the_service_dump() -> Outcome {
    let out = Command::new("rsb_service")
        .args(["dump", dmabufd::SERVICE_NAME])
        .output()
        .map_err(|e| format!("running rsb_service: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "rsb_service dump exited {}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !stdout.trim().is_empty(),
        "rsb_service dump printed nothing"
    );
    Ok(())
}
