//! Session lineage (RFC 8446 §4.6.1), simulated over 100 days with the store's
//! clock and rustls' time moved together: a device that reconnects every 30
//! minutes resumes every time, except for one full handshake when its chain of
//! resumptions reaches `max_session_age` (90 days).
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConnection};
use warmtls::config::Config;
use warmtls::conn::{Conn, Fed, RECV_BUF};
use warmtls::store::{Clock, ManualClock, SessionStore, StoreConfig};
use warmtls::tls;

#[derive(Debug)]
struct SimTime(Arc<ManualClock>);

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(
            self.0.now_secs(),
        )))
    }
}

/// One connection between an in-memory rustls device and the endpoint's own
/// connection driver (`Conn`), with a "backend" answering `pong`.
fn connect(client: &Arc<ClientConfig>, server: &Arc<rustls::ServerConfig>) -> HandshakeKind {
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap().into();
    let mut s = Conn::new(
        1,
        devnull,
        ServerConnection::new(server.clone()).unwrap(),
        vec![0u8; RECV_BUF].into_boxed_slice(),
        Instant::now(),
    );
    s.backend_rx = Some(vec![0u8; RECV_BUF].into_boxed_slice());
    c.writer().write_all(b"ping").unwrap();
    let mut got = Vec::new();
    let mut answered = false;
    for _ in 0..30 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        for chunk in out.chunks(RECV_BUF) {
            s.client_rx[..chunk.len()].copy_from_slice(chunk);
            assert!(!matches!(s.feed_client(chunk.len()), Fed::Failed(_)));
        }
        if !answered && !s.to_backend.is_empty() {
            if let Some(rx) = s.backend_rx.as_deref_mut() {
                rx[..4].copy_from_slice(b"pong");
            }
            s.feed_backend(4);
            answered = true;
        }
        while let Some(bytes) = s.to_client.next_send() {
            let mut rd: &[u8] = bytes;
            let n = rd.len();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            s.to_client.sent(n);
        }
        let mut buf = [0u8; 64];
        if let Ok(n) = std::io::Read::read(&mut c.reader(), &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        if got == b"pong" && !c.is_handshaking() {
            return c.handshake_kind().unwrap();
        }
    }
    panic!("connection did not complete");
}

fn hundred_days(version: &'static rustls::SupportedProtocolVersion) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(SimTime(clock.clone()));
    let mut cfg = Config::default();
    cfg.cache.path = dir.path().join("c");
    let store = Arc::new(
        SessionStore::open_or_create_with_clock(
            &StoreConfig {
                path: cfg.cache.path.clone(),
                capacity: 1000,
                slot_size: 128,
            },
            clock.clone(),
        )
        .unwrap(),
    );
    let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg).unwrap()));
    let server =
        tls::server_config_with_time(&cfg, resolver, store, cfg.session_lifetime, time.clone())
            .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in CertificateDer::pem_file_iter(tls::self_signed_paths(&cfg.cache.path).cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = Arc::new(
        ClientConfig::builder_with_details(provider, time)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let start = clock.now_secs();
    let mut full_at_day = Vec::new();
    for _ in 0..(100 * 48) {
        if connect(&client, &server) != HandshakeKind::Resumed {
            full_at_day.push((clock.now_secs() - start) / 86_400);
        }
        clock.advance(30 * 60);
    }
    full_at_day
}

#[test]
fn tls13_device_every_30_minutes_for_100_days_does_a_full_handshake_only_every_90_days() {
    assert_eq!(hundred_days(&rustls::version::TLS13), vec![0, 90]);
}

#[test]
fn tls12_device_every_30_minutes_for_100_days_does_a_full_handshake_only_every_90_days() {
    assert_eq!(hundred_days(&rustls::version::TLS12), vec![0, 90]);
}
