//! Hostile clients through the real endpoint: forged session IDs and tickets, a
//! corrupted PSK binder, a replayed ClientHello, a slowloris that trickles a
//! valid ClientHello, and malformed ClientHellos. Every ClientHello here starts
//! as the bytes a real rustls client wrote (with a real session where one is
//! needed) and is then patched field by field, so each test changes exactly one
//! thing a hostile client controls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

const HANDSHAKE: u8 = 0x16;
const ALERT: u8 = 0x15;
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_PRE_SHARED_KEY: u16 = 41;
const DECODE_ERROR: u8 = 50;
const DECRYPT_ERROR: u8 = 51;
const ILLEGAL_PARAMETER: u8 = 47;

/// A parsed ClientHello: the fields a hostile client would change.
#[derive(Debug, Clone)]
struct Hello {
    version: [u8; 2],
    random: [u8; 32],
    session_id: Vec<u8>,
    suites: Vec<u8>,
    compression: Vec<u8>,
    extensions: Vec<(u16, Vec<u8>)>,
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_be_bytes([b[i], b[i + 1]]) as usize
}

impl Hello {
    /// The ClientHello a rustls client with `cfg` sends first (taking a ticket
    /// from its session cache if it has one).
    fn from_client(cfg: &Arc<ClientConfig>) -> Hello {
        let mut conn =
            ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        Hello::parse(&wire)
    }

    /// Parse the first handshake record of `wire` (a whole ClientHello).
    fn parse(wire: &[u8]) -> Hello {
        assert_eq!(wire[0], HANDSHAKE);
        let rec_len = u16_at(wire, 3);
        let hs = &wire[5..5 + rec_len];
        assert_eq!(hs[0], 1, "a ClientHello");
        let b = &hs[4..];
        let mut i = 34;
        let sid = b[i] as usize;
        let session_id = b[i + 1..i + 1 + sid].to_vec();
        i += 1 + sid;
        let n = u16_at(b, i);
        let suites = b[i + 2..i + 2 + n].to_vec();
        i += 2 + n;
        let n = b[i] as usize;
        let compression = b[i + 1..i + 1 + n].to_vec();
        i += 1 + n;
        let end = i + 2 + u16_at(b, i);
        i += 2;
        let mut extensions = Vec::new();
        while i < end {
            let (t, n) = (u16_at(b, i) as u16, u16_at(b, i + 2));
            extensions.push((t, b[i + 4..i + 4 + n].to_vec()));
            i += 4 + n;
        }
        Hello {
            version: [b[0], b[1]],
            random: b[2..34].try_into().unwrap(),
            session_id,
            suites,
            compression,
            extensions,
        }
    }

    /// The handshake message (type, 24-bit length, body).
    fn message(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.version);
        b.extend_from_slice(&self.random);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        b.extend_from_slice(&(self.suites.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.suites);
        b.push(self.compression.len() as u8);
        b.extend_from_slice(&self.compression);
        let mut ext = Vec::new();
        for (t, d) in &self.extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        b.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        b.extend_from_slice(&ext);
        let mut m = vec![1u8];
        m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&b);
        m
    }

    /// The message in handshake records of at most 2^14 bytes each.
    fn wire(&self) -> Vec<u8> {
        records(HANDSHAKE, &self.message())
    }

    fn ext_mut(&mut self, t: u16) -> &mut Vec<u8> {
        &mut self
            .extensions
            .iter_mut()
            .find(|(x, _)| *x == t)
            .unwrap_or_else(|| panic!("extension {t} offered"))
            .1
    }
}

/// `payload` as records of `typ`, at most 2^14 bytes each.
fn records(typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    for chunk in payload.chunks(16_384) {
        w.extend_from_slice(&[typ, 3, 3]);
        w.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        w.extend_from_slice(chunk);
    }
    w
}

/// What the server sent back on one raw connection.
#[derive(Debug, Default)]
struct Reply {
    /// (content type, body) of each whole record.
    records: Vec<(u8, Vec<u8>)>,
    /// The server closed (EOF or reset).
    closed: bool,
}

impl Reply {
    /// The fatal alert the server sent in the clear, if any.
    fn alert(&self) -> Option<u8> {
        self.records
            .iter()
            .find(|(t, b)| *t == ALERT && b.len() == 2 && b[0] == 2)
            .map(|(_, b)| b[1])
    }

    /// Plaintext handshake messages (type, body), across records.
    fn handshake_messages(&self) -> Vec<(u8, Vec<u8>)> {
        let mut hs = Vec::new();
        for (t, b) in &self.records {
            if *t == HANDSHAKE {
                hs.extend_from_slice(b);
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i + 4 <= hs.len() {
            let n = (hs[i + 1] as usize) << 16 | u16_at(&hs, i + 2);
            if i + 4 + n > hs.len() {
                break;
            }
            out.push((hs[i], hs[i + 4..i + 4 + n].to_vec()));
            i += 4 + n;
        }
        out
    }

    /// The ServerHello's session ID and extension types.
    fn server_hello(&self) -> Option<(Vec<u8>, Vec<u16>)> {
        let (_, b) = self
            .handshake_messages()
            .into_iter()
            .find(|(t, _)| *t == 2)?;
        let sid = b[34] as usize;
        let session_id = b[35..35 + sid].to_vec();
        let mut i = 35 + sid + 3; // suite, compression
        let end = i + 2 + u16_at(&b, i);
        i += 2;
        let mut exts = Vec::new();
        while i < end {
            exts.push(u16_at(&b, i) as u16);
            i += 4 + u16_at(&b, i + 2);
        }
        Some((session_id, exts))
    }

    /// Whether the server accepted a TLS 1.3 PSK (its ServerHello selects one).
    fn psk_accepted(&self) -> bool {
        let (_, exts) = self.server_hello().expect("a ServerHello");
        exts.contains(&EXT_PRE_SHARED_KEY)
    }
}

/// Send `wire` on a new connection; read records until `done` says enough, the
/// server closes, or `limit` passes.
fn send_raw(addr: &str, wire: &[u8], limit: Duration, done: impl Fn(&Reply) -> bool) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(wire);
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut reply = Reply::default();
    let mut buf = [0u8; 16 * 1024];
    while !done(&reply) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => reply.closed = true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => reply.closed = true, // reset
        }
        reply.records.clear();
        let mut i = 0;
        while i + 5 <= got.len() && i + 5 + u16_at(&got, i + 3) <= got.len() {
            let n = u16_at(&got, i + 3);
            reply.records.push((got[i], got[i + 5..i + 5 + n].to_vec()));
            i += 5 + n;
        }
        if reply.closed {
            break;
        }
    }
    reply
}

/// Until the server's first flight has come: a ServerHello (and, for TLS 1.2, the
/// rest of its flight up to ServerHelloDone), or an alert.
fn first_flight(r: &Reply) -> bool {
    if r.alert().is_some() {
        return true;
    }
    let msgs = r.handshake_messages();
    let hello = msgs.iter().find(|(t, _)| *t == 2);
    match hello {
        None => false,
        Some((_, b)) if b[..2] == [3, 3] && r.server_hello_is_tls12() => {
            msgs.iter().any(|(t, _)| *t == 14)
        }
        Some(_) => true,
    }
}

impl Reply {
    fn server_hello_is_tls12(&self) -> bool {
        // supported_versions (43) in a ServerHello means TLS 1.3.
        self.server_hello()
            .map(|(_, e)| !e.contains(&43))
            .unwrap_or(false)
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    pattern(n, seed ^ std::process::id() as u64)
}

fn counter(st: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = st;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} in {st}"))
}

/// The server's counters once its lingering connections are gone.
fn settled_stats(server: &Server) -> serde_json::Value {
    assert!(
        server.wait_idle(Duration::from_secs(5)),
        "connections released: {}",
        server.stats()
    );
    server.stats()
}

/// A device that has one real TLS 1.3 ticket from `server` (one full handshake).
fn device_with_ticket(server: &Server) -> Arc<ClientConfig> {
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let (kind, body) = request(&cfg, &server.addr(), GET).unwrap();
    assert_eq!(kind, HandshakeKind::Full);
    assert!(body.ends_with(b"hello"));
    cfg
}

#[test]
fn a_random_session_id_or_ticket_gets_a_full_handshake_counted_as_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "2s"],
    );
    let before = settled_stats(&server);

    // TLS 1.2: a random 32-byte session ID. The server looks it up (a miss) and
    // answers with a full handshake: a new session ID and its certificate.
    let cfg12 = device(&server.cert_path(), &rustls::version::TLS12);
    let mut hello = Hello::from_client(&cfg12);
    let forged = random_bytes(32, 1);
    hello.session_id = forged.clone();
    let r = send_raw(
        &server.addr(),
        &hello.wire(),
        Duration::from_secs(5),
        first_flight,
    );
    let (sid, _) = r.server_hello().expect("a ServerHello");
    assert!(r.server_hello_is_tls12());
    assert_ne!(sid, forged, "not resumed");
    assert!(
        r.handshake_messages().iter().any(|(t, _)| *t == 11),
        "a full handshake sends the certificate"
    );

    // TLS 1.3: a real ClientHello with its ticket identity replaced by random bytes.
    let cfg13 = device_with_ticket(&server);
    let mut hello = Hello::from_client(&cfg13);
    let psk = hello.ext_mut(EXT_PRE_SHARED_KEY);
    let id_len = u16_at(psk, 2);
    psk[4..4 + id_len].copy_from_slice(&random_bytes(id_len, 2));
    let r = send_raw(
        &server.addr(),
        &hello.wire(),
        Duration::from_secs(5),
        first_flight,
    );
    assert_eq!(r.alert(), None);
    assert!(!r.psk_accepted(), "an unknown ticket is not resumed");

    let after = settled_stats(&server);
    // The device's one full handshake, and nothing resumed.
    assert_eq!(counter(&after, &["resumed_handshakes"]), 0, "{after}");
    assert_eq!(
        counter(&after, &["store", "misses"]) - counter(&before, &["store", "misses"]),
        2,
        "one lookup of the forged session ID, one take of the forged ticket: {after}"
    );
    assert_eq!(counter(&after, &["store", "hits"]), 0, "{after}");

    // Sessions another endpoint issued (unknown here, with binders that are valid
    // for that endpoint's secret) complete as full handshakes, TLS 1.2 and 1.3.
    let other = Server::start(
        &dir.path().join("other.cache"),
        &backend,
        &[
            "--cert",
            server.cert_path().to_str().unwrap(),
            "--key",
            dir.path().join("c.cache.key.pem").to_str().unwrap(),
        ],
    );
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = device(&server.cert_path(), version);
        assert_eq!(
            request(&cfg, &other.addr(), GET).unwrap().0,
            HandshakeKind::Full
        );
        assert_eq!(
            request(&cfg, &other.addr(), GET).unwrap().0,
            HandshakeKind::Resumed
        );
        // Its session from `other` is offered to `server`: a full handshake.
        let (kind, body) = request(&cfg, &server.addr(), GET).unwrap();
        assert_eq!(kind, HandshakeKind::Full, "{version:?}");
        assert!(body.ends_with(b"hello"));
    }
    let end = settled_stats(&server);
    assert_eq!(counter(&end, &["resumed_handshakes"]), 0, "{end}");
    assert_eq!(
        counter(&end, &["full_handshakes"]) - counter(&after, &["full_handshakes"]),
        2,
        "{end}"
    );
    assert_eq!(
        counter(&end, &["store", "misses"]) - counter(&after, &["store", "misses"]),
        2
    );
}

#[test]
fn a_corrupted_psk_binder_is_refused_with_decrypt_error_and_burns_the_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "2s"],
    );
    let cfg = device_with_ticket(&server);
    let hello = Hello::from_client(&cfg);
    let mut bad = hello.clone();
    let psk = bad.ext_mut(EXT_PRE_SHARED_KEY);
    let last = psk.len() - 1;
    psk[last] ^= 0x01; // the last byte of the (only) binder

    let r = send_raw(&server.addr(), &bad.wire(), Duration::from_secs(5), |r| {
        r.closed
    });
    assert_eq!(r.alert(), Some(DECRYPT_ERROR), "{r:?}");
    assert!(r.closed, "closed after the alert");

    // The real ClientHello, unmodified, no longer resumes: the ticket was taken
    // by the attempt (single use) — a binder forger cannot probe it twice.
    let r = send_raw(
        &server.addr(),
        &hello.wire(),
        Duration::from_secs(5),
        first_flight,
    );
    assert!(!r.psk_accepted());

    let st = settled_stats(&server);
    assert_eq!(counter(&st, &["resumed_handshakes"]), 0, "{st}");
    assert_eq!(counter(&st, &["tls_errors"]), 1, "{st}");
    assert_eq!(
        counter(&st, &["tls_error_reasons", "bad_psk_binder"]),
        1,
        "{st}"
    );
    assert_eq!(
        counter(&st, &["store", "hits"]),
        1,
        "the take that found the ticket: {st}"
    );
    assert_eq!(
        counter(&st, &["store", "misses"]),
        1,
        "the second offer: {st}"
    );
}

/// A socket that keeps a copy of everything written to it.
struct Recording {
    sock: TcpStream,
    sent: Vec<u8>,
}

impl Read for Recording {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.sock.read(b)
    }
}

impl Write for Recording {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.sock.write(b)?;
        self.sent.extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

#[test]
fn a_replayed_client_hello_does_not_resume_a_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "2s"],
    );
    let cfg = device_with_ticket(&server);

    // A real resumption, every byte the device sent recorded.
    let sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(
        conn,
        Recording {
            sock,
            sent: Vec::new(),
        },
    );
    tls.write_all(GET).unwrap();
    let mut body = Vec::new();
    let _ = tls.read_to_end(&mut body);
    assert_eq!(tls.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert!(body.ends_with(b"hello"));
    let sent = &tls.sock.sent;
    let first = &sent[..5 + u16_at(sent, 3)];
    assert!(Hello::parse(first)
        .extensions
        .iter()
        .any(|(t, _)| *t == EXT_PRE_SHARED_KEY));

    // The same ClientHello bytes again, on a new connection: not resumed.
    let r = send_raw(&server.addr(), first, Duration::from_secs(5), first_flight);
    assert_eq!(r.alert(), None);
    assert!(!r.psk_accepted(), "a replayed ClientHello is not resumed");
    // Nor the whole recorded conversation (its Finished cannot match a full handshake).
    let r = send_raw(&server.addr(), sent, Duration::from_secs(5), |r| r.closed);
    assert!(r.closed);

    let st = settled_stats(&server);
    assert_eq!(
        counter(&st, &["resumed_handshakes"]),
        1,
        "only the real one: {st}"
    );
    assert_eq!(
        counter(&st, &["full_handshakes"]),
        1,
        "only the device's first: {st}"
    );
}

#[test]
fn a_slowloris_trickling_a_valid_client_hello_is_cut_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "1s"],
    );
    let hello = Hello::from_client(&device(&server.cert_path(), &rustls::version::TLS13)).wire();
    // 20 sockets, each sending one byte every 20 ms: a ClientHello would take
    // several seconds; the handshake timeout is 1 s.
    let addr = server.addr();
    let trickle = |seed: usize| {
        let (addr, hello) = (addr.clone(), hello.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_nodelay(true).unwrap();
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(seed as u64));
            for b in &hello {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                // A closed connection shows as EOF once the server has shut it.
                s.set_nonblocking(true).unwrap();
                let mut x = [0u8; 64];
                let closed = matches!(s.read(&mut x), Ok(0))
                    || matches!(s.read(&mut x), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
                s.set_nonblocking(false).unwrap();
                if closed {
                    break;
                }
            }
            t.elapsed()
        })
    };
    let slow: Vec<_> = (0..20).map(trickle).collect();
    // Devices are served meanwhile.
    let cfgs = mixed_devices(&server.cert_path(), 4);
    let mut served = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(900) {
        for cfg in &cfgs {
            let (_, body) = request(cfg, &server.addr(), GET).unwrap();
            assert!(body.ends_with(b"hello"));
            served += 1;
        }
    }
    for h in slow {
        let took = h.join().unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "cut at the 1 s handshake timeout, not after sending {} bytes: {took:?}",
            hello.len()
        );
    }
    let st = settled_stats(&server);
    assert_eq!(counter(&st, &["timeouts"]), 20, "{st}");
    assert_eq!(counter(&st, &["tls_errors"]), 0, "{st}");
    assert!(served >= 4, "{served}");
    assert_eq!(
        counter(&st, &["full_handshakes"]) + counter(&st, &["resumed_handshakes"]),
        served
    );
}

#[test]
fn malformed_client_hellos_get_their_alert_are_counted_by_reason_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "2s"],
    );
    let base = Hello::from_client(&device(&server.cert_path(), &rustls::version::TLS13));
    let addr = server.addr();
    let alert_of = |wire: &[u8]| send_raw(&addr, wire, Duration::from_secs(5), |r| r.closed);

    // A duplicate extension: illegal_parameter.
    let mut h = base.clone();
    let groups = h.ext_mut(EXT_SUPPORTED_GROUPS).clone();
    h.extensions.insert(0, (EXT_SUPPORTED_GROUPS, groups));
    let r = alert_of(&h.wire());
    assert_eq!(
        r.alert(),
        Some(ILLEGAL_PARAMETER),
        "duplicate extension: {r:?}"
    );

    // An extension whose length runs past the end of the ClientHello: decode_error.
    // (The last extension's length field, grown by 256.)
    let mut msg = base.message();
    let last = base.extensions.last().unwrap().1.len();
    let at = msg.len() - last - 2;
    msg[at..at + 2].copy_from_slice(&((last + 256) as u16).to_be_bytes());
    let r = alert_of(&records(HANDSHAKE, &msg));
    assert_eq!(
        r.alert(),
        Some(DECODE_ERROR),
        "overrunning extension: {r:?}"
    );

    // A record longer than 2^14 + 256: record_overflow.
    let mut wire = vec![HANDSHAKE, 3, 3];
    wire.extend_from_slice(&(16_384u16 + 257).to_be_bytes());
    wire.extend(std::iter::repeat_n(0u8, 16_384 + 257));
    let r = alert_of(&wire);
    assert_eq!(r.alert(), Some(RECORD_OVERFLOW), "oversized record: {r:?}");

    // A server name of 300 bytes (DNS names are at most 253): illegal_parameter.
    let mut h = base.clone();
    let name = vec![b'a'; 300];
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(&name);
    *h.ext_mut(EXT_SERVER_NAME) = sni;
    let r = alert_of(&h.wire());
    assert_eq!(r.alert(), Some(ILLEGAL_PARAMETER), "300-byte SNI: {r:?}");

    // 30,000 cipher suites (a 60 KB ClientHello over four records), the real ones
    // last: a legal ClientHello, answered normally.
    let mut h = base.clone();
    let mut suites: Vec<u8> = (0..30_000u16)
        .flat_map(|i| (0x5a00 ^ i).to_be_bytes())
        .collect();
    suites.extend_from_slice(&base.suites);
    h.suites = suites;
    let r = send_raw(&addr, &h.wire(), Duration::from_secs(5), first_flight);
    assert_eq!(r.alert(), None, "{r:?}");
    assert!(r.server_hello().is_some(), "answered with a ServerHello");

    // Still serving.
    let (_, body) = request(
        &device(&server.cert_path(), &rustls::version::TLS12),
        &addr,
        GET,
    )
    .unwrap();
    assert!(body.ends_with(b"hello"));
    let st = settled_stats(&server);
    assert_eq!(counter(&st, &["tls_errors"]), 4, "{st}");
    let reasons = &st["tls_error_reasons"];
    assert_eq!(
        counter(reasons, &["malformed"]) + counter(reasons, &["misbehaved"]),
        3,
        "{st}"
    );
    assert_eq!(counter(reasons, &["oversized_record"]), 1, "{st}");
}

const RECORD_OVERFLOW: u8 = 22;
