//! Per-process reports over RPC binder with the memfd heap: real service,
//! real processes. The rss/pss/hwm semantics are covered case by case in
//! the accounting and procfs unit tests; these prove them end to end.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::Service;
use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use prost::Message;
use rsbinder::ExceptionCode;

const CONFIG: &str = "[heaps]\ndefault_max_size = \"16M\"\n";

fn me() -> i32 {
    std::process::id() as i32
}

#[test]
fn own_process_memory_counts_each_buffer_once_however_it_is_referenced() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let one = a.allocate("system", 64 << 10, "one").unwrap();
    let two = a.allocate("system", 1 << 20, "two").unwrap();
    let dup = one.fd().try_clone_to_owned().unwrap(); // two fds, one buffer
                                                      // fd and two maps
    let _m1 = dmabufd::sys::Mapping::new(two.fd(), 1 << 20, false).unwrap();
    let _m2 = dmabufd::sys::Mapping::new(two.fd(), 1 << 20, false).unwrap();
    let m = a.process_memory(me()).unwrap();
    assert!(m.readable, "{}", m.error);
    assert_eq!(m.pid, me());
    assert_eq!(m.rssBytes, (64 << 10) + (1 << 20));
    assert_eq!(m.pssBytes, m.rssBytes, "nobody shares them");
    assert!(m.hwmBytes >= m.rssBytes);
    let b1 = m
        .buffers
        .iter()
        .find(|b| b.inode as u64 == one.inode())
        .unwrap();
    assert_eq!((b1.fdRefs, b1.mapRefs, b1.sharedWith), (2, 0, 1));
    assert_eq!((b1.name.as_str(), b1.exporter.as_str()), ("one", "system"));
    assert_eq!(b1.ownerPid, me());
    assert_eq!(b1.ownerUid as u32, nix::unistd::getuid().as_raw());
    let b2 = m
        .buffers
        .iter()
        .find(|b| b.inode as u64 == two.inode())
        .unwrap();
    assert_eq!((b2.fdRefs, b2.mapRefs), (1, 2));
    drop(dup);
}

#[test]
fn a_mapping_that_outlives_its_fd_still_counts_and_hwm_only_falls_on_reset() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let b = a.allocate("system", 2 << 20, "mapped").unwrap();
    let map = {
        let b = b;
        // Map, then close the fd: the mapping keeps the buffer referenced.
        dmabufd::sys::Mapping::new(b.fd(), 2 << 20, false).unwrap()
    };
    let m = a.process_memory(me()).unwrap();
    assert_eq!(m.rssBytes, 2 << 20);
    assert_eq!((m.buffers[0].fdRefs, m.buffers[0].mapRefs), (0, 1));
    drop(map);
    let m = a.process_memory(me()).unwrap();
    assert_eq!(m.rssBytes, 0, "nothing referenced any more");
    assert_eq!(m.hwmBytes, 2 << 20, "hwm remembers the peak");
    a.reset_high_water_mark(me()).unwrap();
    assert_eq!(a.process_memory(me()).unwrap().hwmBytes, 0);
}

#[test]
fn a_passed_buffer_has_its_allocator_as_owner_both_processes_as_holders_and_split_pss() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let b = a.allocate("system", 8192, "shared").unwrap();
    let (mut viewer, line) = common::pass_to_viewer(&svc, &b);
    assert!(line.contains("\"shared\""), "{line}");
    let r = a.memory_report().unwrap();
    let info = r
        .buffers
        .iter()
        .find(|x| x.inode as u64 == b.inode())
        .unwrap();
    assert_eq!(info.ownerPid, me());
    let mut holders: Vec<i32> = info.holders.iter().map(|h| h.pid).collect();
    holders.sort();
    let mut want = vec![me(), viewer.id() as i32];
    want.sort();
    assert_eq!(holders, want);
    for pid in want {
        let p = r.processes.iter().find(|p| p.pid == pid).unwrap();
        let e = p
            .buffers
            .iter()
            .find(|x| x.inode as u64 == b.inode())
            .unwrap();
        assert_eq!(e.sharedWith, 2);
        assert_eq!(
            e.ownerPid,
            me(),
            "owner is the allocator, also in the viewer's row"
        );
    }
    assert_eq!(
        r.processes
            .iter()
            .find(|p| p.pid == viewer.id() as i32)
            .unwrap()
            .pssBytes,
        4096
    );
    // The text dump shows the same attribution.
    let text = String::from_utf8(a.service().renderDump(&[]).unwrap()).unwrap();
    assert!(text.contains(&format!("viewer:{}", viewer.id())), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("shared"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(&format!(":{}", me())), "owner column: {row}");
    drop(viewer.stdin.take());
    viewer.wait().unwrap();
}

#[test]
fn proto_dump_decodes_to_the_same_report_as_get_memory_report() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let _b: Vec<_> = (0..3)
        .map(|i| a.allocate("system", 4096 << i, &format!("p{i}")).unwrap())
        .collect();
    let aidl = a.memory_report().unwrap();
    let bytes = a.service().renderDump(&["--proto".to_string()]).unwrap();
    let mut decoded = dmabufd::proto::MemoryReport::decode(bytes.as_slice()).unwrap();
    let mut want = dmabufd::report::proto_of_aidl(&aidl);
    decoded.timestamp_ms = 0;
    want.timestamp_ms = 0;
    assert_eq!(decoded, want);
    assert_eq!(decoded.total_count, 3);
    assert_eq!(decoded.total_bytes, 4096 + 8192 + 16384);
}

#[test]
fn dump_arguments_select_views_and_unknown_ones_give_a_one_line_error() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let _b = a.allocate("system", 4096, "dumped").unwrap();
    let dump = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        String::from_utf8(a.service().renderDump(&args).unwrap()).unwrap()
    };
    let help = dump(&["-h"]);
    for arg in ["-a", "-b", "--csv", "--proto", "--pid"] {
        assert!(help.contains(arg), "{help}");
    }
    let err = dump(&["--bogus"]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--bogus"), "{err}");
    assert!(dump(&["-b"]).contains("Total DMA-BUF count: 1, Total DMA-BUF size(bytes): 4096"));
    assert!(dump(&["-a"]).contains("Dmabuf Inode"));
    let own = dump(&["--pid", &me().to_string()]);
    assert!(own.contains("dumped"), "{own}");
    // The service survives every argument and still allocates.
    assert!(a.allocate("system", 4096, "after").is_ok());
}

#[test]
fn bad_pids_are_refused_with_their_codes() {
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    for pid in [0, -5] {
        let e = a.process_memory(pid).unwrap_err();
        assert_eq!(e.exception(), ExceptionCode::IllegalArgument, "{e}");
    }
    let e = a.process_memory(i32::MAX).unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::NO_SUCH_PROCESS), "{e}");
    assert!(e.message().contains(&i32::MAX.to_string()));
}

/// Env var naming the socket when this test binary is re-executed as an
/// app by `an_app_uid_may_read_only_its_own_figures`.
const APP_SOCKET_ENV: &str = "DMABUFD_TEST_APP_SOCKET";
/// The pid whose figures the app tries to read and reset.
const APP_VICTIM_ENV: &str = "DMABUFD_TEST_APP_VICTIM";

/// One `CALL <what>: <outcome>` line per call, as the app side prints it.
fn outcome<T>(r: Result<T, rsbinder::Status>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(s) => {
            let e = dmabufd::client::Error::from(s);
            format!("{:?} {}", e.exception(), e.message())
        }
    }
}

/// App side of `an_app_uid_may_read_only_its_own_figures`: runs as uid
/// 10001 in a re-executed copy of this binary and prints what each call
/// gave. Does nothing unless re-executed so.
#[test]
#[ignore = "helper: run as an app uid by an_app_uid_may_read_only_its_own_figures"]
fn app_side_calls() {
    let (Some(socket), Some(victim)) = (
        std::env::var_os(APP_SOCKET_ENV),
        std::env::var(APP_VICTIM_ENV).ok(),
    ) else {
        return;
    };
    let victim: i32 = victim.parse().unwrap();
    let a = dmabufd::client::Allocator::connect_rpc(std::path::Path::new(&socket)).unwrap();
    let s = a.service();
    let calls: Vec<(&str, String)> = vec![
        (
            "getProcessMemory(victim)",
            outcome(s.getProcessMemory(victim)),
        ),
        ("getProcessMemory(1)", outcome(s.getProcessMemory(1))),
        ("getProcessMemory(0)", outcome(s.getProcessMemory(0))),
        ("getProcessMemory(-1)", outcome(s.getProcessMemory(-1))),
        ("getProcessMemory(self)", outcome(s.getProcessMemory(me()))),
        ("getMemoryReport", outcome(s.getMemoryReport())),
        (
            "resetHighWaterMark(victim)",
            outcome(s.resetHighWaterMark(victim)),
        ),
        ("resetHighWaterMark(0)", outcome(s.resetHighWaterMark(0))),
        ("resetHighWaterMark(-1)", outcome(s.resetHighWaterMark(-1))),
        (
            "resetHighWaterMark(self)",
            outcome(s.resetHighWaterMark(me())),
        ),
        ("renderDump()", outcome(s.renderDump(&[]))),
        (
            "renderDump(--pid victim)",
            outcome(s.renderDump(&["--pid".into(), victim.to_string()])),
        ),
        (
            "renderDump(--proto)",
            outcome(s.renderDump(&["--proto".into()])),
        ),
        (
            "getMemoryReportPage",
            outcome(s.getMemoryReportPage(&Default::default())),
        ),
        ("renderDumpChunk()", outcome(s.renderDumpChunk(&[], 0, 0))),
    ];
    // resetHighWaterMark(0) sent oneway: refused too (no reply to read).
    let binder = s.as_binder();
    let remote = binder.as_remote().unwrap();
    let mut data = remote.prepare_transact(true).unwrap();
    data.write(&0i32).unwrap();
    remote
        .submit_transact(
            rsbinder::FIRST_CALL_TRANSACTION + 4,
            &data,
            rsbinder::FLAG_ONEWAY,
        )
        .unwrap();
    // Leading newline: libtest prints "test <name> ... " without one.
    println!();
    for (what, result) in calls {
        println!("CALL {what}: {result}");
    }
}

#[test]
fn an_app_uid_may_read_only_its_own_figures() {
    if !common::needs_root("an_app_uid_may_read_only_its_own_figures") {
        return;
    }
    let svc = Service::start_logged(CONFIG);
    let a = svc.connect();
    // This process (root) has a high-water mark the app must not reset.
    let held = a.allocate("system", 1 << 20, "victim").unwrap();
    let hwm = a.process_memory(me()).unwrap().hwmBytes;
    assert!(hwm >= 1 << 20, "{hwm}");
    drop(held);

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "app_side_calls",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(APP_SOCKET_ENV, &svc.socket)
        .env(APP_VICTIM_ENV, me().to_string())
        .uid(10001)
        .gid(10001)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "app side failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let call = |what: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CALL {what}: ")))
            .unwrap_or_else(|| panic!("the app printed no {what}: {stdout}"))
            .to_string()
    };
    // Each refusal is EX_SECURITY naming what is allowed, not any failure.
    for what in [
        "getProcessMemory(victim)",
        "getProcessMemory(1)",
        "getMemoryReport",
        "resetHighWaterMark(victim)",
        "resetHighWaterMark(0)",
        "renderDump()",
        "renderDump(--pid victim)",
        "renderDump(--proto)",
        "getMemoryReportPage",
        "renderDumpChunk()",
    ] {
        let r = call(what);
        assert!(r.starts_with("Security "), "{what}: {r}");
        assert!(
            r.contains("uid 10001 may not read other processes' memory")
                && r.contains("allowed: root and the privileged uids"),
            "{what}: {r}"
        );
    }
    for what in ["getProcessMemory(0)", "getProcessMemory(-1)"] {
        let r = call(what);
        assert!(
            r.starts_with("IllegalArgument ") && r.contains("pass a pid > 0"),
            "{what}: {r}"
        );
    }
    let r = call("resetHighWaterMark(-1)");
    assert!(r.starts_with("IllegalArgument "), "{r}");
    assert_eq!(call("getProcessMemory(self)"), "ok");
    assert_eq!(call("resetHighWaterMark(self)"), "ok");
    svc.wait_for_log("oneway transaction of resetHighWaterMark refused (uid 10001");
    // Nothing the app sent reset this process's high-water mark.
    // (A reset would bring it down to the current rss, 0 MiB here.)
    let after = a.process_memory(me()).unwrap();
    assert!(
        after.hwmBytes >= hwm,
        "the app reset another process's hwm: {after:?}"
    );

    // dmabufctl as the app: the refusal itself, not just a failed command.
    let as_app = |args: &[&str]| {
        svc.ctl()
            .args(args)
            .uid(10001)
            .gid(10001)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    for args in [
        &["report", "--pid", "1"][..],
        &["report", "--json"],
        &["dump"],
    ] {
        let out = as_app(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("may not read other processes' memory") && err.contains("(Security)"),
            "{args:?}: {err}"
        );
    }
    // Root (privileged) sees everyone, as JSON too.
    let out = svc.ctl().args(["report", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["processes"].is_array() && v["total_count"].is_number(),
        "{v}"
    );
}
