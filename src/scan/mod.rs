//! Where the system is scanned: one shape for "which buffers exist and who
//! references them", filled by swappable sources (after libdmabufinfo's
//! BPF-first, fallback-second per-buffer stats):
//!
//! - [`bpf`]: the kernel's own lists, read through BPF iterators
//!   (`iter/dmabuf` for every live dma-buf, `iter/task_file` and
//!   `iter/task_vma` for holders and mappings). Exact, includes buffers only
//!   the kernel holds, nothing a holder can forge, O(dma-buf references).
//! - [`procfs`](crate::procfs): `/proc/<pid>/fd`, `fdinfo` and `maps`. The
//!   fallback (no BTF, no BPF privilege, memfd heaps); it cannot see buffers
//!   only the kernel holds, so liveness there is approximate.
//!
//! The accounting consumes [`Scan`] and never knows which source filled it.

pub mod bpf;
pub mod source;

pub use source::{BpfSource, ProcfsSource, ScanSource, SourceChoice};

use crate::procfs::ProcessScan;

/// What a buffer is: the kernel numbers dma-buf inodes and shmem (memfd)
/// inodes separately, so an inode alone does not name a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufferKind {
    /// A real dma-buf (dma-buf filesystem, `DMA_BUF_MAGIC`).
    DmaBuf,
    /// A memfd: a buffer only if the service's memfd heap allocated it; the
    /// accounting decides.
    Memfd,
}

impl BufferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BufferKind::DmaBuf => "dmabuf",
            BufferKind::Memfd => "memfd",
        }
    }

    pub fn parse(s: &str) -> Option<BufferKind> {
        match s {
            "dmabuf" => Some(BufferKind::DmaBuf),
            "memfd" => Some(BufferKind::Memfd),
            _ => None,
        }
    }
}

/// The identity of a buffer across processes: kind AND inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferKey {
    pub kind: BufferKind,
    pub inode: u64,
}

impl BufferKey {
    pub fn dmabuf(inode: u64) -> BufferKey {
        BufferKey {
            kind: BufferKind::DmaBuf,
            inode,
        }
    }

    pub fn memfd(inode: u64) -> BufferKey {
        BufferKey {
            kind: BufferKind::Memfd,
            inode,
        }
    }
}

/// One buffer in the kernel's list of live buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveBuffer {
    pub key: BufferKey,
    pub size: u64,
    pub exporter: String,
    pub name: String,
}

/// One full view of the system, from whichever source.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Every process that references a buffer (or could not be read), by
    /// pid. Sources that see only referencing processes leave out the rest.
    pub processes: Vec<ProcessScan>,
    /// The kernel's list of every live buffer, where the source has one;
    /// `None` means liveness can only be inferred from holders.
    pub live: Option<Vec<LiveBuffer>>,
}
