//! Batch allocation and reserve pools against a real dmabufd over RPC
//! binder (memfd heap): all-or-nothing batches, pooled buffers handed out
//! fresh and named, the pool on the service's own report line, no fd of a
//! handed-out buffer left in the service, and clear start-up errors.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Service;
use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use dmabufd::client::Allocator;
use dmabufd::sys::SyncDirection;

fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Waits (up to 20 s) until every pool class of `heap` is full.
fn wait_pool_full(a: &Allocator, heap: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = a
            .heaps()
            .unwrap()
            .into_iter()
            .find(|h| h.name == heap)
            .unwrap();
        if !h.poolClasses.is_empty()
            && h.poolClasses
                .iter()
                .all(|c| c.availableCount == c.targetCount)
        {
            return h.pooledBytes;
        }
        assert!(Instant::now() < deadline, "pool never filled: {h:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_batch_is_one_round_trip_of_named_owned_buffers_and_all_or_nothing_on_quota() {
    let svc = Service::start(&format!(
        "[[quota.uid]]\nuid = {}\nbuffers = 20\nbytes = \"1M\"\n",
        my_uid()
    ));
    let a = svc.connect();
    let v = a.allocate_batch("system", 4096, "ui-tile", 0, 16).unwrap();
    assert_eq!(v.len(), 16);
    let inodes: BTreeSet<u64> = v.iter().map(|b| b.inode()).collect();
    assert_eq!(inodes.len(), 16);
    for b in &v {
        assert_eq!(b.size(), 4096);
        assert_eq!(b.name().unwrap(), "ui-tile");
    }
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.bufferCount, h.allocatedBytes), (16, 16 * 4096));
    // 8 more would make 24 buffers: refused whole, usage unchanged.
    let e = a.allocate_batch("system", 4096, "more", 0, 8).unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::QUOTA_EXCEEDED), "{e}");
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.bufferCount, h.allocatedBytes), (16, 16 * 4096));
    assert!(
        svc.buffer_fds_settled().is_empty(),
        "{:?}",
        svc.fd_targets()
    );
    // Out of range counts name the range.
    for n in [0, 65] {
        let e = a.allocate_batch("system", 4096, "", 0, n).unwrap_err();
        assert!(e.message().contains("allowed 1 to 64"), "{e}");
    }
    // dmabufctl alloc --count uses it.
    drop(v);
    let out = svc
        .ctl()
        .args(["alloc", "system", "8K", "--name", "cli", "--count", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("allocated 8192 bytes from system named \"cli\""))
            .count(),
        3,
        "{text}"
    );
}

const POOLED: &str = r#"
[pools]
refill_delay_ms = 100
psi_trigger = ""
min_available = 0
[pools.camera]
classes = [{ size = "64K", count = 4 }]
[aliases]
camera = "system"
"#;

#[test]
fn pooled_buffers_are_handed_out_zeroed_named_and_the_service_keeps_no_fd_of_them() {
    let svc = Service::start(POOLED);
    let a = svc.connect();
    assert_eq!(wait_pool_full(&a, "system"), 4 * 65536);
    let pooled = svc.buffer_inodes();
    assert_eq!(pooled.len(), 4, "{:?}", svc.fd_targets());
    // Held by the service, counted for nobody.
    assert_eq!(a.heaps().unwrap()[0].allocatedBytes, 0);

    let mut b = a.allocate("camera", 65000, "cam-raw").unwrap();
    assert!(pooled.contains(&b.inode()), "not from the pool");
    assert_eq!(b.size(), 65536);
    {
        let m = b.map(SyncDirection::Read).unwrap();
        assert!(m.to_vec().iter().all(|&x| x == 0), "not zero-filled");
    }
    // The service keeps only the three still pooled.
    let deadline = Instant::now() + Duration::from_secs(2);
    while svc.buffer_inodes().contains(&b.inode()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let held = svc.buffer_inodes();
    assert!(!held.contains(&b.inode()), "{:?}", svc.fd_targets());
    assert_eq!(held.len(), 3);
    assert!(svc.buffer_maps().is_empty(), "{:?}", svc.buffer_maps());
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.allocatedBytes, h.pooledBytes), (65536, 3 * 65536));
    assert_eq!(h.poolClasses[0].availableCount, 3);
    assert_eq!(h.poolClasses[0].targetCount, 4);

    // The report: the pool on the service's own line; the buffer is ours,
    // under its requested name; the service holds nothing as a process.
    let dump = String::from_utf8(a.render_dump(&[]).unwrap()).unwrap();
    let line = dump
        .lines()
        .find(|l| l.starts_with("dmabufd pool"))
        .unwrap_or_else(|| panic!("no pool line:\n{dump}"));
    assert!(
        line.contains(&format!("pid {}", svc.pid())) && line.contains("3 buffers, 192 kB"),
        "{line}"
    );
    assert!(line.contains("system 64 kB x 3/4"), "{line}");
    assert!(
        !dump.contains(&format!("dmabufd:{}", svc.pid())) && !dump.contains("dmabufd-pool"),
        "the service appears as a holder:\n{dump}"
    );
    let me = std::process::id() as i32;
    let mine = a.process_memory(me).unwrap();
    assert_eq!(mine.rssBytes, 65536, "{mine:?}");
    assert_eq!(mine.buffers[0].name, "cam-raw");
    let report = a.memory_report().unwrap();
    assert!(
        report
            .processes
            .iter()
            .filter(|p| p.pid == svc.pid())
            .all(|p| p.rssBytes == 0 && p.buffers.is_empty()),
        "the service listed as a process holding buffers"
    );
    assert_eq!(report.totalBytes, 65536, "pool bytes in an app's totals");
    // `dump --proto`: the same pool on its own fields, not in the totals.
    let bytes = a.render_dump(&["--proto".to_string()]).unwrap();
    let proto = <dmabufd::proto::MemoryReport as prost::Message>::decode(bytes.as_slice()).unwrap();
    assert_eq!(proto.pool_pid, svc.pid());
    let classes: Vec<_> = proto
        .pool
        .iter()
        .map(|c| (c.heap.as_str(), c.size, c.target, c.available, c.bytes))
        .collect();
    assert_eq!(
        classes,
        [("system", 65536, 4, 3, 3 * 65536)],
        "{:?}",
        proto.pool
    );
    assert_eq!(proto.total_bytes, 65536);
    assert!(report
        .ownerTotals
        .iter()
        .all(|o| o.bytes == 65536 || o.bytes == 0));
}

#[test]
fn the_pool_refills_after_falling_below_its_low_water_mark() {
    let svc = Service::start(POOLED);
    let a = svc.connect();
    wait_pool_full(&a, "system");
    // 3 of 4 taken: below 50%, refilled once no take came for 100 ms.
    let held: Vec<_> = (0..3)
        .map(|i| a.allocate("system", 65536, &format!("b{i}")).unwrap())
        .collect();
    assert_eq!(wait_pool_full(&a, "system"), 4 * 65536);
    // The refill made fresh buffers: none of them is one a client holds.
    let pooled = svc.buffer_inodes();
    assert!(held.iter().all(|b| !pooled.contains(&b.inode())));
}

#[test]
fn memory_below_the_watermark_drains_the_pool_and_says_so() {
    // No machine has 64 TiB available: the pool never keeps a buffer.
    let svc = Service::start_logged(
        "[pools]\nmin_available = \"64T\"\npsi_trigger = \"\"\n\
         [pools.system]\nclasses = [{ size = \"4K\", count = 2 }]\n",
    );
    let log = svc.wait_for_log("memory pressure (MemAvailable");
    assert!(log.contains("below pools.min_available"), "{log}");
    let a = svc.connect();
    let h = &a.heaps().unwrap()[0];
    assert_eq!(h.pooledBytes, 0);
    assert_eq!(h.poolClasses[0].availableCount, 0);
    // Allocation still works, fresh.
    assert!(a.allocate("system", 4096, "x").is_ok());
}

#[test]
fn bad_pool_config_stops_start_up_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("dmabufd-pool-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (config, wanted) in [
        (
            "[pools.gpu]\nclasses = [{ size = \"1M\", count = 1 }]\n",
            "pools.gpu: no heap or alias named \"gpu\"",
        ),
        (
            "[pools.system]\nclasses = [{ size = 0, count = 1 }]\n",
            "pools.system.classes[0].size = 0: allowed 1 to",
        ),
        (
            "[pools]\nmax_bytes = \"1M\"\n[pools.system]\nclasses = [{ size = \"1M\", count = 2 }]\n",
            "more than pools.max_bytes",
        ),
        (
            "[pools.system]\nclasses = [{ size = \"1M\", count = 5000 }]\n",
            "count = 5000: expected a whole number from 1 to 1024",
        ),
    ] {
        let cfg = dir.join("bad.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmabufd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--rpc")
            .arg(dir.join("s.sock"))
            .env("DMABUFD_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {config:?}");
        assert!(err.contains(wanted), "{config:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
