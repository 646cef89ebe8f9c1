//! What the endpoint says to systemd and takes from it: readiness, reload and
//! stop notifications and watchdog pings over `$NOTIFY_SOCKET` (sd_notify), and
//! listening sockets from socket activation (`$LISTEN_FDS`).
//!
//! Both protocols are a few lines each (a datagram of `KEY=VALUE` lines; a
//! count of descriptors starting at 3), so they are written here rather than
//! pulled in as a crate. Outside systemd every call is a no-op. Nothing here may
//! fail the endpoint: a notification that cannot be sent is logged once.
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where sd_notify messages go, if systemd (or a test standing in for it) asked
/// for them.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    /// The variable is left in place: a successor process started for a
    /// hand-over inherits it and notifies the same manager.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let target = notify_addr(&path).and_then(|addr| {
            let sock = UnixDatagram::unbound()?;
            Ok((sock, addr))
        });
        match target {
            Ok(t) => Notifier { target: Some(t) },
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={path:?} cannot be used ({e}); not notifying systemd"
                );
                Notifier { target: None }
            }
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one notification: newline-separated `KEY=VALUE` assignments, e.g.
    /// `"READY=1\nSTATUS=serving"`.
    pub fn send(&self, state: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
            tracing::warn!("sd_notify {:?} failed: {e}", state.lines().next());
        }
    }

    /// `READY=1`: serving (after start-up, after taking over, after a failed upgrade).
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// `RELOADING=1`: a hand-over to a new process has begun. MONOTONIC_USEC is
    /// what `Type=notify-reload` requires; plain `Type=notify` ignores it.
    pub fn reloading(&self, status: &str) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"
        ));
    }

    /// `MAINPID=`: the service's main process is now `pid` (our successor), so
    /// systemd follows it and does not count our exit as the service's.
    pub fn main_pid(&self, pid: u32, status: &str) {
        self.send(&format!("MAINPID={pid}\nSTATUS={status}"));
    }

    /// `STOPPING=1`: a real stop (never sent after a hand-over: the service
    /// goes on in the successor).
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining connections");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

fn notify_addr(path: &std::ffi::OsStr) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(path),
        _ => Err(std::io::Error::other(
            "neither an absolute path nor an @abstract name",
        )),
    }
}

/// How often systemd wants `WATCHDOG=1` (`WatchdogSec=`): `$WATCHDOG_USEC`, if
/// `$WATCHDOG_PID` is unset or names this process. Pings go out at half that.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Why the sockets systemd passed cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    #[error("LISTEN_FDS={0:?} is not a number of descriptors")]
    Count(String),
    #[error("socket activation: descriptor {fd}: {source}")]
    Adopt { fd: i32, source: std::io::Error },
    #[error("socket activation: descriptor {0} is not a listening TCP socket (use ListenStream= in the .socket unit)")]
    NotListening(i32),
}

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: i32 = 3;

/// The listening sockets systemd passed to this process (`$LISTEN_FDS`, when
/// `$LISTEN_PID` is ours), adopted and made close-on-exec; empty without
/// socket activation. The variables are removed, so no child of ours mistakes
/// them for its own.
pub fn listen_fds() -> Result<Vec<OwnedFd>, ListenFdsError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new()); // meant for another process
    }
    let n: i32 = count
        .parse()
        .ok()
        .filter(|n| (0..=crate::runtime::fdpass::MAX_FDS as i32).contains(n))
        .ok_or(ListenFdsError::Count(count))?;
    let mut fds = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        let owned = crate::runtime::fdpass::adopt_inherited(fd)
            .map_err(|source| ListenFdsError::Adopt { fd, source })?;
        if !crate::runtime::fdpass::is_listening_stream(&owned) {
            return Err(ListenFdsError::NotListening(fd));
        }
        fds.push(owned);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(path.as_os_str()).unwrap(),
            )),
        };
        n.ready("serving");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            msg.starts_with("READY=1\nSTATUS=serving\nMAINPID="),
            "{msg}"
        );

        use std::os::linux::net::SocketAddrExt;
        let name = format!("warmtls-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(std::ffi::OsStr::new(&format!("@{name}"))).unwrap(),
            )),
        };
        n.watchdog();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert!(notify_addr(std::ffi::OsStr::new("relative")).is_err());
    }
}
