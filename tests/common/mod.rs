//! Host test fixture: a real `dmabufd` process serving RPC binder on a
//! private socket, with a config written for the test.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dmabufd::client::Allocator;

pub mod fuzz;
pub mod rng;
#[allow(unused_imports)]
pub use rng::Rng;

/// The `dmabufctl` binary. The CLI is its own package (a client like any
/// app, linking only the client crate), so cargo does not build it for this
/// package's tests: it is built here, once per test binary, in this
/// profile.
pub fn dmabufctl_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = Path::new(env!("CARGO_BIN_EXE_dmabufd")).parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "dmabufctl"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile.file_name().is_some_and(|p| p == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo build -p dmabufctl");
            assert!(status.success(), "building dmabufctl failed");
            let exe = profile.join("dmabufctl");
            assert!(exe.exists(), "cargo built no {}", exe.display());
            exe
        })
        .clone()
}

/// Starts dmabufd on `socket` with `dir/dmabufd.toml`. Its stderr goes to
/// `dir/dmabufd.log` when that file exists ([`Service::start_logged`]),
/// appended across restarts; else to the test's stderr.
fn spawn_service(dir: &Path, socket: &Path, extra: &[String]) -> Child {
    let log = dir.join("dmabufd.log");
    let stderr = if log.exists() {
        Stdio::from(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
    } else {
        Stdio::inherit()
    };
    Command::new(env!("CARGO_BIN_EXE_dmabufd"))
        .arg("--config")
        .arg(dir.join("dmabufd.toml"))
        .arg("--rpc")
        .arg(socket)
        .args(extra)
        .env("DMABUFD_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn dmabufd")
}

pub struct Service {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Command-line arguments after `--config` and `--rpc`.
    pub args: Vec<String>,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Service {
    /// Starts dmabufd with `config` (TOML) and waits until it answers.
    pub fn start(config: &str) -> Service {
        Self::start_with(config, false)
    }

    /// [`start`](Self::start) with the service's stderr (its log, warnings
    /// and up) written to [`log`](Self::log) instead of the test's stderr.
    pub fn start_logged(config: &str) -> Service {
        Self::start_with(config, true)
    }

    /// [`start`](Self::start) with more command-line arguments; `{dir}` in
    /// them is replaced by the service's private directory.
    pub fn start_with_args(config: &str, args: &[&str]) -> Service {
        Self::start_full(config, false, args)
    }

    fn start_with(config: &str, logged: bool) -> Service {
        Self::start_full(config, logged, &[])
    }

    fn start_full(config: &str, logged: bool, args: &[&str]) -> Service {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("dmabufd-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        let cfg = dir.join("dmabufd.toml");
        std::fs::write(&cfg, config).unwrap();
        let socket = dir.join("dmabufd.sock");
        if logged {
            std::fs::File::create(dir.join("dmabufd.log")).unwrap();
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{dir}", &dir.to_string_lossy()))
            .collect();
        let child = spawn_service(&dir, &socket, &args);
        let mut svc = Service {
            child,
            dir,
            socket,
            args,
        };
        svc.wait_until_up();
        svc
    }

    /// `kill -9` of the service, then a new one on the same socket, config
    /// and state directory (what a supervisor does after a crash).
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn_service(&self.dir, &self.socket, &self.args);
        self.wait_until_up();
    }

    /// Waits until the service answers; a service that exits first fails
    /// the test at once, with its exit status (its log says why).
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() && Allocator::connect_rpc(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "dmabufd exited at start-up ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(Instant::now() < deadline, "dmabufd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the service logged so far (only with [`start_logged`](Self::start_logged)).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dmabufd.log")).unwrap_or_default()
    }

    /// Waits up to 10 s for the service's log to contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the service never logged {needle:?}; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn connect(&self) -> Allocator {
        Allocator::connect_rpc(&self.socket).expect("connect")
    }

    /// A dmabufctl command aimed at this service.
    pub fn ctl(&self) -> Command {
        let mut c = Command::new(dmabufctl_exe());
        c.env("DMABUFD_SOCKET", &self.socket)
            .env("DMABUFD_LOG", "warn");
        c
    }

    /// The service process's open fds that are buffers (memfd or dma-buf):
    /// (fd path, link target).
    fn buffer_fd_entries(&self) -> Vec<(PathBuf, String)> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let l = std::fs::read_link(e.path()).ok()?;
                let l = l.to_string_lossy().to_string();
                (l.starts_with("/memfd:") || l.starts_with("/dmabuf:")).then(|| (e.path(), l))
            })
            .collect()
    }

    /// The service process's open fds that are buffers (memfd or dma-buf).
    pub fn buffer_fds(&self) -> Vec<String> {
        self.buffer_fd_entries()
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    /// The inodes of the buffers the service process holds an fd of now.
    pub fn buffer_inodes(&self) -> std::collections::BTreeSet<u64> {
        use std::os::unix::fs::MetadataExt;
        self.buffer_fd_entries()
            .into_iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.ino())
            .collect()
    }

    /// [`buffer_fds`](Self::buffer_fds) once the service's reply threads
    /// have dropped their last reply: the fd travels in the reply parcel,
    /// which is closed just after sending, so a fast client can look before
    /// that. Anything still there after two seconds is kept for real.
    pub fn buffer_fds_settled(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let fds = self.buffer_fds();
            if fds.is_empty() || Instant::now() >= deadline {
                return fds;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What each of the service's fds points at (for failure messages).
    pub fn fd_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The service process's mappings of buffers.
    pub fn buffer_maps(&self) -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid()))
            .unwrap()
            .lines()
            .filter(|l| l.contains("/memfd:") || l.contains("/dmabuf:"))
            .map(str::to_string)
            .collect()
    }

    /// Open fds of the service, leaving out the procfs files its background
    /// scanner holds for a few milliseconds at a time (not a leak).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| !l.starts_with("/proc/"))
                    .unwrap_or(false)
            })
            .count()
    }

    /// The fd count ([`fd_count`](Self::fd_count)) at rest: the lowest of
    /// ten looks 50 ms apart, so a session being torn down (the probe
    /// connection of start-up, a client that just left) is not counted in.
    pub fn resting_fd_count(&self) -> usize {
        (0..10)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.fd_count()
            })
            .min()
            .unwrap()
    }

    /// Waits up to `timeout` for the fd count to be at most `bound` and
    /// returns the last count: the caller asserts on it. Sessions of
    /// clients that left are reaped asynchronously; a leak stays.
    pub fn fds_within(&self, bound: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.fd_count();
            if n <= bound || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `dmabufd --demo-app viewer` listening at `listen`; returns the child
/// and a reader of its stdout, once it is listening.
pub fn spawn_viewer(listen: &Path) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmabufd"))
        .args(["--demo-app", "viewer", "unused"])
        .arg(listen)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding", "viewer not listening: {line}");
    (child, out)
}

/// Passes `buf` to a new viewer process (SCM_RIGHTS) and returns the viewer,
/// still holding it, with the line it printed about what it received.
pub fn pass_to_viewer(svc: &Service, buf: &dmabufd::client::DmaBuffer) -> (Child, String) {
    use std::os::fd::AsFd;
    let listen = svc.dir.join("viewer.sock");
    let (child, mut out) = spawn_viewer(&listen);
    let s = std::os::unix::net::UnixStream::connect(&listen).unwrap();
    dmabufd::sys::send_fds(s.as_fd(), b"x", &[buf.fd()]).unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // Read up to its last line, so that dropping our end of its stdout
    // cannot break a write it has yet to make.
    let mut holding = String::new();
    out.read_line(&mut holding).unwrap();
    assert_eq!(holding.trim(), "holding", "viewer after {line:?}");
    (child, line)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a test that runs clients under other uids can run. When not
/// root it says so on stderr, past libtest's output capture (a skipped test
/// still shows as "ok" there), and the test returns. CI runs as root.
pub fn needs_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs root (to run clients under app uids); run the host tests as root, as CI does"
    );
    false
}
