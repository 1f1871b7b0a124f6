//! The client library apps link: connect to the allocator, allocate named
//! buffers, and use them safely (RAII mappings with CPU-access sync guards).
//! It depends on rsbinder (without tokio), nix and the generated stubs only.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rsbinder::{ExceptionCode, Status, Strong};

pub use dmabufd_aidl as aidl;

pub mod escape;
pub mod sys;
pub mod transport;

use crate::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, ErrorCode::ErrorCode, HeapInfo::HeapInfo,
    HeapKind::HeapKind, IDmaBufAllocator::IDmaBufAllocator, MemoryReport::MemoryReport,
    ProcessMemory::ProcessMemory, ReportCursor::ReportCursor,
};
use crate::sys::{BufferFdKind, Mapping, SyncDirection};

mod connection;
use connection::Connection;
pub use connection::RECONNECT_WAIT;

/// What kind of failure an [`Error`] is, for callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The service refused the request: [`Error::error_code`] says why.
    Refused,
    /// The service restarted, or the connection to it broke, while an
    /// allocation was in flight. Nothing reached this process, whatever
    /// the old service made died with it, and the connection is back:
    /// retry the call.
    ServiceRestarted,
    /// The service cannot be reached: not running, not registered, or it
    /// did not come back within [`RECONNECT_WAIT`].
    Unavailable,
    /// The service answered with a binder exception (security, illegal
    /// argument, unsupported operation): [`Error::exception`].
    Exception,
    /// The binder transport refused the call itself (the service never saw it).
    Transport,
    /// Failed in this process: an argument refused before sending, a reply
    /// it cannot use, I/O on a buffer.
    Local,
}

/// A refusal or failure, with the service's message.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    exception: ExceptionCode,
    code: Option<ErrorCode>,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn new(kind: ErrorKind, exception: ExceptionCode, message: String) -> Error {
        Error {
            kind,
            exception,
            code: None,
            message,
        }
    }

    fn local(exception: ExceptionCode, message: String) -> Error {
        Error::new(ErrorKind::Local, exception, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The service-specific error code, for refusals.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code
    }

    pub fn exception(&self) -> ExceptionCode {
        self.exception
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        let exception = s.exception_code();
        let code = (exception == ExceptionCode::ServiceSpecific)
            .then(|| ErrorCode(s.service_specific_error()));
        let message = match s.message() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => format!("{s:?}"),
        };
        let kind = match exception {
            ExceptionCode::ServiceSpecific => ErrorKind::Refused,
            ExceptionCode::TransactionFailed => ErrorKind::Transport,
            _ => ErrorKind::Exception,
        };
        Error {
            kind,
            exception,
            code,
            message,
        }
    }
}

impl From<rsbinder::StatusCode> for Error {
    fn from(s: rsbinder::StatusCode) -> Error {
        Error::from(Status::from(s))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::local(ExceptionCode::IllegalState, e.to_string())
    }
}

/// The AIDL name of an error code ("QUOTA_EXCEEDED").
pub fn error_code_name(c: ErrorCode) -> String {
    match c {
        ErrorCode::UNKNOWN_HEAP => "UNKNOWN_HEAP".into(),
        ErrorCode::INVALID_SIZE => "INVALID_SIZE".into(),
        ErrorCode::INVALID_NAME => "INVALID_NAME".into(),
        ErrorCode::INVALID_FLAGS => "INVALID_FLAGS".into(),
        ErrorCode::QUOTA_EXCEEDED => "QUOTA_EXCEEDED".into(),
        ErrorCode::NO_MEMORY => "NO_MEMORY".into(),
        ErrorCode::NO_SUCH_PROCESS => "NO_SUCH_PROCESS".into(),
        ErrorCode::REPORT_TOO_LARGE => "REPORT_TOO_LARGE".into(),
        ErrorCode::STALE_SNAPSHOT => "STALE_SNAPSHOT".into(),
        other => format!("error {}", other.0),
    }
}

/// The AIDL name of a heap kind ("DMA_HEAP").
pub fn heap_kind_name(k: HeapKind) -> String {
    match k {
        HeapKind::DMA_HEAP => "DMA_HEAP".into(),
        HeapKind::UDMABUF => "UDMABUF".into(),
        HeapKind::MEMFD => "MEMFD".into(),
        other => format!("kind {}", other.0),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.kind) {
            (Some(c), _) => write!(f, "{} ({})", self.message, error_code_name(c)),
            (None, ErrorKind::Exception) => write!(f, "{} ({:?})", self.message, self.exception),
            (None, kind) => write!(f, "{} ({kind:?})", self.message),
        }
    }
}

impl std::error::Error for Error {}

/// A connection to the allocator service. It survives a restart of the
/// service: calls that may run twice (heaps, reports) are sent again on the
/// new connection; an allocation that was in flight fails with
/// [`ErrorKind::ServiceRestarted`] and may simply be retried.
pub struct Allocator {
    conn: Connection,
}

impl Allocator {
    /// Connects the way every client does: to the RPC socket named by
    /// DMABUFD_SOCKET when set; else kernel binder when a binder device
    /// exists; else the default RPC socket.
    pub fn connect() -> Result<Allocator> {
        let socket_named = std::env::var_os(transport::SOCKET_ENV).is_some_and(|v| !v.is_empty());
        if !socket_named && transport::binder_device().is_some() {
            return Self::connect_kernel();
        }
        // default_socket() is DMABUFD_SOCKET when set.
        Self::connect_rpc(&transport::default_socket())
    }

    /// Connects through an explicit socket path when given, else as [`connect`](Self::connect).
    pub fn connect_to(rpc: Option<PathBuf>) -> Result<Allocator> {
        match rpc {
            Some(p) => Self::connect_rpc(&p),
            None => Self::connect(),
        }
    }

    /// Connects over RPC binder on a Unix socket; fails at once when no
    /// service answers there.
    pub fn connect_rpc(path: &Path) -> Result<Allocator> {
        Ok(Allocator {
            conn: Connection::rpc(path)?,
        })
    }

    /// Connects over kernel binder, waiting up to 5 s for the service to
    /// be registered.
    pub fn connect_kernel() -> Result<Allocator> {
        Ok(Allocator {
            conn: Connection::kernel(SERVICE_NAME)?,
        })
    }

    /// [`connect_kernel`](Self::connect_kernel) to another instance of the
    /// allocator (`vendor.dmabuf.IDmaBufAllocator/<instance>`).
    pub fn connect_kernel_instance(instance: &str) -> Result<Allocator> {
        Ok(Allocator {
            conn: Connection::kernel(&service_name(instance))?,
        })
    }

    /// The AIDL interface, for calls this wrapper does not cover (no
    /// reconnect: a call on it fails once the service is gone).
    pub fn service(&self) -> Strong<dyn IDmaBufAllocator> {
        self.conn.proxy()
    }

    /// How many connections this client has made: 1, then one more per
    /// reconnect after a service restart.
    pub fn connection_generation(&self) -> u64 {
        self.conn.generation()
    }

    pub fn heaps(&self) -> Result<Vec<HeapInfo>> {
        self.conn.idempotent(|s| s.getHeaps())
    }

    pub fn allocate(&self, heap: &str, size: u64, name: &str) -> Result<DmaBuffer> {
        self.allocate_with_flags(heap, size, name, 0)
    }

    pub fn allocate_with_flags(
        &self,
        heap: &str,
        size: u64,
        name: &str,
        flags: i32,
    ) -> Result<DmaBuffer> {
        self.allocate_raw(heap, aidl_size(size)?, name, flags)
    }

    /// Sends the request as given (any size, including negative ones).
    pub fn allocate_raw(&self, heap: &str, size: i64, name: &str, flags: i32) -> Result<DmaBuffer> {
        let request = request(heap, size, name, flags);
        let b = self
            .conn
            .at_most_once("allocate", |s| s.allocate(&request))?;
        DmaBuffer::from_reply(b)
    }

    /// Allocates `count` buffers (1..=64) of one request, all or nothing
    /// (allocateBatch, AIDL version 2).
    pub fn allocate_batch(
        &self,
        heap: &str,
        size: u64,
        name: &str,
        flags: i32,
        count: usize,
    ) -> Result<Vec<DmaBuffer>> {
        let count = i32::try_from(count).map_err(|_| {
            Error::local(
                ExceptionCode::IllegalArgument,
                format!("batch count {count} does not fit the 32-bit AIDL count"),
            )
        })?;
        let request = request(heap, aidl_size(size)?, name, flags);
        let bufs = self
            .conn
            .at_most_once("allocateBatch", |s| s.allocateBatch(&request, count))?;
        bufs.into_iter().map(DmaBuffer::from_reply).collect()
    }

    pub fn process_memory(&self, pid: i32) -> Result<ProcessMemory> {
        self.conn.idempotent(|s| s.getProcessMemory(pid))
    }

    /// The whole report, read page by page from one snapshot
    /// (getMemoryReportPage), so it works whatever its size: one
    /// getMemoryReport reply must fit in a binder transaction.
    pub fn memory_report(&self) -> Result<MemoryReport> {
        // Sent again from the start after a reconnect: a new service has
        // none of the old one's snapshots.
        self.conn.idempotent(|s| {
            let first = s.getMemoryReportPage(&ReportCursor::default())?;
            let mut at = first.next;
            let mut done = first.done;
            let mut report = first.report;
            while !done {
                let page = s.getMemoryReportPage(&at)?;
                let moved = (page.next.process, page.next.processBuffer, page.next.buffer)
                    != (at.process, at.processBuffer, at.buffer);
                if !moved && !page.done {
                    return Err(Error::local(
                        ExceptionCode::IllegalState,
                        format!("getMemoryReportPage made no progress at {at:?}"),
                    ));
                }
                // A process continued from the previous page: append its buffers.
                for p in page.report.processes {
                    match report.processes.last_mut() {
                        Some(last) if last.pid == p.pid => last.buffers.extend(p.buffers),
                        _ => report.processes.push(p),
                    }
                }
                report.buffers.extend(page.report.buffers);
                (at, done) = (page.next, page.done);
            }
            Ok(report)
        })
    }

    /// The bytes of `dump(fd, args)`, read chunk by chunk from one rendering
    /// (renderDumpChunk), for transports whose dump cannot carry an fd.
    pub fn render_dump(&self, args: &[String]) -> Result<Vec<u8>> {
        // Read again from the start after a reconnect (a new rendering).
        self.conn.idempotent(|s| {
            let mut out = Vec::new();
            let mut id = 0;
            loop {
                let chunk = s.renderDumpChunk(args, id, out.len() as i64)?;
                if chunk.data.is_empty() && !chunk.done {
                    return Err(Error::local(
                        ExceptionCode::IllegalState,
                        format!("renderDumpChunk made no progress at offset {}", out.len()),
                    ));
                }
                out.extend_from_slice(&chunk.data);
                id = chunk.snapshotId;
                if chunk.done {
                    return Ok(out);
                }
            }
        })
    }

    pub fn reset_high_water_mark(&self, pid: i32) -> Result<()> {
        self.conn.idempotent(|s| s.resetHighWaterMark(pid))
    }
}

fn aidl_size(size: u64) -> Result<i64> {
    i64::try_from(size).map_err(|_| {
        Error::local(
            ExceptionCode::IllegalArgument,
            format!("size {size} does not fit the 64-bit signed AIDL size"),
        )
    })
}

fn request(heap: &str, size: i64, name: &str, flags: i32) -> AllocationRequest {
    AllocationRequest {
        heapName: heap.to_string(),
        size,
        name: name.to_string(),
        flags,
    }
}

/// An owned buffer: closing it (drop) releases this process's reference.
///
/// Only fds whose pages cannot go away under a mapping become one: a
/// dma-buf, or a memfd sealed against shrinking (the memfd heap seals its
/// buffers so). Its size is the fd's own (`fstat`), checked against what
/// the service said.
#[derive(Debug)]
pub struct DmaBuffer {
    fd: OwnedFd,
    kind: BufferFdKind,
    size: u64,
    inode: u64,
    heap: String,
}

impl DmaBuffer {
    fn from_reply(b: Buffer) -> Result<DmaBuffer> {
        let fd: OwnedFd =
            b.fd.ok_or_else(|| {
                Error::local(ExceptionCode::IllegalState, "service returned no fd".into())
            })?
            .into();
        let bad = |what: String| Error::local(ExceptionCode::IllegalState, what);
        let sys::BufferFdInfo { kind, size, inode } = sys::inspect_buffer_fd(fd.as_fd())
            .map_err(|e| bad(format!("the service's fd is not a buffer: {e}")))?;
        if b.size < 0 || b.size as u64 != size || b.inode as u64 != inode {
            return Err(bad(format!(
                "the service said {} bytes, inode {}; the fd it sent is {size} bytes, inode {inode}",
                b.size, b.inode
            )));
        }
        Ok(DmaBuffer {
            fd,
            kind,
            size,
            inode,
            heap: b.heapName,
        })
    }

    /// Wraps a buffer fd received from another process. Refused unless it
    /// is a dma-buf (`fstatfs` magic) or a memfd sealed with
    /// `F_SEAL_SHRINK`: any other file could be truncated by another holder
    /// while mapped.
    pub fn from_owned_fd(fd: OwnedFd) -> io::Result<DmaBuffer> {
        let sys::BufferFdInfo { kind, size, inode } = sys::inspect_buffer_fd(fd.as_fd())?;
        let heap = fdinfo(fd.as_fd())
            .and_then(|i| i.exporter)
            .unwrap_or_default();
        Ok(DmaBuffer {
            fd,
            kind,
            size,
            inode,
            heap,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }

    /// Page-rounded size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The buffer's inode (fdinfo `ino:`), its identity across processes.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The heap that served it (or the exporter, for a received buffer).
    pub fn heap(&self) -> &str {
        &self.heap
    }

    /// Whether this is a real dma-buf (false for the memfd fallback heap).
    pub fn is_dmabuf(&self) -> bool {
        self.kind == BufferFdKind::DmaBuf
    }

    /// The name as the kernel has it now (fdinfo `name:`; for a memfd, its name).
    pub fn name(&self) -> io::Result<String> {
        if let Some(info) = fdinfo(self.fd()).filter(|i| i.exporter.is_some()) {
            return Ok(info.name.unwrap_or_default());
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?;
        let link = link.to_string_lossy();
        Ok(link
            .strip_prefix("/memfd:")
            .map(|s| s.strip_suffix(" (deleted)").unwrap_or(s))
            .unwrap_or("")
            .to_string())
    }

    /// Renames the buffer (dma-bufs only: a memfd's name is fixed at creation).
    pub fn set_name(&self, name: &str) -> io::Result<()> {
        if !self.is_dmabuf() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "renaming needs a dma-buf; memfd heap buffers keep their name",
            ));
        }
        check_name(name)?;
        sys::dma_buf_set_name(self.fd(), name)
    }

    /// Maps the whole buffer for CPU access in `dir`; the access is
    /// bracketed by DMA_BUF_IOCTL_SYNC start now and end on drop.
    ///
    /// Takes `&mut self`: one handle gives one mapping at a time. One
    /// after the other is fine:
    ///
    /// ```no_run
    /// # use dmabufd_client::DmaBuffer;
    /// # use dmabufd_client::sys::SyncDirection;
    /// fn in_turn(buf: &mut DmaBuffer) {
    ///     let mut a = buf.map(SyncDirection::Write).unwrap();
    ///     a.fill(1).unwrap();
    ///     drop(a);
    ///     let b = buf.map(SyncDirection::Read).unwrap();
    ///     assert_eq!(b.to_vec()[0], 1);
    /// }
    /// ```
    ///
    /// two at once do not compile (E0499, two mutable borrows):
    ///
    /// ```compile_fail,E0499
    /// # use dmabufd_client::DmaBuffer;
    /// # use dmabufd_client::sys::SyncDirection;
    /// fn twice(buf: &mut DmaBuffer) {
    ///     let mut a = buf.map(SyncDirection::Write).unwrap();
    ///     let b = buf.map(SyncDirection::Read).unwrap(); // second &mut borrow
    ///     a.fill(1).unwrap();
    ///     drop(b);
    /// }
    /// ```
    ///
    /// and a mapping cannot outlive its buffer (E0515) — it lives as long
    /// as the borrow of the handle:
    ///
    /// ```no_run
    /// # use dmabufd_client::{DmaBuffer, MappedBuffer};
    /// # use dmabufd_client::sys::SyncDirection;
    /// fn borrowed(buf: &mut DmaBuffer) -> MappedBuffer<'_> {
    ///     buf.map(SyncDirection::Read).unwrap()
    /// }
    /// ```
    ///
    ///
    /// ```compile_fail,E0515
    /// # use dmabufd_client::{DmaBuffer, MappedBuffer};
    /// # use dmabufd_client::sys::SyncDirection;
    /// fn outlive(mut buf: DmaBuffer) -> MappedBuffer<'static> {
    ///     buf.map(SyncDirection::Read).unwrap() // borrows the local buf
    /// }
    /// ```
    ///
    /// Other processes (and other handles of the same buffer) may still
    /// write it: that aliasing is inherent to shared memory, so the safe
    /// accessors copy with volatile accesses and the zero-copy slices are
    /// `unsafe` (see [`MappedBuffer`]).
    pub fn map(&mut self, dir: SyncDirection) -> io::Result<MappedBuffer<'_>> {
        // The length is the fd's own now, not what anyone said earlier.
        let (_, size) = sys::check_buffer_fd(self.fd())?;
        let len =
            usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mapping = Mapping::new(self.fd(), len, dir != SyncDirection::Read)?;
        sync(self.fd(), dir, false)?;
        Ok(MappedBuffer {
            buf: self,
            mapping,
            dir,
        })
    }

    /// The buffer's implicit fences as a sync_file (kernel 6.0+ dma-bufs).
    pub fn export_sync_file(&self, dir: SyncDirection) -> io::Result<OwnedFd> {
        sys::dma_buf_export_sync_file(self.fd(), dir)
            .map_err(|e| unsupported_on_memfd(e, "export_sync_file"))
    }

    /// Attaches a sync_file's fences to the buffer (kernel 6.0+ dma-bufs).
    pub fn import_sync_file(
        &self,
        dir: SyncDirection,
        sync_file: BorrowedFd<'_>,
    ) -> io::Result<()> {
        sys::dma_buf_import_sync_file(self.fd(), dir, sync_file)
            .map_err(|e| unsupported_on_memfd(e, "import_sync_file"))
    }
}

fn unsupported_on_memfd(e: io::Error, what: &str) -> io::Error {
    if e.raw_os_error() == Some(nix::errno::Errno::ENOTTY as i32) {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{what}: not a dma-buf, or the kernel lacks DMA_BUF_IOCTL_*_SYNC_FILE (6.0+)"),
        )
    } else {
        e
    }
}

/// CPU sync; a no-op for memfd buffers, which are not dma-bufs (ENOTTY).
fn sync(fd: BorrowedFd<'_>, dir: SyncDirection, end: bool) -> io::Result<()> {
    match sys::dma_buf_sync(fd, dir, end) {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOTTY as i32) => Ok(()),
        r => r,
    }
}

/// A mapping of a buffer inside a CPU-access bracket.
///
/// The bytes are shared with every other holder of the buffer — other
/// processes, devices — whose writes Rust cannot see. The safe accessors
/// ([`read_at`](Self::read_at), [`write_at`](Self::write_at),
/// [`fill`](Self::fill), [`to_vec`](Self::to_vec)) copy with volatile
/// accesses, which stay defined whatever the others do; the zero-copy
/// [`as_slice`](Self::as_slice) and [`as_mut_slice`](Self::as_mut_slice)
/// are `unsafe`: the caller promises that nobody else touches the buffer
/// while the slice lives. Writing needs `&mut` of the mapping, which needs
/// `&mut` of the one [`DmaBuffer`].
pub struct MappedBuffer<'a> {
    buf: &'a DmaBuffer,
    mapping: Mapping,
    dir: SyncDirection,
}

impl MappedBuffer<'_> {
    /// The mapped length: the buffer's whole size.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// False for a mapping made for [`SyncDirection::Read`].
    pub fn is_writable(&self) -> bool {
        self.mapping.is_writable()
    }

    /// Copies the bytes at `offset` into `out`.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        self.mapping.read_at(offset, out)
    }

    /// Copies `data` to `offset`; refused on a read-only mapping.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.mapping.write_at(offset, data)
    }

    /// Sets every byte; refused on a read-only mapping.
    pub fn fill(&mut self, byte: u8) -> io::Result<()> {
        self.mapping.fill(byte)
    }

    /// A copy of the whole buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.mapping.to_vec()
    }

    /// The bytes, without copying.
    ///
    /// # Safety
    ///
    /// Nothing may write the buffer while the slice lives: no other process
    /// or device holding it, no other handle or mapping of it in this one.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: forwarded: the caller upholds Mapping::as_slice's contract.
        unsafe { self.mapping.as_slice() }
    }

    /// Writable bytes, without copying; `None` for a read-only mapping.
    ///
    /// # Safety
    ///
    /// Nothing else may read or write the buffer while the slice lives: no
    /// other process or device holding it, no other handle or mapping of it
    /// in this one.
    pub unsafe fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // SAFETY: forwarded: the caller upholds Mapping::as_mut_slice's contract.
        unsafe { self.mapping.as_mut_slice() }
    }
}

impl Drop for MappedBuffer<'_> {
    fn drop(&mut self) {
        if let Err(e) = sync(self.buf.fd(), self.dir, true) {
            log::warn!("DMA_BUF_IOCTL_SYNC end failed: {e}");
        }
    }
}

/// What this process's fdinfo of a dma-buf says about it.
#[derive(Default)]
struct FdInfo {
    exporter: Option<String>,
    name: Option<String>,
}

/// This process's fdinfo of `fd`, read as the service's scanner reads
/// others': the first `exp_name:` wins, and `name:` runs to the end (a
/// name may hold anything, so nothing after it is a field).
fn fdinfo(fd: BorrowedFd<'_>) -> Option<FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let mut info = FdInfo::default();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(v) = line.strip_prefix("exp_name:") {
            info.exporter.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("name:") {
            let rest: String = text.split_inclusive('\n').skip(i + 1).collect();
            let name = format!("{v}{rest}");
            let name = name.strip_prefix('\t').unwrap_or(&name);
            info.name = Some(name.strip_suffix('\n').unwrap_or(name).to_string());
            break;
        }
    }
    Some(info)
}

/// The instance name registered with the service manager (and the RPC name).
pub const SERVICE_NAME: &str = "vendor.dmabuf.IDmaBufAllocator/default";

/// The service manager name of allocator instance `instance`
/// (`"default"` gives [`SERVICE_NAME`]).
pub fn service_name(instance: &str) -> String {
    format!("vendor.dmabuf.IDmaBufAllocator/{instance}")
}

/// Checks a buffer name as the service does: at most
/// [`sys::DMA_BUF_NAME_MAX`] bytes, no control characters.
fn check_name(name: &str) -> io::Result<()> {
    let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
    if name.len() > sys::DMA_BUF_NAME_MAX {
        return bad(format!(
            "name {name:?} is {} bytes; at most {} bytes are allowed",
            name.len(),
            sys::DMA_BUF_NAME_MAX
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return bad(format!(
            "name {name:?} contains control character {:#04x}; only printable characters are allowed",
            c as u32
        ));
    }
    Ok(())
}

/// Parses "4096", "64K", "1M", "2G" (binary units; case-insensitive, optional "iB"/"B").
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    fn sealed_memfd(name: &str, size: u64, seals: SealFlag) -> io::Result<OwnedFd> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        nix::unistd::ftruncate(fd.as_fd(), size as i64)?;
        fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        Ok(fd)
    }

    fn refusal(fd: OwnedFd) -> io::Error {
        DmaBuffer::from_owned_fd(fd).expect_err("not a buffer")
    }

    #[test]
    fn only_dma_bufs_and_shrink_sealed_memfds_become_buffers() {
        let unsealed = sealed_memfd("unsealed", 4096, SealFlag::empty()).unwrap();
        let e = refusal(unsealed);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");

        let grow_only = sealed_memfd("grow-only", 4096, SealFlag::F_SEAL_GROW).unwrap();
        assert!(refusal(grow_only).to_string().contains("F_SEAL_SHRINK"));

        let (pipe, _w) = nix::unistd::pipe().unwrap();
        let e = refusal(pipe);
        assert!(e.to_string().contains("not a buffer"), "{e}");

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(refusal(file.into()).to_string().contains("not a buffer"));

        let sealed = sealed_memfd("sealed", 8192, SealFlag::F_SEAL_SHRINK).unwrap();
        let mut b = DmaBuffer::from_owned_fd(sealed).unwrap();
        assert_eq!(b.size(), 8192);
        assert!(!b.is_dmabuf());
        let mut m = b.map(SyncDirection::ReadWrite).unwrap();
        assert_eq!(m.len(), 8192);
        m.fill(7).unwrap();
        m.write_at(4093, b"abcdef").unwrap();
        let v = m.to_vec();
        assert!(v[..4093].iter().all(|&x| x == 7));
        assert_eq!(&v[4093..4099], b"abcdef");
        assert!(v[4099..].iter().all(|&x| x == 7));
        let mut out = [0u8; 3];
        m.read_at(4094, &mut out).unwrap();
        assert_eq!(&out, b"bcd");
        assert!(m.read_at(8190, &mut out).is_err(), "past the end");
    }

    /// A mapping of a sealed memfd that grew keeps the size it had: the
    /// length comes from fstat at map time, never past the fd's end.
    #[test]
    fn a_mapping_never_extends_past_the_fds_size() {
        let fd = sealed_memfd("grows", 4096, SealFlag::F_SEAL_SHRINK).unwrap();
        let e = Mapping::new(fd.as_fd(), 8192, false).unwrap_err();
        assert!(e.to_string().contains("8192 bytes of a 4096-byte"), "{e}");
        nix::unistd::ftruncate(fd.as_fd(), 12288).unwrap();
        let mut b = DmaBuffer::from_owned_fd(fd).unwrap();
        assert_eq!(b.map(SyncDirection::Read).unwrap().len(), 12288);
    }

    /// The fd the service sent is checked against what it said: a size or
    /// inode that differs is refused, not trusted.
    #[test]
    fn a_reply_whose_fd_differs_from_what_the_service_said_is_refused() {
        let reply = |size: i64, inode: Option<i64>| {
            let fd = sealed_memfd("reply", 4096, SealFlag::F_SEAL_SHRINK).unwrap();
            let ino = nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino as i64;
            Buffer {
                fd: Some(rsbinder::ParcelFileDescriptor::new(fd)),
                inode: inode.unwrap_or(ino),
                size,
                heapName: "system".into(),
                name: "reply".into(),
            }
        };
        assert_eq!(
            DmaBuffer::from_reply(reply(4096, None)).unwrap().size(),
            4096
        );
        let e = DmaBuffer::from_reply(reply(1 << 20, None)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Local);
        assert!(e.message().contains("said 1048576 bytes"), "{e}");
        let e = DmaBuffer::from_reply(reply(4096, Some(1))).unwrap_err();
        assert!(e.message().contains("inode 1"), "{e}");
        let unsealed = sealed_memfd("unsealed", 4096, SealFlag::empty()).unwrap();
        let e = DmaBuffer::from_reply(Buffer {
            fd: Some(rsbinder::ParcelFileDescriptor::new(unsealed)),
            size: 4096,
            ..reply(4096, None)
        })
        .unwrap_err();
        assert!(e.message().contains("not a buffer"), "{e}");
    }
}
