//! Real rustls handshakes, in memory, through the store adapter: TLS 1.3 tickets
//! and TLS 1.2 session IDs resume, and still resume after the store is closed and
//! reopened from its file (a restart, in-process).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use warmtls::store::{SessionCache, SessionStore, StoreConfig};

struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn identity() -> Identity {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Identity {
        cert: ck.cert.der().clone(),
        key: ck.signing_key.serialize_der(),
    }
}

fn server_config(id: &Identity, store: Arc<SessionStore>) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone()));
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], key)
        .unwrap();
    cfg.session_storage = Arc::new(SessionCache::new(store, Duration::from_secs(7 * 86_400)));
    cfg.send_tls13_tickets = 1;
    Arc::new(cfg)
}

fn client_config(
    id: &Identity,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.cert.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One full connection: handshake, a request and a response, so that TLS 1.3
/// tickets (sent after the handshake) reach the client.
fn connect(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    use std::io::{Read, Write};
    c.writer().write_all(b"ping").unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut plain = [0u8; 64];
        if let Ok(n) = s.reader().read(&mut plain) {
            if &plain[..n] == b"ping" {
                s.writer().write_all(b"pong").unwrap();
            }
        }
        let mut back = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut back).unwrap();
        }
        c.read_tls(&mut back.as_slice()).unwrap();
        c.process_new_packets().unwrap();
        let mut plain = [0u8; 64];
        if let Ok(n) = c.reader().read(&mut plain) {
            got.extend_from_slice(&plain[..n]);
        }
        if got == b"pong" && !c.is_handshaking() {
            break;
        }
    }
    assert_eq!(got, b"pong");
    c.handshake_kind().unwrap()
}

fn resumes_across_restart(version: &'static rustls::SupportedProtocolVersion) {
    let dir = crate::support::tempdir();
    let cfg = StoreConfig {
        path: dir.path().join("c"),
        capacity: 1000,
        slot_size: 128,
    };
    let id = identity();
    let clients: Vec<_> = (0..20).map(|_| client_config(&id, version)).collect();
    {
        let store = Arc::new(SessionStore::open_or_create(&cfg).unwrap());
        let server = server_config(&id, store.clone());
        for c in &clients {
            assert_eq!(connect(c, &server), HandshakeKind::Full);
        }
        for c in &clients {
            assert_eq!(connect(c, &server), HandshakeKind::Resumed);
        }
        assert!(store.counters().hits >= 20);
        drop(server);
        Arc::try_unwrap(store).unwrap().close().unwrap();
    }
    let store = Arc::new(SessionStore::open_or_create(&cfg).unwrap());
    let server = server_config(&id, store.clone());
    for c in &clients {
        assert_eq!(
            connect(c, &server),
            HandshakeKind::Resumed,
            "resumes after the restart"
        );
    }
    // What this build's rustls writes is in the session encoding this build
    // records in the header and checks on every read (store/encoding.rs):
    // nothing it wrote was counted as undecodable on the way back.
    assert_eq!(store.counters().undecodable, 0);
}

#[test]
fn tls13_tickets_resume_and_survive_a_restart() {
    resumes_across_restart(&rustls::version::TLS13);
}

#[test]
fn tls12_session_ids_resume_and_survive_a_restart() {
    resumes_across_restart(&rustls::version::TLS12);
}

#[test]
fn a_tls13_ticket_is_single_use() {
    let dir = crate::support::tempdir();
    let cfg = StoreConfig {
        path: dir.path().join("c"),
        capacity: 1000,
        slot_size: 128,
    };
    let id = identity();
    let store = Arc::new(SessionStore::open_or_create(&cfg).unwrap());
    let server = server_config(&id, store.clone());
    let client = client_config(&id, &rustls::version::TLS13);
    connect(&client, &server);
    connect(&client, &server);
    let c = store.counters();
    // One ticket per handshake: each resumption takes the previous ticket and
    // puts a fresh one, so exactly one live entry remains.
    assert_eq!((c.puts, c.takes), (2, 1));
    assert_eq!(store.scan(|_| {}).live, 1);
}
