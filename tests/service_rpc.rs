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
    let b = svc.connect().allocate("system", 8192, "rw").unwrap();
    {
        let mut m = b.map(SyncDirection::ReadWrite).unwrap();
        assert!(m.as_slice().iter().all(|&x| x == 0));
        m.as_mut_slice().unwrap().fill(0xaa);
    }
    let mut m = b.map(SyncDirection::Read).unwrap();
    assert!(m.as_slice().iter().all(|&x| x == 0xaa));
    assert!(
        m.as_mut_slice().is_none(),
        "a read mapping gives no write access"
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
    let held: Vec<_> = (0..16)
        .map(|i| a.allocate("system", 64 << 10, &format!("b{i}")).unwrap())
        .collect();
    let _maps: Vec<_> = held
        .iter()
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
    let b = svc.connect().allocate("system", 4096, "passed").unwrap();
    b.map(SyncDirection::Write)
        .unwrap()
        .as_mut_slice()
        .unwrap()
        .fill(0x5a);
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

/// The service's fd count once it stops changing (sessions of exited
/// clients are reaped asynchronously).
fn settled_fd_count(svc: &Service) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = svc.fd_count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = svc.fd_count();
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn many_concurrent_client_processes_all_succeed_without_fd_leaks() {
    let svc = Service::start(CONFIG);
    // The first burst may grow the server's worker pool (and its fds) for
    // good; a leak grows with every burst, so compare later ones.
    sixteen_concurrent_clients(&svc, 0);
    let before = settled_fd_count(&svc);
    for round in 1..=3 {
        sixteen_concurrent_clients(&svc, round);
    }
    let after = settled_fd_count(&svc);
    assert!(
        after <= before,
        "service fds grew from {before} to {after} over 48 clients: {:?}",
        svc.fd_targets()
    );
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmabufctl"))
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
    if !common::is_root() {
        eprintln!("needs root to run a client under another uid");
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
                let b = a.allocate("system", 4096, &format!("t{i}")).unwrap();
                let mut m = b.map(SyncDirection::ReadWrite).unwrap();
                m.as_mut_slice().unwrap()[0] = i as u8;
                assert_eq!(m.as_slice()[0], i as u8);
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
    // Kill clients at staggered moments: before, during and after their call.
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
                "5",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(500 * i));
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert!(svc.is_running());
    let a = svc.connect();
    let kept = a.allocate("system", 4096, "survivor").unwrap();
    // Once past the in-flight grace, a report drops every record of the
    // dead clients' buffers: only the survivor is left.
    std::thread::sleep(dmabufd::accounting::FREED_GRACE + std::time::Duration::from_millis(300));
    let r = a.memory_report().unwrap();
    assert_eq!((r.totalCount, r.totalBytes), (1, 4096), "{:?}", r.buffers);
    assert_eq!(r.buffers[0].inode as u64, kept.inode());
    let h = &a.heaps().unwrap()[0];
    assert_eq!((h.bufferCount, h.allocatedBytes), (1, 4096));
    // Some of the clients did get their buffer before dying.
    let dump = String::from_utf8(a.service().renderDump(&[]).unwrap()).unwrap();
    let freed: u64 = dump
        .lines()
        .find_map(|l| l.strip_suffix(" freed since start"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{dump}"));
    assert!(freed >= 1, "no client lived long enough to allocate");
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
