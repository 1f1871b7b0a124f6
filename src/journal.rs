//! The registry's state that lives until reboot: an append-only file of
//! records, so that `kill -9` of the service or a crash loses no owner.
//!
//! One JSON object per line, appended by one `write` per allocation (no
//! rewrite on the allocation path). Frees are not written: the file is
//! compacted off the path (a temp file renamed over it) after the monitor
//! drops freed records, and on start the records are matched against the
//! kernel's live buffers, so a stale line is never believed. It lives on a
//! tmpfs (`/run/dmabufd/` on Linux, `/data/vendor/dmabufd/` cleared by the
//! rc on Android): buffers do not survive a reboot either.
//!
//! A file that cannot be parsed is a logged warning and a fresh start.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::heap::HeapKind;
use crate::procfs::ProcessScan;
use crate::registry::BufferRecord;
use crate::scan::{BufferKey, LiveBuffer};

/// The on-disk form of a record.
#[derive(Serialize, Deserialize)]
struct Line {
    inode: u64,
    kind: String,
    heap: String,
    size: u64,
    name: String,
    uid: u32,
    pid: i32,
    owner: String,
    at_ms: u64,
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

/// What a start found in the file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<BufferRecord>,
    /// Why the file's content was thrown away, if it was.
    pub warning: Option<String>,
}

fn kind_str(k: HeapKind) -> &'static str {
    match k {
        HeapKind::DmaHeap => "dma_heap",
        HeapKind::Udmabuf => "udmabuf",
        HeapKind::Memfd => "memfd",
    }
}

fn kind_of(s: &str) -> Option<HeapKind> {
    match s {
        "dma_heap" => Some(HeapKind::DmaHeap),
        "udmabuf" => Some(HeapKind::Udmabuf),
        "memfd" => Some(HeapKind::Memfd),
        _ => None,
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Journal {
    /// Opens (creating) the journal at `path` and reads what a previous
    /// instance left. Errors only when the file cannot be opened at all.
    pub fn open(path: &Path) -> io::Result<(Journal, Loaded)> {
        let loaded = match fs::read(path) {
            Ok(bytes) => parse(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::default(),
            Err(e) => Loaded {
                records: Vec::new(),
                warning: Some(format!("cannot read: {e}")),
            },
        };
        let file = open_append(path)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file: Mutex::new(file),
            },
            loaded,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line [`Journal::append`] writes for `r`.
    pub fn line_of(r: &BufferRecord) -> String {
        let line = Line {
            inode: r.inode,
            kind: kind_str(r.kind).to_string(),
            heap: r.heap.clone(),
            size: r.size,
            name: r.name.clone(),
            uid: r.owner_uid,
            pid: r.owner_pid,
            owner: r.owner_name.clone(),
            at_ms: r
                .allocated_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Appends one line with one `write` (O_APPEND).
    pub fn append(&self, line: &str) -> io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(line.as_bytes())
    }

    /// Replaces the file by the records `snapshot` returns (taken while
    /// appends wait, so none is lost between the snapshot and the rename).
    pub fn compact(&self, snapshot: impl FnOnce() -> Vec<BufferRecord>) -> io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let records = snapshot();
        let tmp = self.path.with_extension("tmp");
        {
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut text = String::new();
            for r in &records {
                text.push_str(&Journal::line_of(r));
            }
            out.write_all(text.as_bytes())?;
        }
        fs::rename(&tmp, &self.path)?;
        *f = open_append(&self.path)?;
        Ok(())
    }
}

/// Parses a journal. The last line may be cut short by a kill in the middle
/// of a write (dropped, with a warning); any other bad line voids the file.
fn parse(bytes: &[u8]) -> Loaded {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Loaded {
            records: Vec::new(),
            warning: Some("not UTF-8; starting fresh".into()),
        };
    };
    let mut by_key: BTreeMap<BufferKey, BufferRecord> = BTreeMap::new();
    let mut warning = None;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        match record_of(l) {
            Some(r) => {
                by_key.insert(r.key(), r);
            }
            None if last && !complete => {
                warning = Some(format!("line {} cut short; dropped", i + 1));
            }
            None => {
                return Loaded {
                    records: Vec::new(),
                    warning: Some(format!("line {} is not a record; starting fresh", i + 1)),
                };
            }
        }
    }
    Loaded {
        records: by_key.into_values().collect(),
        warning,
    }
}

fn record_of(line: &str) -> Option<BufferRecord> {
    let l: Line = serde_json::from_str(line).ok()?;
    Some(BufferRecord {
        inode: l.inode,
        heap: l.heap,
        kind: kind_of(&l.kind)?,
        size: l.size,
        name: l.name,
        owner_uid: l.uid,
        owner_pid: l.pid,
        owner_name: l.owner,
        allocated_at: SystemTime::UNIX_EPOCH + Duration::from_millis(l.at_ms),
        committed_at: Instant::now(),
    })
}

/// Splits reloaded records into those whose buffers are still alive and
/// those that are gone. With the kernel's live list a record is kept when
/// inode, size and exporter match a live buffer; without one (procfs), when
/// some process references its key.
pub fn still_alive(
    records: Vec<BufferRecord>,
    live: Option<&[LiveBuffer]>,
    processes: &[ProcessScan],
) -> (Vec<BufferRecord>, Vec<BufferRecord>) {
    match live {
        Some(list) => {
            let by_key: BTreeMap<BufferKey, &LiveBuffer> =
                list.iter().map(|b| (b.key, b)).collect();
            records.into_iter().partition(|r| {
                by_key.get(&r.key()).is_some_and(|b| {
                    b.size == r.size && (b.exporter == r.heap || r.kind == HeapKind::Memfd)
                })
            })
        }
        None => {
            let held: std::collections::BTreeSet<BufferKey> = processes
                .iter()
                .filter_map(|p| p.result.as_ref().ok())
                .flatten()
                .map(|u| u.key)
                .collect();
            records.into_iter().partition(|r| held.contains(&r.key()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(inode: u64, kind: HeapKind, size: u64) -> BufferRecord {
        BufferRecord {
            inode,
            heap: "system".into(),
            kind,
            size,
            name: format!("n\n{inode}"),
            owner_uid: 10001,
            owner_pid: 42,
            owner_name: "app".into(),
            allocated_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1234),
            committed_at: Instant::now(),
        }
    }

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dmabufd-journal-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn appended_records_come_back_after_reopen_and_compaction_keeps_only_the_snapshot() {
        let d = tmpdir();
        let p = d.join("registry.journal");
        let (j, l) = Journal::open(&p).unwrap();
        assert!(l.records.is_empty() && l.warning.is_none());
        let a = rec(7, HeapKind::DmaHeap, 4096);
        let b = rec(7, HeapKind::Memfd, 8192);
        j.append(&Journal::line_of(&a)).unwrap();
        j.append(&Journal::line_of(&b)).unwrap();
        drop(j);
        let (j, l) = Journal::open(&p).unwrap();
        assert_eq!(l.warning, None);
        // Same inode, different kinds: two records.
        assert_eq!(l.records.len(), 2);
        let back = l
            .records
            .iter()
            .find(|r| r.kind == HeapKind::DmaHeap)
            .unwrap();
        assert_eq!(
            (back.size, back.name.as_str(), back.owner_uid),
            (4096, "n\n7", 10001)
        );
        assert_eq!(back.allocated_at, a.allocated_at);
        j.compact(|| vec![b.clone()]).unwrap();
        j.append(&Journal::line_of(&rec(9, HeapKind::DmaHeap, 4096)))
            .unwrap();
        drop(j);
        let (_, l) = Journal::open(&p).unwrap();
        let mut keys: Vec<_> = l.records.iter().map(|r| r.key()).collect();
        keys.sort();
        assert_eq!(keys, vec![BufferKey::dmabuf(9), BufferKey::memfd(7)]);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_cut_last_line_is_dropped_and_garbage_means_a_fresh_start() {
        let good = Journal::line_of(&rec(1, HeapKind::DmaHeap, 4096));
        let cut = format!("{good}{}", &good[..good.len() / 2]);
        let l = parse(cut.as_bytes());
        assert_eq!(l.records.len(), 1);
        assert!(l.warning.unwrap().contains("cut short"));
        let bad = format!("{{not json\n{good}");
        let l = parse(bad.as_bytes());
        assert!(l.records.is_empty());
        assert!(l.warning.unwrap().contains("starting fresh"));
        let l = parse(&[0xff, 0xfe, b'\n']);
        assert!(l.records.is_empty() && l.warning.is_some());
    }

    #[test]
    fn only_records_matching_a_live_buffer_survive_a_restart() {
        let recs = vec![
            rec(1, HeapKind::DmaHeap, 4096),
            rec(2, HeapKind::DmaHeap, 4096),
            rec(3, HeapKind::DmaHeap, 4096),
        ];
        let live = vec![
            LiveBuffer {
                key: BufferKey::dmabuf(1),
                size: 4096,
                exporter: "system".into(),
                name: String::new(),
            },
            // Inode reused by a buffer of another size: not ours.
            LiveBuffer {
                key: BufferKey::dmabuf(2),
                size: 8192,
                exporter: "system".into(),
                name: String::new(),
            },
        ];
        let (kept, dropped) = still_alive(recs, Some(&live), &[]);
        assert_eq!(kept.iter().map(|r| r.inode).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            dropped.iter().map(|r| r.inode).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}
