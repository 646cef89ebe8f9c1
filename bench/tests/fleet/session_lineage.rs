//! Session lineage (RFC 8446 §4.6.1), simulated over 100 days with the store's
//! clock and rustls' time moved together: a device that reconnects every 30
//! minutes resumes every time, except for one full handshake when its chain of
//! resumptions reaches `max_session_age` (90 days).
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, HandshakeKind};
use warmtls::config::{Config, Tls13Tickets};
use warmtls::store::{Clock, ManualClock, SessionStore, StoreConfig};
use warmtls::tls;
use warmtls_bench::fleet::sleep::{self, SimTime};

fn connect(client: &Arc<ClientConfig>, server: &Arc<rustls::ServerConfig>) -> HandshakeKind {
    sleep::connect(client, server).expect("connection completes")
}

fn hundred_days(
    version: &'static rustls::SupportedProtocolVersion,
    tickets: Tls13Tickets,
) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(SimTime(clock.clone()));
    let mut cfg = Config {
        tls13_tickets: tickets,
        ..Config::default()
    };
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
    assert_eq!(
        hundred_days(&rustls::version::TLS13, Tls13Tickets::Stateful),
        vec![0, 90]
    );
}

#[test]
fn tls12_device_every_30_minutes_for_100_days_does_a_full_handshake_only_every_90_days() {
    assert_eq!(
        hundred_days(&rustls::version::TLS12, Tls13Tickets::Stateful),
        vec![0, 90]
    );
}

#[test]
fn tls13_device_with_store_tickets_every_30_minutes_for_100_days_does_a_full_handshake_only_every_90_days(
) {
    assert_eq!(
        hundred_days(&rustls::version::TLS13, Tls13Tickets::StoreTicketer),
        vec![0, 90]
    );
}
