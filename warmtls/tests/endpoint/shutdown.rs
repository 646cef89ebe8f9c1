//! SIGTERM drains: the listener closes at once (new clients are refused), a
//! request already in progress still gets its answer, the store is flushed, and
//! the process exits 0.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn sigterm_refuses_new_clients_lets_open_ones_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, served) = responder();
    let mut server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    // A device in the middle of its request (the backend waits for a blank line).
    let mut open = connect(&cfg, &server.addr()).unwrap();
    open.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    open.flush().unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    // Draining starts within a tick or two; then nobody listens any more.
    let addr = server.addr();
    assert!(
        wait_for(Duration::from_secs(3), || std::net::TcpStream::connect(
            &addr
        )
        .is_err()),
        "the listener is closed while draining"
    );

    open.write_all(b"Host: localhost\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    open.read_to_end(&mut resp).unwrap();
    assert!(resp.ends_with(b"hello"), "the open request was answered");
    drop(open);

    let t = Instant::now();
    assert!(server.stop(), "exit status 0");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The final stats line was written on the way out.
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.stats).unwrap()).unwrap();
    assert_eq!(st["active_connections"], 0, "{st}");
    assert_eq!(st["full_handshakes"], 1, "{st}");
}

/// A connection that does not finish is cut at the drain timeout, and the
/// process still exits 0 (after flushing the store).
#[test]
fn a_connection_that_never_finishes_is_cut_at_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let mut server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--drain-timeout", "1s"],
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    let mut open = connect(&cfg, &server.addr()).unwrap();
    open.write_all(b"GET / HTTP/1.0\r\n").unwrap(); // and never the blank line
    open.flush().unwrap();
    let t = Instant::now();
    assert!(server.stop(), "exit status 0");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exited after {took:?} with a 1 s drain timeout"
    );
    let mut rest = Vec::new();
    assert!(
        open.read_to_end(&mut rest).is_err() || rest.is_empty(),
        "the unfinished connection was closed"
    );
}
