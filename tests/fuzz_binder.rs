//! Fuzzer over RPC binder (Unix socket, fd passing on) against a real
//! dmabufd process; the engine and its pass criteria are in
//! `tests/common/fuzz.rs` (the VM suite runs the same engine over kernel
//! binder). `DMABUFD_FUZZ_SEED` replays a failure's seed.
//!
//! `DMABUFD_FUZZ_COUNT` (default 50,000, the CI short form) sets the number
//! of transactions: the long form is
//! `DMABUFD_FUZZ_COUNT=1000000 cargo test --release --test fuzz_binder -- --nocapture`.
//! `DMABUFD_FUZZ_WRITE_CORPUS=1` rewrites the seed corpus from the encoder.

mod common;

use std::time::Duration;

use common::fuzz::{self, corpus_dir, corpus_seeds, Limits, Target, METHODS};
use common::Service;
use dmabufd::aidl::vendor::dmabuf::Buffer::Buffer;
use dmabufd::client::Allocator;
use rsbinder::{Parcel, Status, StatusCode, FIRST_CALL_TRANSACTION};

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

/// The fd count may end this far above its post-warm-up baseline: one
/// buffer fd in a reply the service has not finished closing, and one
/// transient (a journal compaction's file). A leak of one fd per 1,000
/// transactions would show as 45 on the short form.
const FD_SLACK: usize = 2;
/// VmRSS may grow this much after warm-up: allocator arenas and the
/// registry's map capacity settle within the first few thousand
/// transactions; a leak of even 200 bytes per transaction would be ~9 MiB
/// on the short form.
const RSS_SLACK: u64 = 8 << 20;
const WARM_UP: u64 = 5_000;
const DEFAULT_SEED: u64 = 0x00d3_ab0f_f022_0026;

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
        DumpChunk::DumpChunk, HeapInfo::HeapInfo, MemoryReport::MemoryReport,
        MemoryReportPage::MemoryReportPage, ProcessMemory::ProcessMemory,
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
    // allocateBatch answers with a Buffer[] when implemented; a refusal
    // parses as a status either way, so only its code is checked here.
    let page: MemoryReportPage = send(7, seed("07")).read().unwrap();
    assert!(page.next.snapshotId != 0);
    let chunk: DumpChunk = send(8, seed("08")).read().unwrap();
    assert_eq!(chunk.offset, 0);
    let mut data = remote.prepare_transact(true).unwrap();
    data.write(&0i32).unwrap();
    let r = remote.submit_transact(FIRST_CALL_TRANSACTION + METHODS.len() as u32, &data, 0);
    assert_eq!(r.err(), Some(StatusCode::UnknownTransaction));
}

/// The service process of the host fixture, over RPC.
struct HostTarget {
    svc: Service,
    a: Allocator,
}

impl Target for HostTarget {
    fn allocator(&self) -> &Allocator {
        &self.a
    }
    fn reconnect(&mut self) -> Result<(), String> {
        self.a = Allocator::connect_rpc(&self.svc.socket).map_err(|e| e.to_string())?;
        Ok(())
    }
    fn alive(&mut self) -> bool {
        self.svc.is_running()
    }
    fn service_pid(&self) -> i32 {
        self.svc.pid()
    }
    fn fd_count(&self) -> usize {
        self.svc.fd_count()
    }
    fn fd_targets(&self) -> Vec<String> {
        self.svc.fd_targets()
    }
    fn log(&self) -> String {
        self.svc.log()
    }
}

#[test]
fn fuzzed_transactions_leave_the_service_up_flat_and_its_totals_exact() {
    let count = env_u64("DMABUFD_FUZZ_COUNT", 50_000);
    let seed = env_u64("DMABUFD_FUZZ_SEED", DEFAULT_SEED);
    let svc = Service::start_logged(CONFIG);
    let a = svc.connect();
    let mut target = HostTarget { svc, a };
    let limits = Limits {
        warm_up: WARM_UP,
        fd_slack: FD_SLACK,
        rss_slack: RSS_SLACK,
        settle: Duration::from_secs(10),
    };
    let corpus = fuzz::load_corpus(&corpus_dir()).unwrap();
    match fuzz::run(&mut target, corpus, count, seed, &limits) {
        Ok(summary) => eprintln!("{summary}"),
        Err(e) => panic!("{e}\n(replay: DMABUFD_FUZZ_SEED={seed:#x})"),
    }
}
