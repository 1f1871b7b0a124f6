//! What a holder of a buffer asks the kernel: the dma-buf ioctls (CPU
//! sync, name, sync_file), which fds are buffers, mmap, and fd passing
//! (SCM_RIGHTS). With the connection's thread bookkeeping, the only
//! `unsafe` code in the client. Layouts follow include/uapi/linux/dma-buf.h.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::errno::Errno;

/// Longest buffer name the kernel stores (DMA_BUF_NAME_LEN = 32 with the NUL).
pub const DMA_BUF_NAME_MAX: usize = 31;

#[repr(C)]
struct DmaBufSync {
    flags: u64,
}

#[repr(C)]
struct DmaBufExportSyncFile {
    flags: u32,
    fd: i32,
}

#[repr(C)]
struct DmaBufImportSyncFile {
    flags: u32,
    fd: i32,
}

nix::ioctl_write_ptr!(ioctl_dma_buf_sync, b'b', 0, DmaBufSync);
nix::ioctl_write_ptr!(ioctl_dma_buf_set_name_b, b'b', 1, u64);
nix::ioctl_readwrite!(
    ioctl_dma_buf_export_sync_file,
    b'b',
    2,
    DmaBufExportSyncFile
);
nix::ioctl_write_ptr!(
    ioctl_dma_buf_import_sync_file,
    b'b',
    3,
    DmaBufImportSyncFile
);
fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Names a dma-buf (DMA_BUF_SET_NAME_B). `name` must be <= 31 bytes without NUL.
pub fn dma_buf_set_name(buf: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the kernel reads a NUL-terminated string at the pointer; `c`
    // outlives the call. The ioctl's declared u64 type is only its size code.
    unsafe { ioctl_dma_buf_set_name_b(buf.as_raw_fd(), c.as_ptr() as *const u64) }
        .map_err(errno)?;
    Ok(())
}

/// Direction of CPU access for DMA_BUF_IOCTL_SYNC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncDirection {
    Read,
    Write,
    ReadWrite,
}

impl SyncDirection {
    fn bits(self) -> u64 {
        match self {
            SyncDirection::Read => 1,
            SyncDirection::Write => 2,
            SyncDirection::ReadWrite => 3,
        }
    }
}

/// DMA_BUF_IOCTL_SYNC start (`end == false`) or end of CPU access.
pub fn dma_buf_sync(buf: BorrowedFd<'_>, dir: SyncDirection, end: bool) -> io::Result<()> {
    let s = DmaBufSync {
        flags: dir.bits() | if end { 4 } else { 0 },
    };
    // SAFETY: `s` is a live dma_buf_sync for the duration of the call.
    unsafe { ioctl_dma_buf_sync(buf.as_raw_fd(), &s) }.map_err(errno)?;
    Ok(())
}

/// The buffer's implicit fences as a sync_file (kernel 6.0+).
pub fn dma_buf_export_sync_file(buf: BorrowedFd<'_>, dir: SyncDirection) -> io::Result<OwnedFd> {
    let mut d = DmaBufExportSyncFile {
        flags: dir.bits() as u32,
        fd: -1,
    };
    // SAFETY: `d` is live and correctly laid out for the call.
    unsafe { ioctl_dma_buf_export_sync_file(buf.as_raw_fd(), &mut d) }.map_err(errno)?;
    // SAFETY: on success the kernel installed a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(d.fd) })
}

/// Adds a sync_file's fences to the buffer (kernel 6.0+).
pub fn dma_buf_import_sync_file(
    buf: BorrowedFd<'_>,
    dir: SyncDirection,
    sync_file: BorrowedFd<'_>,
) -> io::Result<()> {
    let d = DmaBufImportSyncFile {
        flags: dir.bits() as u32,
        fd: sync_file.as_raw_fd(),
    };
    // SAFETY: `d` is live; the kernel only reads it and the fd it names.
    unsafe { ioctl_dma_buf_import_sync_file(buf.as_raw_fd(), &d) }.map_err(errno)?;
    Ok(())
}

/// `f_type` of the dma-buf pseudo filesystem (uapi `linux/magic.h`).
pub const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// What a buffer fd is, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferFdKind {
    /// A dma-buf (`fstatfs` magic `DMA_BUF_MAGIC`): its size is fixed.
    DmaBuf,
    /// A memfd sealed against shrinking (`F_SEAL_SHRINK`).
    SealedMemfd,
}

/// Checks that `fd` is a buffer that cannot shrink under a mapping — a
/// dma-buf, or a memfd sealed with `F_SEAL_SHRINK` — and returns its kind
/// and its size now (`fstat`). Anything else could be truncated by any
/// holder while mapped, and touching the lost pages raises SIGBUS.
pub fn check_buffer_fd(fd: BorrowedFd<'_>) -> io::Result<(BufferFdKind, u64)> {
    inspect_buffer_fd(fd).map(|b| (b.kind, b.size))
}

/// A buffer fd as [`inspect_buffer_fd`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFdInfo {
    pub kind: BufferFdKind,
    /// Its size now (`st_size`).
    pub size: u64,
    /// Its inode (`st_ino`): the buffer's identity in procfs and reports.
    pub inode: u64,
}

/// [`check_buffer_fd`], with the inode from the same `fstat` (every buffer
/// the service sends is checked, so one syscall fewer per buffer counts).
pub fn inspect_buffer_fd(fd: BorrowedFd<'_>) -> io::Result<BufferFdInfo> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let st = nix::sys::stat::fstat(fd).map_err(errno)?;
    let info = |kind| BufferFdInfo {
        kind,
        size: st.st_size as u64,
        inode: st.st_ino,
    };
    let magic = nix::sys::statfs::fstatfs(fd)
        .map_err(errno)?
        .filesystem_type()
        .0 as i64;
    if magic == DMA_BUF_MAGIC {
        return Ok(info(BufferFdKind::DmaBuf));
    }
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(seals) if SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) => {
            Ok(info(BufferFdKind::SealedMemfd))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a memfd without F_SEAL_SHRINK: any holder could truncate it under a \
             mapping; only dma-bufs and memfds sealed against shrinking are buffers",
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a buffer: neither a dma-buf (filesystem magic {magic:#x}, \
                 want {DMA_BUF_MAGIC:#x}) nor a sealed memfd"
            ),
        )),
    }
}

/// A shared mapping of the first bytes of a buffer, unmapped on drop.
///
/// The memory is shared with every other holder of the buffer, in this
/// process and in others, and with devices: Rust cannot see their writes,
/// so a `&[u8]` over it would let the compiler assume bytes that may
/// change under it. The safe accessors therefore copy with volatile reads
/// and writes (as `vm-memory` does for memory shared with a guest); the
/// zero-copy slices are `unsafe`, with the caller promising that nobody
/// else writes (or, for a mutable slice, accesses) the buffer meanwhile.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; the
// accessors take &self for reads and &mut self for writes.
unsafe impl Send for Mapping {}
// SAFETY: as above; through &self there are only volatile reads and the
// unsafe slice, whose caller vouches for the absence of writers.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of a buffer fd, read-write when
    /// `writable`. Only fds that cannot shrink are taken (a dma-buf or a
    /// memfd sealed with `F_SEAL_SHRINK`, see [`check_buffer_fd`]), and
    /// `len` must be within the buffer's size (`fstat`): so every mapped
    /// page stays there while mapped.
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        let (_, size) = check_buffer_fd(fd)?;
        if len as u64 > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {len} bytes of a {size}-byte buffer"),
            ));
        }
        // SAFETY: the buffer cannot shrink (checked above) and is at least
        // `len` bytes long, so the mapped range stays backed.
        unsafe { Self::new_unchecked(fd, len, writable) }
    }

    /// Maps `len` bytes of any mappable fd from offset 0.
    ///
    /// # Safety
    ///
    /// The file behind `fd` must stay at least `len` bytes long for as long
    /// as the mapping lives: an access past a truncated end raises SIGBUS.
    pub unsafe fn new_unchecked(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
    ) -> io::Result<Mapping> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len_nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cannot map 0 bytes"))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed
        // address), so it aliases no Rust object; it lives until drop.
        let p = unsafe { mmap(None, len_nz, prot, MapFlags::MAP_SHARED, fd, 0) }.map_err(errno)?;
        Ok(Mapping {
            ptr: p.cast(),
            len,
            writable,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The mapping's address (for comparing with /proc/<pid>/maps).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn range(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.ptr.as_ptr().wrapping_add(offset)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} are past the end of the {}-byte mapping",
                    self.len
                ),
            )),
        }
    }

    /// Copies `out.len()` bytes at `offset` into `out` (volatile reads).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        let src = self.range(offset, out.len())?;
        let mut i = 0;
        while i < out.len() {
            let p = src.wrapping_add(i);
            if p as usize % 8 == 0 && out.len() - i >= 8 {
                // SAFETY: p..p+8 is inside the live, readable mapping
                // (range) and 8-aligned.
                let w = unsafe { std::ptr::read_volatile(p as *const u64) };
                out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: p is inside the live, readable mapping.
                out[i] = unsafe { std::ptr::read_volatile(p) };
                i += 1;
            }
        }
        Ok(())
    }

    /// Copies `data` to `offset` (volatile writes); refused on a read-only mapping.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let dst = self.writable_range(offset, data.len())?;
        let mut i = 0;
        while i < data.len() {
            let p = dst.wrapping_add(i);
            if p as usize % 8 == 0 && data.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[i..i + 8]);
                // SAFETY: p..p+8 is inside the live, writable mapping
                // (writable_range) and 8-aligned.
                unsafe { std::ptr::write_volatile(p as *mut u64, u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: p is inside the live, writable mapping.
                unsafe { std::ptr::write_volatile(p, data[i]) };
                i += 1;
            }
        }
        Ok(())
    }

    /// Sets every byte to `byte` (volatile writes); refused on a read-only mapping.
    pub fn fill(&mut self, byte: u8) -> io::Result<()> {
        let dst = self.writable_range(0, self.len)?;
        let word = u64::from_ne_bytes([byte; 8]);
        // mmap returns page-aligned addresses, so whole words from the start.
        let words = self.len / 8;
        for i in 0..words {
            // SAFETY: word i lies inside the live, writable, page-aligned mapping.
            unsafe { std::ptr::write_volatile((dst as *mut u64).add(i), word) };
        }
        for i in words * 8..self.len {
            // SAFETY: i < len: inside the live, writable mapping.
            unsafe { std::ptr::write_volatile(dst.add(i), byte) };
        }
        Ok(())
    }

    /// A copy of the whole mapping.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.read_at(0, &mut v)
            .expect("the whole mapping is in range");
        v
    }

    fn writable_range(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the mapping is read-only (mapped for SyncDirection::Read)",
            ));
        }
        self.range(offset, len)
    }

    /// The mapped bytes as a slice, without copying.
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing may write the buffer: no other
    /// mapping or handle of it in this process, no other process holding
    /// it, no device. Rust cannot check that for memory other processes
    /// share.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is mapped readable for the life of self;
        // the caller vouches that nothing writes it while borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes as a mutable slice, without copying; `None` for a
    /// read-only mapping (a write there would fault).
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing else may read or write the buffer: no
    /// other mapping or handle of it in this process, no other process
    /// holding it, no device.
    pub unsafe fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: ptr..ptr+len is mapped read-write for the life of self,
        // &mut self excludes this mapping's other accessors, and the caller
        // vouches for everyone else.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows
        // the slice any more (drop has &mut self).
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// Sends `fds` with `data` over a Unix stream socket (SCM_RIGHTS). The
/// fds travel with the first bytes the kernel takes; a short write (a
/// signal, a full non-blocking socket) is completed, so the peer always
/// gets all of `data`. Interrupted calls are retried; a full non-blocking
/// socket is waited on.
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let mut sent = 0;
    let mut fds_sent = raw.is_empty();
    while sent < data.len() || !fds_sent {
        let iov = [io::IoSlice::new(&data[sent..])];
        let cmsg: &[ControlMessage<'_>] = if fds_sent { &[] } else { &rights };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) if sent < data.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("socket took 0 of the {} bytes left", data.len() - sent),
                ))
            }
            Ok(n) => {
                sent += n;
                fds_sent = true;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_writable(sock)?,
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(())
}

fn wait_writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        match poll(
            &mut [PollFd::new(sock, PollFlags::POLLOUT)],
            PollTimeout::NONE,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Most fds [`recv_fds`] accepts with one message.
pub const MAX_RECV_FDS: usize = 16;

/// Receives up to `buf.len()` bytes and the fds sent with them (SCM_RIGHTS,
/// at most [`MAX_RECV_FDS`]). When the sender sent more fds than that the
/// kernel truncates the control message (MSG_CTRUNC): that is an error,
/// and the fds that did arrive are closed rather than leaked.
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_RECV_FDS]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(errno)?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        // `msg` (which borrows the buffer) is not used past this point.
        let closed = take_rights(&cmsg_space).len();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "fd passing truncated: the sender sent more than {MAX_RECV_FDS} fds in one \
                 message; closed the {closed} that arrived"
            ),
        ));
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(errno)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS installed these fds into this process's
            // table for this message; nothing else refers to them yet.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// The fds of every SCM_RIGHTS header in a control buffer the kernel filled
/// (nix will not iterate a truncated one). The buffer starts zeroed, so a
/// zero length ends the walk where the kernel stopped writing.
fn take_rights(control: &[u8]) -> Vec<OwnedFd> {
    use nix::libc::{cmsghdr, SCM_RIGHTS, SOL_SOCKET};
    const ALIGN: usize = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(ALIGN) * ALIGN;
    let hdr = align(std::mem::size_of::<cmsghdr>());
    let word = |at: usize, len: usize| control.get(at..at + len);
    let mut fds = Vec::new();
    let mut at = 0;
    while let Some(len_bytes) = word(at, ALIGN) {
        let len = usize::from_ne_bytes(len_bytes.try_into().unwrap_or([0; ALIGN]));
        if len < hdr || at + len > control.len() {
            break;
        }
        let int =
            |off: usize| word(at + off, 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        let (level, kind) = (int(ALIGN), int(ALIGN + 4));
        if level == Some(SOL_SOCKET) && kind == Some(SCM_RIGHTS) {
            for i in 0..(len - hdr) / 4 {
                if let Some(fd) = int(hdr + 4 * i).filter(|&fd| fd >= 0) {
                    // SAFETY: the kernel installed this fd into our table
                    // for this message and wrote its number here; nothing
                    // else refers to it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        at += align(len);
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn memfd(size: i64, seals: nix::fcntl::SealFlag) -> OwnedFd {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(
            c"inspect",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::ftruncate(fd.as_fd(), size).unwrap();
        if !seals.is_empty() {
            fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        fd
    }

    #[test]
    fn a_buffer_fd_is_inspected_with_one_fstat_for_size_and_inode() {
        use nix::fcntl::SealFlag;
        let fd = memfd(8192, SealFlag::F_SEAL_SHRINK);
        let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
        assert_eq!(
            inspect_buffer_fd(fd.as_fd()).unwrap(),
            BufferFdInfo {
                kind: BufferFdKind::SealedMemfd,
                size: 8192,
                inode: st.st_ino,
            }
        );
        assert_eq!(
            check_buffer_fd(fd.as_fd()).unwrap(),
            (BufferFdKind::SealedMemfd, 8192)
        );
        // Not buffers: a memfd any holder could shrink, and a pipe.
        let unsealed = memfd(4096, SealFlag::empty());
        let e = inspect_buffer_fd(unsealed.as_fd()).unwrap_err();
        assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let e = inspect_buffer_fd(r.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a buffer"), "{e}");
    }

    /// More fds than recv_fds has room for: the kernel truncates the
    /// control message (MSG_CTRUNC). That is an error, and the fds that did
    /// arrive are closed: here, every copy of a pipe's write end, so its
    /// read end sees EOF.
    #[test]
    fn truncated_fd_passing_is_an_error_and_closes_what_arrived() {
        let (a, b) = pair();
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let copies: Vec<BorrowedFd<'_>> = (0..20).map(|_| w.as_fd()).collect();
        send_fds(a.as_fd(), b"x", &copies).unwrap();
        drop(w);
        let e = recv_fds(b.as_fd(), &mut [0u8; 8]).unwrap_err();
        let mut buf = [0u8; 1];
        assert_eq!(
            nix::unistd::read(r.as_fd(), &mut buf),
            Ok(0),
            "a received write end is still open"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    /// A short write (here: a non-blocking socket whose buffer fills) does
    /// not lose the rest of the data: send_fds sends it all, the fds once.
    #[test]
    fn short_writes_are_completed() {
        let (a, b) = pair();
        let flags = OFlag::from_bits_truncate(fcntl(a.as_fd(), FcntlArg::F_GETFL).unwrap());
        fcntl(a.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
        let data = vec![0xabu8; 4 << 20];
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (mut got, mut fds) = (0usize, 0usize);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let (n, f) = recv_fds(b.as_fd(), &mut buf).unwrap();
                if n == 0 {
                    return (got, fds);
                }
                got += n;
                fds += f.len();
            }
        });
        let (_r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let sent = send_fds(a.as_fd(), &data, &[w.as_fd()]);
        drop(a);
        let (got, fds) = reader.join().unwrap();
        sent.unwrap();
        assert_eq!((got, fds), (data.len(), 1));
    }
}
