//! The memtrack HAL over RPC binder: a real dmabufd serves
//! android.hardware.memtrack.IMemtrack/default on the allocator's socket.

mod common;

use common::Service;
use dmabufd::memtrack::{self, FLAG_PRIVATE, FLAG_SHARED_PSS, FLAG_SMAPS_UNACCOUNTED};
use dmabufd::memtrack_aidl::android::hardware::memtrack::{
    IMemtrack::IMemtrack, MemtrackType::MemtrackType,
};
use rsbinder::{ExceptionCode, Strong};

const CONFIG: &str = r#"
[aliases]
camera = "system"
"#;

fn types() -> [MemtrackType; 5] {
    [
        MemtrackType::OTHER,
        MemtrackType::GL,
        MemtrackType::GRAPHICS,
        MemtrackType::MULTIMEDIA,
        MemtrackType::CAMERA,
    ]
}

fn memtrack(svc: &Service) -> Strong<dyn IMemtrack> {
    dmabufd::transport::connect_memtrack_rpc(&svc.socket).expect("memtrack on the RPC socket")
}

#[test]
fn memtrack_is_served_on_the_allocator_socket_as_frozen_v1() {
    let svc = Service::start(CONFIG);
    let m = memtrack(&svc);
    assert_eq!(m.getInterfaceVersion().unwrap(), 1);
    assert_eq!(
        m.getInterfaceHash().unwrap(),
        "25438132a462bf5b6f4334d966c95b70824e66c0"
    );
    // The allocator is still there on the same socket.
    assert!(!svc.connect().heaps().unwrap().is_empty());
    let gpus = m.getGpuDeviceInfo().unwrap();
    let want = memtrack::gpu_devices(std::path::Path::new(memtrack::DRM_CLASS_DIR));
    let got: Vec<(i32, String)> = gpus.into_iter().map(|d| (d.id, d.name)).collect();
    let want: Vec<(i32, String)> = want.into_iter().map(|d| (d.id, d.name)).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_pids_and_types_get_the_interface_exceptions() {
    let svc = Service::start(CONFIG);
    let m = memtrack(&svc);
    for t in types().into_iter().chain([MemtrackType(-1)]) {
        let e = m.getMemory(-1, t).unwrap_err();
        assert_eq!(
            e.exception_code(),
            ExceptionCode::IllegalArgument,
            "type {}",
            t.0
        );
    }
    let me = std::process::id() as i32;
    for t in [-1, 5] {
        let e = m.getMemory(me, MemtrackType(t)).unwrap_err();
        assert_eq!(
            e.exception_code(),
            ExceptionCode::UnsupportedOperation,
            "type {t}"
        );
        assert!(format!("{e}").contains("GRAPHICS (2)"), "{e}");
    }
    for t in types() {
        let r = m.getMemory(me, t).unwrap();
        let r0 = m.getMemory(0, t).unwrap();
        if t == MemtrackType::GL || t == MemtrackType::OTHER {
            assert!(r.is_empty() && r0.is_empty(), "type {}: {r:?} {r0:?}", t.0);
        } else {
            let flags: Vec<i32> = r.iter().map(|x| x.flags).collect();
            assert_eq!(
                flags,
                [
                    FLAG_SMAPS_UNACCOUNTED | FLAG_SHARED_PSS,
                    FLAG_SMAPS_UNACCOUNTED | FLAG_PRIVATE
                ]
            );
            assert!(r0.iter().all(|x| x.sizeInBytes == 0), "pid 0: {r0:?}");
        }
    }
}

#[test]
fn other_pids_are_refused_to_an_unprivileged_caller() {
    let svc = Service::start(CONFIG);
    let m = memtrack(&svc);
    let r = m.getMemory(1, MemtrackType::GRAPHICS);
    if nix::unistd::geteuid().is_root() {
        // Allowed; where pid 1 cannot be read (a container) its figures are
        // unknown, which is EX_ILLEGAL_STATE naming why, never zero.
        match r {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.exception_code(), ExceptionCode::IllegalState, "{e}");
                assert!(format!("{e}").contains("could not be read"), "{e}");
            }
        }
    } else {
        assert_eq!(r.unwrap_err().exception_code(), ExceptionCode::Security);
    }
}

/// memfd-heap buffers are shmem, not DMA-BUFs: memtrack leaves them out
/// (smaps shows them where mapped), while the allocator's report has them.
#[test]
fn memfd_heap_buffers_are_not_graphics() {
    let svc = Service::start(CONFIG);
    let m = memtrack(&svc);
    let alloc = svc.connect();
    let _held = alloc.allocate("camera", 1 << 20, "held").unwrap();
    let me = std::process::id() as i32;
    assert_eq!(alloc.process_memory(me).unwrap().rssBytes, 1 << 20);
    for t in [MemtrackType::GRAPHICS, MemtrackType::CAMERA] {
        let total: i64 = m
            .getMemory(me, t)
            .unwrap()
            .iter()
            .map(|r| r.sizeInBytes)
            .sum();
        assert_eq!(total, 0, "type {}", t.0);
    }
}

#[test]
fn memtrack_can_be_turned_off() {
    let svc = Service::start("[memtrack]\nenabled = false\n");
    assert!(dmabufd::transport::connect_memtrack_rpc(&svc.socket).is_err());
    assert!(!svc.connect().heaps().unwrap().is_empty());
}
