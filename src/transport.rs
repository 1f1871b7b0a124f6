//! Which binder transport to use, and how to reach the service on it:
//! kernel binder (registered with the service manager) where a binder
//! device exists, else RPC binder over a Unix socket with fd passing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rsbinder::{Client, SIBinder, Strong, Uri};

pub use dmabufd_client::transport::*;

use crate::memtrack_aidl::android::hardware::memtrack::IMemtrack::IMemtrack;
use crate::SERVICE_NAME;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Kernel,
    Rpc(PathBuf),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Kernel => write!(f, "kernel binder (service manager, {SERVICE_NAME})"),
            Transport::Rpc(p) => write!(f, "RPC binder on unix:{}", p.display()),
        }
    }
}

/// Picks the transport: an explicit socket wins; else kernel binder when a
/// device exists (or is demanded); else RPC on the default socket. The
/// second value explains a fallback for the start-up message.
pub fn choose(rpc: Option<PathBuf>, force_kernel: bool) -> (Transport, Option<String>) {
    if let Some(p) = rpc {
        return (Transport::Rpc(p), None);
    }
    if force_kernel || binder_device().is_some() {
        return (Transport::Kernel, None);
    }
    let sock = default_socket();
    let why = format!(
        "no binder driver ({} absent); serving RPC binder instead",
        BINDER_DEVICES.join(", ")
    );
    (Transport::Rpc(sock), Some(why))
}

/// Removes a socket at `path` that nobody listens on (left by a service
/// that died). Anything else there is refused, never deleted: a live
/// socket, and any file that is not a socket (`--rpc /etc/dmabufd.toml`
/// must not delete the config).
pub fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket ({}); refusing to replace it: \
                 pass a free path or the path of a stale dmabufd socket",
                path.display(),
                file_type_name(&meta.file_type())
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by a running service", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

fn file_type_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device node"
    } else {
        "not a socket"
    }
}

/// Serves `binder` over RPC at `path` (fd passing on). Replaces a stale
/// socket (nothing else), creates the directory, and lets any local user
/// connect: who may do what is decided per call from the peer's uid, and
/// how many connections each uid may hold by the gate in front of
/// rsbinder ([`crate::rpc_gate`], limits from the config's `[rpc]`).
/// `extra` are further named services on the same socket (the memtrack
/// HAL): rsbinder's RPC server publishes a directory of names, which
/// clients pick from with `Client::get(name)`.
pub fn serve_rpc(
    path: &Path,
    binder: SIBinder,
    extra: Vec<(&'static str, SIBinder)>,
    limits: &crate::config::RpcConfig,
    privileged: Vec<u32>,
) -> std::io::Result<crate::rpc_gate::RpcGuard> {
    use std::os::unix::fs::PermissionsExt;
    crate::service::install_oneway_guard();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    remove_stale_socket(path)?;
    let mut services = vec![(SERVICE_NAME, binder)];
    services.extend(extra);
    let guard = crate::rpc_gate::serve(path, services, limits, privileged)
        .map_err(|e| std::io::Error::other(format!("RPC server on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(guard)
}

/// Registers `binder` with the service manager as `name` (the allocator's
/// [`crate::service_name`] of the configured instance) and serves on the
/// binder thread pool; returns once registered.
pub fn serve_kernel(binder: SIBinder, name: &str) -> std::io::Result<rsbinder::ServerGuard> {
    crate::service::install_oneway_guard();
    rsbinder::serve(Uri::kernel())
        .and_then(|s| s.add(name, binder))
        .and_then(|s| s.spawn())
        .map_err(|e| std::io::Error::other(format!("kernel binder: {e:?}")))
}

/// Registers a further service with the service manager, once
/// [`serve_kernel`] has started the binder thread pool.
pub fn add_kernel_service(name: &str, binder: SIBinder) -> std::io::Result<()> {
    rsbinder::hub::add_service(name, binder)
        .map_err(|e| std::io::Error::other(format!("service manager refused {name}: {e}")))
}

/// Connects to the memtrack HAL over kernel binder, waiting up to `wait`.
pub fn connect_memtrack_kernel(wait: Duration) -> rsbinder::Result<Strong<dyn IMemtrack>> {
    let client = Client::open(Uri::kernel())?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(s) = client.try_get::<dyn IMemtrack>(crate::MEMTRACK_SERVICE_NAME)? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(rsbinder::StatusCode::NameNotFound);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to the memtrack HAL over RPC (the same socket as the allocator).
pub fn connect_memtrack_rpc(path: &Path) -> rsbinder::Result<Strong<dyn IMemtrack>> {
    rpc_client(path)?.get::<dyn IMemtrack>(crate::MEMTRACK_SERVICE_NAME)
}
