//! The binder fuzzer over kernel binder: the engine of the host test
//! (`tests/common/fuzz.rs`) against the real service in the VM, as root
//! (privileged, so the report methods scan). Short form here (10,000
//! transactions); the long form is `tests/vm/run.sh --only=fuzz
//! --fuzz-count=100000`.

use std::time::Duration;

use dmabufd::client::Allocator;

use crate::fuzz::{self, Limits, Target};
use crate::harness::{Case, Outcome};
use crate::proc_scan::service_pid;
use crate::support::connect;

/// The CI short form; `DMABUFD_FUZZ_COUNT` (set by run.sh --fuzz-count)
/// overrides it.
const SHORT_FORM: u64 = 10_000;
const SEED: u64 = 0x00d3_ab0f_f022_0026;

pub fn cases() -> Vec<Case> {
    vec![Case {
        name: "fuzzed_kernel_binder_transactions_leave_the_service_up_flat_and_exact",
        run: fuzzed_kernel_binder_transactions_leave_the_service_up_flat_and_exact,
    }]
}

struct KernelTarget {
    a: Allocator,
    pid: i32,
}

impl Target for KernelTarget {
    fn allocator(&self) -> &Allocator {
        &self.a
    }
    fn reconnect(&mut self) -> Result<(), String> {
        self.a = connect()?;
        Ok(())
    }
    fn alive(&mut self) -> bool {
        service_pid() == Ok(self.pid)
    }
    fn service_pid(&self) -> i32 {
        self.pid
    }
    fn fd_count(&self) -> usize {
        self.fd_targets()
            .iter()
            .filter(|l| !l.starts_with("/proc/"))
            .count()
    }
    fn fd_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|l| l.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    fn log(&self) -> String {
        std::fs::read_to_string("/run/dmabufd.log").unwrap_or_default()
    }
}

fn fuzzed_kernel_binder_transactions_leave_the_service_up_flat_and_exact() -> Outcome {
    let count = std::env::var("DMABUFD_FUZZ_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_FORM);
    let mut target = KernelTarget {
        a: connect()?,
        pid: service_pid()?,
    };
    // The corpus files are this encoding (the host test checks that), so
    // the guest needs no copy of fuzz/corpus.
    let corpus = fuzz::corpus_seeds()
        .into_iter()
        .map(|(name, bytes)| (name[..2].parse().expect("NN- prefix"), bytes))
        .collect();
    let limits = Limits {
        warm_up: (count / 10).clamp(1_000, 5_000),
        fd_slack: 2,
        // The service's arenas settle as on the host.
        rss_slack: 8 << 20,
        // Frees leave the totals at the next scan (1 s in the guest's
        // config); a few intervals, for a busy machine.
        settle: Duration::from_secs(15),
    };
    let summary = fuzz::run(&mut target, corpus, count, SEED, &limits)?;
    eprintln!("{summary}");
    Ok(())
}
