//! The session store on real files: round trips, expiry, eviction, erasure, restarts
//! and bad files.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use warmtls::store::{Access, ManualClock, SessionStore, SlotState, StoreConfig, StoreError};

const DAY: u64 = 86_400;

#[test]
fn put_get_take_round_trip() {
    let dir = tempdir();
    let s = open(&config(dir.path(), 1000));
    assert!(s.put(&key(1), &value(1, 0, 90), Duration::from_secs(60)));
    assert_eq!(s.get(&key(1)), Some(value(1, 0, 90)));
    assert_eq!(
        s.get(&key(1)),
        Some(value(1, 0, 90)),
        "get does not consume"
    );
    assert_eq!(s.take(&key(1)), Some(value(1, 0, 90)));
    assert_eq!(s.take(&key(1)), None, "take consumes");
    assert_eq!(s.get(&key(2)), None);
    let c = s.counters();
    assert_eq!((c.puts, c.hits, c.takes, c.misses), (1, 3, 1, 2));
}

#[test]
fn put_overwrites_the_same_key() {
    let dir = tempdir();
    let s = open(&config(dir.path(), 1000));
    s.put(&key(5), &value(5, 1, 90), Duration::from_secs(60));
    s.put(&key(5), &value(5, 2, 40), Duration::from_secs(60));
    assert_eq!(s.get(&key(5)), Some(value(5, 2, 40)));
    assert_eq!(s.scan(|_| {}).live, 1);
}

#[test]
fn keys_of_any_length_work_and_do_not_collide() {
    let dir = tempdir();
    let s = open(&config(dir.path(), 1000));
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1; 32],
        vec![1; 33],
        vec![7; 255],
    ];
    for (i, k) in keys.iter().enumerate() {
        assert!(s.put(k, &value(i as u64, 0, 60), Duration::from_secs(60)));
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.get(k), Some(value(i as u64, 0, 60)));
    }
}

#[test]
fn values_larger_than_a_slot_are_refused_and_counted() {
    let dir = tempdir();
    let s = open(&config(dir.path(), 100));
    assert_eq!(s.max_value_len(), 96);
    assert!(s.put(&key(1), &value(1, 0, 96), Duration::from_secs(60)));
    assert!(!s.put(&key(2), &value(2, 0, 97), Duration::from_secs(60)));
    assert_eq!(s.get(&key(2)), None);
    assert_eq!(s.counters().too_large, 1);
}

#[test]
fn a_session_8_days_old_is_gone_under_a_7_day_lifetime_and_resumes_under_90_days() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&config(dir.path(), 1000), &clock);
    s.put(&key(7), &value(7, 0, 80), Duration::from_secs(7 * DAY));
    s.put(&key(90), &value(90, 0, 80), Duration::from_secs(90 * DAY));
    clock.advance(8 * DAY);
    assert_eq!(s.get(&key(7)), None, "8 days > 7-day lifetime");
    assert_eq!(
        s.get(&key(90)),
        Some(value(90, 0, 80)),
        "8 days < 90-day lifetime"
    );
    assert_eq!(s.counters().expired, 1);
    clock.advance(83 * DAY);
    assert_eq!(s.take(&key(90)), None, "91 days > 90-day lifetime");
}

#[test]
fn the_background_sweep_reclaims_expired_slots() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&config(dir.path(), 1000), &clock);
    for i in 0..500 {
        s.put(
            &key(i),
            &value(i, 0, 80),
            Duration::from_secs(if i % 2 == 0 { 60 } else { 3600 }),
        );
    }
    clock.advance(120);
    assert_eq!(s.sweep(0..s.geometry().bucket_count), 250);
    let t = s.scan(|_| {});
    assert_eq!((t.live, t.expired), (250, 0));
}

#[test]
fn a_full_bucket_evicts_expired_first_then_closest_to_expiry() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    // capacity 14 → one bucket of 16 slots.
    let s = open_with_clock(&config(dir.path(), 14), &clock);
    assert_eq!(s.geometry().bucket_count, 1);
    for i in 0..16 {
        s.put(
            &key(i),
            &value(i, 0, 64),
            Duration::from_secs(1000 + i * 100),
        );
    }
    s.put(&key(100), &value(100, 0, 64), Duration::from_secs(5000));
    assert_eq!(s.get(&key(0)), None, "closest to expiry is evicted");
    for i in 1..8 {
        assert!(s.get(&key(i)).is_some(), "entry {i} kept");
    }
    assert_eq!(s.counters().evictions, 1);
    clock.advance(1550); // entries 1..=5 (expiring at +1100..+1500) are now expired
    s.put(&key(101), &value(101, 0, 64), Duration::from_secs(10));
    assert_eq!(
        s.counters().evictions,
        1,
        "an expired slot is reused, not a live one"
    );
    for i in [6, 7, 100, 101] {
        assert!(s.get(&key(i)).is_some(), "entry {i} kept");
    }
}

#[test]
fn a_store_filled_to_capacity_keeps_nearly_everything() {
    let dir = tempdir();
    let s = open(&config(dir.path(), 20_000));
    for i in 0..20_000 {
        s.put(&key(i), &value(i, 0, 87), Duration::from_secs(3600));
    }
    let kept = (0..20_000).filter(|&i| s.get(&key(i)).is_some()).count();
    assert!(kept >= 19_980, "kept only {kept} of 20000");
    assert_eq!(s.counters().evictions as usize, 20_000 - kept);
}

fn count_occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn secrets_are_zeroed_on_take_expiry_and_eviction() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let cfg = config(dir.path(), 14); // one bucket of 16 slots
    let s = open_with_clock(&cfg, &clock);
    let secret = |n: u8| -> Vec<u8> {
        (0..64)
            .map(|i| (i as u8).wrapping_mul(37) ^ n ^ 0xA5)
            .collect()
    };
    s.put(b"taken", &secret(1), Duration::from_secs(100));
    s.put(b"expires", &secret(2), Duration::from_secs(10));
    s.put(b"evicted", &secret(3), Duration::from_secs(50));
    s.flush().unwrap();
    let bytes = file_bytes(&cfg.path);
    for n in 1..=3 {
        assert_eq!(
            count_occurrences(&bytes, &secret(n)),
            1,
            "secret {n} stored"
        );
    }
    assert!(s.take(b"taken").is_some());
    clock.advance(20);
    assert!(s.get(b"expires").is_none());
    for i in 0..15 {
        s.put(&key(i), &value(i, 0, 64), Duration::from_secs(1000));
    }
    s.put(&key(99), &value(99, 0, 64), Duration::from_secs(1000));
    assert!(s.get(b"evicted").is_none());
    s.flush().unwrap();
    let bytes = file_bytes(&cfg.path);
    for n in 1..=3 {
        assert_eq!(
            count_occurrences(&bytes, &secret(n)),
            0,
            "secret {n} left in the file"
        );
    }
}

#[test]
fn sessions_survive_close_and_reopen() {
    let dir = tempdir();
    let cfg = config(dir.path(), 10_000);
    {
        let s = open(&cfg);
        for i in 0..5_000 {
            assert!(s.put(&key(i), &value(i, 3, 80), Duration::from_secs(3600)));
        }
        s.close().unwrap();
    }
    let s = open(&cfg);
    assert!(!s.previous_shutdown_unclean());
    for i in 0..5_000 {
        assert_eq!(s.get(&key(i)), Some(value(i, 3, 80)), "entry {i}");
    }
    assert_eq!(s.counters().puts, 5_000, "counters persist in the file");
}

#[test]
fn the_cache_file_is_created_0600() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    drop(open(&cfg));
    let mode = std::fs::metadata(&cfg.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only the cache file: {leftovers:?}");
}

fn assert_refused_untouched(cfg: &StoreConfig, check: impl Fn(&StoreError) -> bool) -> String {
    let before = file_bytes(&cfg.path);
    let meta_before = std::fs::metadata(&cfg.path).unwrap().permissions().mode();
    let err = SessionStore::open_or_create(cfg).expect_err("must be refused");
    assert!(check(&err), "unexpected error: {err}");
    assert_eq!(file_bytes(&cfg.path), before, "file must be untouched");
    assert_eq!(
        std::fs::metadata(&cfg.path).unwrap().permissions().mode(),
        meta_before
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&cfg.path.display().to_string()),
        "message names the file: {msg}"
    );
    msg
}

#[test]
fn a_file_with_the_wrong_magic_is_refused_untouched() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    std::fs::write(&cfg.path, vec![b'x'; 8192]).unwrap();
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = assert_refused_untouched(&cfg, |e| matches!(e, StoreError::BadMagic { .. }));
    assert!(msg.contains("not a warmtls cache file"), "{msg}");
}

#[test]
fn a_truncated_file_is_refused_untouched() {
    let dir = tempdir();
    let cfg = config(dir.path(), 1000);
    drop(open(&cfg));
    let len = std::fs::metadata(&cfg.path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cfg.path)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    assert_refused_untouched(&cfg, |e| matches!(e, StoreError::Truncated { .. }));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cfg.path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_refused_untouched(&cfg, |e| matches!(e, StoreError::Truncated { .. }));
}

#[test]
fn a_group_or_world_readable_file_is_refused_untouched() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    drop(open(&cfg));
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = assert_refused_untouched(&cfg, |e| matches!(e, StoreError::Permissions { .. }));
    assert!(msg.contains("chmod 600"), "{msg}");
}

#[test]
fn a_damaged_header_is_refused() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    drop(open(&cfg));
    let mut b = file_bytes(&cfg.path);
    b[40] ^= 0xff; // created_at, covered by the header checksum
    std::fs::write(&cfg.path, &b).unwrap();
    assert_refused_untouched(&cfg, |e| matches!(e, StoreError::BadHeader { .. }));
}

#[test]
fn an_unwritable_directory_is_a_clear_error_and_leaves_nothing() {
    if crate::needs::is_root() {
        // root ignores directory permissions; use a read-only bind instead: a
        // path under /proc can't be created by anyone.
        let cfg = StoreConfig::new("/proc/warmtls-test/sessions.cache");
        let err = SessionStore::open_or_create(&cfg).expect_err("must fail");
        assert!(matches!(err, StoreError::Create { .. }), "{err}");
        return;
    }
    let dir = tempdir();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    let err = SessionStore::open_or_create(&StoreConfig::new(ro.join("c"))).expect_err("must fail");
    assert!(err.to_string().contains("not writable"), "{err}");
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
}

#[test]
fn read_only_access_reads_but_never_writes() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let w = open(&cfg);
    w.put(&key(1), &value(1, 0, 50), Duration::from_secs(60));
    let r = SessionStore::open_existing(&cfg.path, Access::ReadOnly).unwrap();
    let mut live = vec![];
    r.scan(|i| {
        if i.state == SlotState::Live {
            live.push(i.value_len)
        }
    });
    assert_eq!(live, vec![50]);
    assert!(!r.put(&key(2), &value(2, 0, 50), Duration::from_secs(60)));
    assert_eq!(
        r.counters().puts,
        1,
        "the reader sees the writer's counters"
    );
    assert!(r.purge(true).is_err());
}

/// Mount a small tmpfs for the test (root only); None where mounting is not
/// allowed (the test then says so: [`crate::needs::unavailable`]).
fn small_tmpfs(size: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some((dir, mnt))
}

fn umount(p: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(p).status();
}

#[test]
fn a_full_disk_fails_at_creation_with_a_clear_error_and_leaves_nothing() {
    let Some((_dir, mnt)) = small_tmpfs("1m") else {
        crate::needs::unavailable("a tmpfs of its own to fill (mount: root with CAP_SYS_ADMIN)");
        return;
    };
    let cfg = StoreConfig {
        path: mnt.join("sessions.cache"),
        capacity: 100_000,
        slot_size: 128,
    };
    let err = SessionStore::open_or_create(&cfg).expect_err("15 MB do not fit in 1 MB");
    let msg = err.to_string();
    umount_after(&mnt, || {
        assert!(
            msg.contains("not enough free space") && msg.contains("MiB"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_dir(&mnt).unwrap().count(),
            0,
            "no half-written file left"
        );
    });
}

#[test]
fn a_filesystem_that_fills_up_later_does_not_corrupt_existing_entries() {
    let Some((_dir, mnt)) = small_tmpfs("4m") else {
        crate::needs::unavailable("a tmpfs of its own to fill (mount: root with CAP_SYS_ADMIN)");
        return;
    };
    let cfg = StoreConfig {
        path: mnt.join("sessions.cache"),
        capacity: 10_000,
        slot_size: 128,
    };
    let s = SessionStore::open_or_create(&cfg).unwrap();
    for i in 0..5_000 {
        s.put(&key(i), &value(i, 0, 80), Duration::from_secs(3600));
    }
    // Fill the rest of the filesystem.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 8 << 20]);
    // The table's blocks were reserved at creation: writing on still works (no
    // SIGBUS) and nothing already stored is damaged.
    for i in 5_000..10_000 {
        s.put(&key(i), &value(i, 0, 80), Duration::from_secs(3600));
    }
    s.flush().unwrap();
    let m2 = mnt.clone();
    umount_after(&m2, move || {
        for i in 0..10_000 {
            assert_eq!(s.get(&key(i)), Some(value(i, 0, 80)), "entry {i}");
        }
        assert_eq!(s.scan(|_| {}).corrupt, 0);
    });
}

fn umount_after(mnt: &std::path::Path, f: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    umount(mnt);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
