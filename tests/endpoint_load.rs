//! Thousands of connections at once: all served, and once released every slab
//! slot and descriptor comes back (active_connections 0, /proc/PID/fd at baseline).
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{
    client_config, ping, raise_fd_limit, stat, tempdir, tls_connect, EchoBackend, Endpoint,
};

#[test]
fn two_thousand_concurrent_connections_are_held_then_released_without_leaks() {
    const CONNS: usize = 2_100;
    raise_fd_limit();
    let dir = tempdir();
    let backend = EchoBackend::start();
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    // TLS 1.2 with one shared client session: after the first, every connection
    // is a cheap session-ID resumption.
    let cfg = client_config(&ep.ca(), &rustls::version::TLS12);
    ping(&cfg, ep.addr).unwrap();
    ep.wait_stats(Duration::from_secs(5), |s| {
        stat(s, "active_connections") == 0
    });
    let baseline = ep.fd_count();

    let mut held = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = tls_connect(&cfg, ep.addr).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&got, b"ping");
        held.push(s);
    }
    let s = ep.wait_stats(Duration::from_secs(5), |s| {
        stat(s, "active_connections") == CONNS as u64
    });
    assert_eq!(stat(&s, "refused"), 0, "{s}");
    // A client socket and a backend socket per connection.
    let open = ep.fd_count();
    assert!(
        open >= baseline + 2 * CONNS,
        "{open} fds open, baseline {baseline}"
    );

    // Release: half with close_notify, half by just closing the socket.
    for (i, mut s) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fds = ep.fd_count();
        let active = ep.stats().map(|s| stat(&s, "active_connections"));
        if fds == baseline && active == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after release: {fds} fds (baseline {baseline}), active {active:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still serving.
    ping(&cfg, ep.addr).unwrap();
}
