//! The interop matrix's parts: the device clients (small C programs on the
//! Debian wolfSSL, Mbed TLS and GnuTLS libraries, `openssl s_client`, and a
//! rustls client in-process), built and driven the same way, and a counting TCP
//! relay in front of the endpoint that sees every byte and record on the wire.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

/// How long one device connection may take before the matrix calls it stuck.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

// --- The wire -------------------------------------------------------------

/// One TLS record header seen by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub from_client: bool,
    pub typ: u8,
    pub len: u16,
}

const APPLICATION_DATA: u8 = 23;

/// One relayed connection, as seen on the wire.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    /// TCP payload bytes from the client, and to it.
    pub up: u64,
    pub down: u64,
    /// Every record both ways, in causal order: a client record is logged
    /// before it is forwarded, so whatever the server sent in reply to it is
    /// logged after it.
    pub records: Vec<Record>,
    /// The client's bytes before the server's first: its ClientHello (and any
    /// 0-RTT data).
    pub first_flight: Vec<u8>,
}

impl Wire {
    /// The TLS 1.3 NewSessionTicket record's length (header included): the
    /// server's first encrypted record after the client's first encrypted one
    /// (its Finished; the response needs a backend round trip, the ticket
    /// does not). `None` for TLS 1.2 and 0-RTT connections.
    pub fn ticket_record(&self) -> Option<usize> {
        let fin = self
            .records
            .iter()
            .position(|r| r.from_client && r.typ == APPLICATION_DATA)?;
        let r = self.records[fin..]
            .iter()
            .find(|r| !r.from_client && r.typ == APPLICATION_DATA)?;
        Some(5 + usize::from(r.len))
    }

    /// The longest record body the server sent.
    pub fn largest_server_record(&self) -> usize {
        self.records
            .iter()
            .filter(|r| !r.from_client)
            .map(|r| usize::from(r.len))
            .max()
            .unwrap_or(0)
    }
}

/// Finds record headers in a byte stream cut anywhere.
#[derive(Default)]
struct RecordScanner {
    header: [u8; 5],
    have: usize,
    body_left: usize,
}

impl RecordScanner {
    fn scan(&mut self, mut bytes: &[u8], from_client: bool, out: &mut Vec<Record>) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u16::from_be_bytes([self.header[3], self.header[4]]);
                self.body_left = usize::from(len);
                out.push(Record {
                    from_client,
                    typ: self.header[0],
                    len,
                });
            }
        }
    }
}

/// A TCP relay in front of the endpoint, one per device, so every connection
/// it reports is that device's. The upstream can change (a restarted server
/// listens on a new port); the device keeps its address.
pub struct Relay {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    done: Mutex<Receiver<Wire>>,
}

impl Relay {
    pub fn start(upstream: &str) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream.parse().unwrap()));
        let (tx, rx) = channel();
        let up = upstream.clone();
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let server = *up.lock().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || relay_one(client, server, tx));
            }
        });
        Relay {
            addr,
            upstream,
            done: Mutex::new(rx),
        }
    }

    pub fn set_upstream(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.parse().unwrap();
    }

    /// The next connection to finish (both directions closed).
    pub fn next(&self) -> Wire {
        self.done
            .lock()
            .unwrap()
            .recv_timeout(CONNECTION_TIMEOUT)
            .expect("the relay saw the connection end")
    }
}

fn relay_one(client: TcpStream, server: SocketAddr, done: Sender<Wire>) {
    let Ok(upstream) = TcpStream::connect(server) else {
        let _ = done.send(Wire::default());
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let wire = Arc::new(Mutex::new(Wire::default()));
    let pipe = |from: TcpStream, to: TcpStream, from_client: bool| {
        let wire = wire.clone();
        std::thread::spawn(move || copy_logging(from, to, from_client, &wire))
    };
    let up = pipe(
        client.try_clone().unwrap(),
        upstream.try_clone().unwrap(),
        true,
    );
    let down = pipe(upstream, client, false);
    let _ = up.join();
    let _ = down.join();
    let wire = Arc::try_unwrap(wire).unwrap().into_inner().unwrap();
    let _ = done.send(wire);
}

fn copy_logging(mut from: TcpStream, mut to: TcpStream, from_client: bool, wire: &Mutex<Wire>) {
    let mut scanner = RecordScanner::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut w = wire.lock().unwrap();
            let w = &mut *w;
            if from_client {
                w.up += n as u64;
                if !w.records.iter().any(|r| !r.from_client) {
                    w.first_flight.extend_from_slice(&buf[..n]);
                }
            } else {
                w.down += n as u64;
            }
            scanner.scan(&buf[..n], from_client, &mut w.records);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// --- Devices --------------------------------------------------------------

/// A TLS stack a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    Rustls,
    OpenSsl,
    GnuTls,
    WolfSsl,
    MbedTls,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Rustls => "rustls 0.23",
            Stack::OpenSsl => "OpenSSL 3.0 `s_client`",
            Stack::GnuTls => "GnuTLS 3.7",
            Stack::WolfSsl => "wolfSSL 5.5.4",
            Stack::MbedTls => "Mbed TLS 2.28",
        }
    }
}

/// Which versions a device offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Tls12,
    Tls13,
    /// Whatever the library offers by default (TLS 1.3 and 1.2).
    Any,
}

/// How a device is set up: its library's defaults unless a field says otherwise.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub stack: Stack,
    pub versions: Versions,
    /// Sends `server_name: localhost` (as a device naming its server does).
    pub sni: bool,
    /// The only cipher suites offered, in the library's own names.
    pub suites: Option<&'static str>,
    pub p256_only: bool,
    /// RFC 6066 max_fragment_length (wolfSSL, Mbed TLS) or RFC 8449
    /// record_size_limit (GnuTLS) to ask for.
    pub record_limit: Option<u16>,
    /// Send the request as 0-RTT data when the saved session allows it.
    pub early_data: bool,
    /// The request path (`/8k` gets an 8 KiB answer).
    pub path: &'static str,
}

impl DeviceSpec {
    pub fn new(stack: Stack, versions: Versions) -> DeviceSpec {
        DeviceSpec {
            stack,
            versions,
            sni: true,
            suites: None,
            p256_only: false,
            record_limit: None,
            early_data: false,
            path: "/",
        }
    }
}

/// One connection's outcome, as the device saw it, with what the relay saw.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    pub ok: bool,
    pub resumed: bool,
    /// e.g. "TLSv1.3"
    pub version: String,
    pub early_data_accepted: bool,
    /// The device's own words (its result line, or its error).
    pub detail: String,
    pub wire: Wire,
}

/// A device: one TLS client keeping one saved session between connections.
pub trait Device: Send {
    /// Connect through the relay: handshake (offering the saved session),
    /// the request, the whole response, close.
    fn connect(&mut self) -> Attempt;
}

/// Build the C devices once per test run (`cc` + `pkg-config`, against the
/// system libraries). Panics naming the Debian packages to install.
pub fn c_devices() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/devices");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-devices");
        std::fs::create_dir_all(&out).unwrap();
        for (name, pkg, deb) in [
            ("wolfssl", "wolfssl", "libwolfssl-dev"),
            ("mbedtls", "", "libmbedtls-dev"),
            ("gnutls", "gnutls", "libgnutls28-dev"),
        ] {
            let libs = if pkg.is_empty() {
                if !Path::new("/usr/include/mbedtls/ssl.h").exists() {
                    panic!(
                        "the interop matrix needs Mbed TLS 2.28's headers: apt-get install {deb} \
                         (CI's .ci/run installs it)"
                    );
                }
                vec!["-lmbedtls".into(), "-lmbedx509".into(), "-lmbedcrypto".into()]
            } else {
                let o = Command::new("pkg-config")
                    .args(["--cflags", "--libs", pkg])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("pkg-config: {e}; apt-get install pkg-config {deb}")
                    });
                assert!(
                    o.status.success(),
                    "the interop matrix needs {pkg}: apt-get install {deb} pkg-config (CI's .ci/run \
                     installs it): {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                String::from_utf8(o.stdout)
                    .unwrap()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            };
            let file = format!("{name}_device.c");
            let status = Command::new("cc")
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(out.join(format!("{name}_device")))
                .arg(src.join(&file))
                .args(&libs)
                .status()
                .unwrap_or_else(|e| panic!("cc: {e}; apt-get install build-essential"));
            assert!(status.success(), "compiling tests/devices/{file} failed");
        }
        out
    })
}

/// A device whose C client keeps running between connections, so its saved
/// session survives the endpoint's restart.
pub struct CDevice {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    relay: Arc<Relay>,
}

impl CDevice {
    pub fn start(spec: &DeviceSpec, relay: Arc<Relay>, ca: &Path) -> CDevice {
        let exe = c_devices().join(match spec.stack {
            Stack::WolfSsl => "wolfssl_device",
            Stack::MbedTls => "mbedtls_device",
            Stack::GnuTls => "gnutls_device",
            s => panic!("{s:?} has no C device"),
        });
        let mut cmd = Command::new(exe);
        cmd.arg("127.0.0.1")
            .arg(relay.addr.port().to_string())
            .arg(ca)
            .args([
                "-v",
                match spec.versions {
                    Versions::Tls12 => "1.2",
                    Versions::Tls13 => "1.3",
                    Versions::Any => "any",
                },
                "-q",
                spec.path,
            ]);
        if spec.sni {
            cmd.args(["-n", "localhost"]);
        }
        if let Some(s) = spec.suites {
            cmd.args(["-s", s]);
        }
        if spec.p256_only {
            cmd.args(["-g", "p256"]);
        }
        if let Some(m) = spec.record_limit {
            cmd.args(["-m", &m.to_string()]);
        }
        if spec.early_data {
            cmd.arg("-e");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a C device");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        CDevice {
            child,
            stdin,
            lines,
            relay,
        }
    }
}

impl Device for CDevice {
    fn connect(&mut self) -> Attempt {
        self.stdin.write_all(b"connect\n").unwrap();
        self.stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(CONNECTION_TIMEOUT)
            .unwrap_or_else(|_| "fail device no-answer (exited or stuck)".into());
        let wire = self.relay.next();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("")
                .to_string()
        };
        let ok = line.starts_with("ok ") && field("tail") == "hello";
        Attempt {
            ok,
            resumed: field("resumed") == "1",
            version: field("version").replace("TLS1.", "TLSv1."),
            early_data_accepted: field("early") == "1",
            detail: line,
            wire,
        }
    }
}

impl Drop for CDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client`, one process per connection, its session in a file
/// (`-sess_in`/`-sess_out`) so it survives between connections and restarts.
pub struct SClient {
    spec: DeviceSpec,
    relay: Arc<Relay>,
    ca: PathBuf,
    session: PathBuf,
    early: PathBuf,
}

impl SClient {
    pub fn new(spec: &DeviceSpec, relay: Arc<Relay>, ca: &Path, dir: &Path) -> SClient {
        let n = relay.addr.port();
        let early = dir.join(format!("s_client-{n}.early"));
        std::fs::write(&early, request(spec.path)).unwrap();
        SClient {
            spec: spec.clone(),
            relay,
            ca: ca.to_path_buf(),
            session: dir.join(format!("s_client-{n}.session")),
            early,
        }
    }
}

impl Device for SClient {
    fn connect(&mut self) -> Attempt {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &self.relay.addr.to_string()])
            .arg("-CAfile")
            .arg(&self.ca)
            .args(["-verify_return_error", "-ign_eof", "-sess_out"])
            .arg(&self.session);
        match self.spec.versions {
            Versions::Tls12 => cmd.arg("-tls1_2"),
            Versions::Tls13 => cmd.arg("-tls1_3"),
            Versions::Any => &mut cmd,
        };
        if self.spec.sni {
            cmd.args(["-servername", "localhost"]);
        } else {
            cmd.arg("-noservername");
        }
        let resuming = self.session.exists();
        if resuming {
            cmd.arg("-sess_in").arg(&self.session);
        }
        let early = resuming && self.spec.early_data;
        if early {
            cmd.arg("-early_data").arg(&self.early);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client (apt-get install openssl)");
        let req = if early {
            Vec::new()
        } else {
            request(self.spec.path)
        };
        let _ = child.stdin.take().unwrap().write_all(&req);
        let out = child.wait_with_output().unwrap();
        let wire = self.relay.next();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = text
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
            .unwrap_or("");
        let ok = text.contains("Verify return code: 0 (ok)")
            && String::from_utf8_lossy(&out.stdout).contains("\r\n\r\nhello");
        Attempt {
            ok,
            resumed: summary.starts_with("Reused, "),
            version: summary.split(", ").nth(1).unwrap_or("").trim().to_string(),
            early_data_accepted: text.contains("Early data was accepted"),
            detail: if ok {
                summary.to_string()
            } else {
                text.lines()
                    .filter(|l| l.contains("error") || l.contains("alert"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            },
            wire,
        }
    }
}

/// A rustls client in-process, one in-memory session.
pub struct RustlsDevice {
    cfg: Arc<ClientConfig>,
    spec: DeviceSpec,
    relay: Arc<Relay>,
}

impl RustlsDevice {
    pub fn new(spec: &DeviceSpec, relay: Arc<Relay>, ca: &Path) -> RustlsDevice {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match spec.versions {
            Versions::Tls12 => &[&rustls::version::TLS12],
            Versions::Tls13 => &[&rustls::version::TLS13],
            Versions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut cfg = ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(1);
        cfg.enable_early_data = spec.early_data;
        cfg.enable_sni = spec.sni;
        RustlsDevice {
            cfg: Arc::new(cfg),
            spec: spec.clone(),
            relay,
        }
    }

    fn exchange(&self) -> Result<Attempt, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let sock = TcpStream::connect(self.relay.addr).map_err(|x| e(&x))?;
        sock.set_nodelay(true).map_err(|x| e(&x))?;
        sock.set_read_timeout(Some(CONNECTION_TIMEOUT))
            .map_err(|x| e(&x))?;
        let mut conn =
            ClientConnection::new(self.cfg.clone(), ServerName::try_from("localhost").unwrap())
                .map_err(|x| e(&x))?;
        let req = request(self.spec.path);
        let mut sent_early = false;
        if let Some(mut early) = conn.early_data() {
            sent_early = early.write(&req).map_err(|x| e(&x))? == req.len();
        }
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|x| e(&x))?;
        }
        let early = sent_early && tls.conn.is_early_data_accepted();
        if !early {
            tls.write_all(&req).map_err(|x| e(&x))?;
        }
        let mut response = Vec::new();
        tls.read_to_end(&mut response).map_err(|x| e(&x))?;
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let version = match tls.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "?",
        };
        let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok(Attempt {
            ok: response.ends_with(b"hello"),
            resumed,
            version: version.into(),
            early_data_accepted: early,
            detail: format!("{:?}", tls.conn.handshake_kind()),
            wire: Wire::default(),
        })
    }
}

impl Device for RustlsDevice {
    fn connect(&mut self) -> Attempt {
        let mut a = self.exchange().unwrap_or_else(|detail| Attempt {
            detail,
            ..Attempt::default()
        });
        a.wire = self.relay.next();
        a
    }
}

/// The request every device sends.
pub fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The backend: `hello` for `/`, 8 KiB then `hello` for `/8k` (to see the
/// record sizes a device gets); then it closes, like HTTP/1.0.
pub fn backend() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if req.starts_with(b"GET /8k ") {
                    let mut b = vec![b'x'; 8192];
                    b.extend_from_slice(b"hello");
                    b
                } else {
                    b"hello".to_vec()
                };
                let mut resp = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                resp.extend_from_slice(&body);
                let _ = s.write_all(&resp);
            });
        }
    });
    addr
}

/// The device for `spec`, connecting through `relay`.
pub fn device(spec: &DeviceSpec, relay: Arc<Relay>, ca: &Path, dir: &Path) -> Box<dyn Device> {
    match spec.stack {
        Stack::Rustls => Box::new(RustlsDevice::new(spec, relay, ca)),
        Stack::OpenSsl => Box::new(SClient::new(spec, relay, ca, dir)),
        Stack::WolfSsl | Stack::MbedTls | Stack::GnuTls => {
            Box::new(CDevice::start(spec, relay, ca))
        }
    }
}
