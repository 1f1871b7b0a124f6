//! App processes: this binary re-executed under an app uid as
//! `vts --app ROLE ARGS...`. A role (see `cases::app_role`) does its part of
//! a case inside the app and prints its result on stdout; a failed role
//! exits non-zero with the reason on stderr.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};

/// The app uids of the VM (rsb_hub's policy lets them find the service).
pub const APP_A: u32 = 10001;
pub const APP_B: u32 = 10002;
/// An app uid with a tiny quota in the VM's dmabufd config.
pub const APP_SMALL_QUOTA: u32 = 10003;
/// The load case's app uids: LOAD_FIRST_UID .. LOAD_FIRST_UID + LOAD_APPS,
/// one per app (run.sh adds them to the VM's copy of the rsb_hub policy).
pub const LOAD_FIRST_UID: u32 = 10100;
pub const LOAD_APPS: u32 = 16;

/// What an app role returns: the line to print, or why it failed.
pub type RoleResult = Result<String, String>;
pub type Role = fn(&[&str]) -> RoleResult;

/// Runs `vts --app ROLE ARGS...` as `uid` (and gid `uid`) to completion and
/// returns its stdout, trimmed; a failed role is an error with its stderr.
pub fn run_as(uid: u32, role: &str, args: &[&str]) -> Result<String, String> {
    let child = command_as(uid, role, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning app {role} as uid {uid}: {e}"))?;
    finish(child, uid, role)
}

/// Waits for an app started with piped stdout/stderr and judges it like [`run_as`].
pub fn finish(child: Child, uid: u32, role: &str) -> Result<String, String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for app {role}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "app {role} as uid {uid} failed ({}): {} {stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(stdout)
}

/// Starts `cmd` with piped stdio and waits for its first line, `ready`.
/// Any other line (or none) kills it and is an error carrying its stderr.
pub fn start_ready(mut cmd: Command, what: &str) -> Result<Child, String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {what}: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        return Err(format!(
            "{what} not ready: {line:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(child)
}

/// The command that starts an app process for `role` as `uid`.
pub fn command_as(uid: u32, role: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.arg("--app").arg(role).args(args).uid(uid).gid(uid);
    cmd
}

/// Entry point of `vts --app ROLE ARGS...`.
pub fn main(args: &[String]) -> ExitCode {
    let Some(role) = args.first() else {
        eprintln!("vts --app: missing role");
        return ExitCode::from(2);
    };
    let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let Some(run) = crate::cases::app_role(role).or_else(|| {
        crate::bench::roles()
            .into_iter()
            .find(|(n, _)| n == role)
            .map(|(_, r)| r)
    }) else {
        eprintln!("vts --app: unknown role {role}");
        return ExitCode::from(2);
    };
    match run(&rest) {
        Ok(line) => {
            println!("{line}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}
