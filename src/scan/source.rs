//! The scan sources behind one interface, and the start-up choice between
//! them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::bpf::{self, BpfIters, KernelBuffer};
use super::{BufferKey, LiveBuffer, Scan};
use crate::procfs::{self, BufferUse, ProcessScan};

/// Where bpfloader pins libdmabufinfo's `iter/dmabuf` program on Android.
pub const ANDROID_PINNED_DMABUF_ITER: &str = "/sys/fs/bpf/dmabuf/prog_dmabufIter_iter_dmabuf";

/// A way to see the system's buffers.
pub trait ScanSource: Send + Sync {
    /// `bpf` or `procfs`.
    fn name(&self) -> &'static str;
    /// Whether [`ScanSource::live`] is the kernel's exact list of live
    /// buffers (false: liveness is inferred from holders).
    fn exact_liveness(&self) -> bool;
    /// A full view: holders and mappings of every process, and the live
    /// list where there is one. An error means nothing is known (never
    /// "nothing is held").
    fn scan(&self) -> io::Result<Scan>;
    /// Only the kernel's list of live buffers: O(live buffers), no procfs.
    /// `Ok(None)` where the source has no such list.
    fn live(&self) -> io::Result<Option<Vec<LiveBuffer>>>;
}

/// `/proc/<pid>/fd`, `fdinfo` and `maps` of every process; the kernel's
/// buffer list from a pinned `iter/dmabuf` when one is given (Android's
/// bpfloader pins one that any reader may use without loading BPF).
pub struct ProcfsSource {
    pub proc_root: PathBuf,
    pub pinned: Option<PathBuf>,
}

impl ProcfsSource {
    pub fn new() -> ProcfsSource {
        ProcfsSource {
            proc_root: PathBuf::from(procfs::PROC_ROOT),
            pinned: None,
        }
    }

    fn pinned_list(&self) -> io::Result<Option<Vec<LiveBuffer>>> {
        match &self.pinned {
            Some(p) => Ok(Some(
                bpf::read_pinned_buffers(p)?
                    .into_iter()
                    .map(live_of)
                    .collect(),
            )),
            None => Ok(None),
        }
    }
}

impl Default for ProcfsSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ScanSource for ProcfsSource {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn exact_liveness(&self) -> bool {
        self.pinned.is_some()
    }

    fn scan(&self) -> io::Result<Scan> {
        // The list first (see BpfSource::scan).
        let live = self.pinned_list()?;
        Ok(Scan {
            processes: procfs::scan_all(&self.proc_root)?,
            live,
        })
    }

    fn live(&self) -> io::Result<Option<Vec<LiveBuffer>>> {
        self.pinned_list()
    }
}

/// The BPF iterators, loaded while the service was still root. The buffer
/// list comes from our own `iter/dmabuf`, or from the link Android's
/// bpfloader pinned when that exists.
pub struct BpfSource {
    iters: BpfIters,
    pinned: Option<PathBuf>,
    proc_root: PathBuf,
}

impl BpfSource {
    pub fn new(iters: BpfIters, pinned: Option<PathBuf>) -> BpfSource {
        BpfSource {
            iters,
            pinned,
            proc_root: PathBuf::from(procfs::PROC_ROOT),
        }
    }

    /// Whether the kernel's buffer list is available (own iterator or pin).
    pub fn has_buffer_list(&self) -> bool {
        self.pinned.is_some() || self.iters.has_buffer_list()
    }

    fn kernel_buffers(&self) -> io::Result<Option<Vec<KernelBuffer>>> {
        if let Some(p) = &self.pinned {
            return bpf::read_pinned_buffers(p).map(Some);
        }
        if self.iters.has_buffer_list() {
            return self.iters.buffers().map(Some);
        }
        Ok(None)
    }
}

fn live_of(k: KernelBuffer) -> LiveBuffer {
    LiveBuffer {
        key: BufferKey::dmabuf(k.inode),
        size: k.size,
        exporter: k.exporter,
        name: k.name,
    }
}

impl ScanSource for BpfSource {
    fn name(&self) -> &'static str {
        "bpf"
    }

    fn exact_liveness(&self) -> bool {
        self.has_buffer_list()
    }

    fn scan(&self) -> io::Result<Scan> {
        // The list first: a buffer referenced by a process is alive, so a
        // buffer created between the reads still shows through its holder.
        let live = self.live()?;
        let fds = self.iters.fd_refs()?;
        let maps = self.iters.map_refs()?;
        let processes = join_references(&self.proc_root, &fds, &maps, live.as_deref());
        Ok(Scan { processes, live })
    }

    fn live(&self) -> io::Result<Option<Vec<LiveBuffer>>> {
        Ok(self
            .kernel_buffers()?
            .map(|v| v.into_iter().map(live_of).collect()))
    }
}

/// Builds per-process uses from the task iterators' records. Uid and comm
/// come from `/proc/<pid>/status` and `comm` (world-readable); a process
/// that exited meanwhile is left out.
pub fn join_references(
    proc_root: &Path,
    fds: &[bpf::FdRef],
    maps: &[bpf::MapRef],
    live: Option<&[LiveBuffer]>,
) -> Vec<ProcessScan> {
    // vm_pgoff counts the kernel's pages (16 KiB on some arm64 kernels).
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let known: BTreeMap<BufferKey, &LiveBuffer> = live
        .unwrap_or_default()
        .iter()
        .map(|b| (b.key, b))
        .collect();
    let mut per_pid: BTreeMap<i32, BTreeMap<BufferKey, BufferUse>> = BTreeMap::new();
    fn use_of<'a>(
        per_pid: &'a mut BTreeMap<i32, BTreeMap<BufferKey, BufferUse>>,
        known: &BTreeMap<BufferKey, &LiveBuffer>,
        tgid: i32,
        inode: u64,
    ) -> &'a mut BufferUse {
        let key = BufferKey::dmabuf(inode);
        per_pid
            .entry(tgid)
            .or_default()
            .entry(key)
            .or_insert_with(|| BufferUse {
                key,
                size: None,
                map_extent: 0,
                exporter: known.get(&key).map(|b| b.exporter.clone()),
                name: known.get(&key).map(|b| b.name.clone()).unwrap_or_default(),
                fd_refs: 0,
                map_refs: 0,
            })
    }
    for f in fds {
        let u = use_of(&mut per_pid, &known, f.tgid, f.inode);
        u.fd_refs += 1;
        u.size = Some(f.size);
    }
    for m in maps {
        let u = use_of(&mut per_pid, &known, m.tgid, m.inode);
        u.map_refs += 1;
        let extent = m.pgoff.saturating_mul(page) + m.end.saturating_sub(m.start);
        u.map_extent = u.map_extent.max(extent);
    }
    per_pid
        .into_iter()
        .filter_map(|(pid, uses)| {
            let (uid, comm) = procfs::identity(proc_root, pid)?;
            Some(ProcessScan {
                pid,
                uid,
                comm,
                result: Ok(uses.into_values().collect()),
            })
        })
        .collect()
}

/// What the config asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// BPF where it loads and every heap makes dma-bufs, else procfs.
    #[default]
    Auto,
    Bpf,
    Procfs,
}

impl SourceChoice {
    pub fn parse(s: &str) -> Option<SourceChoice> {
        match s {
            "auto" => Some(SourceChoice::Auto),
            "bpf" => Some(SourceChoice::Bpf),
            "procfs" => Some(SourceChoice::Procfs),
            _ => None,
        }
    }
}

/// The source picked at start-up and the one-line reason (logged, and
/// shown by the dump and `dmabufctl`).
pub struct Chosen {
    pub source: Box<dyn ScanSource>,
    pub reason: String,
}

/// Picks the scan source. Must run while the service is still root (BPF
/// programs are loaded and attached here; reading them later needs no
/// privilege). `memfd_heaps`: the memfd heap serves buffers BPF cannot see
/// (they are not dma-bufs), so auto mode keeps procfs then.
pub fn choose(choice: SourceChoice, memfd_heaps: bool) -> Result<Chosen, String> {
    let pinned = Path::new(ANDROID_PINNED_DMABUF_ITER);
    let pinned = fs::File::open(pinned).is_ok().then(|| pinned.to_path_buf());
    let procfs = |why: String| {
        let liveness = match &pinned {
            Some(p) => format!("buffer list from the pinned {}", p.display()),
            None => "liveness inferred from holders".to_string(),
        };
        Chosen {
            source: Box::new(ProcfsSource {
                proc_root: PathBuf::from(procfs::PROC_ROOT),
                pinned: pinned.clone(),
            }),
            reason: format!("procfs ({why}; {liveness})"),
        }
    };
    match choice {
        SourceChoice::Procfs => return Ok(procfs("forced by config".into())),
        SourceChoice::Auto if memfd_heaps => {
            return Ok(procfs(
                "a memfd heap is served and memfds are invisible to the dma-buf iterators".into(),
            ))
        }
        _ => {}
    }
    let iters = match BpfIters::load() {
        Ok(i) => i,
        Err(e) if choice == SourceChoice::Auto => {
            return Ok(procfs(format!("BPF iterators unavailable: {e}")))
        }
        Err(e) => return Err(format!("scan_source = \"bpf\" but {e}")),
    };
    let src = BpfSource::new(iters, pinned.clone());
    let list = match (&pinned, src.iters.has_buffer_list()) {
        (Some(p), _) => format!("buffer list from the pinned {}", p.display()),
        (None, true) => "buffer list from iter/dmabuf".to_string(),
        (None, false) => format!(
            "NO kernel buffer list ({}): liveness inferred from holders",
            src.iters.missing().join(", ")
        ),
    };
    Ok(Chosen {
        reason: format!("bpf (iter/task_file + iter/task_vma; {list})"),
        source: Box::new(src),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Android: the service cannot load BPF itself (only bpfloader can), but
    /// the iterator bpfloader pins gives the procfs source the kernel's
    /// exact list. Tested against a file in that pin's 4-line format (no
    /// Android device here).
    #[test]
    fn procfs_with_a_pinned_buffer_list_has_exact_liveness() {
        let dir = std::env::temp_dir().join(format!("dmabufd-pin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pin = dir.join("prog_dmabufIter_iter_dmabuf");
        fs::write(
            &pin,
            "4242\n65536\ncamera preview\nsystem\n77\n4096\n\nudmabuf\n",
        )
        .unwrap();
        let src = ProcfsSource {
            proc_root: PathBuf::from(procfs::PROC_ROOT),
            pinned: Some(pin),
        };
        assert!(src.exact_liveness());
        let live = src.live().unwrap().unwrap();
        assert_eq!(
            live,
            vec![
                LiveBuffer {
                    key: BufferKey::dmabuf(4242),
                    size: 65536,
                    exporter: "system".into(),
                    name: "camera preview".into(),
                },
                LiveBuffer {
                    key: BufferKey::dmabuf(77),
                    size: 4096,
                    exporter: "udmabuf".into(),
                    name: String::new(),
                },
            ]
        );
        assert_eq!(src.scan().unwrap().live.unwrap().len(), 2);
        assert!(!ProcfsSource::new().exact_liveness());
        fs::remove_dir_all(dir).unwrap();
    }
}
