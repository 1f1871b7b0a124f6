//! Perfetto/atrace counter tracks: while tracing is on (tracefs
//! `tracing_on` reads 1), each scan writes the per-process DMA-BUF figures
//! that changed as atrace counter events to `trace_marker`
//! (`C|<pid>|mem.dmabuf.rss|<bytes>`, and `mem.dmabuf.pss`), with the
//! client's pid so the counter lands on the client's process track; each
//! allocation and each free the service learns of is an instant event
//! (`I|<service pid>|dmabuf.alloc heap=... size=... ...`) on the service's
//! own track. Perfetto records these as `ftrace/print` events (atrace
//! userspace markers) and builds the tracks when importing.
//!
//! Cost when tracing is off: [`Tracer::after_scan`] reads `tracing_on`
//! once per scan; the allocation path reads only the flag that read left
//! (an atomic). `trace_marker` is opened the first time something is
//! written, never while tracing stays off. So an allocation made less
//! than one scan interval after tracing was turned on may go unrecorded;
//! its counter still shows at the next scan.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::accounting::Accounting;
use crate::registry::BufferRecord;

/// Where tracefs is found, in order (the second is debugfs's automount).
pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// The counter names on each client's process track.
pub const RSS_COUNTER: &str = "mem.dmabuf.rss";
pub const PSS_COUNTER: &str = "mem.dmabuf.pss";
/// The kernel refuses (truncates) longer trace_marker writes.
pub const MAX_MARKER_BYTES: usize = 1024;

/// `C|pid|name|value`: an atrace counter on `pid`'s process track.
pub fn counter_line(pid: i32, name: &str, value: u64) -> String {
    format!("C|{pid}|{}|{value}", field(name))
}

/// `I|pid|text`: an atrace instant event of process `pid`.
pub fn instant_line(pid: i32, text: &str) -> String {
    let mut line = format!("I|{pid}|{}", field(text));
    if line.len() > MAX_MARKER_BYTES - 1 {
        let mut cut = MAX_MARKER_BYTES - 1;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// A field of an atrace line: `|` separates fields and a newline ends the
/// event, so both (and other control characters) become spaces.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .collect()
}

/// The text of an allocation or free event.
pub fn buffer_event(what: &str, heap: &str, size: u64, inode: u64, uid: u32, pid: i32) -> String {
    format!("dmabuf.{what} heap={heap} size={size} ino={inode} owner=uid {uid} pid {pid}")
}

#[derive(Default)]
struct State {
    /// The tracefs directory whose `tracing_on` was read last.
    root: Option<PathBuf>,
    /// `trace_marker`, opened on the first write.
    marker: Option<File>,
    /// Whether opening it failed (said once in the log, retried each scan).
    open_failed_logged: bool,
    /// The (rss, pss) last written per pid.
    written: HashMap<i32, (u64, u64)>,
}

/// Writes the counter and instant events (see the module doc).
pub struct Tracer {
    roots: Vec<PathBuf>,
    on: AtomicBool,
    state: Mutex<State>,
    service_pid: i32,
}

impl Tracer {
    /// The machine's tracefs.
    pub fn system() -> Tracer {
        Tracer::with_roots(TRACEFS_ROOTS.iter().map(PathBuf::from).collect())
    }

    /// A tracer over other tracefs directories (tests: a temp directory
    /// with `tracing_on` and `trace_marker` files).
    pub fn with_roots(roots: Vec<PathBuf>) -> Tracer {
        Tracer {
            roots,
            on: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            service_pid: std::process::id() as i32,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether tracing was on at the last scan (no I/O).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Reads `tracing_on` of the first tracefs that has one.
    fn read_tracing_on(&self) -> Option<(PathBuf, bool)> {
        self.roots.iter().find_map(|root| {
            let text = std::fs::read_to_string(root.join("tracing_on")).ok()?;
            Some((root.clone(), text.trim() == "1"))
        })
    }

    /// Once per scan: checks `tracing_on` and, while it is on, writes the
    /// counters of every process whose figures changed since they were
    /// last written (all non-zero ones after tracing was turned on) and an
    /// instant per buffer freed since the last scan.
    pub fn after_scan(&self, acc: &Accounting, freed: &[BufferRecord]) {
        let found = self.read_tracing_on();
        let on = matches!(found, Some((_, true)));
        self.on.store(on, Ordering::Relaxed);
        let mut st = self.lock();
        if !on {
            // Everything is written again when tracing comes back on; the
            // marker is closed (tracefs may be unmounted meanwhile).
            st.written.clear();
            st.marker = None;
            return;
        }
        let root = found.map(|(r, _)| r);
        if st.root != root {
            st.marker = None;
            st.root = root;
        }
        let mut lines = Vec::new();
        for r in freed {
            lines.push(instant_line(
                self.service_pid,
                &buffer_event("free", &r.heap, r.size, r.inode, r.owner_uid, r.owner_pid),
            ));
        }
        let mut seen = HashMap::with_capacity(st.written.len());
        for p in acc.processes.iter().filter(|p| p.readable()) {
            let now = (p.rss, p.pss);
            let before = st.written.get(&p.pid).copied().unwrap_or((0, 0));
            if now != before {
                lines.push(counter_line(p.pid, RSS_COUNTER, p.rss));
                lines.push(counter_line(p.pid, PSS_COUNTER, p.pss));
            }
            if now != (0, 0) || st.written.contains_key(&p.pid) {
                seen.insert(p.pid, now);
            }
        }
        // Processes no longer listed have exited: their tracks end there.
        st.written = seen;
        self.write_lines(&mut st, &lines);
    }

    /// An allocation, written only when the last scan found tracing on.
    pub fn allocated(&self, heap: &str, size: u64, inode: u64, uid: u32, pid: i32) {
        if !self.is_on() {
            return;
        }
        let line = instant_line(
            self.service_pid,
            &buffer_event("alloc", heap, size, inode, uid, pid),
        );
        let mut st = self.lock();
        self.write_lines(&mut st, &[line]);
    }

    /// Frees found outside a scan (quota reclaim), when tracing was on.
    pub fn freed(&self, freed: &[BufferRecord]) {
        if !self.is_on() || freed.is_empty() {
            return;
        }
        let lines: Vec<String> = freed
            .iter()
            .map(|r| {
                instant_line(
                    self.service_pid,
                    &buffer_event("free", &r.heap, r.size, r.inode, r.owner_uid, r.owner_pid),
                )
            })
            .collect();
        let mut st = self.lock();
        self.write_lines(&mut st, &lines);
    }

    /// One write(2) per event, as atrace does: each is one ftrace print
    /// event. Opens the marker when first needed; a failed write closes it
    /// so the next event reopens it.
    fn write_lines(&self, st: &mut State, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        if st.marker.is_none() {
            let Some(root) = st.root.clone().or_else(|| self.roots.first().cloned()) else {
                return;
            };
            match open_marker(&root) {
                Ok(f) => {
                    st.marker = Some(f);
                    st.open_failed_logged = false;
                }
                Err(e) => {
                    if !st.open_failed_logged {
                        log::warn!(
                            "tracing is on but {}/trace_marker cannot be opened for writing ({e}); \
                             no DMA-BUF counters are traced",
                            root.display()
                        );
                        st.open_failed_logged = true;
                    }
                    return;
                }
            }
        }
        let Some(marker) = st.marker.as_mut() else {
            return;
        };
        for line in lines {
            if let Err(e) = marker.write(line.as_bytes()) {
                log::debug!("trace_marker write failed: {e}");
                st.marker = None;
                return;
            }
        }
    }
}

fn open_marker(root: &Path) -> std::io::Result<File> {
    // O_APPEND changes nothing on tracefs; a plain file standing in for
    // it (tests) keeps every event.
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("trace_marker"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::HwmTracker;
    use crate::heap::HeapKind;
    use crate::procfs::{BufferUse, ProcessScan};
    use crate::scan::{BufferKey, LiveBuffer};
    use std::time::{Instant, SystemTime};

    /// A directory standing in for tracefs: `tracing_on` and a
    /// `trace_marker` that is a plain file (each write appends).
    struct FakeTracefs(PathBuf);

    impl FakeTracefs {
        fn new(name: &str) -> FakeTracefs {
            let dir =
                std::env::temp_dir().join(format!("dmabufd-tracefs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // tracefs has the file; opening never creates it.
            std::fs::write(dir.join("trace_marker"), "").unwrap();
            FakeTracefs(dir)
        }
        fn set_on(&self, on: bool) {
            std::fs::write(self.0.join("tracing_on"), if on { "1\n" } else { "0\n" }).unwrap();
        }
        /// The events written so far. The writes carry no newline (the
        /// kernel adds one per write), so the file is split at each event's
        /// phase prefix.
        fn events(&self) -> Vec<String> {
            let text = std::fs::read_to_string(self.0.join("trace_marker")).unwrap_or_default();
            split_events(&text)
        }
        fn tracer(&self) -> Tracer {
            Tracer::with_roots(vec![self.0.clone()])
        }
    }

    impl Drop for FakeTracefs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Splits concatenated writes at each `C|` or `I|` that starts an event.
    fn split_events(text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = ["C|", "I|"]
                .iter()
                .filter_map(|p| rest[1..].find(p).map(|i| i + 1))
                .min()
                .unwrap_or(rest.len());
            out.push(rest[..next].to_string());
            rest = &rest[next..];
        }
        out
    }

    fn scan(held: &[(i32, &[(u64, u64)])]) -> Accounting {
        let processes: Vec<ProcessScan> = held
            .iter()
            .map(|(pid, bufs)| ProcessScan {
                pid: *pid,
                uid: 10000,
                comm: format!("p{pid}"),
                result: Ok(bufs
                    .iter()
                    .map(|(inode, size)| BufferUse {
                        key: BufferKey::dmabuf(*inode),
                        size: Some(*size),
                        map_extent: 0,
                        exporter: Some("system".into()),
                        name: String::new(),
                        fd_refs: 1,
                        map_refs: 0,
                    })
                    .collect()),
            })
            .collect();
        let mut live: Vec<LiveBuffer> = Vec::new();
        for (_, bufs) in held {
            for (inode, size) in bufs.iter() {
                if !live.iter().any(|l| l.key.inode == *inode) {
                    live.push(LiveBuffer {
                        key: BufferKey::dmabuf(*inode),
                        size: *size,
                        exporter: "system".into(),
                        name: String::new(),
                    });
                }
            }
        }
        crate::accounting::build(
            &processes,
            Some(&live),
            &[],
            &mut HwmTracker::new(),
            Instant::now(),
        )
    }

    fn record(inode: u64) -> BufferRecord {
        BufferRecord {
            inode,
            heap: "system".into(),
            kind: HeapKind::DmaHeap,
            size: 8192,
            name: String::new(),
            owner_uid: 10001,
            owner_pid: 42,
            owner_name: "app".into(),
            allocated_at: SystemTime::now(),
            committed_at: Instant::now(),
        }
    }

    #[test]
    fn lines_follow_the_atrace_format() {
        assert_eq!(
            counter_line(123, RSS_COUNTER, 4096),
            "C|123|mem.dmabuf.rss|4096"
        );
        assert_eq!(instant_line(7, "a|b\nc"), "I|7|a b c");
        assert_eq!(
            instant_line(7, &"x".repeat(5000)).len(),
            MAX_MARKER_BYTES - 1
        );
        assert_eq!(
            buffer_event("alloc", "system", 4096, 9, 10001, 42),
            "dmabuf.alloc heap=system size=4096 ino=9 owner=uid 10001 pid 42"
        );
    }

    #[test]
    fn nothing_is_opened_or_written_while_tracing_is_off() {
        let fs = FakeTracefs::new("off");
        fs.set_on(false);
        let t = fs.tracer();
        t.after_scan(&scan(&[(10, &[(1, 4096)])]), &[record(1)]);
        t.allocated("system", 4096, 1, 10001, 10);
        assert!(!t.is_on());
        assert!(fs.events().is_empty(), "written while off");
        assert!(t.lock().marker.is_none(), "marker opened while off");
        // No tracefs at all: off, silently.
        let none = Tracer::with_roots(vec![fs.0.join("absent")]);
        none.after_scan(&scan(&[(10, &[(1, 4096)])]), &[]);
        assert!(!none.is_on());
    }

    #[test]
    fn counters_are_written_for_processes_whose_figures_changed() {
        let fs = FakeTracefs::new("on");
        fs.set_on(true);
        let t = fs.tracer();
        // 10 and 11 share 8 KiB; 12 holds nothing.
        t.after_scan(
            &scan(&[(10, &[(1, 8192)]), (11, &[(1, 8192)]), (12, &[])]),
            &[],
        );
        assert_eq!(
            fs.events(),
            [
                "C|10|mem.dmabuf.rss|8192",
                "C|10|mem.dmabuf.pss|4096",
                "C|11|mem.dmabuf.rss|8192",
                "C|11|mem.dmabuf.pss|4096",
            ]
        );
        // 11 closes it: only 10 and 11 changed; one free event first.
        t.after_scan(&scan(&[(10, &[(1, 8192)]), (11, &[]), (12, &[])]), &[]);
        assert_eq!(
            fs.events()[4..],
            [
                "C|10|mem.dmabuf.rss|8192",
                "C|10|mem.dmabuf.pss|8192",
                "C|11|mem.dmabuf.rss|0",
                "C|11|mem.dmabuf.pss|0",
            ]
        );
        // Nothing changed: nothing written. Then a free, then an allocation.
        t.after_scan(&scan(&[(10, &[(1, 8192)]), (11, &[])]), &[]);
        assert_eq!(fs.events().len(), 8);
        t.after_scan(&scan(&[(10, &[]), (11, &[])]), &[record(1)]);
        t.allocated("camera", 65536, 2, 10001, 10);
        let ev = fs.events();
        let service = std::process::id();
        assert_eq!(
            ev[8..],
            [
                format!(
                    "I|{service}|dmabuf.free heap=system size=8192 ino=1 owner=uid 10001 pid 42"
                ),
                "C|10|mem.dmabuf.rss|0".into(),
                "C|10|mem.dmabuf.pss|0".into(),
                format!(
                    "I|{service}|dmabuf.alloc heap=camera size=65536 ino=2 owner=uid 10001 pid 10"
                ),
            ]
        );
    }

    #[test]
    fn turning_tracing_off_and_on_writes_every_current_figure_again() {
        let fs = FakeTracefs::new("toggle");
        fs.set_on(true);
        let t = fs.tracer();
        let acc = scan(&[(10, &[(1, 4096)])]);
        t.after_scan(&acc, &[]);
        assert_eq!(fs.events().len(), 2);
        fs.set_on(false);
        t.after_scan(&acc, &[]);
        t.allocated("system", 4096, 3, 1, 1);
        assert_eq!(fs.events().len(), 2, "written while off");
        fs.set_on(true);
        t.after_scan(&acc, &[]);
        assert_eq!(
            fs.events()[2..],
            ["C|10|mem.dmabuf.rss|4096", "C|10|mem.dmabuf.pss|4096"]
        );
    }

    #[test]
    fn an_unwritable_marker_is_reported_and_retried() {
        let fs = FakeTracefs::new("ro");
        fs.set_on(true);
        // A directory cannot be opened for writing.
        std::fs::remove_file(fs.0.join("trace_marker")).unwrap();
        std::fs::create_dir(fs.0.join("trace_marker")).unwrap();
        let t = fs.tracer();
        t.after_scan(&scan(&[(10, &[(1, 4096)])]), &[]);
        assert!(t.is_on());
        assert!(t.lock().open_failed_logged);
        std::fs::remove_dir(fs.0.join("trace_marker")).unwrap();
        std::fs::write(fs.0.join("trace_marker"), "").unwrap();
        t.allocated("system", 4096, 3, 1, 1);
        assert_eq!(fs.events().len(), 1);
    }
}
