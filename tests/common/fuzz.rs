//! The binder fuzzer's engine, shared by the host test (RPC,
//! `tests/fuzz_binder.rs`) and the VM suite (kernel binder,
//! `tests/vts/cases/fuzz.rs`): raw transactions against a real dmabufd.
//!
//! Every method code of IDmaBufAllocator and unknown codes, with parcels
//! mutated from the seed corpus in `fuzz/corpus/` (truncated, wrong types,
//! huge and negative lengths, bad fds, an fd where none is expected, the
//! oneway flag), random bytes, and well-formed but hostile requests. The
//! PRNG is a seeded xorshift64*: a failure names the seed and the
//! transaction index, and the seed replays it.
//!
//! Why no fuzzing crate: cargo-fuzz/libFuzzer and AFL drive an in-process
//! target function with coverage feedback; the target here is another
//! process (the service) behind a binder transport, which is what must be
//! exercised (parcel parsing in rsbinder, the transport, the handlers).
//! A coverage-guided in-process harness of the handlers would bypass the
//! transport; a structured mutator over real transactions keeps it.
//!
//! Pass criteria ([`run`]): the service never dies; it answers a
//! well-formed `getHeaps` after every 1,000 transactions, and the heaps'
//! bufferCount/allocatedBytes are then exactly the buffers the fuzzer holds
//! (its well-formed allocations plus every fuzzed allocation whose reply
//! carried buffers); every 10,000 transactions it drops them all and the
//! totals come back to zero; the service's fd count ends within
//! [`Limits::fd_slack`] of the post-warm-up baseline and its VmRSS within
//! [`Limits::rss_slack`]; its log has no panic.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use dmabufd::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, IDmaBufAllocator::IDmaBufAllocator,
    ReportCursor::ReportCursor,
};
use dmabufd::client::Allocator;
use rsbinder::{
    Parcel, ParcelFileDescriptor, Status, StatusCode, FIRST_CALL_TRANSACTION, FLAG_CLEAR_BUF,
    FLAG_ONEWAY,
};

use super::rng::Rng;

/// IDmaBufAllocator's methods in AIDL order: method `i` is transaction code
/// `FIRST_CALL_TRANSACTION + i` in the generated stubs (checked by the host
/// test `method_codes_are_those_of_the_generated_stubs`).
pub const METHODS: [&str; 9] = [
    "getHeaps",
    "allocate",
    "getProcessMemory",
    "getMemoryReport",
    "resetHighWaterMark",
    "renderDump",
    "allocateBatch",
    "getMemoryReportPage",
    "renderDumpChunk",
];
pub const ALLOCATE: u32 = FIRST_CALL_TRANSACTION + 1;
pub const ALLOCATE_BATCH: u32 = FIRST_CALL_TRANSACTION + 6;
/// Methods that scan every process when called well-formed by a privileged
/// caller (the fuzzer runs as root): getProcessMemory, getMemoryReport,
/// renderDump, and the paged reads when they start a snapshot.
pub const SCANNING: [u32; 5] = [2, 3, 5, 7, 8];
/// The rest.
const CHEAP: [u32; 4] = [0, 1, 4, 6];

/// The interface descriptor, as the RPC token of the corpus files.
pub fn descriptor() -> &'static str {
    <dmabufd::service::DmaBufService as IDmaBufAllocator>::descriptor()
}

/// The data bytes of `p` (4-byte words, as written).
pub fn bytes_of(p: &mut Parcel) -> Vec<u8> {
    let n = p.data_size();
    p.set_data_position(0);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        v.extend(p.read_u32().unwrap().to_le_bytes());
    }
    v
}

/// `token` (an interface token as the transport writes it) then the
/// arguments `write` puts in a parcel.
pub fn encode_with(token: &[u8], write: &dyn Fn(&mut Parcel)) -> Vec<u8> {
    let mut p = Parcel::new();
    write(&mut p);
    let mut v = token.to_vec();
    v.extend(bytes_of(&mut p));
    v
}

/// The RPC transport's interface token: the descriptor alone. The corpus
/// files carry it; a kernel binder target swaps in its own header.
pub fn rpc_token() -> Vec<u8> {
    let mut p = Parcel::new();
    p.write(descriptor()).unwrap();
    bytes_of(&mut p)
}

/// A well-formed call over RPC: the interface token then the arguments.
pub fn encode(write: impl Fn(&mut Parcel)) -> Vec<u8> {
    encode_with(&rpc_token(), &write)
}

pub fn request(heap: &str, size: i64, name: &str, flags: i32) -> AllocationRequest {
    AllocationRequest {
        heapName: heap.into(),
        size,
        name: name.into(),
        flags,
    }
}

/// The seed corpus: file name (its first two digits are the method index)
/// and the encoded call.
pub fn corpus_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    vec![
        ("00-getHeaps.bin", encode(|_| {})),
        (
            "01-allocate-system-4k.bin",
            encode(|p| p.write(&request("system", 4096, "fuzz", 0)).unwrap()),
        ),
        (
            "01-allocate-camera-1m-no-cpu-default-name.bin",
            encode(|p| p.write(&request("camera", 1 << 20, "", 1)).unwrap()),
        ),
        (
            "02-getProcessMemory-pid-1.bin",
            encode(|p| p.write(&1i32).unwrap()),
        ),
        ("03-getMemoryReport.bin", encode(|_| {})),
        (
            "04-resetHighWaterMark-pid-1.bin",
            encode(|p| p.write(&1i32).unwrap()),
        ),
        (
            "05-renderDump-no-args.bin",
            encode(|p| p.write(&args(&[])).unwrap()),
        ),
        (
            "05-renderDump-csv-all.bin",
            encode(|p| p.write(&args(&["-a", "--csv"])).unwrap()),
        ),
        (
            "05-renderDump-help.bin",
            encode(|p| p.write(&args(&["-h"])).unwrap()),
        ),
        (
            "06-allocateBatch-system-4k-x4.bin",
            encode(|p| {
                p.write(&request("system", 4096, "fuzz-batch", 0)).unwrap();
                p.write(&4i32).unwrap();
            }),
        ),
        (
            "07-getMemoryReportPage-new-snapshot.bin",
            encode(|p| p.write(&ReportCursor::default()).unwrap()),
        ),
        (
            "08-renderDumpChunk-new-snapshot.bin",
            encode(|p| {
                p.write(&args(&["-b"])).unwrap();
                p.write(&0i64).unwrap();
                p.write(&0i64).unwrap();
            }),
        ),
    ]
}

pub fn corpus_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// The corpus files under `dir`: method index and bytes.
pub fn load_corpus(dir: &std::path::Path) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index: u32 = name
                .get(..2)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{name}: corpus files are NN-*.bin"))?;
            let bytes = std::fs::read(e.path()).map_err(|e| format!("{name}: {e}"))?;
            Ok((name, index, bytes))
        })
        .collect::<Result<_, String>>()?;
    v.sort();
    if v.is_empty() {
        return Err(format!("{}: empty seed corpus", dir.display()));
    }
    Ok(v.into_iter().map(|(_, i, b)| (i, b)).collect())
}

/// A method index, a scanning one ([`SCANNING`]) one time in ten.
fn method(rng: &mut Rng) -> u32 {
    if rng.chance(10) {
        *rng.pick(&SCANNING)
    } else {
        *rng.pick(&CHEAP)
    }
}

/// One transaction to send.
struct Txn {
    code: u32,
    bytes: Vec<u8>,
    /// Word index where a file descriptor object goes.
    fd_at: Option<usize>,
    flags: u32,
    what: &'static str,
}

/// Codes that are not IDmaBufAllocator methods, or binder's own.
fn other_codes(rng: &mut Rng) -> u32 {
    let n = METHODS.len() as u32;
    let random = rng.next() as u32;
    *rng.pick(&[
        0,
        FIRST_CALL_TRANSACTION + n,
        FIRST_CALL_TRANSACTION + n + 1,
        FIRST_CALL_TRANSACTION + 100,
        rsbinder::LAST_CALL_TRANSACTION,
        rsbinder::LAST_CALL_TRANSACTION - 1, // getInterfaceVersion
        rsbinder::LAST_CALL_TRANSACTION - 2, // getInterfaceHash
        rsbinder::LAST_CALL_TRANSACTION + 1,
        rsbinder::PING_TRANSACTION,
        rsbinder::DUMP_TRANSACTION,
        rsbinder::SHELL_COMMAND_TRANSACTION,
        rsbinder::INTERFACE_TRANSACTION,
        rsbinder::SYSPROPS_TRANSACTION,
        rsbinder::EXTENSION_TRANSACTION,
        rsbinder::DEBUG_PID_TRANSACTION,
        rsbinder::SET_RPC_CLIENT_TRANSACTION,
        rsbinder::START_RECORDING_TRANSACTION,
        rsbinder::STOP_RECORDING_TRANSACTION,
        u32::MAX,
        random,
    ])
}

const INTERESTING_32: [u32; 16] = [
    0,
    1,
    2,
    4,
    31,
    32,
    0x7f,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x7fff_fffe,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x8,
];

const INTERESTING_64: [i64; 10] = [
    0,
    1,
    -1,
    -4096,
    4096,
    (16 << 20) + 1,
    1 << 40,
    i64::MAX,
    i64::MIN,
    0x7fff_ffff,
];

/// Mutates `w` (a parcel's words) in place, 1 to 4 times.
pub fn mutate(rng: &mut Rng, w: &mut Vec<u32>, other: &[u32]) {
    for _ in 0..1 + rng.below(4) {
        let len = w.len();
        match rng.below(10) {
            // Truncated.
            0 => w.truncate(rng.below(len + 1)),
            // A bit flipped.
            1 if len > 0 => {
                let i = rng.below(len);
                w[i] ^= 1 << rng.below(32);
            }
            // A length, size or pid replaced by an edge value (huge and
            // negative lengths among them).
            2 | 3 if len > 0 => {
                let i = rng.below(len);
                w[i] = *rng.pick(&INTERESTING_32);
            }
            // A 64-bit field (the size) replaced.
            4 if len > 1 => {
                let i = rng.below(len - 1);
                let v = *rng.pick(&INTERESTING_64) as u64;
                w[i] = v as u32;
                w[i + 1] = (v >> 32) as u32;
            }
            // Random words inserted.
            5 => {
                let at = rng.below(len + 1);
                for _ in 0..1 + rng.below(8) {
                    w.insert(at, rng.next() as u32);
                }
            }
            // A range deleted.
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(8));
                w.drain(at..at + n);
            }
            // A range duplicated.
            7 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                let dup: Vec<u32> = w[at..at + n].to_vec();
                let to = rng.below(w.len() + 1);
                w.splice(to..to, dup);
            }
            // Spliced with another seed (types of another method).
            8 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                w.truncate(cut);
                w.extend_from_slice(&other[from..]);
            }
            // A word made random.
            _ if len > 0 => {
                let i = rng.below(len);
                w[i] = rng.next() as u32;
            }
            _ => w.push(rng.next() as u32),
        }
    }
}

pub fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

pub fn to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A well-formed call with hostile arguments.
fn hostile(
    rng: &mut Rng,
    token: &[u8],
    long: &str,
    own_pid: i32,
    service_pid: i32,
) -> (u32, Vec<u8>) {
    let encode = |write: &dyn Fn(&mut Parcel)| encode_with(token, write);
    let heaps: [&str; 12] = [
        "system",
        "camera",
        "",
        "gpu",
        "system-uncached",
        "../system",
        "system\0",
        "SYSTEM",
        "sys\ntem",
        "\u{202e}metsys",
        long,
        "system ",
    ];
    let names: [&str; 12] = [
        "",
        "x",
        "0123456789012345678901234567890",  // 31 bytes
        "01234567890123456789012345678901", // 32 bytes
        "a\nforged line",
        "\r",
        "nul\0",
        "éééééééééééééééé", // 32 bytes, 16 chars
        "%s%n%x",
        long,
        "tab\there",
        "\u{1b}[31mred",
    ];
    let pids = [
        0,
        -1,
        i32::MIN,
        i32::MAX,
        1,
        own_pid,
        service_pid,
        4_194_304,
        rng.next() as i32,
    ];
    // Mostly allocate: getProcessMemory, getMemoryReport and renderDump of
    // a privileged caller each cost a full scan (a few ms in a debug build).
    match rng.below(24) {
        0..=15 => {
            let size = if rng.chance(50) {
                *rng.pick(&INTERESTING_64)
            } else {
                1 + rng.below(16 << 20) as i64
            };
            let flags = *rng.pick(&[0, 0, 1, 2, -1, i32::MIN, 0x4000_0000]);
            let (heap, name) = (*rng.pick(&heaps), *rng.pick(&names));
            let r = request(heap, size, name, flags);
            (1, encode(&|p| p.write(&r).unwrap()))
        }
        // A batch: counts around the bound, sizes as above.
        19 | 20 => {
            let size = if rng.chance(50) {
                *rng.pick(&INTERESTING_64)
            } else {
                1 + rng.below(1 << 20) as i64
            };
            let count = *rng.pick(&[0, 1, 2, 16, 64, 65, -1, i32::MIN, i32::MAX]);
            let heap: &&str = rng.pick(&heaps);
            let name: &&str = rng.pick(&names);
            let r = request(heap, size, name, 0);
            (
                6,
                encode(&|p| {
                    p.write(&r).unwrap();
                    p.write(&count).unwrap();
                }),
            )
        }
        // Paged reads: made-up snapshots and offsets.
        21 | 22 => {
            let c = ReportCursor {
                snapshotId: *rng.pick(&INTERESTING_64),
                process: *rng.pick(&INTERESTING_32) as i32,
                processBuffer: *rng.pick(&INTERESTING_32) as i32,
                buffer: *rng.pick(&INTERESTING_32) as i32,
            };
            if rng.chance(50) {
                (7, encode(&|p| p.write(&c).unwrap()))
            } else {
                let offset = *rng.pick(&INTERESTING_64);
                (
                    8,
                    encode(&|p| {
                        p.write(&Vec::<String>::new()).unwrap();
                        p.write(&c.snapshotId).unwrap();
                        p.write(&offset).unwrap();
                    }),
                )
            }
        }
        16 => {
            let pid = *rng.pick(&pids);
            (2, encode(&|p| p.write(&pid).unwrap()))
        }
        17 | 18 => {
            let pid = *rng.pick(&pids);
            (4, encode(&|p| p.write(&pid).unwrap()))
        }
        _ => {
            let pool = [
                "-h",
                "--proto",
                "-b",
                "-a",
                "--csv",
                "-o",
                "csv",
                "xml",
                "--pid",
                "-1",
                "0",
                "99999999999",
                "--source",
                "--bogus",
                "",
                "\n",
                long,
            ];
            let n = if rng.chance(2) { 1_000 } else { rng.below(5) };
            let args: Vec<String> = (0..n).map(|_| rng.pick(&pool).to_string()).collect();
            (5, encode(&|p| p.write(&args).unwrap()))
        }
    }
}

struct Fuzzer {
    rng: Rng,
    /// The target transport's interface token.
    token: Vec<u8>,
    seeds: Vec<(u32, Vec<u32>)>,
    own_pid: i32,
    service_pid: i32,
    /// A 4,096-byte string (heap names, buffer names, dump arguments).
    long: String,
}

impl Fuzzer {
    /// A seed; those of the methods that scan one time in ten, to keep the
    /// short form fast.
    fn seed(&mut self) -> (u32, Vec<u32>) {
        let scanning = self.rng.chance(10);
        loop {
            let k = self.rng.below(self.seeds.len());
            if SCANNING.contains(&self.seeds[k].0) == scanning {
                return self.seeds[k].clone();
            }
        }
    }

    fn next_txn(&mut self) -> Txn {
        let (seed_index, seed) = self.seed();
        let (_, other) = self.seed();
        let rng = &mut self.rng;
        let (index, bytes, what) = match rng.below(100) {
            // A seed, mutated.
            0..=54 => {
                let (i, mut w) = (seed_index, seed);
                mutate(rng, &mut w, &other);
                (i, to_bytes(&w), "mutated seed")
            }
            // Well-formed and hostile.
            55..=79 => {
                let (i, b) = hostile(rng, &self.token, &self.long, self.own_pid, self.service_pid);
                (i, b, "hostile request")
            }
            // A seed as it is, under another method's code (wrong types).
            80..=87 => (method(rng), to_bytes(&seed), "wrong method"),
            // Random bytes, with the interface token or without.
            _ => {
                let mut w = if rng.chance(50) {
                    words(&self.token)
                } else {
                    Vec::new()
                };
                for _ in 0..rng.below(64) {
                    w.push(rng.next() as u32);
                }
                (method(rng), to_bytes(&w), "random bytes")
            }
        };
        let mut code = FIRST_CALL_TRANSACTION + index;
        let mut what = what;
        if rng.chance(8) {
            code = other_codes(rng);
            what = "unknown or binder code";
        }
        // An fd where none is expected (or where dump expects one).
        let fd_chance = if code == rsbinder::DUMP_TRANSACTION {
            60
        } else {
            6
        };
        let fd_at = rng
            .chance(fd_chance)
            .then(|| rng.below(bytes.len() / 4 + 1));
        let flags = match rng.below(100) {
            0..=4 => FLAG_ONEWAY,
            5 => FLAG_ONEWAY | FLAG_CLEAR_BUF,
            6 => FLAG_CLEAR_BUF,
            _ => 0,
        };
        Txn {
            code,
            bytes,
            fd_at,
            flags,
            what,
        }
    }
}

/// A buffer the fuzzer holds, and what it counts for.
struct Held {
    _fd: Option<ParcelFileDescriptor>,
    size: i64,
}

#[derive(Default)]
struct Stats {
    ok: u64,
    service_errors: BTreeMap<String, u64>,
    transport_errors: BTreeMap<String, u64>,
    oneway: u64,
    with_fd: u64,
    fuzzed_allocations: u64,
    well_formed_allocations: u64,
    reconnects: u64,
    by_kind: BTreeMap<&'static str, u64>,
    /// Transactions and time spent, by code.
    time_by_code: BTreeMap<u32, (u64, Duration)>,
}

/// The service under test, on whichever transport.
pub trait Target {
    fn allocator(&self) -> &Allocator;
    /// A new connection after the old one broke.
    fn reconnect(&mut self) -> Result<(), String>;
    /// Whether the service process still runs.
    fn alive(&mut self) -> bool;
    fn service_pid(&self) -> i32;
    /// Open fds of the service that are not buffers.
    fn fd_count(&self) -> usize;
    /// What those fds are, for a failure message.
    fn fd_targets(&self) -> Vec<String>;
    /// The service's log so far.
    fn log(&self) -> String;
}

/// What the run may grow by after warm-up.
pub struct Limits {
    pub warm_up: u64,
    pub fd_slack: usize,
    pub rss_slack: u64,
    /// How long frees may take to leave the totals (a scan interval or two).
    pub settle: Duration,
}

pub fn vm_rss(pid: i32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

/// The heaps' totals (bufferCount, allocatedBytes) from a well-formed getHeaps.
pub fn totals(a: &Allocator) -> Result<(i64, i64), String> {
    let heaps = a
        .heaps()
        .map_err(|e| format!("a well-formed getHeaps was refused: {e}"))?;
    Ok(heaps.iter().fold((0, 0), |(n, b), h| {
        (n + h.bufferCount as i64, b + h.allocatedBytes)
    }))
}

/// Waits up to `settle` for the totals to be `want`.
pub fn wait_for_totals(
    a: &Allocator,
    want: (i64, i64),
    settle: Duration,
) -> Result<(i64, i64), String> {
    let deadline = Instant::now() + settle;
    loop {
        let t = totals(a)?;
        if t == want || Instant::now() > deadline {
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Sends `count` fuzzed transactions to `target` from `seed`, checking as
/// the module says. Ok: a summary of the run.
pub fn run(
    target: &mut dyn Target,
    corpus: Vec<(u32, Vec<u8>)>,
    count: u64,
    seed: u64,
    limits: &Limits,
) -> Result<String, String> {
    // The corpus carries the RPC token; the target's transport may write
    // another (kernel binder: strict mode, work source, header, descriptor).
    let token = {
        let binder = target.allocator().service().as_binder();
        let remote = binder.as_remote().ok_or("no remote proxy")?;
        let mut p = remote
            .prepare_transact(true)
            .map_err(|e| format!("prepare_transact: {e:?}"))?;
        bytes_of(&mut p)
    };
    let rpc = rpc_token();
    let seeds = corpus
        .into_iter()
        .map(|(i, b)| {
            let args = b.strip_prefix(rpc.as_slice()).unwrap_or(&b);
            let mut v = token.clone();
            v.extend_from_slice(args);
            (i, words(&v))
        })
        .collect();
    let service_pid = target.service_pid();
    let mut fz = Fuzzer {
        rng: Rng::new(seed),
        token,
        seeds,
        own_pid: std::process::id() as i32,
        service_pid,
        long: "n".repeat(4_096),
    };
    // What an fd object in a parcel carries: a memfd of ours.
    let spare: OwnedFd =
        nix::sys::memfd::memfd_create("fuzz-spare", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
    let spare = ParcelFileDescriptor::new(spare);
    let mut held: Vec<Held> = Vec::new();
    let mut stats = Stats::default();
    let mut baseline: Option<(usize, u64)> = None;
    let (mut max_fds, mut max_rss) = (0usize, 0u64);
    let started = Instant::now();
    let ctx = |i: u64| format!("seed {seed:#x}, transaction {i}");

    for i in 0..count {
        let t = fz.next_txn();
        *stats.by_kind.entry(t.what).or_default() += 1;
        let binder = target.allocator().service().as_binder();
        let remote = binder.as_remote().ok_or("no remote proxy")?;
        let mut data = remote
            .prepare_transact(false)
            .map_err(|e| format!("{e:?}"))?;
        let w = words(&t.bytes);
        for (k, x) in w.iter().enumerate() {
            if t.fd_at == Some(k) {
                data.write(&spare).map_err(|e| format!("{e:?}"))?;
            }
            data.write_u32(*x).map_err(|e| format!("{e:?}"))?;
        }
        if t.fd_at.is_some_and(|k| k >= w.len()) {
            data.write(&spare).map_err(|e| format!("{e:?}"))?;
        }
        stats.with_fd += t.fd_at.is_some() as u64;
        stats.oneway += (t.flags & FLAG_ONEWAY != 0) as u64;
        let sent = Instant::now();
        let result = remote.submit_transact(t.code, &data, t.flags);
        let e = stats.time_by_code.entry(t.code).or_default();
        e.0 += 1;
        e.1 += sent.elapsed();
        match result {
            Ok(Some(mut reply)) => match reply.read::<Status>() {
                Ok(s) if s.is_ok() => {
                    stats.ok += 1;
                    // A fuzzed allocation that was well-formed enough: the
                    // buffers are ours now, and count.
                    let buffers: Vec<Buffer> = match t.code {
                        ALLOCATE => vec![reply.read().map_err(|e| {
                            format!("{}: allocate said ok, reply has no Buffer: {e:?}", ctx(i))
                        })?],
                        ALLOCATE_BATCH => reply.read().map_err(|e| {
                            format!(
                                "{}: allocateBatch said ok, reply has no Buffer[]: {e:?}",
                                ctx(i)
                            )
                        })?,
                        _ => Vec::new(),
                    };
                    for b in buffers {
                        check!(b.fd.is_some(), "{}: allocation reply without fd", ctx(i));
                        stats.fuzzed_allocations += 1;
                        held.push(Held {
                            _fd: b.fd,
                            size: b.size,
                        });
                    }
                }
                Ok(s) => {
                    *stats
                        .service_errors
                        .entry(format!("{:?}", s.exception_code()))
                        .or_default() += 1
                }
                Err(e) => *stats.service_errors.entry(format!("{e:?}")).or_default() += 1,
            },
            Ok(None) => stats.ok += 1,
            Err(e) => {
                *stats.transport_errors.entry(format!("{e:?}")).or_default() += 1;
                if matches!(e, StatusCode::DeadObject | StatusCode::RpcError) {
                    check!(target.alive(), "{}: the service died", ctx(i));
                    stats.reconnects += 1;
                    target.reconnect()?;
                }
            }
        }
        drop(data);

        if (i + 1) % 1_000 == 0 {
            check!(target.alive(), "{}: the service died", ctx(i));
            // A well-formed allocation of our own, held like the others.
            let b = target
                .allocator()
                .allocate("system", 4096 * (1 + (i / 1000) % 4), "well-formed")
                .map_err(|e| format!("{}: well-formed allocate refused: {e}", ctx(i)))?;
            stats.well_formed_allocations += 1;
            held.push(Held {
                size: b.size() as i64,
                _fd: Some(ParcelFileDescriptor::new(b.into_owned_fd())),
            });
            let want = (held.len() as i64, held.iter().map(|h| h.size).sum::<i64>());
            let got = totals(target.allocator())?;
            check!(
                got == want,
                "{}: the heaps' (bufferCount, allocatedBytes) are {got:?}, this fuzzer holds {want:?}",
                ctx(i)
            );
            if (i + 1) % 10_000 == 0 {
                held.clear();
                let got = wait_for_totals(target.allocator(), (0, 0), limits.settle)?;
                check!(
                    got == (0, 0),
                    "{}: freed buffers still counted: {got:?}",
                    ctx(i)
                );
            }
            let (fds, rss) = (target.fd_count(), vm_rss(service_pid)?);
            if i + 1 >= limits.warm_up {
                baseline.get_or_insert((fds, rss));
                max_fds = max_fds.max(fds);
                max_rss = max_rss.max(rss);
            }
        }
    }
    let elapsed = started.elapsed();
    held.clear();
    let got = wait_for_totals(target.allocator(), (0, 0), limits.settle)?;
    check!(got == (0, 0), "freed buffers still counted: {got:?}");
    check!(target.alive(), "the service died");
    let (base_fds, base_rss) = match baseline {
        Some(b) => b,
        None => (target.fd_count(), vm_rss(service_pid)?),
    };
    // Reply threads close their last buffer fds just after replying.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut fds = target.fd_count();
    while fds > base_fds + limits.fd_slack && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = target.fd_count();
    }
    let rss = vm_rss(service_pid)?;
    let summary = format!(
        "fuzz: {count} transactions in {:.1} s ({:.0}/s), seed {seed:#x}\n\
         fuzz: service fds {base_fds} after warm-up -> {fds} at the end (max {max_fds}); \
         VmRSS {} KiB -> {} KiB (max {} KiB)\n\
         fuzz: ok {}, oneway {}, with fd {}, fuzzed allocations that succeeded {}, \
         well-formed allocations {}, reconnects {}\n\
         fuzz: by kind {:?}\nfuzz: (count, time) by code {:?}\n\
         fuzz: service errors {:?}\nfuzz: transport errors {:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        base_rss / 1024,
        rss / 1024,
        max_rss / 1024,
        stats.ok,
        stats.oneway,
        stats.with_fd,
        stats.fuzzed_allocations,
        stats.well_formed_allocations,
        stats.reconnects,
        stats.by_kind,
        stats.time_by_code,
        stats.service_errors,
        stats.transport_errors,
    );
    // rsbinder turns a handler's panic into an error reply and logs it:
    // the process survives, but a panic is still a defect.
    let log = target.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panic")).collect();
    check!(
        panics.is_empty(),
        "the service panicked: {panics:#?}\n{summary}"
    );
    check!(
        fds <= base_fds + limits.fd_slack,
        "service fds grew from {base_fds} to {fds}: {:?}\n{summary}",
        target.fd_targets()
    );
    check!(
        rss <= base_rss + limits.rss_slack,
        "service VmRSS grew from {} KiB to {} KiB\n{summary}",
        base_rss / 1024,
        rss / 1024
    );
    Ok(summary)
}
