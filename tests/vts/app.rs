//! App processes: this binary re-executed under an app uid as
//! `vts --app ROLE ARGS...`. Each role does one thing and prints its result
//! on stdout for the parent case to judge; the exit status only says whether
//! the role could be carried out at all.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

/// The app uids of the VM (rsb_hub's policy lets them find the service).
pub const APP_A: u32 = 10001;
pub const APP_B: u32 = 10002;

/// Runs `vts --app ROLE ARGS...` as `uid` (and gid `uid`) and returns its
/// stdout, trimmed; a non-zero exit is an error carrying stdout and stderr.
pub fn run_as(uid: u32, role: &str, args: &[&str]) -> Result<String, String> {
    let out = command_as(uid, role, args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawning app {role} as uid {uid}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "app {role} as uid {uid} failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(stdout)
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
    let result = match (role.as_str(), rest.as_slice()) {
        ("open", [path]) => open_device(path),
        ("register", [name]) => register(name),
        _ => Err(format!("unknown role {role} {rest:?}")),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("vts --app {role}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Tries to open `path` read-write; prints `ok` or `errno N`.
fn open_device(path: &str) -> Result<String, String> {
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok("ok".into()),
        Err(e) => Ok(format!("errno {}", e.raw_os_error().unwrap_or(-1))),
    }
}

/// Tries to register a (refusing) allocator under `name` with rsb_hub;
/// prints `ok` or `refused <exception code>`.
fn register(name: &str) -> Result<String, String> {
    rsbinder::ProcessState::init_default().map_err(|e| format!("binder init: {e}"))?;
    match rsbinder::hub::add_service(name, crate::stand_in::new_binder()) {
        Ok(()) => Ok("ok".into()),
        Err(status) => Ok(format!("refused {:?}", status.exception_code())),
    }
}
