//! Values sealed at rest, on real cache files: they survive a reopen with the same
//! key; another key, no key, or altered bytes make them counted misses, never
//! errors; and a known secret never reaches the file.

use std::time::Duration;

use crate::support::*;
use warmtls::store::{Geometry, SessionStore, SlotState, ValueKey, SEAL_OVERHEAD};

const TTL: Duration = Duration::from_secs(3_600);

fn sealed(cfg: &warmtls::store::StoreConfig, key: u8) -> SessionStore {
    open(cfg).seal_values_with(ValueKey::from_bytes(&[key; 32]))
}

#[test]
fn sealed_values_survive_a_reopen_with_the_same_key() {
    let dir = tempdir();
    let cfg = config(dir.path(), 1_000);
    let s = sealed(&cfg, 1);
    assert_eq!(s.max_put_len(), 96 - SEAL_OVERHEAD);
    for i in 0..500 {
        assert!(s.put(&key(i), &value(i, 0, 40 + (i as usize % 41)), TTL));
    }
    s.close().unwrap();
    let s = sealed(&cfg, 1);
    for i in 0..500 {
        let v = s.get(&key(i)).expect("hit");
        assert_eq!(check_value(i, &v), Some(0));
    }
    for i in 0..250 {
        assert_eq!(check_value(i, &s.take(&key(i)).unwrap()), Some(0));
        assert_eq!(s.take(&key(i)), None, "take is single use");
    }
    let c = s.counters();
    assert_eq!(c.decrypt_failures, 0);
    assert_eq!(c.corrupt, 0);
}

#[test]
fn another_key_or_no_key_makes_old_entries_counted_misses() {
    let dir = tempdir();
    let cfg = config(dir.path(), 1_000);
    let s = sealed(&cfg, 1);
    for i in 0..300 {
        assert!(s.put(&key(i), &value(i, 0, 71), TTL));
    }
    s.close().unwrap();

    // No key: sealed values are never handed out as if they were sessions.
    let s = open(&cfg);
    assert_eq!(s.get(&key(0)), None);
    s.close().unwrap();

    // A rotated key: gets, refreshing gets (TLS 1.2) and takes (TLS 1.3) all miss.
    let s = sealed(&cfg, 2);
    for i in 0..100 {
        assert_eq!(s.get(&key(i)), None);
    }
    for i in 100..200 {
        let r = s.get_refreshed(&key(i), TTL, Duration::from_secs(86_400));
        assert_eq!(r, None);
    }
    for i in 200..300 {
        assert_eq!(s.take(&key(i)), None);
    }
    let c = s.counters();
    assert_eq!(c.decrypt_failures, 1 + 300, "{c:?}");
    assert_eq!(c.hits, 0);
    // Refreshing gets and takes erased what they could not open; plain gets left it.
    let live = s.scan(|_| {}).live;
    assert_eq!(live, 100);

    // The new key works for new sessions, and the old key's entries stay misses.
    for i in 1_000..1_100 {
        assert!(s.put(&key(i), &value(i, 1, 71), TTL));
        assert_eq!(check_value(i, &s.get(&key(i)).unwrap()), Some(1));
    }
    s.close().unwrap();

    // Turning sealing on keeps the sessions already in the file resumable: the
    // store serves them and seals them in place (the background pass, here run
    // to the end), then marks the file sealed. From then on an unsealed value —
    // one a store without the key puts — is a counted miss again.
    let plain_cfg = config(&dir.path().join("p"), 100);
    std::fs::create_dir(dir.path().join("p")).unwrap();
    let p = open(&plain_cfg);
    for i in 7..10 {
        assert!(p.put(&key(i), &value(i, 0, 60), TTL));
    }
    p.close().unwrap();
    let p = sealed(&plain_cfg, 1);
    assert!(!p.marked_sealed());
    assert_eq!(
        p.get(&key(7)),
        Some(value(7, 0, 60)),
        "served before sealing"
    );
    p.finish_migration().unwrap();
    assert!(p.marked_sealed());
    let t = p.scan(|_| {});
    assert_eq!((t.live, t.sealed), (3, 3), "sealed in place: {t:?}");
    p.close().unwrap();
    let p = sealed(&plain_cfg, 1);
    assert_eq!(p.take(&key(8)), Some(value(8, 0, 60)), "and served after");
    p.close().unwrap();
    let p = open(&plain_cfg);
    assert!(p.put(&key(10), &value(10, 0, 60), TTL));
    p.close().unwrap();
    let p = sealed(&plain_cfg, 1);
    assert_eq!(p.get(&key(10)), None);
    assert_eq!(p.get(&key(9)), Some(value(9, 0, 60)));
    assert_eq!(p.counters().decrypt_failures, 1);
}

#[test]
fn a_known_secret_never_reaches_the_file_when_values_are_sealed() {
    let secret: Vec<u8> = b"MASTER-SECRET-".iter().cycle().take(80).copied().collect();
    let probe = &secret[..14];
    for seal in [false, true] {
        let dir = tempdir();
        let cfg = config(dir.path(), 2_000);
        let s = if seal { sealed(&cfg, 9) } else { open(&cfg) };
        for i in 0..1_000 {
            assert!(s.put(&key(i), &secret, TTL));
        }
        s.close().unwrap();
        let bytes = file_bytes(&cfg.path);
        let found = bytes.windows(probe.len()).any(|w| w == probe);
        // The unsealed run shows the probe would find the secret if it were there.
        assert_eq!(found, !seal, "sealed: {seal}");
        if seal {
            let s = sealed(&cfg, 9);
            assert_eq!(s.get(&key(5)).as_deref(), Some(&secret[..]));
        }
    }
}

#[test]
fn altered_ciphertext_with_a_valid_checksum_is_a_miss() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let s = sealed(&cfg, 3);
    assert!(s.put(&key(1), &value(1, 0, 70), TTL));
    let mut at = None;
    s.scan(|i| {
        if i.state == SlotState::Live {
            assert!(i.sealed);
            assert_eq!(i.value_len, 70 + SEAL_OVERHEAD);
            at = Some((i.bucket, i.index));
        }
    });
    s.close().unwrap();
    let (bucket, index) = at.expect("one live slot");

    // Flip one ciphertext bit and recompute the slot's CRC-32 (format.rs), as an
    // attacker with write access could: only the AEAD tag can notice.
    let g = Geometry::for_capacity(cfg.capacity, cfg.slot_size);
    let off = g.slot_offset(bucket, index);
    let mut bytes = file_bytes(&cfg.path);
    let slot = &mut bytes[off..off + 128];
    slot[32 + 10] ^= 0x01;
    let len = u16::from_le_bytes([slot[12], slot[13]]) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&bucket.to_le_bytes());
    h.update(&[index as u8]);
    h.update(&slot[4..8]);
    h.update(&slot[12..32]);
    h.update(&slot[32..32 + len]);
    let crc = h.finalize();
    slot[8..12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&cfg.path, &bytes).unwrap();

    let s = sealed(&cfg, 3);
    assert_eq!(s.scan(|_| {}).corrupt, 0, "the checksum verifies");
    assert_eq!(s.take(&key(1)), None);
    let c = s.counters();
    assert_eq!((c.decrypt_failures, c.corrupt, c.hits), (1, 0, 0));
}

#[test]
fn a_value_too_large_to_seal_is_refused_and_counted() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let s = sealed(&cfg, 4);
    let room = s.max_put_len();
    assert!(s.put(&key(1), &value(1, 0, room), TTL));
    assert!(!s.put(&key(2), &value(2, 0, room + 1), TTL));
    assert_eq!(s.counters().too_large, 1);
    assert_eq!(check_value(1, &s.get(&key(1)).unwrap()), Some(0));
    assert_eq!(s.get(&key(2)), None);
}
