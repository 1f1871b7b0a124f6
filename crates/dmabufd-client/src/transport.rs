//! How a client finds the service: the RPC socket named by DMABUFD_SOCKET
//! or the default one, or kernel binder where a binder device exists.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rsbinder::rpc::FileDescriptorTransportMode;
use rsbinder::{Client, Endpoint, Strong, Uri};

use crate::aidl::vendor::dmabuf::IDmaBufAllocator::IDmaBufAllocator;
use crate::SERVICE_NAME;

/// Environment variable naming the RPC socket (service and clients).
pub const SOCKET_ENV: &str = "DMABUFD_SOCKET";
/// The RPC socket when neither --rpc nor DMABUFD_SOCKET says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dmabufd/dmabufd.sock";
/// Binder devices rsbinder opens, in its order.
pub const BINDER_DEVICES: [&str; 2] = ["/dev/binderfs/binder", "/dev/binder"];

/// The binder device the kernel transport would use, if any.
pub fn binder_device() -> Option<&'static str> {
    BINDER_DEVICES.into_iter().find(|p| Path::new(p).exists())
}

/// The RPC socket path: DMABUFD_SOCKET, else the default.
pub fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Opens an RPC session on `path` with Unix fd passing (both ends must ask).
pub fn rpc_client(path: &Path) -> rsbinder::Result<Client> {
    Client::open_with(Endpoint::unix(path), |o, _| {
        o.fd_mode = Some(FileDescriptorTransportMode::Unix)
    })
}

/// Connects to the allocator over RPC.
pub fn connect_rpc(path: &Path) -> rsbinder::Result<Strong<dyn IDmaBufAllocator>> {
    rpc_client(path)?.get::<dyn IDmaBufAllocator>(SERVICE_NAME)
}

/// Connects over kernel binder, waiting up to `wait` for registration.
pub fn connect_kernel(wait: Duration) -> rsbinder::Result<Strong<dyn IDmaBufAllocator>> {
    let client = Client::open(Uri::kernel())?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(s) = client.try_get::<dyn IDmaBufAllocator>(SERVICE_NAME)? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(rsbinder::StatusCode::NameNotFound);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
