//! The embedded fallback: sealed memfds. Not dma-bufs (no exporter, no
//! device can import them), reported as kind MEMFD so nobody mistakes them
//! for a real heap; they let the service and its clients run anywhere.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::{Heap, HeapKind};

pub struct MemfdHeap {
    name: String,
}

impl MemfdHeap {
    pub fn new(name: &str) -> MemfdHeap {
        MemfdHeap {
            name: name.to_string(),
        }
    }
}

/// A memfd of `size` bytes named `name` that can neither shrink nor grow,
/// so a holder cannot pull pages out from under a mapping of another.
pub fn sealed_memfd(name: &str, size: u64, seals: SealFlag) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = memfd_create(
        c.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let len = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc_enomem()))?;
    nix::unistd::ftruncate(fd.as_fd(), len)?;
    fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

fn libc_enomem() -> i32 {
    nix::errno::Errno::ENOMEM as i32
}

impl Heap for MemfdHeap {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> HeapKind {
        HeapKind::Memfd
    }

    fn allocate(&self, size: u64, name: &str) -> io::Result<OwnedFd> {
        sealed_memfd(
            name,
            size,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        )
    }

    /// A memfd keeps the name it was created with (`/memfd:NAME` in
    /// procfs); the registry and the reports carry the requested one.
    fn rename(&self, _fd: BorrowedFd<'_>, _name: &str) -> io::Result<()> {
        Ok(())
    }
}
