//! A running endpoint whose cache configuration changes: the file grows from
//! 1M to 2M sessions, then moves to 192-byte slots sealed with a key. A mixed
//! TLS 1.2/1.3 fleet keeps resuming across each change (the sessions move from
//! the previous file while the endpoint serves), TLS 1.3 tickets stay single use
//! across the change (a replayed 0-RTT first flight never reaches the backend
//! again), and every file verifies.
//!
//! A few thousand devices in a table of a million show the same as a million
//! devices would; the big-fleet figures are in bench/RESULTS.md.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::early_data::{early_device, early_request, reached_backend, replay};
use crate::support::*;
use rustls::HandshakeKind;

const DEVICES: usize = 2_000;

fn cache_tool(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .args(args)
        .output()
        .expect("run warmtls-cache");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn previous(cache: &Path) -> std::path::PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".prev");
    p.into()
}

/// `warmtls-cache verify` passes on the cache file and on a previous file, if any.
fn verify_all(cache: &Path) {
    for f in [cache.to_path_buf(), previous(cache)] {
        if f.exists() {
            let (code, out) = cache_tool(&["verify".as_ref(), f.as_os_str()]);
            assert_eq!(code, 0, "{}: {out}", f.display());
        }
    }
}

fn stats_json(cache: &Path) -> serde_json::Value {
    let (code, out) = cache_tool(&["stats".as_ref(), "--json".as_ref(), cache.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_fleet_keeps_resuming_while_its_cache_grows_and_then_turns_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (backend, requests, _) = logging_responder();
    let cache = dir.path().join("c.cache");
    let key = keys.path().join("cache.key");
    let st = Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .arg("keygen")
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let sealed_cfg = dir.path().join("sealed.toml");
    std::fs::write(&sealed_cfg, "[cache]\nslot_size = 192\n").unwrap();
    let early = ["--early-data", "16384"];

    let mut server = Server::launch(
        &cache,
        &backend,
        &early,
        &Launch {
            capacity: Some(1_000_000),
            ..Default::default()
        },
    );
    let devices = mixed_devices(&server.cert_path(), DEVICES);
    let phone = early_device(&server.cert_path());
    assert_eq!(round(&devices, &server.addr()), (DEVICES, 0), "prime");
    assert_eq!(round(&devices, &server.addr()), (0, DEVICES), "resume");
    early_request(&phone, &server.addr(), b"GET /prime HTTP/1.0\r\n\r\n");
    let before_grow = early_request(&phone, &server.addr(), b"GET /zero-rtt-1 HTTP/1.0\r\n\r\n");
    assert!(before_grow.accepted);
    assert!(server.stop());
    assert_eq!(stats_json(&cache)["capacity"], 1_000_000);

    let changes: [(&str, Vec<&str>); 2] = [
        ("grown to 2M", vec![]),
        (
            "192-byte slots, sealed",
            vec![
                "--config",
                sealed_cfg.to_str().unwrap(),
                "--cache-key",
                key.to_str().unwrap(),
            ],
        ),
    ];
    let mut flight = before_grow;
    let mut marker = b"/zero-rtt-1".to_vec();
    for (n, (change, args)) in changes.iter().enumerate() {
        let mut server = Server::launch(
            &cache,
            &backend,
            &[&early[..], args].concat(),
            &Launch {
                capacity: Some(2_000_000),
                ..Default::default()
            },
        );
        let (full, resumed) = round(&devices, &server.addr());
        assert!(
            resumed * 1000 >= DEVICES * 999,
            "{change}: {resumed} of {DEVICES} resumed ({full} full)"
        );
        // The ticket the captured first flight names was taken before the
        // change: replayed now, its early data never reaches the backend.
        replay(&server.addr(), &flight.first_flight);
        assert_eq!(reached_backend(&requests, &marker), 1, "{change}: replayed");
        // The phone's own next ticket crossed the change and still gives 0-RTT.
        marker = format!("/zero-rtt-{}", n + 2).into_bytes();
        let req = [b"GET ".as_slice(), &marker, b" HTTP/1.0\r\n\r\n"].concat();
        flight = early_request(&phone, &server.addr(), &req);
        assert_eq!(flight.kind, HandshakeKind::Resumed, "{change}");
        assert!(flight.accepted, "{change}: 0-RTT after the change");
        assert_eq!(reached_backend(&requests, &marker), 1);
        // That ticket was read through the previous file and taken from it:
        // replayed on this same process, it is gone too.
        replay(&server.addr(), &flight.first_flight);
        assert_eq!(
            reached_backend(&requests, &marker),
            1,
            "{change}: replayed at once"
        );
        let st = server.stats();
        assert!(
            st["store"]["migrated"].as_u64().unwrap() >= DEVICES as u64 / 2,
            "{change}: {st}"
        );
        assert_eq!(st["tls_errors"], 0, "{change}: {st}");
        // The background migration finishes and removes the previous file.
        assert!(
            wait_for(Duration::from_secs(30), || !previous(&cache).exists()),
            "{change}: the previous file is still there"
        );
        assert!(server.stop());
        verify_all(&cache);
    }
    let st = stats_json(&cache);
    assert_eq!(
        (st["capacity"].as_u64(), st["slot_size"].as_u64()),
        (Some(2_000_000), Some(192))
    );
    assert_eq!(st["live"], st["sealed"], "every session is sealed: {st}");
    assert!(st["live"].as_u64().unwrap() >= DEVICES as u64);
}
