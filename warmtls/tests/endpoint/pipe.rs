//! Plaintext through the endpoint to a real backend and back, both directions at
//! once: byte-exact at 1 MiB (so back-pressure is exercised both ways), the
//! client's close_notify becomes the backend's EOF, the backend's close becomes a
//! close_notify; a unix-socket backend; and a half-close that arrives before the
//! backend connection is even up.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn one_mebibyte_both_ways_at_once_is_byte_exact_and_half_closes_propagate() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, seen) = recording_echo();
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let data = pattern(1 << 20, 7);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = device(&server.cert_path(), version);
        // `exchange` fails unless the stream ends with the endpoint's close_notify.
        let got = exchange(&cfg, &server.addr(), &data, Duration::from_secs(30)).unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "echoed bytes differ");
    }
    // The backend saw exactly the client's plaintext and an EOF (it records at EOF).
    let want = (data.len() as u64, crc32fast::hash(&data));
    assert!(
        wait_for(Duration::from_secs(5), || seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| **r == want)
            .count()
            == 2),
        "backend saw {:?}",
        seen.lock().unwrap()
    );
    assert!(server.wait_idle(Duration::from_secs(5)));
}

#[test]
fn a_unix_socket_backend_round_trips_and_sees_the_half_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap(); // ends at the endpoint's half-close
        s.write_all(&all).unwrap();
        all.len()
    });
    let server = Server::start(
        &dir.path().join("c.cache"),
        &format!("unix:{}", path.display()),
        &[],
    );
    let data = pattern(100_000, 3);
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    let got = exchange(&cfg, &server.addr(), &data, Duration::from_secs(20)).unwrap();
    assert_eq!(backend.join().unwrap(), data.len());
    assert!(got == data, "echoed bytes differ");
}

/// A device that sends its request and half-closes (TCP FIN, no close_notify)
/// before the backend has even accepted still gets its whole answer.
#[test]
fn a_request_and_fin_before_the_backend_connects_still_get_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, fillers) = listener_with_full_backlog();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &listener.local_addr().unwrap().to_string(),
        &["--backend-connect-timeout", "5s"],
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let mut s = connect(&cfg, &server.addr()).unwrap();
    s.write_all(b"request").unwrap();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    // The endpoint is still connecting (its SYN was dropped, the kernel retries
    // after 1 s): the FIN arrives first, then the backend starts accepting.
    std::thread::sleep(Duration::from_millis(300));
    drop(fillers);
    echo_on(listener);
    let t = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap(); // ends at the endpoint's close_notify
    assert_eq!(got, b"request", "after {:?}", t.elapsed());
}

/// A backend that dies mid-answer (reset) must not look like a complete answer:
/// the device gets what was sent, then a close without close_notify, so it can
/// tell the response was truncated.
#[test]
fn a_backend_reset_mid_answer_reaches_the_device_as_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let backend = serve(|mut s| {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"partial");
        std::thread::sleep(Duration::from_millis(200));
        reset(s);
    });
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let mut s = connect(&cfg, &server.addr()).unwrap();
    s.write_all(b"request").unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert_eq!(got, b"partial");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::UnexpectedEof),
        "closed without close_notify"
    );
    assert!(wait_for(Duration::from_secs(5), || server.stats()
        ["backend_errors"]
        == 1));
}
