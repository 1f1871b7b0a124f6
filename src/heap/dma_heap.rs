//! Kernel DMA-BUF heaps: one char device per heap under /dev/dma_heap.
//! Devices are opened once at start-up and held, so the service can drop
//! the privileges that opening them needed.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::{Heap, HeapKind};
use crate::sys;

pub struct DmaHeap {
    name: String,
    dev: OwnedFd,
}

impl DmaHeap {
    pub fn open(path: &Path) -> io::Result<DmaHeap> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "heap path has no name"))?
            .to_string();
        // Read-only is enough for DMA_HEAP_IOCTL_ALLOC, and all Android's
        // 0444 heap nodes allow.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_CLOEXEC.bits())
            .open(path)?;
        Ok(DmaHeap {
            name,
            dev: f.into(),
        })
    }

    /// Opens every char device in `dir`, sorted by name. A missing directory
    /// is an empty list; a device that fails to open is reported in the
    /// second list with its error, so start-up can say why.
    pub fn discover(dir: &Path) -> (Vec<DmaHeap>, Vec<(String, io::Error)>) {
        let mut heaps = Vec::new();
        let mut failed = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return (heaps, failed);
        };
        let mut paths: Vec<_> = entries
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_char_device()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        paths.sort();
        for p in paths {
            match DmaHeap::open(&p) {
                Ok(h) => heaps.push(h),
                Err(e) => failed.push((p.display().to_string(), e)),
            }
        }
        (heaps, failed)
    }
}

impl Heap for DmaHeap {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> HeapKind {
        HeapKind::DmaHeap
    }

    fn allocate(&self, size: u64, name: &str) -> io::Result<OwnedFd> {
        let fd = sys::dma_heap_alloc(self.dev.as_fd(), size)?;
        // Named before the fd leaves the service, so every holder sees it.
        sys::dma_buf_set_name(fd.as_fd(), name)?;
        Ok(fd)
    }
}
