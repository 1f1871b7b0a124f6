//! Reports larger than one binder transaction: a snapshot is taken once,
//! kept for a short while for the caller that asked, and read back in
//! pages (`getMemoryReportPage`) or chunks (`renderDumpChunk`) that each fit
//! in one reply. The kernel's binder buffer is ~1 MiB per process and is
//! shared by every transaction in flight, so a page is kept well below it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsbinder::{Deserialize, Parcel, Serialize};

use crate::aidl::vendor::dmabuf::{
    DumpChunk::DumpChunk, MemoryReport::MemoryReport, MemoryReportPage::MemoryReportPage,
    ProcessMemory::ProcessMemory, ReportCursor::ReportCursor,
};
use crate::error::{Error, Kind, Result};

/// How long a snapshot can be read after it was taken.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(30);
/// Snapshots one uid may hold at once (the oldest is dropped beyond it).
pub const SNAPSHOTS_PER_UID: usize = 2;
/// Snapshots kept in all: bounds the service's memory whatever callers do.
pub const SNAPSHOTS_TOTAL: usize = 16;

/// The bytes `value` takes in a parcel (what it adds to a reply).
pub fn parcel_size<T: Serialize>(value: &T) -> usize {
    let mut p = Parcel::new();
    // A parcelable that cannot be written would fail the reply anyway;
    // count it as too large rather than free.
    match p.write(value) {
        Ok(()) => p.data_size(),
        Err(_) => usize::MAX,
    }
}

/// A copy of `value` and its size in a parcel. The generated parcelables
/// are not `Clone`; a parcel round trip copies exactly what a reply carries.
fn parcel_copy<T: Serialize + Deserialize>(value: &T) -> Option<(T, usize)> {
    let mut p = Parcel::new();
    p.write(value).ok()?;
    let size = p.data_size();
    p.set_data_position(0);
    Some((p.read().ok()?, size))
}

enum Content {
    Report(Arc<MemoryReport>),
    Dump {
        args: Vec<String>,
        bytes: Arc<Vec<u8>>,
    },
}

struct Entry {
    id: i64,
    uid: u32,
    taken: Instant,
    content: Content,
}

/// Snapshots being read page by page, bounded per uid and in total.
pub struct Snapshots {
    entries: Mutex<VecDeque<Entry>>,
    next_id: Mutex<i64>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots::new()
    }
}

impl Snapshots {
    pub fn new() -> Snapshots {
        Snapshots {
            entries: Mutex::new(VecDeque::new()),
            next_id: Mutex::new(1),
        }
    }

    fn insert(&self, uid: u32, content: Content, now: Instant) -> i64 {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            let id = *n;
            *n = n.checked_add(1).unwrap_or(1);
            id
        };
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|x| now.duration_since(x.taken) < SNAPSHOT_TTL);
        // Oldest first: drop the uid's oldest beyond its share, then the
        // oldest overall.
        while e.iter().filter(|x| x.uid == uid).count() >= SNAPSHOTS_PER_UID {
            let i = e.iter().position(|x| x.uid == uid).expect("counted above");
            e.remove(i);
        }
        while e.len() >= SNAPSHOTS_TOTAL {
            e.pop_front();
        }
        e.push_back(Entry {
            id,
            uid,
            taken: now,
            content,
        });
        id
    }

    fn find<T>(
        &self,
        uid: u32,
        id: i64,
        now: Instant,
        f: impl FnOnce(&Content) -> Option<T>,
    ) -> Result<T> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter()
            .find(|x| x.id == id && x.uid == uid && now.duration_since(x.taken) < SNAPSHOT_TTL)
            .and_then(|x| f(&x.content))
            .ok_or_else(|| {
                Error::new(
                    Kind::StaleSnapshot,
                    format!(
                        "snapshot {id} expired, was replaced, or is not yours (snapshots live \
                         {}s, {SNAPSHOTS_PER_UID} per uid); start again with snapshotId 0",
                        SNAPSHOT_TTL.as_secs()
                    ),
                )
            })
    }

    /// One page of a report snapshot: a zero `from.snapshotId` stores
    /// `take()` as a new one. Pages hold as many processes (split within a
    /// process's buffers when needed), then buffers, as fit in `budget`
    /// bytes, and at least one item, so every page makes progress.
    pub fn report_page(
        &self,
        uid: u32,
        from: &ReportCursor,
        budget: usize,
        now: Instant,
        take: impl FnOnce() -> Result<MemoryReport>,
    ) -> Result<MemoryReportPage> {
        if from.process < 0 || from.processBuffer < 0 || from.buffer < 0 {
            return Err(Error::new(
                Kind::IllegalArgument,
                format!(
                    "cursor ({}, {}, {}): pass indexes >= 0, from the previous page's next cursor",
                    from.process, from.processBuffer, from.buffer
                ),
            ));
        }
        let (id, report) = if from.snapshotId == 0 {
            let r = Arc::new(take()?);
            (self.insert(uid, Content::Report(r.clone()), now), r)
        } else {
            let r = self.find(uid, from.snapshotId, now, |c| match c {
                Content::Report(r) => Some(r.clone()),
                Content::Dump { .. } => None,
            })?;
            (from.snapshotId, r)
        };
        let at = Cursor {
            process: from.process as usize,
            process_buffer: from.processBuffer as usize,
            buffer: from.buffer as usize,
        };
        Ok(page_of(id, &report, at, budget))
    }

    /// One chunk of a rendered dump: `snapshot_id` 0 stores `render()` as a
    /// new one; later chunks must pass the same args.
    pub fn dump_chunk(
        &self,
        uid: u32,
        args: &[String],
        (snapshot_id, offset): (i64, i64),
        budget: usize,
        now: Instant,
        render: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<DumpChunk> {
        let bytes = if snapshot_id == 0 {
            if offset != 0 {
                return Err(Error::new(
                    Kind::IllegalArgument,
                    format!("offset {offset} with snapshotId 0: a new dump starts at offset 0"),
                ));
            }
            Arc::new(render()?)
        } else {
            self.find(uid, snapshot_id, now, |c| match c {
                Content::Dump { args: a, bytes } if a == args => Some(bytes.clone()),
                _ => None,
            })?
        };
        let id = if snapshot_id == 0 {
            self.insert(
                uid,
                Content::Dump {
                    args: args.to_vec(),
                    bytes: bytes.clone(),
                },
                now,
            )
        } else {
            snapshot_id
        };
        let total = bytes.len();
        let start = usize::try_from(offset)
            .ok()
            .filter(|o| *o <= total)
            .ok_or_else(|| {
                Error::new(
                    Kind::IllegalArgument,
                    format!("offset {offset}: the dump has {total} bytes; pass 0..={total}"),
                )
            })?;
        let end = total.min(start + budget.max(1));
        Ok(DumpChunk {
            snapshotId: id,
            totalBytes: total as i64,
            offset: start as i64,
            data: bytes[start..end].to_vec(),
            done: end == total,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    process: usize,
    process_buffer: usize,
    buffer: usize,
}

/// A process's figures without its buffers: the head of each page's part
/// of the process.
fn process_head(p: &ProcessMemory) -> ProcessMemory {
    ProcessMemory {
        pid: p.pid,
        uid: p.uid,
        name: p.name.clone(),
        rssBytes: p.rssBytes,
        pssBytes: p.pssBytes,
        hwmBytes: p.hwmBytes,
        buffers: Vec::new(),
        readable: p.readable,
        error: p.error.clone(),
    }
}

/// The page of `report` starting at `at`: processes first (a process's
/// buffers split across pages when they do not fit), then buffers, within
/// `budget` bytes.
fn page_of(id: i64, report: &MemoryReport, mut at: Cursor, budget: usize) -> MemoryReportPage {
    let first = at
        == Cursor {
            process: 0,
            process_buffer: 0,
            buffer: 0,
        };
    let mut page = MemoryReport {
        timestampMs: report.timestampMs,
        totalCount: report.totalCount,
        totalBytes: report.totalBytes,
        unreferencedBytes: report.unreferencedBytes,
        ..Default::default()
    };
    if first {
        // Small, bounded by heaps and uids; a copy that fails leaves them out.
        if let Some((t, _)) = parcel_copy(&report.heapTotals) {
            page.heapTotals = t;
        }
        if let Some((t, _)) = parcel_copy(&report.ownerTotals) {
            page.ownerTotals = t;
        }
    }
    let mut used = parcel_size(&page);
    let mut taken = 0usize;
    let fits = |used: usize, size: usize, taken: usize| taken == 0 || used + size <= budget;
    'processes: while at.process < report.processes.len() {
        let p = &report.processes[at.process];
        let mut part = process_head(p);
        let head = parcel_size(&part);
        if !fits(used, head, taken) {
            break;
        }
        used += head;
        taken += 1;
        while at.process_buffer < p.buffers.len() {
            let Some((r, size)) = parcel_copy(&p.buffers[at.process_buffer]) else {
                at.process_buffer += 1;
                continue;
            };
            // A page that starts with this process takes at least one of
            // its buffers, so every page makes progress.
            let must = page.processes.is_empty() && part.buffers.is_empty();
            if !must && used + size > budget {
                // A head without any of its remaining buffers would only
                // repeat on the next page.
                if !part.buffers.is_empty() {
                    page.processes.push(part);
                }
                break 'processes;
            }
            part.buffers.push(r);
            used += size;
            taken += 1;
            at.process_buffer += 1;
        }
        page.processes.push(part);
        at.process += 1;
        at.process_buffer = 0;
    }
    if at.process >= report.processes.len() {
        while at.buffer < report.buffers.len() {
            let Some((item, size)) = parcel_copy(&report.buffers[at.buffer]) else {
                at.buffer += 1;
                continue;
            };
            if !fits(used, size, taken) {
                break;
            }
            page.buffers.push(item);
            used += size;
            taken += 1;
            at.buffer += 1;
        }
    }
    let done = at.process >= report.processes.len() && at.buffer >= report.buffers.len();
    let i32_of = |v: usize| v.min(i32::MAX as usize) as i32;
    MemoryReportPage {
        report: page,
        processCount: i32_of(report.processes.len()),
        bufferCount: i32_of(report.buffers.len()),
        next: ReportCursor {
            snapshotId: id,
            process: i32_of(at.process),
            processBuffer: i32_of(at.process_buffer),
            buffer: i32_of(at.buffer),
        },
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aidl::vendor::dmabuf::{
        BufferInfo::BufferInfo, BufferRef::BufferRef, HeapTotal::HeapTotal,
    };

    fn copy<T: Serialize + Deserialize>(v: &T) -> T {
        parcel_copy(v).unwrap().0
    }

    /// `processes` processes holding `refs` buffers each, and `buffers` buffers.
    fn report(processes: usize, refs: usize, buffers: usize) -> MemoryReport {
        MemoryReport {
            timestampMs: 7,
            processes: (0..processes)
                .map(|i| ProcessMemory {
                    pid: i as i32 + 1,
                    name: format!("proc-{i}"),
                    rssBytes: 4096 * refs as i64,
                    buffers: (0..refs)
                        .map(|j| BufferRef {
                            inode: j as i64 + 100,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            buffers: (0..buffers)
                .map(|i| BufferInfo {
                    inode: i as i64 + 100,
                    name: format!("buf-{i}"),
                    ..Default::default()
                })
                .collect(),
            heapTotals: vec![HeapTotal {
                exporter: "system".into(),
                count: buffers as i32,
                bytes: 4096 * buffers as i64,
            }],
            totalCount: buffers as i32,
            totalBytes: 4096 * buffers as i64,
            ..Default::default()
        }
    }

    fn start() -> ReportCursor {
        ReportCursor::default()
    }

    /// Reads every page, checks each one's size, and reassembles the report
    /// the way a client does (a continued process appends to the last one).
    fn read_all(s: &Snapshots, r: &MemoryReport, budget: usize) -> (usize, MemoryReport) {
        let now = Instant::now();
        let mut at = start();
        let mut all = MemoryReport::default();
        let mut pages = 0;
        loop {
            let page = s.report_page(10, &at, budget, now, || Ok(copy(r))).unwrap();
            // Items are at least one per page; beyond that the budget holds.
            let size = parcel_size(&page);
            assert!(size <= budget + 512, "page of {size} over budget {budget}");
            if pages == 0 {
                all.heapTotals = copy(&page.report.heapTotals);
            } else {
                assert!(
                    page.report.heapTotals.is_empty(),
                    "totals on the first page only"
                );
                assert_eq!(page.next.snapshotId, at.snapshotId);
            }
            assert_eq!(page.report.totalCount, r.totalCount);
            for p in page.report.processes.iter().map(copy) {
                match all.processes.last_mut() {
                    Some(last) if last.pid == p.pid => last.buffers.extend(p.buffers),
                    _ => all.processes.push(p),
                }
            }
            all.buffers.extend(page.report.buffers.iter().map(copy));
            assert_ne!(
                (page.next.process, page.next.processBuffer, page.next.buffer),
                (at.process, at.processBuffer, at.buffer),
                "no progress"
            );
            at = copy(&page.next);
            pages += 1;
            if page.done {
                assert_eq!(
                    (at.process, at.buffer),
                    (page.processCount, page.bufferCount)
                );
                break;
            }
        }
        (pages, all)
    }

    fn shape(r: &MemoryReport) -> (Vec<(i32, Vec<i64>)>, Vec<i64>) {
        (
            r.processes
                .iter()
                .map(|p| (p.pid, p.buffers.iter().map(|b| b.inode).collect()))
                .collect(),
            r.buffers.iter().map(|b| b.inode).collect(),
        )
    }

    #[test]
    fn pages_reassemble_the_whole_snapshot_within_the_budget() {
        let s = Snapshots::new();
        let r = report(40, 3, 500);
        let (pages, all) = read_all(&s, &r, 4096);
        assert!(pages > 5, "{pages} pages for ~20 KB at 4 KiB each");
        assert_eq!(shape(&all), shape(&r));
        assert_eq!(all.heapTotals.len(), 1);
        assert_eq!(all.heapTotals[0].bytes, r.heapTotals[0].bytes);
        // A budget larger than the report: one page.
        assert_eq!(read_all(&s, &r, 1 << 20).0, 1);
    }

    #[test]
    fn a_process_with_more_buffers_than_a_page_holds_continues_on_the_next() {
        let s = Snapshots::new();
        // One process holding 5000 buffers: ~100 KB of references.
        let r = report(3, 5000, 10);
        let (pages, all) = read_all(&s, &r, 8192);
        assert!(pages > 10, "{pages}");
        assert_eq!(shape(&all), shape(&r));
        assert_eq!(all.processes[1].rssBytes, 4096 * 5000);
        // Even a budget smaller than one reference makes progress.
        let (_, tiny) = read_all(&s, &report(2, 20, 3), 1);
        assert_eq!(shape(&tiny), shape(&report(2, 20, 3)));
    }

    #[test]
    fn later_pages_come_from_the_first_snapshot_not_a_new_one() {
        let s = Snapshots::new();
        let now = Instant::now();
        let first = s
            .report_page(10, &start(), 2048, now, || Ok(report(3, 1, 100)))
            .unwrap();
        assert!(!first.done);
        let next = s
            .report_page(10, &first.next, 2048, now, || {
                panic!("a continuation must not take a new snapshot")
            })
            .unwrap();
        assert_eq!(next.bufferCount, 100);
        assert_eq!(next.report.buffers[0].inode, 100 + first.next.buffer as i64);
    }

    #[test]
    fn another_uid_an_expired_or_unknown_snapshot_is_stale() {
        let s = Snapshots::new();
        let now = Instant::now();
        let id = s
            .report_page(10, &start(), 2048, now, || Ok(report(3, 1, 100)))
            .unwrap()
            .next
            .snapshotId;
        let at = |snapshot_id, buffer| ReportCursor {
            snapshotId: snapshot_id,
            buffer,
            ..Default::default()
        };
        let stale = |uid, id, when| {
            s.report_page(uid, &at(id, 1), 2048, when, || Ok(report(0, 0, 0)))
                .unwrap_err()
                .kind
        };
        assert_eq!(stale(11, id, now), Kind::StaleSnapshot);
        assert_eq!(stale(10, id + 1, now), Kind::StaleSnapshot);
        assert_eq!(stale(10, id, now + SNAPSHOT_TTL), Kind::StaleSnapshot);
        let e = s
            .report_page(10, &at(id, -1), 2048, now, || Ok(report(0, 0, 0)))
            .unwrap_err();
        assert_eq!(e.kind, Kind::IllegalArgument);
    }

    #[test]
    fn snapshots_are_bounded_per_uid_and_in_total() {
        let s = Snapshots::new();
        let now = Instant::now();
        let take = |uid| {
            s.report_page(uid, &start(), 64, now, || Ok(report(1, 1, 5)))
                .unwrap()
                .next
                .snapshotId
        };
        let a = take(10);
        let _b = take(10);
        let _c = take(10);
        // The uid's oldest went when its third arrived.
        let again = ReportCursor {
            snapshotId: a,
            buffer: 1,
            ..Default::default()
        };
        let e = s
            .report_page(10, &again, 64, now, || Ok(report(0, 0, 0)))
            .unwrap_err();
        assert_eq!(e.kind, Kind::StaleSnapshot);
        for uid in 100..100 + SNAPSHOTS_TOTAL as u32 * 2 {
            take(uid);
        }
        assert_eq!(s.entries.lock().unwrap().len(), SNAPSHOTS_TOTAL);
    }

    #[test]
    fn dump_chunks_reassemble_and_keep_their_args() {
        let s = Snapshots::new();
        let now = Instant::now();
        let text: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let args = vec!["-b".to_string()];
        let mut out = Vec::new();
        let mut id = 0;
        loop {
            let c = s
                .dump_chunk(10, &args, (id, out.len() as i64), 4096, now, || {
                    Ok(text.clone())
                })
                .unwrap();
            assert_eq!(c.offset as usize, out.len());
            assert!(c.data.len() <= 4096);
            out.extend_from_slice(&c.data);
            id = c.snapshotId;
            if c.done {
                break;
            }
        }
        assert_eq!(out, text);
        let other = vec!["--csv".to_string()];
        let e = s
            .dump_chunk(10, &other, (id, 0), 4096, now, || Ok(vec![]))
            .unwrap_err();
        assert_eq!(e.kind, Kind::StaleSnapshot);
        let e = s
            .dump_chunk(10, &args, (id, text.len() as i64 + 1), 4096, now, || {
                Ok(vec![])
            })
            .unwrap_err();
        assert_eq!(e.kind, Kind::IllegalArgument);
    }
}
