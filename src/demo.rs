//! `dmabufd --demo`: the service on the embedded defaults (RPC transport,
//! whatever heaps the machine has, memfd where none) with a scripted
//! workload of real client processes, then the service's dump.
//!
//! Roles run as separate processes (`dmabufd --demo-app ROLE ...`): a camera
//! allocates named frames and passes two to a viewer over a Unix socket, a
//! launcher makes small icons, a careless app sends bad requests.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};

use crate::client::Allocator;
use crate::config::Config;
use crate::daemon;
use crate::sys::{self, SyncDirection};
use crate::transport::Transport;

const HOLDING: &str = "holding";

pub fn run() -> ExitCode {
    match run_demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

struct App {
    role: &'static str,
    child: Child,
    out: BufReader<ChildStdout>,
}

impl App {
    /// Starts `role`; as root, under its own app uid so reports show
    /// owners and holders as different users.
    fn spawn(role: &'static str, uid: u32, args: &[&Path]) -> Result<App, String> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        if nix::unistd::geteuid().is_root() {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd
            .arg("--demo-app")
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {role}: {e}"))?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(App { role, child, out })
    }

    /// Relays the app's lines until it says it is holding its buffers.
    fn wait_holding(&mut self) -> Result<(), String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("{} exited early", self.role));
            }
            if line.trim_end() == HOLDING {
                return Ok(());
            }
            print!("  [{} {}] {line}", self.role, self.child.id());
        }
    }

    /// Closes its stdin (the signal to release everything) and waits.
    fn finish(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        while self.out.read_line(&mut rest).map_err(|e| e.to_string())? > 0 {
            print!("  [{} {}] {rest}", self.role, self.child.id());
            rest.clear();
        }
        let st = self.child.wait().map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or(format!("{} failed: {st}", self.role))
    }
}

fn run_demo() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("dmabufd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // App processes (other uids when run as root) bind their sockets here.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    let result = demo_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path) -> Result<(), String> {
    let sock = dir.join("dmabufd.sock");
    let config =
        Config::parse("[aliases]\ncamera = \"system\"\n[heaps]\ndefault_max_size = \"64M\"\n")
            .map_err(|e| e.to_string())?;
    println!(
        "== dmabufd demo: starting the service on RPC binder (unix:{})",
        sock.display()
    );
    let running = daemon::start_with(config, Transport::Rpc(sock.clone()), None)?;
    let client = Allocator::connect_rpc(&sock).map_err(|e| e.to_string())?;
    for h in client.heaps().map_err(|e| e.to_string())? {
        println!(
            "   heap {:<16} kind {} max {} bytes aliases {:?}",
            h.name,
            crate::client::heap_kind_name(h.kind),
            h.maxAllocationSize,
            h.aliases
        );
    }

    println!("== apps: a viewer, a camera passing it two frames, a launcher with icons");
    let viewer_sock = dir.join("viewer.sock");
    let mut viewer = App::spawn("viewer", 10002, &[&sock, &viewer_sock])?;
    viewer.wait_holding()?; // listening
    let mut camera = App::spawn("camera", 10001, &[&sock, &viewer_sock])?;
    camera.wait_holding()?;
    viewer.wait_holding()?; // received and checked the frames
    let mut launcher = App::spawn("launcher", 10003, &[&sock])?;
    launcher.wait_holding()?;

    println!("== a careless app: every refusal names what was wrong and what is allowed");
    let careless = App::spawn("careless", 10004, &[&sock])?;
    careless.finish()?;

    println!(
        "== the service's dump as a bugreport gets it (`dmabufctl dump -a`): who allocated \
         (Owner) next to who holds, per process, then buffers by process, then per buffer"
    );
    print_dump(&running, &["-a"])?;
    let cam = camera.child.id() as i32;
    println!(
        "== the camera's own figures (getProcessMemory({cam}), `dmabufctl report --pid {cam}`)"
    );
    let m = client.process_memory(cam).map_err(|e| e.to_string())?;
    println!(
        "   {}:{} rss {} kB, pss {} kB (two frames shared with the viewer), hwm {} kB, {} buffers",
        m.name,
        m.pid,
        m.rssBytes / 1024,
        m.pssBytes / 1024,
        m.hwmBytes / 1024,
        m.buffers.len()
    );

    println!("== apps exit; their buffers go with them");
    for app in [camera, viewer, launcher] {
        app.finish()?;
    }
    println!("== demo finished");
    Ok(())
}

fn print_dump(running: &daemon::Running, args: &[&str]) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut out = Vec::new();
    running
        .service
        .render_dump(&mut out, &args)
        .map_err(|e| e.to_string())?;
    std::io::stdout().write_all(&out).map_err(|e| e.to_string())
}

/// Entry point of a demo app process: `--demo-app ROLE SOCKET [PEER]`.
pub fn app_main(args: &[String]) -> ExitCode {
    let role = args.first().map(String::as_str).unwrap_or("");
    // Reports show processes by command name: show the role, not "dmabufd".
    if let Ok(name) = std::ffi::CString::new(role) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let sock = PathBuf::from(args.get(1).cloned().unwrap_or_default());
    let peer = args.get(2).map(PathBuf::from);
    let r = match (role, peer) {
        ("camera", Some(p)) => camera(&sock, &p),
        ("viewer", Some(p)) => viewer(&p),
        ("launcher", _) => launcher(&sock),
        ("careless", _) => careless(&sock),
        _ => Err(format!("unknown demo app {args:?}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Holds everything until the parent closes stdin.
fn hold() {
    println!("{HOLDING}");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

fn camera(sock: &Path, viewer: &Path) -> Result<(), String> {
    let a = Allocator::connect_rpc(sock).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    for i in 0..3u8 {
        let mut b = a
            .allocate("camera", 1 << 20, &format!("cam-preview-{i}"))
            .map_err(|e| e.to_string())?;
        {
            let mut m = b.map(SyncDirection::Write).map_err(|e| e.to_string())?;
            m.fill(0x10 + i).map_err(|e| e.to_string())?;
        }
        println!(
            "allocated {:?} from heap {} (alias camera): {} bytes, inode {}",
            b.name().unwrap_or_default(),
            b.heap(),
            b.size(),
            b.inode()
        );
        frames.push(b);
    }
    let s = UnixStream::connect(viewer).map_err(|e| format!("connect viewer: {e}"))?;
    sys::send_fds(s.as_fd(), b"frames", &[frames[0].fd(), frames[1].fd()])
        .map_err(|e| e.to_string())?;
    println!("passed cam-preview-0 and cam-preview-1 to the viewer");
    hold();
    Ok(())
}

fn viewer(listen: &Path) -> Result<(), String> {
    let l = UnixListener::bind(listen).map_err(|e| e.to_string())?;
    {
        // The camera runs under another uid.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| e.to_string())?;
    }
    println!("{HOLDING}"); // listening: the camera may connect
    let _ = std::io::stdout().flush();
    let (s, _) = l.accept().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let (_, fds) = sys::recv_fds(s.as_fd(), &mut buf).map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    for fd in fds {
        let mut b = crate::client::DmaBuffer::from_owned_fd(fd).map_err(|e| e.to_string())?;
        let mut first = [0u8];
        b.map(SyncDirection::Read)
            .and_then(|m| m.read_at(0, &mut first))
            .map_err(|e| e.to_string())?;
        let first = first[0];
        println!(
            "received {:?} ({} bytes, inode {}), first byte {first:#04x}",
            b.name().unwrap_or_default(),
            b.size(),
            b.inode()
        );
        held.push(b);
    }
    hold();
    Ok(())
}

fn launcher(sock: &Path) -> Result<(), String> {
    let a = Allocator::connect_rpc(sock).map_err(|e| e.to_string())?;
    let mut icons = Vec::new();
    for i in 0..4 {
        icons.push(
            a.allocate("system", 64 << 10, &format!("icon-{i}"))
                .map_err(|e| e.to_string())?,
        );
    }
    println!("allocated 4 icons of 64 KiB");
    hold();
    Ok(())
}

fn careless(sock: &Path) -> Result<(), String> {
    let a = Allocator::connect_rpc(sock).map_err(|e| e.to_string())?;
    let long = "a-name-that-is-far-too-long-for-dma-buf";
    let tries: [(&str, i64, &str, i32); 4] = [
        ("gpu", 4096, "x", 0),
        ("system", 0, "x", 0),
        ("system", 4096, long, 0),
        ("system", 4096, "x", 0x40),
    ];
    for (heap, size, name, flags) in tries {
        match a.allocate_raw(heap, size, name, flags) {
            Ok(_) => return Err(format!("{heap}/{size}/{name}/{flags} was accepted")),
            Err(e) => println!("refused: {e}"),
        }
    }
    Ok(())
}
