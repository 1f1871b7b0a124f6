//! The C API of the dmabufd client (`include/dmabufd.h`, generated from
//! this file by cbindgen; `tests/header.rs` keeps it up to date).
//!
//! Every function returns `DMABUFD_OK` (0) or an error code: the AIDL
//! `ErrorCode` values (1..=9) for refusals of the service, and
//! `DMABUFD_E_*` (100 and up) for failures of the client side. The
//! message of the calling thread's last failure is
//! [`dmabufd_last_error`]. A `dmabufd_client` may be used from many
//! threads at once. No Rust panic crosses this boundary: one becomes
//! `DMABUFD_E_INTERNAL`.

#![allow(clippy::missing_safety_doc)] // the header documents each contract
#![allow(non_camel_case_types)] // C type names

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use ::dmabufd_client::aidl::vendor::dmabuf::IDmaBufAllocator::MAX_BATCH_COUNT;
use ::dmabufd_client::{Allocator, DmaBuffer, Error, ErrorKind};

/// Success.
pub const DMABUFD_OK: c_int = 0;
/// The heap is neither a heap nor an alias the service knows (AIDL ErrorCode).
pub const DMABUFD_UNKNOWN_HEAP: c_int = 1;
/// Size 0, or above the heap's or the service's limit (AIDL ErrorCode).
pub const DMABUFD_INVALID_SIZE: c_int = 2;
/// Empty, too long (over 31 bytes) or not printable (AIDL ErrorCode).
pub const DMABUFD_INVALID_NAME: c_int = 3;
/// Flags the service does not know (AIDL ErrorCode).
pub const DMABUFD_INVALID_FLAGS: c_int = 4;
/// The caller's uid would exceed its quota (AIDL ErrorCode).
pub const DMABUFD_QUOTA_EXCEEDED: c_int = 5;
/// The kernel or the memory guard refused the memory (AIDL ErrorCode).
pub const DMABUFD_NO_MEMORY: c_int = 6;
/// No such process (AIDL ErrorCode).
pub const DMABUFD_NO_SUCH_PROCESS: c_int = 7;
/// The reply would not fit one binder transaction (AIDL ErrorCode).
pub const DMABUFD_REPORT_TOO_LARGE: c_int = 8;
/// A paged report's snapshot expired (AIDL ErrorCode).
pub const DMABUFD_STALE_SNAPSHOT: c_int = 9;
/// The service restarted while the allocation was in flight; nothing was
/// handed out and the connection is back: retry.
pub const DMABUFD_E_SERVICE_RESTARTED: c_int = 100;
/// The service cannot be reached (not running, or did not come back).
pub const DMABUFD_E_UNAVAILABLE: c_int = 101;
/// The service answered with a binder exception (e.g. security).
pub const DMABUFD_E_EXCEPTION: c_int = 102;
/// The binder transport refused the call.
pub const DMABUFD_E_TRANSPORT: c_int = 103;
/// An argument refused before anything was sent (NULL, not UTF-8, a count out of range).
pub const DMABUFD_E_INVALID_ARGUMENT: c_int = 104;
/// The output array is too small; `*out_count` says how many are needed.
pub const DMABUFD_E_BUFFER_TOO_SMALL: c_int = 105;
/// A failure inside this library (a reply it cannot use, a caught panic).
pub const DMABUFD_E_INTERNAL: c_int = 106;

/// Longest heap name a `dmabufd_heap_info` or `dmabufd_buffer_info` holds,
/// with its NUL; longer names are cut.
pub const DMABUFD_NAME_MAX: usize = 64;

/// A connection to the service; opaque.
pub struct dmabufd_client {
    alloc: Allocator,
}

/// What the service made: the fd goes in a separate out-parameter.
#[repr(C)]
pub struct dmabufd_buffer_info {
    /// Bytes (page-rounded), the fd's own size.
    pub size: u64,
    /// The buffer's inode: its identity across processes.
    pub inode: u64,
    /// The heap that served it (after alias resolution), NUL-terminated.
    pub heap: [c_char; DMABUFD_NAME_MAX],
}

/// One heap the service serves.
#[repr(C)]
pub struct dmabufd_heap_info {
    /// NUL-terminated.
    pub name: [c_char; DMABUFD_NAME_MAX],
    /// AIDL HeapKind: 0 DMA_HEAP, 1 UDMABUF, 2 MEMFD.
    pub kind: c_int,
    /// Largest single allocation, bytes.
    pub max_allocation_size: i64,
    /// Bytes of live buffers the service allocated from it.
    pub allocated_bytes: i64,
    /// Live buffers the service allocated from it.
    pub buffer_count: c_int,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// A failure: its code and message.
struct Failure(c_int, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match (e.kind(), e.error_code()) {
            (_, Some(c)) => c.0,
            (ErrorKind::ServiceRestarted, _) => DMABUFD_E_SERVICE_RESTARTED,
            (ErrorKind::Unavailable, _) => DMABUFD_E_UNAVAILABLE,
            (ErrorKind::Exception, _) => DMABUFD_E_EXCEPTION,
            (ErrorKind::Transport, _) => DMABUFD_E_TRANSPORT,
            _ => DMABUFD_E_INTERNAL,
        };
        Failure(code, e.to_string())
    }
}

fn invalid(what: String) -> Failure {
    Failure(DMABUFD_E_INVALID_ARGUMENT, what)
}

/// Runs `f` with panics caught; records the message of a failure.
fn guarded(f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure(
            DMABUFD_E_INTERNAL,
            format!("internal error in libdmabufd: {why}"),
        ))
    });
    match outcome {
        Ok(()) => {
            set_last_error("");
            DMABUFD_OK
        }
        Err(Failure(code, message)) => {
            set_last_error(&message);
            code
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn copy_name(dst: &mut [c_char; DMABUFD_NAME_MAX], src: &str) {
    let n = src.len().min(DMABUFD_NAME_MAX - 1);
    for (d, s) in dst.iter_mut().zip(&src.as_bytes()[..n]) {
        *d = *s as c_char;
    }
    dst[n] = 0;
}

/// Connects to dmabufd: over RPC binder on the Unix socket `socket_path`
/// when it is not NULL; else the way every client does (`$DMABUFD_SOCKET`,
/// else kernel binder where a binder device exists, else the default
/// socket). On success `*out` is a client to pass to
/// `dmabufd_disconnect` once done.
#[no_mangle]
pub unsafe extern "C" fn dmabufd_connect(
    socket_path: *const c_char,
    out: *mut *mut dmabufd_client,
) -> c_int {
    guarded(|| {
        if out.is_null() {
            return Err(invalid("out is NULL".into()));
        }
        let rpc = if socket_path.is_null() {
            None
        } else {
            // SAFETY: not NULL; the caller promises a NUL-terminated string.
            Some(PathBuf::from(unsafe { text(socket_path, "socket_path") }?))
        };
        let alloc = Allocator::connect_to(rpc)?;
        let c = Box::new(dmabufd_client { alloc });
        // SAFETY: out is not NULL and points to writable storage.
        unsafe { *out = Box::into_raw(c) };
        Ok(())
    })
}

/// Closes the connection. Buffers already allocated stay valid (their fds
/// are the caller's). NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn dmabufd_disconnect(client: *mut dmabufd_client) {
    let _ = guarded(|| {
        if !client.is_null() {
            // SAFETY: from dmabufd_connect's Box::into_raw, not freed before.
            drop(unsafe { Box::from_raw(client) });
        }
        Ok(())
    });
}

fn info_of(b: &DmaBuffer, out: &mut dmabufd_buffer_info) {
    out.size = b.size();
    out.inode = b.inode();
    copy_name(&mut out.heap, b.heap());
}

/// Allocates `size` bytes from `heap` (a heap or an alias) named `name`
/// with `flags` (0, or `DMABUFD_FLAG_NO_CPU_ACCESS`). On success `*out_fd`
/// is the buffer's fd (close-on-exec; the caller owns it and closes it to
/// free the buffer) and, when `out_info` is not NULL, `*out_info`
/// describes it.
#[no_mangle]
pub unsafe extern "C" fn dmabufd_alloc(
    client: *const dmabufd_client,
    heap: *const c_char,
    size: u64,
    name: *const c_char,
    flags: i32,
    out_fd: *mut c_int,
    out_info: *mut dmabufd_buffer_info,
) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract for each argument (header).
        let (c, heap, name) = unsafe { request_args(client, heap, name)? };
        if out_fd.is_null() {
            return Err(invalid("out_fd is NULL".into()));
        }
        let b = c.alloc.allocate_with_flags(heap, size, name, flags)?;
        // SAFETY: out_info is NULL or points to a writable info.
        if let Some(info) = unsafe { out_info.as_mut() } {
            info_of(&b, info);
        }
        let fd: OwnedFd = b.into_owned_fd();
        // SAFETY: out_fd is not NULL and points to a writable int.
        unsafe { *out_fd = fd.into_raw_fd() };
        Ok(())
    })
}

/// The client, heap and name of an allocation request.
///
/// # Safety
/// As [`client_ref`] for `client`, and as [`text`] for `heap` and `name`.
unsafe fn request_args<'a>(
    client: *const dmabufd_client,
    heap: *const c_char,
    name: *const c_char,
) -> Result<(&'a dmabufd_client, &'a str, &'a str), Failure> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        Ok((
            client_ref(client)?,
            text(heap, "heap")?,
            text(name, "name")?,
        ))
    }
}

/// # Safety
/// `c` is NULL or from `dmabufd_connect` and not yet disconnected.
unsafe fn client_ref<'a>(c: *const dmabufd_client) -> Result<&'a dmabufd_client, Failure> {
    // SAFETY: the caller passes NULL or a live client.
    unsafe { c.as_ref() }.ok_or_else(|| invalid("client is NULL".into()))
}

/// Allocates `count` buffers (1..=64) of one request, all or nothing. On
/// success `out_fds[0..count]` are their fds (the caller's) and, when
/// `out_infos` is not NULL, `out_infos[0..count]` describe them; on failure
/// nothing was allocated and no fd is written.
#[no_mangle]
pub unsafe extern "C" fn dmabufd_alloc_batch(
    client: *const dmabufd_client,
    heap: *const c_char,
    size: u64,
    name: *const c_char,
    flags: i32,
    count: usize,
    out_fds: *mut c_int,
    out_infos: *mut dmabufd_buffer_info,
) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract for each argument (header).
        let (c, heap, name) = unsafe { request_args(client, heap, name)? };
        if out_fds.is_null() {
            return Err(invalid("out_fds is NULL".into()));
        }
        if count == 0 || count > MAX_BATCH_COUNT as usize {
            return Err(invalid(format!(
                "count {count}: a batch is 1 to {MAX_BATCH_COUNT} buffers"
            )));
        }
        let bufs = c.alloc.allocate_batch(heap, size, name, flags, count)?;
        if bufs.len() != count {
            return Err(Failure(
                DMABUFD_E_INTERNAL,
                format!("asked for {count} buffers, the service sent {}", bufs.len()),
            ));
        }
        for (i, b) in bufs.into_iter().enumerate() {
            if !out_infos.is_null() {
                // SAFETY: out_infos has room for count infos; i < count.
                info_of(&b, unsafe { &mut *out_infos.add(i) });
            }
            // SAFETY: out_fds has room for count ints; i < count.
            unsafe { *out_fds.add(i) = b.into_owned_fd().into_raw_fd() };
        }
        Ok(())
    })
}

/// The heaps the service serves. Writes up to `capacity` entries to `out`
/// and their number to `*out_count`; when there are more than `capacity`,
/// returns `DMABUFD_E_BUFFER_TOO_SMALL` with `*out_count` the number
/// needed (call with `out` NULL and `capacity` 0 to ask).
#[no_mangle]
pub unsafe extern "C" fn dmabufd_heaps(
    client: *const dmabufd_client,
    out: *mut dmabufd_heap_info,
    capacity: usize,
    out_count: *mut usize,
) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract (header).
        let c = unsafe { client_ref(client)? };
        if out_count.is_null() {
            return Err(invalid("out_count is NULL".into()));
        }
        let heaps = c.alloc.heaps()?;
        // SAFETY: out_count is not NULL and writable.
        unsafe { *out_count = heaps.len() };
        if heaps.len() > capacity || (out.is_null() && !heaps.is_empty()) {
            return Err(Failure(
                DMABUFD_E_BUFFER_TOO_SMALL,
                format!("{} heaps, room for {capacity}", heaps.len()),
            ));
        }
        for (i, h) in heaps.iter().enumerate() {
            // SAFETY: out has room for capacity entries and i < len <= capacity.
            let o = unsafe { &mut *out.add(i) };
            copy_name(&mut o.name, &h.name);
            o.kind = h.kind.0;
            o.max_allocation_size = h.maxAllocationSize;
            o.allocated_bytes = h.allocatedBytes;
            o.buffer_count = h.bufferCount;
        }
        Ok(())
    })
}

/// The message of this thread's last failed call ("" after a success).
/// Valid until this thread's next call into the library.
#[no_mangle]
pub extern "C" fn dmabufd_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of an error code ("QUOTA_EXCEEDED", "SERVICE_RESTARTED", ...);
/// a static string.
#[no_mangle]
pub extern "C" fn dmabufd_error_name(code: c_int) -> *const c_char {
    let name: &'static CStr = match code {
        DMABUFD_OK => c"OK",
        DMABUFD_UNKNOWN_HEAP => c"UNKNOWN_HEAP",
        DMABUFD_INVALID_SIZE => c"INVALID_SIZE",
        DMABUFD_INVALID_NAME => c"INVALID_NAME",
        DMABUFD_INVALID_FLAGS => c"INVALID_FLAGS",
        DMABUFD_QUOTA_EXCEEDED => c"QUOTA_EXCEEDED",
        DMABUFD_NO_MEMORY => c"NO_MEMORY",
        DMABUFD_NO_SUCH_PROCESS => c"NO_SUCH_PROCESS",
        DMABUFD_REPORT_TOO_LARGE => c"REPORT_TOO_LARGE",
        DMABUFD_STALE_SNAPSHOT => c"STALE_SNAPSHOT",
        DMABUFD_E_SERVICE_RESTARTED => c"SERVICE_RESTARTED",
        DMABUFD_E_UNAVAILABLE => c"UNAVAILABLE",
        DMABUFD_E_EXCEPTION => c"EXCEPTION",
        DMABUFD_E_TRANSPORT => c"TRANSPORT",
        DMABUFD_E_INVALID_ARGUMENT => c"INVALID_ARGUMENT",
        DMABUFD_E_BUFFER_TOO_SMALL => c"BUFFER_TOO_SMALL",
        DMABUFD_E_INTERNAL => c"INTERNAL",
        _ => c"UNKNOWN_ERROR_CODE",
    };
    name.as_ptr()
}

/// Prefer "<heap>-uncached" where such a heap exists (no CPU access wanted).
pub const DMABUFD_FLAG_NO_CPU_ACCESS: i32 = 1;

const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<dmabufd_client>();
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The AIDL ErrorCode values are the C codes, one for one.
    #[test]
    fn refusal_codes_are_the_aidl_values() {
        use ::dmabufd_client::aidl::vendor::dmabuf::ErrorCode::ErrorCode as E;
        for (c, e) in [
            (DMABUFD_UNKNOWN_HEAP, E::UNKNOWN_HEAP),
            (DMABUFD_INVALID_SIZE, E::INVALID_SIZE),
            (DMABUFD_INVALID_NAME, E::INVALID_NAME),
            (DMABUFD_INVALID_FLAGS, E::INVALID_FLAGS),
            (DMABUFD_QUOTA_EXCEEDED, E::QUOTA_EXCEEDED),
            (DMABUFD_NO_MEMORY, E::NO_MEMORY),
            (DMABUFD_NO_SUCH_PROCESS, E::NO_SUCH_PROCESS),
            (DMABUFD_REPORT_TOO_LARGE, E::REPORT_TOO_LARGE),
            (DMABUFD_STALE_SNAPSHOT, E::STALE_SNAPSHOT),
        ] {
            assert_eq!(c, e.0);
            // SAFETY: dmabufd_error_name returns a static C string.
            let name = unsafe { CStr::from_ptr(dmabufd_error_name(c)) };
            assert_eq!(name.to_str().unwrap(), ::dmabufd_client::error_code_name(e));
        }
    }

    #[test]
    fn a_panic_becomes_internal_with_its_message() {
        let code = guarded(|| panic!("boom"));
        assert_eq!(code, DMABUFD_E_INTERNAL);
        // SAFETY: dmabufd_last_error returns this thread's live C string.
        let msg = unsafe { CStr::from_ptr(dmabufd_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }

    #[test]
    fn null_arguments_are_refused_not_dereferenced() {
        let mut fd = -1;
        // SAFETY: NULLs are what is under test; the rest are valid.
        let code = unsafe {
            dmabufd_alloc(
                std::ptr::null(),
                c"system".as_ptr(),
                4096,
                c"x".as_ptr(),
                0,
                &mut fd,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(code, DMABUFD_E_INVALID_ARGUMENT);
        assert_eq!(fd, -1);
        // SAFETY: as above.
        let code = unsafe { dmabufd_connect(std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(code, DMABUFD_E_INVALID_ARGUMENT);
    }
}
