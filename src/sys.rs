//! The kernel calls only the service makes: DMA-BUF heap and udmabuf
//! allocation ioctls and the BPF iterator commands (the only `unsafe` code
//! of the service crate). Layouts follow include/uapi/linux/{dma-heap,
//! udmabuf,bpf}.h. What every buffer holder uses — the dma-buf ioctls,
//! mmap, fd passing — is the client crate's, re-exported here.

pub use dmabufd_client::sys::*;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

#[repr(C)]
#[derive(Default)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

nix::ioctl_readwrite!(ioctl_dma_heap_alloc, b'H', 0x0, DmaHeapAllocationData);

nix::ioctl_write_ptr!(ioctl_udmabuf_create, b'u', 0x42, UdmabufCreate);

/// Allocates `len` bytes from an open heap device (`O_RDWR|O_CLOEXEC`, no heap flags).
pub fn dma_heap_alloc(heap: BorrowedFd<'_>, len: u64) -> io::Result<OwnedFd> {
    let mut data = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags: (libc_o_rdwr() | libc_o_cloexec()) as u32,
        heap_flags: 0,
    };
    // SAFETY: `heap` is an open fd for the duration of the call and `data`
    // is a live, correctly laid out dma_heap_allocation_data.
    unsafe { ioctl_dma_heap_alloc(heap.as_raw_fd(), &mut data) }.map_err(errno)?;
    // SAFETY: on success the kernel installed a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd as RawFd) })
}

/// Turns `size` bytes of a sealed memfd into a dma-buf (close-on-exec).
pub fn udmabuf_create(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    size: u64,
) -> io::Result<OwnedFd> {
    let c = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: 0x01, // UDMABUF_FLAGS_CLOEXEC
        offset: 0,
        size,
    };
    // SAFETY: `c` is live for the call; UDMABUF_CREATE returns a new fd.
    let fd = unsafe { ioctl_udmabuf_create(dev.as_raw_fd(), &c) }.map_err(errno)?;
    // SAFETY: the returned fd is new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn libc_o_rdwr() -> i32 {
    nix::fcntl::OFlag::O_RDWR.bits()
}

fn libc_o_cloexec() -> i32 {
    nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// `bpf(2)` commands and the attach type the iterator links use
/// (include/uapi/linux/bpf.h).
const BPF_LINK_CREATE: i64 = 28;
const BPF_ITER_CREATE: i64 = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` as BPF_LINK_CREATE reads it, for an iterator without
/// link info (no iter_info: every task / every buffer).
#[repr(C)]
#[derive(Default)]
struct BpfLinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_attr` as BPF_ITER_CREATE reads it.
#[repr(C)]
#[derive(Default)]
struct BpfIterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// The `bpf(2)` commands below return a new fd or -1 with errno.
fn bpf_fd_command<T>(cmd: i64, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised (#[repr(C)], no padding
    // bytes left undefined: every field is explicit) prefix of union
    // bpf_attr for `cmd`, and its size is passed with it; the kernel only
    // reads it (LINK_CREATE and ITER_CREATE write nothing back) and zero-fills
    // the rest of the union. On success the return value is a new fd that
    // this process owns and nothing else refers to, so OwnedFd may take it.
    let fd = unsafe {
        let ret = nix::libc::syscall(
            nix::libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        );
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(ret as RawFd)
    };
    Ok(fd)
}

/// Attaches a loaded `iter/...` program: BPF_LINK_CREATE with attach type
/// BPF_TRACE_ITER. The link keeps the program loaded.
pub fn bpf_iter_link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = BpfLinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        ..Default::default()
    };
    bpf_fd_command(BPF_LINK_CREATE, &attr)
}

/// A new, readable instance of an iterator link (BPF_ITER_CREATE): reading
/// it to EOF runs the program over everything once. Needs no capability:
/// holding the link fd is the permission.
pub fn bpf_iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = BpfIterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    bpf_fd_command(BPF_ITER_CREATE, &attr)
}

/// How many malloc arenas the service's threads share. glibc gives each new
/// thread its own arena (up to 8 per core) and rsbinder's RPC server runs a
/// thread per connection, so without a bound the service's resident memory
/// grows with the number of clients that ever called at once and stays
/// there as fragmented free arena space. Two arenas are enough for a
/// service whose work is short calls under one registry lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 2;

/// Bounds the malloc arenas (see [`MALLOC_ARENAS`]); call before the
/// service starts its threads. Only glibc has arenas to bound: on Android
/// (scudo) and musl this does nothing.
pub fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; M_ARENA_MAX takes any
    // positive value and affects arenas created after the call.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Hands the free memory of every malloc arena back to the kernel
/// (`malloc_trim(0)`): reports and scans allocate in bursts whose freed
/// pages glibc otherwise keeps resident. Cheap (it walks the free lists) and
/// a no-op where the allocator is not glibc's.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the allocator's own
    // heaps to the kernel; it touches no memory the program holds.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
