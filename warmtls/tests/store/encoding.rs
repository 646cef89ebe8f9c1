//! The session-encoding marker in the cache header, and this build's check of a
//! stored value against the encoding its rustls reads.

use std::sync::Arc;
use std::time::Duration;

use warmtls::store::encoding::{check_at_startup, readable};
use warmtls::store::{Generation, ManualClock};

use crate::support::*;

#[test]
fn a_file_from_before_the_marker_reads_as_rustls_023_and_is_stamped_at_startup() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&cfg, &clock);
    // Bytes 160..176 were spare, and zero, in every file written before the
    // marker; a file the store alone created has them zero too.
    let before = s.encoding_status();
    assert_eq!((before.generation, before.since), (0, 0));
    assert!(before.readable, "unrecorded means rustls 0.23's encoding");

    let found = check_at_startup(&s, Duration::from_secs(7 * 86_400));
    assert_eq!(found, before, "returns what it found");
    let after = s.encoding_status();
    assert_eq!(after.generation, Generation::THIS_BUILD.0);
    assert_eq!((after.previous, after.since), (0, 1_800_000_000));

    clock.advance(60);
    check_at_startup(&s, Duration::from_secs(7 * 86_400));
    assert_eq!(s.encoding_status(), after, "nothing changes on a restart");
    drop(s);
    let reopened = open(&cfg);
    assert_eq!(reopened.encoding_status(), after, "kept in the file");
}

#[test]
fn a_change_of_generation_keeps_the_one_before_and_when_it_changed() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&cfg, &clock);
    // A newer build stored its sessions here...
    s.record_encoding(Generation(2));
    let newer = s.encoding_status();
    assert_eq!((newer.generation, newer.readable), (2, false));
    // ...and this one starts on the file (a rollback).
    clock.advance(3_600);
    let found = check_at_startup(&s, Duration::from_secs(7 * 86_400));
    assert_eq!(found, newer);
    let now = s.encoding_status();
    assert_eq!(now.generation, Generation::THIS_BUILD.0);
    assert_eq!((now.previous, now.previous_readable), (2, false));
    assert_eq!(now.since, 1_800_003_600);
}

#[test]
fn a_read_only_open_records_nothing() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    drop(open(&cfg));
    let ro =
        warmtls::store::SessionStore::open_existing(&cfg.path, warmtls::store::Access::ReadOnly)
            .unwrap();
    check_at_startup(&ro, Duration::from_secs(60));
    assert_eq!(ro.encoding_status().generation, 0);
}

/// The golden values, as committed for the endpoint's golden-session test.
fn golden_values() -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/generation-1/sessions.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    m["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let hex = g["value"].as_str().unwrap();
            let v = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (g["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// The adapter counts a value as undecodable by this build's own reading of
/// the layout, not by asking rustls (whose decoder is not public API): the two
/// must agree on what rustls writes and on every damaged form of it.
#[test]
fn this_builds_reading_of_a_value_agrees_with_rustls_decoder() {
    use rustls::internal::msgs::codec::Codec;
    use rustls::internal::msgs::persist::ServerSessionValue;
    let rustls_reads = |v: &[u8]| ServerSessionValue::read_bytes(v).is_ok();
    let goldens = golden_values();
    assert!(goldens.len() >= 8, "every golden case recorded");
    for (name, v) in &goldens {
        assert!(readable(v) && rustls_reads(v), "{name}");
        for n in 0..v.len() {
            assert_eq!(
                readable(&v[..n]),
                rustls_reads(&v[..n]),
                "{name} cut to {n}"
            );
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(
            !readable(&longer) && !rustls_reads(&longer),
            "{name} + 1 byte"
        );
    }
}
