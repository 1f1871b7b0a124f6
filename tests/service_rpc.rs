//! The allocator service over RPC binder with the memfd heap: real service
//! process, real client processes.

mod common;

use std::io::BufRead;
use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::Service;
use dmabufd::aidl::vendor::dmabuf::{ErrorCode::ErrorCode, HeapKind::HeapKind};
use dmabufd::sys::SyncDirection;

const CONFIG: &str = r#"
[heaps]
default_max_size = "16M"
[aliases]
camera = "system"
"#;

#[test]
fn heaps_lists_the_memfd_system_heap_with_its_alias() {
    let svc = Service::start(CONFIG);
    let heaps = svc.connect().heaps().unwrap();
    assert_eq!(heaps.len(), 1, "{heaps:?}");
    assert_eq!(heaps[0].name, "system");
    assert_eq!(heaps[0].kind, HeapKind::MEMFD);
    assert_eq!(heaps[0].maxAllocationSize, 16 << 20);
    assert_eq!(heaps[0].aliases, vec!["camera".to_string()]);
}

#[test]
fn allocations_of_several_sizes_are_page_rounded_named_and_counted() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let mut held = Vec::new();
    for (size, want) in [
        (1u64, 4096u64),
        (4096, 4096),
        (5000, 8192),
        (64 << 10, 64 << 10),
        (1 << 20, 1 << 20),
    ] {
        let name = format!("buf-{size}");
        let b = a.allocate("camera", size, &name).unwrap();
        assert_eq!(b.size(), want);
        assert_eq!(b.heap(), "system");
        assert_eq!(b.name().unwrap(), name);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", b.fd().as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), format!("/memfd:{name} (deleted)"));
        let st = nix::sys::stat::fstat(b.fd()).unwrap();
        assert_eq!((st.st_ino, st.st_size as u64), (b.inode(), want));
        held.push(b);
    }
    let h = &a.heaps().unwrap()[0];
    assert_eq!(h.bufferCount, 5);
    assert_eq!(
        h.allocatedBytes as u64,
        4096 + 4096 + 8192 + (64 << 10) + (1 << 20)
    );
    // An empty name is the heap's name.
    assert_eq!(
        a.allocate("system", 1, "").unwrap().name().unwrap(),
        "system"
    );
}

#[test]
fn mapped_buffer_reads_zero_then_what_was_written() {
    let svc = Service::start(CONFIG);
    let mut b = svc.connect().allocate("system", 8192, "rw").unwrap();
    {
        let mut m = b.map(SyncDirection::ReadWrite).unwrap();
        assert_eq!(m.len(), 8192);
        assert!(m.to_vec().iter().all(|&x| x == 0));
        m.fill(0xaa).unwrap();
        m.write_at(8190, &[1, 2]).unwrap();
        let past = m.write_at(8191, &[1, 2]).unwrap_err();
        assert!(past.to_string().contains("past the end"), "{past}");
    }
    let mut m = b.map(SyncDirection::Read).unwrap();
    let bytes = m.to_vec();
    assert!(bytes[..8190].iter().all(|&x| x == 0xaa));
    assert_eq!(bytes[8190..], [1, 2]);
    let e = m.fill(0).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied,
        "a read mapping gives no write access: {e}"
    );
}

fn code_of(r: Result<dmabufd::client::DmaBuffer, dmabufd::client::Error>) -> (ErrorCode, String) {
    let e = r.expect_err("request should be refused");
    (
        e.error_code()
            .unwrap_or_else(|| panic!("no service code: {e}")),
        e.message().to_string(),
    )
}

#[test]
fn every_refusal_has_its_code_and_says_what_is_allowed_and_the_service_keeps_serving() {
    let svc = Service::start(
        r#"
[heaps]
default_max_size = "1T"
[quota]
default_buffers = 2
"#,
    );
    let a = svc.connect();
    let (c, m) = code_of(a.allocate("gpu", 4096, ""));
    assert_eq!(c, ErrorCode::UNKNOWN_HEAP);
    assert!(
        m.contains("\"gpu\"") && m.contains("available: system"),
        "{m}"
    );
    for size in [0i64, -1, i64::MIN] {
        let (c, m) = code_of(a.allocate_raw("system", size, "", 0));
        assert_eq!(c, ErrorCode::INVALID_SIZE, "size {size}");
        assert!(m.contains("not positive"), "{m}");
    }
    let (c, m) = code_of(a.allocate_raw("system", (1i64 << 40) + 1, "", 0));
    assert_eq!(c, ErrorCode::INVALID_SIZE);
    assert!(m.contains("maximum of 1099511627776"), "{m}");
    let (c, m) = code_of(a.allocate("system", 4096, &"x".repeat(32)));
    assert_eq!(c, ErrorCode::INVALID_NAME);
    assert!(m.contains("31 bytes"), "{m}");
    let (c, _) = code_of(a.allocate("system", 4096, "tab\there"));
    assert_eq!(c, ErrorCode::INVALID_NAME);
    let (c, m) = code_of(a.allocate_with_flags("system", 4096, "", 0x10));
    assert_eq!(c, ErrorCode::INVALID_FLAGS);
    assert!(m.contains("FLAG_NO_CPU_ACCESS"), "{m}");
    // More than the machine's memory: refused before the kernel sees it.
    let (c, m) = code_of(a.allocate("system", 1 << 40, ""));
    assert_eq!(c, ErrorCode::NO_MEMORY);
    assert!(m.contains("available"), "{m}");
    // Quota: two buffers per uid.
    let _b1 = a.allocate("system", 4096, &"n".repeat(31)).unwrap();
    let _b2 = a.allocate("system", 4096, "two").unwrap();
    let (c, m) = code_of(a.allocate("system", 4096, "three"));
    assert_eq!(c, ErrorCode::QUOTA_EXCEEDED);
    assert!(m.contains("2 buffers") && m.contains("limit"), "{m}");
    // Still serving, accounting intact.
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.bufferCount, h.allocatedBytes), (2, 8192));
}

#[test]
fn the_service_keeps_no_fd_and_no_mapping_of_buffers_it_handed_out() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let mut held: Vec<_> = (0..16)
        .map(|i| a.allocate("system", 64 << 10, &format!("b{i}")).unwrap())
        .collect();
    let _maps: Vec<_> = held
        .iter_mut()
        .map(|b| b.map(SyncDirection::Read).unwrap())
        .collect();
    // The client really holds them ...
    assert_eq!(a.heaps().unwrap()[0].bufferCount, 16);
    // ... and the service process holds none of them.
    assert_eq!(svc.buffer_fds_settled(), Vec::<String>::new());
    assert_eq!(svc.buffer_maps(), Vec::<String>::new());
}

#[test]
fn a_buffer_passed_to_another_process_is_readable_there() {
    let svc = Service::start(CONFIG);
    let mut b = svc.connect().allocate("system", 4096, "passed").unwrap();
    b.map(SyncDirection::Write).unwrap().fill(0x5a).unwrap();
    let (mut child, line) = common::pass_to_viewer(&svc, &b);
    assert!(line.contains("\"passed\""), "{line}");
    assert!(line.contains(&format!("inode {}", b.inode())), "{line}");
    assert!(line.contains("first byte 0x5a"), "{line}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// Runs 16 dmabufctl processes at once; each must allocate.
fn sixteen_concurrent_clients(svc: &Service, round: u32) {
    let children: Vec<_> = (0..16)
        .map(|i| {
            svc.ctl()
                .args(["alloc", "system", "64K", "--name", &format!("r{round}-{i}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "allocated 65536 bytes from system named \"r{round}-"
            )),
            "{text}"
        );
    }
}

#[test]
fn many_concurrent_client_processes_all_succeed_without_fd_leaks() {
    let svc = Service::start(CONFIG);
    let base = svc.resting_fd_count();
    // After each burst of 16 clients, once their sessions are reaped, the
    // service is back to the fds it had before any client.
    for round in 0..4 {
        sixteen_concurrent_clients(&svc, round);
        let after = svc.fds_within(base, std::time::Duration::from_secs(30));
        assert!(
            after <= base,
            "service fds {after} after burst {round} of 16 clients, {base} before any: {:?}",
            svc.fd_targets()
        );
    }
}

#[test]
fn a_client_killed_while_holding_buffers_changes_nothing_for_others() {
    let mut svc = Service::start(CONFIG);
    let mut victim = svc
        .ctl()
        .args(["alloc", "system", "1M", "--name", "victim", "--hold", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(victim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("victim"), "{line}");
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(svc.is_running());
    let a = svc.connect();
    assert_eq!(
        a.allocate("system", 4096, "after").unwrap().name().unwrap(),
        "after"
    );
}

#[test]
fn dmabufctl_finds_the_service_and_reports_refusals_with_non_zero_exit() {
    let svc = Service::start(CONFIG);
    let out = svc.ctl().arg("heaps").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("system") && text.contains("MEMFD") && text.contains("camera"),
        "{text}"
    );
    // --rpc works as well as the environment variable.
    let out = std::process::Command::new(common::dmabufctl_exe())
        .arg("--rpc")
        .arg(&svc.socket)
        .args(["alloc", "nope", "4K"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown heap \"nope\"") && err.contains("UNKNOWN_HEAP"),
        "{err}"
    );
    let out = svc.ctl().args(["alloc", "system", "12Q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("K, M or G"));
}

#[test]
fn owner_uid_is_the_calling_process_uid() {
    if !common::needs_root("owner_uid_is_the_calling_process_uid") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let svc = Service::start(CONFIG);
    let mut app = svc
        .ctl()
        .args([
            "alloc",
            "system",
            "4K",
            "--name",
            "app-10001",
            "--hold",
            "30",
        ])
        .uid(10001)
        .gid(10001)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(app.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("app-10001"), "{line}");
    let dump = svc.connect().service().renderDump(&[]).unwrap();
    let dump = String::from_utf8_lossy(&dump);
    let row = dump
        .lines()
        .find(|l| l.contains("app-10001"))
        .unwrap_or_else(|| panic!("{dump}"));
    // Owner column: uid/comm:pid of the allocating process.
    assert!(
        row.contains(&format!("10001/dmabufctl:{}", app.id())),
        "{row}"
    );
    app.kill().unwrap();
    app.wait().unwrap();
}

#[test]
fn freed_buffers_stop_counting_against_the_quota() {
    let svc = Service::start("[quota]\ndefault_buffers = 4\n");
    let a = svc.connect();
    let first: Vec<_> = (0..4)
        .map(|i| a.allocate("system", 4096, &format!("a{i}")).unwrap())
        .collect();
    let e = a.allocate("system", 4096, "over").unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::QUOTA_EXCEEDED), "{e}");
    drop(first);
    // Past the in-flight grace, a refusal first looks for freed buffers.
    std::thread::sleep(dmabufd::accounting::FREED_GRACE + std::time::Duration::from_millis(300));
    let again: Vec<_> = (0..4)
        .map(|i| a.allocate("system", 4096, &format!("b{i}")).unwrap())
        .collect();
    assert_eq!(again.len(), 4);
    assert_eq!(
        a.heaps().unwrap()[0].bufferCount,
        4,
        "the freed four were dropped from the registry"
    );
    let dump = String::from_utf8(a.service().renderDump(&[]).unwrap()).unwrap();
    assert!(
        dump.contains("4 buffers allocated through dmabufd live, 4 freed since start"),
        "{dump}"
    );
}

#[test]
fn one_hundred_threads_of_one_client_allocate_map_and_free_concurrently() {
    // libdmabufheap's concurrency test, through the service.
    let svc = Service::start(CONFIG);
    let a = std::sync::Arc::new(svc.connect());
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut b = a.allocate("system", 4096, &format!("t{i}")).unwrap();
                let mut m = b.map(SyncDirection::ReadWrite).unwrap();
                m.write_at(0, &[i as u8]).unwrap();
                assert_eq!(m.to_vec()[0], i as u8);
                drop(m);
                b.inode()
            })
        })
        .collect();
    let mut inodes: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    inodes.sort();
    inodes.dedup();
    assert_eq!(inodes.len(), 100, "every thread got a buffer of its own");
    assert_eq!(svc.buffer_fds_settled(), Vec::<String>::new());
}

#[test]
fn a_huge_name_or_heap_string_is_refused_briefly_and_the_service_survives() {
    let mut svc = Service::start(CONFIG);
    let a = svc.connect();
    let big = "x".repeat(256 << 10);
    let (c, m) = code_of(a.allocate("system", 4096, &big));
    assert_eq!(c, ErrorCode::INVALID_NAME);
    assert!(m.len() < 200, "message of {} bytes", m.len());
    let (c, _) = code_of(a.allocate(&big, 4096, ""));
    assert_eq!(c, ErrorCode::UNKNOWN_HEAP);
    assert!(svc.is_running());
    assert!(a.allocate("system", 4096, "fine").is_ok());
}

#[test]
fn clients_killed_mid_call_leave_the_service_serving_and_its_accounting_whole() {
    let mut svc = Service::start(CONFIG);
    // Kill clients at every moment: every third once it said it holds its
    // buffer (certainly after the call), the others 0-12 ms after they
    // start (before or during it, wherever that falls on this machine).
    let mut after_call = 0;
    for i in 0..24u64 {
        let mut c = svc
            .ctl()
            .args([
                "alloc",
                "system",
                "1M",
                "--name",
                &format!("doomed-{i}"),
                "--hold",
                "30",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        if i % 3 == 0 {
            let mut line = String::new();
            std::io::BufReader::new(c.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("allocated "), "client {i}: {line:?}");
            after_call += 1;
        } else {
            std::thread::sleep(std::time::Duration::from_micros(500 * i));
        }
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert!(svc.is_running());
    let a = svc.connect();
    let kept = a.allocate("system", 4096, "survivor").unwrap();
    // Every record of the dead clients' buffers is dropped (on this memfd
    // path once past the in-flight grace): only the survivor is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = a.memory_report().unwrap();
        if (r.totalCount, r.totalBytes) == (1, 4096) || std::time::Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!((r.totalCount, r.totalBytes), (1, 4096), "{:?}", r.buffers);
    assert_eq!(r.buffers[0].inode as u64, kept.inode());
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.bufferCount, h.allocatedBytes), (1, 4096));
    // The clients killed after their call had their buffer, and it was
    // counted freed.
    let dump = String::from_utf8(a.service().renderDump(&[]).unwrap()).unwrap();
    let freed: u64 = dump
        .lines()
        .find_map(|l| l.strip_suffix(" freed since start"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{dump}"));
    assert!(
        freed >= after_call,
        "{freed} freed; {after_call} clients were killed holding their buffer"
    );
}

#[test]
fn sync_file_and_rename_on_the_memfd_heap_fail_with_clear_errors() {
    let svc = Service::start(CONFIG);
    let b = svc.connect().allocate("system", 4096, "memfd").unwrap();
    assert!(!b.is_dmabuf());
    let e = b.export_sync_file(SyncDirection::Read).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("not a dma-buf"), "{e}");
    let e = b.set_name("other").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    assert_eq!(b.name().unwrap(), "memfd");
}

/// Sends `code` (FIRST_CALL_TRANSACTION + offset) as a raw oneway
/// transaction with the arguments `write` puts in the parcel.
fn send_oneway(
    a: &dmabufd::client::Allocator,
    offset: u32,
    write: impl FnOnce(&mut rsbinder::Parcel),
) {
    let binder = a.service().as_binder();
    let remote = binder.as_remote().expect("a remote proxy");
    let mut data = remote.prepare_transact(true).unwrap();
    write(&mut data);
    remote
        .submit_transact(
            rsbinder::FIRST_CALL_TRANSACTION + offset,
            &data,
            rsbinder::FLAG_ONEWAY,
        )
        .unwrap();
}

#[test]
fn oneway_transactions_of_two_way_methods_are_refused_and_change_nothing() {
    use dmabufd::aidl::vendor::dmabuf::AllocationRequest::AllocationRequest;
    let svc = Service::start_logged(CONFIG);
    let a = svc.connect();
    // allocate (code + 1) sent oneway: the reply, and the fd in it, would be
    // dropped, but the record would stay charged to the caller.
    send_oneway(&a, 1, |p| {
        p.write(&AllocationRequest {
            heapName: "system".into(),
            size: 1 << 20,
            name: "oneway".into(),
            flags: 0,
        })
        .unwrap()
    });
    let log = svc.wait_for_log("oneway transaction of allocate refused");
    assert!(log.contains("call it two-way"), "{log}");
    // resetHighWaterMark(0) (code + 4) sent oneway.
    send_oneway(&a, 4, |p| p.write(&0i32).unwrap());
    svc.wait_for_log("oneway transaction of resetHighWaterMark refused");
    let h = &a.heaps().unwrap()[0];
    assert_eq!(
        (h.bufferCount, h.allocatedBytes),
        (0, 0),
        "oneway allocate recorded"
    );
    let dump = String::from_utf8(a.service().renderDump(&[]).unwrap()).unwrap();
    assert!(!dump.contains("oneway"), "{dump}");
    // Two-way calls on the same connection are served as before.
    assert!(a.allocate("system", 4096, "two-way").is_ok());
}

/// Runs `dmabufd --rpc path` (config: `dir/dmabufd.toml`) and returns its
/// exit status and stderr, or None once it serves on `path` or is still
/// running after 10 s (then it is killed).
fn run_service_at(
    dir: &std::path::Path,
    path: &std::path::Path,
) -> Option<(std::process::ExitStatus, String)> {
    run_service_with(CONFIG, dir, path)
}

/// [`run_service_at`] with the config `config`.
fn run_service_with(
    config: &str,
    dir: &std::path::Path,
    path: &std::path::Path,
) -> Option<(std::process::ExitStatus, String)> {
    use std::io::Read;
    let cfg = dir.join("dmabufd.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dmabufd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--rpc")
        .arg(path)
        .env("DMABUFD_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status, err));
        }
        let serving = std::os::unix::net::UnixStream::connect(path).is_ok();
        if serving || std::time::Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn rpc_path_on_a_regular_file_is_refused_and_the_file_left_intact() {
    let dir = std::env::temp_dir().join(format!("dmabufd-rpc-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("precious.toml");
    std::fs::write(&file, "keep me\n").unwrap();
    let r = run_service_at(&dir, &file);
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("keep me\n"),
        "--rpc deleted or changed a regular file"
    );
    let (status, err) = r.expect("dmabufd kept running on a regular file's path");
    assert!(!status.success());
    assert!(
        err.contains(&file.display().to_string()) && err.contains("not a socket"),
        "{err}"
    );
    // A directory is refused the same way.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (status, err) = run_service_at(&dir, &sub).expect("dmabufd kept running on a directory");
    assert!(!status.success() && err.contains("not a socket"), "{err}");
    assert!(sub.is_dir());
    // A stale socket (nobody listening) is replaced.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(
        run_service_at(&dir, &stale).is_none(),
        "a stale socket was not replaced"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_alias_named_like_a_heap_is_a_start_up_error() {
    let dir = std::env::temp_dir().join(format!("dmabufd-alias-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // "system" is always a heap (a kernel one, else the memfd fallback).
    let r = run_service_with(
        "[aliases]\nsystem = \"udmabuf\"\n",
        &dir,
        &dir.join("dmabufd.sock"),
    );
    let (status, err) = r.expect("dmabufd started with an alias shadowing the system heap");
    assert!(!status.success());
    assert!(
        err.contains("aliases.system") && err.contains("named like a heap"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -9` of the service loses no owner: the registry journal next to
/// the socket is reloaded, buffers still held keep their owner and count
/// against the quota, and a buffer freed while the service was down is
/// dropped.
#[test]
fn a_killed_and_restarted_service_keeps_owners_and_quota_of_live_buffers() {
    let mut svc = Service::start("[quota]\ndefault_buffers = 3\n");
    let a = svc.connect();
    let kept: Vec<_> = (0..2)
        .map(|i| a.allocate("system", 4096, &format!("kept{i}")).unwrap())
        .collect();
    let freed = a.allocate("system", 8192, "freed-while-down").unwrap();
    assert_eq!(a.heaps().unwrap()[0].bufferCount, 3);
    drop(a);

    svc.kill_and_restart();
    drop(freed);
    // The new instance checks the journal against what is alive when it
    // starts; restart again so the freed one is certainly gone by then.
    svc.kill_and_restart();

    let a = svc.connect();
    assert_eq!(
        a.heaps().unwrap()[0].bufferCount,
        2,
        "the two held buffers survive, the freed one is dropped"
    );
    let me = std::process::id() as i32;
    let mine = a.process_memory(me).unwrap();
    for k in &kept {
        let b = mine
            .buffers
            .iter()
            .find(|b| b.inode == k.inode() as i64)
            .expect("held buffer in the report");
        assert_eq!(b.ownerPid, me, "owner kept across the restart");
    }
    // Quota: two live + one more = three; a fourth is refused.
    let third = a.allocate("system", 4096, "third").unwrap();
    let e = a.allocate("system", 4096, "fourth").unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::QUOTA_EXCEEDED), "{e}");
    drop(third);
}
