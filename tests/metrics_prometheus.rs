//! `dmabufctl metrics` and `dmabufd --metrics-textfile` against a real
//! dmabufd, parsed by Prometheus's own Python client parser
//! (`prometheus_client.parser`, Debian `python3-prometheus-client`, which
//! tests/run-all.sh installs), and compared with what the service reports
//! over AIDL.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Service;
use serde_json::Value;

const CONFIG: &str = "[heaps]\ndefault_max_size = \"16M\"\n";

/// Parses an exposition with prometheus_client; returns its families as
/// JSON (`name`, `type`, `help`, `samples`: `name`, `labels`, `value`,
/// `timestamp`), or the parser's error.
fn parse(text: &str) -> Result<Vec<Value>, String> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value,
                             "timestamp": s.timestamp} for s in f.samples]})
print(json.dumps(out))
"#;
    // The system interpreter: apt installs the parser for it, not for
    // any other python3 earlier on PATH.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/run-all.sh installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "the Prometheus parser is missing: apt-get install python3-prometheus-client \
         (tests/run-all.sh installs it)"
    );
    if !out.status.success() {
        return Err(err.to_string());
    }
    Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap())
}

/// Samples by (sample name, sorted labels).
struct Samples(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Samples {
    fn of(families: &[Value]) -> Samples {
        let mut m = BTreeMap::new();
        for f in families {
            for s in f["samples"].as_array().unwrap() {
                let labels: Vec<(String, String)> = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let key = (s["name"].as_str().unwrap().to_string(), labels);
                assert!(
                    m.insert(key.clone(), s["value"].as_f64().unwrap())
                        .is_none(),
                    "duplicate sample {key:?}"
                );
            }
        }
        Samples(m)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.0.get(&(name.to_string(), l)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.0.keys()))
    }

    fn named(&self, name: &str) -> Vec<(&Vec<(String, String)>, f64)> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
    }
}

fn family_type<'a>(families: &'a [Value], name: &str) -> &'a str {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name}"))["type"]
        .as_str()
        .unwrap()
}

fn metrics(svc: &Service) -> String {
    let out = svc.ctl().arg("metrics").output().unwrap();
    assert!(
        out.status.success(),
        "dmabufctl metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_parser_is_a_real_parser() {
    // Malformed input is refused, so a pass below means the text parsed.
    assert!(parse("dmabufd_x{a=\"1\" 2\n").is_err());
    assert!(parse("# TYPE dmabufd_x gauge\ndmabufd_x{a=\"q\\\"\"} 2\n").is_ok());
}

/// The tests compare figures of separate scans: one at a time, so no
/// other test's buffers change what a scan of this process sees.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn me() -> i32 {
    std::process::id() as i32
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_the_service_figures() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let svc = Service::start_with_args(CONFIG, &["--metrics-textfile", "{dir}/dmabufd.prom"]);
    let textfile = svc.dir.join("dmabufd.prom");
    // Written once at start, right after the socket starts accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !textfile.exists() {
        assert!(
            Instant::now() < deadline,
            "the textfile was not written at start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = svc.connect();
    let b1 = a.allocate("system", 64 << 10, "m1").unwrap();
    let b2 = a.allocate("system", 1 << 20, "m2").unwrap();
    assert!(a.allocate("no-such-heap", 4096, "x").is_err());
    assert!(a.allocate("system", 1 << 30, "too-big").is_err());

    let text = metrics(&svc);
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let s = Samples::of(&families);
    for f in &families {
        assert!(f["help"].as_str().is_some_and(|h| !h.is_empty()), "{f}");
        assert!(f["name"].as_str().unwrap().starts_with("dmabufd_"), "{f}");
    }
    // The parser names a counter family without `_total`.
    assert_eq!(family_type(&families, "dmabufd_allocations"), "counter");
    assert_eq!(
        family_type(&families, "dmabufd_allocation_refusals"),
        "counter"
    );
    assert_eq!(family_type(&families, "dmabufd_process_rss_bytes"), "gauge");

    // Counters kept by the service.
    let system = [("heap", "system")];
    assert_eq!(s.value("dmabufd_allocations_total", &system), 2.0);
    assert_eq!(
        s.value("dmabufd_allocated_bytes_total", &system),
        ((64 << 10) + (1 << 20)) as f64
    );
    let refused = |code| s.value("dmabufd_allocation_refusals_total", &[("code", code)]);
    assert_eq!(refused("UNKNOWN_HEAP"), 1.0);
    assert_eq!(refused("INVALID_SIZE"), 1.0);
    assert_eq!(refused("QUOTA_EXCEEDED"), 0.0);
    assert_eq!(s.value("dmabufd_scans_total", &[("result", "failed")]), 0.0);
    assert!(s.value("dmabufd_scans_total", &[("result", "ok")]) >= 1.0);
    assert!(s.value("dmabufd_scan_duration_seconds", &[]) > 0.0);
    let source = s.named("dmabufd_scan_source_info");
    assert_eq!(source.len(), 1, "{source:?}");
    let said = svc.ctl().args(["dump", "--source"]).output().unwrap();
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.starts_with(&format!("scan source: {}", source[0].0[0].1)),
        "{said} vs {source:?}"
    );

    // The same figures the service serves over AIDL.
    for h in a.heaps().unwrap() {
        let heap = [("heap", h.name.as_str())];
        assert_eq!(
            s.value("dmabufd_heap_allocated_bytes", &heap),
            h.allocatedBytes as f64
        );
        assert_eq!(s.value("dmabufd_heap_buffers", &heap), h.bufferCount as f64);
        assert_eq!(
            s.value("dmabufd_heap_max_allocation_bytes", &heap),
            h.maxAllocationSize as f64
        );
    }
    assert_eq!(
        s.value("dmabufd_heap_allocated_bytes", &system),
        ((64 << 10) + (1 << 20)) as f64
    );
    let pm = a.process_memory(me()).unwrap();
    let pid = me().to_string();
    let uid = nix::unistd::getuid().as_raw().to_string();
    let mine = [
        ("pid", pid.as_str()),
        ("uid", uid.as_str()),
        ("comm", pm.name.as_str()),
    ];
    assert_eq!(
        s.value("dmabufd_process_rss_bytes", &mine),
        pm.rssBytes as f64
    );
    assert_eq!(
        s.value("dmabufd_process_pss_bytes", &mine),
        pm.pssBytes as f64
    );
    assert_eq!(pm.rssBytes, (64 << 10) + (1 << 20));
    let r = a.memory_report().unwrap();
    assert_eq!(s.value("dmabufd_buffers", &[]), r.totalCount as f64);
    assert_eq!(s.value("dmabufd_buffers_bytes", &[]), r.totalBytes as f64);
    for t in &r.ownerTotals {
        let uid = if t.uid < 0 {
            "unknown".to_string()
        } else {
            t.uid.to_string()
        };
        let owner = [("uid", uid.as_str())];
        assert_eq!(s.value("dmabufd_owner_bytes", &owner), t.bytes as f64);
        assert_eq!(s.value("dmabufd_owner_buffers", &owner), t.count as f64);
    }
    for t in &r.heapTotals {
        let exp = [("exporter", t.exporter.as_str())];
        assert_eq!(s.value("dmabufd_exporter_bytes", &exp), t.bytes as f64);
    }

    // The textfile: rewritten after each scan (the one above included),
    // no timestamps, nothing left beside it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let file = loop {
        let t = std::fs::read_to_string(&textfile).unwrap();
        if t.contains("dmabufd_allocations_total{heap=\"system\"} 2\n") {
            break t;
        }
        assert!(Instant::now() < deadline, "textfile never updated:\n{t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let in_file = parse(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
    for f in &in_file {
        for sample in f["samples"].as_array().unwrap() {
            assert!(sample["timestamp"].is_null(), "{sample}");
        }
    }
    let fs = Samples::of(&in_file);
    assert_eq!(
        fs.value("dmabufd_heap_allocated_bytes", &system),
        ((64 << 10) + (1 << 20)) as f64
    );
    let beside: Vec<String> = std::fs::read_dir(&svc.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("prom"))
        .collect();
    assert_eq!(beside, vec!["dmabufd.prom".to_string()]);

    // Freed: the gauges drop (once a scan has seen the buffers gone), the
    // counters stay.
    drop((b1, b2));
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = Samples::of(&parse(&metrics(&svc)).unwrap());
        if s.value("dmabufd_heap_allocated_bytes", &system) == 0.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "heap bytes never dropped to 0 after the buffers were freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s.value("dmabufd_allocations_total", &system), 2.0);
    assert_eq!(s.get("dmabufd_process_rss_bytes", &mine), None);
}

#[test]
fn per_process_series_are_capped_by_config() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let svc = Service::start(&format!("{CONFIG}[service]\nmetrics_max_processes = 0\n"));
    let a = svc.connect();
    let _b = a.allocate("system", 64 << 10, "capped").unwrap();
    let s = Samples::of(&parse(&metrics(&svc)).unwrap());
    assert!(s.named("dmabufd_process_rss_bytes").is_empty());
    assert!(s.named("dmabufd_process_pss_bytes").is_empty());
    let pm = a.process_memory(me()).unwrap();
    assert!(s.value("dmabufd_other_processes", &[]) >= 1.0);
    assert!(s.value("dmabufd_other_processes_rss_bytes", &[]) >= pm.rssBytes as f64);
    assert!(pm.rssBytes >= 64 << 10);
    // A bad cap is a start-up error naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_dmabufd"))
        .arg("--config")
        .arg({
            let p = svc.dir.join("bad.toml");
            std::fs::write(&p, "[service]\nmetrics_max_processes = 100000\n").unwrap();
            p
        })
        .arg("--rpc")
        .arg(svc.dir.join("bad.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service.metrics_max_processes"), "{err}");
}
