//! The BPF scan source (`dmabufd::scan::bpf`) on the real kernel: its three
//! iterators against what procfs and debugfs say, after a full privilege
//! drop, with objects rebuilt from `bpf/` by the harness, and against a name
//! made to look like fdinfo fields. These cases run as root in the guest
//! and allocate straight from /dev/dma_heap/system.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use dmabufd::scan::bpf::{BpfIters, FdRef, KernelBuffer, MapRef};
use dmabufd::sys::{self, Mapping};

use crate::app::{self, RoleResult};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::proc_scan;
use crate::support::{eventually, KIB, SETTLE_MS};

const PAGE: u64 = 4096;
/// The uid the service runs as in the VM; the dropped child becomes it.
const DROP_UID: u32 = 1100;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "bpf_iterators_list_exactly_the_buffers_procfs_and_debugfs_show",
            run: bpf_iterators_list_exactly_the_buffers_procfs_and_debugfs_show,
        },
        Case {
            name: "bpf_iterators_still_read_after_dropping_every_capability",
            run: bpf_iterators_still_read_after_dropping_every_capability,
        },
        Case {
            name: "rebuilt_bpf_objects_load_and_agree_with_the_committed_ones",
            run: rebuilt_bpf_objects_load_and_agree_with_the_committed_ones,
        },
        Case {
            name: "bpf_records_keep_inode_and_size_under_a_name_that_forges_fdinfo_fields",
            run: bpf_records_keep_inode_and_size_under_a_name_that_forges_fdinfo_fields,
        },
    ]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![
        ("bpf-load-then-drop", bpf_load_then_drop),
        ("bpf-holder", bpf_holder),
    ]
}

/// Holder processes for the scale part of the listing case.
const HOLDERS: usize = 8;
const HOLDER_BUFFERS: usize = 16;
const HOLDER_THREADS: usize = 3;

/// Role (as root): allocates `N` 4 KiB buffers, maps every other one,
/// starts a few threads (sharing the fd table and mm: BPF must not report
/// the buffers once per thread), prints `ready`, and holds everything until
/// stdin closes.
fn bpf_holder(args: &[&str]) -> RoleResult {
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: bpf-holder N")?;
    let heap = open_heap()?;
    let mut held = Vec::new();
    let mut maps = Vec::new();
    for i in 0..n {
        let h = alloc_named(&heap, 4 * KIB, &format!("vts-bpf-holder-{i}"))?;
        if i % 2 == 0 {
            maps.push(
                Mapping::new(h.fd.as_fd(), (4 * KIB) as usize, false).map_err(|e| e.to_string())?,
            );
        }
        held.push(h);
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let threads: Vec<_> = (0..HOLDER_THREADS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let _ = rx.lock().map(|r| r.recv());
            })
        })
        .collect();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let mut sink = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
    drop(tx);
    for t in threads {
        let _ = t.join();
    }
    drop(maps);
    Ok(format!("held {}", held.len()))
}

/// Starts the holders and waits until each has allocated.
fn start_holders() -> Result<Vec<std::process::Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for _ in 0..HOLDERS {
        let mut cmd = Command::new(&exe);
        cmd.args(["--app", "bpf-holder", &HOLDER_BUFFERS.to_string()]);
        match crate::app::start_ready(cmd, "a holder") {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_holders(children);
                return Err(e);
            }
        }
    }
    Ok(children)
}

fn stop_holders(children: Vec<std::process::Child>) {
    for mut c in children {
        drop(c.stdin.take());
        let _ = c.wait();
    }
}

/// A system-heap dma-buf allocated by this (root) process.
struct Held {
    fd: OwnedFd,
    inode: u64,
    size: u64,
}

fn alloc_named(heap: &File, size: u64, name: &str) -> Result<Held, String> {
    let fd = sys::dma_heap_alloc(heap.as_fd(), size).map_err(|e| format!("alloc {size}: {e}"))?;
    sys::dma_buf_set_name(fd.as_fd(), name).map_err(|e| format!("set_name {name:?}: {e}"))?;
    let inode = File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| e.to_string())?
        .ino();
    Ok(Held { fd, inode, size })
}

fn open_heap() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/dma_heap/system")
        .map_err(|e| format!("/dev/dma_heap/system: {e}"))
}

fn load() -> Result<BpfIters, String> {
    BpfIters::load().map_err(|e| format!("BpfIters::load: {e}"))
}

fn me() -> i32 {
    std::process::id() as i32
}

/// (tgid, fd, inode, size) of every dma-buf fd of every process, from fdinfo.
fn procfs_fd_refs() -> BTreeSet<FdRef> {
    let mut out = BTreeSet::new();
    for pid in proc_scan::pids() {
        // Only thread-group leaders are listed in /proc; a process may exit mid-walk.
        for (fd, info) in proc_scan::dmabuf_fds(pid).unwrap_or_default() {
            let (Some(ino), Some(size)) = (
                info.get("ino").and_then(|v| v.parse().ok()),
                info.get("size").and_then(|v| v.parse().ok()),
            ) else {
                continue;
            };
            out.insert(FdRef {
                tgid: pid,
                fd: fd as u32,
                inode: ino,
                size,
            });
        }
    }
    out
}

/// Every dma-buf mapping of every process, from /proc/<pid>/maps.
fn procfs_map_refs() -> BTreeSet<MapRef> {
    let mut out = BTreeSet::new();
    for pid in proc_scan::pids() {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[5].starts_with("/dmabuf:") {
                continue;
            }
            let Some((s, e)) = f[0].split_once('-') else {
                continue;
            };
            let parse = |x: &str| u64::from_str_radix(x, 16).ok();
            let (Some(start), Some(end), Some(off), Ok(inode)) =
                (parse(s), parse(e), parse(f[2]), f[4].parse::<u64>())
            else {
                continue;
            };
            out.insert(MapRef {
                tgid: pid,
                start,
                end,
                pgoff: off / PAGE,
                inode,
            });
        }
    }
    out
}

/// Every buffer in /sys/kernel/debug/dma_buf/bufinfo: lines
/// `size\tflags\tmode\tcount\texp_name\tino\tname` (name `<none>` when unset).
fn debugfs_buffers() -> Result<BTreeSet<KernelBuffer>, String> {
    let path = "/sys/kernel/debug/dma_buf/bufinfo";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let f: Vec<&str> = l.splitn(7, '\t').collect();
        if f.len() < 7 || !f[0].bytes().all(|b| b.is_ascii_digit()) || f[0].is_empty() {
            continue;
        }
        let (Ok(size), Ok(inode)) = (f[0].parse(), f[5].parse()) else {
            continue;
        };
        out.insert(KernelBuffer {
            inode,
            size,
            exporter: f[4].to_string(),
            name: if f[6] == "<none>" {
                String::new()
            } else {
                f[6].to_string()
            },
        });
    }
    Ok(out)
}

fn sorted<T: Ord>(v: Vec<T>) -> BTreeSet<T> {
    v.into_iter().collect()
}

fn diff<T: Ord + std::fmt::Debug + Clone>(
    what: &str,
    bpf: &BTreeSet<T>,
    other: &BTreeSet<T>,
) -> String {
    let only_bpf: Vec<_> = bpf.difference(other).cloned().collect();
    let only_other: Vec<_> = other.difference(bpf).cloned().collect();
    format!("{what}: only in BPF {only_bpf:?}; only in the kernel's text files {only_other:?}")
}

/// Compares the three iterators with procfs and debugfs until they agree
/// (other processes may be mid-change); returns the last mismatch.
fn agree_with_procfs(iters: &BpfIters) -> Outcome {
    let mut why = String::new();
    let ok = eventually(SETTLE_MS, || {
        let result = (|| -> Outcome {
            let fds = sorted(iters.fd_refs().map_err(|e| format!("fd_refs: {e}"))?);
            let proc_fds = procfs_fd_refs();
            ensure!(fds == proc_fds, "{}", diff("fds", &fds, &proc_fds));
            let maps = sorted(iters.map_refs().map_err(|e| format!("map_refs: {e}"))?);
            let proc_maps = procfs_map_refs();
            ensure!(maps == proc_maps, "{}", diff("maps", &maps, &proc_maps));
            let bufs = sorted(iters.buffers().map_err(|e| format!("buffers: {e}"))?);
            let debugfs = debugfs_buffers()?;
            ensure!(bufs == debugfs, "{}", diff("buffers", &bufs, &debugfs));
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                why = e;
                false
            }
        }
    });
    ensure!(ok, "{why}");
    Ok(())
}

/// Median wall time of `n` runs of `f`, in microseconds.
fn median_us(n: usize, mut f: impl FnMut()) -> u128 {
    let mut t: Vec<u128> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_micros()
        })
        .collect();
    t.sort_unstable();
    t[n / 2]
}

fn bpf_iterators_list_exactly_the_buffers_procfs_and_debugfs_show() -> Outcome {
    let heap = open_heap()?;
    let held = [
        alloc_named(&heap, 4 * KIB, "vts-bpf-small")?,
        alloc_named(&heap, 64 * KIB, "vts-bpf-medium")?,
        alloc_named(&heap, 1024 * KIB, "vts-bpf-large")?,
    ];
    // A second fd of one buffer, and a mapping of another.
    let dup = held[0].fd.try_clone().map_err(|e| e.to_string())?;
    let map = Mapping::new(held[1].fd.as_fd(), (64 * KIB) as usize, false)
        .map_err(|e| format!("mmap: {e}"))?;
    let holders = start_holders()?;
    let result = list_and_compare(&held, &dup, &map, &holders);
    stop_holders(holders);
    drop(map);
    result
}

fn list_and_compare(
    held: &[Held],
    dup: &OwnedFd,
    map: &Mapping,
    holders: &[std::process::Child],
) -> Outcome {
    let load_start = Instant::now();
    let iters = load()?;
    let load_ms = load_start.elapsed().as_millis();
    ensure!(
        iters.has_buffer_list(),
        "iter/dmabuf missing on this 6.18 kernel: {:?}",
        iters.missing()
    );
    agree_with_procfs(&iters)?;

    // And what this process holds, field by field.
    let fds = iters.fd_refs().map_err(|e| e.to_string())?;
    let mine: BTreeSet<(u32, u64, u64)> = fds
        .iter()
        .filter(|f| f.tgid == me())
        .map(|f| (f.fd, f.inode, f.size))
        .collect();
    let mut want: BTreeSet<(u32, u64, u64)> = held
        .iter()
        .map(|h| (h.fd.as_raw_fd() as u32, h.inode, h.size))
        .collect();
    want.insert((dup.as_raw_fd() as u32, held[0].inode, held[0].size));
    ensure!(mine == want, "my fds per BPF {mine:?}, want {want:?}");
    let maps: Vec<MapRef> = iters
        .map_refs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| m.tgid == me())
        .collect();
    let start = map.as_ptr() as u64;
    ensure!(
        maps == vec![MapRef {
            tgid: me(),
            start,
            end: start + 64 * KIB,
            pgoff: 0,
            inode: held[1].inode
        }],
        "my mappings per BPF: {maps:?} (mapped {start:#x}, inode {})",
        held[1].inode
    );
    let bufs = iters.buffers().map_err(|e| e.to_string())?;
    for (h, name) in held
        .iter()
        .zip(["vts-bpf-small", "vts-bpf-medium", "vts-bpf-large"])
    {
        let want = KernelBuffer {
            inode: h.inode,
            size: h.size,
            exporter: "system".into(),
            name: name.into(),
        };
        ensure!(
            bufs.contains(&want),
            "{want:?} not in iter/dmabuf: {bufs:?}"
        );
    }

    // Each multi-threaded holder exactly once: N fds, N/2 mappings.
    let maps_all = iters.map_refs().map_err(|e| e.to_string())?;
    for h in holders {
        let pid = h.id() as i32;
        let nf = fds.iter().filter(|f| f.tgid == pid).count();
        let nm = maps_all.iter().filter(|m| m.tgid == pid).count();
        ensure!(
            nf == HOLDER_BUFFERS && nm == HOLDER_BUFFERS / 2,
            "holder {pid} ({HOLDER_THREADS} extra threads): {nf} fds, {nm} mappings per BPF; want {HOLDER_BUFFERS}, {}",
            HOLDER_BUFFERS / 2
        );
    }

    let fd_us = median_us(10, || drop(iters.fd_refs()));
    let vma_us = median_us(10, || drop(iters.map_refs()));
    let buf_us = median_us(10, || drop(iters.buffers()));
    let procfs_us = median_us(10, || {
        let _ = (procfs_fd_refs(), procfs_map_refs());
    });
    println!(
        "bpf: load+attach {load_ms} ms; one read (median of 10): task_file {fd_us} us, task_vma {vma_us} us, dmabuf {buf_us} us; procfs fdinfo+maps walk {procfs_us} us; {} processes, {} dma-buf fds, {} mappings, {} buffers",
        proc_scan::pids().len(),
        fds.len(),
        iters.map_refs().map(|m| m.len()).unwrap_or(0),
        bufs.len()
    );
    Ok(())
}

/// Role (runs as root, not as an app uid): loads the iterators, drops to
/// uid/gid 1100 with every capability set empty, checks that, proves it can
/// no longer load BPF, then reads the three iterators twice and prints what
/// they say about process `argv[0]`.
fn bpf_load_then_drop(args: &[&str]) -> RoleResult {
    let pid: i32 = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: bpf-load-then-drop PID")?;
    let iters = load()?;
    drop_everything()?;
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(format!("no {key} in /proc/self/status"))?;
        if !v.trim_start_matches('0').is_empty() {
            return Err(format!("{key} is {v} after the drop"));
        }
    }
    for key in ["Uid", "Gid"] {
        let ids = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_default();
        if ids.split_whitespace().any(|id| id != DROP_UID.to_string()) {
            return Err(format!("{key}: {ids} after the drop"));
        }
    }
    let reload = match BpfIters::load() {
        Ok(_) => return Err("loading BPF still worked after the drop".into()),
        Err(e) => e.to_string(),
    };
    if !reload.contains("EPERM") {
        return Err(format!(
            "loading after the drop failed, but not for EPERM: {reload}"
        ));
    }
    let mut out = vec![format!("reload-refused {}", reload.replace('\n', " "))];
    for round in 0..2 {
        let fds = iters
            .fd_refs()
            .map_err(|e| format!("fd_refs after drop: {e}"))?;
        let maps = iters
            .map_refs()
            .map_err(|e| format!("map_refs after drop: {e}"))?;
        let bufs = iters
            .buffers()
            .map_err(|e| format!("buffers after drop: {e}"))?;
        if round == 1 {
            out.extend(
                fds.iter()
                    .filter(|f| f.tgid == pid)
                    .map(|f| format!("fd {} {} {}", f.fd, f.inode, f.size)),
            );
            out.extend(
                maps.iter()
                    .filter(|m| m.tgid == pid)
                    .map(|m| format!("map {} {} {} {}", m.start, m.end, m.pgoff, m.inode)),
            );
            out.extend(
                bufs.iter()
                    .map(|b| format!("buf {} {} {} {}", b.inode, b.size, b.exporter, b.name)),
            );
        }
    }
    Ok(out.join("\n"))
}

/// Root to uid/gid 1100 with no supplementary groups and every capability
/// set (inheritable, permitted, effective, bounding, ambient) empty.
fn drop_everything() -> Result<(), String> {
    use caps::CapSet;
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient: {e}"))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| format!("clear inheritable: {e}"))?;
    // Dropping from the bounding set needs CAP_SETPCAP: before the uid change.
    caps::clear(None, CapSet::Bounding).map_err(|e| format!("clear bounding: {e}"))?;
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let g = Gid::from_raw(DROP_UID);
    setresgid(g, g, g).map_err(|e| format!("setresgid: {e}"))?;
    let u = Uid::from_raw(DROP_UID);
    // Leaving uid 0 (no keep-caps) clears permitted and effective.
    setresuid(u, u, u).map_err(|e| format!("setresuid: {e}"))?;
    caps::clear(None, CapSet::Effective).map_err(|e| format!("clear effective: {e}"))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| format!("clear permitted: {e}"))?;
    Ok(())
}

fn bpf_iterators_still_read_after_dropping_every_capability() -> Outcome {
    let heap = open_heap()?;
    let held = [
        alloc_named(&heap, 8 * KIB, "vts-bpf-drop-a")?,
        alloc_named(&heap, 128 * KIB, "vts-bpf-drop-b")?,
    ];
    let map = Mapping::new(held[0].fd.as_fd(), (8 * KIB) as usize, false)
        .map_err(|e| format!("mmap: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["--app", "bpf-load-then-drop", &me().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the dropping child: {e}"))?;
    let out = app::finish(child, 0, "bpf-load-then-drop")?;
    let lines: BTreeSet<&str> = out.lines().collect();
    ensure!(
        out.lines()
            .next()
            .is_some_and(|l| l.starts_with("reload-refused ")),
        "child output: {out}"
    );
    println!(
        "bpf: after the drop, {}",
        out.lines().next().unwrap_or_default()
    );
    let mut want_fds = BTreeSet::new();
    for h in &held {
        want_fds.insert(format!("fd {} {} {}", h.fd.as_raw_fd(), h.inode, h.size));
        let name = if h.size == 8 * KIB {
            "vts-bpf-drop-a"
        } else {
            "vts-bpf-drop-b"
        };
        let buf = format!("buf {} {} system {name}", h.inode, h.size);
        ensure!(
            lines.contains(buf.as_str()),
            "child did not see {buf}: {out}"
        );
    }
    // The child's view of this process's fds: exactly ours.
    let got_fds: BTreeSet<String> = out
        .lines()
        .filter(|l| l.starts_with("fd "))
        .map(str::to_string)
        .collect();
    ensure!(
        got_fds == want_fds,
        "child saw my fds {got_fds:?}, want {want_fds:?}"
    );
    let start = map.as_ptr() as u64;
    let want_map = format!("map {start} {} 0 {}", start + 8 * KIB, held[0].inode);
    let got_maps: Vec<&str> = out.lines().filter(|l| l.starts_with("map ")).collect();
    ensure!(
        got_maps == vec![want_map.as_str()],
        "child saw my maps {got_maps:?}, want {want_map}"
    );
    drop(map);
    Ok(())
}

/// All three outputs of one loaded set, sorted (for comparing two sets).
type Snapshot = (BTreeSet<FdRef>, BTreeSet<MapRef>, BTreeSet<KernelBuffer>);

fn snapshot(iters: &BpfIters) -> Result<Snapshot, String> {
    Ok((
        sorted(iters.fd_refs().map_err(|e| format!("fd_refs: {e}"))?),
        sorted(iters.map_refs().map_err(|e| format!("map_refs: {e}"))?),
        sorted(iters.buffers().map_err(|e| format!("buffers: {e}"))?),
    ))
}

fn rebuilt_bpf_objects_load_and_agree_with_the_committed_ones() -> Outcome {
    let required = std::env::var("DMABUFD_REQUIRE_REBUILT_BPF").as_deref() == Ok("1");
    let dir = std::env::var("DMABUFD_REBUILT_BPF_DIR").unwrap_or_default();
    if dir.is_empty() || !Path::new(&dir).is_dir() {
        ensure!(
            !required,
            "DMABUFD_REQUIRE_REBUILT_BPF=1 but DMABUFD_REBUILT_BPF_DIR={dir:?} is not a directory"
        );
        println!("skipped: rebuilt_bpf_objects_load_and_agree_with_the_committed_ones (no DMABUFD_REBUILT_BPF_DIR)");
        return Ok(());
    }
    let read = |name: &str| {
        std::fs::read(Path::new(&dir).join(name)).map_err(|e| format!("{dir}/{name}: {e}"))
    };
    let task = read("task_iter.bpf.o")?;
    let dmabuf = read("dmabuf_iter.bpf.o")?;
    let heap = open_heap()?;
    let held = alloc_named(&heap, 16 * KIB, "vts-bpf-rebuilt")?;
    let _map = Mapping::new(held.fd.as_fd(), (16 * KIB) as usize, false)
        .map_err(|e| format!("mmap: {e}"))?;
    let committed = load()?;
    let rebuilt = BpfIters::load_from(&task, Some(&dmabuf))
        .map_err(|e| format!("loading the rebuilt objects from {dir}: {e}"))?;
    ensure!(
        rebuilt.has_buffer_list(),
        "rebuilt: {:?}",
        rebuilt.missing()
    );
    let mut why = String::new();
    let ok = eventually(SETTLE_MS, || {
        match (snapshot(&committed), snapshot(&rebuilt)) {
            (Ok(a), Ok(b)) if a == b => true,
            (Ok(a), Ok(b)) => {
                why = format!(
                    "{}; {}; {}",
                    diff("fds", &b.0, &a.0),
                    diff("maps", &b.1, &a.1),
                    diff("buffers", &b.2, &a.2)
                );
                false
            }
            (Err(e), _) | (_, Err(e)) => {
                why = e;
                false
            }
        }
    });
    ensure!(ok, "rebuilt and committed objects disagree: {why}");
    let (fds, maps, bufs) = snapshot(&rebuilt)?;
    ensure!(
        fds.iter().any(|f| f.tgid == me() && f.inode == held.inode)
            && maps.iter().any(|m| m.tgid == me() && m.inode == held.inode)
            && bufs
                .iter()
                .any(|b| b.inode == held.inode && b.name == "vts-bpf-rebuilt"),
        "the rebuilt objects do not show this case's buffer {}",
        held.inode
    );
    let same = task == dmabufd::scan::bpf::TASK_ITER_OBJECT
        && dmabuf == dmabufd::scan::bpf::DMABUF_ITER_OBJECT;
    println!("bpf: rebuilt objects in {dir} are byte-identical to the committed ones: {same}");
    Ok(())
}

fn bpf_records_keep_inode_and_size_under_a_name_that_forges_fdinfo_fields() -> Outcome {
    let heap = open_heap()?;
    let forged = "x\nino:\t1\nsize:\t999";
    let held = alloc_named(&heap, 64 * KIB, forged)?;
    // 31 bytes, the longest name: all of it, byte for byte.
    let longest = "y\nino:\t2\nsize:\t1\nexp_name:\tzzz\n";
    ensure!(longest.len() == 31, "test name is {} bytes", longest.len());
    let held_long = alloc_named(&heap, 4 * KIB, longest)?;
    // What fdinfo now says (the kernel prints the name raw, last).
    let info = proc_scan::fdinfo(me(), held.fd.as_raw_fd())?;
    let fdinfo_inos: Vec<&str> = info
        .fields
        .iter()
        .filter(|(k, _)| k == "ino")
        .map(|(_, v)| v.as_str())
        .collect();
    println!("bpf: fdinfo of the renamed buffer has ino fields {fdinfo_inos:?}");
    let iters = load()?;
    let bufs = iters.buffers().map_err(|e| e.to_string())?;
    for (h, name) in [(&held, forged), (&held_long, longest)] {
        let got: Vec<&KernelBuffer> = bufs.iter().filter(|b| b.inode == h.inode).collect();
        ensure!(
            got.len() == 1
                && got[0].size == h.size
                && got[0].exporter == "system"
                && got[0].name.as_bytes() == name.as_bytes(),
            "iter/dmabuf for inode {}: {got:?}",
            h.inode
        );
    }
    ensure!(
        !bufs.iter().any(|b| b.inode == 1 || b.size == 999),
        "a forged inode or size appeared: {bufs:?}"
    );
    let mine: Vec<FdRef> = iters
        .fd_refs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| f.tgid == me())
        .collect();
    for h in [&held, &held_long] {
        let want = FdRef {
            tgid: me(),
            fd: h.fd.as_raw_fd() as u32,
            inode: h.inode,
            size: h.size,
        };
        ensure!(
            mine.contains(&want),
            "{want:?} not in my fds per BPF {mine:?}"
        );
    }
    ensure!(
        mine.iter()
            .all(|f| f.inode != 1 && f.inode != 2 && f.size != 999),
        "a forged field leaked into the fd records: {mine:?}"
    );
    Ok(())
}
