//! Bad peers cost one connection, never the process: a backend that refuses or
//! never accepts closes its client within the connect timeout; non-TLS bytes, a
//! truncated ClientHello and a silent client are closed (the silent ones after
//! the handshake timeout); and the endpoint keeps serving everyone else.
mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{
    client_config, ping, read_until_closed, stat, stuck_listener, tempdir, tls_connect,
    EchoBackend, Endpoint,
};
use rustls::HandshakeKind;

/// Handshake, send a request, and return how long until the endpoint closed.
fn closed_after_handshake(ep: &Endpoint) -> Duration {
    let cfg = client_config(&ep.ca(), &rustls::version::TLS13);
    let mut s = tls_connect(&cfg, ep.addr).unwrap();
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    use std::io::Read;
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("got {n} bytes from a dead backend"),
    }
    start.elapsed()
}

#[test]
fn refused_backend_closes_the_client_promptly_and_later_clients_are_served() {
    let dir = tempdir();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Nothing listens on `port` now.
    let ep = Endpoint::start(
        dir.path(),
        &port.to_string(),
        &["--backend-connect-timeout", "2s"],
    );
    let waited = closed_after_handshake(&ep);
    assert!(waited < Duration::from_secs(1), "closed after {waited:?}");
    let s = ep.wait_stats(Duration::from_secs(5), |s| stat(s, "backend_errors") >= 1);
    assert_eq!(stat(&s, "active_connections"), 0, "{s}");

    // The backend comes up: the same endpoint serves again.
    let Ok(listener) = TcpListener::bind(port) else {
        eprintln!("port {port} was taken meanwhile; skipping the second half");
        return;
    };
    let _backend = EchoBackend::serve_on(listener);
    let cfg = client_config(&ep.ca(), &rustls::version::TLS12);
    assert_eq!(ping(&cfg, ep.addr).unwrap(), HandshakeKind::Full);
}

#[test]
fn backend_not_accepting_closes_the_client_within_the_connect_timeout() {
    let dir = tempdir();
    let (listener, fillers) = stuck_listener();
    let backend: SocketAddr = listener.local_addr().unwrap();
    let ep = Endpoint::start(
        dir.path(),
        &backend.to_string(),
        &["--backend-connect-timeout", "1s"],
    );
    let waited = closed_after_handshake(&ep);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
        "closed after {waited:?}, timeout 1s"
    );
    let s = ep.wait_stats(Duration::from_secs(5), |s| stat(s, "backend_errors") >= 1);
    assert_eq!(stat(&s, "active_connections"), 0, "{s}");

    // Once the backend accepts, the same endpoint serves.
    drop(fillers);
    let _backend = EchoBackend::serve_on(listener);
    let cfg = client_config(&ep.ca(), &rustls::version::TLS13);
    assert!(ping(&cfg, ep.addr).is_ok());
}

/// The first bytes a real client sends: a ClientHello.
fn client_hello(ep: &Endpoint) -> Vec<u8> {
    let cfg = client_config(&ep.ca(), &rustls::version::TLS13);
    let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

#[test]
fn garbage_truncated_and_silent_clients_are_closed_and_others_served() {
    let dir = tempdir();
    let backend = EchoBackend::start();
    let ep = Endpoint::start(
        dir.path(),
        &backend.addr_arg(),
        &["--handshake-timeout", "1s"],
    );
    let hello = client_hello(&ep);
    let addr = ep.addr;

    // Silent clients first (they take the handshake timeout), in parallel.
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        read_until_closed(&mut s, Duration::from_secs(5)).1
    });
    let partial = {
        let half = hello[..hello.len() / 2].to_vec();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&half).unwrap();
            read_until_closed(&mut s, Duration::from_secs(5)).1
        })
    };

    // Not TLS at all: an alert comes back, then the connection closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(3));
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record, got {got:?}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");

    // Lots of random bytes.
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(&common::pattern(200_000, 11));
    read_until_closed(&mut s, Duration::from_secs(3));

    // A truncated ClientHello, then EOF: closed at once.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");

    // Meanwhile a real client is served.
    let cfg = client_config(&ep.ca(), &rustls::version::TLS12);
    assert_eq!(ping(&cfg, addr).unwrap(), HandshakeKind::Full);

    for (what, t) in [("silent", silent), ("truncated", partial)] {
        let took = t.join().unwrap();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "{what} client closed after {took:?}, handshake timeout 1s"
        );
    }
    assert_eq!(ping(&cfg, addr).unwrap(), HandshakeKind::Resumed);
    let s = ep.wait_stats(Duration::from_secs(5), |s| {
        stat(s, "active_connections") == 0 && stat(s, "timeouts") >= 2
    });
    assert!(stat(&s, "tls_errors") >= 2, "{s}");
    let mut ep = ep;
    assert!(ep.alive());
}
