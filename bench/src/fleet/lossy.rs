//! Devices on a lossy radio link: a connection may be abandoned half-way (after
//! the ClientHello, after the server's first flight, after the device's
//! Finished, in the middle of the response), by going silent or by a reset, and
//! the device reconnects later as it would.
//!
//! These devices keep their saved session until a replacement arrives, as
//! wolfSSL and Mbed TLS applications do with their saved session object: a
//! dropped connection leaves the device offering the same session (TLS 1.2
//! session ID, TLS 1.3 ticket) next time. rustls' client cannot model that (its
//! session store must hand each TLS 1.3 ticket out at most once, and a ticket
//! can be neither cloned nor encoded outside rustls), so the device's TLS stack
//! here is OpenSSL, through the `openssl` crate: its `SslSession` is such a
//! saved object. Device `i` speaks TLS 1.3 when `i` is even, TLS 1.2 when odd.
//!
//! The one `unsafe` call is `SSL_set_session`, which requires the session to
//! come from the same `SSL_CTX`: each device only ever uses the context of its
//! own version, which made every session it holds.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::ssl::{
    SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};

/// Where a device's connection is abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DropPoint {
    /// The ClientHello went out; nothing is read.
    AfterClientHello,
    /// The server's first flight was read; the device's next flight (its
    /// Finished) never goes out.
    AfterServerFlight,
    /// The device's Finished went out; nothing more is read (no new ticket).
    AfterFinished,
    /// The request went out and the first byte of the response was read (a TLS
    /// 1.3 ticket, sent before the response, was read with it).
    MidResponse,
}

impl DropPoint {
    /// Every drop point, in the order of a connection.
    pub const ALL: [DropPoint; 4] = [
        DropPoint::AfterClientHello,
        DropPoint::AfterServerFlight,
        DropPoint::AfterFinished,
        DropPoint::MidResponse,
    ];

    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DropPoint::AfterClientHello => "after ClientHello",
            DropPoint::AfterServerFlight => "after server flight",
            DropPoint::AfterFinished => "after Finished",
            DropPoint::MidResponse => "mid-response",
        }
    }
}

/// How the device leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Manner {
    /// The radio goes quiet: the socket stays open, unread, until the server
    /// gives up on it.
    Silence,
    /// The device's stack resets the connection.
    Reset,
}

/// What one lossy device connection did.
#[derive(Debug)]
pub struct LossyOutcome {
    /// The handshake completed: whether it resumed the device's session.
    pub resumed: Option<bool>,
    /// The whole response arrived.
    pub completed: bool,
    /// Bytes on the wire, both ways (TCP payload).
    pub bytes: u64,
    /// The device thread's CPU time for the connection.
    pub cpu: Duration,
    /// A connection left in silence: hold it until the server closes it.
    pub silent: Option<TcpStream>,
}

thread_local! {
    /// The session OpenSSL handed the new-session callback during the
    /// connection driven on this thread.
    static NEW_SESSION: RefCell<Option<SslSession>> = const { RefCell::new(None) };
}

/// A fleet of lossy devices and their saved sessions.
pub struct LossyDevices {
    tls13: SslConnector,
    tls12: SslConnector,
    /// Each device's saved session, as the bytes a device application keeps
    /// (DER): every connection starts from its own copy.
    sessions: Vec<Mutex<Option<Vec<u8>>>>,
}

impl LossyDevices {
    /// `n` devices trusting the PEM certificate `ca`.
    pub fn new(n: u32, ca: &Path) -> Result<LossyDevices, openssl::error::ErrorStack> {
        let build = |v: SslVersion| {
            let mut b = SslConnector::builder(SslMethod::tls_client())?;
            b.set_min_proto_version(Some(v))?;
            b.set_max_proto_version(Some(v))?;
            b.set_ca_file(ca)?;
            b.set_verify(SslVerifyMode::PEER);
            // Devices offer one key exchange and one suite (see the lean
            // profile); in TLS 1.2 the group list also names the certificate
            // curves a device accepts, so P-256 is listed there too.
            b.set_groups_list(if v == SslVersion::TLS1_3 {
                "X25519"
            } else {
                "X25519:P-256"
            })?;
            b.set_ciphersuites("TLS_AES_128_GCM_SHA256")?;
            b.set_cipher_list("ECDHE-ECDSA-AES128-GCM-SHA256")?;
            // A device saves its session itself: the callback hands it over.
            // Not in OpenSSL's internal cache: a failed connection removes its
            // session from there and marks it unresumable, which would reach
            // the device's copy (the same object).
            b.set_session_cache_mode(
                SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL,
            );
            b.set_new_session_callback(|_, s| NEW_SESSION.with(|n| *n.borrow_mut() = Some(s)));
            Ok::<_, openssl::error::ErrorStack>(b.build())
        };
        Ok(LossyDevices {
            tls13: build(SslVersion::TLS1_3)?,
            tls12: build(SslVersion::TLS1_2)?,
            sessions: (0..n).map(|_| Mutex::new(None)).collect(),
        })
    }

    /// Whether device `d` speaks TLS 1.3 (else 1.2).
    pub fn is_tls13(d: u32) -> bool {
        d.is_multiple_of(2)
    }

    /// Devices holding a saved session.
    pub fn with_session(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.lock().is_ok_and(|s| s.is_some()))
            .count()
    }

    /// One connection of device `d` to `addr`: handshake (offering its saved
    /// session), `request`, the response until the server closes — unless
    /// `drop` abandons it. The device's saved session is replaced only by a new
    /// one that arrives.
    pub fn connect(
        &self,
        d: u32,
        addr: SocketAddr,
        request: &[u8],
        drop: Option<(DropPoint, Manner)>,
        timeout: Duration,
    ) -> LossyOutcome {
        let cpu_start = thread_cpu();
        NEW_SESSION.with(|n| n.borrow_mut().take());
        let mut out = LossyOutcome {
            resumed: None,
            completed: false,
            bytes: 0,
            cpu: Duration::ZERO,
            silent: None,
        };
        let link = self.drive(d, addr, request, drop, timeout, &mut out);
        if let Some(der) = NEW_SESSION
            .with(|n| n.borrow_mut().take())
            .and_then(|s| s.to_der().ok())
        {
            if let Ok(mut saved) = self.sessions[d as usize].lock() {
                *saved = Some(der);
            }
        }
        if let Some(mut link) = link {
            out.bytes = link.bytes;
            if let (Some((_, manner)), Some(sock)) = (drop, link.sock.take()) {
                match manner {
                    Manner::Reset => reset(sock),
                    Manner::Silence => out.silent = Some(sock),
                }
            }
        }
        out.cpu = thread_cpu().saturating_sub(cpu_start);
        out
    }

    fn drive(
        &self,
        d: u32,
        addr: SocketAddr,
        request: &[u8],
        drop: Option<(DropPoint, Manner)>,
        timeout: Duration,
        out: &mut LossyOutcome,
    ) -> Option<Link> {
        let connector = if Self::is_tls13(d) {
            &self.tls13
        } else {
            &self.tls12
        };
        let Ok(sock) = TcpStream::connect_timeout(&addr, timeout) else {
            return None;
        };
        let _ = sock.set_nodelay(true);
        let _ = sock.set_read_timeout(Some(timeout));
        let _ = sock.set_write_timeout(Some(timeout));
        let Ok(mut ssl) = connector.configure().and_then(|c| c.into_ssl("localhost")) else {
            return None;
        };
        let saved = self.sessions[d as usize]
            .lock()
            .ok()
            .and_then(|s| s.as_deref().and_then(|der| SslSession::from_der(der).ok()));
        if let Some(s) = &saved {
            // SAFETY: every session of device `d` was made by this connector's
            // context (the device's version never changes), as SSL_set_session
            // requires.
            let _ = unsafe { ssl.set_session(s) };
        }
        let link = Link {
            sock: Some(sock),
            bytes: 0,
            point: drop.map(|(p, _)| p),
            read_any: false,
            cut: false,
        };
        let mut tls = match SslStream::new(ssl, link) {
            Ok(s) => s,
            Err(_) => return None,
        };
        if tls.connect().is_err() {
            return Some(take_link(&mut tls));
        }
        out.resumed = Some(tls.ssl().session_reused());
        if drop.map(|(p, _)| p) == Some(DropPoint::AfterFinished) {
            return Some(take_link(&mut tls));
        }
        if tls.write_all(request).is_err() {
            return Some(take_link(&mut tls));
        }
        if drop.map(|(p, _)| p) == Some(DropPoint::MidResponse) {
            let mut one = [0u8; 1];
            let _ = tls.read(&mut one);
            return Some(take_link(&mut tls));
        }
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        loop {
            match tls.read(&mut buf) {
                Ok(0) => {
                    out.completed = true;
                    break;
                }
                Ok(_) => {}
                // close_notify reads as Ok(0); anything else is a failure.
                Err(_) => break,
            }
            if started.elapsed() > timeout {
                break;
            }
        }
        let _ = tls.shutdown();
        Some(take_link(&mut tls))
    }
}

/// The link out of a stream: its counters, and its socket unless cut.
fn take_link(tls: &mut SslStream<Link>) -> Link {
    let l = tls.get_mut();
    Link {
        sock: l.sock.take(),
        bytes: l.bytes,
        point: l.point,
        read_any: l.read_any,
        cut: l.cut,
    }
}

/// The device's side of the TCP connection, counting bytes, cutting the
/// handshake where the drop point says: a read before anything was read cuts
/// `AfterClientHello`; a write after something was read cuts
/// `AfterServerFlight` (the device's Finished). Later points are cut by the
/// caller, between TLS calls.
struct Link {
    sock: Option<TcpStream>,
    bytes: u64,
    point: Option<DropPoint>,
    read_any: bool,
    cut: bool,
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the link dropped")
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cut || (self.point == Some(DropPoint::AfterClientHello) && !self.read_any) {
            self.cut = true;
            return Err(cut_error());
        }
        let sock = self.sock.as_mut().ok_or_else(cut_error)?;
        let n = sock.read(buf)?;
        self.bytes += n as u64;
        self.read_any |= n > 0;
        Ok(n)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cut || (self.point == Some(DropPoint::AfterServerFlight) && self.read_any) {
            self.cut = true;
            return Err(cut_error());
        }
        let sock = self.sock.as_mut().ok_or_else(cut_error)?;
        let n = sock.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.sock.as_mut() {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

/// Close with a reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// Hold silent connections for `hold` (longer than the server's handshake
/// timeout and its linger: it has given up on each by then, as it would on a
/// device that went quiet), then close them with a reset, which the server no
/// longer reads. The next round's reconnects find every ticket settled, as a
/// device reconnecting minutes later would.
pub fn wait_out(silent: Vec<TcpStream>, hold: Duration) {
    if silent.is_empty() {
        return;
    }
    std::thread::sleep(hold);
    for s in silent {
        reset(s);
    }
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}
