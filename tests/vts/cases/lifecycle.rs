//! Where buffers live: only in the apps (never in the service), across
//! processes when passed, and nowhere once their holder is killed.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};

use dmabufd::client::DmaBuffer;
use dmabufd::sys::{self, SyncDirection};

use crate::app::{self, RoleResult, APP_A, APP_B, APP_SMALL_QUOTA};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{
    connect, eventually, scan_deadline_ms, system_dmabuf_total, KIB, MIB, SETTLE_MS,
};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "service_holds_no_fd_or_mapping_of_buffers_it_handed_out",
            run: service_holds_no_fd_or_mapping_of_buffers_it_handed_out,
        },
        Case {
            name: "buffer_passed_from_app_a_to_app_b_reads_back_a_bytes_in_b",
            run: buffer_passed_from_app_a_to_app_b_reads_back_a_bytes_in_b,
        },
        Case {
            name: "killed_app_buffers_vanish_everywhere_and_system_dmabuf_memory_returns",
            run: killed_app_buffers_vanish_everywhere_and_system_dmabuf_memory_returns,
        },
        Case {
            name: "killed_app_buffers_leave_the_service_report_and_free_its_quota",
            run: killed_app_buffers_leave_the_service_report_and_free_its_quota,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("hold", hold),
        ("hold-briefly", hold_briefly),
        ("send", send),
        ("recv", recv),
    ]
}

/// An app holding buffers until its stdin closes (or it is killed).
pub struct Holder {
    pub child: Child,
    pub inodes: Vec<u64>,
}

/// Starts `hold HEAP SIZE COUNT MAPPED` as `uid` and reads the inodes it holds.
pub fn start_holder(
    uid: u32,
    heap: &str,
    size: u64,
    count: usize,
    mapped: usize,
) -> Result<Holder, String> {
    let mut child = app::command_as(
        uid,
        "hold",
        &[
            heap,
            &size.to_string(),
            &count.to_string(),
            &mapped.to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| format!("spawning holder: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let Some(list) = line.trim().strip_prefix("holding") else {
        let mut err = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("holder did not start: {line:?} {err}"));
    };
    let inodes = list
        .split_whitespace()
        .map(|s| s.parse().map_err(|_| format!("bad inode {s:?}")))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Holder { child, inodes })
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hold HEAP SIZE COUNT MAPPED`: allocates COUNT buffers, maps the first
/// MAPPED, prints `holding <inode>...`, then waits for stdin to close.
fn hold(args: &[&str]) -> RoleResult {
    let [heap, size, count, mapped] = args else {
        return Err("hold HEAP SIZE COUNT MAPPED".into());
    };
    let size: u64 = size.parse().map_err(|_| "bad size")?;
    let count: usize = count.parse().map_err(|_| "bad count")?;
    let mapped: usize = mapped.parse().map_err(|_| "bad mapped")?;
    let alloc = connect()?;
    let mut buffers = (0..count)
        .map(|i| {
            alloc
                .allocate(heap, size, &format!("vts-held-{i}"))
                .map_err(|e| format!("allocate {i}: {e}"))
        })
        .collect::<Result<Vec<DmaBuffer>, String>>()?;
    let inodes: Vec<String> = buffers.iter().map(|b| b.inode().to_string()).collect();
    let maps = buffers
        .iter_mut()
        .take(mapped)
        .map(|b| b.map(SyncDirection::ReadWrite).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    println!("holding {}", inodes.join(" "));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(maps);
    Ok("released".into())
}

fn service_holds_no_fd_or_mapping_of_buffers_it_handed_out() -> Outcome {
    let service = proc_scan::service_pid()?;
    let sys = start_holder(APP_A, "system", MIB, 4, 2)?;
    let udma = start_holder(APP_A, "udmabuf", MIB, 2, 1)?;
    let inodes: Vec<u64> = sys.inodes.iter().chain(&udma.inodes).copied().collect();
    // The scan can see them: the holders reference every one.
    for h in [&sys, &udma] {
        let seen = proc_scan::referenced_inodes(h.child.id() as i32, &h.inodes);
        ensure!(
            seen.len() == h.inodes.len(),
            "the scan sees {seen:?} of the holder's {:?}",
            h.inodes
        );
    }
    let held = proc_scan::referenced_inodes(service, &inodes);
    ensure!(held.is_empty(), "the service references buffers {held:?}");
    let dmabufs = proc_scan::dmabuf_fds(service)?;
    ensure!(
        dmabufs.is_empty(),
        "the service has dma-buf fds: {:?}",
        dmabufs.iter().map(|(fd, _)| fd).collect::<Vec<_>>()
    );
    let memfds: Vec<_> = proc_scan::fd_targets(service)?
        .into_iter()
        .filter(|(_, t)| t.starts_with("/memfd:"))
        .collect();
    ensure!(memfds.is_empty(), "the service keeps memfds: {memfds:?}");
    let maps = proc_scan::buffer_mappings(service)?;
    ensure!(maps.is_empty(), "the service maps buffers: {maps:?}");
    Ok(())
}

const SHARED_SIZE: u64 = MIB;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) % 253) as u8
}

fn buffer_passed_from_app_a_to_app_b_reads_back_a_bytes_in_b() -> Outcome {
    let (to_a, to_b) = UnixStream::pair().map_err(|e| e.to_string())?;
    let receiver = app::command_as(APP_B, "recv", &[])
        .stdin(Stdio::from(OwnedFd::from(to_b)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning B: {e}"))?;
    let sender = app::command_as(APP_A, "send", &[])
        .stdin(Stdio::from(OwnedFd::from(to_a)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning A: {e}"))?;
    let sent = app::finish(sender, APP_A, "send")?;
    let got = app::finish(receiver, APP_B, "recv")?;
    let inode = sent
        .strip_prefix("sent ")
        .ok_or(format!("A printed {sent:?}"))?;
    ensure!(
        got == format!("ok {inode}"),
        "B printed {got:?}, A sent inode {inode}"
    );
    Ok(())
}

/// `send`: allocates, fills, and passes the buffer over the socket on stdin.
fn send(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    let mut buf = alloc
        .allocate("system", SHARED_SIZE, "vts-shared")
        .map_err(|e| e.to_string())?;
    {
        let mut m = buf.map(SyncDirection::Write).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = (0..m.len()).map(pattern).collect();
        m.write_at(0, &bytes).map_err(|e| e.to_string())?;
    }
    let stdin = std::io::stdin();
    sys::send_fds(
        stdin.as_fd(),
        buf.inode().to_string().as_bytes(),
        &[buf.fd()],
    )
    .map_err(|e| format!("sending the fd: {e}"))?;
    Ok(format!("sent {}", buf.inode()))
}

/// `recv`: receives a buffer on stdin and checks A's bytes and identity.
fn recv(_: &[&str]) -> RoleResult {
    let stdin = std::io::stdin();
    let mut msg = [0u8; 32];
    let (n, mut fds) =
        sys::recv_fds(stdin.as_fd(), &mut msg).map_err(|e| format!("receiving: {e}"))?;
    let sent_inode = String::from_utf8_lossy(&msg[..n]).to_string();
    ensure!(fds.len() == 1, "received {} fds", fds.len());
    let mut buf = DmaBuffer::from_owned_fd(fds.remove(0)).map_err(|e| e.to_string())?;
    ensure!(buf.is_dmabuf(), "received fd is not a dma-buf");
    ensure!(
        buf.inode().to_string() == sent_inode,
        "received inode {} but A sent {sent_inode}",
        buf.inode()
    );
    ensure!(buf.size() == SHARED_SIZE, "received size {}", buf.size());
    ensure!(
        buf.name().map_err(|e| e.to_string())? == "vts-shared",
        "received name {:?}",
        buf.name()
    );
    let m = buf
        .map(SyncDirection::Read)
        .map_err(|e| e.to_string())?
        .to_vec();
    if let Some(i) = m.iter().enumerate().position(|(i, b)| *b != pattern(i)) {
        return Err(format!(
            "byte {i} is {:#04x}, A wrote {:#04x}",
            m[i],
            pattern(i)
        ));
    }
    Ok(format!("ok {}", buf.inode()))
}

fn killed_app_buffers_vanish_everywhere_and_system_dmabuf_memory_returns() -> Outcome {
    let (_, bytes_before) = system_dmabuf_total()?;
    let mut holder = start_holder(APP_A, "system", MIB, 4, 2)?;
    let inodes = holder.inodes.clone();
    let (_, bytes_held) = system_dmabuf_total()?;
    ensure!(
        bytes_held >= bytes_before + 4 * MIB,
        "system dma-buf memory went from {bytes_before} to {bytes_held} with 4 MiB held"
    );
    holder.child.kill().map_err(|e| format!("kill: {e}"))?;
    holder.child.wait().map_err(|e| format!("wait: {e}"))?;
    let mut still = Vec::new();
    let gone = eventually(SETTLE_MS, || {
        still = proc_scan::pids()
            .into_iter()
            .filter_map(|pid| {
                let refs = proc_scan::referenced_inodes(pid, &inodes);
                (!refs.is_empty()).then_some((pid, refs))
            })
            .collect();
        still.is_empty()
    });
    ensure!(gone, "still referenced after the kill: {still:?}");
    let mut bytes_after = 0;
    let back = eventually(SETTLE_MS, || {
        bytes_after = system_dmabuf_total().map(|t| t.1).unwrap_or(u64::MAX);
        bytes_after <= bytes_before
    });
    ensure!(
        back,
        "system dma-buf memory is {bytes_after} bytes after the kill, {bytes_before} before"
    );
    Ok(())
}

/// The service notices frees it did not see happen: once the holder is
/// killed its buffers leave getMemoryReport and its uid's quota (4 buffers
/// for uid 10003) is whole again, within a few scan intervals.
fn killed_app_buffers_leave_the_service_report_and_free_its_quota() -> Outcome {
    let alloc = connect()?;
    // The quota case before this one held the whole quota too: retry until
    // the service has noticed those buffers are gone.
    let mut started = Err(String::new());
    eventually(scan_deadline_ms(), || {
        started = start_holder(APP_SMALL_QUOTA, "system", 4 * KIB, 4, 0);
        started.is_ok()
    });
    let mut holder = started.map_err(|e| format!("holding uid {APP_SMALL_QUOTA}'s quota: {e}"))?;
    let inodes = holder.inodes.clone();
    let listed = |alloc: &dmabufd::client::Allocator| -> Result<Vec<u64>, String> {
        let report = alloc
            .memory_report()
            .map_err(|e| format!("getMemoryReport: {e}"))?;
        Ok(report
            .buffers
            .iter()
            .map(|b| b.inode as u64)
            .filter(|i| inodes.contains(i))
            .collect())
    };
    let before = listed(&alloc)?;
    ensure!(
        before.len() == inodes.len(),
        "the report lists {before:?} of the held {inodes:?}"
    );
    holder.child.kill().map_err(|e| format!("kill: {e}"))?;
    holder.child.wait().map_err(|e| format!("wait: {e}"))?;
    let mut still = Vec::new();
    let gone = eventually(scan_deadline_ms(), || {
        still = listed(&alloc).unwrap_or_else(|_| inodes.clone());
        still.is_empty()
    });
    ensure!(gone, "the report still lists {still:?} after the kill");
    small_quota_is_whole_again().map_err(|e| format!("after the kill: {e}"))
}

/// Waits until uid 10003 can hold its whole quota (4 buffers) at once.
fn small_quota_is_whole_again() -> Outcome {
    let mut last = String::new();
    let whole = eventually(scan_deadline_ms(), || {
        match app::run_as(APP_SMALL_QUOTA, "hold-briefly", &["4"]) {
            Ok(out) if out == "ok" => true,
            Ok(out) => {
                last = out;
                false
            }
            Err(e) => {
                last = e;
                false
            }
        }
    });
    ensure!(
        whole,
        "uid {APP_SMALL_QUOTA} cannot use its quota again: {last}"
    );
    Ok(())
}

/// `hold-briefly N`: allocates N 4 KiB buffers at once, then frees them.
fn hold_briefly(args: &[&str]) -> RoleResult {
    let n: usize = args
        .first()
        .and_then(|n| n.parse().ok())
        .ok_or("hold-briefly N")?;
    let alloc = connect()?;
    let held = (0..n)
        .map(|i| {
            alloc
                .allocate("system", 4 * KIB, "vts-refill")
                .map_err(|e| format!("buffer {i}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    ensure!(held.len() == n, "held {}", held.len());
    Ok("ok".into())
}
