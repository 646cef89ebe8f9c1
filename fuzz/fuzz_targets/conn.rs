//! Feed arbitrary client bytes, in arbitrary chunks, to the endpoint's connection
//! state machine (a real rustls server with the real session store): never a panic.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use warmtls::config::Config;
use warmtls::conn::{Conn, Fed, RECV_BUF};
use warmtls::store::{SessionStore, StoreConfig};
use warmtls::tls;

fn server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<(tempfile::TempDir, Arc<rustls::ServerConfig>)> = OnceLock::new();
    CFG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.cache.path = dir.path().join("c");
        cfg.cache.capacity = 1000;
        let store = Arc::new(
            SessionStore::open_or_create(&StoreConfig {
                path: cfg.cache.path.clone(),
                capacity: 1000,
                slot_size: 128,
            })
            .unwrap(),
        );
        let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg).unwrap()));
        let sc = tls::server_config(&cfg, resolver, store, Duration::from_secs(3600)).unwrap();
        (dir, sc)
    })
    .1
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let fd = std::fs::File::open("/dev/null").unwrap().into();
    let tls = rustls::ServerConnection::new(server_config()).unwrap();
    let rx = vec![0u8; RECV_BUF].into_boxed_slice();
    let mut conn = Conn::new(1, fd, tls, rx, Instant::now());
    // The first byte picks the chunk size, as the network would.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for piece in data.get(1..).unwrap_or_default().chunks(chunk) {
        let n = piece.len().min(RECV_BUF);
        conn.client_rx[..n].copy_from_slice(&piece[..n]);
        if let Fed::Failed(_) = conn.feed_client(n) {
            break;
        }
    }
});
