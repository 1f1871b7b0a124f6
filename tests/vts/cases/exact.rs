//! Kernel-exact accounting on a real kernel: buffers only the kernel holds
//! stay owned and counted, holders cannot forge what the service sees, a
//! killed service restarts with its owners, the BPF and procfs sources
//! agree, and churn far past a quota is never refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use dmabufd::aidl::vendor::dmabuf::MemoryReport::MemoryReport;
use dmabufd::client::DmaBuffer;

use crate::app::{self, RoleResult, APP_A, APP_B, APP_SMALL_QUOTA};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{connect, eventually, scan_deadline_ms, KIB, MIB, SETTLE_MS};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "service_uses_the_bpf_scan_source_on_this_kernel",
            run: service_uses_the_bpf_scan_source_on_this_kernel,
        },
        Case {
            name: "a_buffer_held_only_by_the_kernel_stays_owned_and_counted_until_freed",
            run: a_buffer_held_only_by_the_kernel_stays_owned_and_counted_until_freed,
        },
        Case {
            name: "a_holder_renaming_its_buffer_to_forged_fdinfo_lines_changes_nothing",
            run: a_holder_renaming_its_buffer_to_forged_fdinfo_lines_changes_nothing,
        },
        Case {
            name: "bpf_and_procfs_sources_give_identical_figures_for_one_workload",
            run: bpf_and_procfs_sources_give_identical_figures_for_one_workload,
        },
        Case {
            name: "churn_of_2000_1mib_buffers_with_a_4_buffer_quota_is_never_refused",
            run: churn_of_2000_1mib_buffers_with_a_4_buffer_quota_is_never_refused,
        },
    ]
}

/// Runs last: it restarts the service.
pub fn restart_cases() -> Vec<Case> {
    vec![Case {
        name: "kill_9_of_the_service_then_restart_keeps_owners_and_quota_and_drops_what_was_freed",
        run: kill_9_of_the_service_then_restart_keeps_owners_and_quota_and_drops_what_was_freed,
    }]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("park", park),
        ("try-alloc", try_alloc),
        ("rename-forged", rename_forged),
        ("hold-lines", hold_lines),
    ]
}

/// A name that forges fdinfo lines (the kernel prints it raw, last).
const FORGED: &str = "x\nino:\t1\nsize:\t999";

fn report() -> Result<MemoryReport, String> {
    connect()?.memory_report().map_err(|e| e.to_string())
}

fn dump(args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let bytes = connect()?
        .service()
        .renderDump(&args)
        .map_err(|e| format!("renderDump: {e:?}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn owner_total(r: &MemoryReport, uid: u32) -> (i64, i64) {
    r.ownerTotals
        .iter()
        .find(|o| o.uid == uid as i32)
        .map(|o| (i64::from(o.count), o.bytes))
        .unwrap_or((0, 0))
}

fn service_uses_the_bpf_scan_source_on_this_kernel() -> Outcome {
    let line = dump(&["--source"])?;
    ensure!(
        line.starts_with("scan source: bpf") && line.contains("iter/dmabuf"),
        "expected the BPF source with the kernel's buffer list on 6.18, got {line:?}"
    );
    Ok(())
}

/// An app that talks to the test over stdin/stdout, line by line.
struct LineApp {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl LineApp {
    fn start(uid: u32, role: &str, args: &[&str]) -> Result<LineApp, String> {
        let mut child = app::command_as(uid, role, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning {role}: {e}"))?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(LineApp { child, out })
    }

    fn read(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("app exited".into());
        }
        Ok(line.trim().to_string())
    }

    fn say(&mut self, what: &str) -> Result<String, String> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{what}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        self.read()
    }
}

impl Drop for LineApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `park COUNT SIZE`: allocates COUNT buffers, sends each into a socketpair
/// it never reads (the fds wait in the kernel), closes its own fds and
/// prints `parked <inode>...`. Then per stdin line: `alloc` tries one more
/// allocation and prints `ok` or the error code; `close` closes the sockets
/// (the kernel drops the in-flight fds) and prints `closed`.
fn park(args: &[&str]) -> RoleResult {
    let [count, size] = args else {
        return Err("park COUNT SIZE".into());
    };
    let count: usize = count.parse().map_err(|_| "bad count")?;
    let size: u64 = size.parse().map_err(|_| "bad size")?;
    let alloc = connect()?;
    let (tx, rx) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut inodes = Vec::new();
    for i in 0..count {
        let b = alloc
            .allocate("system", size, &format!("parked-{i}"))
            .map_err(|e| format!("allocate {i}: {e}"))?;
        inodes.push(b.inode().to_string());
        dmabufd::sys::send_fds(tx.as_fd(), b"p", &[b.fd()]).map_err(|e| e.to_string())?;
        drop(b);
    }
    println!("parked {}", inodes.join(" "));
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut sockets = Some((tx, rx));
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let reply = match line.trim() {
            "alloc" => match alloc.allocate("system", size, "one-more") {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{:?}", e.error_code()),
            },
            "close" => {
                sockets.take();
                "closed".to_string()
            }
            other => return Err(format!("park: unknown command {other:?}")),
        };
        println!("{reply}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
    }
    Ok("done".into())
}

/// `try-alloc SIZE`: one allocation; prints `ok` or the error code.
fn try_alloc(args: &[&str]) -> RoleResult {
    let size: u64 = args
        .first()
        .ok_or("try-alloc SIZE")?
        .parse()
        .map_err(|_| "bad size")?;
    Ok(match connect()?.allocate("system", size, "try") {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}", e.error_code()),
    })
}

fn a_buffer_held_only_by_the_kernel_stays_owned_and_counted_until_freed() -> Outcome {
    // uid 10003's quota: 4 buffers / 1 MiB. Four 256 KiB buffers fill it.
    let mut app = LineApp::start(APP_SMALL_QUOTA, "park", &["4", &(256 * KIB).to_string()])?;
    let line = app.read()?;
    let inodes: Vec<i64> = line
        .strip_prefix("parked ")
        .ok_or(format!("park printed {line:?}"))?
        .split_whitespace()
        .map(|s| s.parse().map_err(|_| format!("bad inode {s}")))
        .collect::<Result<_, String>>()?;
    // No process holds them; the kernel does (the unread SCM_RIGHTS message).
    let r = report()?;
    for ino in &inodes {
        let b = r
            .buffers
            .iter()
            .find(|b| b.inode == *ino)
            .ok_or(format!("parked buffer {ino} missing from the report"))?;
        ensure!(
            b.ownerUid == APP_SMALL_QUOTA as i32,
            "owner of {ino} is {}",
            b.ownerUid
        );
        ensure!(b.holders.is_empty(), "{ino} has holders {:?}", b.holders);
    }
    ensure!(
        owner_total(&r, APP_SMALL_QUOTA) == (4, (4 * 256 * KIB) as i64),
        "owner total of uid {APP_SMALL_QUOTA}: {:?}",
        owner_total(&r, APP_SMALL_QUOTA)
    );
    ensure!(
        r.unreferencedBytes >= (4 * 256 * KIB) as i64,
        "kernel-held bytes {} < the parked 1 MiB",
        r.unreferencedBytes
    );
    let text = dump(&["-b"])?;
    let row = text
        .lines()
        .find(|l| l.contains("parked-0"))
        .ok_or(format!("no parked-0 row in\n{text}"))?;
    ensure!(
        row.contains("kernel"),
        "parked-0 row does not say kernel: {row}"
    );
    // Still counted against the quota: a fifth is refused.
    let got = app.say("alloc")?;
    ensure!(
        got == format!("{:?}", Some(ErrorCode::QUOTA_EXCEEDED)),
        "a fifth buffer while four are in flight: {got}"
    );
    // The kernel lets go: gone from the report, quota whole again.
    ensure!(app.say("close")? == "closed", "close");
    let got = app.say("alloc")?;
    ensure!(got == "ok", "after the in-flight fds were dropped: {got}");
    ensure!(
        eventually(scan_deadline_ms(), || report()
            .map(|r| !r.buffers.iter().any(|b| inodes.contains(&b.inode)))
            .unwrap_or(false)),
        "parked buffers still in the report after the socket closed"
    );
    Ok(())
}

/// `rename-forged`: allocates a 64 KiB buffer, renames it to [`FORGED`],
/// prints `renamed <inode>` and holds it until stdin closes.
fn rename_forged(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    let b = alloc
        .allocate("system", 64 * KIB, "honest")
        .map_err(|e| e.to_string())?;
    // The raw ioctl: the client library refuses control characters.
    dmabufd::sys::dma_buf_set_name(b.fd(), FORGED).map_err(|e| format!("rename: {e}"))?;
    println!("renamed {}", b.inode());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(b);
    Ok("released".into())
}

/// `hold-lines COUNT SIZE`: holds COUNT buffers, prints their inodes; per
/// stdin line `free N` drops the Nth and prints `freed`.
fn hold_lines(args: &[&str]) -> RoleResult {
    let [count, size] = args else {
        return Err("hold-lines COUNT SIZE".into());
    };
    let count: usize = count.parse().map_err(|_| "bad count")?;
    let size: u64 = size.parse().map_err(|_| "bad size")?;
    let alloc = connect()?;
    let mut bufs: Vec<Option<DmaBuffer>> = (0..count)
        .map(|i| {
            alloc
                .allocate("system", size, &format!("survivor-{i}"))
                .map(Some)
                .map_err(|e| format!("allocate {i}: {e}"))
        })
        .collect::<Result<_, String>>()?;
    let inodes: Vec<String> = bufs
        .iter()
        .flatten()
        .map(|b| b.inode().to_string())
        .collect();
    println!("holding {}", inodes.join(" "));
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    drop(alloc);
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let n: usize = line
            .trim()
            .strip_prefix("free ")
            .and_then(|n| n.parse().ok())
            .ok_or(format!("hold-lines: bad command {line:?}"))?;
        bufs.get_mut(n).and_then(Option::take);
        println!("freed");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
    }
    Ok("done".into())
}

fn a_holder_renaming_its_buffer_to_forged_fdinfo_lines_changes_nothing() -> Outcome {
    let before = report()?;
    let mut app = LineApp::start(APP_A, "rename-forged", &[])?;
    let line = app.read()?;
    let ino: i64 = line
        .strip_prefix("renamed ")
        .and_then(|s| s.parse().ok())
        .ok_or(format!("rename-forged printed {line:?}"))?;
    let pid = app.child.id() as i32;
    // What procfs shows is forged indeed (the kernel prints the name raw).
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|t| t.contains("exp_name:"))
        .ok_or("no dma-buf fdinfo in the app")?;
    ensure!(
        fdinfo.contains("ino:\t1\n"),
        "the forged line is not there:\n{fdinfo}"
    );

    let r = report()?;
    let b = r
        .buffers
        .iter()
        .find(|b| b.inode == ino)
        .ok_or(format!("buffer {ino} missing"))?;
    ensure!(b.size == (64 * KIB) as i64, "size {} (forged 999?)", b.size);
    ensure!(b.ownerUid == APP_A as i32, "owner {}", b.ownerUid);
    ensure!(
        b.holders.len() == 1 && b.holders[0].pid == pid,
        "holders {:?}",
        b.holders
    );
    ensure!(
        !r.buffers.iter().any(|b| b.inode == 1),
        "a buffer with the forged inode 1 appeared"
    );
    let p = connect()?.process_memory(pid).map_err(|e| e.to_string())?;
    ensure!(p.rssBytes == (64 * KIB) as i64, "app rss {}", p.rssBytes);
    // Owner totals moved by exactly this buffer, for A and nobody else.
    let (c0, b0) = owner_total(&before, APP_A);
    ensure!(
        owner_total(&r, APP_A) == (c0 + 1, b0 + (64 * KIB) as i64),
        "uid {APP_A} totals {:?} -> {:?}",
        (c0, b0),
        owner_total(&r, APP_A)
    );
    ensure!(
        owner_total(&r, APP_B) == owner_total(&before, APP_B),
        "uid {APP_B} totals changed"
    );
    // Shown escaped: no dump line starts with the forged "ino:".
    for args in [&[][..], &["-b"][..], &["-a"][..], &["-b", "--csv"][..]] {
        let text = dump(args)?;
        ensure!(
            !text
                .lines()
                .any(|l| l.starts_with("ino:") || l.starts_with("size:")),
            "dump {args:?} has a forged line:\n{text}"
        );
    }
    Ok(())
}

/// pid, rss, pss and (inode, fds, maps) per buffer.
type ProcessFigures = (i32, u64, u64, Vec<(u64, u32, u32)>);

fn bpf_and_procfs_sources_give_identical_figures_for_one_workload() -> Outcome {
    use dmabufd::accounting::{build, HwmTracker};
    use dmabufd::scan::{BpfSource, ProcfsSource, ScanSource};
    let a = crate::cases::lifecycle::start_holder(APP_A, "system", 256 * KIB, 3, 2)?;
    let b = crate::cases::lifecycle::start_holder(APP_B, "udmabuf", 128 * KIB, 2, 1)?;
    let iters = dmabufd::scan::bpf::BpfIters::load().map_err(|e| e.to_string())?;
    let bpf = BpfSource::new(iters, None);
    let procfs = ProcfsSource::new();
    let now = std::time::Instant::now();
    let figures = |src: &dyn ScanSource| -> Result<Vec<ProcessFigures>, String> {
        let scan = src.scan().map_err(|e| e.to_string())?;
        let acc = build(&scan.processes, None, &[], &mut HwmTracker::new(), now);
        Ok(acc
            .processes
            .iter()
            .filter(|p| p.rss > 0)
            .map(|p| {
                let bufs = p
                    .buffers
                    .iter()
                    .map(|b| (b.key.inode, b.fd_refs, b.map_refs))
                    .collect();
                (p.pid, p.rss, p.pss, bufs)
            })
            .collect())
    };
    let from_bpf = figures(&bpf)?;
    let from_procfs = figures(&procfs)?;
    ensure!(
        from_bpf == from_procfs,
        "bpf:\n{from_bpf:?}\nprocfs:\n{from_procfs:?}"
    );
    for h in [&a, &b] {
        let pid = h.child.id() as i32;
        ensure!(
            from_bpf.iter().any(|p| p.0 == pid),
            "holder {pid} missing from both"
        );
    }
    Ok(())
}

fn churn_of_2000_1mib_buffers_with_a_4_buffer_quota_is_never_refused() -> Outcome {
    // uid 10003: 4 buffers / 1 MiB, so each 1 MiB allocation needs the
    // previous one's record gone: the refusal path reads the kernel's list.
    let out = app::run_as(APP_SMALL_QUOTA, "churn", &["2000", &MIB.to_string()])?;
    ensure!(out == "ok", "churn printed {out:?}");
    Ok(())
}

/// Starts dmabufd the way /init does (a supervisor restarting it).
pub(super) fn start_service() -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/run/dmabufd.log")
        .map_err(|e| e.to_string())?;
    let child = Command::new("dmabufd")
        .args(["--kernel", "--config", "/etc/dmabufd.toml"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("restarting dmabufd: {e}"))?;
    Ok(child)
}

fn kill_9_of_the_service_then_restart_keeps_owners_and_quota_and_drops_what_was_freed() -> Outcome {
    let mut apps = Vec::new();
    let mut inodes = Vec::new();
    for uid in [APP_A, APP_B, APP_SMALL_QUOTA] {
        let mut app = LineApp::start(uid, "hold-lines", &["2", &(128 * KIB).to_string()])?;
        let line = app.read()?;
        let ino: Vec<i64> = line
            .strip_prefix("holding ")
            .ok_or(format!("hold-lines printed {line:?}"))?
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        inodes.push(ino);
        apps.push((uid, app));
    }
    let before = report()?;
    let old = proc_scan::service_pid()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| e.to_string())?;
    ensure!(
        eventually(SETTLE_MS, || !std::path::Path::new(&format!("/proc/{old}"))
            .exists()
            || std::fs::read_to_string(format!("/proc/{old}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)),
        "dmabufd {old} did not die"
    );
    // While it is down, app B frees one of its two buffers.
    ensure!(apps[1].1.say("free 0")? == "freed", "free");
    let freed = inodes[1][0];
    let new = start_service()?;
    // /init checks this one is alive at the end (the old one is gone).
    std::fs::write("/run/dmabufd.restarted-pid", new.id().to_string())
        .map_err(|e| e.to_string())?;
    ensure!(
        eventually(SETTLE_MS, || connect()
            .and_then(|a| a.heaps().map_err(|e| e.to_string()))
            .is_ok()),
        "the restarted service did not register"
    );
    let after = report()?;
    for (i, (uid, _)) in apps.iter().enumerate() {
        for ino in &inodes[i] {
            let b = after.buffers.iter().find(|b| b.inode == *ino);
            if *ino == freed {
                ensure!(b.is_none(), "buffer {ino} freed while down is still there");
                continue;
            }
            let b = b.ok_or(format!("buffer {ino} of uid {uid} lost in the restart"))?;
            let was = before.buffers.iter().find(|x| x.inode == *ino).unwrap();
            ensure!(
                (b.ownerUid, b.ownerPid) == (was.ownerUid, was.ownerPid),
                "owner of {ino}: {:?} before, {:?} after",
                (was.ownerUid, was.ownerPid),
                (b.ownerUid, b.ownerPid)
            );
        }
    }
    ensure!(
        owner_total(&after, APP_SMALL_QUOTA) == owner_total(&before, APP_SMALL_QUOTA),
        "quota usage of uid {APP_SMALL_QUOTA}: {:?} before, {:?} after",
        owner_total(&before, APP_SMALL_QUOTA),
        owner_total(&after, APP_SMALL_QUOTA)
    );
    // The quota still knows the two held 128 KiB buffers: 1 MiB - 256 KiB
    // is left, so 768 KiB fits and one more byte does not.
    let got = app::run_as(
        APP_SMALL_QUOTA,
        "try-alloc",
        &[&(768 * KIB + 1).to_string()],
    )?;
    ensure!(
        got == format!("{:?}", Some(ErrorCode::QUOTA_EXCEEDED)),
        "over the remaining quota after restart: {got}"
    );
    let got = app::run_as(APP_SMALL_QUOTA, "try-alloc", &[&(512 * KIB).to_string()])?;
    ensure!(
        got == "ok",
        "within the remaining quota after restart: {got}"
    );
    let log = std::fs::read_to_string("/run/dmabufd.log").unwrap_or_default();
    ensure!(
        log.lines()
            .any(|l| l.contains("restart: ") && l.contains("recorded buffers still alive")),
        "no recovery line in the service log"
    );
    Ok(())
}
