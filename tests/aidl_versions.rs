//! The interface across versions, over RPC with the real service: a client
//! built from the frozen version 1 dump (aidl_api/vendor.dmabuf/1) still
//! works against the version 2 service, and the version 2 paged reports
//! read a whole snapshot in pages that each fit the configured budget.

mod common;

use std::collections::BTreeSet;

use common::Service;
use dmabufd::aidl::vendor::dmabuf::{
    ErrorCode::ErrorCode, IDmaBufAllocator::IDmaBufAllocator, ReportCursor::ReportCursor,
};
use rsbinder::Strong;

/// Stubs generated (crates/dmabufd-aidl) from the frozen version 1 files, exactly as
/// a client shipped against version 1 would have them.
use dmabufd::aidl::v1;
use v1::vendor::dmabuf::{
    AllocationRequest::AllocationRequest as V1Request,
    IDmaBufAllocator::IDmaBufAllocator as V1Allocator,
};

const CONFIG: &str = "[heaps]\ndefault_max_size = \"16M\"\n";

fn v1_client(svc: &Service) -> Strong<dyn V1Allocator> {
    dmabufd::transport::rpc_client(&svc.socket)
        .unwrap()
        .get::<dyn V1Allocator>(dmabufd::SERVICE_NAME)
        .unwrap()
}

fn me() -> i32 {
    std::process::id() as i32
}

fn frozen_hash(version: u32) -> String {
    let path = format!(
        "{}/aidl_api/vendor.dmabuf/{version}/.hash",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn a_client_built_from_the_frozen_v1_dump_works_against_the_v2_service() {
    let svc = Service::start(CONFIG);
    let old = v1_client(&svc);
    // The old client knows it is version 1; the service says it is 2, with
    // the hash of the frozen version 2.
    assert_eq!(v1::vendor::dmabuf::IDmaBufAllocator::VERSION, 1);
    assert_eq!(old.getInterfaceVersion().unwrap(), 2);
    assert_eq!(old.getInterfaceHash().unwrap(), frozen_hash(2));
    assert_ne!(frozen_hash(1), frozen_hash(2));

    // HeapInfo grew fields in version 2; the old parcelable reads its own.
    let heaps = old.getHeaps().unwrap();
    assert_eq!(heaps.len(), 1);
    assert_eq!(heaps[0].name, "system");
    assert_eq!(heaps[0].maxAllocationSize, 16 << 20);

    let b = old
        .allocate(&V1Request {
            heapName: "system".into(),
            size: 5000,
            name: "from-v1".into(),
            flags: 0,
        })
        .unwrap();
    assert_eq!(b.size, 8192);
    assert_eq!(b.name, "from-v1");
    let fd = b.fd.expect("a v1 client gets the fd");
    let st = nix::sys::stat::fstat(&fd).unwrap();
    assert_eq!(st.st_ino as i64, b.inode);

    // Recorded like any allocation: a version 2 client sees it as ours.
    let now = svc.connect();
    let mine = now.process_memory(me()).unwrap();
    assert_eq!(mine.rssBytes, 8192, "{mine:?}");
    let report = old.getMemoryReport().unwrap();
    let info = report
        .buffers
        .iter()
        .find(|x| x.inode == b.inode)
        .expect("the buffer is in the v1 report");
    assert_eq!((info.ownerPid, info.name.as_str()), (me(), "from-v1"));
    assert!(String::from_utf8_lossy(&old.renderDump(&[]).unwrap()).contains("from-v1"));

    // A version 1 client gets the version 1 errors it knows.
    let e = old
        .allocate(&V1Request {
            heapName: "nope".into(),
            size: 4096,
            name: String::new(),
            flags: 0,
        })
        .unwrap_err();
    assert_eq!(
        e.service_specific_error(),
        v1::vendor::dmabuf::ErrorCode::ErrorCode::UNKNOWN_HEAP.0
    );
    drop(fd);
}

/// Inodes of the buffers this report lists.
fn inodes(r: &dmabufd::aidl::vendor::dmabuf::MemoryReport::MemoryReport) -> BTreeSet<i64> {
    r.buffers.iter().map(|b| b.inode).collect()
}

#[test]
fn a_report_over_many_pages_is_one_snapshot_and_each_page_fits_the_budget() {
    let svc = Service::start(&format!("{CONFIG}[service]\nreport_page_bytes = \"4K\"\n"));
    let a = svc.connect();
    let held: Vec<_> = (0..150)
        .map(|i| a.allocate("system", 4096, &format!("paged-{i}")).unwrap())
        .collect();
    let s = a.service();

    let first = s.getMemoryReportPage(&ReportCursor::default()).unwrap();
    assert!(!first.done, "150 buffers do not fit in 4 KiB");
    assert!(first.bufferCount >= 150, "{}", first.bufferCount);
    assert!(!first.report.heapTotals.is_empty());
    // A buffer made after the snapshot is not in its later pages.
    let late = a.allocate("system", 4096, "after-snapshot").unwrap();
    let mut pages = vec![first];
    while !pages.last().unwrap().done {
        let next = s.getMemoryReportPage(&pages.last().unwrap().next).unwrap();
        assert_eq!(next.next.snapshotId, pages[0].next.snapshotId);
        assert_eq!(next.bufferCount, pages[0].bufferCount);
        assert!(next.report.heapTotals.is_empty(), "totals on page 1 only");
        pages.push(next);
        assert!(pages.len() < 1000, "no progress");
    }
    assert!(pages.len() >= 4, "{} pages", pages.len());
    for p in &pages {
        let size = dmabufd::report::paging::parcel_size(p);
        // The budget bounds the items; the page's own fields add a little.
        assert!(size <= 4096 + 512, "a page of {size} bytes");
    }
    let mut all = BTreeSet::new();
    let mut listed = 0;
    let mut my_refs = BTreeSet::new();
    for p in &pages {
        listed += p.report.buffers.len();
        all.extend(inodes(&p.report));
        for q in p.report.processes.iter().filter(|q| q.pid == me()) {
            my_refs.extend(q.buffers.iter().map(|r| r.inode));
        }
    }
    // This process holds more references than one page carries: its entry
    // is continued across pages and adds up to every buffer it holds.
    for b in &held {
        assert!(
            my_refs.contains(&(b.inode() as i64)),
            "ref {} missing",
            b.inode()
        );
    }
    assert_eq!(listed, pages[0].bufferCount as usize, "no buffer twice");
    for b in &held {
        assert!(
            all.contains(&(b.inode() as i64)),
            "buffer {} missing",
            b.inode()
        );
    }
    assert!(!all.contains(&(late.inode() as i64)));
    // The client library reads the same pages into one report, which (on
    // RPC, where one reply may be large) equals getMemoryReport.
    let whole = a.memory_report().unwrap();
    assert!(inodes(&whole).contains(&(late.inode() as i64)));
    assert_eq!(
        inodes(&whole),
        inodes(&s.getMemoryReport().unwrap()),
        "paged and whole reports list the same buffers"
    );

    // A snapshot of another kind, or a made-up one, is stale.
    let made_up = ReportCursor {
        snapshotId: pages[0].next.snapshotId + 1000,
        buffer: 1,
        ..Default::default()
    };
    let e = s.getMemoryReportPage(&made_up).unwrap_err();
    assert_eq!(e.service_specific_error(), ErrorCode::STALE_SNAPSHOT.0);
    let negative = ReportCursor {
        process: -1,
        ..Default::default()
    };
    let e = s.getMemoryReportPage(&negative).unwrap_err();
    assert_eq!(e.exception_code(), rsbinder::ExceptionCode::IllegalArgument);
}

#[test]
fn a_dump_is_read_in_chunks_that_add_up_to_the_whole() {
    let svc = Service::start(&format!("{CONFIG}[service]\nreport_page_bytes = \"4K\"\n"));
    let a = svc.connect();
    let _held: Vec<_> = (0..120)
        .map(|i| a.allocate("system", 4096, &format!("chunked-{i}")).unwrap())
        .collect();
    let s = a.service();
    let args = vec!["-b".to_string()];
    let mut chunks = Vec::new();
    let mut bytes = Vec::new();
    let mut id = 0;
    loop {
        let c = s.renderDumpChunk(&args, id, bytes.len() as i64).unwrap();
        assert_eq!(c.offset as usize, bytes.len());
        assert!(c.data.len() <= 4096);
        bytes.extend_from_slice(&c.data);
        id = c.snapshotId;
        chunks.push(c.totalBytes);
        if c.done {
            break;
        }
    }
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|t| *t as usize == bytes.len()));
    let text = String::from_utf8(bytes).unwrap();
    for i in 0..120 {
        assert!(
            text.contains(&format!("chunked-{i}\t")) || text.contains(&format!("chunked-{i} ")),
            "chunked-{i} missing"
        );
    }
    // The client library reassembles the same way.
    let whole = String::from_utf8(a.render_dump(&args).unwrap()).unwrap();
    assert!(whole.contains("chunked-119"));
    // Continuing with other args is refused rather than mixing two dumps.
    let e = s
        .renderDumpChunk(&["--csv".to_string()], id, 0)
        .unwrap_err();
    assert_eq!(e.service_specific_error(), ErrorCode::STALE_SNAPSHOT.0);
}
