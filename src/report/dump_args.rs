//! The arguments of the service's `dump` (dumpsys / `rsb_service dump` /
//! `dmabufctl dump`), in the spirit of Android's `dmabuf_dump`.

use std::fmt;

/// Which table the text dump shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// One block per process (dmabuf_dump's default), plus per-uid totals.
    #[default]
    PerProcess,
    /// `-a` with `--csv`: buffer x process table of fd(map) reference counts.
    BufferByProcess,
    /// `-a` (what dumpstate passes for a bugreport): the full text: the
    /// per-process view, the buffer x process table and the per-buffer
    /// tables, one after the other.
    Full,
    /// `-b`: per-buffer table, per-exporter and per-uid totals.
    PerBuffer,
}

/// What a dump call asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpRequest {
    /// `-h` / `--help`: print [`HELP`].
    Help,
    /// `--proto`: the whole report, protobuf-encoded (proto/dmabuf_report.proto).
    Proto,
    /// `--source`: one line saying which scan source is active and why.
    Source,
    /// `--prometheus`: the metrics in the Prometheus text format
    /// (`dmabufctl metrics`).
    Prometheus,
    /// A text (or CSV) report, optionally of one process.
    Text {
        view: View,
        csv: bool,
        pid: Option<i32>,
    },
}

/// A bad argument list; `Display` is the one-line message to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpArgsError(pub String);

impl fmt::Display for DumpArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DumpArgsError {}

/// The accepted arguments, for error messages.
pub const ACCEPTED: &str =
    "-a, -b, --csv (or -o csv), --proto, --pid N, --source, --prometheus, -h/--help";

/// The `-h` text.
pub const HELP: &str = "\
usage: dump [-a | -b] [--csv | -o csv] [--pid N] | --proto | --source | --prometheus | -h
DMA-BUF memory as seen by dmabufd: owner (who allocated) and holders
(processes with fds or mappings), sizes in kB unless stated.
  (none)     per process: each buffer with Rss, Pss, nr_procs, Inode,
             Exporter, Owner; then per-uid owner totals
  -a         everything (what a bugreport asks for): the per-process view,
             the buffer x process table of fd(map) reference counts, then
             the per-buffer table; with --csv, the buffer x process table
  -b         per-buffer table, totals per exporter and per owner uid
  --csv      the same tables as CSV (also: -o csv)
  --pid N    only process N (with the default view or -a)
  --proto    the whole report as protobuf (schema: proto/dmabuf_report.proto)
  --source   which scan source (bpf or procfs) is active, and why
  --prometheus  the metrics in the Prometheus text format (dmabufctl metrics)
  -h, --help this text
";

/// Parses dump arguments.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<DumpRequest, DumpArgsError> {
    let mut view = View::PerProcess;
    let mut view_flag: Option<&str> = None;
    let mut csv = false;
    let mut proto = false;
    let mut pid = None;
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(arg) = it.next() {
        match arg {
            "-h" | "--help" => return Ok(DumpRequest::Help),
            "--source" => return Ok(DumpRequest::Source),
            "--prometheus" => {
                if args.len() > 1 {
                    return Err(DumpArgsError(format!(
                        "--prometheus writes the metrics and takes no other argument; \
                         accepted: {ACCEPTED}"
                    )));
                }
                return Ok(DumpRequest::Prometheus);
            }
            "-a" | "-b" => {
                let v = if arg == "-a" {
                    View::Full
                } else {
                    View::PerBuffer
                };
                if let Some(prev) = view_flag.filter(|p| *p != arg) {
                    return Err(DumpArgsError(format!(
                        "{prev} and {arg} cannot be combined; accepted: {ACCEPTED}"
                    )));
                }
                view_flag = Some(arg);
                view = v;
            }
            "--csv" => csv = true,
            "-o" => match it.next() {
                Some("csv") => csv = true,
                Some(other) => {
                    return Err(DumpArgsError(format!(
                        "unsupported output format '{other}' (only csv); accepted: {ACCEPTED}"
                    )))
                }
                None => {
                    return Err(DumpArgsError(format!(
                        "-o needs a format (csv); accepted: {ACCEPTED}"
                    )))
                }
            },
            "--proto" => proto = true,
            "--pid" => {
                let v = it.next().ok_or_else(|| {
                    DumpArgsError(format!("--pid needs a process id; accepted: {ACCEPTED}"))
                })?;
                pid = Some(parse_pid(v)?);
            }
            other => {
                if let Some(v) = other.strip_prefix("--pid=") {
                    pid = Some(parse_pid(v)?);
                } else {
                    return Err(DumpArgsError(format!(
                        "unknown argument '{other}'; accepted: {ACCEPTED}"
                    )));
                }
            }
        }
    }
    if proto {
        if view_flag.is_some() || csv || pid.is_some() {
            return Err(DumpArgsError(format!(
                "--proto writes the whole report and takes no other argument; accepted: {ACCEPTED}"
            )));
        }
        return Ok(DumpRequest::Proto);
    }
    // CSV is one table: -a --csv is the buffer x process table.
    if csv && view == View::Full {
        view = View::BufferByProcess;
    }
    if pid.is_some() && view == View::PerBuffer {
        return Err(DumpArgsError(format!(
            "--pid applies to the default view and -a, not -b; accepted: {ACCEPTED}"
        )));
    }
    Ok(DumpRequest::Text { view, csv, pid })
}

fn parse_pid(v: &str) -> Result<i32, DumpArgsError> {
    match v.parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(DumpArgsError(format!(
            "--pid needs a positive process id, got '{v}'; accepted: {ACCEPTED}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(view: View, csv: bool, pid: Option<i32>) -> DumpRequest {
        DumpRequest::Text { view, csv, pid }
    }

    #[test]
    fn accepted_forms() {
        let none: [&str; 0] = [];
        assert_eq!(parse(&none), Ok(text(View::PerProcess, false, None)));
        assert_eq!(parse(&["-a"]), Ok(text(View::Full, false, None)));
        assert_eq!(parse(&["--prometheus"]), Ok(DumpRequest::Prometheus));
        assert_eq!(
            parse(&["-b", "--csv"]),
            Ok(text(View::PerBuffer, true, None))
        );
        assert_eq!(
            parse(&["-o", "csv", "-a"]),
            Ok(text(View::BufferByProcess, true, None))
        );
        assert_eq!(
            parse(&["--pid", "42"]),
            Ok(text(View::PerProcess, false, Some(42)))
        );
        assert_eq!(
            parse(&["--pid=7", "-a"]),
            Ok(text(View::Full, false, Some(7)))
        );
        assert_eq!(parse(&["--proto"]), Ok(DumpRequest::Proto));
        assert_eq!(parse(&["-h"]), Ok(DumpRequest::Help));
        assert_eq!(parse(&["-a", "--help"]), Ok(DumpRequest::Help));
        // Owned strings, as rsbinder passes them.
        assert_eq!(
            parse(&["-a".to_string()]),
            Ok(text(View::Full, false, None))
        );
    }

    #[test]
    fn errors_are_one_line_and_list_accepted_arguments() {
        for (args, needle) in [
            (vec!["--bogus"], "unknown argument '--bogus'"),
            (vec!["-a", "-b"], "-a and -b cannot be combined"),
            (vec!["--pid"], "--pid needs a process id"),
            (vec!["--pid", "x"], "got 'x'"),
            (vec!["--pid", "0"], "got '0'"),
            (vec!["-o", "json"], "unsupported output format 'json'"),
            (vec!["-o"], "-o needs a format"),
            (vec!["--proto", "-a"], "--proto writes the whole report"),
            (
                vec!["--prometheus", "-a"],
                "--prometheus writes the metrics",
            ),
            (vec!["-x"], "unknown argument '-x'"),
            (vec!["-b", "--pid", "3"], "not -b"),
        ] {
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(e.ends_with(ACCEPTED), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn help_lists_every_argument() {
        for a in [
            "-a",
            "-b",
            "--csv",
            "-o csv",
            "--pid N",
            "--proto",
            "--prometheus",
            "-h, --help",
        ] {
            assert!(HELP.contains(a), "{a}");
        }
    }
}
