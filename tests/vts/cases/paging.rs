//! Reports larger than one binder transaction, on kernel binder: with 5000
//! live buffers the whole report no longer fits in the caller's ~1 MiB
//! binder buffer. Before paging, getMemoryReport failed there with a bare
//! transaction error; now it is refused with REPORT_TOO_LARGE naming the
//! paged method, and the paged methods and dump(fd) carry everything.

use std::collections::BTreeSet;
use std::process::Command;

use dmabufd::aidl::vendor::dmabuf::{ErrorCode::ErrorCode, ReportCursor::ReportCursor};
use dmabufd::client::DmaBuffer;

use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::support::{connect, expect_code, record_code, KIB};

const BUFFERS: usize = 5000;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "reports_and_dumps_of_5000_live_buffers_cross_kernel_binder_in_pages",
        run: reports_and_dumps_of_5000_live_buffers_cross_kernel_binder_in_pages,
    }]
}

/// Lets this process hold `n` fds besides its usual ones.
fn allow_fds(n: u64) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let want = n + 1024;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want))
            .map_err(|e| format!("RLIMIT_NOFILE to {want}: {e}"))?;
    }
    Ok(())
}

fn reports_and_dumps_of_5000_live_buffers_cross_kernel_binder_in_pages() -> Outcome {
    allow_fds(BUFFERS as u64)?;
    let t = std::time::Instant::now();
    let phase = |what: &str| eprintln!("paging case: {what} at {} ms", t.elapsed().as_millis());
    let alloc = connect()?;
    let held: Vec<DmaBuffer> = (0..BUFFERS)
        .map(|i| alloc.allocate("system", 4 * KIB, &format!("vts-page-{i}")))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("allocating {BUFFERS} buffers: {e}"))?;
    let mine: BTreeSet<i64> = held.iter().map(|b| b.inode() as i64).collect();
    let s = alloc.service();
    phase("allocated");

    // The whole report is refused with a code that names the way out.
    match s.getMemoryReport() {
        Err(e) if e.service_specific_error() == ErrorCode::REPORT_TOO_LARGE.0 => {
            let m = e.message().unwrap_or_default().to_string();
            ensure!(m.contains("getMemoryReportPage"), "message: {m}");
            record_code(ErrorCode::REPORT_TOO_LARGE);
        }
        Err(e) => return Err(format!("getMemoryReport: {e:?}, not REPORT_TOO_LARGE")),
        Ok(r) => {
            return Err(format!(
                "getMemoryReport of {} buffers fit in one reply; the case needs more",
                r.buffers.len()
            ))
        }
    }

    phase("whole report refused");
    // Paged: every buffer once, and this process's 5000 references, which
    // span several pages, add up.
    let report = alloc
        .memory_report()
        .map_err(|e| format!("paged report: {e}"))?;
    let listed: BTreeSet<i64> = report.buffers.iter().map(|b| b.inode).collect();
    ensure!(
        listed.len() == report.buffers.len(),
        "a buffer listed twice"
    );
    ensure!(
        mine.is_subset(&listed),
        "{} of this process's buffers missing from the paged report",
        mine.difference(&listed).count()
    );
    let me = std::process::id() as i32;
    let refs: BTreeSet<i64> = report
        .processes
        .iter()
        .filter(|p| p.pid == me)
        .flat_map(|p| p.buffers.iter().map(|r| r.inode))
        .collect();
    ensure!(
        report.processes.iter().filter(|p| p.pid == me).count() == 1,
        "this process appears more than once after reassembly"
    );
    ensure!(
        mine.is_subset(&refs),
        "this process's references are incomplete"
    );
    phase("paged report read");
    // A cursor into a snapshot that is not there.
    let made_up = ReportCursor {
        snapshotId: i64::MAX,
        buffer: 1,
        ..Default::default()
    };
    expect_code(
        s.getMemoryReportPage(&made_up).map_err(Into::into),
        ErrorCode::STALE_SNAPSHOT,
        "getMemoryReportPage of an unknown snapshot",
    )?;

    // The text dump: whole when it fits in a reply (every buffer in it),
    // else refused with the code; never a failed transaction. Chunked:
    // always complete.
    let args = vec!["-b".to_string()];
    match s.renderDump(&args) {
        Ok(bytes) => {
            let named = count_names(&String::from_utf8_lossy(&bytes));
            ensure!(
                named == BUFFERS,
                "renderDump names {named} of {BUFFERS} buffers"
            );
        }
        Err(e) if e.service_specific_error() == ErrorCode::REPORT_TOO_LARGE.0 => {}
        Err(e) => return Err(format!("renderDump of {BUFFERS} buffers: {e:?}")),
    }
    phase("whole dump");
    let text = alloc
        .render_dump(&args)
        .map_err(|e| format!("chunked dump: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let named = count_names(&text);
    ensure!(
        named == BUFFERS,
        "the chunked dump names {named} of {BUFFERS} buffers"
    );

    phase("chunked dump");
    // dump(fd) writes into a pipe, not a reply: complete whatever the size.
    let out = Command::new("rsb_service")
        .args(["dump", dmabufd::SERVICE_NAME, "-b"])
        .output()
        .map_err(|e| format!("running rsb_service: {e}"))?;
    ensure!(
        out.status.success(),
        "rsb_service dump exited {}",
        out.status
    );
    let named = count_names(&String::from_utf8_lossy(&out.stdout));
    ensure!(
        named == BUFFERS,
        "dump(fd) names {named} of {BUFFERS} buffers"
    );
    phase("dump(fd)");
    drop(held);
    Ok(())
}

/// Distinct `vts-page-N` names in a dump.
fn count_names(text: &str) -> usize {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '"')
        .filter(|w| w.starts_with("vts-page-"))
        .collect::<BTreeSet<_>>()
        .len()
}
