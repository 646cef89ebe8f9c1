//! Thousands of established connections at once — handshake done, backend
//! connected, bytes piped — all served, and once released (half with
//! close_notify, half by just closing the socket) every slab slot and every
//! descriptor comes back: active_connections 0, /proc/PID/fd at its baseline.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::*;

#[test]
fn two_thousand_piping_connections_are_held_then_released_without_leaks() {
    const CONNS: usize = 2_100;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(16_384), hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = echo();
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    // TLS 1.2 with one client session shared: after the first connection every
    // one is a cheap session-ID resumption.
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    let mut first = connect(&cfg, &server.addr()).unwrap();
    first.write_all(b"ping").unwrap();
    first.read_exact(&mut [0u8; 4]).unwrap();
    drop(first);
    assert!(server.wait_idle(Duration::from_secs(5)));
    let baseline = fd_count(server.pid());

    let mut held = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = connect(&cfg, &server.addr()).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&got, b"ping");
        held.push(s);
    }
    assert!(
        wait_for(Duration::from_secs(5), || server.stats()
            ["active_connections"]
            == CONNS as u64),
        "{}",
        server.stats()
    );
    let open = fd_count(server.pid());
    assert!(
        open >= baseline + 2 * CONNS,
        "a client and a backend socket each: {open} open, baseline {baseline}"
    );

    for (i, mut s) in held.into_iter().enumerate() {
        if i.is_multiple_of(2) {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
    assert!(
        server.wait_idle(Duration::from_secs(20)),
        "all released: {}",
        server.stats()
    );
    assert!(
        wait_for(Duration::from_secs(5), || fd_count(server.pid())
            <= baseline),
        "fds back to {baseline}: {}",
        fd_count(server.pid())
    );
    let st = server.stats();
    assert_eq!(st["refused"], 0, "{st}");
    assert_eq!(st["timeouts"], 0, "{st}");
}
