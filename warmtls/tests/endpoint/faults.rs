//! Bad backends, bad clients and many clients: each closes only what it must,
//! within its timeout, and the endpoint keeps serving.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

/// Read until EOF/reset/timeout; returns how long that took and what came.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("still open after {limit:?}")
            }
            Err(_) => break, // reset
        }
    }
    (t.elapsed(), got)
}

#[test]
fn a_refusing_backend_closes_the_client_promptly_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string(); // closed again: refuses
    let log = dir.path().join("server.log");
    let server = Server::launch(
        &dir.path().join("c.cache"),
        &dead,
        &["--backend-connect-timeout", "1s"],
        &Launch {
            stderr: Some(&log),
            ..Launch::default()
        },
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let t = Instant::now();
    // The device is told with close_notify (a clean, empty answer), not a bare EOF.
    let (_, body) = request(&cfg, &server.addr(), GET).expect("close_notify, not a truncation");
    assert!(body.is_empty(), "no response from a dead backend");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed promptly: {:?}",
        t.elapsed()
    );
    for _ in 0..5 {
        let (_, body) = request(&cfg, &server.addr(), GET).expect("close_notify");
        assert!(body.is_empty());
    }
    let st = server.stats();
    assert_eq!(st["backend_errors"], 6);
    assert_eq!(st["active_connections"], 0);
    // At the default level, once per worker and burst, with the address and
    // the reason — not once per device.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("backend {dead}: connection refused")))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "one warning per worker naming the backend and the reason:\n{text}"
    );
    assert!(lines.iter().all(|l| l.contains("WARN")), "{text}");
}

#[test]
fn a_backend_that_never_accepts_times_out_at_backend_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A listener with a full accept queue: further SYNs are dropped, connect hangs.
    let l = listener_with_full_backlog();
    let addr = l.0.local_addr().unwrap().to_string();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &addr,
        &["--backend-connect-timeout", "1s"],
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let t = Instant::now();
    let _ = request(&cfg, &server.addr(), GET);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed at the timeout: {took:?}"
    );
    assert_eq!(server.stats()["backend_errors"], 1);
    drop(l);
}

/// How late a connection closed at a 1 s handshake timeout may be seen closed:
/// the timeout itself, the worker's timer tick, and a scheduler that, with a
/// CI machine's 2 cores shared by parallel test binaries, was seen to run the
/// worker 2.2 s late. The point here is that such a client is closed by the
/// endpoint, and not before its timeout (the lower bound stays tight).
const HANDSHAKE_TIMEOUT_LIMIT: Duration = Duration::from_secs(6);

#[test]
fn garbage_truncated_and_silent_clients_are_closed_and_the_endpoint_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "1s"],
    );

    // Not TLS at all: closed at once, with an alert or silently.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (took, got) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(took < Duration::from_millis(1500), "{took:?}");
    if !got.is_empty() {
        assert_eq!(got[0], 0x15, "an alert record");
    }

    // A truncated ClientHello: closed at the handshake timeout.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .unwrap();
    let (took, _) = read_until_closed(&mut s, Duration::from_secs(7));
    assert!(
        took >= Duration::from_millis(800) && took < HANDSHAKE_TIMEOUT_LIMIT,
        "{took:?}"
    );

    // A silent client: closed at the handshake timeout.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    let (took, _) = read_until_closed(&mut s, Duration::from_secs(7));
    assert!(
        took >= Duration::from_millis(800) && took < HANDSHAKE_TIMEOUT_LIMIT,
        "{took:?}"
    );

    // An oversized record header: an alert, then closed.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).unwrap();
    let (took, _) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Still serving real devices.
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let (_, body) = request(&cfg, &server.addr(), GET).unwrap();
    assert!(body.ends_with(b"hello"));
    let st = server.stats();
    assert!(st["tls_errors"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["timeouts"].as_u64().unwrap() >= 2, "{st}");
    // Connections that got an alert linger up to 1 s for the client's EOF.
    assert!(server.wait_idle(Duration::from_secs(5)));
}

#[test]
fn two_thousand_open_connections_are_held_then_released_without_leaks() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "30s"],
    );
    let baseline = fd_count(server.pid());
    let held: Vec<TcpStream> = (0..2_000)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    assert!(
        wait_for(Duration::from_secs(10), || server.stats()
            ["active_connections"]
            == 2_000),
        "all 2000 held: {}",
        server.stats()
    );
    assert!(fd_count(server.pid()) >= baseline + 2_000);
    // A device is still served while they are held.
    let cfg = device(&server.cert_path(), &rustls::version::TLS12);
    assert!(request(&cfg, &server.addr(), GET)
        .unwrap()
        .1
        .ends_with(b"hello"));
    drop(held);
    assert!(server.wait_idle(Duration::from_secs(10)), "all released");
    assert!(
        wait_for(Duration::from_secs(5), || fd_count(server.pid())
            <= baseline),
        "fds back to {baseline}: {}",
        fd_count(server.pid())
    );
}

#[test]
fn connections_beyond_max_connections_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--max-connections", "10", "--handshake-timeout", "30s"],
    );
    let held: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || server.stats()["refused"]
            .as_u64()
            .unwrap()
            >= 20),
        "{}",
        server.stats()
    );
    drop(held);
    assert!(server.wait_idle(Duration::from_secs(5)));
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    assert!(
        request(&cfg, &server.addr(), GET)
            .unwrap()
            .1
            .ends_with(b"hello"),
        "accepting again after the flood"
    );
}

#[test]
fn sighup_with_a_broken_certificate_keeps_serving_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let cfg = device(&cert, &rustls::version::TLS13);
    assert!(request(&cfg, &server.addr(), GET)
        .unwrap()
        .1
        .ends_with(b"hello"));
    std::fs::write(
        &cert,
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let old = {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("old.pem");
        std::fs::write(&p, ck.cert.pem()).unwrap();
        device(&p, &rustls::version::TLS13)
    };
    assert!(
        request(&old, &server.addr(), GET)
            .unwrap()
            .1
            .ends_with(b"hello"),
        "old certificate still served"
    );
}

#[test]
fn check_validates_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9443\"\nsession_lifetime = \"30d\"\n[cache]\ncapacity = 5000\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listne = \"127.0.0.1:9443\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listne"));
}

#[test]
fn an_unusable_cache_file_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    std::fs::write(&cache, vec![0u8; 10_000]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A backend that answers every connection with `total` bytes as fast as it can.
fn firehose(total: usize) -> String {
    serve(move |mut s| {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total && s.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    })
}

#[test]
fn a_backend_flooding_a_slow_client_does_not_grow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let backend = firehose(256 << 20);
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(GET).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    tls.read_exact(&mut buf[..1024]).unwrap();
    let before = rss_kib(server.pid());
    // A slow reader: 256 KiB every 50 ms, for 2 seconds.
    for _ in 0..40 {
        let mut left = 256 * 1024;
        while left > 0 {
            let n = tls.read(&mut buf[..left.min(64 * 1024)]).unwrap();
            left -= n;
            got += n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = rss_kib(server.pid());
    eprintln!(
        "server RSS {before} KiB -> {after} KiB after {} MiB through a slow reader",
        got >> 20
    );
    assert!(got >= 10 << 20);
    assert!(
        after < before + 8 * 1024,
        "server RSS grew from {before} KiB to {after} KiB while the backend had 256 MiB to send"
    );
}

#[test]
fn a_backend_that_resets_or_never_answers_is_bounded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts, then resets at once.
    let reset_addr = serve(reset);
    let server = Server::start(&dir.path().join("r.cache"), &reset_addr, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let t = Instant::now();
    let r = request(&cfg, &server.addr(), GET);
    assert!(r.map(|(_, b)| b.is_empty()).unwrap_or(true));
    assert!(t.elapsed() < Duration::from_secs(2));

    // Accepts and never answers: the idle timeout closes the client.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    let silent_addr = serve(move |s| h2.lock().unwrap().push(s));
    let server2 = Server::start(
        &dir.path().join("s.cache"),
        &silent_addr,
        &["--idle-timeout", "1s"],
    );
    let cfg2 = device(&server2.cert_path(), &rustls::version::TLS13);
    let t = Instant::now();
    let _ = request(&cfg2, &server2.addr(), GET);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed at the idle timeout: {took:?}"
    );
    assert!(wait_for(Duration::from_secs(5), || server2.stats()
        ["timeouts"]
        == 1));
}

#[test]
fn running_out_of_file_descriptors_is_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    // 64 descriptors: a few dozen connections exhaust the table (EMFILE on accept).
    let server = Server::start_with_fd_limit(
        &dir.path().join("c.cache"),
        &backend,
        &["--handshake-timeout", "30s"],
        Some(64),
    );
    let held: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(server.addr()).ok())
        .collect();
    // While the table is full even the stats file cannot be written: hold for
    // a while, then release and read what was counted.
    std::thread::sleep(Duration::from_millis(1500));
    drop(held);
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::metadata(&server.stats).is_ok() && server.stats()["active_connections"] == 0
    }));
    assert!(
        server.stats()["accept_errors"].as_u64().unwrap_or(0) > 0,
        "EMFILE counted: {}",
        server.stats()
    );
    // The endpoint backs off and keeps serving once descriptors are free again.
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    assert!(
        wait_for(Duration::from_secs(10), || request(
            &cfg,
            &server.addr(),
            GET
        )
        .is_ok_and(|(_, b)| b.ends_with(b"hello"))),
        "served again after EMFILE"
    );
}
