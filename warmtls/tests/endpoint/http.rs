//! `backend_protocol = "http"` through the real endpoint, against a real HTTP/1.1
//! backend (a thread per connection, keep-alive, counting the connections it
//! accepts and keeping every request head it reads): the headers warmtls adds
//! and strips, Early-Data on 0-RTT requests only (and a 425 retried after the
//! handshake), kept-alive backend connections shared by many devices, bodies by
//! length and chunked both ways byte-exact, backends that close between
//! requests, malformed requests refused before the backend, a dead backend
//! answered with 502.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::early_data::{early_device, early_request};
use crate::support::*;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

/// What the backend saw.
#[derive(Default)]
pub(crate) struct Seen {
    accepted: AtomicU64,
    /// Connections that ended (our close, or the backend's own).
    ended: AtomicU64,
    heads: Mutex<Vec<String>>,
}

impl Seen {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// How the test backend behaves after each response.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Backend {
    /// HTTP/1.1 keep-alive, as long as the peer wants.
    KeepAlive,
    /// Every other response says `Connection: close`, and closes.
    CloseEveryOther,
    /// Closes a connection idle for 100 ms (a short keepalive_timeout).
    IdleClose,
    /// Resets (RST) a connection idle for 100 ms.
    IdleReset,
    /// `425 Too Early` to every request marked `Early-Data: 1`.
    TooEarly,
    /// Never answers a request for `/hang` (and says nothing more on that
    /// connection until it is closed).
    Hang,
}

/// Read from `s` into `buf` until it holds `want` bytes; false at EOF.
fn fill(s: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> bool {
    let mut chunk = [0u8; 16384];
    while buf.len() < want {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Read until `buf` holds `pat`; its end's index, or None at EOF.
fn until(s: &mut impl Read, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(p) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(p + pat.len());
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One HTTP message head from `s` (buffered in `buf`), and its body as it was on
/// the wire (chunk framing included); `None` at EOF.
fn read_message(s: &mut impl Read, buf: &mut Vec<u8>, no_body: bool) -> Option<(String, Vec<u8>)> {
    let end = until(s, buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    if no_body {
        return Some((head, Vec::new()));
    }
    if lower.contains("transfer-encoding: chunked") {
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p + 2;
                }
                let want = buf.len() + 1;
                if !fill(s, buf, want) {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[at..line_end - 2]).into_owned();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, then the empty line.
                let end = loop {
                    if let Some(p) = buf[line_end - 2..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                    {
                        break line_end - 2 + p + 4;
                    }
                    let want = buf.len() + 1;
                    if !fill(s, buf, want) {
                        return None;
                    }
                };
                let body = buf.drain(..end).collect();
                return Some((head, body));
            }
            at = line_end + size + 2;
            if !fill(s, buf, at) {
                return None;
            }
        }
    }
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    if !fill(s, buf, len) {
        return None;
    }
    Some((head, buf.drain(..len).collect()))
}

/// A real HTTP/1.1 backend: echoes each request's body back with the same
/// framing (a GET gets `hello`), keeps connections alive unless `how` says
/// otherwise.
pub(crate) fn http_backend(how: Backend) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    let addr = serve(move |mut s| {
        s2.accepted.fetch_add(1, Ordering::Relaxed);
        /// Counts the connection as ended however the handler returns.
        struct Ends<'a>(&'a AtomicU64);
        impl Drop for Ends<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ends = Ends(&s2.ended);
        let idle_limit = matches!(how, Backend::IdleClose | Backend::IdleReset);
        let _ = s.set_read_timeout(Some(if idle_limit {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(10)
        }));
        let mut buf = Vec::new();
        for n in 0.. {
            let Some((head, body)) = read_message(&mut s, &mut buf, false) else {
                if how == Backend::IdleReset {
                    reset(s);
                }
                return;
            };
            let lower = head.to_ascii_lowercase();
            s2.heads.lock().unwrap().push(head);
            if how == Backend::Hang && lower.starts_with("get /hang ") {
                continue; // silent until the connection ends
            }
            let close = how == Backend::CloseEveryOther && n % 2 == 1;
            let mut resp = Vec::new();
            if how == Backend::TooEarly && lower.contains("\r\nearly-data: 1\r\n") {
                resp.extend_from_slice(
                    b"HTTP/1.1 425 Too Early\r\nContent-Length: 9\r\n\r\ntoo early",
                );
            } else if lower.contains("transfer-encoding: chunked") {
                resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
                if close {
                    resp.extend_from_slice(b"Connection: close\r\n");
                }
                resp.extend_from_slice(b"\r\n");
                resp.extend_from_slice(&body);
            } else {
                let body: &[u8] = if body.is_empty() { b"hello" } else { &body };
                resp.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len()).as_bytes(),
                );
                if close {
                    resp.extend_from_slice(b"Connection: close\r\n");
                }
                resp.extend_from_slice(b"\r\n");
                resp.extend_from_slice(body);
            }
            if s.write_all(&resp).is_err() || close {
                return;
            }
        }
    });
    (addr, seen)
}

fn http_server(dir: &tempfile::TempDir, backend: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--backend-protocol", "http"];
    args.extend_from_slice(extra);
    Server::start(&dir.path().join("c.cache"), backend, &args)
}

/// One request on an open device connection; the response head and body (as
/// on the wire).
pub(crate) fn exchange_one(
    tls: &mut rustls::StreamOwned<ClientConnection, TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> (String, Vec<u8>) {
    tls.write_all(req).unwrap();
    read_message(tls, buf, req.starts_with(b"HEAD")).expect("a whole response")
}

fn header<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

#[test]
fn requests_carry_x_forwarded_for_and_proto_never_the_devices_own() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::KeepAlive);
    let server = http_server(&dir, &backend, &["--http-resumed-header"]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    let spoofing = b"GET /a HTTP/1.0\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nEarly-Data: 1\r\nX-TLS-Resumed: 1\r\nConnection: X-Drop\r\nX-Drop: 1\r\n\r\n";
    for round in 0..2 {
        // HTTP/1.0 without keep-alive: the answer, then close_notify.
        let (kind, resp) = request(&cfg, &server.addr(), spoofing).unwrap();
        assert_eq!(kind == HandshakeKind::Resumed, round == 1);
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("\r\nConnection: close\r\n") && resp.ends_with("hello"),
            "{resp}"
        );
    }
    let heads = seen.heads();
    assert_eq!(heads.len(), 2);
    for (i, head) in heads.iter().enumerate() {
        assert!(head.starts_with("GET /a HTTP/1.0\r\n"), "{head}");
        assert_eq!(header(head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
        assert_eq!(header(head, "x-forwarded-proto"), ["https"], "{head}");
        assert_eq!(
            header(head, "x-tls-resumed"),
            [if i == 0 { "0" } else { "1" }]
        );
        for spoofed in [
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "early-data",
            "x-drop",
        ] {
            assert!(header(head, spoofed).is_empty(), "{spoofed} in {head}");
        }
        assert_eq!(header(head, "connection"), ["keep-alive"], "{head}");
    }
}

/// A device sends `req` as 0-RTT when its ticket allows (`early_data::early_request`):
/// whether the server took it early, and the response as text.
fn early_text(cfg: &Arc<ClientConfig>, addr: &str, req: &[u8]) -> (bool, String) {
    let r = early_request(cfg, addr, req);
    (
        r.accepted,
        String::from_utf8_lossy(&r.response).into_owned(),
    )
}

#[test]
fn early_data_is_marked_on_0rtt_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::KeepAlive);
    let server = http_server(&dir, &backend, &["--early-data", "4096"]);
    let cfg = early_device(&server.cert_path());
    let req = b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (early0, resp0) = early_text(&cfg, &server.addr(), req);
    let (early1, resp1) = early_text(&cfg, &server.addr(), req);
    assert!(
        !early0 && early1,
        "the second connection's request went as 0-RTT"
    );
    assert!(
        resp0.ends_with("hello") && resp1.ends_with("hello"),
        "{resp1}"
    );
    let heads = seen.heads();
    assert_eq!(heads.len(), 2);
    assert!(header(&heads[0], "early-data").is_empty(), "{}", heads[0]);
    assert_eq!(header(&heads[1], "early-data"), ["1"], "{}", heads[1]);
}

#[test]
fn a_425_to_a_0rtt_request_is_sent_again_after_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::TooEarly);
    let server = http_server(&dir, &backend, &["--early-data", "4096"]);
    let cfg = early_device(&server.cert_path());
    let req = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
    early_text(&cfg, &server.addr(), req);
    let (early, resp) = early_text(&cfg, &server.addr(), req);
    assert!(early);
    assert!(
        resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("body"),
        "the device never sees the 425: {resp}"
    );
    let heads = seen.heads();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert_eq!(header(&heads[1], "early-data"), ["1"]);
    assert!(header(&heads[2], "early-data").is_empty());
    assert!(wait_for(Duration::from_secs(5), || server.stats()["http"]
        ["early_data_too_early"]
        == 1));
}

#[test]
fn kept_alive_backend_connections_serve_many_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::KeepAlive);
    let server = http_server(&dir, &backend, &[]);
    let devices = mixed_devices(&server.cert_path(), 30);
    for d in &devices {
        let mut tls = connect(d, &server.addr()).unwrap();
        let mut buf = Vec::new();
        for path in ["/1", "/2"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let (head, body) = exchange_one(&mut tls, req.as_bytes(), &mut buf);
            assert!(
                head.starts_with("HTTP/1.1 200") && body == b"hello",
                "{head}"
            );
            assert!(header(&head, "connection").is_empty(), "kept alive: {head}");
        }
    }
    let accepted = seen.accepted.load(Ordering::Relaxed);
    assert_eq!(seen.heads().len(), 60);
    // Two workers, each with its own pool: a connection per worker at most
    // (one more if a worker's device overlapped another's release).
    assert!(
        accepted <= 4,
        "{accepted} backend connections for 60 requests"
    );
    let stats = server.stats();
    assert!(
        stats["http"]["backend_reused"].as_u64().unwrap() >= 56,
        "{stats}"
    );
    assert_eq!(stats["http"]["requests"], 60);
}

/// A pooled backend connection lent to a device whose exchange is given up
/// (the backend never answers; the idle timeout ends it) is closed for real:
/// io_uring keeps a poll posted on every pooled socket, which holds it open
/// until it is cancelled, so a missed cancel would leave the backend's
/// connection open for good.
#[test]
fn a_pooled_backend_connection_given_up_mid_exchange_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::Hang);
    let server = http_server(&dir, &backend, &["--idle-timeout", "1s"]);
    let device = &mixed_devices(&server.cert_path(), 1)[0];
    let mut buf = Vec::new();
    // Devices one after another until each worker has a pooled connection
    // (the kernel spreads them by port: two workers, eight tries).
    for _ in 0..8 {
        let mut tls = connect(device, &server.addr()).unwrap();
        let (head, _) = exchange_one(&mut tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut buf);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        buf.clear();
    }
    assert!(server.wait_idle(Duration::from_secs(5)));
    assert_eq!(seen.ended.load(Ordering::Relaxed), 0, "all kept");
    // A device whose request the backend never answers: on a pooled
    // connection (else on a new one, and again), given up at the idle timeout.
    for given_up in 1..=4 {
        let reused = server.stats()["http"]["backend_reused"].as_u64().unwrap();
        let mut tls = connect(device, &server.addr()).unwrap();
        tls.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(6), || seen
                .ended
                .load(Ordering::Relaxed)
                == given_up),
            "the backend's connection was closed when the exchange was given up: {}",
            server.stats()
        );
        if server.stats()["http"]["backend_reused"].as_u64().unwrap() > reused {
            return;
        }
    }
    panic!("no device took a pooled connection: {}", server.stats());
}

#[test]
fn bodies_by_length_and_chunked_go_both_ways_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::KeepAlive);
    let server = http_server(&dir, &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let mut tls = connect(&cfg, &server.addr()).unwrap();
    let mut buf = Vec::new();
    let data = pattern(200_000, 11);
    // By length.
    let mut req = format!(
        "PUT /l HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(&data);
    let (head, body) = exchange_one(&mut tls, &req, &mut buf);
    assert!(head.contains("Content-Length: 200000"), "{head}");
    assert!(body == data, "length body differs");
    // Chunked, with an extension and a trailer; odd chunk sizes.
    let mut chunked = Vec::new();
    for piece in data.chunks(7_777) {
        chunked.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let mut req = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked);
    let (head, body) = exchange_one(&mut tls, &req, &mut buf);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert!(body == chunked, "chunked body differs");
    assert_eq!(seen.heads().len(), 2);
    assert_eq!(seen.accepted.load(Ordering::Relaxed), 1);
}

#[test]
fn backends_that_close_between_requests_cost_no_request() {
    for how in [
        Backend::CloseEveryOther,
        Backend::IdleClose,
        Backend::IdleReset,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (backend, seen) = http_backend(how);
        let server = http_server(&dir, &backend, &[]);
        let cfg = device(&server.cert_path(), &rustls::version::TLS12);
        for i in 0..8 {
            let mut tls = connect(&cfg, &server.addr()).unwrap();
            let mut buf = Vec::new();
            let (head, body) =
                exchange_one(&mut tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut buf);
            assert!(
                head.starts_with("HTTP/1.1 200") && body == b"hello",
                "request {i}: {head}"
            );
            drop(tls);
            if how != Backend::CloseEveryOther {
                // Long enough for the backend to give up the idle connection.
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let accepted = seen.accepted.load(Ordering::Relaxed);
        assert!(accepted >= 4, "{accepted}: the backend's closes were seen");
        let stats = server.stats();
        assert_eq!(stats["http"]["bad_gateway"], 0, "{stats}");
    }
}

#[test]
fn malformed_requests_get_4xx_and_never_reach_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = http_backend(Backend::KeepAlive);
    let server = http_server(&dir, &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(20_000, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
            "400",
        ),
        (b"BAD REQUEST LINE\r\n\r\n".to_vec(), "400"),
        (b"\x16\x03\x01 not http\r\n\r\n".to_vec(), "400"),
        (huge, "431"),
        (b"CONNECT example:443 HTTP/1.1\r\n\r\n".to_vec(), "501"),
    ];
    for (req, status) in &cases {
        let (_, resp) = request(&cfg, &server.addr(), req).expect("an answer, then close_notify");
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        assert!(resp.contains("Connection: close"), "{resp}");
    }
    assert!(seen.heads().is_empty(), "nothing reached the backend");
    assert_eq!(server.stats()["http"]["refused"], cases.len());
}

#[test]
fn a_dead_backend_gets_the_device_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = http_server(&dir, &format!("127.0.0.1:{port}"), &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    let (_, resp) = request(&cfg, &server.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
    assert!(wait_for(Duration::from_secs(5), || server.stats()["http"]
        ["bad_gateway"]
        == 1));
}
