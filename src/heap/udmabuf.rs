//! udmabuf: turns the pages of a sealed memfd into a real dma-buf. The
//! memfd is closed once the dma-buf exists (udmabuf pins its pages), so the
//! service keeps nothing.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::SealFlag;

use super::memfd::sealed_memfd;
use super::{Heap, HeapKind};
use crate::sys;

/// The heap name the udmabuf backend serves under.
pub const UDMABUF_HEAP_NAME: &str = "udmabuf";

pub struct UdmabufHeap {
    dev: OwnedFd,
}

impl UdmabufHeap {
    pub fn open(path: &Path) -> io::Result<UdmabufHeap> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_CLOEXEC.bits())
            .open(path)?;
        Ok(UdmabufHeap { dev: f.into() })
    }
}

impl Heap for UdmabufHeap {
    fn name(&self) -> &str {
        UDMABUF_HEAP_NAME
    }

    fn kind(&self) -> HeapKind {
        HeapKind::Udmabuf
    }

    fn allocate(&self, size: u64, name: &str) -> io::Result<OwnedFd> {
        // udmabuf requires F_SEAL_SHRINK and refuses F_SEAL_WRITE.
        let memfd = sealed_memfd(name, size, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW)?;
        let buf = sys::udmabuf_create(self.dev.as_fd(), memfd.as_fd(), size)?;
        sys::dma_buf_set_name(buf.as_fd(), name)?;
        Ok(buf)
    }
}
