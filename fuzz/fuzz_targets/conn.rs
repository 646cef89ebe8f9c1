//! Drive the endpoint's connection state machine (a real rustls server with the
//! real session store, the configuration chosen per ClientHello by the default
//! ticket rules, as the endpoint does) through its whole life with arbitrary events: client
//! bytes in arbitrary chunks, EOFs and errors on either side, backend connects
//! that succeed, fail or hang, backend bytes, partial sends, and time passing
//! (timeouts, draining). Never a panic, never an action out of order (the
//! machine asserts its invariants after every step in debug builds), and every
//! run ends with nothing in flight once the connection is closed.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use warmtls::config::Config;
use warmtls::conn::memory::MemoryDriver;
use warmtls::conn::{HttpLimits, Limits, Side};
use warmtls::store::{SessionStore, StoreConfig};
use warmtls::tls::{self, ServerConfigs};

fn server_configs() -> ServerConfigs {
    static CFG: OnceLock<(tempfile::TempDir, ServerConfigs)> = OnceLock::new();
    let sc = CFG
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::default();
            cfg.cache.path = dir.path().join("c");
            cfg.cache.capacity = 1000;
            cfg.early_data = 4096;
            let store = Arc::new(
                SessionStore::open_or_create(&StoreConfig {
                    path: cfg.cache.path.clone(),
                    capacity: 1000,
                    slot_size: 128,
                })
                .unwrap(),
            );
            let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg).unwrap()));
            let sc = tls::server_configs(&cfg, resolver, store, Duration::from_secs(3600)).unwrap();
            (dir, sc)
        })
        .1
        .clone();
    sc
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        backend_connect_timeout: Duration::from_secs(3),
        proxy_protocol: data.first().is_some_and(|b| b & 3 == 1),
        // http mode: the framing, the pool hand-back and the retry rule.
        http: data
            .first()
            .is_some_and(|b| b & 2 == 2)
            .then(HttpLimits::default),
    };
    let mut d = MemoryDriver::new(server_configs(), limits);
    d.pooled = usize::from(data.first().map_or(0, |b| b >> 2 & 3));
    let mut rest = data.get(1..).unwrap_or_default();
    // Each step: an opcode byte, then (for byte deliveries) a length byte and
    // that many bytes.
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 10 {
            0 | 1 | 2 => {
                let n = usize::from(rest.first().copied().unwrap_or(0));
                let bytes = rest
                    .get(1..1 + n)
                    .unwrap_or(rest.get(1..).unwrap_or_default());
                rest = &rest[(1 + bytes.len()).min(rest.len())..];
                let side = if op % 10 == 2 {
                    Side::Backend
                } else {
                    Side::Client
                };
                d.deliver(side, bytes);
            }
            3 => {
                d.end(Side::Client, None);
            }
            4 => {
                d.end(Side::Backend, None);
            }
            5 => {
                d.end(Side::Client, Some(libc::ECONNRESET));
                d.end(Side::Backend, Some(libc::ECONNRESET));
            }
            6 => {
                d.connected(Ok(()));
            }
            7 => {
                d.connected(Err(libc::ECONNREFUSED));
            }
            8 => d.advance(Duration::from_millis(u64::from(op) * 40)),
            _ if op >= 200 => d.fail_backend_send = Some(libc::ECONNRESET),
            _ => d.send_limit = usize::from(op / 10).max(1),
        }
        let _ = d.take_to_client();
        let _ = d.take_to_backend();
        if d.is_finished() {
            break;
        }
    }
    // Time always ends a connection: the handshake, idle and drain deadlines.
    for _ in 0..10 {
        if d.is_finished() {
            break;
        }
        d.advance(Duration::from_secs(61));
    }
    assert!(
        d.is_finished(),
        "a connection outlived every deadline: {:?}",
        d.conn
    );
    d.release();
});
