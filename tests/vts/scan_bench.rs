//! `vts --bench` part two: the cost of kernel-exact accounting on a real
//! kernel. 100 app processes hold 1000 real system-heap dma-bufs (10 each,
//! 3 of them mapped, plus 20 ordinary fds each). Then:
//! - a full report built from the BPF source, the procfs source and the
//!   dmabuf_dump-style walk (every fdinfo), interleaved, same boot;
//! - the CPU time two idle services spend over 60 s with those buffers
//!   held, one on each source (default 5 s scan interval);
//! - allocation p50 of 4 KiB with and without the registry journal.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dmabufd::accounting::{build, dmabuf_dump_style, HwmTracker};
use dmabufd::client::Allocator;
use dmabufd::scan::{BpfSource, ProcfsSource, ScanSource};

use crate::app::{self, RoleResult, APP_A, APP_B};
use crate::support::KIB;

const PROCS: usize = 100;
const BUFFERS_EACH: usize = 10;
const MAPPED_EACH: usize = 3;
const OTHER_FDS: usize = 20;
const REPS: usize = 10;
const IDLE_SECS: u64 = 60;

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("bench-holder", bench_holder)]
}

/// `bench-holder`: 10 buffers (3 mapped) and 20 ordinary fds, held until
/// stdin closes.
fn bench_holder(_: &[&str]) -> RoleResult {
    let alloc = Allocator::connect_kernel().map_err(|e| e.to_string())?;
    let mut bufs = (0..BUFFERS_EACH)
        .map(|i| alloc.allocate("system", 16 * KIB, &format!("held-{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let maps = bufs
        .iter_mut()
        .take(MAPPED_EACH)
        .map(|b| b.map(dmabufd::sys::SyncDirection::Read))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let files = (0..OTHER_FDS)
        .map(|_| std::fs::File::open("/dev/null"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop((maps, files));
    Ok("done".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_ms(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat.rsplit_once(") ").ok_or("bad stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the comm.
    let ticks: f64 = f[11].parse::<f64>().map_err(|e| e.to_string())?
        + f[12].parse::<f64>().map_err(|e| e.to_string())?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Ok(ticks * 1000.0 / hz)
}

/// A service instance of our own over RPC with `extra` config lines.
fn spawn_service(name: &str, extra: &str) -> Result<(Child, String), String> {
    let dir = format!("/run/dmabufd-{name}");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    nix::unistd::chown(
        Path::new(&dir),
        Some(nix::unistd::Uid::from_raw(1100)),
        Some(nix::unistd::Gid::from_raw(1100)),
    )
    .map_err(|e| e.to_string())?;
    let base = std::fs::read_to_string("/etc/dmabufd.toml").map_err(|e| e.to_string())?;
    // The guest config's [service] table gets the extra keys.
    let cfg = base.replacen("[service]\n", &format!("[service]\n{extra}\n"), 1);
    let cfg = cfg.replace("scan_interval_ms = 1000", "scan_interval_ms = 5000");
    let path = format!("{dir}/dmabufd.toml");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let sock = format!("{dir}/rpc.sock");
    let log =
        std::fs::File::create(format!("/run/dmabufd-{name}.log")).map_err(|e| e.to_string())?;
    let child = Command::new("dmabufd")
        .args(["--rpc", &sock, "--config", &path])
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Allocator::connect_rpc(Path::new(&sock)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("service {name} did not start"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, sock))
}

pub fn run() -> Result<(), String> {
    let mut holders = Vec::new();
    for i in 0..PROCS {
        let uid = if i % 2 == 0 { APP_A } else { APP_B };
        let child = app::start_ready(
            app::command_as(uid, "bench-holder", &[]),
            &format!("holder {i}"),
        )?;
        holders.push(child);
    }
    let iters = dmabufd::scan::bpf::BpfIters::load().map_err(|e| e.to_string())?;
    let bpf = BpfSource::new(iters, None);
    let procfs = ProcfsSource::new();
    let (mut t_bpf, mut t_procfs, mut t_dump) = (Vec::new(), Vec::new(), Vec::new());
    let mut checked = None;
    for _ in 0..REPS {
        let start = Instant::now();
        let scan = bpf.scan().map_err(|e| e.to_string())?;
        let a = build(
            &scan.processes,
            scan.live.as_deref(),
            &[],
            &mut HwmTracker::new(),
            Instant::now(),
        );
        t_bpf.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let scan = procfs.scan().map_err(|e| e.to_string())?;
        let b = build(
            &scan.processes,
            None,
            &[],
            &mut HwmTracker::new(),
            Instant::now(),
        );
        t_procfs.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let c = dmabuf_dump_style(Path::new("/proc"), &[]).map_err(|e| e.to_string())?;
        t_dump.push(start.elapsed().as_secs_f64() * 1e3);
        // Same figures from all three (userspace rss/pss).
        let fig = |x: &dmabufd::accounting::Accounting| (x.userspace_rss(), x.userspace_pss());
        if fig(&a) != fig(&b) || fig(&b) != fig(&c) {
            return Err(format!(
                "sources disagree: bpf {:?} procfs {:?} dump-style {:?}",
                fig(&a),
                fig(&b),
                fig(&c)
            ));
        }
        checked = Some((a.total.count, fig(&a)));
    }
    let fds: usize = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("fd")).ok())
        .map(|d| d.count())
        .sum();
    let (count, (rss, pss)) = checked.unwrap_or_default();
    println!(
        "full report, {PROCS} holders x {BUFFERS_EACH} dma-bufs ({count} live buffers, userspace rss {rss}, pss {pss}; {fds} fds system-wide), median of {REPS} ms:"
    );
    let (b, p, d) = (median(t_bpf), median(t_procfs), median(t_dump));
    println!("  bpf source (iter/dmabuf + task_file + task_vma) + build: {b:.1}");
    println!("  procfs source (readlink filter) + build:                 {p:.1}");
    println!("  dmabuf_dump style (every fdinfo) + build:                {d:.1}");
    println!(
        "  bpf / dmabuf_dump style: {:.3}   bpf / procfs: {:.3}",
        b / d,
        b / p
    );

    // Idle CPU: two fresh services, one per source, same 60 s window.
    let (svc_bpf, _) = spawn_service("bpf", "scan_source = \"bpf\"")?;
    let (svc_procfs, _) = spawn_service("procfs", "scan_source = \"procfs\"")?;
    std::thread::sleep(Duration::from_secs(2));
    let (b0, p0) = (cpu_ms(svc_bpf.id())?, cpu_ms(svc_procfs.id())?);
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let (b1, p1) = (cpu_ms(svc_bpf.id())?, cpu_ms(svc_procfs.id())?);
    println!(
        "idle service CPU over {IDLE_SECS} s (5 s scan interval, buffers above held): bpf {:.0} ms, procfs {:.0} ms",
        b1 - b0,
        p1 - p0
    );

    // Journal cost on the allocation path: same source, journal on and off.
    let (svc_nojournal, sock_off) =
        spawn_service("nojournal", "scan_source = \"bpf\"\nstate_file = \"\"")?;
    let on = Allocator::connect_rpc(Path::new("/run/dmabufd-bpf/rpc.sock"))
        .map_err(|e| e.to_string())?;
    let off = Allocator::connect_rpc(Path::new(&sock_off)).map_err(|e| e.to_string())?;
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let s = Instant::now();
        drop(
            on.allocate("system", 4 * KIB, "j")
                .map_err(|e| e.to_string())?,
        );
        let a = s.elapsed().as_secs_f64() * 1e6;
        let s = Instant::now();
        drop(
            off.allocate("system", 4 * KIB, "j")
                .map_err(|e| e.to_string())?,
        );
        let b = s.elapsed().as_secs_f64() * 1e6;
        if i >= 10 {
            t_on.push(a);
            t_off.push(b);
        }
    }
    println!(
        "4 KiB allocation p50 over RPC: journal on {:.0} us, journal off {:.0} us",
        median(t_on),
        median(t_off)
    );
    for mut c in [svc_bpf, svc_procfs, svc_nojournal] {
        let _ = c.kill();
        let _ = c.wait();
    }
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    Ok(())
}
