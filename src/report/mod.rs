//! Reports built from an [`Accounting`]: the AIDL parcelables served by
//! `getProcessMemory` / `getMemoryReport`, the protobuf of `dump --proto`
//! (the same data, field for field), and the text dump ([`text`]).

pub mod dump_args;
pub use dmabufd_client::escape;
pub mod paging;
pub mod prometheus;
pub mod text;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::accounting::{Accounting, BufferView, HolderView, Owner, ProcessBuffer, ProcessFigures};
use crate::aidl::vendor::dmabuf::{
    BufferInfo::BufferInfo, BufferRef::BufferRef, HeapTotal::HeapTotal, Holder::Holder,
    MemoryReport::MemoryReport, OwnerTotal::OwnerTotal, ProcessMemory::ProcessMemory,
};
use crate::proto;
use dump_args::DumpRequest;

/// `-1` stands for "unknown" in owner fields (the buffer was not allocated
/// through the service).
pub const UNKNOWN_ID: i32 = -1;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Uids above i32::MAX do not occur on Linux/Android; clamp rather than wrap.
fn uid_i32(uid: u32) -> i32 {
    i32::try_from(uid).unwrap_or(i32::MAX)
}

fn owner_ids(owner: &Option<Owner>) -> (i32, i32) {
    owner
        .as_ref()
        .map_or((UNKNOWN_ID, UNKNOWN_ID), |o| (uid_i32(o.uid), o.pid))
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn error_text(p: &ProcessFigures) -> String {
    p.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
}

fn aidl_buffer_ref(b: &ProcessBuffer) -> BufferRef {
    let (owner_uid, owner_pid) = owner_ids(&b.owner);
    BufferRef {
        inode: i64_of(b.key.inode),
        size: i64_of(b.size),
        exporter: b.exporter.clone(),
        name: b.name.clone(),
        ownerUid: owner_uid,
        ownerPid: owner_pid,
        fdRefs: i32_of(b.fd_refs.into()),
        mapRefs: i32_of(b.map_refs.into()),
        sharedWith: i32_of(b.shared_with.into()),
    }
}

/// `getProcessMemory` result for one process.
pub fn aidl_process(p: &ProcessFigures) -> ProcessMemory {
    ProcessMemory {
        pid: p.pid,
        uid: uid_i32(p.uid),
        name: p.name.clone(),
        rssBytes: i64_of(p.rss),
        pssBytes: i64_of(p.pss),
        hwmBytes: i64_of(p.hwm),
        buffers: p.buffers.iter().map(aidl_buffer_ref).collect(),
        readable: p.readable(),
        error: error_text(p),
    }
}

fn aidl_holder(h: &HolderView) -> Holder {
    Holder {
        pid: h.pid,
        uid: uid_i32(h.uid),
        name: h.name.clone(),
        fdRefs: i32_of(h.fd_refs.into()),
        mapRefs: i32_of(h.map_refs.into()),
    }
}

fn aidl_buffer_info(b: &BufferView) -> BufferInfo {
    let (owner_uid, owner_pid) = owner_ids(&b.owner);
    BufferInfo {
        inode: i64_of(b.key.inode),
        size: i64_of(b.size),
        exporter: b.exporter.clone(),
        name: b.name.clone(),
        ownerUid: owner_uid,
        ownerPid: owner_pid,
        ownerName: b.owner.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
        allocatedAtMs: b.allocated_at.map(epoch_ms).unwrap_or(0),
        holders: b.holders.iter().map(aidl_holder).collect(),
    }
}

/// `getMemoryReport` result. Processes: those holding buffers, with a
/// non-zero hwm, or unreadable ([`Accounting::reported_processes`]).
/// Owner totals: one row per uid, uid -1 for buffers of unknown owner.
pub fn aidl_report(a: &Accounting) -> MemoryReport {
    MemoryReport {
        timestampMs: epoch_ms(a.built_at),
        processes: a.reported_processes().map(aidl_process).collect(),
        buffers: a.buffers.iter().map(aidl_buffer_info).collect(),
        heapTotals: a
            .exporter_totals
            .iter()
            .map(|(name, t)| HeapTotal {
                exporter: name.clone(),
                count: i32_of(t.count),
                bytes: i64_of(t.bytes),
            })
            .collect(),
        ownerTotals: a
            .owner_totals
            .iter()
            .map(|(uid, t)| OwnerTotal {
                uid: uid.map_or(UNKNOWN_ID, uid_i32),
                count: i32_of(t.count),
                bytes: i64_of(t.bytes),
            })
            .collect(),
        totalCount: i32_of(a.total.count),
        totalBytes: i64_of(a.total.bytes),
        unreferencedBytes: i64_of(a.unreferenced_bytes),
    }
}

/// The protobuf of `dump --proto`: built from the AIDL report so both carry
/// exactly the same data (a test decoding `--proto` can compare it with
/// `proto_of_aidl(&getMemoryReport())`), plus the service's pool.
pub fn proto_report(a: &Accounting) -> proto::MemoryReport {
    let mut r = proto_of_aidl(&aidl_report(a));
    // The pool is not in the AIDL report: added here, on its own fields.
    if let Some(pool) = &a.pool {
        r.pool_pid = pool.pid;
        r.pool = pool
            .classes
            .iter()
            .map(|c| proto::PoolClass {
                heap: c.heap.clone(),
                size: c.size,
                target: c.target as u32,
                available: c.available as u32,
                bytes: c.size * c.available as u64,
            })
            .collect();
    }
    r
}

/// Converts an AIDL report (e.g. received over binder) to the proto message.
pub fn proto_of_aidl(r: &MemoryReport) -> proto::MemoryReport {
    let u64_of = |v: i64| u64::try_from(v).unwrap_or(0);
    let u32_of = |v: i32| u32::try_from(v).unwrap_or(0);
    proto::MemoryReport {
        timestamp_ms: r.timestampMs,
        processes: r.processes.iter().map(proto_of_aidl_process).collect(),
        buffers: r
            .buffers
            .iter()
            .map(|b| proto::BufferInfo {
                inode: u64_of(b.inode),
                size: u64_of(b.size),
                exporter: b.exporter.clone(),
                name: b.name.clone(),
                owner_uid: b.ownerUid,
                owner_pid: b.ownerPid,
                owner_name: b.ownerName.clone(),
                allocated_at_ms: b.allocatedAtMs,
                holders: b
                    .holders
                    .iter()
                    .map(|h| proto::Holder {
                        pid: h.pid,
                        uid: h.uid,
                        name: h.name.clone(),
                        fd_refs: u32_of(h.fdRefs),
                        map_refs: u32_of(h.mapRefs),
                    })
                    .collect(),
            })
            .collect(),
        heap_totals: r
            .heapTotals
            .iter()
            .map(|t| proto::HeapTotal {
                exporter: t.exporter.clone(),
                count: u32_of(t.count),
                bytes: u64_of(t.bytes),
            })
            .collect(),
        owner_totals: r
            .ownerTotals
            .iter()
            .map(|t| proto::OwnerTotal {
                uid: t.uid,
                count: u32_of(t.count),
                bytes: u64_of(t.bytes),
            })
            .collect(),
        total_count: u32_of(r.totalCount),
        total_bytes: u64_of(r.totalBytes),
        unreferenced_bytes: u64_of(r.unreferencedBytes),
        pool_pid: 0,
        pool: Vec::new(),
    }
}

/// Converts one AIDL ProcessMemory to the proto message.
pub fn proto_of_aidl_process(p: &ProcessMemory) -> proto::ProcessMemory {
    let u64_of = |v: i64| u64::try_from(v).unwrap_or(0);
    let u32_of = |v: i32| u32::try_from(v).unwrap_or(0);
    proto::ProcessMemory {
        pid: p.pid,
        uid: p.uid,
        name: p.name.clone(),
        rss_bytes: u64_of(p.rssBytes),
        pss_bytes: u64_of(p.pssBytes),
        hwm_bytes: u64_of(p.hwmBytes),
        buffers: p
            .buffers
            .iter()
            .map(|b| proto::BufferRef {
                inode: u64_of(b.inode),
                size: u64_of(b.size),
                exporter: b.exporter.clone(),
                name: b.name.clone(),
                owner_uid: b.ownerUid,
                owner_pid: b.ownerPid,
                fd_refs: u32_of(b.fdRefs),
                map_refs: u32_of(b.mapRefs),
                shared_with: u32_of(b.sharedWith),
            })
            .collect(),
        readable: p.readable,
        error: p.error.clone(),
    }
}

/// The `dump --proto` bytes.
pub fn proto_bytes(a: &Accounting) -> Vec<u8> {
    prost::Message::encode_to_vec(&proto_report(a))
}

/// What `dump(args)` writes: help, a one-line error, the protobuf report, or
/// the text/CSV report. `accounting` is only called when a report is wanted.
pub fn dump_output<S: AsRef<str>>(args: &[S], accounting: impl FnOnce() -> Accounting) -> Vec<u8> {
    render_request(&dump_args::parse(args), || Ok::<_, String>(accounting()))
}

/// [`dump_output`] for arguments already parsed. `accounting` is called
/// only for a report; when it fails, the output is its one-line error.
pub fn render_request<A: std::borrow::Borrow<Accounting>>(
    request: &Result<DumpRequest, dump_args::DumpArgsError>,
    accounting: impl FnOnce() -> Result<A, String>,
) -> Vec<u8> {
    let mut out = Vec::new();
    write_request(&mut out, request, accounting).expect("writing to a Vec cannot fail");
    out
}

/// [`render_request`] written to `w` as it is drawn (a text report one
/// section at a time), for the service's `dump` into the caller's fd.
pub fn write_request<A: std::borrow::Borrow<Accounting>>(
    w: &mut dyn std::io::Write,
    request: &Result<DumpRequest, dump_args::DumpArgsError>,
    accounting: impl FnOnce() -> Result<A, String>,
) -> std::io::Result<()> {
    let report =
        |w: &mut dyn std::io::Write,
         draw: &dyn Fn(&mut dyn std::io::Write, &Accounting) -> std::io::Result<()>| {
            match accounting() {
                Ok(a) => draw(w, a.borrow()),
                Err(e) => w.write_all(format!("error: {e}; try again\n").as_bytes()),
            }
        };
    match request {
        // The message quotes the arguments: escaped, it stays one line.
        Err(e) => w.write_all(format!("error: {}\n", escape::escape(&e.to_string())).as_bytes()),
        Ok(DumpRequest::Help) => w.write_all(dump_args::HELP.as_bytes()),
        // The caller (the service) knows the source and the counters;
        // nothing to render here.
        Ok(DumpRequest::Source | DumpRequest::Prometheus) => Ok(()),
        Ok(DumpRequest::Proto) => report(w, &|w, a| w.write_all(&proto_bytes(a))),
        Ok(DumpRequest::Text { view, csv, pid }) => {
            report(w, &|w, a| text::render_to(w, a, *view, *csv, *pid))
        }
    }
}

#[cfg(test)]
pub(crate) mod sample {
    //! A small accounting used by the report tests: app A (uid 10001, pid
    //! 100) allocated a 1 MiB buffer and passed it to app B (uid 10002, pid
    //! 200); B also holds an 8 KiB udmabuf the service did not allocate;
    //! pid 300 cannot be read.
    use crate::accounting::{build, Accounting, HwmTracker};
    use crate::heap::HeapKind;
    use crate::procfs::{BufferKey, BufferKind, BufferUse, ProcessScan, ScanError};
    use crate::registry::BufferRecord;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    pub const MB: u64 = 1 << 20;

    pub fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    }

    fn dmabuf_use(inode: u64, size: u64, fds: u32, maps: u32, exp: &str, name: &str) -> BufferUse {
        BufferUse {
            key: BufferKey {
                kind: BufferKind::DmaBuf,
                inode,
            },
            size: (fds > 0).then_some(size),
            map_extent: if maps > 0 { size } else { 0 },
            exporter: (fds > 0).then(|| exp.to_string()),
            name: name.to_string(),
            fd_refs: fds,
            map_refs: maps,
        }
    }

    /// The strings the sample shows; the rest of its structure is fixed.
    struct Names {
        camera: &'static str,
        preview: &'static str,
        viewer: &'static str,
        udmabuf: &'static str,
        secret: &'static str,
    }

    fn with_names(n: Names) -> Accounting {
        let scans = vec![
            ProcessScan {
                pid: 100,
                uid: 10001,
                comm: n.camera.into(),
                result: Ok(vec![dmabuf_use(17, MB, 1, 1, "system", n.preview)]),
            },
            ProcessScan {
                pid: 200,
                uid: 10002,
                comm: n.viewer.into(),
                result: Ok(vec![
                    dmabuf_use(17, MB, 2, 0, "system", n.preview),
                    dmabuf_use(23, 8192, 1, 0, "udmabuf", n.udmabuf),
                ]),
            },
            ProcessScan {
                pid: 300,
                uid: 10003,
                comm: n.secret.into(),
                result: Err(ScanError {
                    path: PathBuf::from("/proc/300/fd"),
                    kind: std::io::ErrorKind::PermissionDenied,
                    errno: Some(13),
                    message: "Permission denied (os error 13)".into(),
                }),
            },
            ProcessScan {
                pid: 400,
                uid: 1100,
                comm: "dmabufd".into(),
                result: Ok(vec![]),
            },
        ];
        let registry = vec![BufferRecord {
            inode: 17,
            heap: "system".into(),
            kind: HeapKind::DmaHeap,
            size: MB,
            name: n.preview.into(),
            owner_uid: 10001,
            owner_pid: 100,
            owner_name: n.camera.into(),
            allocated_at: at() - Duration::from_secs(60),
            committed_at: std::time::Instant::now(),
        }];
        let mut a = build(
            &scans,
            None,
            &registry,
            &mut HwmTracker::new(),
            std::time::Instant::now(),
        );
        a.built_at = at();
        a
    }

    pub fn accounting() -> Accounting {
        with_names(Names {
            camera: "camera",
            preview: "preview",
            viewer: "viewer",
            udmabuf: "",
            secret: "secret",
        })
    }

    /// [`accounting`] with hostile strings: a command name and buffer names
    /// carrying newlines, tabs and carriage returns that would forge lines
    /// if printed raw. Same structure, so the same number of lines.
    pub fn hostile() -> Accounting {
        with_names(Names {
            camera: "a\nPID 1 x",
            preview: "x\nino:\t1\r\n",
            viewer: "v\r\\\x1b[2J",
            udmabuf: "\n,\"q\"",
            secret: "s\nPID 2",
        })
    }

    pub fn empty() -> Accounting {
        let scans = vec![ProcessScan {
            pid: 1,
            uid: 0,
            comm: "init".into(),
            result: Ok(vec![]),
        }];
        let mut a = build(
            &scans,
            None,
            &[],
            &mut HwmTracker::new(),
            std::time::Instant::now(),
        );
        a.built_at = at();
        a
    }
}

#[cfg(test)]
mod tests {
    use super::sample::{accounting, MB};
    use super::*;
    use prost::Message;

    #[test]
    fn aidl_report_carries_owner_holders_and_totals() {
        let r = aidl_report(&accounting());
        assert_eq!(r.timestampMs, 1_700_000_000_123);
        // The service's own empty row is left out; the unreadable one is in.
        let pids: Vec<i32> = r.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![100, 200, 300]);
        let b = &r.processes[1];
        assert_eq!(
            (b.rssBytes, b.pssBytes),
            (i64_of(MB + 8192), i64_of(MB / 2 + 8192))
        );
        assert!(b.readable);
        let preview = &b.buffers[0];
        assert_eq!(
            (
                preview.inode,
                preview.ownerUid,
                preview.ownerPid,
                preview.fdRefs,
                preview.sharedWith
            ),
            (17, 10001, 100, 2, 2)
        );
        assert_eq!(b.buffers[1].ownerUid, UNKNOWN_ID);
        assert_eq!(b.buffers[1].exporter, "udmabuf");
        let c = &r.processes[2];
        assert!(!c.readable);
        assert_eq!(c.error, "/proc/300/fd: Permission denied (os error 13)");

        let info = &r.buffers[0];
        assert_eq!(
            (info.ownerName.as_str(), info.allocatedAtMs),
            ("camera", 1_700_000_000_123 - 60_000)
        );
        let holders: Vec<(i32, i32, i32)> = info
            .holders
            .iter()
            .map(|h| (h.pid, h.fdRefs, h.mapRefs))
            .collect();
        assert_eq!(holders, vec![(100, 1, 1), (200, 2, 0)]);
        let owners: Vec<(i32, i32, i64)> = r
            .ownerTotals
            .iter()
            .map(|t| (t.uid, t.count, t.bytes))
            .collect();
        assert_eq!(owners, vec![(-1, 1, 8192), (10001, 1, i64_of(MB))]);
        let heaps: Vec<(&str, i32)> = r
            .heapTotals
            .iter()
            .map(|t| (t.exporter.as_str(), t.count))
            .collect();
        assert_eq!(heaps, vec![("system", 1), ("udmabuf", 1)]);
        assert_eq!(
            (r.totalCount, r.totalBytes, r.unreferencedBytes),
            (2, i64_of(MB + 8192), 0)
        );
    }

    #[test]
    fn proto_equals_aidl_and_round_trips() {
        let a = accounting();
        let bytes = proto_bytes(&a);
        let decoded = proto::MemoryReport::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, proto_of_aidl(&aidl_report(&a)));
        assert_eq!(decoded.total_bytes, MB + 8192);
        assert_eq!(decoded.processes[0].buffers[0].owner_uid, 10001);
        assert_eq!(decoded.buffers[1].owner_uid, -1);
        assert_eq!(
            decoded.processes[2].error,
            "/proc/300/fd: Permission denied (os error 13)"
        );
        let p = aidl_process(a.process(200).unwrap());
        assert_eq!(proto_of_aidl_process(&p), decoded.processes[1]);
    }

    #[test]
    fn dump_output_dispatches() {
        let none: [&str; 0] = [];
        let text = String::from_utf8(dump_output(&none, accounting)).unwrap();
        assert!(text.starts_with("camera:100\n"));
        let bad = String::from_utf8(dump_output(&["-x"], || unreachable!())).unwrap();
        assert_eq!(bad.lines().count(), 1);
        assert!(bad.starts_with("error: unknown argument '-x'"));
        let forged = String::from_utf8(dump_output(&["-x\nPID 1"], || unreachable!())).unwrap();
        assert_eq!(forged.lines().count(), 1, "{forged}");
        assert!(forged.contains("'-x\\nPID 1'"), "{forged}");
        let help = dump_output(&["--help"], || unreachable!());
        assert_eq!(help, dump_args::HELP.as_bytes());
        let proto = dump_output(&["--proto"], accounting);
        assert_eq!(proto, proto_bytes(&accounting()));
    }

    #[test]
    fn process_with_nothing_reports_zeros() {
        let a = accounting();
        let p = aidl_process(a.process(400).unwrap());
        assert_eq!(
            (p.rssBytes, p.pssBytes, p.hwmBytes, p.buffers.len()),
            (0, 0, 0, 0)
        );
        assert!(p.readable);
        assert!(p.error.is_empty());
    }
}
