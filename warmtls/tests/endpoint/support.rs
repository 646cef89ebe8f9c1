//! Shared pieces of the endpoint tests: the real `warmtls serve` binary as a child
//! process, plaintext backends on loopback, and a rustls device.
//!
//! The driver matrix: with `WARMTLS_TEST_RUNTIME=epoll` (or `io_uring`) in the
//! environment, every server these tests start runs that event loop
//! (`--runtime`), so the whole suite runs once per driver (.ci/run does both).
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

/// How [`Server::launch`] starts the server, beyond its arguments.
#[derive(Default)]
pub struct Launch<'a> {
    /// Open-file limit (soft and hard), set through `prlimit`, which execs the
    /// server (same pid).
    pub nofile: Option<u32>,
    /// `--cache-capacity` (20,000 if None).
    pub capacity: Option<u64>,
    /// Extra environment variables.
    pub env: &'a [(String, String)],
    /// A file for the server's stderr (its log); inherited if None.
    pub stderr: Option<&'a Path>,
    /// Applied to the command last (e.g. a seccomp filter installed before exec).
    pub prepare: Option<&'a dyn Fn(&mut Command)>,
}

/// The event loop the matrix asks for (`WARMTLS_TEST_RUNTIME`), if any.
pub fn matrix_runtime() -> Option<String> {
    std::env::var("WARMTLS_TEST_RUNTIME")
        .ok()
        .filter(|r| !r.is_empty())
}

/// A running `warmtls serve`.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub cache: PathBuf,
    pub stats: PathBuf,
    /// The event loop the driver matrix made it run, checked in every stats read.
    runtime: Option<String>,
}

impl Server {
    /// Start on a free port with a cache file at `cache`, backend `backend`.
    pub fn start(cache: &Path, backend: &str, extra: &[&str]) -> Server {
        Server::start_with_fd_limit(cache, backend, extra, None)
    }

    /// As [`Server::start`], with the open-file limit (soft and hard) set to
    /// `nofile` through `prlimit`, which execs the server (same pid).
    pub fn start_with_fd_limit(
        cache: &Path,
        backend: &str,
        extra: &[&str],
        nofile: Option<u32>,
    ) -> Server {
        Server::launch(
            cache,
            backend,
            extra,
            &Launch {
                nofile,
                ..Launch::default()
            },
        )
    }

    /// As [`Server::start`], launched as `how` says.
    pub fn launch(cache: &Path, backend: &str, extra: &[&str], how: &Launch) -> Server {
        let stats = cache.with_extension("stats.json");
        let runtime = matrix_runtime().filter(|_| !extra.contains(&"--runtime"));
        let mut cmd = match how.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg(env!("CARGO_BIN_EXE_warmtls"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_warmtls")),
        };
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--workers",
            "2",
            "--stats-interval",
            "1s",
        ])
        .arg("--cache")
        .arg(cache)
        .args([
            "--cache-capacity".to_string(),
            how.capacity.unwrap_or(20_000).to_string(),
        ])
        .arg("--stats-file")
        .arg(&stats)
        .args(
            runtime
                .iter()
                .flat_map(|r| ["--runtime".to_string(), r.clone()]),
        )
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(how.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(match how.stderr {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("server log file")),
            None => Stdio::inherit(),
        });
        if let Some(prepare) = how.prepare {
            prepare(&mut cmd);
        }
        let mut child = cmd.spawn().expect("spawn warmtls serve");
        let port = ready_port(&mut child);
        Server {
            child: Some(child),
            port,
            cache: cache.to_path_buf(),
            stats,
            runtime,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// The counters the server last wrote (waits for a fresh write).
    pub fn stats(&self) -> serde_json::Value {
        let before = std::fs::metadata(&self.stats)
            .and_then(|m| m.modified())
            .ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = std::fs::metadata(&self.stats)
                .and_then(|m| m.modified())
                .ok();
            if (now.is_some() && now != before) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&self.stats).expect("stats file");
        let v: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
        if let Some(r) = &self.runtime {
            assert_eq!(
                v["runtime"],
                r.as_str(),
                "the driver matrix's event loop runs"
            );
        }
        v
    }

    /// Wait (up to `timeout`) until the server holds no connection, lingering
    /// ones included; returns whether it got there.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_for(timeout, || self.stats()["active_connections"] == 0)
    }

    pub fn cert_path(&self) -> PathBuf {
        let mut p = self.cache.as_os_str().to_owned();
        p.push(".cert.pem");
        p.into()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Wait (up to 30 s) for a `warmtls serve` child's readiness line on its piped
/// stdout and return the port in it; the rest of its stdout is drained, so a
/// successor that inherits the pipe never blocks on it.
pub fn ready_port(child: &mut Child) -> u16 {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("warmtls printed its readiness line");
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("a port in the readiness line")
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh self-signed ECDSA certificate for `localhost`: `DIR/NAME.cert.pem`
/// and `DIR/NAME.key.pem`.
pub fn ecdsa_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A backend that reads one request (up to a blank line) and answers `hello`,
/// then closes, like a tiny HTTP/1.0 server.
pub fn responder() -> (String, Arc<std::sync::atomic::AtomicU64>) {
    let (addr, _, served) = logging_responder();
    (addr, served)
}

/// Every request a [`logging_responder`] answered, in full.
pub type Requests = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// [`responder`], also keeping each request it answered, so a test can tell
/// exactly what reached the backend and how often.
pub fn logging_responder() -> (String, Requests, Arc<std::sync::atomic::AtomicU64>) {
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let requests: Requests = Default::default();
    let (s2, r2) = (served.clone(), requests.clone());
    let addr = serve(move |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        r2.lock().unwrap().push(req);
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        s2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    (addr, requests, served)
}

/// A test backend on a fresh loopback port: every accepted connection is handed
/// to `handle` on a thread of its own. Returns the address.
pub fn serve(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    serve_on(l, handle);
    addr
}

/// [`serve`] on an existing listener (e.g. one whose queue was full until now).
pub fn serve_on(l: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + 'static) {
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || handle(s));
        }
    });
}

/// Close a connection with a reset (SO_LINGER 0), as a crashing backend would.
pub fn reset(s: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(s);
}

/// A backend that echoes everything back and half-closes on EOF.
pub fn echo() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    echo_on(l);
    addr
}

/// A client config for one device, trusting the server's self-signed certificate.
pub fn device(
    cert: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(1);
    Arc::new(cfg)
}

use rustls::pki_types::pem::PemObject;

/// `n` devices, alternately TLS 1.3 and TLS 1.2.
pub fn mixed_devices(cert: &Path, n: usize) -> Vec<Arc<ClientConfig>> {
    (0..n)
        .map(|i| {
            device(
                cert,
                if i.is_multiple_of(2) {
                    &rustls::version::TLS13
                } else {
                    &rustls::version::TLS12
                },
            )
        })
        .collect()
}

/// One device connection: handshake, a request, the whole response until the
/// server closes. Returns the handshake kind and the response.
pub fn request(
    cfg: &Arc<ClientConfig>,
    addr: &str,
    req: &[u8],
) -> std::io::Result<(HandshakeKind, Vec<u8>)> {
    let mut tls = connect(cfg, addr)?;
    tls.write_all(req)?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e),
    }
    let kind = tls.conn.handshake_kind().unwrap_or(HandshakeKind::Full);
    Ok((kind, resp))
}

pub const GET: &[u8] = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// `openssl s_client` to `addr` (SNI `localhost`) with `extra` flags and
/// `stdin` as its input; returns its stdout and stderr together.
pub fn s_client<S: AsRef<std::ffi::OsStr>>(addr: &str, extra: &[S], stdin: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-ign_eof",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (install openssl)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Wait until `f` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Per backend connection: bytes received and their CRC-32.
pub type Received = Arc<std::sync::Mutex<Vec<(u64, u32)>>>;

/// A backend that echoes everything back, half-closes on EOF, and records per
/// connection how many bytes it received and their CRC-32 (recorded at EOF), so
/// a test can check the endpoint forwarded the client's plaintext exactly.
pub fn recording_echo() -> (String, Received) {
    let seen: Received = Default::default();
    let seen2 = seen.clone();
    let addr = serve(move |mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut len, mut crc) = (0u64, crc32fast::Hasher::new());
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n as u64;
                    crc.update(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        seen2.lock().unwrap().push((len, crc.finalize()));
    });
    (addr, seen)
}

/// A TLS connection to the server, TCP_NODELAY like a device (no Nagle wait
/// between its records).
pub fn connect(
    cfg: &Arc<ClientConfig>,
    addr: &str,
) -> std::io::Result<rustls::StreamOwned<ClientConnection, TcpStream>> {
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Send `data` while reading what comes back (both ways at once, so back-pressure
/// cannot deadlock the test), then close_notify, and read until the server's
/// close_notify (an EOF without one is an error). Returns the bytes received.
pub fn exchange(
    cfg: &Arc<ClientConfig>,
    addr: &str,
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

/// A listener whose accept queue is already full of connections nobody accepts:
/// the kernel drops further SYNs, so a connect to it hangs (a backend that does
/// not accept, on loopback). Keep the returned streams to keep the queue full.
pub fn listener_with_full_backlog() -> (TcpListener, Vec<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // std listens with a large backlog; re-listen with 0 (the kernel allows 1).
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            held.push(s);
        }
    }
    (l, held)
}

/// Echo on an existing listener (e.g. once a stuck backend starts accepting).
pub fn echo_on(l: TcpListener) {
    serve_on(l, |mut s| {
        let mut r = s.try_clone().unwrap();
        let _ = std::io::copy(&mut r, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    });
}

/// One connection per device, 8 threads at once: how many were (full, resumed).
pub fn round(devices: &[Arc<rustls::ClientConfig>], addr: &str) -> (usize, usize) {
    let chunks: Vec<_> = devices.chunks(devices.len().div_ceil(8)).collect();
    let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                sc.spawn(move || {
                    let (mut full, mut resumed) = (0, 0);
                    for d in chunk {
                        let (kind, resp) = request(d, addr, GET).expect("device connection");
                        assert!(resp.ends_with(b"hello"), "response arrived");
                        match kind {
                            HandshakeKind::Resumed => resumed += 1,
                            _ => full += 1,
                        }
                    }
                    (full, resumed)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
