//! systemd's readiness and watchdog protocol (sd_notify(3)): newline-
//! separated `KEY=VALUE` assignments in one datagram to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//! Used by a `Type=notify` unit: `READY=1` once serving, `STATUS=` free
//! text, `WATCHDOG=1` at least every `$WATCHDOG_USEC`, `STOPPING=1`.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A handle on the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// What `$NOTIFY_SOCKET` said, for messages.
    name: String,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; None when it is unset or
    /// empty (not started by systemd with `Type=notify`).
    pub fn from_env() -> Option<io::Result<Notifier>> {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        if v.is_empty() {
            return None;
        }
        Some(match v.to_str() {
            Some(s) => Notifier::connect(s),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is not UTF-8",
            )),
        })
    }

    /// A notifier sending to `name`: an absolute path, or `@name` for the
    /// abstract socket `name`. (systemd's `vsock:` addresses are not
    /// supported: they are for VMs, not services.)
    pub fn connect(name: &str) -> io::Result<Notifier> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={name:?}: not a socket address this service understands; \
                     allowed: an absolute path or @abstract-name"
                ),
            ));
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
            name: name.to_string(),
        })
    }

    /// Sends `state` (one or more `KEY=VALUE` lines) in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::other(format!(
                "{}: sent {sent} of {} bytes",
                self.name,
                state.len()
            )));
        }
        Ok(())
    }

    /// `READY=1` with a `STATUS=` line (newlines in `status` become spaces:
    /// one line is one assignment).
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when it is set
/// for this process (`$WATCHDOG_PID` absent or equal to our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_of(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from the variables' values.
pub fn watchdog_interval_of(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("dmabufd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.ready("serving on rpc\nscan: procfs").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=serving on rpc scan: procfs");
        n.watchdog().unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.stopping().unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_datagrams_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dmabufd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.status("scanning").unwrap();
        assert_eq!(recv(&server), "STATUS=scanning");
    }

    #[test]
    fn bad_addresses_and_absent_listeners_are_errors() {
        let e = Notifier::connect("relative/path").unwrap_err();
        assert!(
            e.to_string().contains("absolute path or @abstract-name"),
            "{e}"
        );
        let n = Notifier::connect("/nonexistent/dmabufd/notify").unwrap();
        assert!(n.watchdog().is_err());
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_pid() {
        assert_eq!(
            watchdog_interval_of(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval_of(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval_of(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_of(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_of(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_of(None, Some("7"), 7), None);
    }
}
