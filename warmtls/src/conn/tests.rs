//! The http mode's pool hand-back and retry rule, driven in memory through the
//! very machine the endpoint runs (a real rustls client and server, a real
//! store file): a pooled connection whose first write of the request fails is
//! given up and the request goes once more on a new connection; one that took
//! the request and then closed gets the device a 502, never a second copy; a
//! complete kept-alive exchange hands the backend connection back.
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

use super::memory::MemoryDriver;
use super::{HttpLimits, Limits, Side};
use crate::config::Config;
use crate::metrics::{snapshot, Snapshot};
use crate::store::SessionStore;
use crate::tls::{self, ServerConfigs};

/// A real rustls server over a real store file, and a client that trusts its
/// self-signed certificate (shared with `lifecycle_tests`).
pub(super) struct World {
    _dir: tempfile::TempDir,
    pub(super) server: Arc<rustls::ServerConfig>,
    pub(super) client: Arc<ClientConfig>,
}

/// A [`World`] whose client offers rustls' default protocol versions.
fn world() -> World {
    world_with(rustls::DEFAULT_VERSIONS)
}

/// A [`World`] whose client offers only `versions`.
pub(super) fn world_with(versions: &[&'static rustls::SupportedProtocolVersion]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.cache.path = dir.path().join("c");
    cfg.cache.capacity = 1000;
    let store = Arc::new(SessionStore::open_or_create(&cfg.store_config()).unwrap());
    let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg).unwrap()));
    let server = tls::server_config(&cfg, resolver, store, Duration::from_secs(3600)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls::self_signed_paths(&cfg.cache.path).cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client = ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    World {
        _dir: dir,
        server,
        client: Arc::new(client),
    }
}

/// The machine's limits in these tests: `http` mode or not.
pub(super) fn limits(http: Option<HttpLimits>) -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        backend_connect_timeout: Duration::from_secs(3),
        proxy_protocol: false,
        http,
    }
}

fn http_driver(w: &World) -> MemoryDriver {
    MemoryDriver::new(
        ServerConfigs::new(w.server.clone()),
        limits(Some(HttpLimits::default())),
    )
}

/// Shuttle bytes between a device sending `request` and the driven machine;
/// `backend` answers what reaches the backend (and completes connects) until
/// the device has a response and the server's close_notify. Returns the
/// response and every byte that reached the backend.
fn run(
    w: &World,
    d: &mut MemoryDriver,
    request: &[u8],
    mut backend: impl FnMut(&mut MemoryDriver, &[u8]),
) -> (Vec<u8>, Vec<u8>) {
    let mut c = ClientConnection::new(w.client.clone(), ServerName::try_from("localhost").unwrap())
        .unwrap();
    c.writer().write_all(request).unwrap();
    let (mut response, mut to_backend) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        d.deliver(Side::Client, &out);
        let sent = d.take_to_backend();
        to_backend.extend_from_slice(&sent);
        backend(d, &sent);
        let back = d.take_to_client();
        let mut rd: &[u8] = &back;
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        let mut buf = [0u8; 4096];
        loop {
            match c.reader().read(&mut buf) {
                Ok(0) => return (response, to_backend),
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    panic!(
        "no close_notify; response so far {:?}",
        String::from_utf8_lossy(&response)
    );
}

fn stats(d: &MemoryDriver) -> Snapshot {
    snapshot(std::slice::from_ref(d.metrics()))
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn a_pooled_connection_whose_first_write_fails_is_replaced_and_the_request_sent_once() {
    let w = world();
    let mut d = http_driver(&w);
    d.pooled = 1;
    // The pooled connection was reset while idle: the kernel takes none of the
    // request's bytes.
    d.fail_backend_send = Some(libc::ECONNRESET);
    let (response, to_backend) = run(&w, &mut d, GET, |d, sent| {
        if d.posted().connect {
            d.connected(Ok(()));
        }
        if !sent.is_empty() {
            d.deliver(Side::Backend, OK);
        }
    });
    assert!(response.starts_with(b"HTTP/1.1 200 OK"), "{response:?}");
    assert_eq!(d.reused, 1);
    assert_eq!(
        d.released,
        [false, true],
        "the dead one closed, the new one kept for the next device"
    );
    assert_eq!(
        to_backend.windows(5).filter(|w| w == b"GET /").count(),
        1,
        "one copy reached a backend"
    );
    let s = stats(&d);
    assert_eq!((s.http.backend_retried, s.http.bad_gateway), (1, 0));
}

#[test]
fn a_pooled_connection_that_took_the_request_then_closed_is_a_502_never_a_retry() {
    let w = world();
    let mut d = http_driver(&w);
    d.pooled = 1;
    let (response, to_backend) = run(&w, &mut d, GET, |d, sent| {
        if !sent.is_empty() {
            d.end(Side::Backend, None); // EOF: it may have read the request
        }
        assert!(!d.posted().connect, "no second connection");
    });
    assert!(
        response.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"),
        "{response:?}"
    );
    assert_eq!(to_backend.windows(5).filter(|w| w == b"GET /").count(), 1);
    let s = stats(&d);
    assert_eq!((s.http.backend_retried, s.http.bad_gateway), (0, 1));
}

#[test]
fn a_complete_kept_alive_exchange_hands_the_backend_connection_back() {
    let w = world();
    let mut d = http_driver(&w);
    let (response, _) = run(&w, &mut d, GET, |d, sent| {
        if d.posted().connect {
            d.connected(Ok(()));
        }
        if !sent.is_empty() {
            d.deliver(Side::Backend, OK);
        }
    });
    assert!(response.ends_with(b"\r\n\r\nok"), "{response:?}");
    assert!(
        String::from_utf8_lossy(&response).contains("Connection: close"),
        "the device asked to close"
    );
    assert_eq!(d.released, [true], "kept for the next device");
    assert_eq!(d.pooled, 1);
}

#[test]
fn a_request_sent_whole_is_quiet_and_a_pooled_link_without_a_receive_gets_one() {
    let w = world();
    let mut d = http_driver(&w);
    d.pooled = 1;
    // io_uring's pool: no receive stays posted on the connection taken.
    d.pool_recv_posted = false;
    let (response, to_backend) = run(&w, &mut d, GET, |d, sent| {
        assert!(!d.posted().connect, "the pooled connection serves");
        if !sent.is_empty() {
            assert!(d.posted().backend_recv, "the machine asked for its receive");
            d.deliver(Side::Backend, OK);
        }
    });
    assert!(response.ends_with(b"\r\n\r\nok"), "{response:?}");
    assert_eq!(to_backend.windows(5).filter(|w| w == b"GET /").count(), 1);
    assert_eq!(d.reused, 1);
    assert_eq!(
        d.quiet_backend_sends, 1,
        "the whole request is the machine's last word until the backend answers"
    );
}

#[test]
fn a_request_whose_body_is_still_coming_is_not_quiet() {
    let w = world();
    let mut d = http_driver(&w);
    let mut c = ClientConnection::new(w.client.clone(), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab";
    c.writer().write_all(head).unwrap();
    let mut body_sent = false;
    for _ in 0..50 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        d.deliver(Side::Client, &out);
        if d.posted().connect {
            d.connected(Ok(()));
        }
        let back = d.take_to_client();
        let mut rd: &[u8] = &back;
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        let sent = d.take_to_backend();
        if sent.ends_with(b"ab") && !body_sent {
            // Head and half the body are out: more is to come, not quiet.
            assert_eq!(d.quiet_backend_sends, 0);
            c.writer().write_all(b"cd").unwrap();
            body_sent = true;
        } else if sent.ends_with(b"cd") {
            assert_eq!(d.quiet_backend_sends, 1, "the body's end is");
            return;
        }
    }
    panic!("the request never reached the backend whole");
}
