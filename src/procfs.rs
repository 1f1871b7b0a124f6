//! Where a process is scanned: which DMA-BUFs (and memfd-heap buffers) each
//! process holds through fds and mappings, read from `/proc/<pid>/fd`,
//! `/proc/<pid>/fdinfo` and `/proc/<pid>/maps`.
//!
//! Only procfs is read (no sysfs, no debugfs). Per fd, the link target is
//! read first and fdinfo only for dma-buf links, so ordinary fds cost one
//! `readlink`. A process whose fds or maps cannot be read is returned with
//! the error and the path, never as a process holding nothing.
//!
//! Identity of a buffer is its inode, qualified by what it is
//! ([`BufferKind`]): dma-bufs live on the dma-buf pseudo filesystem and
//! memfds on shmem, so the same inode number may name one of each.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where procfs is mounted on a normal system.
pub const PROC_ROOT: &str = "/proc";

pub use crate::scan::{BufferKey, BufferKind};

/// One buffer as referenced by one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferUse {
    pub key: BufferKey,
    /// Size from fdinfo or `stat` of an fd; `None` when the process only maps
    /// the buffer (a mapping does not tell the buffer's size).
    pub size: Option<u64>,
    /// Highest end offset of this process's mappings of the buffer: a lower
    /// bound of its size when no fd anywhere tells the size.
    pub map_extent: u64,
    /// `exp_name` from fdinfo (dma-bufs with an fd in this process).
    pub exporter: Option<String>,
    /// Current name (fdinfo `name:`, else from the fd link or maps path).
    pub name: String,
    /// fds of the buffer in this process (dup'd fds each count here).
    pub fd_refs: u32,
    /// Mappings (VMAs) of the buffer in this process.
    pub map_refs: u32,
}

/// Why a process could not be scanned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    /// The procfs path that failed.
    pub path: PathBuf,
    pub kind: io::ErrorKind,
    /// `errno`, when the failure came from the kernel.
    pub errno: Option<i32>,
    pub message: String,
}

impl ScanError {
    fn new(path: &Path, e: &io::Error) -> ScanError {
        ScanError {
            path: path.to_path_buf(),
            kind: e.kind(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ScanError {}

/// One process and what it references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessScan {
    pub pid: i32,
    /// Real uid (from `status`; the owner of `/proc/<pid>` if that fails).
    pub uid: u32,
    /// `/proc/<pid>/comm`.
    pub comm: String,
    /// The buffers it references, ordered by key; or why it is unreadable.
    pub result: Result<Vec<BufferUse>, ScanError>,
}

/// Scans every process under `proc_root`. Processes that exit during the
/// scan are left out; processes that cannot be read are included with the
/// error. Ordered by pid.
pub fn scan_all(proc_root: &Path) -> io::Result<Vec<ProcessScan>> {
    scan_all_with(proc_root, Style::LinkFirst)
}

/// The pids under `proc_root`, ascending.
pub fn list_pids(proc_root: &Path) -> io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = fs::read_dir(proc_root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| pid > 0)
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

fn scan_all_with(proc_root: &Path, style: Style) -> io::Result<Vec<ProcessScan>> {
    Ok(list_pids(proc_root)?
        .into_iter()
        .filter_map(|pid| scan_process_with(proc_root, pid, style))
        .collect())
}

/// How many buffer fds (dma-buf or memfd) this process holds. The service
/// holds one only while a reply carrying it is in flight.
pub fn own_buffer_fds() -> usize {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|l| l.to_str().and_then(classify_link).is_some())
        .count()
}

/// The real uid and `comm` of `pid` (both world-readable); `None` when
/// there is no such process.
pub fn identity(proc_root: &Path, pid: i32) -> Option<(u32, String)> {
    let dir = proc_root.join(pid.to_string());
    let comm = match fs::read_to_string(dir.join("comm")) {
        Ok(s) => s.trim_end_matches('\n').to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => String::from("?"),
    };
    let uid = fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_status_uid(&s))
        .or_else(|| fs::metadata(&dir).ok().map(|m| m.uid()))?;
    Some((uid, comm))
}

/// Scans one process. `None` when there is no such process (or it exited
/// during the scan).
pub fn scan_process(proc_root: &Path, pid: i32) -> Option<ProcessScan> {
    scan_process_with(proc_root, pid, Style::LinkFirst)
}

fn scan_process_with(proc_root: &Path, pid: i32, style: Style) -> Option<ProcessScan> {
    let dir = proc_root.join(pid.to_string());
    let (uid, comm) = identity(proc_root, pid)?;
    let mut result = scan_references(&dir, style);
    if let Err(e) = &result {
        let exited = e.kind == io::ErrorKind::NotFound || e.errno == Some(nix::libc::ESRCH);
        if exited && !dir.exists() {
            return None;
        }
        // ESRCH with the directory still there: a zombie, which holds nothing.
        if e.errno == Some(nix::libc::ESRCH) {
            result = Ok(Vec::new());
        }
    }
    Some(ProcessScan {
        pid,
        uid,
        comm,
        result,
    })
}

/// How fds are examined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `readlink` every fd; read fdinfo only of dma-buf links.
    LinkFirst,
    /// Read the fdinfo of every fd looking for `exp_name:`, the way
    /// `dmabuf_dump` does (the benchmark's baseline).
    FdinfoEveryFd,
}

/// Like [`scan_all`], but reading the fdinfo of every fd as `dmabuf_dump`
/// does. Same results, more reads: the baseline for benchmarks.
pub fn scan_all_like_dmabuf_dump(proc_root: &Path) -> io::Result<Vec<ProcessScan>> {
    scan_all_with(proc_root, Style::FdinfoEveryFd)
}

/// [`scan_process`] in the style of [`scan_all_like_dmabuf_dump`].
pub fn scan_process_like_dmabuf_dump(proc_root: &Path, pid: i32) -> Option<ProcessScan> {
    scan_process_with(proc_root, pid, Style::FdinfoEveryFd)
}

/// Reads the fds and maps of the process whose procfs directory is `dir`.
fn scan_references(dir: &Path, style: Style) -> Result<Vec<BufferUse>, ScanError> {
    let mut found: BTreeMap<BufferKey, BufferUse> = BTreeMap::new();

    let fd_dir = dir.join("fd");
    let entries = match fs::read_dir(&fd_dir) {
        Ok(entries) => entries,
        // Another uid's fd/ needs CAP_DAC_READ_SEARCH, which the service
        // does not keep; its fdinfo/ is world-listable and each file needs
        // only ptrace read access (CAP_SYS_PTRACE).
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            scan_fdinfo_only(dir, &mut found)?;
            return add_maps(dir, found);
        }
        Err(e) => return Err(ScanError::new(&fd_dir, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ScanError::new(&fd_dir, &e))?;
        let Some(seen) = examine_fd(dir, &entry.file_name(), style)? else {
            continue;
        };
        let u = found.entry(seen.key).or_insert_with(|| empty_use(seen.key));
        u.fd_refs += 1;
        u.size = Some(seen.size);
        if seen.exporter.is_some() {
            u.exporter = seen.exporter;
        }
        u.name = seen.name;
    }

    add_maps(dir, found)
}

/// Adds the process's buffer mappings to `found`.
fn add_maps(
    dir: &Path,
    mut found: BTreeMap<BufferKey, BufferUse>,
) -> Result<Vec<BufferUse>, ScanError> {
    let maps_path = dir.join("maps");
    let maps = fs::read(&maps_path).map_err(|e| ScanError::new(&maps_path, &e))?;
    for line in String::from_utf8_lossy(&maps).lines() {
        let Some(m) = parse_maps_line(line) else {
            continue;
        };
        let u = found.entry(m.key).or_insert_with(|| empty_use(m.key));
        u.map_refs += 1;
        u.map_extent = u.map_extent.max(m.offset + (m.end - m.start));
        if u.fd_refs == 0 {
            u.name = m.name;
        }
    }
    Ok(found.into_values().collect())
}

/// Finds buffers from `fdinfo/` alone: a dma-buf shows `exp_name:`; a
/// memfd is recognised by the mount id every memfd shares (learnt from a
/// memfd of our own). Names of memfds come from maps or the registry.
fn scan_fdinfo_only(
    dir: &Path,
    found: &mut BTreeMap<BufferKey, BufferUse>,
) -> Result<(), ScanError> {
    let info_dir = dir.join("fdinfo");
    let entries = fs::read_dir(&info_dir).map_err(|e| ScanError::new(&info_dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ScanError::new(&info_dir, &e))?;
        let path = entry.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ScanError::new(&path, &e)),
        };
        let info = parse_fdinfo(&text);
        let Some(inode) = info.inode else { continue };
        let kind = if info.exporter.is_some() {
            BufferKind::DmaBuf
        } else if info.mnt_id.is_some() && info.mnt_id == memfd_mount_id() {
            BufferKind::Memfd
        } else {
            continue;
        };
        let key = BufferKey { kind, inode };
        let u = found.entry(key).or_insert_with(|| empty_use(key));
        u.fd_refs += 1;
        if info.size.is_some() {
            u.size = info.size;
        }
        if info.exporter.is_some() {
            u.exporter = info.exporter;
        }
        if let Some(n) = info.name {
            u.name = n;
        }
    }
    Ok(())
}

/// The mount id fdinfo shows for memfds (all live on the kernel's internal
/// shmem mount), probed once with a memfd of our own.
fn memfd_mount_id() -> Option<u64> {
    use std::os::fd::AsRawFd;
    static ID: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let fd =
            nix::sys::memfd::memfd_create(c"dmabufd-probe", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .ok()?;
        let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
        parse_fdinfo(&text).mnt_id
    })
}

/// What one fd is. `Ok(None)`: not a buffer, or closed meanwhile.
fn examine_fd(dir: &Path, fd_name: &OsStr, style: Style) -> Result<Option<FdSeen>, ScanError> {
    let fd_path = dir.join("fd").join(fd_name);
    let info_path = dir.join("fdinfo").join(fd_name);
    // Closed between readdir and now: not an error.
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;

    let mut info = None;
    if style == Style::FdinfoEveryFd {
        match fs::read_to_string(&info_path) {
            Ok(s) => info = Some(parse_fdinfo(&s)),
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(ScanError::new(&info_path, &e)),
        }
    }
    let has_exporter = info.as_ref().is_some_and(|i| i.exporter.is_some());
    let link = match fs::read_link(&fd_path) {
        Ok(l) => l,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(ScanError::new(&fd_path, &e)),
    };
    let classified = link.to_str().and_then(classify_link);
    let (kind, link_name) = match classified {
        Some(c) => c,
        // An exporter in fdinfo makes it a dma-buf whatever the link says.
        None if has_exporter => (BufferKind::DmaBuf, String::new()),
        None => return Ok(None),
    };
    if kind == BufferKind::DmaBuf && info.is_none() {
        match fs::read_to_string(&info_path) {
            Ok(s) => info = Some(parse_fdinfo(&s)),
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(ScanError::new(&info_path, &e)),
        }
    }
    // Identity from the kernel's own file (stat/statfs follow the fd link),
    // never from fdinfo text, which ends with a name any holder may forge.
    let stat = || match fs::metadata(&fd_path) {
        Ok(m) => Ok(Some((m.ino(), m.size()))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(ScanError::new(&fd_path, &e)),
    };
    let Some(fs_type) = fs_magic(&fd_path).map_err(|e| ScanError::new(&fd_path, &e))? else {
        return Ok(None);
    };
    let magic_ok = match kind {
        BufferKind::DmaBuf => fs_type == DMA_BUF_MAGIC,
        BufferKind::Memfd => fs_type == TMPFS_MAGIC || fs_type == HUGETLBFS_MAGIC,
    };
    if !magic_ok {
        return Ok(None);
    }
    let Some((inode, size)) = stat()? else {
        return Ok(None);
    };
    match kind {
        BufferKind::DmaBuf => {
            let info = info.unwrap_or_default();
            Ok(Some(FdSeen {
                key: BufferKey { kind, inode },
                size,
                exporter: info.exporter,
                name: info.name.unwrap_or(link_name),
            }))
        }
        BufferKind::Memfd => Ok(Some(FdSeen {
            key: BufferKey { kind, inode },
            size,
            exporter: None,
            name: link_name,
        })),
    }
}

/// `f_type` of the dma-buf pseudo filesystem (uapi `linux/magic.h`).
pub const DMA_BUF_MAGIC: i64 = crate::sys::DMA_BUF_MAGIC;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// `statfs(path).f_type`; `Ok(None)` when the path is gone.
fn fs_magic(path: &Path) -> io::Result<Option<i64>> {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => Ok(Some(st.filesystem_type().0)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

struct FdSeen {
    key: BufferKey,
    size: u64,
    exporter: Option<String>,
    name: String,
}

fn empty_use(key: BufferKey) -> BufferUse {
    BufferUse {
        key,
        size: None,
        map_extent: 0,
        exporter: None,
        name: String::new(),
        fd_refs: 0,
        map_refs: 0,
    }
}

/// Tells from an fd link (or maps path) whether it is a dma-buf or a memfd,
/// and the name it shows.
pub fn classify_link(link: &str) -> Option<(BufferKind, String)> {
    if let Some(name) = link.strip_prefix("/dmabuf:") {
        return Some((BufferKind::DmaBuf, name.to_string()));
    }
    // Kernels before the dma-buf filesystem named the anon inode instead.
    if link == "anon_inode:dmabuf" {
        return Some((BufferKind::DmaBuf, String::new()));
    }
    if let Some(rest) = link.strip_prefix("/memfd:") {
        let name = rest.strip_suffix(" (deleted)").unwrap_or(rest);
        return Some((BufferKind::Memfd, name.to_string()));
    }
    None
}

/// The fields of a dma-buf's fdinfo the scan uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub inode: Option<u64>,
    pub mnt_id: Option<u64>,
    pub size: Option<u64>,
    /// The file's reference count (`count:`).
    pub count: Option<u64>,
    pub exporter: Option<String>,
    pub name: Option<String>,
}

/// Parses `/proc/<pid>/fdinfo/<fd>` text.
///
/// A dma-buf's name is printed raw as the last field, and any holder may set
/// it (`DMA_BUF_SET_NAME`) to text with newlines and forged `ino:`/`size:`
/// lines. So the FIRST value of each key wins (the kernel prints its own
/// fields before the name), and everything after `name:` is the name.
pub fn parse_fdinfo(text: &str) -> FdInfo {
    let mut info = FdInfo::default();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.split_once('\n') {
            Some((l, n)) => (l, n),
            None => (rest, ""),
        };
        if let Some((key, value)) = line.split_once(':') {
            let value = value.trim_start_matches(['\t', ' ']);
            let num = || value.trim().parse().ok();
            match key {
                "ino" if info.inode.is_none() => info.inode = num(),
                "mnt_id" if info.mnt_id.is_none() => info.mnt_id = num(),
                "size" if info.size.is_none() => info.size = num(),
                "count" if info.count.is_none() => info.count = num(),
                "exp_name" if info.exporter.is_none() => info.exporter = Some(value.to_string()),
                "name" => {
                    // The rest of the text, newlines included, minus the
                    // kernel's final newline.
                    let start = line.len() - value.len();
                    let whole = &rest[start..];
                    info.name = Some(whole.strip_suffix('\n').unwrap_or(whole).to_string());
                    break;
                }
                _ => {}
            }
        }
        rest = next;
    }
    info
}

/// One mapping of a buffer, from a maps line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub key: BufferKey,
    pub start: u64,
    pub end: u64,
    /// Offset into the buffer where the mapping starts.
    pub offset: u64,
    pub name: String,
}

/// Parses one `/proc/<pid>/maps` line; `Some` only for dma-buf and memfd
/// mappings.
pub fn parse_maps_line(line: &str) -> Option<MapEntry> {
    // start-end perms offset dev inode [padding] path
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next()?.trim_start();
    let (kind, name) = classify_link(path)?;
    let (start, end) = range.split_once('-')?;
    Some(MapEntry {
        key: BufferKey {
            kind,
            inode: inode.parse().ok()?,
        },
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        name,
    })
}

/// The real uid from `/proc/<pid>/status` text.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
pub(crate) mod test_child {
    //! Real processes holding memfds in a chosen way, for scan tests.
    //!
    //! The test binary re-executes itself running the ignored test
    //! `procfs::test_child::child_process_helper`, which follows a script
    //! from the environment, prints the inodes of its buffers, says `ready`
    //! and waits until its stdin closes. Children get nothing by fd
    //! inheritance (all fds are close-on-exec), so tests running in parallel
    //! cannot leak buffers into each other's children.

    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{BufRead, BufReader, Read};
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    use std::process::{Child, Command, Stdio};

    use crate::sys::Mapping;

    const SCRIPT_ENV: &str = "DMABUFD_TEST_CHILD_SCRIPT";

    /// A running child; killed when dropped.
    pub struct TestChild {
        child: Child,
        /// Buffer name in the script -> inode.
        pub inodes: HashMap<String, u64>,
    }

    impl TestChild {
        /// Starts a child running `script`: `;`-separated commands
        /// `new NAME SIZE`, `open NAME PATH`, `dup NAME`, `close NAME`
        /// (closes the newest fd), `map NAME LEN`, `unmap NAME` (the newest).
        pub fn spawn(script: &str) -> TestChild {
            let exe = std::env::current_exe().unwrap();
            let mut child = Command::new(exe)
                .args([
                    "--exact",
                    "procfs::test_child::child_process_helper",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(SCRIPT_ENV, script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut inodes = HashMap::new();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).unwrap() == 0 {
                    panic!("test child exited before ready (script {script:?})");
                }
                // The harness may print "test ... " on the same line first.
                let l = line.trim();
                if l.ends_with("child-ready") {
                    break;
                }
                if let Some(rest) = l.split_once("child-buffer ").map(|(_, r)| r) {
                    let (name, ino) = rest.split_once(' ').unwrap();
                    inodes.insert(name.to_string(), ino.parse().unwrap());
                }
            }
            TestChild { child, inodes }
        }

        pub fn pid(&self) -> i32 {
            self.child.id() as i32
        }

        pub fn inode(&self, name: &str) -> u64 {
            self.inodes[name]
        }
    }

    impl Drop for TestChild {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A memfd created in the test process itself (close-on-exec).
    pub fn memfd(name: &str, size: u64) -> OwnedFd {
        let fd =
            nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        OwnedFd::from(f)
    }

    pub fn inode_of(fd: &OwnedFd) -> u64 {
        File::from(fd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    /// Not a test: the body of a [`TestChild`]. Does nothing unless started
    /// by `TestChild::spawn`.
    #[test]
    #[ignore = "helper process for procfs/accounting tests"]
    fn child_process_helper() {
        let Ok(script) = std::env::var(SCRIPT_ENV) else {
            return;
        };
        let mut fds: HashMap<String, Vec<OwnedFd>> = HashMap::new();
        let mut maps: HashMap<String, Vec<Mapping>> = HashMap::new();
        for cmd in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            match words.as_slice() {
                ["new", name, size] => {
                    let fd = memfd(name, size.parse().unwrap());
                    println!("child-buffer {name} {}", inode_of(&fd));
                    fds.entry(name.to_string()).or_default().push(fd);
                }
                ["open", name, path] => {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .unwrap();
                    let fd = OwnedFd::from(f);
                    println!("child-buffer {name} {}", inode_of(&fd));
                    fds.entry(name.to_string()).or_default().push(fd);
                }
                ["dup", name] => {
                    let v = fds.get_mut(*name).unwrap();
                    let d = v[0].try_clone().unwrap();
                    v.push(d);
                }
                ["close", name] => drop(fds.get_mut(*name).unwrap().pop().unwrap()),
                ["map", name, len] => {
                    let fd = fds[*name][0].as_fd();
                    // SAFETY: the test's own memfds and files, which
                    // nothing truncates while the helper holds them.
                    let m =
                        unsafe { Mapping::new_unchecked(fd, len.parse().unwrap(), true) }.unwrap();
                    maps.entry(name.to_string()).or_default().push(m);
                }
                ["unmap", name] => drop(maps.get_mut(*name).unwrap().pop().unwrap()),
                other => panic!("bad child command {other:?}"),
            }
        }
        println!("child-ready");
        // Hold everything until the parent closes our stdin (or kills us).
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        drop(maps);
        drop(fds);
    }
}

#[cfg(test)]
mod tests {
    use super::test_child::{inode_of, memfd, TestChild};
    use super::*;

    const FDINFO_NAMED: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t13\nino:\t1\nsize:\t1048576\ncount:\t1\nexp_name:\tsystem\nname:\tcamera-preview\n";

    #[test]
    fn fdinfo_of_a_named_dmabuf() {
        let i = parse_fdinfo(FDINFO_NAMED);
        assert_eq!(
            i,
            FdInfo {
                inode: Some(1),
                mnt_id: Some(13),
                size: Some(1048576),
                count: Some(1),
                exporter: Some("system".into()),
                name: Some("camera-preview".into()),
            }
        );
    }

    /// A holder renamed its buffer (DMA_BUF_SET_NAME has no character
    /// filter) to forge an inode and a size: the kernel prints the name raw
    /// as the last field (seen on 6.18, bpf.md).
    #[test]
    fn an_injected_name_cannot_change_inode_size_or_exporter() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t13\nino:\t4242\nsize:\t65536\n\
                    count:\t1\nexp_name:\tsystem\nname:\tx\nino:\t1\nsize:\t999\n\
                    exp_name:\tforged\n";
        let i = parse_fdinfo(text);
        assert_eq!(i.inode, Some(4242));
        assert_eq!(i.size, Some(65536));
        assert_eq!(i.exporter.as_deref(), Some("system"));
        assert_eq!(
            i.name.as_deref(),
            Some("x\nino:\t1\nsize:\t999\nexp_name:\tforged")
        );
    }

    #[test]
    fn memfds_share_one_mount_id_that_regular_files_do_not_have() {
        use std::os::fd::AsRawFd;
        let probe = memfd_mount_id();
        assert!(probe.is_some());
        let m = nix::sys::memfd::memfd_create(c"other", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .unwrap();
        let info = parse_fdinfo(
            &fs::read_to_string(format!("/proc/self/fdinfo/{}", m.as_raw_fd())).unwrap(),
        );
        assert_eq!(info.mnt_id, probe);
        let f = fs::File::open("/proc/self/status").unwrap();
        let info = parse_fdinfo(
            &fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).unwrap(),
        );
        assert_ne!(info.mnt_id, probe);
    }

    #[test]
    fn fdinfo_without_name_or_exporter() {
        let i = parse_fdinfo("pos:\t0\nflags:\t02000002\nmnt_id:\t13\nino:\t42\nsize:\t8192\ncount:\t3\nexp_name:\tudmabuf\n");
        assert_eq!(i.inode, Some(42));
        assert_eq!(i.size, Some(8192));
        assert_eq!(i.exporter.as_deref(), Some("udmabuf"));
        assert_eq!(i.name, None);
        // A regular file's fdinfo has no exp_name.
        let plain = parse_fdinfo("pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t1234\n");
        assert_eq!(plain.exporter, None);
        assert_eq!(plain.size, None);
    }

    #[test]
    fn fdinfo_name_with_spaces_and_colons() {
        let i = parse_fdinfo("ino:\t7\nsize:\t4096\nexp_name:\tsystem\nname:\ta b:c\n");
        assert_eq!(i.name.as_deref(), Some("a b:c"));
    }

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            "7fe461112000-7fe461114000 rw-s 00000000 00:0b 1                          /dmabuf:cam-preview",
        )
        .unwrap();
        assert_eq!(
            m,
            MapEntry {
                key: BufferKey {
                    kind: BufferKind::DmaBuf,
                    inode: 1
                },
                start: 0x7fe461112000,
                end: 0x7fe461114000,
                offset: 0,
                name: "cam-preview".into(),
            }
        );
        let unnamed =
            parse_maps_line("7f0000000000-7f0000001000 r--s 00002000 00:0b 99 /dmabuf:").unwrap();
        assert_eq!(unnamed.name, "");
        assert_eq!(unnamed.offset, 0x2000);
        let memfd = parse_maps_line(
            "7f1c2a400000-7f1c2a600000 rw-s 00000000 00:01 2051                       /memfd:gfx buf (deleted)",
        )
        .unwrap();
        assert_eq!(
            memfd.key,
            BufferKey {
                kind: BufferKind::Memfd,
                inode: 2051
            }
        );
        assert_eq!(memfd.name, "gfx buf");
        // Not buffers: files, anonymous memory, the stack, short lines.
        for l in [
            "55d0c8a00000-55d0c8a22000 r--p 00000000 fe:01 1835123                    /usr/bin/sleep",
            "7ffd1c8e0000-7ffd1c901000 rw-p 00000000 00:00 0                          [stack]",
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ",
            "7f0000000000-7f0000001000 rw-p",
            "",
        ] {
            assert_eq!(parse_maps_line(l), None, "{l}");
        }
    }

    #[test]
    fn links() {
        assert_eq!(
            classify_link("/dmabuf:x"),
            Some((BufferKind::DmaBuf, "x".into()))
        );
        assert_eq!(
            classify_link("anon_inode:dmabuf"),
            Some((BufferKind::DmaBuf, "".into()))
        );
        assert_eq!(
            classify_link("/memfd:heap-buf (deleted)"),
            Some((BufferKind::Memfd, "heap-buf".into()))
        );
        assert_eq!(classify_link("socket:[1234]"), None);
        assert_eq!(classify_link("/dev/null"), None);
        assert_eq!(classify_link("anon_inode:[eventfd]"), None);
    }

    #[test]
    fn status_uid() {
        let s = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t10001\t10001\t10001\t10001\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_uid(s), Some(10001));
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
    }

    fn proc_root() -> &'static Path {
        Path::new(PROC_ROOT)
    }

    fn uses_of(child: &TestChild) -> Vec<BufferUse> {
        scan_process(proc_root(), child.pid())
            .unwrap()
            .result
            .unwrap()
    }

    fn use_of(uses: &[BufferUse], inode: u64) -> Option<&BufferUse> {
        uses.iter().find(|u| {
            u.key
                == BufferKey {
                    kind: BufferKind::Memfd,
                    inode,
                }
        })
    }

    #[test]
    fn scan_fd_only() {
        let c = TestChild::spawn("new a 8192");
        let uses = uses_of(&c);
        let u = use_of(&uses, c.inode("a")).expect("buffer found");
        assert_eq!((u.fd_refs, u.map_refs), (1, 0));
        assert_eq!(u.size, Some(8192));
        assert_eq!(u.name, "a");
        assert_eq!(u.exporter, None);
    }

    #[test]
    fn scan_dup_then_close_one() {
        let c = TestChild::spawn("new a 4096; dup a; dup a");
        assert_eq!(use_of(&uses_of(&c), c.inode("a")).unwrap().fd_refs, 3);
        let c = TestChild::spawn("new a 4096; dup a; close a");
        assert_eq!(use_of(&uses_of(&c), c.inode("a")).unwrap().fd_refs, 1);
    }

    #[test]
    fn scan_two_buffers() {
        let c = TestChild::spawn("new a 4096; new b 16384");
        let uses = uses_of(&c);
        assert_eq!(use_of(&uses, c.inode("a")).unwrap().size, Some(4096));
        assert_eq!(use_of(&uses, c.inode("b")).unwrap().size, Some(16384));
    }

    #[test]
    fn scan_map_then_close_fd() {
        let c = TestChild::spawn("new a 8192; map a 8192; close a");
        let uses = uses_of(&c);
        let u = use_of(&uses, c.inode("a")).expect("mapping keeps the reference");
        assert_eq!((u.fd_refs, u.map_refs), (0, 1));
        assert_eq!(u.size, None);
        assert_eq!(u.map_extent, 8192);
        assert_eq!(u.name, "a");
    }

    #[test]
    fn scan_map_twice_and_partial_map() {
        let c = TestChild::spawn("new a 16384; map a 16384; map a 4096");
        let u = use_of(&uses_of(&c), c.inode("a")).unwrap().clone();
        assert_eq!((u.fd_refs, u.map_refs), (1, 2));
        assert_eq!(u.map_extent, 16384);
        let c = TestChild::spawn("new a 16384; map a 4096; close a");
        let u = use_of(&uses_of(&c), c.inode("a")).unwrap().clone();
        assert_eq!((u.fd_refs, u.map_refs), (0, 1));
        assert_eq!(u.map_extent, 4096);
    }

    #[test]
    fn scan_unmap() {
        let c = TestChild::spawn("new a 8192; map a 8192; unmap a");
        let u = use_of(&uses_of(&c), c.inode("a")).unwrap().clone();
        assert_eq!((u.fd_refs, u.map_refs), (1, 0));
        let c = TestChild::spawn("new a 8192; map a 8192; unmap a; close a");
        assert_eq!(use_of(&uses_of(&c), c.inode("a")), None);
    }

    #[test]
    fn scan_buffer_opened_from_another_process() {
        let fd = memfd("shared", 8192);
        let path = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        );
        let c = TestChild::spawn(&format!("open s {path}; map s 8192"));
        assert_eq!(c.inode("s"), inode_of(&fd));
        let u = use_of(&uses_of(&c), inode_of(&fd)).unwrap().clone();
        assert_eq!((u.fd_refs, u.map_refs), (1, 1));
        // The test process is scanned like any other and holds it too.
        let me = scan_process(proc_root(), std::process::id() as i32).unwrap();
        let mine = me.result.unwrap();
        assert_eq!(use_of(&mine, inode_of(&fd)).unwrap().fd_refs, 1);
    }

    #[test]
    fn scan_all_includes_children_and_leaves_out_missing_pids() {
        let c = TestChild::spawn("new a 4096");
        let all = scan_all(proc_root()).unwrap();
        let row = all
            .iter()
            .find(|p| p.pid == c.pid())
            .expect("child scanned");
        assert!(row.comm.starts_with("dmabufd"), "comm {:?}", row.comm);
        assert!(use_of(row.result.as_ref().unwrap(), c.inode("a")).is_some());
        assert!(all.windows(2).all(|w| w[0].pid < w[1].pid));
        assert_eq!(scan_process(proc_root(), i32::MAX), None);
    }

    #[test]
    fn unreadable_process_reports_path_and_reason() {
        // A fake procfs whose fd "directory" is a file: the scan must say so.
        let root = std::env::temp_dir().join(format!("dmabufd-procfs-{}", std::process::id()));
        let p = root.join("77");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("comm"), "victim\n").unwrap();
        fs::write(p.join("status"), "Uid:\t10002\t10002\t10002\t10002\n").unwrap();
        fs::write(p.join("fd"), "").unwrap();
        fs::write(p.join("maps"), "").unwrap();
        let scan = scan_process(&root, 77).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            (scan.pid, scan.uid, scan.comm.as_str()),
            (77, 10002, "victim")
        );
        let err = scan.result.unwrap_err();
        assert_eq!(err.path, p.join("fd"));
        assert_eq!(err.errno, Some(nix::libc::ENOTDIR));
        assert!(err.to_string().contains("/77/fd: "), "{err}");
    }

    #[test]
    fn permission_denied_is_reported_not_zero() {
        // Reading another uid's fds needs ptrace access. Run the scan of
        // pid 1 (root) from an unprivileged uid.
        if !nix::unistd::Uid::effective().is_root() {
            let scan = scan_process(proc_root(), 1).unwrap();
            assert_eq!(scan.result.unwrap_err().errno, Some(nix::libc::EACCES));
            return;
        }
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "procfs::tests::scan_pid1_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DMABUFD_TEST_SCAN_PID1", "1")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("scan-error errno=13 path=/proc/1/fd"),
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "helper process for permission_denied_is_reported_not_zero"]
    fn scan_pid1_helper() {
        if std::env::var("DMABUFD_TEST_SCAN_PID1").is_err() {
            return;
        }
        let scan = scan_process(proc_root(), 1).unwrap();
        match scan.result {
            Err(e) => println!(
                "scan-error errno={} path={}",
                e.errno.unwrap_or(0),
                e.path.display()
            ),
            Ok(v) => println!("scan-ok {}", v.len()),
        }
    }
}
