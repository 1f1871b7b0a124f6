//! Where the text report is drawn: the `dump` output in the shape of
//! Android's `dmabuf_dump` (per-process blocks, `-a` buffer x process table,
//! `-b` per-buffer and per-exporter totals, CSV variants), with what
//! dmabuf_dump cannot show added: the owner next to the holders, per-uid
//! totals, and the processes that could not be read.
//!
//! Sizes are in kB (bytes / 1024, rounded down) except where a header says
//! bytes, as in dmabuf_dump.

use crate::accounting::{Accounting, Owner, ProcessFigures, Total};
use crate::report::dump_args::View;
use crate::report::escape::{csv_quote, escape};

const OWNER_TOTALS_TITLE: &str = "\nOwner totals (buffers by the uid that allocated them):\n";

/// Printed instead of empty tables.
pub const NOTHING_FOUND: &str = "No DMA-BUF buffers found.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A table drawn as aligned columns (text) or comma-separated values (CSV).
/// Titles and cells may hold untrusted strings: the table escapes them
/// ([`escape`]), so callers pass them raw.
struct Table {
    cols: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
    /// Column separator in text form.
    sep: &'static str,
}

impl Table {
    fn new(cols: &[(&str, Align)], sep: &'static str) -> Table {
        Table {
            cols: cols
                .iter()
                .map(|(t, a)| (escape(t).into_owned(), *a))
                .collect(),
            rows: Vec::new(),
            sep,
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.cols.len());
        self.rows
            .push(cells.into_iter().map(|c| escape(&c).into_owned()).collect());
    }

    fn widths(&self) -> Vec<usize> {
        self.cols
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([title.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn text_line(&self, cells: &[String], widths: &[usize]) -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(&self.cols)
            .map(|((c, &w), (_, align))| match align {
                Align::Left => format!("{c:<w$}"),
                Align::Right => format!("{c:>w$}"),
            })
            .collect();
        parts.join(self.sep).trim_end().to_string()
    }

    fn text(&self) -> String {
        let widths = self.widths();
        let header: Vec<String> = self.cols.iter().map(|(t, _)| t.clone()).collect();
        let mut out = self.text_line(&header, &widths);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&self.text_line(r, &widths));
            out.push('\n');
        }
        out
    }

    /// Width of the text form (for separators).
    fn text_width(&self) -> usize {
        let w = self.widths();
        w.iter().sum::<usize>() + self.sep.len() * w.len().saturating_sub(1)
    }

    fn csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<&str> = self.cols.iter().map(|(t, _)| t.as_str()).collect();
        out.push_str(&csv_line(header));
        for r in &self.rows {
            out.push_str(&csv_line(r.iter().map(String::as_str)));
        }
        out
    }
}

/// One CSV record of cells [`Table`] already escaped.
fn csv_line<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let cells: Vec<String> = cells.into_iter().map(csv_quote).collect();
    let mut l = cells.join(",");
    l.push('\n');
    l
}

fn kb(bytes: u64) -> u64 {
    bytes / 1024
}

fn kb_text(bytes: u64) -> String {
    format!("{} kB", kb(bytes))
}

/// `<uid>/<name>:<pid>` of who allocated, or `unknown`.
fn owner_text(owner: &Option<Owner>) -> String {
    match owner {
        Some(o) => format!("{}/{}:{}", o.uid, o.name, o.pid),
        None => "unknown".to_string(),
    }
}

/// Owner as three CSV cells: uid, pid, name (-1, -1, "" when unknown).
fn owner_cells(owner: &Option<Owner>) -> [String; 3] {
    match owner {
        Some(o) => [o.uid.to_string(), o.pid.to_string(), o.name.clone()],
        None => ["-1".into(), "-1".into(), String::new()],
    }
}

/// `<comm>:<pid>`, raw: for table cells and titles (the table escapes).
fn proc_label(p: &ProcessFigures) -> String {
    format!("{}:{}", p.name, p.pid)
}

/// [`proc_label`] escaped, for lines drawn outside a table.
fn proc_line_label(p: &ProcessFigures) -> String {
    escape(&proc_label(p)).into_owned()
}

/// Draws the dump for `view`. `pid` limits the per-process view and `-a`
/// to one process.
pub fn render(a: &Accounting, view: View, csv: bool, pid: Option<i32>) -> String {
    let mut out = Vec::new();
    render_to(&mut out, a, view, csv, pid).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the report is UTF-8")
}

/// [`render`] written to `w` one section at a time, so the largest piece
/// held in memory is one table, not the whole dump (`-a` with thousands of
/// buffers is three tables).
pub fn render_to(
    w: &mut dyn std::io::Write,
    a: &Accounting,
    view: View,
    csv: bool,
    pid: Option<i32>,
) -> std::io::Result<()> {
    let mut section = |draw: &dyn Fn(&mut String)| {
        let mut out = String::new();
        draw(&mut out);
        w.write_all(out.as_bytes())
    };
    if let Some(pid) = pid {
        let Some(p) = a.process(pid) else {
            return section(&|out| out.push_str(&format!("No such process: {pid}\n")));
        };
        if let Some(e) = &p.error {
            return section(&|out| {
                out.push_str(&format!(
                    "{}: unreadable: {}\n",
                    proc_line_label(p),
                    escape(&e.to_string())
                ))
            });
        }
        if p.buffers.is_empty() {
            return section(&|out| {
                out.push_str(&format!(
                    "{}: no DMA-BUF buffers referenced (rss 0 kB, hwm {})\n",
                    proc_line_label(p),
                    kb_text(p.hwm)
                ))
            });
        }
    } else if a.buffers.is_empty() {
        return section(&|out| {
            out.push_str(NOTHING_FOUND);
            out.push('\n');
            pool_section(a, csv, out);
            unreadable_section(a, csv, out);
        });
    }
    match view {
        View::PerProcess => section(&|out| per_process(a, csv, pid, out))?,
        View::BufferByProcess => section(&|out| buffer_by_process(a, csv, pid, out))?,
        View::PerBuffer => section(&|out| per_buffer(a, csv, out))?,
        View::Full => {
            section(&|out| per_process(a, csv, pid, out))?;
            section(&|out| {
                out.push_str(BUFFERS_BY_PROCESS_TITLE);
                buffer_by_process(a, csv, pid, out)
            })?;
            if pid.is_none() {
                section(&|out| {
                    out.push_str(PER_BUFFER_TITLE);
                    per_buffer(a, csv, out)
                })?;
            }
        }
    }
    if pid.is_none() {
        section(&|out| {
            pool_section(a, csv, out);
            unreadable_section(a, csv, out)
        })?;
    }
    Ok(())
}

/// The service's reserve pools: buffers dmabufd itself holds, on a line of
/// their own (never in a process's or owner's figures, nor the totals).
fn pool_section(a: &Accounting, csv: bool, out: &mut String) {
    let Some(pool) = &a.pool else { return };
    let held = pool.held();
    if csv {
        out.push('\n');
        let mut t = Table::new(
            &[
                ("Pool Heap", Align::Left),
                ("Class(kB)", Align::Right),
                ("Target", Align::Right),
                ("Available", Align::Right),
                ("Pooled(kB)", Align::Right),
                ("Holder Pid", Align::Right),
            ],
            ",",
        );
        for c in &pool.classes {
            t.row(vec![
                c.heap.clone(),
                kb(c.size).to_string(),
                c.target.to_string(),
                c.available.to_string(),
                kb(c.size * c.available as u64).to_string(),
                pool.pid.to_string(),
            ]);
        }
        out.push_str(&t.csv());
        return;
    }
    let classes: Vec<String> = pool
        .classes
        .iter()
        .map(|c| {
            format!(
                "{} {} x {}/{}",
                escape(&c.heap),
                kb_text(c.size),
                c.available,
                c.target
            )
        })
        .collect();
    out.push_str(&format!(
        "dmabufd pool (held by the service, pid {}, no app's; not in the totals above): {} \
         buffers, {}: {}\n",
        pool.pid,
        held.count,
        kb_text(held.bytes),
        classes.join(", ")
    ));
}

/// Titles between the sections of `-a`.
const BUFFERS_BY_PROCESS_TITLE: &str = "\nBuffers by process (fd(map) reference counts):\n";
const PER_BUFFER_TITLE: &str = "\nPer buffer:\n";

fn per_process(a: &Accounting, csv: bool, only: Option<i32>, out: &mut String) {
    let holders = a
        .processes
        .iter()
        .filter(|p| p.readable() && !p.buffers.is_empty())
        .filter(|p| only.is_none_or(|pid| p.pid == pid));
    if csv {
        let mut t = Table::new(
            &[
                ("Process", Align::Left),
                ("Pid", Align::Right),
                ("Uid", Align::Right),
                ("Name", Align::Left),
                ("Rss(kB)", Align::Right),
                ("Pss(kB)", Align::Right),
                ("nr_procs", Align::Right),
                ("Inode", Align::Right),
                ("Exporter", Align::Left),
                ("Owner Uid", Align::Right),
                ("Owner Pid", Align::Right),
                ("Owner Name", Align::Left),
            ],
            ",",
        );
        for p in holders {
            for b in &p.buffers {
                let [ou, op, on] = owner_cells(&b.owner);
                t.row(vec![
                    p.name.clone(),
                    p.pid.to_string(),
                    p.uid.to_string(),
                    b.name.clone(),
                    kb(b.size).to_string(),
                    kb(b.pss).to_string(),
                    b.shared_with.to_string(),
                    b.key.inode.to_string(),
                    b.exporter.clone(),
                    ou,
                    op,
                    on,
                ]);
            }
        }
        out.push_str(&t.csv());
        if only.is_none() {
            out.push('\n');
            let mut t = Table::new(
                &[
                    ("dmabuf total(kB)", Align::Right),
                    ("kernel_rss(kB)", Align::Right),
                    ("userspace_rss(kB)", Align::Right),
                    ("userspace_pss(kB)", Align::Right),
                ],
                ",",
            );
            t.row(vec![
                kb(a.total.bytes).to_string(),
                kb(a.unreferenced_bytes).to_string(),
                kb(a.userspace_rss()).to_string(),
                kb(a.userspace_pss()).to_string(),
            ]);
            out.push_str(&t.csv());
            out.push('\n');
            out.push_str(&owner_table(a, false).csv());
        }
        return;
    }
    for p in holders {
        let mut t = Table::new(
            &[
                ("Name", Align::Left),
                ("Rss", Align::Right),
                ("Pss", Align::Right),
                ("nr_procs", Align::Right),
                ("Inode", Align::Right),
                ("Exporter", Align::Left),
                ("Owner", Align::Left),
            ],
            "  ",
        );
        for b in &p.buffers {
            t.row(vec![
                if b.name.is_empty() {
                    "<unnamed>".to_string()
                } else {
                    b.name.clone()
                },
                kb_text(b.size),
                kb_text(b.pss),
                b.shared_with.to_string(),
                b.key.inode.to_string(),
                b.exporter.clone(),
                owner_text(&b.owner),
            ]);
        }
        t.row(vec![
            "PROCESS TOTAL".into(),
            kb_text(p.rss),
            kb_text(p.pss),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        out.push_str(&format!("{}\n", proc_line_label(p)));
        out.push_str(&t.text());
        out.push_str(&format!("uid: {}  rss hwm: {}\n", p.uid, kb_text(p.hwm)));
        out.push_str(&"-".repeat(t.text_width()));
        out.push('\n');
    }
    if only.is_none() {
        out.push_str(&format!(
            "dmabuf total: {} kB kernel_rss: {} kB userspace_rss: {} kB userspace_pss: {} kB\n",
            kb(a.total.bytes),
            kb(a.unreferenced_bytes),
            kb(a.userspace_rss()),
            kb(a.userspace_pss()),
        ));
        out.push_str(OWNER_TOTALS_TITLE);
        out.push_str(&owner_table(a, false).text());
    }
}

/// Per owner uid totals; sizes in bytes when `bytes`, else kB.
fn owner_table(a: &Accounting, bytes: bool) -> Table {
    let size_col = if bytes {
        "Total Size(bytes)"
    } else {
        "Total Size(kB)"
    };
    let mut t = Table::new(
        &[
            ("Owner Uid", Align::Right),
            ("Total Count", Align::Right),
            (size_col, Align::Right),
        ],
        "  ",
    );
    for (uid, Total { count, bytes: b }) in &a.owner_totals {
        t.row(vec![
            uid.map_or("unknown".to_string(), |u| u.to_string()),
            count.to_string(),
            if bytes {
                b.to_string()
            } else {
                kb(*b).to_string()
            },
        ]);
    }
    t
}

fn buffer_by_process(a: &Accounting, csv: bool, only: Option<i32>, out: &mut String) {
    let procs: Vec<&ProcessFigures> = a
        .processes
        .iter()
        .filter(|p| p.readable() && !p.buffers.is_empty())
        .filter(|p| only.is_none_or(|pid| p.pid == pid))
        .collect();
    let labels: Vec<String> = procs.iter().map(|p| proc_label(p)).collect();
    let mut cols: Vec<(&str, Align)> = vec![
        ("Dmabuf Inode", Align::Right),
        ("Size(kB)", Align::Right),
        ("Fd Ref Counts", Align::Right),
        ("Map Ref Counts", Align::Right),
        ("Owner", Align::Left),
    ];
    cols.extend(labels.iter().map(|l| (l.as_str(), Align::Right)));
    let mut t = Table::new(&cols, if csv { "," } else { " | " });
    let (mut size_sum, mut fd_sum, mut map_sum) = (0, 0, 0);
    for b in &a.buffers {
        let cells: Vec<String> = procs
            .iter()
            .map(|p| match b.holders.iter().find(|h| h.pid == p.pid) {
                Some(h) => format!("{}({}) refs", h.fd_refs, h.map_refs),
                None => "--".to_string(),
            })
            .collect();
        if only.is_some() && cells.iter().all(|c| c == "--") {
            continue;
        }
        let fds: u32 = b.holders.iter().map(|h| h.fd_refs).sum();
        let maps: u32 = b.holders.iter().map(|h| h.map_refs).sum();
        size_sum += b.size;
        fd_sum += fds;
        map_sum += maps;
        let mut row = vec![
            b.key.inode.to_string(),
            kb(b.size).to_string(),
            fds.to_string(),
            maps.to_string(),
            owner_text(&b.owner),
        ];
        row.extend(cells);
        t.row(row);
    }
    let mut total = vec![
        "Total".to_string(),
        kb(size_sum).to_string(),
        fd_sum.to_string(),
        map_sum.to_string(),
        String::new(),
    ];
    total.extend(procs.iter().map(|p| format!("{} kB", kb(p.rss))));
    t.row(total);
    out.push_str(&if csv { t.csv() } else { t.text() });
}

/// Who references a buffer: the holder pids, or `kernel` when the kernel's
/// list says it lives and no process references it (a driver, an fd in
/// flight), or `none readable` where liveness is only inferred.
fn held_by(a: &Accounting, b: &crate::accounting::BufferView) -> String {
    if !b.holders.is_empty() {
        let pids: Vec<String> = b.holders.iter().map(|h| h.pid.to_string()).collect();
        return pids.join(" ");
    }
    if a.exact_liveness {
        "kernel".into()
    } else {
        "none readable".into()
    }
}

fn per_buffer(a: &Accounting, csv: bool, out: &mut String) {
    let sep = if csv { "," } else { " | " };
    let mut t = Table::new(
        &[
            ("Dmabuf Inode", Align::Right),
            ("Size(bytes)", Align::Right),
            ("Exporter Name", Align::Left),
            ("Name", Align::Left),
            ("nr_procs", Align::Right),
            ("Owner", Align::Left),
            ("Held by", Align::Left),
        ],
        sep,
    );
    for b in &a.buffers {
        t.row(vec![
            b.key.inode.to_string(),
            b.size.to_string(),
            b.exporter.clone(),
            b.name.clone(),
            b.holders.len().to_string(),
            owner_text(&b.owner),
            held_by(a, b),
        ]);
    }
    let mut e = Table::new(
        &[
            ("Exporter Name", Align::Left),
            ("Total Count", Align::Right),
            ("Total Size(bytes)", Align::Right),
        ],
        sep,
    );
    for (name, tot) in &a.exporter_totals {
        e.row(vec![
            name.clone(),
            tot.count.to_string(),
            tot.bytes.to_string(),
        ]);
    }
    let mut o = owner_table(a, true);
    o.sep = sep;
    let total_line = format!(
        "Total DMA-BUF count: {}, Total DMA-BUF size(bytes): {}\n",
        a.total.count, a.total.bytes
    );
    if csv {
        out.push_str(&t.csv());
        out.push('\n');
        out.push_str(&e.csv());
        out.push('\n');
        let mut tot = Table::new(
            &[
                ("Total DMA-BUF count", Align::Right),
                ("Total DMA-BUF size(bytes)", Align::Right),
                ("Unreferenced size(bytes)", Align::Right),
            ],
            ",",
        );
        tot.row(vec![
            a.total.count.to_string(),
            a.total.bytes.to_string(),
            a.unreferenced_bytes.to_string(),
        ]);
        out.push_str(&tot.csv());
        out.push('\n');
        out.push_str(&o.csv());
    } else {
        out.push_str(&t.text());
        out.push('\n');
        out.push_str(&e.text());
        out.push('\n');
        out.push_str(&total_line);
        if a.unreferenced_bytes > 0 && a.exact_liveness {
            out.push_str(&format!(
                "Held by the kernel only (no process references them): {} bytes\n",
                a.unreferenced_bytes
            ));
        } else if a.unreferenced_bytes > 0 {
            out.push_str(&format!(
                "Allocated by dmabufd, no readable holder: {} bytes\n",
                a.unreferenced_bytes
            ));
        }
        out.push_str(OWNER_TOTALS_TITLE);
        out.push_str(&o.text());
    }
}

/// The processes whose buffers could not be counted, and why.
fn unreadable_section(a: &Accounting, csv: bool, out: &mut String) {
    let bad: Vec<&ProcessFigures> = a.unreadable().collect();
    if bad.is_empty() {
        return;
    }
    if csv {
        let mut t = Table::new(
            &[
                ("Unreadable Process", Align::Left),
                ("Pid", Align::Right),
                ("Uid", Align::Right),
                ("Reason", Align::Left),
            ],
            ",",
        );
        for p in bad {
            let reason = p.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
            t.row(vec![
                p.name.clone(),
                p.pid.to_string(),
                p.uid.to_string(),
                reason,
            ]);
        }
        out.push('\n');
        out.push_str(&t.csv());
        return;
    }
    out.push_str(&format!(
        "\nUnreadable processes ({}; their buffers are not counted):\n",
        bad.len()
    ));
    for p in bad {
        let reason = p.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "  {} uid {}: {}\n",
            proc_line_label(p),
            p.uid,
            escape(&reason)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::{accounting, empty};

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    /// Splits a text table row into its cells.
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn default_view_blocks_totals_owners_and_unreadable() {
        let out = render(&accounting(), View::PerProcess, false, None);
        let l = lines(&out);
        assert_eq!(l[0], "camera:100");
        assert_eq!(
            cells(l[1]),
            vec!["Name", "Rss", "Pss", "nr_procs", "Inode", "Exporter", "Owner"]
        );
        assert_eq!(
            cells(l[2]),
            vec![
                "preview",
                "1024 kB",
                "512 kB",
                "2",
                "17",
                "system",
                "10001/camera:100"
            ]
        );
        assert_eq!(cells(l[3]), vec!["PROCESS TOTAL", "1024 kB", "512 kB"]);
        assert_eq!(l[4], "uid: 10001  rss hwm: 1024 kB");
        assert!(l[5].starts_with("------") && l[5].chars().all(|c| c == '-'));
        assert_eq!(l[6], "viewer:200");
        assert_eq!(
            cells(l[9]),
            vec!["<unnamed>", "8 kB", "8 kB", "1", "23", "udmabuf", "unknown"]
        );
        assert_eq!(cells(l[10]), vec!["PROCESS TOTAL", "1032 kB", "520 kB"]);
        // The service's own empty row and the unreadable one have no block.
        assert!(!out.contains("dmabufd:400"));
        assert!(out.contains(
            "\ndmabuf total: 1032 kB kernel_rss: 0 kB userspace_rss: 2056 kB userspace_pss: 1032 kB\n"
        ));
        let owners = out.split("Owner totals").nth(1).unwrap();
        let ol = lines(owners);
        assert_eq!(
            cells(ol[1]),
            vec!["Owner Uid", "Total Count", "Total Size(kB)"]
        );
        assert_eq!(cells(ol[2]), vec!["unknown", "1", "8"]);
        assert_eq!(cells(ol[3]), vec!["10001", "1", "1024"]);
        assert!(out.ends_with(
            "Unreadable processes (1; their buffers are not counted):\n  secret:300 uid 10003: /proc/300/fd: Permission denied (os error 13)\n"
        ));
    }

    #[test]
    fn default_view_columns_line_up() {
        let out = render(&accounting(), View::PerProcess, false, None);
        let l = lines(&out);
        // Right-aligned Rss column: the header and both rows end at the same place.
        let end = |line: &str, needle: &str| line.find(needle).unwrap() + needle.len();
        assert_eq!(end(l[1], "Rss"), end(l[2], "1024 kB"));
        assert_eq!(end(l[1], "Rss"), end(l[3], "1024 kB"));
    }

    #[test]
    fn one_process() {
        let a = accounting();
        let out = render(&a, View::PerProcess, false, Some(200));
        assert!(out.starts_with("viewer:200\n"));
        assert!(!out.lines().any(|l| l == "camera:100"));
        assert!(!out.contains("dmabuf total"));
        assert_eq!(
            render(&a, View::PerProcess, false, Some(400)),
            "dmabufd:400: no DMA-BUF buffers referenced (rss 0 kB, hwm 0 kB)\n"
        );
        assert_eq!(
            render(&a, View::PerProcess, false, Some(300)),
            "secret:300: unreadable: /proc/300/fd: Permission denied (os error 13)\n"
        );
        assert_eq!(
            render(&a, View::PerProcess, false, Some(999)),
            "No such process: 999\n"
        );
    }

    #[test]
    fn full_view_is_every_section_in_order_and_one_process_with_pid() {
        let a = accounting();
        let full = render(&a, View::Full, false, None);
        let per_process = render(&a, View::PerProcess, false, None);
        let unreadable_at = per_process.find("\nUnreadable processes").unwrap();
        // The per-process view, then the table, then the per-buffer tables,
        // then the unreadable processes once.
        assert!(full.starts_with(&per_process[..unreadable_at]), "{full}");
        let table_at = full.find(BUFFERS_BY_PROCESS_TITLE).unwrap();
        let buffers_at = full.find(PER_BUFFER_TITLE).unwrap();
        assert!(unreadable_at <= table_at && table_at < buffers_at, "{full}");
        let table = render(&a, View::BufferByProcess, false, None);
        let table_body = &table[..table.find("\nUnreadable processes").unwrap()];
        assert!(full[table_at..buffers_at].contains(table_body), "{full}");
        assert!(
            full[buffers_at..].contains("Total DMA-BUF count: 2"),
            "{full}"
        );
        assert_eq!(full.matches("Unreadable processes").count(), 1, "{full}");
        // --pid: that process's block and its column, no per-buffer tables.
        let one = render(&a, View::Full, false, Some(100));
        assert!(one.contains("camera"), "{one}");
        assert!(!one.contains("viewer:200"), "{one}");
        assert!(!one.contains(PER_BUFFER_TITLE), "{one}");
    }

    #[test]
    fn buffer_by_process_table() {
        let out = render(&accounting(), View::BufferByProcess, false, None);
        let l = lines(&out);
        let row =
            |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
        assert_eq!(
            row(l[0]),
            vec![
                "Dmabuf Inode",
                "Size(kB)",
                "Fd Ref Counts",
                "Map Ref Counts",
                "Owner",
                "camera:100",
                "viewer:200"
            ]
        );
        assert_eq!(
            row(l[1]),
            vec![
                "17",
                "1024",
                "3",
                "1",
                "10001/camera:100",
                "1(1) refs",
                "2(0) refs"
            ]
        );
        assert_eq!(
            row(l[2]),
            vec!["23", "8", "1", "0", "unknown", "--", "1(0) refs"]
        );
        assert_eq!(
            row(l[3]),
            vec!["Total", "1032", "4", "1", "", "1024 kB", "1032 kB"]
        );
        assert!(out.contains("Unreadable processes (1;"));
        // One process: only its column and its buffers.
        let one = render(&accounting(), View::BufferByProcess, false, Some(100));
        let l = lines(&one);
        assert_eq!(row(l[0]).last().unwrap(), "camera:100");
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn per_buffer_tables() {
        let out = render(&accounting(), View::PerBuffer, false, None);
        let row =
            |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
        let l = lines(&out);
        assert_eq!(
            row(l[0]),
            vec![
                "Dmabuf Inode",
                "Size(bytes)",
                "Exporter Name",
                "Name",
                "nr_procs",
                "Owner",
                "Held by"
            ]
        );
        assert_eq!(
            row(l[1]),
            vec![
                "17",
                "1048576",
                "system",
                "preview",
                "2",
                "10001/camera:100",
                "100 200"
            ]
        );
        assert_eq!(
            row(l[2]),
            vec!["23", "8192", "udmabuf", "", "1", "unknown", "200"]
        );
        assert_eq!(
            row(l[4]),
            vec!["Exporter Name", "Total Count", "Total Size(bytes)"]
        );
        assert_eq!(row(l[5]), vec!["system", "1", "1048576"]);
        assert_eq!(row(l[6]), vec!["udmabuf", "1", "8192"]);
        assert!(out.contains("\nTotal DMA-BUF count: 2, Total DMA-BUF size(bytes): 1056768\n"));
        assert!(l[10].starts_with("Owner totals"));
        let owners: Vec<Vec<String>> = l.iter().skip(11).map(|x| row(x)).collect();
        assert_eq!(
            owners[0],
            vec!["Owner Uid", "Total Count", "Total Size(bytes)"]
        );
        assert_eq!(owners[1], vec!["unknown", "1", "8192"]);
        assert_eq!(owners[2], vec!["10001", "1", "1048576"]);
    }

    #[test]
    fn csv_forms() {
        let a = accounting();
        let out = render(&a, View::PerProcess, true, None);
        let l = lines(&out);
        assert_eq!(
            l[0],
            "Process,Pid,Uid,Name,Rss(kB),Pss(kB),nr_procs,Inode,Exporter,Owner Uid,Owner Pid,Owner Name"
        );
        assert_eq!(
            l[1],
            "camera,100,10001,preview,1024,512,2,17,system,10001,100,camera"
        );
        assert_eq!(l[3], "viewer,200,10002,,8,8,1,23,udmabuf,-1,-1,");
        assert!(out.contains("\ndmabuf total(kB),kernel_rss(kB),userspace_rss(kB),userspace_pss(kB)\n1032,0,2056,1032\n"));
        assert!(out.contains("\nOwner Uid,Total Count,Total Size(kB)\nunknown,1,8\n10001,1,1024\n"));
        assert!(out.ends_with(
            "Unreadable Process,Pid,Uid,Reason\nsecret,300,10003,/proc/300/fd: Permission denied (os error 13)\n"
        ));
        let a_csv = render(&a, View::BufferByProcess, true, None);
        assert!(
            a_csv.contains("\n17,1024,3,1,10001/camera:100,1(1) refs,2(0) refs\n"),
            "{a_csv}"
        );
        let b_csv = render(&a, View::PerBuffer, true, None);
        assert!(b_csv.starts_with("Dmabuf Inode,Size(bytes),Exporter Name,Name,nr_procs,Owner,Held by\n17,1048576,system,preview,2,10001/camera:100,100 200\n"));
        assert!(b_csv.contains("\nTotal DMA-BUF count,Total DMA-BUF size(bytes),Unreferenced size(bytes)\n2,1056768,0\n"));
        assert_eq!(csv_quote("a,b\"c"), "\"a,b\"\"c\"");
    }

    /// Untrusted strings (command names, buffer names) cannot forge lines
    /// or cells in any view or format: the hostile sample draws exactly as
    /// many lines as the plain one, with no raw CR, and shows the escapes.
    #[test]
    fn hostile_names_cannot_forge_lines_in_any_view_or_format() {
        use crate::report::sample::hostile;
        let (plain, bad) = (accounting(), hostile());
        for view in [View::PerProcess, View::BufferByProcess, View::PerBuffer] {
            for csv in [false, true] {
                for pid in [None, Some(100), Some(300)] {
                    let want = render(&plain, view, csv, pid);
                    let got = render(&bad, view, csv, pid);
                    let what = format!("{view:?} csv {csv} pid {pid:?}:\n{got}");
                    assert_eq!(got.lines().count(), want.lines().count(), "{what}");
                    assert!(!got.contains('\r') && !got.contains('\t'), "{what}");
                    assert!(!got.contains('\x1b'), "{what}");
                    for l in got.lines() {
                        assert!(
                            !l.starts_with("PID ") && !l.starts_with("ino:"),
                            "forged line {l:?} in {what}"
                        );
                    }
                    if csv {
                        // One record per line: every line has as many cells
                        // as in the plain dump.
                        for (g, w) in got.lines().zip(want.lines()) {
                            assert_eq!(csv_cells(g), csv_cells(w), "{g:?} vs {w:?}");
                        }
                    }
                }
            }
        }
        let out = render(&bad, View::PerProcess, false, None);
        assert!(out.contains("a\\nPID 1 x:100\n"), "{out}");
        assert!(out.contains("x\\nino:\\t1\\r\\n"), "{out}");
        assert!(out.contains("v\\r\\\\\\x1b[2J:200"), "{out}");
        assert!(out.contains("s\\nPID 2:300 uid 10003"), "{out}");
        let csv = render(&bad, View::PerProcess, true, None);
        assert!(
            csv.contains("\na\\nPID 1 x,100,10001,x\\nino:\\t1\\r\\n,1024,"),
            "{csv}"
        );
        assert!(csv.contains(",\"\\n,\"\"q\"\"\","), "{csv}");
    }

    /// Number of cells of an RFC 4180 record (quoted commas do not count).
    fn csv_cells(line: &str) -> usize {
        let mut quoted = false;
        1 + line
            .chars()
            .filter(|&c| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == ',' && !quoted
            })
            .count()
    }

    #[test]
    #[ignore = "prints the sample dumps for eyeballing: cargo test --lib show_sample -- --ignored --nocapture"]
    fn show_sample() {
        let a = accounting();
        for view in [View::PerProcess, View::BufferByProcess, View::PerBuffer] {
            println!("{}", render(&a, view, false, None));
        }
    }

    #[test]
    fn empty_system_prints_one_line() {
        for view in [View::PerProcess, View::BufferByProcess, View::PerBuffer] {
            for csv in [false, true] {
                assert_eq!(
                    render(&empty(), view, csv, None),
                    format!("{NOTHING_FOUND}\n")
                );
            }
        }
    }
}
