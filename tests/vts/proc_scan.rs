//! What the kernel says about processes and dma-bufs: /proc/<pid>/fd,
//! fdinfo, maps and status, read directly so the suite does not trust the
//! service's own accounting.

use std::fs;

/// The service's pid: the process whose command line is `dmabufd ...` (or
/// the harness stand-in).
pub fn service_pid() -> Result<i32, String> {
    for entry in fs::read_dir("/proc").map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let argv0 = argv.first().copied().unwrap_or_default();
        let is_dmabufd = argv0 == b"dmabufd" || argv0.ends_with(b"/dmabufd");
        let is_stand_in = argv.iter().any(|a| *a == b"--stand-in-service");
        if is_dmabufd || is_stand_in {
            return Ok(pid);
        }
    }
    Err("no dmabufd process found".into())
}

/// A `key:` field of /proc/<pid>/status, in its own unit (kB for sizes).
pub fn status_field(pid: i32, key: &str) -> Result<u64, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// The fields of one fd's fdinfo (`pos`, `flags`, `size`, `exp_name`, `name`, `ino`, ...).
#[derive(Debug, Default, Clone)]
pub struct FdInfo {
    pub fields: Vec<(String, String)>,
}

impl FdInfo {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_dmabuf(&self) -> bool {
        self.get("exp_name").is_some()
    }
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .map_err(|e| format!("/proc/{pid}/fdinfo/{fd}: {e}"))?;
    Ok(parse_fdinfo(&text))
}

pub fn parse_fdinfo(text: &str) -> FdInfo {
    let fields = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    FdInfo { fields }
}

/// The dma-buf fds of `pid` with their fdinfo.
pub fn dmabuf_fds(pid: i32) -> Result<Vec<(i32, FdInfo)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // The fd may close between readdir and read: skip it.
        if let Ok(info) = fdinfo(pid, fd) {
            if info.is_dmabuf() {
                out.push((fd, info));
            }
        }
    }
    Ok(out)
}

/// Mappings of `pid` that are dma-bufs or memfds: (inode, path) per line.
pub fn buffer_mappings(pid: i32) -> Result<Vec<(u64, String)>, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| e.to_string())?;
    Ok(parse_buffer_mappings(&text))
}

/// maps lines: "start-end perms offset dev inode path".
fn parse_buffer_mappings(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let inode: u64 = f.nth(4)?.parse().ok()?;
            let path = f.collect::<Vec<_>>().join(" ");
            (path.starts_with("/dmabuf:") || path.starts_with("/memfd:")).then_some((inode, path))
        })
        .collect()
}

/// What each fd of `pid` points at (readlink of /proc/<pid>/fd/N).
pub fn fd_targets(pid: i32) -> Result<Vec<(i32, String)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(target) = fs::read_link(entry.path()) {
            out.push((fd, target.to_string_lossy().into_owned()));
        }
    }
    Ok(out)
}

/// Inodes among `inodes` that `pid` references by fd or mapping.
pub fn referenced_inodes(pid: i32, inodes: &[u64]) -> Vec<u64> {
    let mut found: Vec<u64> = dmabuf_fds(pid)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, info)| info.get("ino")?.parse().ok())
        .chain(
            buffer_mappings(pid)
                .unwrap_or_default()
                .into_iter()
                .map(|(ino, _)| ino),
        )
        .filter(|ino| inodes.contains(ino))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Every pid in /proc.
pub fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
