//! The session-encoding marker in the cache header, and this build's check of a
//! stored value against the encoding its rustls reads.

use std::sync::Arc;
use std::time::Duration;

use warmtls::store::encoding::check_at_startup;
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
