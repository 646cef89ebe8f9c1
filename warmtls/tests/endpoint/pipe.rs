//! Plaintext through the endpoint to a real backend and back, both directions at
//! once: byte-exact at 1 MiB (so back-pressure is exercised both ways), the
//! client's close_notify becomes the backend's EOF, the backend's close becomes a
//! close_notify; a unix-socket backend (also one whose accept queue is full for a
//! while); and a half-close that arrives before the backend connection is even up.

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

#[test]
fn a_unix_backend_with_a_full_accept_queue_is_served_once_it_accepts() {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backend.sock");
    let listener = UnixListener::bind(&path).unwrap();
    socket::listen(&listener, socket::Backlog::new(0).unwrap()).unwrap();
    // Fill the queue: a unix connect to a full one fails with EAGAIN (it would
    // block a blocking socket) instead of waiting like a TCP SYN.
    let addr = UnixAddr::new(&path).unwrap();
    let mut held = Vec::new();
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            // CLOEXEC: the endpoint started below must not inherit (and so
            // keep open) the connections dropped later.
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => held.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backend's queue: {e}"),
        }
        assert!(held.len() < 16, "the queue never filled");
    }
    let server = Server::start(
        &dir.path().join("c.cache"),
        &format!("unix:{}", path.display()),
        &["--backend-connect-timeout", "5s"],
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let addr = server.addr();
    let device = std::thread::spawn(move || request(&cfg, &addr, GET));
    // The device waits while the queue is full; then the backend catches up.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    // Their queued connections read EOF once accepted; the endpoint's carries
    // the request. (Accepted in whatever order: the endpoint may get in as soon
    // as there is room.)
    drop(held);
    listener.set_nonblocking(true).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    let mut s = loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let n = s.read(&mut buf).unwrap();
                if n > 0 {
                    req.extend_from_slice(&buf[..n]);
                    break s;
                }
            }
            // Bounded: an endpoint that gave up on the backend never connects.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "the endpoint never connected once the queue had room: {}",
                    server.stats()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the request reached the backend");
        req.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    drop(s);
    let (_, resp) = device.join().unwrap().expect("the device is answered");
    assert!(
        resp.ends_with(b"hello"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(server.stats()["backend_errors"], 0);
}
