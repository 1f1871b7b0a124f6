//! Helpers the cases share: connecting, judging refusals, and reading the
//! kernel's view of memory.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;

use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use dmabufd::client::{self, error_code_name, Allocator};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// The service over kernel binder (never RPC: the suite is about the kernel path).
pub fn connect() -> Result<Allocator, String> {
    Allocator::connect_kernel().map_err(|e| format!("connecting over kernel binder: {e}"))
}

/// Error codes the suite has seen the service return, for the coverage case.
static SEEN_CODES: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

pub fn record_code(code: ErrorCode) {
    SEEN_CODES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(code.0);
}

pub fn seen_codes() -> BTreeSet<i32> {
    SEEN_CODES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `Ok` when `result` is the service-specific refusal `code`.
pub fn expect_code<T>(
    result: client::Result<T>,
    code: ErrorCode,
    what: &str,
) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!(
            "{what}: expected {}, but it succeeded",
            error_code_name(code)
        )),
        Err(e) if e.error_code() == Some(code) => {
            record_code(code);
            Ok(())
        }
        Err(e) => Err(format!(
            "{what}: expected {}, got {e}",
            error_code_name(code)
        )),
    }
}

/// The service still answers a plain call (after a refusal or a stress run).
pub fn service_answers(alloc: &Allocator) -> Result<(), String> {
    alloc
        .heaps()
        .map(|_| ())
        .map_err(|e| format!("the service no longer answers getHeaps: {e}"))
}

/// A /proc/meminfo field in bytes.
pub fn meminfo_bytes(key: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {key} in /proc/meminfo"))
}

/// Lines of the kernel log that report the OOM killer at work.
pub fn oom_kills_in_kernel_log() -> Result<Vec<String>, String> {
    let out = Command::new("dmesg")
        .output()
        .map_err(|e| format!("running dmesg: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("Out of memory") || l.contains("Killed process") || l.contains("oom-kill")
        })
        .map(str::to_string)
        .collect())
}

/// Every live dma-buf in the system and their total size, from the kernel's
/// debugfs list (/sys/kernel/debug/dma_buf/bufinfo): (count, bytes).
pub fn system_dmabuf_total() -> Result<(u64, u64), String> {
    let path = "/sys/kernel/debug/dma_buf/bufinfo";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse_bufinfo_total(&text).ok_or_else(|| format!("no \"Total\" line in {path}"))
}

/// "Total 3 objects, 12288 bytes" -> (3, 12288). Each buffer's own
/// "Total N devices attached" line comes before it.
fn parse_bufinfo_total(text: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .rfind(|l| l.starts_with("Total ") && l.contains(" objects, "))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??))
}

/// Polls `f` until it returns true or `timeout_ms` passes.
pub fn eventually(timeout_ms: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The VM config's scan interval (tests/vm/guest-dmabufd.toml, installed as
/// /etc/dmabufd.toml).
pub fn scan_interval() -> std::time::Duration {
    let ms = dmabufd::config::Config::from_file(std::path::Path::new("/etc/dmabufd.toml"))
        .map(|c| c.service.scan_interval_ms)
        .unwrap_or(1000);
    std::time::Duration::from_millis(ms)
}

/// How long a case waits for something the service notices within a scan
/// or two (a freed buffer leaving the report, a quota coming back): 20 scan
/// intervals plus 10 s, generous under TCG on a busy machine. Only a
/// failing case waits that long; a passing one returns as soon as the
/// condition holds.
pub fn scan_deadline_ms() -> u64 {
    20 * scan_interval().as_millis() as u64 + 10_000
}

/// How long a case waits for a condition the kernel or other processes
/// bring about (a killed process's fds closed, two views of the same
/// moment agreeing): generous, since only a failing case waits it out.
pub const SETTLE_MS: u64 = 30_000;
