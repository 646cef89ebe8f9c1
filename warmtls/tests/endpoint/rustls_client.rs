//! rustls devices through warmtls: 2,000 distinct sessions resume, also after a
//! restart; plaintext arrives byte-exact both ways.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn two_thousand_devices_resume_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let mut server = Server::start(&cache, &backend, &[]);
    let cert = server.cert_path();
    let devices = mixed_devices(&cert, 2_000);
    assert_eq!(
        round(&devices, &server.addr()),
        (2_000, 0),
        "prime: all full handshakes"
    );
    assert_eq!(round(&devices, &server.addr()), (0, 2_000), "all resume");
    let st = server.stats();
    assert_eq!(st["full_handshakes"], 2_000);
    assert_eq!(st["resumed_handshakes"], 2_000);
    // Graceful shutdown right after the round: the sessions just written must survive.
    assert!(server.stop());
    let server = Server::start(&cache, &backend, &[]);
    assert_eq!(
        round(&devices, &server.addr()),
        (0, 2_000),
        "all resume after the restart"
    );
}

#[test]
fn one_mebibyte_each_way_arrives_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo();
    let server = Server::start(&dir.path().join("c.cache"), &backend, &[]);
    let cfg = device(&server.cert_path(), &rustls::version::TLS13);
    let sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut back = vec![0u8; data.len()];
    for (sent, chunk) in data.chunks(50_000).enumerate() {
        tls.write_all(chunk).unwrap();
        tls.flush().unwrap();
        let at = sent * 50_000;
        tls.read_exact(&mut back[at..at + chunk.len()]).unwrap();
    }
    assert!(back == data, "echoed bytes differ");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let st = server.stats();
    assert!(st["bytes_from_clients"].as_u64().unwrap() > 1 << 20);
    assert!(st["bytes_to_clients"].as_u64().unwrap() > 1 << 20);
}

#[test]
fn store_ticketer_devices_resume_before_and_after_a_restart_and_tls12_keeps_session_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let config = dir.path().join("warmtls.toml");
    std::fs::write(&config, "tls13_tickets = \"store-ticketer\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut server = Server::start(&cache, &backend, &args);
    let devices = mixed_devices(&server.cert_path(), 200);
    assert_eq!(round(&devices, &server.addr()), (200, 0), "prime");
    assert_eq!(round(&devices, &server.addr()), (0, 200), "all resume");
    let store = &server.stats()["store"];
    // 100 TLS 1.3 tickets + 100 TLS 1.2 session IDs, then one new ticket per
    // TLS 1.3 resumption: TLS 1.2 sessions are never also stored as tickets.
    assert_eq!(store["puts"], 300, "{store}");
    assert_eq!(
        store["takes"], 100,
        "each TLS 1.3 ticket used once: {store}"
    );
    assert!(server.stop());
    let server = Server::start(&cache, &backend, &args);
    assert_eq!(
        round(&devices, &server.addr()),
        (0, 200),
        "all resume after the restart"
    );
}
