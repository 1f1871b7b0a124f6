//! A bugreport's view of the service: dumpstate calls `dump(fd, ["-a"])` of
//! every DEFAULT-priority service with a 10 s timeout. With 5000 live
//! buffers held by two app processes, the dump transaction over kernel
//! binder (`rsb_service dump ... -a`, what `dumpsys` does) must finish well
//! inside that and carry the full text: every buffer, every section.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::support::{connect, KIB};

/// Live buffers in the case, split between two app processes (each app
/// uid may hold 4096).
const BUFFERS: usize = 5000;
/// dumpstate's timeout for one service's dump.
const DUMPSTATE_BUDGET: Duration = Duration::from_secs(10);
const NAME_PREFIX: &str = "vts-bugreport-";

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "dump_dash_a_with_5000_buffers_finishes_within_dumpstate_budget",
        run: dump_dash_a_with_5000_buffers_finishes_within_dumpstate_budget,
    }]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("hold-many", hold_many)]
}

/// An app process holding buffers until its stdin closes.
struct ManyHolder(std::process::Child);

impl Drop for ManyHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_many(uid: u32, first: usize, count: usize) -> Result<ManyHolder, String> {
    let mut child = app::command_as(uid, "hold-many", &[&first.to_string(), &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning hold-many: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != format!("holding {count}") {
        let mut err = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("hold-many as uid {uid}: {line:?} {err}"));
    }
    Ok(ManyHolder(child))
}

fn dump_dash_a_with_5000_buffers_finishes_within_dumpstate_budget() -> Outcome {
    let half = BUFFERS / 2;
    let _a = start_many(APP_A, 0, half)?;
    let _b = start_many(APP_B, half, BUFFERS - half)?;
    let started = Instant::now();
    let out = Command::new("rsb_service")
        .args(["dump", dmabufd::SERVICE_NAME, "-a"])
        .output()
        .map_err(|e| format!("running rsb_service: {e}"))?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "rsb_service dump -a exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "dump -a with {BUFFERS} live buffers: {} ms, {} bytes",
        took.as_millis(),
        out.stdout.len()
    );
    ensure!(
        took < DUMPSTATE_BUDGET,
        "dump -a took {took:?}, over dumpstate's {DUMPSTATE_BUDGET:?}"
    );
    // The full text: the per-process view, the buffer x process table and
    // the per-buffer tables, with every buffer named.
    for section in [
        "PROCESS TOTAL",
        "Buffers by process (fd(map) reference counts):",
        "Per buffer:",
        "Owner totals",
    ] {
        ensure!(text.contains(section), "dump -a has no {section:?} section");
    }
    let named: BTreeSet<&str> = text
        .split(|c: char| c.is_whitespace() || c == '|')
        .filter(|w| w.starts_with(NAME_PREFIX))
        .collect();
    ensure!(
        named.len() == BUFFERS,
        "dump -a names {} of the {BUFFERS} buffers",
        named.len()
    );
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("Total DMA-BUF count: "))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .ok_or("dump -a has no total line")?;
    ensure!(total >= BUFFERS, "total count {total} < {BUFFERS}");
    Ok(())
}

/// `hold-many FIRST COUNT`: raises its fd limit to the hard limit, allocates
/// COUNT 4 KiB system-heap buffers named `vts-bugreport-<FIRST + i>`,
/// prints `holding COUNT`, then waits for stdin to close.
fn hold_many(args: &[&str]) -> RoleResult {
    let [first, count] = args else {
        return Err("hold-many FIRST COUNT".into());
    };
    let first: usize = first.parse().map_err(|_| "bad first")?;
    let count: usize = count.parse().map_err(|_| "bad count")?;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| e.to_string())?;
    ensure!(
        hard > count as u64 + 64,
        "RLIMIT_NOFILE hard limit {hard} is too low for {count} buffers"
    );
    let alloc = connect()?;
    let held = (0..count)
        .map(|i| {
            alloc
                .allocate("system", 4 * KIB, &format!("{NAME_PREFIX}{}", first + i))
                .map_err(|e| format!("allocate {i}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    println!("holding {}", held.len());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok("released".into())
}
