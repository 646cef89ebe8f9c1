//! A rustls client (a device) through the real endpoint: TLS 1.2 session IDs and
//! TLS 1.3 stateful tickets resume, and 2,000 distinct devices still resume after
//! the endpoint is stopped (SIGTERM) and started again on the same cache file.
mod common;

use std::sync::Arc;

use common::{client_config, device, ping, stat, tempdir, EchoBackend, Endpoint};
use rustls::HandshakeKind;

#[test]
fn rustls_client_resumes_tls12_and_tls13_and_after_restart() {
    let dir = tempdir();
    let backend = EchoBackend::start();
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    let ca = ep.ca();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = client_config(&ca, version);
        assert_eq!(ping(&cfg, ep.addr).unwrap(), HandshakeKind::Full);
        assert_eq!(ping(&cfg, ep.addr).unwrap(), HandshakeKind::Resumed);
    }
    let v12 = client_config(&ca, &rustls::version::TLS12);
    let v13 = client_config(&ca, &rustls::version::TLS13);
    assert_eq!(ping(&v12, ep.addr).unwrap(), HandshakeKind::Full);
    assert_eq!(ping(&v13, ep.addr).unwrap(), HandshakeKind::Full);
    assert_eq!(ep.stop(), 0, "clean exit on SIGTERM");

    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    assert_eq!(ep.ca(), ca);
    assert_eq!(ping(&v12, ep.addr).unwrap(), HandshakeKind::Resumed);
    assert_eq!(ping(&v13, ep.addr).unwrap(), HandshakeKind::Resumed);
    let s = ep.wait_stats(std::time::Duration::from_secs(5), |s| {
        stat(s, "resumed_handshakes") >= 2
    });
    assert_eq!(stat(&s, "full_handshakes"), 0, "{s}");
    assert!(
        stat(&s["store"], "hits") + stat(&s["store"], "takes") >= 1,
        "{s}"
    );
}

/// Devices made just before SIGTERM (the store is flushed on the way out) all
/// resume after the restart: half TLS 1.2, half TLS 1.3.
#[test]
fn two_thousand_devices_made_just_before_sigterm_resume_after_restart() {
    const DEVICES: usize = 2_000;
    const THREADS: usize = 4;
    let dir = tempdir();
    let backend = EchoBackend::start();
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    let v12 = client_config(&ep.ca(), &rustls::version::TLS12);
    let v13 = client_config(&ep.ca(), &rustls::version::TLS13);
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| device(if i % 2 == 0 { &v12 } else { &v13 }))
        .collect();
    let devices = Arc::new(devices);

    let run = |addr, expect: HandshakeKind| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let devices = devices.clone();
                std::thread::spawn(move || {
                    let mut wrong = Vec::new();
                    for i in (t..DEVICES).step_by(THREADS) {
                        match ping(&devices[i], addr) {
                            Ok(k) if k == expect => {}
                            other => wrong.push((i, format!("{other:?}"))),
                        }
                    }
                    wrong
                })
            })
            .collect();
        let wrong: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {DEVICES} devices did not get a {expect:?} handshake, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    };

    run(ep.addr, HandshakeKind::Full);
    assert_eq!(ep.stop(), 0);
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    run(ep.addr, HandshakeKind::Resumed);
    let s = ep.wait_stats(std::time::Duration::from_secs(5), |s| {
        stat(s, "resumed_handshakes") >= DEVICES as u64
    });
    assert_eq!(stat(&s, "full_handshakes"), 0, "{s}");
    assert_eq!(stat(&s, "tls_errors"), 0, "{s}");
}
