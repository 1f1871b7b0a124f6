//! The client's connection to dmabufd, which survives a restart of the
//! service: rsbinder's [`Reconnecting`] notices a dead connection (RPC
//! session ended or peer closed; kernel binder death notification) and
//! reconnects in the background with backoff. On top of it this module
//! decides what a failed call means:
//!
//! - a call that may run twice (getHeaps, the reports) is sent once more
//!   on the new connection;
//! - a call that must not (allocate, allocateBatch) is sent again only when
//!   it provably was never sent (no connection when it was made); when the
//!   connection broke while it was in flight it fails with
//!   [`ErrorKind::ServiceRestarted`]: whatever the old service made for it
//!   died with that process (the fd never reached this one), and the
//!   connection is back, so the caller may simply retry.

use std::cell::Cell;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rsbinder::reconnect::ReconnectPolicy;
use rsbinder::rpc::FileDescriptorTransportMode;
use rsbinder::{Endpoint, ExceptionCode, Reconnecting, Status, StatusCode, Strong, Uri};

use super::{Error, ErrorKind, Result};
use crate::aidl::vendor::dmabuf::IDmaBufAllocator::IDmaBufAllocator;
use crate::SERVICE_NAME;

/// The longest a failed call waits for the service to come back before it
/// gives up ([`ErrorKind::Unavailable`]).
pub const RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// How long [`Connection::kernel`] waits for the service to be registered.
const KERNEL_REGISTRATION_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Connection {
    helper: Reconnecting<dyn IDmaBufAllocator>,
    /// "unix:/run/dmabufd/dmabufd.sock" or "kernel binder", for messages.
    target: String,
    /// The proxy last handed out, for [`Connection::proxy`] while no
    /// connection is up (its calls then fail as the dead connection's do).
    last: Mutex<Strong<dyn IDmaBufAllocator>>,
}

/// Backoff between reconnect attempts: 10 ms doubling up to 500 ms, so a
/// service restarted by its supervisor is found within half a second.
fn policy() -> ReconnectPolicy {
    let mut p = ReconnectPolicy::default();
    p.initial = Duration::from_millis(10);
    p.max = Duration::from_millis(500);
    p.call_wait = RECONNECT_WAIT;
    p
}

impl Connection {
    /// Connects over RPC binder on the Unix socket `path` (fd passing on).
    /// Fails at once when nothing answers there now.
    pub fn rpc(path: &Path) -> Result<Connection> {
        let target = format!("unix:{}", path.display());
        let absolute = std::path::absolute(path).map_err(|e| {
            Error::local(
                ExceptionCode::IllegalArgument,
                format!("socket path {}: {e}", path.display()),
            )
        })?;
        let helper = Reconnecting::<dyn IDmaBufAllocator>::builder(
            Endpoint::unix(absolute).with_service(SERVICE_NAME),
        )
        .options(|o, _| o.fd_mode = Some(FileDescriptorTransportMode::Unix))
        .policy(policy())
        .build()
        .map_err(|e| unreachable_at(&target, e))?;
        // build() made one attempt; a failed one keeps retrying in the
        // background, but a client connecting to nothing should hear so now.
        let proxy = helper.current().map_err(|_| {
            unreachable_at(
                &target,
                helper.last_error().unwrap_or(StatusCode::DeadObject),
            )
        })?;
        Ok(Connection {
            helper,
            target,
            last: Mutex::new(proxy),
        })
    }

    /// Connects over kernel binder, waiting up to 5 s for the service to be
    /// registered with the service manager.
    pub fn kernel(name: &str) -> Result<Connection> {
        let target = format!("{name} over kernel binder");
        let helper =
            Reconnecting::<dyn IDmaBufAllocator>::builder(Uri::kernel().with_service(name))
                .policy(policy())
                .build()
                .map_err(|e| unreachable_at(&target, e))?;
        let proxy = helper
            .wait_connected(Some(KERNEL_REGISTRATION_WAIT))
            .map_err(|e| unreachable_at(&target, e))?;
        Ok(Connection {
            helper,
            target,
            last: Mutex::new(proxy),
        })
    }

    /// The current proxy (the last one while reconnecting).
    pub fn proxy(&self) -> Strong<dyn IDmaBufAllocator> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(p) = self.helper.current() {
            *last = p;
        }
        last.clone()
    }

    /// How many times this connection has been made (1, then one more per
    /// reconnect).
    pub fn generation(&self) -> u64 {
        self.helper.generation()
    }

    /// Runs a call that may safely run twice: when the connection is lost
    /// (before or during the call) it waits for the reconnect and sends the
    /// call once more.
    pub fn idempotent<R, E: Into<Error>>(
        &self,
        f: impl Fn(&Strong<dyn IDmaBufAllocator>) -> std::result::Result<R, E>,
    ) -> Result<R> {
        let call = |s: &Strong<dyn IDmaBufAllocator>| f(s).map_err(Into::into);
        match self.helper.with(call) {
            Err(e) if e.kind() == ErrorKind::Transport => {
                self.wait_connected(e.message())?;
                self.helper.with(call).map_err(|e| self.classify(e))
            }
            r => r,
        }
    }

    /// Runs a call that must not run twice (it allocates). Sent again only
    /// when it was never sent; when the connection broke while it was in
    /// flight: [`ErrorKind::ServiceRestarted`] once the connection is back.
    pub fn at_most_once<R>(
        &self,
        what: &str,
        f: impl Fn(&Strong<dyn IDmaBufAllocator>) -> std::result::Result<R, Status>,
    ) -> Result<R> {
        // Set when the call goes out, to the connection it goes out on.
        let sent: Cell<Option<u64>> = Cell::new(None);
        let call = |s: &Strong<dyn IDmaBufAllocator>| {
            sent.set(Some(self.generation()));
            f(s)
        };
        match self.helper.with(call) {
            Err(s) if is_transport_failure(&s) && sent.get().is_none() => {
                // No connection when the call was made: nothing was sent.
                self.wait_connected(&format!("{:?}", s.transaction_error()))?;
                match self.helper.with(call) {
                    Err(s) if is_transport_failure(&s) => match sent.get() {
                        Some(gen) => Err(self.broke_during(what, gen, s)),
                        None => Err(self.classify(s.into())),
                    },
                    r => r.map_err(|s| self.classify(s.into())),
                }
            }
            Err(s) if is_transport_failure(&s) => {
                Err(self.broke_during(what, sent.get().unwrap_or_default(), s))
            }
            r => r.map_err(Error::from),
        }
    }

    /// `what`, sent on connection `gen`, failed in the transport: when
    /// that connection was lost, wait for the service to come back and say
    /// so.
    fn broke_during(&self, what: &str, gen: u64, s: Status) -> Error {
        if let Err(e) = self.wait_connected(&format!("{:?}", s.transaction_error())) {
            return e;
        }
        if self.generation() == gen {
            // The same connection still answers: the transport refused this
            // call itself; the service never saw it.
            return Error::new(
                ErrorKind::Transport,
                ExceptionCode::TransactionFailed,
                format!(
                    "{what} to dmabufd at {} failed in the binder transport ({:?})",
                    self.target,
                    s.transaction_error()
                ),
            );
        }
        Error::new(
            ErrorKind::ServiceRestarted,
            ExceptionCode::TransactionFailed,
            format!(
                "dmabufd at {} restarted (or its connection broke) during {what} \
                 ({:?}); nothing was handed to this process and whatever the old \
                 service made for the call died with it; the connection is back: retry",
                self.target,
                s.transaction_error()
            ),
        )
    }

    /// Waits up to [`RECONNECT_WAIT`] for a connection; `cause` says what
    /// failed and made the call wait.
    fn wait_connected(&self, cause: &str) -> Result<()> {
        match self.helper.wait_connected(Some(RECONNECT_WAIT)) {
            Ok(p) => {
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = p;
                Ok(())
            }
            Err(e) => Err(Error::new(
                ErrorKind::Unavailable,
                ExceptionCode::TransactionFailed,
                format!(
                    "dmabufd at {} is gone ({cause}) and did not come back within {} ms ({e:?})",
                    self.target,
                    RECONNECT_WAIT.as_millis()
                ),
            )),
        }
    }

    /// A second failure after a reconnect: a transport failure now means
    /// the service is unavailable.
    fn classify(&self, e: Error) -> Error {
        if e.kind() == ErrorKind::Transport {
            Error::new(
                ErrorKind::Unavailable,
                ExceptionCode::TransactionFailed,
                format!(
                    "dmabufd at {} failed the call again after reconnecting ({})",
                    self.target,
                    e.message()
                ),
            )
        } else {
            e
        }
    }
}

/// A failure of the binder transport, not an answer of the service: the
/// service answers with a service-specific error or a binder exception; a
/// dead or broken connection (or a parcel the transport refused) gives a
/// transaction failure with the local status code. Which of those it was
/// shows afterwards, in whether the connection was replaced.
fn is_transport_failure(s: &Status) -> bool {
    s.exception_code() == ExceptionCode::TransactionFailed
}

fn unreachable_at(target: &str, e: StatusCode) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        ExceptionCode::TransactionFailed,
        format!("cannot reach dmabufd at {target}: {e:?}"),
    )
}
