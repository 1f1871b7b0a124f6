//! The AIDL service: a thin adapter from binder calls to the allocator and
//! the reports. Each handler is plain `Result` code; [`boundary`] is the
//! one place errors become binder statuses.

use std::io::Write;
use std::sync::Arc;

use rsbinder::{BinderResult, Interface, ParcelFileDescriptor};

use crate::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, HeapInfo::HeapInfo,
    HeapKind::HeapKind as AidlHeapKind, IDmaBufAllocator::IDmaBufAllocator,
    MemoryReport::MemoryReport, ProcessMemory::ProcessMemory,
};
use crate::allocator::{Allocator, Caller, Request};
use crate::error::{into_status, Error, Kind, Result};
use crate::heap::HeapKind;
use crate::monitor::Monitor;
use crate::report;

/// Cheap to clone: clones share the same allocator and accounting.
#[derive(Clone)]
pub struct DmaBufService {
    allocator: Arc<Allocator>,
    monitor: Arc<Monitor>,
}

impl DmaBufService {
    pub fn new(allocator: Arc<Allocator>, monitor: Arc<Monitor>) -> DmaBufService {
        DmaBufService { allocator, monitor }
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
            })
            .collect())
    }

    fn allocate(&self, caller: Caller, r: &AllocationRequest) -> Result<Buffer> {
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
                "{what}: uid {} may not read other processes' memory; allowed: root, system (1000) \
                 and the config's service.privileged_uids",
                c.uid
            ),
        ))
    }

    fn process_memory(&self, c: Caller, pid: i32) -> Result<ProcessMemory> {
        if pid <= 0 {
            return Err(Error::new(
                Kind::IllegalArgument,
                format!("pid {pid} is not a process id; pass a pid > 0"),
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
        Ok(report::aidl_report(&acc))
    }

    fn reset_hwm(&self, c: Caller, pid: i32) -> Result<()> {
        if pid < 0 {
            return Err(Error::new(
                Kind::IllegalArgument,
                format!("pid {pid}: pass a pid > 0, or 0 for every process"),
            ));
        }
        if pid != c.pid {
            self.require_privileged(c, &format!("resetHighWaterMark({pid})"))?;
        }
        self.monitor.reset_hwm(pid);
        Ok(())
    }

    /// The dump in the shape of Android's dmabuf_dump (see `dump -h`).
    pub fn render_dump(&self, w: &mut dyn Write, args: &[String]) -> std::io::Result<()> {
        use report::dump_args::DumpRequest;
        let request = report::dump_args::parse(args);
        match &request {
            Ok(DumpRequest::Source) => {
                return writeln!(w, "scan source: {}", self.monitor.source_reason())
            }
            // Help and argument errors need no scan.
            Ok(DumpRequest::Help) | Err(_) => {
                return w.write_all(&report::dump_output(args, no_scan))
            }
            _ => {}
        }
        let acc = match self.monitor.refresh() {
            Ok(a) => a,
            Err(e) => return writeln!(w, "error: {e}; try again"),
        };
        w.write_all(&report::dump_output(args, || acc.as_ref().clone()))?;
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

/// Help and argument errors render without a scan (`dump_output` does not
/// call for one then; an empty view if it ever did).
fn no_scan() -> crate::accounting::Accounting {
    crate::accounting::build(
        &[],
        None,
        &[],
        &mut crate::accounting::HwmTracker::new(),
        std::time::Instant::now(),
    )
}

fn scan_failed(e: crate::monitor::ScanFailed) -> Error {
    Error::new(
        Kind::Internal,
        format!("{e}; nothing was changed, try again"),
    )
}

fn caller() -> Caller {
    Caller {
        uid: rsbinder::get_calling_uid(),
        pid: rsbinder::get_calling_pid(),
    }
}

/// Runs a handler for the current caller and maps its error to a status.
fn boundary<T>(method: &str, f: impl FnOnce(Caller) -> Result<T>) -> BinderResult<T> {
    let c = caller();
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

    fn renderDump(&self, args: &[String]) -> BinderResult<Vec<u8>> {
        boundary("renderDump", |c| {
            self.require_privileged(c, "renderDump")?;
            let mut out = Vec::new();
            self.render_dump(&mut out, args)
                .map_err(|e| Error::new(Kind::Internal, format!("dump: {e}")))?;
            Ok(out)
        })
    }
}
