//! Fuzzer: raw binder transactions against a real dmabufd process over
//! RPC binder (Unix socket, fd passing on).
//!
//! Every method code of IDmaBufAllocator and unknown codes, with parcels
//! mutated from the seed corpus in `fuzz/corpus/` (truncated, wrong types,
//! huge and negative lengths, bad fds, an fd where none is expected, the
//! oneway flag), random bytes, and well-formed but hostile requests. The
//! PRNG is a seeded xorshift64*: a failure names the seed and the
//! transaction index, and `DMABUFD_FUZZ_SEED` replays it.
//!
//! Pass criteria (asserted): the service process never dies; it answers a
//! well-formed `getHeaps` after every 1,000 transactions, and the heaps'
//! bufferCount/allocatedBytes are then exactly the buffers this test holds
//! (the well-formed allocations it made plus every fuzzed allocation whose
//! reply carried a buffer); every 10,000 transactions it drops them all and
//! the totals must come back to zero; its fd count ends within
//! [`FD_SLACK`] of the post-warm-up baseline and its VmRSS within
//! [`RSS_SLACK`].
//!
//! `DMABUFD_FUZZ_COUNT` (default 50,000, the CI short form) sets the number
//! of transactions: the long form is
//! `DMABUFD_FUZZ_COUNT=1000000 cargo test --release --test fuzz_binder -- --nocapture`.
//! `DMABUFD_FUZZ_WRITE_CORPUS=1` rewrites the seed corpus from the encoder.

mod common;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Service;
use dmabufd::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest, Buffer::Buffer, IDmaBufAllocator::IDmaBufAllocator,
};
use rsbinder::{
    Parcel, ParcelFileDescriptor, Status, StatusCode, FIRST_CALL_TRANSACTION, FLAG_CLEAR_BUF,
    FLAG_ONEWAY,
};

/// A short scan interval, so dropped buffers leave the registry quickly; a
/// quota far above anything the run holds (a quota refusal would be a false
/// one here); the `camera` alias as in the other host tests.
const CONFIG: &str = r#"
[service]
scan_interval_ms = 250
[heaps]
default_max_size = "16M"
[aliases]
camera = "system"
[quota]
default_buffers = 1000000
default_bytes = "1T"
"#;

/// IDmaBufAllocator's methods in AIDL order: method `i` is transaction code
/// `FIRST_CALL_TRANSACTION + i` in the generated stubs (checked by
/// `method_codes_are_those_of_the_generated_stubs`).
const METHODS: [&str; 6] = [
    "getHeaps",
    "allocate",
    "getProcessMemory",
    "getMemoryReport",
    "resetHighWaterMark",
    "renderDump",
];
const ALLOCATE: u32 = FIRST_CALL_TRANSACTION + 1;
/// Methods that scan every process when called well-formed by a privileged
/// caller (the fuzzer runs as root in CI): getProcessMemory,
/// getMemoryReport, renderDump.
const SCANNING: [u32; 3] = [2, 3, 5];

/// The fd count may end this far above its post-warm-up baseline: one
/// buffer fd in a reply the service has not finished closing, and one
/// procfs-independent transient (a journal compaction's file). A leak of
/// one fd per 1,000 transactions would show as 45 on the short form.
const FD_SLACK: usize = 2;
/// VmRSS may grow this much after warm-up: allocator arenas and the
/// registry's map capacity settle within the first few thousand
/// transactions; a leak of even 200 bytes per transaction would be ~9 MiB
/// on the short form and ~190 MiB on the long one.
const RSS_SLACK: u64 = 8 << 20;
/// Transactions before the fd/RSS baseline is taken.
const WARM_UP: u64 = 5_000;

const DEFAULT_SEED: u64 = 0x00d3_ab0f_f022_0026;

use common::Rng;

fn descriptor() -> &'static str {
    <dmabufd::service::DmaBufService as IDmaBufAllocator>::descriptor()
}

/// The data bytes of `p` (4-byte words, as written).
fn bytes_of(p: &mut Parcel) -> Vec<u8> {
    let n = p.data_size();
    p.set_data_position(0);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        v.extend(p.read_u32().unwrap().to_le_bytes());
    }
    v
}

/// A well-formed call: the RPC interface token then the arguments.
fn encode(write: impl FnOnce(&mut Parcel)) -> Vec<u8> {
    let mut p = Parcel::new();
    p.write(descriptor()).unwrap();
    write(&mut p);
    bytes_of(&mut p)
}

fn request(heap: &str, size: i64, name: &str, flags: i32) -> AllocationRequest {
    AllocationRequest {
        heapName: heap.into(),
        size,
        name: name.into(),
        flags,
    }
}

/// The seed corpus: file name (its first two digits are the method index)
/// and the encoded call.
fn corpus_seeds() -> Vec<(&'static str, Vec<u8>)> {
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
    ]
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// The corpus files: method index and bytes.
fn load_corpus() -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index: u32 = name[..2].parse().expect("corpus file NN-*.bin");
            (name, index, std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "empty seed corpus");
    v.into_iter().map(|(_, i, b)| (i, b)).collect()
}

/// The corpus in the repository is what the encoder writes today (so a
/// change of the AIDL or of rsbinder's wire format shows here first).
#[test]
fn seed_corpus_is_the_encoding_of_well_formed_calls() {
    let dir = corpus_dir();
    if std::env::var_os("DMABUFD_FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in corpus_seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in corpus_seeds() {
        let on_disk = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; DMABUFD_FUZZ_WRITE_CORPUS=1 writes it"));
        assert_eq!(on_disk, bytes, "{name} differs from the encoder's output");
    }
}

/// The codes the fuzzer uses are the generated stubs' codes: each seed,
/// sent two-way as it is, gets a reply that parses as its method's return
/// type, and the next code is unknown to the service.
#[test]
fn method_codes_are_those_of_the_generated_stubs() {
    use dmabufd::aidl::vendor::dmabuf::{
        HeapInfo::HeapInfo, MemoryReport::MemoryReport, ProcessMemory::ProcessMemory,
    };
    let svc = Service::start(CONFIG);
    let a = svc.connect();
    let binder = a.service().as_binder();
    let remote = binder.as_remote().unwrap();
    let send = |index: u32, bytes: &[u8]| -> Parcel {
        let mut data = remote.prepare_transact(false).unwrap();
        for w in bytes.chunks(4) {
            data.write_u32(u32::from_le_bytes(w.try_into().unwrap()))
                .unwrap();
        }
        let mut reply = remote
            .submit_transact(FIRST_CALL_TRANSACTION + index, &data, 0)
            .unwrap()
            .unwrap();
        let status: Status = reply.read().unwrap();
        assert!(
            status.is_ok(),
            "{} refused: {status:?}",
            METHODS[index as usize]
        );
        reply
    };
    let seeds = corpus_seeds();
    let seed = |prefix: &str| &seeds.iter().find(|(n, _)| n.starts_with(prefix)).unwrap().1;
    let _: Vec<HeapInfo> = send(0, seed("00")).read().unwrap();
    let b: Buffer = send(1, seed("01-allocate-system")).read().unwrap();
    assert_eq!((b.size, b.heapName.as_str()), (4096, "system"));
    let _: ProcessMemory = send(2, seed("02")).read().unwrap();
    let _: MemoryReport = send(3, seed("03")).read().unwrap();
    send(4, seed("04"));
    let dump: Vec<u8> = send(5, seed("05-renderDump-help")).read().unwrap();
    assert!(String::from_utf8_lossy(&dump).contains("--csv"));
    let mut data = remote.prepare_transact(true).unwrap();
    data.write(&0i32).unwrap();
    let r = remote.submit_transact(FIRST_CALL_TRANSACTION + METHODS.len() as u32, &data, 0);
    assert_eq!(r.err(), Some(StatusCode::UnknownTransaction));
}

/// A method index, a scanning one ([`SCANNING`]) one time in ten.
fn method(rng: &mut Rng) -> u32 {
    if rng.chance(10) {
        *rng.pick(&SCANNING)
    } else {
        *rng.pick(&[0, 1, 4])
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
fn mutate(rng: &mut Rng, w: &mut Vec<u32>, other: &[u32]) {
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

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

fn to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A well-formed call with hostile arguments.
fn hostile(rng: &mut Rng, long: &str, own_pid: i32, service_pid: i32) -> (u32, Vec<u8>) {
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
    match rng.below(20) {
        0..=15 => {
            let size = if rng.chance(50) {
                *rng.pick(&INTERESTING_64)
            } else {
                1 + rng.below(16 << 20) as i64
            };
            let flags = *rng.pick(&[0, 0, 1, 2, -1, i32::MIN, 0x4000_0000]);
            let (heap, name) = (*rng.pick(&heaps), *rng.pick(&names));
            let r = request(heap, size, name, flags);
            (1, encode(|p| p.write(&r).unwrap()))
        }
        16 => {
            let pid = *rng.pick(&pids);
            (2, encode(|p| p.write(&pid).unwrap()))
        }
        17 | 18 => {
            let pid = *rng.pick(&pids);
            (4, encode(|p| p.write(&pid).unwrap()))
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
            (5, encode(|p| p.write(&args).unwrap()))
        }
    }
}

struct Fuzzer {
    rng: Rng,
    seeds: Vec<(u32, Vec<u32>)>,
    own_pid: i32,
    service_pid: i32,
    /// A 4,096-byte string (heap names, buffer names, dump arguments).
    long: String,
}

impl Fuzzer {
    /// A seed; those of the methods that scan (index 2, 3 and 5: a full
    /// scan of 5 to 10 ms per well-formed call in a debug build, for a
    /// privileged caller) one time in ten, to keep the short form fast.
    fn seed(&mut self) -> (u32, Vec<u32>) {
        let scanning = self.rng.chance(10);
        loop {
            let k = self.rng.below(self.seeds.len());
            if SCANNING.contains(&self.seeds[k].0) == scanning {
                return self.seeds[k].clone();
            }
        }
    }
}

impl Fuzzer {
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
                let (i, b) = hostile(rng, &self.long, self.own_pid, self.service_pid);
                (i, b, "hostile request")
            }
            // A seed as it is, under another method's code (wrong types).
            80..=87 => (method(rng), to_bytes(&seed), "wrong method"),
            // Random bytes, with the interface token or without.
            _ => {
                let mut w = if rng.chance(50) {
                    words(&encode(|_| {}))
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

/// A buffer this test holds, and what it counts for.
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
    gen_time: Duration,
    check_time: Duration,
}

fn vm_rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.replace('_', "");
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap(),
                None => v.parse().unwrap(),
            }
        }
        Err(_) => default,
    }
}

/// The heaps' totals (bufferCount, allocatedBytes) from a well-formed
/// getHeaps.
fn totals(a: &dmabufd::client::Allocator) -> (i64, i64) {
    let heaps = a.heaps().expect("a well-formed getHeaps is answered");
    heaps.iter().fold((0, 0), |(n, b), h| {
        (n + h.bufferCount as i64, b + h.allocatedBytes)
    })
}

/// Waits up to 10 s for the totals to be `want` (frees are noticed by the
/// service's next scan, every 250 ms here).
fn wait_for_totals(a: &dmabufd::client::Allocator, want: (i64, i64)) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = totals(a);
        if t == want || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fuzzed_transactions_leave_the_service_up_flat_and_its_totals_exact() {
    let count = env_u64("DMABUFD_FUZZ_COUNT", 50_000);
    let seed = env_u64("DMABUFD_FUZZ_SEED", DEFAULT_SEED);
    let mut svc = Service::start_logged(CONFIG);
    let service_pid = svc.pid();
    let mut a = svc.connect();
    let mut fz = Fuzzer {
        rng: Rng::new(seed),
        seeds: load_corpus()
            .into_iter()
            .map(|(i, b)| (i, words(&b)))
            .collect(),
        own_pid: std::process::id() as i32,
        service_pid,
        long: "n".repeat(4_096),
    };
    // What an fd object in a parcel carries: a memfd of ours.
    let spare: OwnedFd =
        nix::sys::memfd::memfd_create("fuzz-spare", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .unwrap();
    let spare = ParcelFileDescriptor::new(spare);
    let mut held: Vec<Held> = Vec::new();
    let mut stats = Stats::default();
    let mut baseline: Option<(usize, u64)> = None;
    let (mut max_fds, mut max_rss) = (0usize, 0u64);
    let started = Instant::now();
    let ctx = |i: u64| format!("seed {seed:#x}, transaction {i} (DMABUFD_FUZZ_SEED={seed:#x})");

    for i in 0..count {
        let g = Instant::now();
        let t = fz.next_txn();
        stats.gen_time += g.elapsed();
        *stats.by_kind.entry(t.what).or_default() += 1;
        let binder = a.service().as_binder();
        let remote = binder.as_remote().expect("a remote proxy");
        let mut data = remote.prepare_transact(false).unwrap();
        let w = words(&t.bytes);
        for (k, x) in w.iter().enumerate() {
            if t.fd_at == Some(k) {
                data.write(&spare).unwrap();
            }
            data.write_u32(*x).unwrap();
        }
        if t.fd_at.is_some_and(|k| k >= w.len()) {
            data.write(&spare).unwrap();
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
                    if t.code == ALLOCATE {
                        // A fuzzed allocation that was well-formed enough:
                        // the buffer is ours now, and counts.
                        let b: Buffer = reply.read().unwrap_or_else(|e| {
                            panic!("{}: allocate said ok, reply has no Buffer: {e:?}", ctx(i))
                        });
                        assert!(b.fd.is_some(), "{}: allocate reply without fd", ctx(i));
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
                    assert!(svc.is_running(), "{}: the service died", ctx(i));
                    stats.reconnects += 1;
                    a = svc.connect();
                }
            }
        }
        drop(data);

        if (i + 1) % 1_000 == 0 {
            let checking = Instant::now();
            assert!(svc.is_running(), "{}: the service died", ctx(i));
            // A well-formed allocation of our own, held like the others.
            let b = a
                .allocate("system", 4096 * (1 + (i / 1000) % 4), "well-formed")
                .unwrap_or_else(|e| panic!("{}: well-formed allocate refused: {e}", ctx(i)));
            stats.well_formed_allocations += 1;
            held.push(Held {
                size: b.size() as i64,
                _fd: Some(ParcelFileDescriptor::new(b.into_owned_fd())),
            });
            let want = (held.len() as i64, held.iter().map(|h| h.size).sum::<i64>());
            assert_eq!(
                totals(&a),
                want,
                "{}: the heaps' (bufferCount, allocatedBytes) are not what this test holds",
                ctx(i)
            );
            if (i + 1) % 10_000 == 0 {
                held.clear();
                let got = wait_for_totals(&a, (0, 0));
                assert_eq!(got, (0, 0), "{}: freed buffers still counted", ctx(i));
            }
            let (fds, rss) = (svc.fd_count(), vm_rss(service_pid));
            if i + 1 >= WARM_UP {
                baseline.get_or_insert((fds, rss));
                max_fds = max_fds.max(fds);
                max_rss = max_rss.max(rss);
            }
            stats.check_time += checking.elapsed();
        }
    }
    let elapsed = started.elapsed();
    held.clear();
    assert_eq!(
        wait_for_totals(&a, (0, 0)),
        (0, 0),
        "freed buffers still counted"
    );
    assert!(svc.is_running(), "the service died");
    let (base_fds, base_rss) = baseline.unwrap_or((svc.fd_count(), vm_rss(service_pid)));
    // Reply threads close their last buffer fds just after replying.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut fds = svc.fd_count();
    while fds > base_fds + FD_SLACK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = svc.fd_count();
    }
    let rss = vm_rss(service_pid);
    eprintln!(
        "fuzz: {count} transactions in {:.1} s ({:.0}/s), seed {seed:#x}\n\
         fuzz: service fds {base_fds} after warm-up -> {fds} at the end (max {max_fds}); \
         VmRSS {} KiB -> {} KiB (max {} KiB)\n\
         fuzz: ok {}, oneway {}, with fd {}, fuzzed allocations that succeeded {}, \
         well-formed allocations {}, reconnects {}\n\
         fuzz: by kind {:?}\nfuzz: (count, time) by code {:?}\nfuzz: generating {:?}, checking {:?}\nfuzz: service errors {:?}\nfuzz: transport errors {:?}",
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
        stats.gen_time,
        stats.check_time,
        stats.service_errors,
        stats.transport_errors,
    );
    // rsbinder turns a handler's panic into an error reply and logs it:
    // the process survives, but a panic is still a defect.
    let log = svc.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panic")).collect();
    assert!(panics.is_empty(), "the service panicked: {panics:#?}");
    assert!(
        fds <= base_fds + FD_SLACK,
        "service fds grew from {base_fds} to {fds}: {:?}",
        svc.fd_targets()
    );
    assert!(
        rss <= base_rss + RSS_SLACK,
        "service VmRSS grew from {} KiB to {} KiB",
        base_rss / 1024,
        rss / 1024
    );
}
