//! What the kernel says about processes and dma-bufs: /proc/<pid>/fd,
//! fdinfo, maps and status, read directly so the suite does not trust the
//! service's own accounting.

use std::fs;
use std::path::Path;

/// The service's pid: the process whose command line is `dmabufd ...` (or
/// the harness stand-in).
pub fn service_pid() -> Result<i32, String> {
    for entry in fs::read_dir("/proc").map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
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

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> Result<usize, String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))
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

/// Lines of /proc/<pid>/maps that map a dma-buf (`/dmabuf:` or a udmabuf memfd).
pub fn dmabuf_maps(pid: i32) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter(|l| l.contains("/dmabuf:") || l.contains("dmabuf"))
        .map(str::to_string)
        .collect())
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

/// Whether `path` exists (device nodes, sysfs files).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}
