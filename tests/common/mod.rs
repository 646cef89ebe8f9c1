//! Shared pieces of the endpoint tests: the real `warmtls` binary started on a
//! free port with its own cache directory, real backends on 127.0.0.1, and a
//! rustls client that keeps its session like a device would.
//!
//! Every test owns its ports (port 0) and its directory, so tests run in parallel.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

/// A running `warmtls serve`.
pub struct Endpoint {
    child: Child,
    /// Where it listens (the real port).
    pub addr: SocketAddr,
    /// Its session cache file (the self-signed certificate sits beside it).
    pub cache: PathBuf,
    /// Its `--stats-file`.
    pub stats_file: PathBuf,
    /// Its log (stderr), shown when a test fails.
    pub log: PathBuf,
}

impl Endpoint {
    /// Start `warmtls serve` with its cache in `dir`, forwarding to `backend`,
    /// with `extra` flags; waits for the readiness line.
    pub fn start(dir: &Path, backend: &str, extra: &[&str]) -> Endpoint {
        let cache = dir.join("warmtls.cache");
        let stats_file = dir.join("stats.json");
        let _ = std::fs::remove_file(&stats_file); // a previous run's numbers
        let log = dir.join(format!(
            "warmtls-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--cache",
            cache.to_str().unwrap(),
            "--cache-capacity",
            "16384",
            "--stats-file",
            stats_file.to_str().unwrap(),
            "--stats-interval",
            "1",
            "--log",
            "debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"--workers") {
            args.extend(["--workers".to_string(), "2".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_warmtls"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn warmtls");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "warmtls printed no readiness line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("warmtls: listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "unexpected readiness line {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Endpoint {
            child,
            addr,
            cache,
            stats_file,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The self-signed certificate clients verify against.
    pub fn ca(&self) -> PathBuf {
        let mut p = self.cache.as_os_str().to_owned();
        p.push(".cert.pem");
        p.into()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The endpoint's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to 15 s) for the process to exit; returns its exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "warmtls did not exit after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `sig` to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal warmtls");
    }

    /// The last stats file the endpoint wrote.
    pub fn stats(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.stats_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait (up to `within`) until the stats file satisfies `ok`; the last value.
    pub fn wait_stats(
        &self,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stats();
            if let Some(v) = &s {
                if ok(v) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("stats never satisfied the condition; last {s:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Open descriptors of the endpoint process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- warmtls log ({}) ---", self.log.display());
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A stat as a number (0 when absent).
pub fn stat(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// What a backend connection received, for checking the endpoint forwarded the
/// client's plaintext exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub len: u64,
    pub crc: u32,
}

/// A TCP backend on 127.0.0.1 that echoes every byte back, half-closes when the
/// endpoint does, and records what each connection received.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl EchoBackend {
    pub fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(listener, Mode::Echo)
    }

    /// A backend that reads one line, answers `hello from backend\n` and closes
    /// (a one-request device exchange; lets `openssl s_client -ign_eof` finish).
    pub fn start_replying() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(listener, Mode::Reply)
    }

    /// Echo on an existing listener.
    pub fn serve_on(listener: TcpListener) -> EchoBackend {
        Self::serve(listener, Mode::Echo)
    }

    fn serve(listener: TcpListener, mode: Mode) -> EchoBackend {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(s) = s else { continue };
                let rec = rec.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || handle(s, mode, rec));
            }
        });
        EchoBackend {
            addr,
            received,
            stop,
        }
    }

    pub fn addr_arg(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Echo,
    Reply,
}

fn handle(mut s: TcpStream, mode: Mode, rec: Arc<Mutex<Vec<Received>>>) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut hasher = crc32fast::Hasher::new();
    let mut len = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        hasher.update(&buf[..n]);
        len += n as u64;
        match mode {
            Mode::Echo => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Mode::Reply => {
                if buf[..n].contains(&b'\n') {
                    let _ = s.write_all(b"hello from backend\n");
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    rec.lock().unwrap().push(Received {
        len,
        crc: hasher.finalize(),
    });
}

/// A rustls client configuration trusting `ca`, for one protocol version, with
/// its own session memory (one device).
pub fn client_config(
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read ca") {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(4);
    Arc::new(cfg)
}

/// A copy of `base` with its own session memory: a distinct device.
pub fn device(base: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut cfg = (**base).clone();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(2);
    Arc::new(cfg)
}

/// A TLS connection to the endpoint.
pub fn tls_connect(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?; // as a device would: no Nagle wait between records
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    Ok(StreamOwned::new(conn, sock))
}

/// One device exchange through an echo backend: connect, send `ping`, read the
/// echo (which also brings any TLS 1.3 ticket), close cleanly. Returns how the
/// handshake went.
pub fn ping(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> std::io::Result<HandshakeKind> {
    let mut s = tls_connect(cfg, addr)?;
    s.write_all(b"ping")?;
    let mut got = [0u8; 4];
    s.read_exact(&mut got)?;
    if &got != b"ping" {
        return Err(std::io::Error::other(format!("echo returned {got:?}")));
    }
    let kind = s
        .conn
        .handshake_kind()
        .ok_or_else(|| std::io::Error::other("handshake not done"))?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(kind)
}

/// Read from `s` until EOF or error; returns the bytes and whether it ended
/// within `within`.
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("connection still open after {within:?}")
            }
            Err(_) => break, // reset counts as closed
        }
    }
    (out, start.elapsed())
}

/// Raise this test process's open-file limit to its hard limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("warmtls-endpoint-")
        .tempdir()
        .unwrap()
}

/// Send `data` through the endpoint while reading what comes back (both ways at
/// once, so back-pressure cannot deadlock the test), then close_notify and read
/// until the endpoint's close_notify. Returns the bytes received.
pub fn exchange(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    data: &[u8],
    within: Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::ErrorKind::WouldBlock;
    use std::os::fd::AsFd;
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nonblocking(true)?;
    let mut conn = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let deadline = Instant::now() + within;
    let (mut sent, mut closed_write, mut eof) = (0, false, false);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !eof {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("sent {sent}, received {}", got.len()),
            ));
        }
        let mut progress = false;
        if !conn.is_handshaking() && sent < data.len() {
            let n = conn
                .writer()
                .write(&data[sent..(sent + 16_384).min(data.len())])?;
            sent += n;
            progress |= n > 0;
        }
        if sent == data.len() && !closed_write && !conn.is_handshaking() {
            conn.send_close_notify();
            closed_write = true;
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(n) => progress |= n > 0,
                Err(e) if e.kind() == WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => eof = true,
            Ok(_) => {
                progress = true;
                conn.process_new_packets().map_err(std::io::Error::other)?;
            }
            Err(e) if e.kind() == WouldBlock => {}
            Err(e) => return Err(e),
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !progress && !eof {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut flags = PollFlags::POLLIN;
            if conn.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            let mut fds = [PollFd::new(sock.as_fd(), flags)];
            let _ = poll(&mut fds, PollTimeout::from(10u8));
        }
    }
    Ok(got)
}

/// `n` reproducible pseudo-random bytes.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A listener with a full accept queue: the kernel drops further SYNs, so a
/// connect to it hangs (the "backend not accepting" case, on loopback).
pub fn stuck_listener() -> (TcpListener, Vec<TcpStream>) {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    socket::listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let listener = TcpListener::from(fd);
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    (listener, fillers)
}
