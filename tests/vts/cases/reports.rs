//! Accounting on a real kernel: real dma-bufs from the system heap, owner vs
//! holders across apps, pss split, the privileged/unprivileged split over
//! kernel binder, and `dump --proto` equal to getMemoryReport.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStdout, Stdio};

use dmabufd::client::DmaBuffer;
use dmabufd::sys;
use prost::Message;
use rsbinder::ExceptionCode;

use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::support::{connect, KIB};

const SHARE_SOCKET: &str = "/tmp/vts-reports-share.sock";

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "buffer_from_app_a_passed_to_app_b_is_owned_by_a_held_by_both_with_pss_split",
            run: buffer_from_app_a_passed_to_app_b_is_owned_by_a_held_by_both_with_pss_split,
        },
        Case {
            name:
                "app_reads_its_own_memory_but_gets_ex_security_for_other_pids_and_the_full_report",
            run: app_reads_its_own_memory_but_gets_ex_security_for_other_pids_and_the_full_report,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("reports-recv", reports_recv),
        ("reports-give", reports_give),
        ("reports-self", reports_self),
    ]
}

pub(super) struct Running {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Running {
    pub(super) fn start(uid: u32, role: &str, args: &[&str]) -> Result<Running, String> {
        let mut child = app::command_as(uid, role, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {role}: {e}"))?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Running { child, out })
    }

    pub(super) fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        self.out.read_line(&mut l).map_err(|e| e.to_string())?;
        Ok(l.trim().to_string())
    }

    pub(super) fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_stdin() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// `reports-recv PATH`: receives buffers on PATH and holds them.
fn reports_recv(args: &[&str]) -> RoleResult {
    let [path] = args else {
        return Err("reports-recv PATH".into());
    };
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| e.to_string())?;
    }
    println!("listening");
    let _ = std::io::stdout().flush();
    let (s, _) = l.accept().map_err(|e| e.to_string())?;
    let (_, fds) = sys::recv_fds(s.as_fd(), &mut [0u8; 8]).map_err(|e| e.to_string())?;
    let held: Vec<DmaBuffer> = fds
        .into_iter()
        .map(|f| DmaBuffer::from_owned_fd(f).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    println!(
        "holding {}",
        held.iter()
            .map(|b| b.inode().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    wait_stdin();
    Ok("released".into())
}

/// `reports-give PATH SIZE`: allocates one named buffer, sends it to PATH, holds it.
fn reports_give(args: &[&str]) -> RoleResult {
    let [path, size] = args else {
        return Err("reports-give PATH SIZE".into());
    };
    let size: u64 = size.parse().map_err(|_| "bad size")?;
    let b = connect()?
        .allocate("system", size, "vts-shared")
        .map_err(|e| e.to_string())?;
    let s = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
    sys::send_fds(s.as_fd(), b"b", &[b.fd()]).map_err(|e| e.to_string())?;
    println!("holding {}", b.inode());
    wait_stdin();
    Ok("released".into())
}

fn buffer_from_app_a_passed_to_app_b_is_owned_by_a_held_by_both_with_pss_split() -> Outcome {
    let size = 256 * KIB;
    let mut b = Running::start(APP_B, "reports-recv", &[SHARE_SOCKET])?;
    ensure!(b.line()? == "listening", "receiver did not start");
    let mut a = Running::start(APP_A, "reports-give", &[SHARE_SOCKET, &size.to_string()])?;
    let la = a.line()?;
    let lb = b.line()?;
    let inode: i64 = la
        .strip_prefix("holding ")
        .and_then(|s| s.trim().parse().ok())
        .ok_or(format!("giver said {la:?}"))?;
    ensure!(lb == la, "receiver holds {lb:?}, giver {la:?}");

    let alloc = connect()?;
    let report = alloc
        .memory_report()
        .map_err(|e| format!("getMemoryReport: {e}"))?;
    let info = report
        .buffers
        .iter()
        .find(|x| x.inode == inode)
        .ok_or(format!("buffer {inode} not in the report"))?;
    ensure!(
        info.ownerUid == APP_A as i32,
        "owner uid {} (want {APP_A})",
        info.ownerUid
    );
    ensure!(
        info.ownerPid == a.pid(),
        "owner pid {} (want {})",
        info.ownerPid,
        a.pid()
    );
    ensure!(
        info.exporter == "system" && info.name == "vts-shared",
        "{} {:?}",
        info.exporter,
        info.name
    );
    ensure!(info.size as u64 == size, "size {}", info.size);
    let mut holders: Vec<(i32, i32)> = info.holders.iter().map(|h| (h.pid, h.uid)).collect();
    holders.sort();
    let mut want = vec![(a.pid(), APP_A as i32), (b.pid(), APP_B as i32)];
    want.sort();
    ensure!(holders == want, "holders {holders:?}, want {want:?}");
    for p in [a.pid(), b.pid()] {
        let m = alloc
            .process_memory(p)
            .map_err(|e| format!("getProcessMemory({p}): {e}"))?;
        let e = m
            .buffers
            .iter()
            .find(|x| x.inode == inode)
            .ok_or(format!("{p} lacks {inode}"))?;
        ensure!(
            e.sharedWith == 2 && e.ownerUid == APP_A as i32,
            "{p}: {e:?}"
        );
        ensure!(m.rssBytes as u64 == size, "{p} rss {}", m.rssBytes);
        ensure!(
            m.pssBytes as u64 == size / 2,
            "{p} pss {} (want {})",
            m.pssBytes,
            size / 2
        );
    }
    let by_a = report.ownerTotals.iter().find(|t| t.uid == APP_A as i32);
    ensure!(
        by_a.is_some_and(|t| t.bytes as u64 >= size),
        "owner totals {:?}",
        report.ownerTotals
    );

    // `dump --proto`, decoded, equals getMemoryReport (same moment, nothing changing).
    let mut last = String::new();
    for _ in 0..3 {
        let aidl = alloc.memory_report().map_err(|e| e.to_string())?;
        let bytes = alloc
            .service()
            .renderDump(&["--proto".to_string()])
            .map_err(|e| format!("{e:?}"))?;
        let mut got =
            dmabufd::proto::MemoryReport::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
        let mut want = dmabufd::report::proto_of_aidl(&aidl);
        got.timestamp_ms = 0;
        want.timestamp_ms = 0;
        if got == want {
            return Ok(());
        }
        last = format!(
            "proto {} buffers vs aidl {}",
            got.buffers.len(),
            want.buffers.len()
        );
    }
    Err(format!("dump --proto differs from getMemoryReport: {last}"))
}

/// `reports-self SIZE`: own figures allowed; others' and the full report refused.
fn reports_self(args: &[&str]) -> RoleResult {
    let size: u64 = args
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or("reports-self SIZE")?;
    let alloc = connect()?;
    let b = alloc
        .allocate("system", size, "vts-self")
        .map_err(|e| e.to_string())?;
    let me = std::process::id() as i32;
    let m = alloc
        .process_memory(me)
        .map_err(|e| format!("own getProcessMemory: {e}"))?;
    if m.rssBytes as u64 != size || m.buffers.iter().all(|x| x.inode as u64 != b.inode()) {
        return Err(format!(
            "own figures wrong: rss {} buffers {:?}",
            m.rssBytes, m.buffers
        ));
    }
    match alloc.process_memory(1) {
        Err(e) if e.exception() == ExceptionCode::Security => {}
        other => return Err(format!("getProcessMemory(1) as an app: {other:?}")),
    }
    match alloc.memory_report() {
        Err(e) if e.exception() == ExceptionCode::Security => {}
        other => {
            return Err(format!(
                "getMemoryReport as an app: {:?}",
                other.map(|r| r.totalCount)
            ))
        }
    }
    Ok("ok".into())
}

fn app_reads_its_own_memory_but_gets_ex_security_for_other_pids_and_the_full_report() -> Outcome {
    let out = app::run_as(APP_A, "reports-self", &[&(64 * KIB).to_string()])?;
    ensure!(out == "ok", "app said {out:?}");
    Ok(())
}
