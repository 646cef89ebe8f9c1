//! `proxy_protocol`: the backend gets a PROXY protocol v2 header before the
//! plaintext, with the device's real address, the SNI, the TLS version and suite,
//! and whether the session was resumed and the request came as 0-RTT. Checked by
//! a backend that parses the header from the bytes it receives.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, HandshakeKind};

/// One parsed header and the request that followed it.
#[derive(Debug, Clone, Default)]
struct Seen {
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    authority: Option<String>,
    tls_version: Option<String>,
    cipher: Option<String>,
    warmtls_flags: Option<u8>,
    request: Vec<u8>,
}

fn parse_tlvs(mut b: &[u8], seen: &mut Seen) {
    while b.len() >= 3 {
        let (kind, len) = (b[0], u16::from_be_bytes([b[1], b[2]]) as usize);
        let value = &b[3..3 + len];
        match kind {
            0x02 => seen.authority = Some(String::from_utf8(value.to_vec()).unwrap()),
            0x20 => {
                assert_eq!(value[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
                parse_tlvs(&value[5..], seen);
            }
            0x21 => seen.tls_version = Some(String::from_utf8(value.to_vec()).unwrap()),
            0x23 => seen.cipher = Some(String::from_utf8(value.to_vec()).unwrap()),
            0xE0 => seen.warmtls_flags = Some(value[0]),
            _ => {}
        }
        b = &b[3 + len..];
    }
}

/// A backend that expects a PROXY v2 header, records it with the request, and
/// answers `hello`.
fn proxy_backend() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let addr = serve(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n", "PROXY v2 signature");
        assert_eq!(head[12], 0x21, "version 2, PROXY");
        let mut body = vec![0u8; u16::from_be_bytes([head[14], head[15]]) as usize];
        s.read_exact(&mut body).unwrap();
        let mut got = Seen::default();
        let tlvs = match head[13] {
            0x11 => {
                let ip = |o: usize| {
                    std::net::Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3])
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                got.source = Some(SocketAddr::from((ip(0), port(8))));
                got.destination = Some(SocketAddr::from((ip(4), port(10))));
                &body[12..]
            }
            other => panic!("unexpected family {other:#x}"),
        };
        parse_tlvs(tlvs, &mut got);
        let mut buf = [0u8; 4096];
        while !got.request.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.request.extend_from_slice(&buf[..n]),
            }
        }
        seen2.lock().unwrap().push(got);
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    });
    (addr, seen)
}

/// One request on its own TCP connection; returns the device's local address.
fn request_from(
    cfg: &Arc<rustls::ClientConfig>,
    addr: &str,
    req: &[u8],
    early: bool,
) -> (SocketAddr, HandshakeKind, bool) {
    let sock = TcpStream::connect(addr).unwrap();
    let local = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut sent_early = false;
    if early {
        if let Some(mut e) = conn.early_data() {
            e.write_all(req).unwrap();
            sent_early = true;
        }
    }
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let accepted = sent_early && tls.conn.is_early_data_accepted();
    if !accepted {
        tls.write_all(req).unwrap();
    }
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    assert!(resp.ends_with(b"hello"), "{resp:?}");
    (local, tls.conn.handshake_kind().unwrap(), accepted)
}

#[test]
fn the_backend_learns_address_sni_tls_details_and_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = proxy_backend();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--proxy-protocol", "--early-data", "4096"],
    );
    let mut tls13 = Arc::unwrap_or_clone(device(&server.cert_path(), &rustls::version::TLS13));
    tls13.enable_early_data = true;
    let tls13 = Arc::new(tls13);
    let tls12 = device(&server.cert_path(), &rustls::version::TLS12);

    let runs = [
        (&tls13, "/13-full", false, HandshakeKind::Full, false),
        (&tls13, "/13-early", true, HandshakeKind::Resumed, true),
        (&tls13, "/13-resumed", false, HandshakeKind::Resumed, false),
        (&tls12, "/12-full", false, HandshakeKind::Full, false),
        (&tls12, "/12-resumed", false, HandshakeKind::Resumed, false),
    ];
    for (cfg, path, early, kind, accepted) in runs {
        let req = format!("GET {path} HTTP/1.0\r\n\r\n");
        let (local, got_kind, got_accepted) =
            request_from(cfg, &server.addr(), req.as_bytes(), early);
        assert_eq!((got_kind, got_accepted), (kind, accepted), "{path}");
        let all = seen.lock().unwrap();
        let s = all
            .iter()
            .find(|s| s.request.starts_with(req.as_bytes()))
            .unwrap_or_else(|| {
                panic!("{path} reached the backend, right after the header: {all:?}")
            });
        assert_eq!(s.source, Some(local), "{path}: the device's address");
        assert_eq!(s.destination.map(|d| d.port()), Some(server.port));
        assert_eq!(s.authority.as_deref(), Some("localhost"));
        let v = if path.starts_with("/13") {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert_eq!(s.tls_version.as_deref(), Some(v), "{path}");
        let suite = if v == "TLSv1.3" {
            "TLS13_AES_128_GCM_SHA256"
        } else {
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        };
        assert_eq!(s.cipher.as_deref(), Some(suite), "{path}");
        let flags = u8::from(kind == HandshakeKind::Resumed) | (u8::from(accepted) << 1);
        assert_eq!(s.warmtls_flags, Some(flags), "{path}");
    }
}

#[test]
fn no_header_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    request(&cfg, &server.addr(), GET).unwrap();
    assert_eq!(
        requests.lock().unwrap()[0],
        GET,
        "the request, and nothing before it"
    );
}
