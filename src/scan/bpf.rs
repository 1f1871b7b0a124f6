//! The BPF scan source: every dma-buf in the system (`iter/dmabuf`, Linux
//! 6.16+), every dma-buf fd (`iter/task_file`) and every dma-buf mapping
//! (`iter/task_vma`) of every process, each read in one pass by a BPF
//! iterator instead of a walk over procfs.
//!
//! The programs are C in `bpf/` (rebuilt by `bpf/build.sh`); their compiled
//! objects are embedded here and CO-RE relocated against
//! `/sys/kernel/btf/vmlinux` when loaded (with aya: pure Rust, no C
//! toolchain or libelf at build time). They write fixed-size little-endian
//! binary records, so a buffer name cannot forge other fields the way it can
//! in fdinfo text.
//!
//! Loading and attaching needs root (CAP_BPF + CAP_PERFMON). The attached
//! links are kept; every read creates a new iterator instance from a link
//! (BPF_ITER_CREATE), which needs no capability, so reads keep working after
//! the service drops to its own uid with every capability cleared.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use aya::programs::Iter;
use aya::{Btf, EbpfLoader};

use crate::sys;

/// The task iterators (iter/task_file, iter/task_vma), built from bpf/task_iter.bpf.c.
pub static TASK_ITER_OBJECT: &[u8] = include_bytes!("../../bpf/task_iter.bpf.o");
/// The buffer list iterator (iter/dmabuf), built from bpf/dmabuf_iter.bpf.c.
pub static DMABUF_ITER_OBJECT: &[u8] = include_bytes!("../../bpf/dmabuf_iter.bpf.o");

/// Where the kernel's own BTF is; CO-RE relocation needs it.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Program names (the C function names) in the objects.
const PROG_DMABUF: &str = "dmabufd_dmabuf";
const PROG_TASK_FILE: &str = "dmabufd_task_file";
const PROG_TASK_VMA: &str = "dmabufd_task_vma";

/// Record sizes, as written by the programs.
pub const DMABUF_RECORD_LEN: usize = 80;
pub const FD_RECORD_LEN: usize = 24;
pub const VMA_RECORD_LEN: usize = 40;
/// Size of the string fields of a dmabuf record (DMA_BUF_NAME_LEN).
const NAME_FIELD_LEN: usize = 32;

/// One live dma-buf, from iter/dmabuf (or a pinned Android iterator).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelBuffer {
    pub inode: u64,
    pub size: u64,
    /// `exp_name`: "system", "udmabuf", ...
    pub exporter: String,
    /// The buffer's name (at most 31 bytes; empty when unnamed). Bytes that
    /// are not UTF-8 are replaced.
    pub name: String,
}

/// One dma-buf fd of one process, from iter/task_file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdRef {
    pub tgid: i32,
    pub fd: u32,
    pub inode: u64,
    pub size: u64,
}

/// One dma-buf mapping of one process, from iter/task_vma.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapRef {
    pub tgid: i32,
    pub start: u64,
    pub end: u64,
    /// Offset of the mapping in the buffer, in pages (`vm_pgoff`; the offset
    /// column of /proc/<pid>/maps is this times the page size).
    pub pgoff: u64,
    pub inode: u64,
}

/// Why the iterators could not be loaded or attached.
#[derive(Debug)]
pub enum BpfError {
    /// No kernel BTF: CO-RE relocation and iterator attach need it.
    NoKernelBtf { path: &'static str, message: String },
    /// The embedded or given object could not be read or its BTF loaded
    /// (EPERM: not root / no CAP_BPF).
    Object {
        object: &'static str,
        permission: bool,
        message: String,
    },
    /// The object has no program of that name.
    ProgramMissing {
        object: &'static str,
        program: &'static str,
    },
    /// The kernel has no such iterator (no `bpf_iter_<name>` in its BTF).
    IteratorMissing { iterator: &'static str },
    /// BPF_PROG_LOAD failed (EPERM: not root / no CAP_BPF+CAP_PERFMON).
    Load {
        program: &'static str,
        iterator: &'static str,
        permission: bool,
        message: String,
    },
    /// BPF_LINK_CREATE failed.
    Attach {
        program: &'static str,
        iterator: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for BpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BpfError::NoKernelBtf { path, message } => write!(
                f,
                "no usable kernel BTF at {path} (needs CONFIG_DEBUG_INFO_BTF): {message}"
            ),
            BpfError::Object {
                object,
                permission,
                message,
            } => {
                write!(f, "cannot load the BPF object {object}: {message}")?;
                if *permission {
                    write!(f, "{EPERM_HINT}")?;
                }
                Ok(())
            }
            BpfError::ProgramMissing { object, program } => {
                write!(f, "the BPF object {object} has no program {program}")
            }
            BpfError::IteratorMissing { iterator } => write!(
                f,
                "this kernel has no {iterator} BPF iterator (no bpf_iter_{} in its BTF)",
                iterator.trim_start_matches("iter/")
            ),
            BpfError::Load {
                program,
                iterator,
                permission,
                message,
            } => {
                write!(f, "loading {iterator} ({program}) failed: {message}")?;
                if *permission {
                    write!(f, "{EPERM_HINT}")?;
                }
                Ok(())
            }
            BpfError::Attach {
                program,
                iterator,
                error,
            } => write!(f, "attaching {iterator} ({program}) failed: {error}"),
        }
    }
}

impl std::error::Error for BpfError {}

const EPERM_HINT: &str = " (EPERM: loading BPF needs root with CAP_BPF and CAP_PERFMON)";

fn object_error(object: &'static str, e: aya::EbpfError) -> BpfError {
    BpfError::Object {
        object,
        permission: chain_has_errno(&e, nix::libc::EPERM),
        message: error_chain(&e),
    }
}

/// The attached iterator links. Holding a link keeps its program loaded;
/// each read makes a new iterator instance from it. `Send + Sync`: reads
/// only borrow the fds.
#[derive(Debug)]
pub struct BpfIters {
    task_file: OwnedFd,
    task_vma: OwnedFd,
    dmabuf: Option<OwnedFd>,
    missing: Vec<&'static str>,
}

impl BpfIters {
    /// Loads and attaches the embedded objects as root (needs CAP_BPF and
    /// CAP_PERFMON). The task iterators are required; iter/dmabuf is
    /// optional (absent before 6.16, or when the kernel lacks the fix for
    /// truncated reads).
    pub fn load() -> Result<BpfIters, BpfError> {
        BpfIters::load_from(TASK_ITER_OBJECT, Some(DMABUF_ITER_OBJECT))
    }

    /// As [`BpfIters::load`], from the given objects (e.g. rebuilt ones).
    pub fn load_from(task_obj: &[u8], dmabuf_obj: Option<&[u8]>) -> Result<BpfIters, BpfError> {
        let btf = Btf::from_sys_fs().map_err(|e| BpfError::NoKernelBtf {
            path: KERNEL_BTF,
            message: error_chain(&e),
        })?;
        let mut missing = Vec::new();
        let mut task = EbpfLoader::new()
            .btf(Some(&btf))
            .load(task_obj)
            .map_err(|e| object_error("task_iter.bpf.o", e))?;
        let task_file = attach(
            &mut task,
            "task_iter.bpf.o",
            PROG_TASK_FILE,
            "task_file",
            &btf,
        )?;
        let task_vma = attach(
            &mut task,
            "task_iter.bpf.o",
            PROG_TASK_VMA,
            "task_vma",
            &btf,
        )?;
        // The links hold the programs; the aya object can go.
        drop(task);

        let mut dmabuf = None;
        match dmabuf_obj {
            None => missing.push("iter/dmabuf (no object given)"),
            Some(_) if !kernel_has_iterator(&btf, "dmabuf") => {
                missing.push("iter/dmabuf (kernel < 6.16)")
            }
            Some(_) if !kernel_has_struct(&btf, "dmabuf_iter_priv") => {
                // Before 234483565dbb output past the first read (~32 KiB)
                // was lost: an incomplete list is worse than none.
                missing.push("iter/dmabuf (kernel without the truncated-read fix)")
            }
            Some(obj) => {
                let mut ebpf = EbpfLoader::new()
                    .btf(Some(&btf))
                    .load(obj)
                    .map_err(|e| object_error("dmabuf_iter.bpf.o", e))?;
                dmabuf = Some(attach(
                    &mut ebpf,
                    "dmabuf_iter.bpf.o",
                    PROG_DMABUF,
                    "dmabuf",
                    &btf,
                )?);
            }
        }
        Ok(BpfIters {
            task_file,
            task_vma,
            dmabuf,
            missing,
        })
    }

    /// Whether [`BpfIters::buffers`] works (iter/dmabuf is attached).
    pub fn has_buffer_list(&self) -> bool {
        self.dmabuf.is_some()
    }

    /// Every live dma-buf in the system (iter/dmabuf), whoever holds it.
    pub fn buffers(&self) -> io::Result<Vec<KernelBuffer>> {
        let link = self.dmabuf.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the iter/dmabuf BPF iterator is not attached (kernel < 6.16?)",
            )
        })?;
        decode_buffers(&read_iterator(link)?)
    }

    /// Every dma-buf fd of every process in this pid namespace.
    pub fn fd_refs(&self) -> io::Result<Vec<FdRef>> {
        decode_fd_refs(&read_iterator(&self.task_file)?)
    }

    /// Every dma-buf mapping of every process in this pid namespace.
    pub fn map_refs(&self) -> io::Result<Vec<MapRef>> {
        decode_map_refs(&read_iterator(&self.task_vma)?)
    }

    /// What is not available, and why (e.g. `"iter/dmabuf (kernel < 6.16)"`).
    pub fn missing(&self) -> Vec<&'static str> {
        self.missing.clone()
    }
}

fn kernel_has_iterator(btf: &Btf, name: &str) -> bool {
    btf.id_by_type_name_kind(&format!("bpf_iter_{name}"), aya_obj::btf::BtfKind::Func)
        .is_ok()
}

fn kernel_has_struct(btf: &Btf, name: &str) -> bool {
    btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Struct)
        .is_ok()
}

/// Loads program `program` of `ebpf` as iterator `iter` and creates its link.
fn attach(
    ebpf: &mut aya::Ebpf,
    object: &'static str,
    program: &'static str,
    iter: &'static str,
    btf: &Btf,
) -> Result<OwnedFd, BpfError> {
    let iterator = match iter {
        "dmabuf" => "iter/dmabuf",
        "task_file" => "iter/task_file",
        _ => "iter/task_vma",
    };
    if !kernel_has_iterator(btf, iter) {
        return Err(BpfError::IteratorMissing { iterator });
    }
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(BpfError::ProgramMissing { object, program })?;
    prog.load(iter, btf).map_err(|e| BpfError::Load {
        program,
        iterator,
        permission: chain_has_errno(&e, nix::libc::EPERM),
        message: error_chain(&e),
    })?;
    let fd = prog.fd().map_err(|e| BpfError::Load {
        program,
        iterator,
        permission: false,
        message: error_chain(&e),
    })?;
    sys::bpf_iter_link_create(fd.as_fd()).map_err(|error| BpfError::Attach {
        program,
        iterator,
        error,
    })
}

/// An error and its sources, ": "-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn chain_has_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(errno) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Runs an iterator once: a new instance from `link`, read to EOF (records
/// may span reads; the kernel fills at most a page or so per read).
fn read_iterator(link: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut file = File::from(sys::bpf_iter_create(link.as_fd())?);
    let mut out = Vec::with_capacity(4096);
    file.read_to_end(&mut out)?;
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A NUL-padded string field: the bytes up to the first NUL.
fn str_at(b: &[u8], at: usize, len: usize) -> String {
    let field = &b[at..at + len];
    let end = field.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn whole_records(bytes: &[u8], len: usize, what: &str) -> io::Result<()> {
    if bytes.len() % len != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what} iterator returned {} bytes, not a multiple of its {len}-byte record",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes iter/dmabuf output: `u64 inode, u64 size, char exp_name[32],
/// char name[32]` per buffer.
pub fn decode_buffers(bytes: &[u8]) -> io::Result<Vec<KernelBuffer>> {
    whole_records(bytes, DMABUF_RECORD_LEN, "iter/dmabuf")?;
    Ok(bytes
        .chunks_exact(DMABUF_RECORD_LEN)
        .map(|r| KernelBuffer {
            inode: u64_at(r, 0),
            size: u64_at(r, 8),
            exporter: str_at(r, 16, NAME_FIELD_LEN),
            name: str_at(r, 16 + NAME_FIELD_LEN, NAME_FIELD_LEN),
        })
        .collect())
}

/// Decodes iter/task_file output: `u32 tgid, u32 fd, u64 inode, u64 size`
/// per fd; exact duplicates (threads of a process whose leader exited) are
/// dropped.
pub fn decode_fd_refs(bytes: &[u8]) -> io::Result<Vec<FdRef>> {
    whole_records(bytes, FD_RECORD_LEN, "iter/task_file")?;
    let mut seen = HashSet::new();
    Ok(bytes
        .chunks_exact(FD_RECORD_LEN)
        .map(|r| FdRef {
            tgid: u32_at(r, 0) as i32,
            fd: u32_at(r, 4),
            inode: u64_at(r, 8),
            size: u64_at(r, 16),
        })
        .filter(|f| seen.insert(f.clone()))
        .collect())
}

/// Decodes iter/task_vma output: `u32 tgid, u32 pad, u64 start, u64 end,
/// u64 pgoff, u64 inode` per mapping; exact duplicates are dropped.
pub fn decode_map_refs(bytes: &[u8]) -> io::Result<Vec<MapRef>> {
    whole_records(bytes, VMA_RECORD_LEN, "iter/task_vma")?;
    let mut seen = HashSet::new();
    Ok(bytes
        .chunks_exact(VMA_RECORD_LEN)
        .map(|r| MapRef {
            tgid: u32_at(r, 0) as i32,
            start: u64_at(r, 8),
            end: u64_at(r, 16),
            pgoff: u64_at(r, 24),
            inode: u64_at(r, 32),
        })
        .filter(|m| seen.insert(m.clone()))
        .collect())
}

/// Parses the text of Android's pinned dma-buf iterator
/// (`/sys/fs/bpf/dmabuf/prog_dmabufIter_iter_dmabuf`, the format of the
/// kernel selftest `progs/dmabuf_iter.c`): four lines per buffer, `inode`,
/// `size`, `name` (possibly empty; `\n` in names printed as spaces) and
/// `exporter`. A group whose inode or size is not a number is skipped, as is
/// an incomplete last group.
pub fn parse_pinned_dmabuf_text(text: &str) -> Vec<KernelBuffer> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if text.ends_with('\n') {
        lines.pop();
    }
    lines
        .chunks_exact(4)
        .filter_map(|g| {
            Some(KernelBuffer {
                inode: g[0].trim().parse().ok()?,
                size: g[1].trim().parse().ok()?,
                name: g[2].to_string(),
                exporter: g[3].to_string(),
            })
        })
        .collect()
}

/// Reads a pinned dma-buf iterator link (each open runs it once).
pub fn read_pinned_buffers(path: &Path) -> io::Result<Vec<KernelBuffer>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(parse_pinned_dmabuf_text(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(s: &[u8]) -> [u8; NAME_FIELD_LEN] {
        let mut a = [0u8; NAME_FIELD_LEN];
        a[..s.len()].copy_from_slice(s);
        a
    }

    fn dmabuf_record(inode: u64, size: u64, exp: &[u8], name: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&inode.to_le_bytes());
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&padded(exp));
        r.extend_from_slice(&padded(name));
        assert_eq!(r.len(), DMABUF_RECORD_LEN);
        r
    }

    #[test]
    fn dmabuf_records_decode_field_by_field() {
        let mut bytes = dmabuf_record(0x1122_3344_5566_7788, 65536, b"system", b"");
        // A name made to look like other fields stays a name.
        let evil = b"x\nino:\t1\nsize:\t999";
        bytes.extend(dmabuf_record(42, 4096, b"udmabuf", evil));
        // 31 bytes, the longest name the kernel keeps.
        bytes.extend(dmabuf_record(7, 1, b"system", &[b'n'; 31]));
        let bufs = decode_buffers(&bytes).unwrap();
        assert_eq!(
            bufs[0],
            KernelBuffer {
                inode: 0x1122_3344_5566_7788,
                size: 65536,
                exporter: "system".into(),
                name: String::new()
            }
        );
        assert_eq!(bufs[1].inode, 42);
        assert_eq!(bufs[1].size, 4096);
        assert_eq!(bufs[1].exporter, "udmabuf");
        assert_eq!(bufs[1].name.as_bytes(), evil);
        assert_eq!(bufs[2].name, "n".repeat(31));
        assert_eq!(bufs.len(), 3);
    }

    #[test]
    fn fd_and_vma_records_decode_and_drop_exact_duplicates() {
        let mut fd = Vec::new();
        for (tgid, fdn, ino, size) in [
            (100u32, 3u32, 9u64, 4096u64),
            (100, 3, 9, 4096),
            (101, 7, 9, 4096),
        ] {
            fd.extend_from_slice(&tgid.to_le_bytes());
            fd.extend_from_slice(&fdn.to_le_bytes());
            fd.extend_from_slice(&ino.to_le_bytes());
            fd.extend_from_slice(&size.to_le_bytes());
        }
        let refs = decode_fd_refs(&fd).unwrap();
        assert_eq!(
            refs,
            vec![
                FdRef {
                    tgid: 100,
                    fd: 3,
                    inode: 9,
                    size: 4096
                },
                FdRef {
                    tgid: 101,
                    fd: 7,
                    inode: 9,
                    size: 4096
                },
            ]
        );
        let mut vma = Vec::new();
        for v in [1u32.to_le_bytes(), 0u32.to_le_bytes()] {
            vma.extend_from_slice(&v);
        }
        for v in [0x7f00_0000_0000u64, 0x7f00_0001_0000, 2, 9] {
            vma.extend_from_slice(&v.to_le_bytes());
        }
        let maps = decode_map_refs(&vma).unwrap();
        assert_eq!(
            maps,
            vec![MapRef {
                tgid: 1,
                start: 0x7f00_0000_0000,
                end: 0x7f00_0001_0000,
                pgoff: 2,
                inode: 9
            }]
        );
    }

    #[test]
    fn partial_records_are_an_error_not_garbage() {
        let e = decode_fd_refs(&[0u8; FD_RECORD_LEN + 5]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(decode_buffers(&[0u8; 79]).is_err());
        assert!(decode_map_refs(&[0u8; 41]).is_err());
        assert!(decode_buffers(&[]).unwrap().is_empty());
    }

    #[test]
    fn pinned_text_is_inode_size_name_exporter() {
        let text = "1234\n65536\ncamera preview\nsystem\n77\n4096\n\nudmabuf\n";
        assert_eq!(
            parse_pinned_dmabuf_text(text),
            vec![
                KernelBuffer {
                    inode: 1234,
                    size: 65536,
                    exporter: "system".into(),
                    name: "camera preview".into()
                },
                KernelBuffer {
                    inode: 77,
                    size: 4096,
                    exporter: "udmabuf".into(),
                    name: String::new()
                },
            ]
        );
        // An incomplete last group and a garbled group are skipped.
        assert_eq!(
            parse_pinned_dmabuf_text("1\n2\nn\ne\nx\n3\nn\ne\n5\n6\n").len(),
            1
        );
        assert!(parse_pinned_dmabuf_text("").is_empty());
    }

    #[test]
    fn bpf_iters_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BpfIters>();
    }

    #[test]
    fn load_errors_name_what_failed() {
        if !Path::new(KERNEL_BTF).exists() {
            let e = BpfIters::load_from(b"not an ELF", None).unwrap_err();
            assert!(e.to_string().contains(KERNEL_BTF), "{e}");
            return;
        }
        let e = BpfIters::load_from(b"not an ELF", None).unwrap_err();
        assert!(
            matches!(
                e,
                BpfError::Object {
                    object: "task_iter.bpf.o",
                    ..
                }
            ),
            "{e}"
        );
        // The dmabuf object given as the task object: no task_file program
        // (or, without privileges, EPERM on its BTF load first).
        let msg = BpfIters::load_from(DMABUF_ITER_OBJECT, None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("has no program dmabufd_task_file") || msg.contains("EPERM"),
            "{msg}"
        );
    }

    /// Loads the real objects on this machine's kernel when run as root.
    #[test]
    fn loads_on_this_kernel_as_root() {
        if !nix::unistd::geteuid().is_root() {
            // Not root: the refusal must say so.
            if Path::new(KERNEL_BTF).exists() {
                let msg = BpfIters::load().unwrap_err().to_string();
                assert!(msg.contains("EPERM"), "{msg}");
            }
            eprintln!(
                "skipped: loads_on_this_kernel_as_root needs root (checked the EPERM message)"
            );
            return;
        }
        let iters = match BpfIters::load() {
            Ok(i) => i,
            Err(e) => {
                eprintln!("skipped: loads_on_this_kernel_as_root: {e}");
                return;
            }
        };
        for _ in 0..2 {
            for f in iters.fd_refs().unwrap() {
                assert!(f.tgid > 0 && f.inode > 0, "{f:?}");
            }
            for m in iters.map_refs().unwrap() {
                assert!(m.tgid > 0 && m.end > m.start, "{m:?}");
            }
            if iters.has_buffer_list() {
                for b in iters.buffers().unwrap() {
                    assert!(b.inode > 0, "{b:?}");
                }
            } else {
                assert!(iters.buffers().is_err());
                assert!(!iters.missing().is_empty());
            }
        }
    }
}
