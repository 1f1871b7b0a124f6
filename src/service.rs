//! The AIDL service: a thin adapter from binder calls to the allocator and
//! the reports. Each handler is plain `Result` code; [`boundary`] is the
//! one place errors become binder statuses.

use std::any::Any;
use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Once};
use std::time::Duration;

use rsbinder::{BinderResult, Interface, ParcelFileDescriptor};

use crate::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, DumpChunk::DumpChunk, HeapInfo::HeapInfo,
    HeapKind::HeapKind as AidlHeapKind, IDmaBufAllocator::IDmaBufAllocator,
    MemoryReport::MemoryReport, MemoryReportPage::MemoryReportPage, ProcessMemory::ProcessMemory,
    ReportCursor::ReportCursor,
};
use crate::allocator::{Allocator, Caller, Request};
use crate::error::{into_status, Error, Kind, Result};
use crate::heap::HeapKind;
use crate::monitor::Monitor;
use crate::report;
use crate::report::paging::{parcel_size, Snapshots};

/// The largest reply a whole-report method sends over kernel binder: the
/// caller's binder buffer (~1 MiB, shared by its transactions in flight)
/// must hold it. Larger reports are refused with REPORT_TOO_LARGE, which
/// names the paged method.
pub const KERNEL_BINDER_REPLY_LIMIT: usize = 512 * 1024;

/// Cheap to clone: clones share the same allocator and accounting.
#[derive(Clone)]
pub struct DmaBufService {
    allocator: Arc<Allocator>,
    monitor: Arc<Monitor>,
    /// The memtrack classes, told the heap or alias each buffer was asked for.
    memtrack_classes: Option<Arc<crate::memtrack::Classes>>,
    snapshots: Arc<Snapshots>,
    /// Set on kernel binder ([`KERNEL_BINDER_REPLY_LIMIT`]); RPC replies
    /// have no such buffer.
    reply_limit: Option<usize>,
}

impl DmaBufService {
    pub fn new(allocator: Arc<Allocator>, monitor: Arc<Monitor>) -> DmaBufService {
        DmaBufService {
            allocator,
            monitor,
            memtrack_classes: None,
            snapshots: Arc::new(Snapshots::new()),
            reply_limit: None,
        }
    }

    /// Refuse whole-report replies larger than `limit` bytes.
    pub fn with_reply_limit(mut self, limit: Option<usize>) -> DmaBufService {
        self.reply_limit = limit;
        self
    }

    fn check_reply_size(&self, method: &str, bytes: usize, paged: &str) -> Result<()> {
        match self.reply_limit {
            Some(limit) if bytes > limit => Err(Error::new(
                Kind::ReportTooLarge,
                format!(
                    "{method}: the reply is {bytes} bytes, more than one binder transaction \
                     carries here ({limit}); read it with {paged}"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Bytes per page of the paged methods (config service.report_page_bytes).
    fn page_budget(&self) -> usize {
        self.allocator.config().service.report_page_bytes
    }

    /// Tells `classes` under which name each buffer was allocated (the
    /// memtrack HAL's CAMERA/MULTIMEDIA classes).
    pub fn with_memtrack_classes(mut self, classes: Arc<crate::memtrack::Classes>) -> Self {
        self.memtrack_classes = Some(classes);
        self
    }

    fn heaps(&self) -> Result<Vec<HeapInfo>> {
        Ok(self
            .allocator
            .heaps()
            .into_iter()
            .map(|h| HeapInfo {
                name: h.name,
                kind: aidl_kind(h.kind),
                maxAllocationSize: clamp_i64(h.max_size),
                allocatedBytes: clamp_i64(h.allocated_bytes),
                bufferCount: h.buffer_count.min(i32::MAX as u64) as i32,
                aliases: h.aliases,
                ..Default::default()
            })
            .collect())
    }

    fn allocate(&self, caller: Caller, r: &AllocationRequest) -> Result<Buffer> {
        // The owner pid goes into the record and the reports.
        require_caller_pid(caller, "allocate")?;
        let a = self.allocator.allocate(
            caller,
            &Request {
                heap: &r.heapName,
                size: r.size,
                name: &r.name,
                flags: r.flags,
            },
        )?;
        self.monitor.note_allocation();
        if let Some(classes) = &self.memtrack_classes {
            if a.kind != HeapKind::Memfd {
                classes.note_allocation(crate::scan::BufferKey::dmabuf(a.inode), &r.heapName);
            }
        }
        self.monitor
            .tracer()
            .allocated(&a.heap, a.size, a.inode, caller.uid, caller.pid);
        log::debug!(
            "allocated {} bytes from {} as {:?} (ino {}) for uid {} pid {}",
            a.size,
            a.heap,
            a.name,
            a.inode,
            caller.uid,
            caller.pid
        );
        // The fd moves into the reply parcel, which closes it once sent:
        // the service keeps no reference to the buffer.
        Ok(Buffer {
            fd: Some(ParcelFileDescriptor::new(a.fd)),
            inode: a.inode as i64,
            size: a.size as i64,
            heapName: a.heap,
            name: a.name,
        })
    }

    /// Root, system and the configured uids may see every process.
    fn require_privileged(&self, c: Caller, what: &str) -> Result<()> {
        if self.allocator.config().is_privileged(c.uid) {
            return Ok(());
        }
        Err(Error::new(
            Kind::Permission,
            format!(
                "{what}: uid {} may not read other processes' memory; allowed: root and the \
                 privileged uids {:?} (the config's service.privileged_uids)",
                c.uid,
                self.allocator.config().service.privileged_uids
            ),
        ))
    }

    fn process_memory(&self, c: Caller, pid: i32) -> Result<ProcessMemory> {
        require_caller_pid(c, "getProcessMemory")?;
        if pid <= 0 {
            return Err(Error::new(
                Kind::IllegalArgument,
                format!(
                    "getProcessMemory({pid}): {pid} is not a process id; pass a pid > 0 \
                     (your own pid, or any pid if you are privileged)"
                ),
            ));
        }
        if pid != c.pid {
            self.require_privileged(c, &format!("getProcessMemory({pid})"))?;
        }
        let no_such = || Error::new(Kind::NoSuchProcess, format!("no process with pid {pid}"));
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(no_such());
        }
        let acc = if self.allocator.config().is_privileged(c.uid) {
            self.monitor.refresh()
        } else {
            self.monitor.refresh_for(c.uid)
        }
        .map_err(scan_failed)?;
        acc.process(pid)
            .map(report::aidl_process)
            .ok_or_else(no_such)
    }

    fn memory_report(&self, c: Caller) -> Result<MemoryReport> {
        self.require_privileged(c, "getMemoryReport")?;
        let acc = self.monitor.refresh().map_err(scan_failed)?;
        let r = report::aidl_report(&acc);
        if self.reply_limit.is_some() {
            self.check_reply_size("getMemoryReport", parcel_size(&r), "getMemoryReportPage")?;
        }
        Ok(r)
    }

    fn memory_report_page(&self, c: Caller, from: &ReportCursor) -> Result<MemoryReportPage> {
        self.require_privileged(c, "getMemoryReportPage")?;
        self.snapshots.report_page(
            c.uid,
            from,
            self.page_budget(),
            std::time::Instant::now(),
            || {
                let acc = self.monitor.refresh().map_err(scan_failed)?;
                Ok(report::aidl_report(&acc))
            },
        )
    }

    fn dump_bytes(&self, args: &[String]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.render_dump(&mut out, args)
            .map_err(|e| Error::new(Kind::Internal, format!("dump: {e}")))?;
        Ok(out)
    }

    fn dump_chunk(
        &self,
        c: Caller,
        args: &[String],
        snapshot_id: i64,
        offset: i64,
    ) -> Result<DumpChunk> {
        self.require_privileged(c, "renderDumpChunk")?;
        self.snapshots.dump_chunk(
            c.uid,
            args,
            (snapshot_id, offset),
            self.page_budget(),
            std::time::Instant::now(),
            || self.dump_bytes(args),
        )
    }

    fn allocate_batch(
        &self,
        c: Caller,
        _r: &AllocationRequest,
        _count: i32,
    ) -> Result<Vec<Buffer>> {
        require_caller_pid(c, "allocateBatch")?;
        Err(Error::new(
            Kind::Unsupported,
            "allocateBatch is not implemented yet; call allocate per buffer",
        ))
    }

    fn reset_hwm(&self, c: Caller, pid: i32) -> Result<()> {
        require_caller_pid(c, "resetHighWaterMark")?;
        if pid < 0 {
            return Err(Error::new(
                Kind::IllegalArgument,
                format!("pid {pid}: pass a pid > 0, or 0 for every process"),
            ));
        }
        // 0 (every process) is never "the caller itself".
        if pid == 0 || pid != c.pid {
            self.require_privileged(c, &format!("resetHighWaterMark({pid})"))?;
        }
        self.monitor.reset_hwm(pid);
        Ok(())
    }

    /// The dump in the shape of Android's dmabuf_dump (see `dump -h`).
    pub fn render_dump(&self, w: &mut dyn Write, args: &[String]) -> std::io::Result<()> {
        use report::dump_args::DumpRequest;
        let request = report::dump_args::parse(args);
        if let Ok(DumpRequest::Source) = request {
            return writeln!(w, "scan source: {}", self.monitor.source_reason());
        }
        // Scans only for a report (not for help or an argument error).
        let mut scanned = None;
        w.write_all(&report::render_request(&request, || {
            let acc = self.monitor.refresh().map_err(|e| e.to_string())?;
            scanned = Some(acc.clone());
            Ok(acc)
        }))?;
        let Some(acc) = scanned else { return Ok(()) };
        // The registry's own state, under plain-text views only.
        if let Ok(DumpRequest::Text { csv: false, .. }) = request {
            let reg = self.allocator.registry();
            writeln!(w, "\nscan source: {}", self.monitor.source_reason())?;
            if !acc.exact_liveness {
                writeln!(
                    w,
                    "liveness is approximate: without the kernel's list of live buffers, a buffer \
                     only the kernel holds (a driver, an in-flight fd) looks freed"
                )?;
            }
            // Nothing ever allocated: no registry line.
            if reg.is_empty() && reg.freed_total() == 0 {
                return Ok(());
            }
            writeln!(
                w,
                "registry: {} buffers allocated through dmabufd live, {} freed since start",
                reg.len(),
                reg.freed_total()
            )?;
        }
        Ok(())
    }
}

/// Refuses a caller without a pid: kernel binder reports calling pid 0 for
/// a oneway transaction, and 0 (or a negative sentinel) must never match
/// "the caller itself" nor be recorded as an owner.
fn require_caller_pid(c: Caller, method: &str) -> Result<()> {
    if c.pid > 0 {
        return Ok(());
    }
    if c.pid == OPENER_GONE {
        return Err(Error::new(
            Kind::IllegalArgument,
            format!(
                "{method}: the process that opened this RPC connection has exited, so the \
                 connection's pid names no caller (the caller may be a process that inherited \
                 the connection, and the pid may be reused); open a connection of your own"
            ),
        ));
    }
    Err(Error::new(
        Kind::IllegalArgument,
        format!(
            "{method}: the transport reported no caller pid ({}), as for a oneway transaction; \
             call IDmaBufAllocator methods two-way",
            c.pid
        ),
    ))
}

thread_local! {
    /// Whether the transaction this binder thread is serving is oneway; set
    /// by [`OnewayObserver`] around each of our transactions.
    static ONEWAY: Cell<bool> = const { Cell::new(false) };
}

/// rsbinder's generated stubs dispatch every method for a oneway
/// transaction too, and do not pass the flags on; its transaction observer
/// sees them, on the thread that then runs the handler. This observer
/// records the flag for [`boundary`], which refuses oneway calls: every
/// IDmaBufAllocator method is two-way.
struct OnewayObserver;

impl rsbinder::observe::TransactionObserver for OnewayObserver {
    fn on_transact(&self, ctx: &rsbinder::observe::TxnContext<'_>) -> Option<Box<dyn Any + Send>> {
        if ctx.descriptor != <DmaBufService as IDmaBufAllocator>::descriptor() {
            return None;
        }
        // The flag of a transaction this one interrupts (nested binder
        // calls), put back in on_reply.
        let outer = ONEWAY.with(|o| o.replace(ctx.is_oneway));
        Some(Box::new(outer))
    }

    fn on_reply(
        &self,
        _ctx: &rsbinder::observe::TxnContext<'_>,
        tag: Option<Box<dyn Any + Send>>,
        _result: &rsbinder::Result<()>,
        _elapsed: Duration,
    ) {
        if let Some(outer) = tag.and_then(|t| t.downcast::<bool>().ok()) {
            ONEWAY.with(|o| o.set(*outer));
        }
    }
}

/// Installs the observer that lets [`boundary`] refuse oneway calls (once
/// per process; the transports call it before serving).
pub fn install_oneway_guard() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| rsbinder::observe::set_observer(Some(Arc::new(OnewayObserver))));
}

fn scan_failed(e: crate::monitor::ScanFailed) -> Error {
    Error::new(
        Kind::Internal,
        format!("{e}; nothing was changed, try again"),
    )
}

/// The pid a caller gets when its RPC connection's opener has exited (no
/// process has it; distinct from the kernel's 0 for oneway calls).
const OPENER_GONE: i32 = i32::MIN;

/// The caller as the transport reports it. Over RPC the pid is the
/// connection's opener, taken at connect (`SO_PEERCRED`): once that process
/// has exited the pid names nobody, or a recycled process, and whoever
/// still calls through the connection (a child that inherited it) is not
/// it; the pid is then [`OPENER_GONE`], which no own-pid check accepts.
pub(crate) fn caller() -> Caller {
    let mut c = Caller {
        uid: rsbinder::get_calling_uid(),
        pid: rsbinder::get_calling_pid(),
    };
    if let Some(peer) = crate::rpc_gate::current_peer() {
        if peer.pid == c.pid && !peer.opener_alive() {
            c.pid = OPENER_GONE;
        }
    }
    c
}

/// Runs a handler for the current caller and maps its error to a status.
fn boundary<T>(method: &str, f: impl FnOnce(Caller) -> Result<T>) -> BinderResult<T> {
    let c = caller();
    if ONEWAY.with(Cell::get) {
        // Nobody reads the reply of a oneway call: log the refusal here.
        log::warn!(
            "oneway transaction of {method} refused (uid {} pid {}): every IDmaBufAllocator \
             method is two-way; call it two-way",
            c.uid,
            c.pid
        );
        return Err(into_status(
            Error::new(
                Kind::IllegalArgument,
                format!("{method} sent oneway; every IDmaBufAllocator method is two-way"),
            ),
            method,
            c.uid,
            c.pid,
        ));
    }
    f(c).map_err(|e| into_status(e, method, c.uid, c.pid))
}

fn aidl_kind(k: HeapKind) -> AidlHeapKind {
    match k {
        HeapKind::DmaHeap => AidlHeapKind::DMA_HEAP,
        HeapKind::Udmabuf => AidlHeapKind::UDMABUF,
        HeapKind::Memfd => AidlHeapKind::MEMFD,
    }
}

fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Interface for DmaBufService {
    fn dump(&self, w: &mut dyn Write, args: &[String]) -> rsbinder::Result<()> {
        let c = caller();
        if let Err(e) = self.require_privileged(c, "dump") {
            let _ = writeln!(w, "{}", e.message);
            return Ok(());
        }
        if let Err(e) = self.render_dump(w, args) {
            log::warn!("dump failed: {e}");
        }
        Ok(())
    }
}

impl IDmaBufAllocator for DmaBufService {
    fn getHeaps(&self) -> BinderResult<Vec<HeapInfo>> {
        boundary("getHeaps", |_| self.heaps())
    }

    fn allocate(&self, request: &AllocationRequest) -> BinderResult<Buffer> {
        boundary("allocate", |c| self.allocate(c, request))
    }

    fn getProcessMemory(&self, pid: i32) -> BinderResult<ProcessMemory> {
        boundary("getProcessMemory", |c| self.process_memory(c, pid))
    }

    fn getMemoryReport(&self) -> BinderResult<MemoryReport> {
        boundary("getMemoryReport", |c| self.memory_report(c))
    }

    fn resetHighWaterMark(&self, pid: i32) -> BinderResult<()> {
        boundary("resetHighWaterMark", |c| self.reset_hwm(c, pid))
    }

    fn allocateBatch(&self, request: &AllocationRequest, count: i32) -> BinderResult<Vec<Buffer>> {
        boundary("allocateBatch", |c| self.allocate_batch(c, request, count))
    }

    fn getMemoryReportPage(&self, from: &ReportCursor) -> BinderResult<MemoryReportPage> {
        boundary("getMemoryReportPage", |c| self.memory_report_page(c, from))
    }

    fn renderDumpChunk(
        &self,
        args: &[String],
        snapshot_id: i64,
        offset: i64,
    ) -> BinderResult<DumpChunk> {
        boundary("renderDumpChunk", |c| {
            self.dump_chunk(c, args, snapshot_id, offset)
        })
    }

    fn renderDump(&self, args: &[String]) -> BinderResult<Vec<u8>> {
        boundary("renderDump", |c| {
            self.require_privileged(c, "renderDump")?;
            let out = self.dump_bytes(args)?;
            // A byte[] parcels as its length plus the bytes, padded.
            self.check_reply_size("renderDump", out.len() + 8, "renderDumpChunk")?;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::heap::memfd::MemfdHeap;
    use crate::registry::Registry;

    fn service() -> DmaBufService {
        let registry = Arc::new(Registry::new());
        let allocator = Allocator::new(
            vec![Box::new(MemfdHeap::new("system"))],
            Config::default(),
            registry.clone(),
        );
        DmaBufService::new(Arc::new(allocator), Arc::new(Monitor::new(registry)))
    }

    fn app(pid: i32) -> Caller {
        Caller { uid: 10001, pid }
    }

    fn request() -> AllocationRequest {
        AllocationRequest {
            heapName: "system".into(),
            size: 4096,
            name: "x".into(),
            flags: 0,
        }
    }

    /// A oneway kernel binder transaction arrives with calling pid 0: that
    /// must never read as "the caller itself".
    #[test]
    fn a_caller_pid_of_zero_or_below_is_refused_where_the_pid_matters() {
        let s = service();
        for pid in [0, -1] {
            // resetHighWaterMark(0) from pid 0 would otherwise pass the
            // own-pid check and reset every process.
            let e = s.reset_hwm(app(pid), pid).unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            assert!(e.message.contains("two-way"), "{e}");
            let e = s.reset_hwm(app(pid), 0).unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            let e = s
                .process_memory(app(pid), std::process::id() as i32)
                .unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            let e = s.allocate(app(pid), &request()).unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            assert!(e.message.contains("pid"), "{e}");
        }
        assert!(s.allocator.registry().is_empty(), "owner pid 0 recorded");
        // An RPC connection whose opener exited says so.
        let gone = app(OPENER_GONE);
        let e = s.allocate(gone, &request()).unwrap_err();
        assert!(e.message.contains("has exited"), "{e}");
        let e = s.reset_hwm(gone, 1).unwrap_err();
        assert!(e.message.contains("has exited"), "{e}");
        assert!(s.allocator.registry().is_empty());
        // A real caller still allocates and reads its own figures.
        let me = app(std::process::id() as i32);
        assert!(s.allocate(me, &request()).is_ok());
        assert!(s.reset_hwm(me, me.pid).is_ok());
    }

    #[test]
    fn pid_zero_means_every_process_only_for_privileged_callers() {
        let s = service();
        let me = app(std::process::id() as i32);
        let e = s.reset_hwm(me, 0).unwrap_err();
        assert_eq!(e.kind, Kind::Permission, "{e}");
        assert!(s.reset_hwm(Caller { uid: 0, pid: 1 }, 0).is_ok());
        for pid in [0, -5] {
            let e = s.process_memory(me, pid).unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{e}");
            assert!(e.message.contains("pid > 0"), "{e}");
        }
    }
}
