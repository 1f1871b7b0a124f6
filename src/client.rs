//! The client library apps link: connect to the allocator, allocate named
//! buffers, and use them safely (RAII mappings with CPU-access sync guards).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rsbinder::{ExceptionCode, Status, Strong};

use crate::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, ErrorCode::ErrorCode, HeapInfo::HeapInfo,
    HeapKind::HeapKind, IDmaBufAllocator::IDmaBufAllocator, MemoryReport::MemoryReport,
    ProcessMemory::ProcessMemory,
};
use crate::sys::{self, Mapping, SyncDirection};
use crate::transport;

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
            conn: Connection::kernel()?,
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

    pub fn memory_report(&self) -> Result<MemoryReport> {
        self.conn.idempotent(|s| s.getMemoryReport())
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
#[derive(Debug)]
pub struct DmaBuffer {
    fd: OwnedFd,
    size: u64,
    inode: u64,
    heap: String,
}

impl DmaBuffer {
    fn from_reply(b: Buffer) -> Result<DmaBuffer> {
        let fd = b.fd.ok_or_else(|| {
            Error::local(ExceptionCode::IllegalState, "service returned no fd".into())
        })?;
        Ok(DmaBuffer {
            fd: fd.into(),
            size: b.size as u64,
            inode: b.inode as u64,
            heap: b.heapName,
        })
    }

    /// Wraps a buffer fd received from another process.
    pub fn from_owned_fd(fd: OwnedFd) -> io::Result<DmaBuffer> {
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        let heap = fdinfo(fd.as_fd())
            .and_then(|i| i.exporter)
            .unwrap_or_default();
        Ok(DmaBuffer {
            size: st.st_size as u64,
            inode: st.st_ino,
            heap,
            fd,
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
        fdinfo(self.fd()).is_some_and(|i| i.exporter.is_some())
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
        crate::allocator::validate_name(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.message))?;
        sys::dma_buf_set_name(self.fd(), name)
    }

    /// Maps the whole buffer for CPU access in `dir`; the access is
    /// bracketed by DMA_BUF_IOCTL_SYNC start now and end on drop.
    pub fn map(&self, dir: SyncDirection) -> io::Result<MappedBuffer<'_>> {
        let len =
            usize::try_from(self.size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
pub struct MappedBuffer<'a> {
    buf: &'a DmaBuffer,
    mapping: Mapping,
    dir: SyncDirection,
}

impl MappedBuffer<'_> {
    pub fn as_slice(&self) -> &[u8] {
        self.mapping.as_slice()
    }

    /// Writable access; None for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        self.mapping.as_mut_slice()
    }
}

impl Drop for MappedBuffer<'_> {
    fn drop(&mut self) {
        if let Err(e) = sync(self.buf.fd(), self.dir, true) {
            log::warn!("DMA_BUF_IOCTL_SYNC end failed: {e}");
        }
    }
}

/// This process's fdinfo of `fd`, parsed the way the scanner parses others'.
fn fdinfo(fd: BorrowedFd<'_>) -> Option<crate::procfs::FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    Some(crate::procfs::parse_fdinfo(&text))
}
