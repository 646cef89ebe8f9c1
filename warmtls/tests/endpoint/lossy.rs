//! A lossy link through the real endpoint: a TLS 1.3 device whose connection is
//! cut (after its ClientHello, after the server's flight) keeps its session —
//! its next connection resumes with the same ticket — and a 0-RTT first flight
//! replayed after such a cut is answered without early data, also across a
//! kill -9 of the endpoint.
//!
//! The device is `openssl s_client` with a saved session file (`-sess_in`), as
//! wolfSSL and Mbed TLS applications keep their saved session object: it offers
//! the same ticket until a replacement arrives. (A rustls client cannot play
//! this device: its session store must hand each TLS 1.3 ticket out at most
//! once, and a ticket value can be neither cloned nor encoded outside rustls.)
//! The link is a proxy in the test that forwards what it is told to and then
//! cuts both sides.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::early_data::{reached_backend, replay};
use crate::support::*;

/// Where the link drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The device's first flight (ClientHello, and 0-RTT data if any) reaches
    /// the server; nothing comes back.
    AfterClientHello,
    /// The server's flight reaches the device too; the device's Finished does
    /// not reach the server.
    AfterServerFlight,
}

/// Read whatever `s` sends until it has been quiet for `quiet` (or closed).
fn read_quiet(s: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A one-connection link to `server` that drops at `cut`. Returns its address
/// and a handle yielding the device's first flight and the two sockets, still
/// open (drop them to cut, [`reset`] them to cut with a RST).
fn lossy_link(
    server: &str,
    cut: Cut,
) -> (
    String,
    std::thread::JoinHandle<(Vec<u8>, TcpStream, TcpStream)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = server.to_string();
    let h = std::thread::spawn(move || {
        let (mut device, _) = l.accept().unwrap();
        let mut up = TcpStream::connect(&server).unwrap();
        up.set_nodelay(true).unwrap();
        let first = read_quiet(&mut device, Duration::from_millis(300));
        assert!(!first.is_empty(), "the device sent its ClientHello");
        up.write_all(&first).unwrap();
        let answer = read_quiet(&mut up, Duration::from_millis(400));
        assert!(!answer.is_empty(), "the server answered the ClientHello");
        if cut == Cut::AfterServerFlight {
            device.write_all(&answer).unwrap();
            // The device's Finished goes nowhere.
            read_quiet(&mut device, Duration::from_millis(300));
        }
        (first, device, up)
    });
    (addr, h)
}

/// `openssl s_client` as the device: a full handshake saving its session in
/// `sess` (`resume` false), or a connection offering that session (`-sess_in`),
/// sending `early` as 0-RTT data if given, else `req` after the handshake.
fn device_connect(
    addr: &str,
    sess: &Path,
    resume: bool,
    early: Option<&Path>,
    req: &[u8],
) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec!["-tls1_3".as_ref()];
    if resume {
        args.extend(["-sess_in".as_ref(), sess.as_os_str()]);
    } else {
        args.extend(["-sess_out".as_ref(), sess.as_os_str()]);
    }
    if let Some(f) = early {
        args.extend(["-early_data".as_ref(), f.as_os_str()]);
    }
    s_client(addr, &args, if early.is_some() { b"" } else { req })
}

/// The device's connection through a link that drops at `cut`; returns the
/// first flight it sent. The cut reaches the server as a FIN on both sides.
fn cut_connection(server: &str, sess: &Path, early: Option<&Path>, cut: Cut) -> Vec<u8> {
    let (link, h) = lossy_link(server, cut);
    let sess = sess.to_path_buf();
    let early = early.map(Path::to_path_buf);
    let dev = std::thread::spawn(move || device_connect(&link, &sess, true, early.as_deref(), GET));
    let (first, device, up) = h.join().unwrap();
    drop(up);
    drop(device);
    let out = dev.join().unwrap();
    assert!(
        !out.contains("hello"),
        "the cut connection got no answer:\n{out}"
    );
    first
}

fn start(cache: &Path, backend: &str) -> Server {
    Server::start(
        cache,
        backend,
        &["--early-data", "4096", "--handshake-timeout", "2s"],
    )
}

/// The server for [`resumes_after`]: stateful tickets with 0-RTT on, the
/// same with `backend_protocol = "http"`, or the store ticketer's 7-day
/// tickets.
#[derive(Clone, Copy)]
enum Tickets {
    Stateful,
    StatefulHttp,
    StoreTicketer,
}

fn tickets(server: &Server) -> serde_json::Value {
    server.stats()["tickets"].clone()
}

fn resumes_after(cut: Cut, kind: Tickets) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = match kind {
        Tickets::Stateful => start(&dir.path().join("c.cache"), &backend),
        Tickets::StatefulHttp => Server::start(
            &dir.path().join("c.cache"),
            &backend,
            &[
                "--backend-protocol",
                "http",
                "--early-data",
                "4096",
                "--handshake-timeout",
                "2s",
            ],
        ),
        Tickets::StoreTicketer => Server::start(
            &dir.path().join("c.cache"),
            &backend,
            &[
                "--tls13-tickets",
                "store-ticketer",
                "--handshake-timeout",
                "2s",
            ],
        ),
    };
    let sess = dir.path().join("sess.pem");
    let out = device_connect(&server.addr(), &sess, false, None, GET);
    assert!(
        out.contains("hello") && out.contains("New, TLSv1.3"),
        "{out}"
    );

    cut_connection(&server.addr(), &sess, None, cut);
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert_eq!(tickets(&server)["restored"], 1, "{}", server.stats());

    let out = device_connect(
        &server.addr(),
        &sess,
        true,
        None,
        b"GET /after-cut HTTP/1.0\r\n\r\n",
    );
    assert!(
        out.contains("Reused, TLSv1.3"),
        "the next connection resumes with the same ticket:\n{out}"
    );
    assert!(out.contains("hello"), "{out}");
    assert_eq!(reached_backend(&requests, b"/after-cut"), 1);
    let stats = server.stats();
    assert_eq!(stats["resumed_handshakes"], 1, "{stats}");
    assert_eq!(stats["full_handshakes"], 1, "{stats}");
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert_eq!(
        tickets(&server)["spent"],
        1,
        "the ticket is spent once the device has its replacement"
    );
    // Spent: offering it once more is a full handshake.
    let out = device_connect(&server.addr(), &sess, true, None, GET);
    assert!(out.contains("New, TLSv1.3"), "{out}");
}

#[test]
fn a_tls13_device_cut_after_its_client_hello_resumes_with_the_same_ticket() {
    resumes_after(Cut::AfterClientHello, Tickets::Stateful);
}

/// The store ticketer's tickets (7 days, no 0-RTT) are pending and restored
/// the same way: `decrypt` takes them through the same store adapter.
#[test]
fn a_store_ticketer_device_cut_after_the_servers_flight_resumes_with_the_same_ticket() {
    resumes_after(Cut::AfterServerFlight, Tickets::StoreTicketer);
}

#[test]
fn a_tls13_device_cut_after_the_servers_flight_resumes_with_the_same_ticket() {
    resumes_after(Cut::AfterServerFlight, Tickets::Stateful);
}

/// `backend_protocol = "http"`: the connection machine frames the requests,
/// and a cut connection's ticket is restored all the same.
#[test]
fn http_mode_a_tls13_device_cut_after_the_servers_flight_resumes_with_the_same_ticket() {
    resumes_after(Cut::AfterServerFlight, Tickets::StatefulHttp);
}

/// `backend_protocol = "http"` with a kept-alive device connection: the device
/// asks again after its new ticket went out, so it has it — the ticket is
/// spent when the pending window closes, while the connection is still open
/// and serving requests, and never restored.
#[test]
fn http_mode_a_kept_alive_device_spends_its_ticket_while_still_connected() {
    use crate::http::{exchange_one, http_backend, Backend};
    let dir = tempfile::tempdir().unwrap();
    let (backend, _seen) = http_backend(Backend::KeepAlive);
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--backend-protocol", "http", "--handshake-timeout", "2s"],
    );
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    {
        let mut tls = connect(&cfg, &server.addr()).unwrap();
        let (head, _) = exchange_one(&mut tls, get("/full").as_bytes(), &mut Vec::new());
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    }
    assert!(server.wait_idle(Duration::from_secs(10)));

    let mut tls = connect(&cfg, &server.addr()).unwrap();
    let mut buf = Vec::new();
    for path in ["/1", "/2"] {
        let (head, body) = exchange_one(&mut tls, get(path).as_bytes(), &mut buf);
        assert!(
            head.starts_with("HTTP/1.1 200") && body == b"hello",
            "{head}"
        );
    }
    assert_eq!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // Past the pending window (the 2 s handshake timeout), still connected.
    assert!(
        wait_for(Duration::from_secs(6), || tickets(&server)["spent"] == 1),
        "{}",
        server.stats()
    );
    assert_eq!(tickets(&server)["restored"], 0, "{}", server.stats());
    assert_eq!(server.stats()["active_connections"], 1);
    let (head, _) = exchange_one(&mut tls, get("/3").as_bytes(), &mut buf);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    drop(tls);
    assert!(server.wait_idle(Duration::from_secs(10)));
    let t = tickets(&server);
    assert_eq!(
        (t["spent"].as_u64(), t["restored"].as_u64()),
        (Some(1), Some(0)),
        "{t}"
    );
}

/// The early request of a cut 0-RTT connection reached the backend (that is
/// what 0-RTT means); neither a replay of that first flight nor the device's
/// own next 0-RTT attempt on the restored ticket gets early data accepted: the
/// backend sees the request once, and the device resumes in 1-RTT.
#[test]
fn a_0rtt_first_flight_replayed_after_a_cut_is_answered_without_early_data() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let server = start(&dir.path().join("c.cache"), &backend);
    let sess = dir.path().join("sess.pem");
    let out = device_connect(&server.addr(), &sess, false, None, GET);
    assert!(out.contains("hello"), "{out}");
    let early = dir.path().join("early.txt");
    std::fs::write(&early, b"GET /lossy-early HTTP/1.0\r\n\r\n").unwrap();

    let flight = cut_connection(&server.addr(), &sess, Some(&early), Cut::AfterClientHello);
    assert!(wait_for(Duration::from_secs(5), || reached_backend(
        &requests,
        b"/lossy-early"
    ) == 1));
    assert!(server.wait_idle(Duration::from_secs(10)));
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 1, "{stats}");
    assert_eq!(stats["tickets"]["restored"], 1, "{stats}");

    let answer = replay(&server.addr(), &flight);
    assert!(!answer.is_empty(), "the replayed ClientHello is answered");
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert_eq!(
        reached_backend(&requests, b"/lossy-early"),
        1,
        "a replayed first flight must not reach the backend again"
    );
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 1, "{stats}");
    assert_eq!(stats["tickets"]["early_data_refused"], 1, "{stats}");

    // The device itself: resumed (1-RTT), its early data refused.
    let out = device_connect(&server.addr(), &sess, true, Some(&early), b"");
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
    assert!(out.contains("Early data was rejected"), "{out}");
    assert_eq!(reached_backend(&requests, b"/lossy-early"), 1);
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 1, "{stats}");
}

fn kill9(server: &Server) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
}

/// A ticket whose connection was cut and restored before a kill -9 is still
/// resumable after the restart (the restore is in the file).
#[test]
fn a_restored_ticket_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _requests, _) = logging_responder();
    let cache = dir.path().join("c.cache");
    let server = start(&cache, &backend);
    let sess = dir.path().join("sess.pem");
    device_connect(&server.addr(), &sess, false, None, GET);
    cut_connection(&server.addr(), &sess, None, Cut::AfterServerFlight);
    assert!(server.wait_idle(Duration::from_secs(10)));
    kill9(&server);
    drop(server);
    let server = start(&cache, &backend);
    let out = device_connect(&server.addr(), &sess, true, None, GET);
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
}

/// The endpoint is killed while the cut 0-RTT connection still holds the
/// ticket (pending): after the restart the ticket misses until its pending
/// deadline (handshake timeout + margin) passes, then counts as restored — a
/// replay of the first flight gets no early data, and the device resumes with
/// the same ticket in 1-RTT.
#[test]
fn a_ticket_pending_at_a_kill_9_is_restored_without_0rtt() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let cache = dir.path().join("c.cache");
    let server = start(&cache, &backend);
    let sess = dir.path().join("sess.pem");
    let out = device_connect(&server.addr(), &sess, false, None, GET);
    assert!(out.contains("hello"), "{out}");
    let early = dir.path().join("early.txt");
    std::fs::write(&early, b"GET /killed-early HTTP/1.0\r\n\r\n").unwrap();

    let (link, h) = lossy_link(&server.addr(), Cut::AfterClientHello);
    let (sess2, early2) = (sess.clone(), early.clone());
    let dev = std::thread::spawn(move || device_connect(&link, &sess2, true, Some(&early2), b""));
    let (flight, device, up) = h.join().unwrap();
    let taken_at = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || reached_backend(
        &requests,
        b"/killed-early"
    ) == 1));
    // The connection is still open (pending ticket) when the endpoint dies.
    kill9(&server);
    drop(server);
    drop(up);
    drop(device);
    dev.join().unwrap();

    let server = start(&cache, &backend);
    // Pending window: the killed server's handshake timeout (2 s) + 5 s margin,
    // in whole seconds of the store's clock.
    let window = Duration::from_secs(2 + 5 + 1);
    if let Some(left) = window.checked_sub(taken_at.elapsed()) {
        std::thread::sleep(left);
    }
    let answer = replay(&server.addr(), &flight);
    assert!(!answer.is_empty());
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert_eq!(
        reached_backend(&requests, b"/killed-early"),
        1,
        "the request is not replayed across the kill -9"
    );
    let stats = server.stats();
    assert_eq!(stats["early_data_accepted"], 0, "{stats}");
    assert_eq!(stats["tickets"]["early_data_refused"], 1, "{stats}");

    let out = device_connect(&server.addr(), &sess, true, Some(&early), b"");
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
    assert!(out.contains("Early data was rejected"), "{out}");
    assert_eq!(reached_backend(&requests, b"/killed-early"), 1);
}
