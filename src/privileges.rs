//! Dropping root once the heap devices are open.
//!
//! Started as root (the systemd unit), the service opens /dev/dma_heap/* and
//! /dev/udmabuf, then calls [`drop_privileges`] to become the configured
//! service user (`[service] user`/`group`, 1100 in the shipped config). It
//! keeps exactly one capability, CAP_SYS_PTRACE: reading another uid's
//! /proc/<pid>/fdinfo and /proc/<pid>/maps is a PTRACE_MODE_READ access, and
//! those files are where per-process DMA-BUF rss/pss come from. It keeps no
//! CAP_DAC_READ_SEARCH, so /proc/<pid>/fd of other uids stays closed: report
//! code must take buffer identities from fdinfo (`ino:`), not from fd links.
//!
//! Started by Android's init, the service is never root (the rc file sets
//! `user system` and `capabilities SYS_PTRACE`) and this is a no-op that says
//! so.
//!
//! Call it before any other thread exists (before the tokio runtime or the
//! binder thread pool): uid changes reach every thread, but capability sets
//! are per thread, so threads started earlier would end up with a different
//! set than the one reported. It refuses to run in a multi-threaded process.

use std::collections::HashSet;
use std::fmt;
use std::io;

use caps::{CapSet, Capability};
use nix::unistd::{getegid, geteuid, getgid, getuid, setgroups, setresgid, setresuid, Gid, Uid};

/// The capabilities the service keeps after the drop in procfs mode (to
/// read other processes' fdinfo and maps). With the BPF scan source it
/// keeps none: the iterators loaded as root stay readable.
pub const KEPT_CAPABILITIES: &[Capability] = &[Capability::CAP_SYS_PTRACE];

/// What [`drop_privileges`] did, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivilegeDrop {
    /// Not started as root: nothing to drop, nothing changed.
    NotRoot { uid: u32, euid: u32 },
    /// Now running as uid/gid with no supplementary groups and only `kept`
    /// (capability names, e.g. "CAP_SYS_PTRACE") in the permitted,
    /// effective and bounding sets.
    Dropped {
        uid: u32,
        gid: u32,
        kept: Vec<String>,
    },
}

impl PrivilegeDrop {
    /// Names of the capabilities held afterwards (empty when not root: the
    /// process keeps whatever it was started with and is not root).
    pub fn kept(&self) -> &[String] {
        match self {
            PrivilegeDrop::NotRoot { .. } => &[],
            PrivilegeDrop::Dropped { kept, .. } => kept,
        }
    }
}

impl fmt::Display for PrivilegeDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeDrop::NotRoot { uid, euid } => write!(
                f,
                "not started as root (uid {uid}, euid {euid}): privileges left as they are"
            ),
            PrivilegeDrop::Dropped { uid, gid, kept } => write!(
                f,
                "dropped root: now uid {uid} gid {gid}, no supplementary groups, keeping {}",
                if kept.is_empty() {
                    "no capabilities".to_string()
                } else {
                    kept.join(", ")
                }
            ),
        }
    }
}

/// Switches from root to `uid`/`gid`, keeping only `keep` (the scan
/// source's needs: [`KEPT_CAPABILITIES`] for procfs, nothing for BPF).
///
/// When the process is not root, does nothing and returns
/// [`PrivilegeDrop::NotRoot`]. Refuses uid or gid 0 (that would drop
/// nothing while reporting a drop) and a process with more than one thread.
/// After it returns `Dropped` the process cannot regain root: real, effective
/// and saved ids are all changed and the bounding set no longer holds
/// CAP_SETUID/CAP_SETGID/CAP_SETPCAP.
pub fn drop_privileges(uid: u32, gid: u32, keep: &[Capability]) -> io::Result<PrivilegeDrop> {
    if !geteuid().is_root() {
        return Ok(PrivilegeDrop::NotRoot {
            uid: getuid().as_raw(),
            euid: geteuid().as_raw(),
        });
    }
    if uid == 0 || gid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to drop privileges to uid/gid 0; configure a service user",
        ));
    }
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "drop_privileges must run before other threads start ({threads} threads running): \
             capability sets are per thread"
        )));
    }
    drop_current_thread(uid, gid, keep)
}

/// The drop itself, for the calling thread. Public to the crate so the tests
/// can run it inside libtest's worker thread (libtest never runs a test on
/// the main thread, so the process always has two threads there).
pub(crate) fn drop_current_thread(
    uid: u32,
    gid: u32,
    keep: &[Capability],
) -> io::Result<PrivilegeDrop> {
    let kept: HashSet<Capability> = keep.iter().copied().collect();

    // Bounding set first, while CAP_SETPCAP is still effective. Every
    // capability the kernel knows that we do not keep goes, so nothing this
    // process execs can get it back from file capabilities.
    let supported = caps::runtime::thread_all_supported();
    for cap in caps::read(None, CapSet::Bounding).map_err(caps_err)? {
        if !kept.contains(&cap) && supported.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
        }
    }

    // Without KEEPCAPS, leaving uid 0 clears the permitted set entirely.
    caps::securebits::set_keepcaps(true).map_err(caps_err)?;

    // Groups before ids: setgroups needs CAP_SETGID, gone once we are 1100.
    setgroups(&[]).map_err(io::Error::from)?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    setresgid(g, g, g).map_err(io::Error::from)?;
    setresuid(u, u, u).map_err(io::Error::from)?;

    // The uid change emptied the effective set and left the old permitted
    // set; narrow both to what we keep, and make sure nothing is inherited
    // or ambient.
    caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err)?;
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err)?;
    caps::securebits::set_keepcaps(false).map_err(caps_err)?;
    // Nothing this process could exec may gain privileges, whoever started
    // it (not only under the systemd unit's NoNewPrivileges=).
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;

    // Report what the kernel says we hold, not what we asked for.
    if getuid() != u || geteuid() != u || getgid() != g || getegid() != g {
        return Err(io::Error::other("uid/gid did not change as requested"));
    }
    let effective = caps::read(None, CapSet::Effective).map_err(caps_err)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err)?;
    if effective != kept || permitted != kept {
        return Err(io::Error::other(format!(
            "capability sets after the drop are not the kept set: effective {effective:?}, \
             permitted {permitted:?}"
        )));
    }
    Ok(PrivilegeDrop::Dropped {
        uid,
        gid,
        kept: names(&effective),
    })
}

fn names(set: &HashSet<Capability>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

fn caps_err(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(format!("capabilities: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Says on stderr, past libtest's capture, that the root part of a test
    /// did not run.
    fn skipped(test: &str) {
        use std::io::Write;
        let _ = writeln!(io::stderr(), "{test}: skipped: needs root; CI runs as root");
    }

    /// Env var that turns the `child_*` helpers on in a re-executed test binary.
    const CHILD_ENV: &str = "DMABUFD_PRIVILEGES_CHILD";
    const SERVICE_ID: u32 = 1100;

    #[test]
    fn keeps_only_sys_ptrace() {
        assert_eq!(KEPT_CAPABILITIES, &[Capability::CAP_SYS_PTRACE]);
        // Bit 19, the one CapEff/CapPrm must show after the drop.
        assert_eq!(Capability::CAP_SYS_PTRACE.bitmask(), 1 << 19);
    }

    #[test]
    fn start_up_messages_say_what_was_kept() {
        let dropped = PrivilegeDrop::Dropped {
            uid: 1100,
            gid: 1100,
            kept: vec!["CAP_SYS_PTRACE".into()],
        };
        assert_eq!(
            dropped.to_string(),
            "dropped root: now uid 1100 gid 1100, no supplementary groups, keeping CAP_SYS_PTRACE"
        );
        assert_eq!(dropped.kept(), ["CAP_SYS_PTRACE".to_string()]);
        let not_root = PrivilegeDrop::NotRoot {
            uid: 1000,
            euid: 1000,
        };
        assert!(not_root.to_string().contains("not started as root"));
        assert!(not_root.kept().is_empty());
    }

    #[test]
    fn refuses_root_as_target_or_multithreaded_when_root() {
        if !geteuid().is_root() {
            // The checks below only run as root; as non-root it is a no-op.
            skipped("refuses_root_as_target_or_multithreaded_when_root");
            let r = drop_privileges(0, 0, KEPT_CAPABILITIES).unwrap();
            assert!(matches!(r, PrivilegeDrop::NotRoot { .. }));
            return;
        }
        let e = drop_privileges(0, SERVICE_ID, KEPT_CAPABILITIES).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // With a second thread alive the call must refuse before changing
        // anything (the extra thread makes sure of it whatever libtest does).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let result = drop_privileges(SERVICE_ID, SERVICE_ID, KEPT_CAPABILITIES);
        drop(tx);
        other.join().unwrap().unwrap_err();
        let e = result.unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
        assert!(geteuid().is_root(), "a refused drop changed the uid");
    }

    /// Runs the drop in a fresh copy of this test binary (so this process
    /// stays root) and checks from the child's own /proc/thread-self/status
    /// exactly what it kept.
    #[test]
    fn root_drop_keeps_exactly_sys_ptrace() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privileges::tests::child_drop_and_report",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("child printed no {name}: {stdout}"))
                .trim()
                .to_string()
        };
        if !geteuid().is_root() {
            skipped("root_drop_keeps_exactly_sys_ptrace");
            assert!(field("RESULT").starts_with("not started as root"));
            return;
        }
        let id = SERVICE_ID.to_string();
        let ids = [id.as_str(); 4].join("\t");
        assert_eq!(field("Uid"), ids);
        assert_eq!(field("Gid"), ids);
        assert_eq!(field("Groups"), "");
        let ptrace = format!("{:016x}", 1u64 << 19);
        assert_eq!(field("CapPrm"), ptrace);
        assert_eq!(field("CapEff"), ptrace);
        assert_eq!(field("CapBnd"), ptrace);
        assert_eq!(field("CapInh"), "0000000000000000");
        assert_eq!(field("CapAmb"), "0000000000000000");
        // Set by the drop itself, not only by the systemd unit.
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(
            field("RESULT"),
            "dropped root: now uid 1100 gid 1100, no supplementary groups, keeping CAP_SYS_PTRACE"
        );
        // What the capability is for: another uid's fdinfo and maps are
        // readable, its fd directory (DAC, not ptrace) is not.
        assert_eq!(field("PARENT_FDINFO"), "ok");
        assert_eq!(field("PARENT_MAPS"), "ok");
        assert_eq!(field("PARENT_FD_DIR"), "denied");
        // Once dropped, a second call finds no root to drop.
        assert!(field("SECOND").starts_with("not started as root (uid 1100, euid 1100)"));
    }

    /// Child side of `root_drop_keeps_exactly_sys_ptrace`; does nothing
    /// unless re-executed by it.
    #[test]
    #[ignore = "helper: run by root_drop_keeps_exactly_sys_ptrace in a child process"]
    fn child_drop_and_report() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let result = if geteuid().is_root() {
            drop_current_thread(SERVICE_ID, SERVICE_ID, KEPT_CAPABILITIES).unwrap()
        } else {
            drop_privileges(SERVICE_ID, SERVICE_ID, KEPT_CAPABILITIES).unwrap()
        };
        // Leading newline: libtest prints "test <name> ... " without one.
        println!("\nRESULT: {result}");
        // This thread's own view: capability sets are per thread.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        for line in status.lines() {
            let key = line.split(':').next().unwrap_or("");
            if [
                "Uid",
                "Gid",
                "Groups",
                "CapInh",
                "CapPrm",
                "CapEff",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
            ]
            .contains(&key)
            {
                println!("{line}");
            }
        }
        let parent = nix::unistd::getppid();
        let probe = |path: String| match std::fs::read_dir(&path) {
            Ok(_) => "ok",
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => "denied",
            Err(e) => panic!("{path}: {e}"),
        };
        println!("PARENT_FDINFO: {}", probe(format!("/proc/{parent}/fdinfo")));
        let maps = match std::fs::read_to_string(format!("/proc/{parent}/maps")) {
            Ok(m) if !m.is_empty() => "ok",
            Ok(_) => "empty",
            Err(_) => "denied",
        };
        println!("PARENT_MAPS: {maps}");
        println!("PARENT_FD_DIR: {}", probe(format!("/proc/{parent}/fd")));
        println!(
            "SECOND: {}",
            drop_privileges(SERVICE_ID, SERVICE_ID, KEPT_CAPABILITIES).unwrap()
        );
    }
}
