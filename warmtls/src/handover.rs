//! Handing the endpoint to a new process without ever closing the port: the
//! control socket that identifies a running instance, and the hand-over
//! between a running process (the predecessor) and the one it starts to
//! replace it (the successor).
//!
//! How a hand-over goes (`warmtls upgrade`, SIGUSR2, or systemd's ExecReload):
//! 1. The running process starts its own command line again (the binary at the
//!    path it was started from, the same arguments: a new binary, a changed
//!    config file), with one end of a socketpair left open for it
//!    (`WARMTLS_HANDOVER_FD`).
//! 2. The successor checks everything it can alone (config, certificates, cache
//!    key, io_uring), then asks for the sockets and receives, with SCM_RIGHTS,
//!    the very same listening sockets and the control socket. The kernel's
//!    accept queues belong to those sockets, so nothing queued is lost.
//! 3. It opens the cache file (shared: the store is safe across processes),
//!    starts its workers accepting from those sockets and says `serving`.
//! 4. Only then does the predecessor stop accepting (it cancels its accepts; its
//!    copies of the sockets close but the sockets live on in the successor),
//!    drain its open connections (up to `drain_timeout`) and exit 0.
//!
//! A successor that fails before step 3 says why (`failed ...`) or just exits;
//! the predecessor never stopped accepting, so nothing was refused.
//!
//! The control socket (`<cache>.ctl` unless `control_socket` says otherwise,
//! mode 0600) is also how a second, unrelated `warmtls serve` on the same cache
//! finds the live instance and refuses to start. Requests are one line each:
//! `status` (answered `serving PID LISTEN CACHE`) and `upgrade` (answered
//! `ok NEWPID` or `failed REASON` once the hand-over is over).
//!
//! This module never touches a worker: the server stops its own workers the
//! way a SIGTERM does.
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::runtime::fdpass;

/// The environment variable naming the hand-over channel's descriptor in a
/// successor process.
pub const HANDOVER_FD_ENV: &str = "WARMTLS_HANDOVER_FD";

/// How long a successor has, from its start, to be serving; after that it is
/// killed and the running process carries on.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a successor waits for its predecessor to confirm it stopped accepting.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest path a unix socket address holds (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why a hand-over, or the instance check, did not work out.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("warmtls (pid {pid}) is already serving cache {cache} on {listen} (control socket {}). \
             To replace it without refusing a connection run `warmtls upgrade`; to run a second, \
             separate endpoint give it its own cache file and listen address", control.display())]
    AlreadyRunning {
        pid: u32,
        listen: String,
        cache: String,
        control: PathBuf,
    },
    #[error("control socket {}: {error} ({hint})", path.display())]
    Control {
        path: PathBuf,
        error: std::io::Error,
        hint: String,
    },
    #[error("control socket path {} is longer than a unix socket address holds ({MAX_SOCKET_PATH} bytes): set control_socket to a shorter path", .0.display())]
    PathTooLong(PathBuf),
    #[error("{} exists and is not a socket: remove it, or set control_socket to another path", .0.display())]
    NotASocket(PathBuf),
    #[error("no warmtls is running with control socket {} ({error})", path.display())]
    NotRunning {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("taking over from the running process: {0}")]
    Predecessor(String),
    #[error("upgrade failed; the running process keeps serving: {0}")]
    UpgradeFailed(String),
    #[error("unexpected answer on control socket {}: {answer:?}", path.display())]
    Protocol { path: PathBuf, answer: String },
}

fn control_err(path: &Path, hint: &'static str) -> impl FnOnce(std::io::Error) -> HandoverError {
    let path = path.to_path_buf();
    move |error| HandoverError::Control {
        path,
        error,
        hint: hint.to_string(),
    }
}

/// What a running instance says about itself (`status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub pid: u32,
    pub listen: String,
    pub cache: String,
}

impl InstanceInfo {
    fn encode(&self) -> String {
        format!("serving {} {} {}\n", self.pid, self.listen, self.cache)
    }

    fn decode(line: &str) -> Option<InstanceInfo> {
        let mut w = line.trim_end().splitn(4, ' ');
        (w.next()? == "serving").then_some(())?;
        Some(InstanceInfo {
            pid: w.next()?.parse().ok()?,
            listen: w.next()?.to_string(),
            cache: w.next().unwrap_or("").to_string(),
        })
    }
}

/// The listening unix socket that marks a live instance and takes `status` and
/// `upgrade` requests. Non-blocking; polled by the server's main loop.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
    /// The inode at `path` that is ours: removed on drop only while it still is
    /// and we own it (a successor that has not taken over yet does not).
    inode: Option<u64>,
    owner: bool,
    /// [`claim`] removed a socket a killed instance left behind.
    replaced_stale: bool,
}

impl ControlSocket {
    /// Whether [`claim`] found the previous instance dead (killed, not
    /// stopped): its listening sockets may take a moment more to close, as the
    /// kernel tears its io_uring down asynchronously.
    pub fn replaced_stale(&self) -> bool {
        self.replaced_stale
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its descriptor, to hand to a successor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Take ownership of the path (a successor, once its predecessor let go):
    /// it is removed when this value is dropped.
    pub fn own(&mut self) {
        self.owner = true;
    }

    /// Give up the path without removing it (a predecessor after the hand-over:
    /// the successor serves on the same socket).
    pub fn release(mut self) {
        self.owner = false;
    }

    /// A pending request, if one is waiting; its first line is read with a short
    /// timeout (only this user can connect, mode 0600).
    pub fn next_request(&self) -> Option<ControlRequest> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let mut r = BufReader::new(stream.try_clone().ok()?).take(128);
        r.read_line(&mut line).ok()?;
        Some(match line.trim() {
            "status" => ControlRequest::Status(stream),
            "upgrade" => ControlRequest::Upgrade(Waiter(stream)),
            other => {
                let mut s = stream;
                let _ = writeln!(
                    s,
                    "failed unknown request {other:?} (known: status, upgrade)"
                );
                return None;
            }
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| Some(std::os::unix::fs::MetadataExt::ino(&m)) == self.inode)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A request read from the control socket.
#[derive(Debug)]
pub enum ControlRequest {
    /// Answer with [`ControlRequest::answer_status`].
    Status(UnixStream),
    /// Start (or join) a hand-over; the waiter is answered when it is over.
    Upgrade(Waiter),
}

impl ControlRequest {
    /// Answer a `status` request.
    pub fn answer_status(mut stream: UnixStream, info: &InstanceInfo) {
        let _ = stream.write_all(info.encode().as_bytes());
    }
}

/// A client waiting for the outcome of an upgrade.
#[derive(Debug)]
pub struct Waiter(UnixStream);

impl Waiter {
    /// Say how the upgrade ended.
    pub fn answer(mut self, outcome: &Result<u32, String>) {
        let line = match outcome {
            Ok(pid) => format!("ok {pid}\n"),
            Err(why) => format!("failed {}\n", one_line(why)),
        };
        let _ = self.0.write_all(line.as_bytes());
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Become the instance for `path`: refuse if a live instance answers there,
/// clear a stale socket left by a killed one, then bind it (mode 0600).
pub fn claim(path: &Path) -> Result<ControlSocket, HandoverError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        return Err(HandoverError::PathTooLong(path.to_path_buf()));
    }
    // Two instances starting at once must not both find the path free: hold
    // the directory's lock while we look and bind (a moment).
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let _dir_lock = std::fs::File::open(&dir)
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
    let mut stale = false;
    match UnixStream::connect(path) {
        Ok(stream) => {
            let info = ask_status(stream).unwrap_or(InstanceInfo {
                pid: 0,
                listen: "?".into(),
                cache: "?".into(),
            });
            return Err(HandoverError::AlreadyRunning {
                pid: info.pid,
                listen: info.listen,
                cache: info.cache,
                control: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Nobody listens: left by a process that was killed.
            let meta = std::fs::symlink_metadata(path).map_err(control_err(path, "stat"))?;
            if !meta.file_type().is_socket() {
                return Err(HandoverError::NotASocket(path.to_path_buf()));
            }
            tracing::info!(path = %path.display(), "removing a stale control socket");
            std::fs::remove_file(path).map_err(control_err(path, "removing a stale socket"))?;
            stale = true;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(HandoverError::NotASocket(path.to_path_buf()))
        }
        Err(error) => {
            return Err(HandoverError::Control {
                path: path.to_path_buf(),
                error,
                hint: "another user's instance, or a directory we cannot use".into(),
            })
        }
    }
    let mut bound = bind_control(path)?;
    bound.replaced_stale = stale;
    Ok(bound)
}

fn bind_control(path: &Path) -> Result<ControlSocket, HandoverError> {
    use std::os::unix::fs::PermissionsExt;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| control_err(path, "socket")(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| control_err(path, "address")(e.into()))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
            _ => ".".into(),
        };
        let hint = match e {
            nix::errno::Errno::ENOENT => format!(
                "directory {dir} does not exist; create it (`mkdir -p {dir}`) or choose another \
                 cache path or control_socket"
            ),
            nix::errno::Errno::EACCES | nix::errno::Errno::EROFS => format!(
                "directory {dir} is not writable by this user; fix its owner or choose another \
                 cache path or control_socket"
            ),
            _ => "check the path and its directory".into(),
        };
        HandoverError::Control {
            path: path.to_path_buf(),
            error: e.into(),
            hint,
        }
    })?;
    // Mode 0600 before anyone can connect (connecting needs listen()).
    let bound = ControlSocket {
        inode: std::fs::symlink_metadata(path)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m)),
        path: path.to_path_buf(),
        listener: UnixListener::from(fd),
        owner: true,
        replaced_stale: false,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(control_err(path, "chmod 0600"))?;
    socket::listen(
        &bound.listener,
        socket::Backlog::new(16).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| control_err(path, "listen")(e.into()))?;
    Ok(bound)
}

fn ask_status(mut stream: UnixStream) -> std::io::Result<InstanceInfo> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(stream).take(4096).read_line(&mut line)?;
    InstanceInfo::decode(&line).ok_or_else(|| std::io::Error::other(format!("answer {line:?}")))
}

/// `warmtls upgrade`: ask the instance at `control` to hand over to a new
/// process and wait for the outcome. Returns the new process's pid.
pub fn request_upgrade(control: &Path, timeout: Duration) -> Result<u32, HandoverError> {
    let mut stream = UnixStream::connect(control).map_err(|error| HandoverError::NotRunning {
        path: control.to_path_buf(),
        error,
    })?;
    let io = control_err(control, "talking to the running instance");
    stream
        .set_read_timeout(Some(timeout))
        .map_err(control_err(control, "timeout"))?;
    stream
        .write_all(b"upgrade\n")
        .map_err(control_err(control, "sending the request"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(4096)
        .read_line(&mut line)
        .map_err(io)?;
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
        return Ok(pid);
    }
    if let Some(why) = line.strip_prefix("failed ") {
        return Err(HandoverError::UpgradeFailed(why.to_string()));
    }
    Err(HandoverError::Protocol {
        path: control.to_path_buf(),
        answer: line.to_string(),
    })
}

/// `status` of the instance at `control`.
pub fn request_status(control: &Path) -> Result<InstanceInfo, HandoverError> {
    let stream = UnixStream::connect(control).map_err(|error| HandoverError::NotRunning {
        path: control.to_path_buf(),
        error,
    })?;
    ask_status(stream).map_err(control_err(control, "asking for its status"))
}

/// How this process was started, captured at start (the binary's path resolves
/// now, before an upgrade replaces the file): a successor is started the same way.
#[derive(Debug, Clone)]
pub struct Relaunch {
    exe: Option<PathBuf>,
    args: Vec<OsString>,
}

impl Relaunch {
    /// This process's executable and arguments.
    pub fn current() -> Relaunch {
        Relaunch {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
        }
    }
}

/// What a successor is doing, as seen by its predecessor.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still starting.
    Pending,
    /// Serving with our sockets (its pid): stop accepting, then [`Successor::confirm`].
    Serving(u32),
    /// It failed (it has exited or been killed); we keep serving.
    Failed(String),
}

/// The sockets a predecessor hands over, besides its control socket.
#[derive(Debug)]
pub struct Offer<'a> {
    pub listeners: Vec<BorrowedFd<'a>>,
    /// The listeners came from systemd (socket activation): workers share them
    /// rather than binding more.
    pub activated: bool,
}

/// A process started to take over from this one (predecessor side).
#[derive(Debug)]
pub struct Successor {
    child: Child,
    chan: OwnedFd,
    started: Instant,
    /// Clients of `upgrade` waiting for the outcome.
    pub waiters: Vec<Waiter>,
}

impl Successor {
    /// Start the successor: this process's binary path and arguments again,
    /// stdio inherited (its log goes where ours goes), the hand-over channel
    /// left open for it.
    pub fn spawn(how: &Relaunch) -> std::io::Result<Successor> {
        let exe = how.exe.as_ref().ok_or_else(|| {
            std::io::Error::other("the path of this binary is unknown (/proc/self/exe)")
        })?;
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // A descriptor without close-on-exec is inherited by the child; `dup`
        // makes one, closed again here once the child has it.
        let inherited = nix::unistd::dup(&theirs)?;
        let child = Command::new(exe)
            .args(&how.args)
            .env(HANDOVER_FD_ENV, inherited.as_raw_fd().to_string())
            // A watchdog pid naming us would disable the successor's watchdog.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .spawn()?;
        drop(inherited);
        drop(theirs);
        Ok(Successor {
            child,
            chan: ours,
            started: Instant::now(),
            waiters: Vec::new(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Advance the hand-over without blocking: answer its request for sockets
    /// with `control` and `offer`, notice that it serves, failed, died or ran
    /// out of time.
    pub fn poll(&mut self, control: &ControlSocket, offer: &Offer<'_>) -> Progress {
        let mut buf = [0u8; 512];
        loop {
            match fdpass::recv_with_fds(&self.chan, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return self.fail(format!("hand-over channel: {e}")),
                Ok((0, _)) => return self.fail(String::new()),
                Ok((n, _)) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg == "sockets" {
                        let header = format!(
                            "sockets {} {}",
                            u8::from(offer.activated),
                            control.path().display()
                        );
                        let mut fds = vec![control.as_fd()];
                        fds.extend(offer.listeners.iter().copied());
                        if let Err(e) = fdpass::send_with_fds(&self.chan, header.as_bytes(), &fds) {
                            return self.fail(format!("sending the sockets: {e}"));
                        }
                    } else if let Some(pid) = msg.strip_prefix("serving ") {
                        return Progress::Serving(pid.parse().unwrap_or(self.pid()));
                    } else if let Some(why) = msg.strip_prefix("failed ") {
                        return self.fail(why.to_string());
                    } else {
                        return self.fail(format!("unexpected hand-over message {msg:?}"));
                    }
                }
            }
        }
        if self.started.elapsed() > HANDOVER_TIMEOUT {
            return self.fail(format!(
                "the new process was not serving within {} s",
                HANDOVER_TIMEOUT.as_secs()
            ));
        }
        Progress::Pending
    }

    /// The successor is in charge: tell it we stopped accepting. It is not
    /// waited for; it outlives us.
    pub fn confirm(self) {
        if let Err(e) = fdpass::send_with_fds(&self.chan, b"draining", &[]) {
            tracing::warn!("telling the new process we stopped accepting: {e}");
        }
    }

    /// Stop a successor that will not take over (we are stopping), and reap it.
    pub fn abandon(mut self) -> Vec<Waiter> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.waiters)
    }

    /// The successor failed: make sure it is gone, and say why, with its exit
    /// status when it said nothing.
    fn fail(&mut self, said: String) -> Progress {
        // It exits by itself after a failure; give it a moment, then make sure.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        let status = status.map_or_else(|| "unknown status".to_string(), |s| s.to_string());
        Progress::Failed(if said.is_empty() {
            format!(
                "the new process (pid {}) exited ({status}) before taking over; its log says why",
                self.pid()
            )
        } else {
            format!(
                "the new process (pid {}) could not start: {said}",
                self.pid()
            )
        })
    }
}

/// This process was started to take over from a running one (successor side).
#[derive(Debug)]
pub struct Predecessor {
    chan: OwnedFd,
}

/// What the predecessor handed over.
#[derive(Debug)]
pub struct Handed {
    /// Its control socket (ours once [`Predecessor::serving`] returned).
    pub control: ControlSocket,
    /// Its listening sockets, queues and options intact.
    pub listeners: Vec<OwnedFd>,
    /// They came from systemd's socket activation.
    pub activated: bool,
}

impl Predecessor {
    /// The hand-over channel, if this process was started as a successor
    /// (`WARMTLS_HANDOVER_FD`). The variable is removed so our own successor
    /// does not inherit it.
    pub fn from_env() -> Result<Option<Predecessor>, HandoverError> {
        let Some(v) = std::env::var_os(HANDOVER_FD_ENV) else {
            return Ok(None);
        };
        std::env::remove_var(HANDOVER_FD_ENV);
        let bad =
            |why: String| HandoverError::Predecessor(format!("{HANDOVER_FD_ENV}={v:?}: {why}"));
        let fd: i32 = v
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("not a descriptor number".into()))?;
        let chan = fdpass::adopt_inherited(fd).map_err(|e| bad(e.to_string()))?;
        match socket::getsockopt(&chan, socket::sockopt::SockType) {
            Ok(SockType::SeqPacket) => Ok(Some(Predecessor { chan })),
            _ => Err(bad("not a hand-over channel".into())),
        }
    }

    /// Ask for the sockets. `control` is where our configuration puts the
    /// control socket: it must be where the running process has it (the
    /// hand-over keeps the socket, so it cannot move).
    pub fn take_sockets(&self, control: &Path) -> Result<Handed, HandoverError> {
        fdpass::send_with_fds(&self.chan, b"sockets", &[])
            .map_err(|e| HandoverError::Predecessor(format!("asking for the sockets: {e}")))?;
        let mut buf = [0u8; 4096];
        let (n, mut fds) = self.recv(&mut buf, HANDOVER_TIMEOUT)?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut words = msg.splitn(3, ' ');
        let (Some("sockets"), Some(activated), Some(path)) =
            (words.next(), words.next(), words.next())
        else {
            return Err(HandoverError::Predecessor(format!(
                "unexpected answer {msg:?}"
            )));
        };
        if fds.is_empty() {
            return Err(HandoverError::Predecessor(
                "no sockets came with the answer".into(),
            ));
        }
        let theirs = PathBuf::from(path);
        if theirs != control {
            return Err(HandoverError::Predecessor(format!(
                "the running process's control socket is {}, this configuration's is {} (cache \
                 path or control_socket changed): a hand-over keeps the control socket, so it \
                 cannot move; stop the running process and start this one instead",
                theirs.display(),
                control.display()
            )));
        }
        let listeners = fds.split_off(1);
        let control_fd = fds.pop().expect("one descriptor is there");
        for l in &listeners {
            if !fdpass::is_listening_stream(l) {
                return Err(HandoverError::Predecessor(
                    "a handed-over socket is not listening".into(),
                ));
            }
        }
        Ok(Handed {
            control: ControlSocket {
                inode: std::fs::symlink_metadata(&theirs)
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m)),
                path: theirs,
                listener: UnixListener::from(control_fd),
                owner: false,
                replaced_stale: false,
            },
            listeners,
            activated: activated == "1",
        })
    }

    /// Our workers accept from the handed sockets: tell the predecessor, and
    /// wait until it has stopped accepting. Returns false if it did not
    /// confirm (it died, or hangs): we serve on regardless, the sockets are ours.
    pub fn serving(&self) -> bool {
        let msg = format!("serving {}", std::process::id());
        if fdpass::send_with_fds(&self.chan, msg.as_bytes(), &[]).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match self.recv(&mut buf, CONFIRM_TIMEOUT) {
            Ok((n, _)) => &buf[..n] == b"draining",
            Err(_) => false,
        }
    }

    /// Tell the predecessor why we are giving up (it keeps serving).
    pub fn fail(&self, why: &str) {
        let msg = format!("failed {}", one_line(why));
        let _ = fdpass::send_with_fds(&self.chan, msg.as_bytes(), &[]);
    }

    fn recv(
        &self,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<(usize, Vec<OwnedFd>), HandoverError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.chan.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(within).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => {
                return Err(HandoverError::Predecessor(format!(
                    "no answer from the running process within {} s",
                    within.as_secs()
                )))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(HandoverError::Predecessor(format!(
                    "waiting for an answer: {e}"
                )))
            }
        }
        match fdpass::recv_with_fds(&self.chan, buf, MsgFlags::empty()) {
            Ok((0, _)) => Err(HandoverError::Predecessor(
                "the running process went away".into(),
            )),
            Ok(r) => Ok(r),
            Err(e) => Err(HandoverError::Predecessor(format!(
                "reading its answer: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        let i = InstanceInfo {
            pid: 42,
            listen: "[::]:443".into(),
            cache: "/var/lib/warmtls/a cache".into(),
        };
        assert_eq!(InstanceInfo::decode(&i.encode()), Some(i));
        assert_eq!(InstanceInfo::decode("ok 1"), None);
    }

    #[test]
    fn claim_refuses_a_live_instance_and_clears_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ctl");
        let first = claim(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Answer one status request from another thread, as the server would.
        let t = std::thread::spawn(move || loop {
            if let Some(ControlRequest::Status(s)) = first.next_request() {
                ControlRequest::answer_status(
                    s,
                    &InstanceInfo {
                        pid: 7,
                        listen: "127.0.0.1:1".into(),
                        cache: "c".into(),
                    },
                );
                return first;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let e = claim(&path).unwrap_err().to_string();
        assert!(e.contains("pid 7") && e.contains("warmtls upgrade"), "{e}");
        let first = t.join().unwrap();
        // Killed without cleaning up: the path stays, nobody listens.
        first.release();
        let again = claim(&path).unwrap();
        drop(again);
        assert!(!path.exists(), "removed by its owner");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(claim(&path), Err(HandoverError::NotASocket(_))));
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(claim(&long), Err(HandoverError::PathTooLong(_))));
    }
}
