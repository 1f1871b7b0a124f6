//! Benchmark: time to build a full report with many processes holding
//! buffers, the service's way (`procfs::scan_all` + `accounting::build`)
//! against a `dmabuf_dump`-style scan (fdinfo of every fd, then maps) that
//! builds the same figures, interleaved in one run.
//!
//! ```text
//! cargo run --release --example report_bench -- [--procs 200] [--buffers 2000] [--iters 20]
//! ```
//!
//! Set-up: `--procs` child processes (this program re-executed with the
//! hidden `--child`), each holding 20 ordinary fds (pipes and files). The
//! parent allocates `--buffers` sealed memfds through an in-process
//! [`Allocator`] over the memfd heap (so the registry knows them as kind
//! Memfd, owned by the receiving child), passes each to its owner over
//! SCM_RIGHTS and to one or two more children for a fifth of them, and
//! closes its own copy. Children map some of what they get (whole, partial,
//! or mapped with the fd then closed) and dup a few fds.
//!
//! Both methods must give the same totals and per-child figures, and those
//! must match what the set-up handed out; otherwise the exit status is 1.
//! Children die with the parent (PDEATHSIG, EOF on their socket) and are
//! killed and reaped on every exit path.

use std::error::Error;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmabufd::accounting::{self, Accounting, HwmTracker};
use dmabufd::allocator::{Allocator, Caller, Request};
use dmabufd::config::Config;
use dmabufd::heap::memfd::MemfdHeap;
use dmabufd::heap::{page_size, Heap};
use dmabufd::procfs::{self, PROC_ROOT};
use dmabufd::registry::Registry;
use dmabufd::sys::{recv_fds, send_fds, Mapping};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Ordinary (non-buffer) fds each child holds besides stdio.
const ORDINARY_FDS: usize = 20;

/// Parent -> child: a buffer follows (one fd), byte 1 says what to do with it.
const MSG_BUFFER: u8 = b'B';
/// Parent -> child: nothing more; answer with [`MSG_READY`].
const MSG_DONE: u8 = b'D';
/// Child -> parent: everything received is held, counts follow.
const MSG_READY: u8 = b'K';

/// What a child does with a buffer it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Keeps the fd.
    Fd,
    /// Keeps the fd and a second fd (dup).
    FdDup,
    /// Keeps the fd and maps the whole buffer.
    FdMap,
    /// Keeps the fd and maps the first page only.
    FdPartialMap,
    /// Maps the whole buffer, then closes the fd.
    MapOnly,
}

impl Hold {
    fn to_byte(self) -> u8 {
        match self {
            Hold::Fd => 0,
            Hold::FdDup => 1,
            Hold::FdMap => 2,
            Hold::FdPartialMap => 3,
            Hold::MapOnly => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Hold> {
        Some(match b {
            0 => Hold::Fd,
            1 => Hold::FdDup,
            2 => Hold::FdMap,
            3 => Hold::FdPartialMap,
            4 => Hold::MapOnly,
            _ => return None,
        })
    }

    /// A fixed mix: about half fd only, a third mapped in some way.
    fn for_holding(buffer: usize, holder: usize) -> Hold {
        match (buffer * 7 + holder * 3) % 12 {
            0..=5 => Hold::Fd,
            6 => Hold::FdDup,
            7 | 8 => Hold::FdMap,
            9 => Hold::FdPartialMap,
            _ => Hold::MapOnly,
        }
    }
}

struct Options {
    procs: usize,
    buffers: usize,
    iters: usize,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        procs: 200,
        buffers: 2000,
        iters: 20,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--procs" => &mut o.procs,
            "--buffers" => &mut o.buffers,
            "--iters" => &mut o.iters,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: report_bench [--procs N] [--buffers N] [--iters N]"
                )
                .into())
            }
        };
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|_| format!("{flag}: not a count: {value:?}"))?;
    }
    if o.procs == 0 || o.buffers == 0 || o.iters == 0 {
        return Err("--procs, --buffers and --iters must be > 0".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        if let Err(e) = child_main() {
            eprintln!("report_bench child: {e}");
            std::process::exit(2);
        }
        return;
    }
    let code = match parse_args(&args).and_then(|o| run(&o)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("report_bench: {e}");
            2
        }
    };
    // `run` has returned: its children are already killed and reaped.
    std::process::exit(code);
}

// ---------------------------------------------------------------- child side

/// Holds ordinary fds, then whatever buffers the parent sends on fd 0 (a
/// SOCK_SEQPACKET socket), until the parent goes away.
fn child_main() -> Result<()> {
    // Die with the parent, whatever way it ends.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() == 1 {
        return Ok(()); // The parent died before PDEATHSIG was set.
    }
    let sock = std::io::stdin().as_fd().try_clone_to_owned()?;

    let mut ordinary: Vec<OwnedFd> = Vec::with_capacity(ORDINARY_FDS);
    let exe = std::env::current_exe()?;
    while ordinary.len() < ORDINARY_FDS {
        match ordinary.len() % 4 {
            0 => {
                let (r, w) = nix::unistd::pipe()?;
                ordinary.push(r);
                ordinary.push(w);
            }
            1 => ordinary.push(File::open("/dev/null")?.into()),
            _ => ordinary.push(File::open(&exe)?.into()),
        }
    }

    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut maps: Vec<Mapping> = Vec::new();
    let page = page_size() as usize;
    let mut msg = [0u8; 16];
    loop {
        let (n, mut received) = recv_fds(sock.as_fd(), &mut msg)?;
        match (n, msg[0]) {
            (0, _) => return Ok(()), // Parent closed its end: done.
            (2, MSG_BUFFER) if received.len() == 1 => {
                let fd = received.pop().expect("one fd");
                let hold = Hold::from_byte(msg[1]).ok_or("bad hold mode")?;
                let size = nix::sys::stat::fstat(fd.as_fd())?.st_size as usize;
                match hold {
                    Hold::Fd => {}
                    Hold::FdDup => fds.push(fd.try_clone()?),
                    Hold::FdMap | Hold::MapOnly => {
                        maps.push(Mapping::new(fd.as_fd(), size, false)?)
                    }
                    Hold::FdPartialMap => maps.push(Mapping::new(fd.as_fd(), page, false)?),
                }
                if hold != Hold::MapOnly {
                    fds.push(fd);
                }
            }
            (2, MSG_DONE) => {
                let mut reply = vec![MSG_READY];
                reply.extend_from_slice(&(fds.len() as u32).to_le_bytes());
                reply.extend_from_slice(&(maps.len() as u32).to_le_bytes());
                send_fds(sock.as_fd(), &reply, &[])?;
            }
            _ => return Err(format!("unexpected message {:?}", &msg[..n]).into()),
        }
    }
}

// --------------------------------------------------------------- parent side

/// The children, killed and reaped when dropped (every exit path of `run`,
/// panics included).
struct Children {
    procs: Vec<ChildProc>,
}

struct ChildProc {
    child: Child,
    sock: OwnedFd,
}

impl ChildProc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
        }
        for p in &mut self.procs {
            let _ = p.child.wait();
        }
    }
}

fn spawn_children(n: usize) -> Result<Children> {
    let exe = std::env::current_exe()?;
    let mut children = Children {
        procs: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let timeout = nix::sys::time::TimeVal::new(30, 0);
        nix::sys::socket::setsockopt(&mine, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        let child = Command::new(&exe)
            .arg("--child")
            .stdin(Stdio::from(theirs))
            .spawn()?;
        children.procs.push(ChildProc { child, sock: mine });
    }
    Ok(children)
}

/// What the set-up handed out, to check the reports against.
struct Expected {
    count: u64,
    bytes: u64,
    /// Sum over buffers of size x number of holders.
    userspace_rss: u64,
    /// rss per child, in the order of `Children::procs`.
    child_rss: Vec<u64>,
    holdings: usize,
    shared: usize,
}

/// Buffer sizes: 4 KiB to 1 MiB in pages, varied. Untouched memfd pages
/// cost no memory, so the nominal total does not matter.
fn buffer_size(i: usize) -> u64 {
    let pages = [1u64, 2, 4, 16, 64, 256][i % 6] + (i as u64 % 7);
    pages * page_size()
}

/// Allocates the buffers (owner: the first holder), sends each to its
/// holders, then waits until every child reports holding what it got.
fn distribute(children: &Children, allocator: &Allocator, buffers: usize) -> Result<Expected> {
    let procs = children.procs.len();
    let uid = nix::unistd::getuid().as_raw();
    let mut expected = Expected {
        count: 0,
        bytes: 0,
        userspace_rss: 0,
        child_rss: vec![0; procs],
        holdings: 0,
        shared: 0,
    };
    for i in 0..buffers {
        let owner = i % procs;
        // A fifth of the buffers go to one or two more processes.
        let mut holders = vec![owner];
        if i % 5 == 0 {
            holders.push((owner + 1 + i / procs) % procs);
            if i % 10 == 0 {
                holders.push((owner + 2 + 3 * (i / procs)) % procs);
            }
        }
        holders.sort_unstable();
        holders.dedup();
        let alloc = allocator.allocate(
            Caller {
                uid,
                pid: children.procs[owner].pid(),
            },
            &Request {
                heap: "system",
                size: buffer_size(i) as i64,
                name: &format!("bench-{i}"),
                flags: 0,
            },
        )?;
        for (k, &h) in holders.iter().enumerate() {
            let hold = Hold::for_holding(i, k);
            let fds: [BorrowedFd<'_>; 1] = [alloc.fd.as_fd()];
            send_fds(
                children.procs[h].sock.as_fd(),
                &[MSG_BUFFER, hold.to_byte()],
                &fds,
            )?;
            expected.child_rss[h] += alloc.size;
        }
        expected.count += 1;
        expected.bytes += alloc.size;
        expected.userspace_rss += alloc.size * holders.len() as u64;
        expected.holdings += holders.len();
        expected.shared += usize::from(holders.len() > 1);
        // `alloc.fd` drops here: only the children hold the buffer.
    }
    for p in &children.procs {
        send_fds(p.sock.as_fd(), &[MSG_DONE, 0], &[])?;
    }
    for p in &children.procs {
        let mut reply = [0u8; 16];
        let (n, _) = recv_fds(p.sock.as_fd(), &mut reply)
            .map_err(|e| format!("child {} did not report ready: {e}", p.pid()))?;
        if n != 9 || reply[0] != MSG_READY {
            return Err(format!("child {} failed during set-up", p.pid()).into());
        }
    }
    Ok(expected)
}

/// The figures both methods must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Figures {
    count: u64,
    bytes: u64,
    userspace_rss: u64,
    userspace_pss: u64,
    /// (rss, pss) per child, in the order of `Children::procs`.
    per_child: Vec<(u64, u64)>,
}

fn figures_of(a: &Accounting, children: &Children) -> Figures {
    Figures {
        count: a.total.count,
        bytes: a.total.bytes,
        userspace_rss: a.userspace_rss(),
        userspace_pss: a.userspace_pss(),
        per_child: children
            .procs
            .iter()
            .map(|c| a.process(c.pid()).map_or((0, 0), |p| (p.rss, p.pss)))
            .collect(),
    }
}

/// Checks figures against the set-up; returns what is wrong.
fn check_expected(f: &Figures, e: &Expected) -> Vec<String> {
    let mut wrong = Vec::new();
    if (f.count, f.bytes) != (e.count, e.bytes) {
        wrong.push(format!(
            "total {} buffers / {} bytes, set-up made {} / {}",
            f.count, f.bytes, e.count, e.bytes
        ));
    }
    if f.userspace_rss != e.userspace_rss {
        wrong.push(format!(
            "userspace rss {} bytes, set-up handed out {}",
            f.userspace_rss, e.userspace_rss
        ));
    }
    // Only the children hold buffers: their pss adds up to every byte.
    let child_pss: u64 = f.per_child.iter().map(|&(_, pss)| pss).sum();
    if child_pss != e.bytes || f.userspace_pss != e.bytes {
        wrong.push(format!(
            "pss of children {child_pss}, of all {}, expected {}",
            f.userspace_pss, e.bytes
        ));
    }
    let bad_rss = f
        .per_child
        .iter()
        .zip(&e.child_rss)
        .filter(|((rss, _), want)| rss != *want)
        .count();
    if bad_rss > 0 {
        wrong.push(format!("{bad_rss} children with an unexpected rss"));
    }
    wrong
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
    min: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Stats {
        p50: ms(percentile(&s, 50.0)),
        p99: ms(percentile(&s, 99.0)),
        mean: ms(s.iter().sum::<Duration>()) / s.len() as f64,
        min: ms(s[0]),
    }
}

fn print_row(label: &str, s: &Stats) {
    println!(
        "{label:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        s.p50, s.p99, s.mean, s.min
    );
}

/// Counts fds under /proc (all processes), to describe what was scanned.
fn count_fds(proc_root: &Path) -> usize {
    procfs::list_pids(proc_root)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")).ok())
        .map(|d| d.count())
        .sum()
}

fn run(o: &Options) -> Result<bool> {
    let proc_root = Path::new(PROC_ROOT);
    let mut config = Config::default();
    config.quota.default_bytes = u64::MAX;
    config.quota.default_buffers = u64::MAX;
    let registry = Arc::new(Registry::new());
    let heap = MemfdHeap::new("system");
    let heaps: Vec<Box<dyn Heap>> = vec![Box::new(heap)];
    let allocator = Allocator::new(heaps, config, registry.clone());

    let t = Instant::now();
    let children = spawn_children(o.procs)?;
    let expected = distribute(&children, &allocator, o.buffers)?;
    let setup = t.elapsed();
    let maps_total: usize = children
        .procs
        .iter()
        .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/maps", c.pid())).ok())
        .map(|m| m.lines().filter(|l| l.contains("/memfd:bench-")).count())
        .sum();
    let scanned_procs = procfs::list_pids(proc_root)?.len();
    let scanned_fds = count_fds(proc_root);
    println!(
        "set-up: {} children, {} memfd-heap buffers ({} MiB nominal), {} holdings, {} shared by 2-3 \
         processes, {} buffer mappings in children, {} ordinary fds per child; {:.1} s",
        o.procs,
        expected.count,
        expected.bytes >> 20,
        expected.holdings,
        expected.shared,
        maps_total,
        ORDINARY_FDS,
        setup.as_secs_f64()
    );
    println!(
        "scanned per iteration: {scanned_procs} processes under {PROC_ROOT} (children and the rest \
         of the system), {scanned_fds} fds"
    );

    // Interleaved, after one warm-up of each, so that drift in the machine's
    // load hits both alike.
    let mut hwm = HwmTracker::new();
    let mut service = Vec::with_capacity(o.iters);
    let mut service_scan = Vec::with_capacity(o.iters);
    let mut service_build = Vec::with_capacity(o.iters);
    let mut baseline = Vec::with_capacity(o.iters);
    let mut ok = true;
    for iter in 0..=o.iters {
        let t0 = Instant::now();
        let records = registry.snapshot();
        let scans = procfs::scan_all(proc_root)?;
        let t1 = Instant::now();
        let ours = accounting::build(&scans, None, &records, &mut hwm, std::time::Instant::now());
        let t2 = Instant::now();

        let t3 = Instant::now();
        let records = registry.snapshot();
        let theirs = accounting::dmabuf_dump_style(proc_root, &records)?;
        let t4 = Instant::now();

        let (a, b) = (figures_of(&ours, &children), figures_of(&theirs, &children));
        if a != b {
            eprintln!(
                "iteration {iter}: the two methods disagree:\n  scan_all+build:     {:?}\n  dmabuf_dump style:  {:?}",
                (a.count, a.bytes, a.userspace_rss, a.userspace_pss),
                (b.count, b.bytes, b.userspace_rss, b.userspace_pss)
            );
            ok = false;
        }
        for w in check_expected(&a, &expected) {
            eprintln!("iteration {iter}: scan_all+build: {w}");
            ok = false;
        }
        if iter == 0 {
            println!(
                "figures (both methods): {} buffers, {} bytes, userspace rss {} bytes, pss {} bytes",
                a.count, a.bytes, a.userspace_rss, a.userspace_pss
            );
            continue; // warm-up
        }
        service.push(t2 - t0);
        service_scan.push(t1 - t0);
        service_build.push(t2 - t1);
        baseline.push(t4 - t3);
    }

    let (s, b) = (stats(&service), stats(&baseline));
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}   ({} iterations)",
        "ms", "p50", "p99", "mean", "min", o.iters
    );
    print_row("service: scan_all + build", &s);
    print_row("  of which scan_all", &stats(&service_scan));
    print_row("  of which build", &stats(&service_build));
    print_row("dmabuf_dump style: fdinfo of every fd + maps", &b);
    println!(
        "ratio dmabuf_dump style / service: p50 {:.2}x, mean {:.2}x",
        b.p50 / s.p50,
        b.mean / s.mean
    );
    if ok {
        println!("both methods gave identical totals and per-child figures, as set up");
    } else {
        eprintln!("FAILED: figures differ (see above)");
    }
    drop(children);
    Ok(ok)
}
