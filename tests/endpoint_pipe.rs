//! Plaintext through the endpoint to a real backend and back: byte-exact both
//! ways at 1 MiB (so back-pressure is exercised), half-close propagated, and a
//! close_notify when the backend closes; also over a unix-socket backend.
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::{client_config, exchange, pattern, stat, tempdir, EchoBackend, Endpoint, Received};

#[test]
fn one_mebibyte_each_way_is_byte_exact_through_a_tcp_backend() {
    let dir = tempdir();
    let backend = EchoBackend::start();
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    let data = pattern(1 << 20, 7);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = client_config(&ep.ca(), version);
        let got = exchange(&cfg, ep.addr, &data, Duration::from_secs(30)).unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "echoed bytes differ");
    }
    // The backend saw exactly the client's plaintext (recorded once it saw EOF,
    // i.e. the client's close_notify was turned into a half-close).
    let want = Received {
        len: data.len() as u64,
        crc: crc32fast::hash(&data),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = backend.received.lock().unwrap().clone();
        if seen.iter().filter(|r| **r == want).count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "backend saw {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = ep.wait_stats(Duration::from_secs(5), |s| {
        stat(s, "active_connections") == 0 && stat(s, "connections") == 2
    });
    assert!(stat(&s, "bytes_from_clients") > 2 << 20, "{s}");
    assert!(stat(&s, "bytes_to_clients") > 2 << 20, "{s}");
}

#[test]
fn unix_socket_backend_round_trips_and_sees_half_close() {
    let dir = tempdir();
    let path = dir.path().join("backend.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap(); // returns at the endpoint's half-close
        s.write_all(&all).unwrap();
        all.len()
    });
    let ep = Endpoint::start(dir.path(), &format!("unix:{}", path.display()), &[]);
    let data = pattern(100_000, 3);
    let cfg = client_config(&ep.ca(), &rustls::version::TLS12);
    let got = exchange(&cfg, ep.addr, &data, Duration::from_secs(20)).unwrap();
    assert_eq!(backend.join().unwrap(), data.len());
    assert!(got == data, "echoed bytes differ");
}

/// A device that sends its request and half-closes (TCP FIN, no close_notify)
/// before the backend has even accepted still gets its whole answer.
#[test]
fn request_and_fin_before_the_backend_connects_still_get_the_answer() {
    let dir = tempdir();
    let (listener, fillers) = common::stuck_listener();
    let ep = Endpoint::start(
        dir.path(),
        &listener.local_addr().unwrap().to_string(),
        &["--backend-connect-timeout", "5s"],
    );
    let cfg = client_config(&ep.ca(), &rustls::version::TLS13);
    let mut s = common::tls_connect(&cfg, ep.addr).unwrap();
    s.write_all(b"request").unwrap();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    // The endpoint is still connecting (the backend's SYN was dropped); let the
    // client's FIN arrive first, then let the backend accept.
    std::thread::sleep(Duration::from_millis(300));
    drop(fillers);
    let _backend = EchoBackend::serve_on(listener);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap(); // ends at the endpoint's close_notify
    assert_eq!(got, b"request");
}
