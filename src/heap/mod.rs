//! Heap backends: where buffers come from. One trait, three implementations:
//! kernel DMA-BUF heaps (`/dev/dma_heap/*`), udmabuf over sealed memfds, and
//! plain sealed memfds as the embedded fallback where neither exists.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

pub mod dma_heap;
pub mod memfd;
pub mod udmabuf;

/// What kind of memory a heap hands out (mirrors the AIDL `HeapKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeapKind {
    DmaHeap,
    Udmabuf,
    Memfd,
}

impl fmt::Display for HeapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeapKind::DmaHeap => "dma-heap",
            HeapKind::Udmabuf => "udmabuf",
            HeapKind::Memfd => "memfd",
        })
    }
}

/// A source of buffers. `allocate` returns an fd the caller owns, already
/// named `name` (the name is validated by the caller: <= 31 bytes, printable).
pub trait Heap: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> HeapKind;
    /// `size` is already page-aligned and > 0.
    fn allocate(&self, size: u64, name: &str) -> io::Result<OwnedFd>;
    /// Names a buffer this heap made earlier (a pooled one, at hand-out):
    /// `DMA_BUF_SET_NAME` on a dma-buf. A memfd's name is fixed at creation,
    /// so the memfd heap keeps it (the registry has the requested name).
    fn rename(&self, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        crate::sys::dma_buf_set_name(fd, name)
    }
}

pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}

/// Rounds `len` up to a whole number of pages (None on overflow).
pub fn page_align(len: u64) -> Option<u64> {
    let p = page_size();
    len.checked_add(p - 1).map(|v| v / p * p)
}
