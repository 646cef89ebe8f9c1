//! TLS 1.3 0-RTT through the real endpoint: a resuming device's request rides in
//! its first flight and reaches the backend before the handshake completes; the
//! same first flight replayed (on the live server, and again after a restart on
//! the same cache file) never reaches the backend a second time, because the
//! ticket it names was taken from the store by the first use.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

/// A TLS 1.3 device that offers 0-RTT when its ticket allows it.
pub(crate) fn early_device(cert: &Path) -> Arc<ClientConfig> {
    let mut cfg = Arc::unwrap_or_clone(device(cert, &rustls::version::TLS13));
    cfg.enable_early_data = true;
    Arc::new(cfg)
}

/// What one 0-RTT attempt did.
pub(crate) struct EarlyAttempt {
    /// Every byte the device sent before it read anything: ClientHello, then the
    /// early data records.
    pub(crate) first_flight: Vec<u8>,
    pub(crate) accepted: bool,
    pub(crate) kind: HandshakeKind,
    pub(crate) response: Vec<u8>,
}

/// Connect, write `req` as early data if the ticket allows it (else after the
/// handshake), and read the whole response.
pub(crate) fn early_request(cfg: &Arc<ClientConfig>, addr: &str, req: &[u8]) -> EarlyAttempt {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut sent_early = 0;
    if let Some(mut early) = conn.early_data() {
        sent_early = early.write(req).unwrap();
        assert_eq!(sent_early, req.len(), "the ticket allows the whole request");
    }
    let mut first_flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut first_flight).unwrap();
    }
    sock.write_all(&first_flight).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let accepted = tls.conn.is_early_data_accepted();
    if !accepted {
        tls.write_all(req).unwrap();
    }
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    EarlyAttempt {
        first_flight,
        accepted: accepted && sent_early > 0,
        kind: tls.conn.handshake_kind().unwrap(),
        response,
    }
}

/// Send captured bytes on a fresh connection, as an attacker replaying a
/// device's first flight would, and read whatever comes back until the server
/// gives up or we do.
pub(crate) fn replay(addr: &str, flight: &[u8]) -> Vec<u8> {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.write_all(flight).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break, // timeout: the server waits for a Finished we cannot make
        }
    }
    got
}

/// How many requests that reached the backend carry `marker`.
pub(crate) fn reached_backend(requests: &Requests, marker: &[u8]) -> usize {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.windows(marker.len()).any(|w| w == marker))
        .count()
}

#[test]
fn early_data_reaches_the_backend_once_and_a_replay_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let cache = dir.path().join("c.cache");
    let mut server = Server::start(&cache, &backend, &["--early-data", "16384"]);
    let cfg = early_device(&server.cert_path());

    let first = early_request(&cfg, &server.addr(), b"GET /full HTTP/1.0\r\n\r\n");
    assert_eq!(first.kind, HandshakeKind::Full);
    assert!(!first.accepted, "no ticket yet, so no early data");
    assert!(first.response.ends_with(b"hello"));

    let req = b"GET /early-0001 HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let second = early_request(&cfg, &server.addr(), req);
    assert_eq!(second.kind, HandshakeKind::Resumed);
    assert!(second.accepted, "the endpoint accepted the 0-RTT request");
    assert!(second.response.ends_with(b"hello"));
    assert_eq!(reached_backend(&requests, b"/early-0001"), 1);
    // The first flight holds the request, encrypted: it is what a replay sends.
    assert!(second.first_flight.len() > req.len());

    let answer = replay(&server.addr(), &second.first_flight);
    assert!(
        !answer.is_empty(),
        "the server answers the replayed ClientHello (as a full handshake)"
    );
    assert_eq!(
        reached_backend(&requests, b"/early-0001"),
        1,
        "a replayed first flight must not reach the backend again"
    );
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 1, "{stats}");
    assert_eq!(stats["early_data_bytes"], req.len() as u64, "{stats}");
    assert_eq!(stats["resumed_handshakes"], 1, "{stats}");

    // A restart on the same file does not bring the taken ticket back.
    assert!(server.stop());
    let server = Server::start(&cache, &backend, &["--early-data", "16384"]);
    replay(&server.addr(), &second.first_flight);
    assert_eq!(reached_backend(&requests, b"/early-0001"), 1);
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 0, "{stats}");
    assert_eq!(stats["resumed_handshakes"], 0, "{stats}");

    // The device itself still resumes with 0-RTT: the second connection left it
    // a fresh ticket, which survived the restart.
    let third = early_request(&cfg, &server.addr(), b"GET /early-0002 HTTP/1.0\r\n\r\n");
    assert_eq!(third.kind, HandshakeKind::Resumed);
    assert!(third.accepted);
    assert_eq!(reached_backend(&requests, b"/early-0002"), 1);
}

#[test]
fn early_data_is_refused_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = early_device(&server.cert_path());
    early_request(&cfg, &server.addr(), GET);
    // The ticket does not allow early data, so the device sends its request
    // after the handshake, and it is answered once.
    let second = early_request(&cfg, &server.addr(), b"GET /late HTTP/1.0\r\n\r\n");
    assert_eq!(second.kind, HandshakeKind::Resumed);
    assert!(!second.accepted);
    assert!(second.response.ends_with(b"hello"));
    assert_eq!(reached_backend(&requests, b"/late"), 1);
    assert_eq!(server.stats()["early_data_accepted"], 0);
}

/// `openssl s_client` as the device: a full handshake saving its session
/// (`early` = None, sending a GET), or a resumption sending the file `early` as
/// 0-RTT data and nothing else.
fn s_client_early(addr: &str, sess: &Path, early: Option<&Path>) -> String {
    use std::ffi::OsStr;
    match early {
        Some(f) => s_client::<&OsStr>(
            addr,
            &[
                "-tls1_3".as_ref(),
                "-sess_in".as_ref(),
                sess.as_os_str(),
                "-early_data".as_ref(),
                f.as_os_str(),
            ],
            b"",
        ),
        None => s_client::<&OsStr>(
            addr,
            &["-tls1_3".as_ref(), "-sess_out".as_ref(), sess.as_os_str()],
            b"GET / HTTP/1.0\r\n\r\n",
        ),
    }
}

#[test]
fn openssl_s_client_sends_its_request_as_early_data() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--early-data", "4096"],
    );
    let sess = dir.path().join("sess.pem");
    let out = s_client_early(&server.addr(), &sess, None);
    assert!(out.contains("hello"), "full handshake answered:\n{out}");
    let early = dir.path().join("early.txt");
    std::fs::write(&early, b"GET /openssl-early HTTP/1.0\r\n\r\n").unwrap();
    let out = s_client_early(&server.addr(), &sess, Some(&early));
    assert!(out.contains("Reused,"), "resumed:\n{out}");
    assert!(out.contains("Early data was accepted"), "{out}");
    assert!(
        out.contains("hello"),
        "the early request was answered:\n{out}"
    );
    assert_eq!(reached_backend(&requests, b"/openssl-early"), 1);
}

/// A device that sends its ClientHello and 0-RTT request and then never its
/// Finished: the request was forwarded (that is what 0-RTT means), but the
/// connection is still bound by `handshake_timeout`, not the longer idle timeout.
#[test]
fn a_stalled_0rtt_handshake_is_closed_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &[
            "--early-data",
            "16384",
            "--handshake-timeout",
            "1s",
            "--idle-timeout",
            "60s",
        ],
    );
    let cfg = early_device(&server.cert_path());
    early_request(&cfg, &server.addr(), GET);

    let mut conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    conn.early_data()
        .expect("a ticket that allows early data")
        .write_all(b"GET /stalled HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    sock.write_all(&flight).unwrap();
    // Read (and ignore) the server's flight and its 0.5-RTT answer until it closes.
    let mut buf = [0u8; 4096];
    let closed = loop {
        match sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false, // our 10 s read timeout
        }
    };
    let took = started.elapsed();
    assert!(closed, "the server closed the stalled connection");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, expected about the 1 s handshake timeout"
    );
    assert_eq!(reached_backend(&requests, b"/stalled"), 1);
    assert_eq!(server.stats()["timeouts"], 1);
}
