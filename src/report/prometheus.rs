//! The Prometheus text exposition format (version 0.0.4) of the service's
//! figures: `# HELP` and `# TYPE` before each family, `dmabufd_` prefix,
//! bytes in `_bytes`, counters in `_total`, no timestamps (node_exporter's
//! textfile collector skips a file that has any). Per-process series are
//! capped at the largest `max_processes` by rss; the rest are summed, so the
//! number of series stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::accounting::{Accounting, ProcessFigures};
use crate::allocator::HeapSummary;
use crate::metrics::{Counters, REFUSAL_CODES};

/// The content type of what [`render`] draws.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Everything the exposition is drawn from.
pub struct Inputs<'a> {
    /// The heaps the service serves, with what it handed out and still lives.
    pub heaps: &'a [HeapSummary],
    /// Bytes pooled per heap; heaps without a pool are absent.
    pub pool_bytes: &'a BTreeMap<String, u64>,
    pub counters: &'a Counters,
    /// The latest accounting; None when the scan failed.
    pub accounting: Option<&'a Accounting>,
    /// How many processes get series of their own.
    pub max_processes: usize,
}

/// A label value as the exposition carries it. App-chosen strings (process
/// names) first get the project's text escape (`report::escape`: control
/// characters as `\n`, `\xNN`, ..., so no raw control character reaches a
/// terminal or a parser), then the format's own: backslash, double quote,
/// newline.
pub fn escape_label(v: &str) -> String {
    let v = crate::report::escape::escape(v);
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text is ours (no backslash or newline), written as is.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Draws the exposition.
pub fn render(i: &Inputs) -> String {
    let mut o = Out {
        text: String::new(),
    };
    heaps(&mut o, i);
    counters(&mut o, i.counters, i.heaps);
    if let Some(a) = i.accounting {
        accounting(&mut o, a);
        processes(&mut o, a, i.max_processes);
    }
    o.text
}

fn heaps(o: &mut Out, i: &Inputs) {
    o.family(
        "dmabufd_heap_allocated_bytes",
        "gauge",
        "Bytes of live buffers the service allocated from the heap.",
    );
    for h in i.heaps {
        o.sample(
            "dmabufd_heap_allocated_bytes",
            &[("heap", &h.name)],
            h.allocated_bytes,
        );
    }
    o.family(
        "dmabufd_heap_buffers",
        "gauge",
        "Live buffers the service allocated from the heap.",
    );
    for h in i.heaps {
        o.sample("dmabufd_heap_buffers", &[("heap", &h.name)], h.buffer_count);
    }
    o.family(
        "dmabufd_heap_max_allocation_bytes",
        "gauge",
        "Largest single allocation the heap accepts.",
    );
    for h in i.heaps {
        o.sample(
            "dmabufd_heap_max_allocation_bytes",
            &[("heap", &h.name)],
            h.max_size,
        );
    }
    if !i.pool_bytes.is_empty() {
        o.family(
            "dmabufd_heap_pool_bytes",
            "gauge",
            "Bytes the heap keeps pooled for reuse (allocated from the kernel, handed to nobody).",
        );
        for (heap, bytes) in i.pool_bytes {
            o.sample("dmabufd_heap_pool_bytes", &[("heap", heap)], bytes);
        }
    }
}

fn counters(o: &mut Out, c: &Counters, heaps: &[HeapSummary]) {
    // Every served heap is shown, zero included; a heap that served before
    // and is gone now still shows its counts.
    let mut by_heap = c.allocations.clone();
    for h in heaps {
        by_heap.entry(h.name.clone()).or_default();
    }
    o.family(
        "dmabufd_allocations_total",
        "counter",
        "Buffers allocated since the service started, by the heap that served them.",
    );
    for (heap, n) in &by_heap {
        o.sample(
            "dmabufd_allocations_total",
            &[("heap", heap)],
            n.allocations,
        );
    }
    o.family(
        "dmabufd_allocated_bytes_total",
        "counter",
        "Bytes allocated since the service started, by the heap that served them.",
    );
    for (heap, n) in &by_heap {
        o.sample("dmabufd_allocated_bytes_total", &[("heap", heap)], n.bytes);
    }
    o.family(
        "dmabufd_allocation_refusals_total",
        "counter",
        "Allocations refused since the service started, by error code.",
    );
    for code in REFUSAL_CODES {
        let n = c.refusals.get(code).copied().unwrap_or(0);
        o.sample("dmabufd_allocation_refusals_total", &[("code", code)], n);
    }
    o.family(
        "dmabufd_scans_total",
        "counter",
        "Scans of the system's buffers and holders since the service started, by result.",
    );
    o.sample("dmabufd_scans_total", &[("result", "ok")], c.scans_ok);
    o.sample(
        "dmabufd_scans_total",
        &[("result", "failed")],
        c.scans_failed,
    );
    if let Some(d) = c.last_scan {
        o.family(
            "dmabufd_scan_duration_seconds",
            "gauge",
            "How long the latest successful scan took.",
        );
        o.sample("dmabufd_scan_duration_seconds", &[], d.as_secs_f64());
    }
    o.family(
        "dmabufd_scan_source_info",
        "gauge",
        "The scan source in use (bpf: the kernel's BPF iterators; procfs: the /proc walk).",
    );
    o.sample("dmabufd_scan_source_info", &[("source", &c.scan_source)], 1);
}

fn accounting(o: &mut Out, a: &Accounting) {
    o.family(
        "dmabufd_buffers",
        "gauge",
        "Live DMA-BUF buffers seen by the latest scan.",
    );
    o.sample("dmabufd_buffers", &[], a.total.count);
    o.family(
        "dmabufd_buffers_bytes",
        "gauge",
        "Bytes of the live DMA-BUF buffers seen by the latest scan.",
    );
    o.sample("dmabufd_buffers_bytes", &[], a.total.bytes);
    o.family(
        "dmabufd_unreferenced_bytes",
        "gauge",
        "Bytes of live buffers no process references (held by the kernel).",
    );
    o.sample("dmabufd_unreferenced_bytes", &[], a.unreferenced_bytes);
    o.family(
        "dmabufd_exporter_bytes",
        "gauge",
        "Bytes of live buffers by exporter (the kernel's exp_name).",
    );
    for (exp, t) in &a.exporter_totals {
        o.sample("dmabufd_exporter_bytes", &[("exporter", exp)], t.bytes);
    }
    o.family(
        "dmabufd_exporter_buffers",
        "gauge",
        "Live buffers by exporter (the kernel's exp_name).",
    );
    for (exp, t) in &a.exporter_totals {
        o.sample("dmabufd_exporter_buffers", &[("exporter", exp)], t.count);
    }
    let uid = |u: &Option<u32>| u.map_or_else(|| "unknown".to_string(), |u| u.to_string());
    o.family(
        "dmabufd_owner_bytes",
        "gauge",
        "Bytes of live buffers by owner uid (who allocated; unknown: not allocated through the service).",
    );
    for (u, t) in &a.owner_totals {
        o.sample("dmabufd_owner_bytes", &[("uid", &uid(u))], t.bytes);
    }
    o.family(
        "dmabufd_owner_buffers",
        "gauge",
        "Live buffers by owner uid (who allocated; unknown: not allocated through the service).",
    );
    for (u, t) in &a.owner_totals {
        o.sample("dmabufd_owner_buffers", &[("uid", &uid(u))], t.count);
    }
}

fn processes(o: &mut Out, a: &Accounting, max: usize) {
    let mut holders: Vec<&ProcessFigures> = a
        .processes
        .iter()
        .filter(|p| p.readable() && p.rss > 0)
        .collect();
    holders.sort_by(|x, y| y.rss.cmp(&x.rss).then(x.pid.cmp(&y.pid)));
    let rest = holders.split_off(max.min(holders.len()));
    let labels = |p: &ProcessFigures| (p.pid.to_string(), p.uid.to_string(), p.name.clone());
    o.family(
        "dmabufd_process_rss_bytes",
        "gauge",
        "DMA-BUF rss of a process (every buffer it holds by fd or mapping), the largest processes only.",
    );
    for p in &holders {
        let (pid, uid, comm) = labels(p);
        o.sample(
            "dmabufd_process_rss_bytes",
            &[("pid", &pid), ("uid", &uid), ("comm", &comm)],
            p.rss,
        );
    }
    o.family(
        "dmabufd_process_pss_bytes",
        "gauge",
        "DMA-BUF pss of a process (each buffer divided among its holders), the largest processes only.",
    );
    for p in &holders {
        let (pid, uid, comm) = labels(p);
        o.sample(
            "dmabufd_process_pss_bytes",
            &[("pid", &pid), ("uid", &uid), ("comm", &comm)],
            p.pss,
        );
    }
    o.family(
        "dmabufd_other_processes",
        "gauge",
        "Processes holding buffers that have no series of their own (beyond the configured cap).",
    );
    o.sample("dmabufd_other_processes", &[], rest.len());
    o.family(
        "dmabufd_other_processes_rss_bytes",
        "gauge",
        "Summed DMA-BUF rss of the processes without series of their own.",
    );
    o.sample(
        "dmabufd_other_processes_rss_bytes",
        &[],
        rest.iter().map(|p| p.rss).sum::<u64>(),
    );
    o.family(
        "dmabufd_other_processes_pss_bytes",
        "gauge",
        "Summed DMA-BUF pss of the processes without series of their own.",
    );
    o.sample(
        "dmabufd_other_processes_pss_bytes",
        &[],
        rest.iter().map(|p| p.pss).sum::<u64>(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::HeapKind;
    use crate::metrics::Metrics;
    use crate::report::sample::{accounting, hostile, MB};

    fn heaps() -> Vec<HeapSummary> {
        vec![HeapSummary {
            name: "system".into(),
            kind: HeapKind::DmaHeap,
            max_size: 256 * MB,
            allocated_bytes: MB,
            buffer_count: 1,
            aliases: vec!["camera".into()],
        }]
    }

    fn draw(a: Option<&Accounting>, max: usize, pools: &BTreeMap<String, u64>) -> String {
        let m = Metrics::new("procfs");
        m.allocated("system", MB);
        m.refused(crate::error::Kind::QuotaExceeded);
        m.scanned(Some(std::time::Duration::from_millis(250)));
        render(&Inputs {
            heaps: &heaps(),
            pool_bytes: pools,
            counters: &m.counters(),
            accounting: a,
            max_processes: max,
        })
    }

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn families_have_help_and_type_and_follow_the_naming_conventions() {
        let a = accounting();
        let text = draw(Some(&a), 10, &BTreeMap::new());
        assert!(text.ends_with('\n'));
        let mut typed = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for (n, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(lines[n - 1].starts_with(&format!("# HELP {name} ")), "{l}");
                assert!(name.starts_with("dmabufd_"), "{name}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
                typed.insert(name.to_string(), kind.to_string());
            }
        }
        for l in sample_lines(&text) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(typed.contains_key(name), "sample before its TYPE: {l}");
        }
        assert!(!text.contains("pool"), "no pool series without pools");
    }

    #[test]
    fn figures_come_from_the_accounting_and_the_counters() {
        let a = accounting();
        let text = draw(Some(&a), 10, &BTreeMap::new());
        let s = sample_lines(&text);
        assert!(s.contains(&"dmabufd_heap_allocated_bytes{heap=\"system\"} 1048576"));
        assert!(s.contains(&"dmabufd_allocations_total{heap=\"system\"} 1"));
        assert!(s.contains(&"dmabufd_allocation_refusals_total{code=\"QUOTA_EXCEEDED\"} 1"));
        assert!(s.contains(&"dmabufd_allocation_refusals_total{code=\"NO_MEMORY\"} 0"));
        assert!(s.contains(&"dmabufd_scan_duration_seconds 0.25"));
        assert!(s.contains(&"dmabufd_scan_source_info{source=\"procfs\"} 1"));
        let sys = &a.exporter_totals["system"];
        assert!(s.contains(
            &format!(
                "dmabufd_exporter_bytes{{exporter=\"system\"}} {}",
                sys.bytes
            )
            .as_str()
        ));
        assert!(s.contains(&format!("dmabufd_owner_bytes{{uid=\"10001\"}} {MB}").as_str()));
        assert!(s.contains(&"dmabufd_owner_bytes{uid=\"unknown\"} 8192"));
        let viewer = a.process(200).unwrap();
        assert!(s.contains(
            &format!(
                "dmabufd_process_rss_bytes{{pid=\"200\",uid=\"10002\",comm=\"viewer\"}} {}",
                viewer.rss
            )
            .as_str()
        ));
        assert!(s.contains(&"dmabufd_other_processes 0"));
    }

    #[test]
    fn process_series_are_capped_at_the_largest_by_rss() {
        let a = accounting();
        // Two holders: 200 (1 MiB + 8 KiB) and 100 (1 MiB).
        let text = draw(Some(&a), 1, &BTreeMap::new());
        let s = sample_lines(&text);
        let rss: Vec<_> = s
            .iter()
            .filter(|l| l.starts_with("dmabufd_process_rss_bytes"))
            .collect();
        assert_eq!(rss.len(), 1, "{rss:?}");
        assert!(rss[0].contains("pid=\"200\""), "{rss:?}");
        assert!(s.contains(&"dmabufd_other_processes 1"));
        assert!(s.contains(&format!("dmabufd_other_processes_rss_bytes {MB}").as_str()));
        let none = draw(Some(&a), 0, &BTreeMap::new());
        assert!(!none.contains("dmabufd_process_rss_bytes{"));
        assert!(none.contains("dmabufd_other_processes 2\n"));
    }

    #[test]
    fn label_values_are_escaped_so_a_name_cannot_forge_a_sample() {
        // `"` -> `\"`; `\` -> `\\` (text escape) -> `\\\\`; newline -> `\n` -> `\\n`.
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\\\\\c\\\\nd");
        let a = hostile();
        let text = draw(Some(&a), 10, &BTreeMap::new());
        // Same number of lines as with plain names: nothing was forged.
        let plain = draw(Some(&accounting()), 10, &BTreeMap::new());
        assert_eq!(text.lines().count(), plain.lines().count());
        // "v\r\\\x1b[2J" -> text escape `v\r\\\x1b[2J` -> every backslash doubled.
        assert!(text.contains(r#"comm="v\\r\\\\\\x1b[2J""#), "{text}");
        assert!(!text.contains('\r') && !text.contains('\x1b'));
    }

    #[test]
    fn pools_and_a_failed_scan() {
        let pools = BTreeMap::from([("system".to_string(), 3 * MB)]);
        let text = draw(None, 10, &pools);
        assert!(text.contains(&format!(
            "dmabufd_heap_pool_bytes{{heap=\"system\"}} {}",
            3 * MB
        )));
        // Without an accounting, the scan series are left out.
        assert!(!text.contains("dmabufd_buffers"));
        assert!(!text.contains("dmabufd_process_rss_bytes"));
        assert!(text.contains("dmabufd_allocations_total{heap=\"system\"} 1"));
    }
}
