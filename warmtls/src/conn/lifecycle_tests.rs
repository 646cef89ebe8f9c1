//! The connection's lifecycle driven in memory through the very machine the
//! endpoint runs (a real rustls client and server, a real store file), where
//! the order of completions matters and a socket test could only hit it by luck.
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::memory::MemoryDriver;
use super::Side;
use crate::tls::ServerConfigs;

/// A TLS 1.3 ChangeCipherSpec record: allowed during the handshake (middlebox
/// compatibility), a fatal `unexpected_message` after the client's Finished.
const CCS: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// tlsfuzzer's "CCS message after Finished message": the client's Finished
/// completes the handshake (the backend connect goes out), the CCS behind it
/// fails the connection, and the connect completes only afterwards. The
/// connection must stay failed — alert, half-close, close on the device's EOF —
/// not start piping to the backend and keep the device waiting for
/// `idle_timeout` (it did, whenever the connect won the race with the alert).
#[test]
fn a_connect_that_completes_after_a_tls_failure_does_not_revive_the_connection() {
    let w = super::tests::world_with(&[&rustls::version::TLS13]);
    let mut d = MemoryDriver::new(
        ServerConfigs::new(w.server.clone()),
        super::tests::limits(None),
    );
    let mut c = ClientConnection::new(w.client.clone(), ServerName::try_from("localhost").unwrap())
        .unwrap();

    // Handshake until the client's Finished has gone in and the machine wants
    // the backend.
    for _ in 0..10 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        assert!(d.deliver(Side::Client, &out).is_empty());
        let back = d.take_to_client();
        c.read_tls(&mut back.as_slice()).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !c.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking());
    assert!(d.posted().connect, "the backend connect is in flight");

    // The forbidden record; the connect completes only after it.
    assert!(d.deliver(Side::Client, &CCS).is_empty());
    let alert = d.take_to_client();
    c.read_tls(&mut alert.as_slice()).unwrap();
    let err = c.process_new_packets().unwrap_err();
    assert!(
        err.to_string().contains("UnexpectedMessage"),
        "the device is told why: {err}"
    );
    assert!(d.connected(Ok(())));

    assert!(d.shut.0, "the device's side is half-closed after the alert");
    assert!(!d.posted().backend_recv, "nothing is read from the backend");
    assert!(
        d.take_to_backend().is_empty(),
        "nothing reached the backend"
    );
    // The device closes in turn: the connection is done, not piping.
    assert!(d.end(Side::Client, None));
    assert!(d.is_finished(), "closed on the device's EOF");
    d.release();
}
