//! The store under real threads, real processes, SIGKILL and flipped bits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use warmtls::store::{Access, SessionStore, SlotState, StoreConfig};

const TTL: Duration = Duration::from_secs(3600);

#[test]
fn take_is_exactly_once_across_threads_and_no_torn_value_is_returned() {
    let dir = tempdir();
    let store = Arc::new(open(&config(dir.path(), 2_000)));
    let threads = 4;
    let results: Vec<Vec<(u64, u64)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                sc.spawn(move || {
                    let mut rng = Rng(0x1234_5678 + t);
                    let mut taken = vec![];
                    for n in 0..40_000u64 {
                        let k = rng.below(300);
                        let len = 40 + rng.below(57) as usize;
                        match rng.below(3) {
                            0 => {
                                assert!(store.put(&key(k), &value(k, (t << 32) | n, len), TTL));
                            }
                            1 => {
                                if let Some(v) = store.get(&key(k)) {
                                    assert!(
                                        check_value(k, &v).is_some(),
                                        "torn value from get for key {k}"
                                    );
                                }
                            }
                            _ => {
                                if let Some(v) = store.take(&key(k)) {
                                    let version = check_value(k, &v).expect("torn value from take");
                                    taken.push((k, version));
                                }
                            }
                        }
                    }
                    taken
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let mut seen = HashSet::new();
    let mut total = 0;
    for (k, version) in results.into_iter().flatten() {
        total += 1;
        assert!(
            seen.insert((k, version)),
            "entry {k} version {version:#x} taken twice"
        );
    }
    assert!(total > 1000, "the test must actually take things ({total})");
    assert_eq!(store.scan(|_| {}).corrupt, 0);
}

#[test]
#[ignore = "a child process of take_is_exactly_once_across_processes, not a test of its own"]
fn child_takes_keys() {
    let Ok(path) = std::env::var("WARMTLS_TEST_TAKE_FROM") else {
        return;
    };
    let s = SessionStore::open_existing(std::path::Path::new(&path), Access::ReadWrite).unwrap();
    for i in 0..3_000 {
        if let Some(v) = s.take(&key(i)) {
            assert!(check_value(i, &v).is_some());
            println!("T {i}");
        }
    }
}

#[test]
fn take_is_exactly_once_across_processes() {
    let dir = tempdir();
    let cfg = config(dir.path(), 4_000);
    let s = open(&cfg);
    for i in 0..3_000 {
        s.put(&key(i), &value(i, 0, 80), TTL);
    }
    let env = [("WARMTLS_TEST_TAKE_FROM", cfg.path.display().to_string())];
    let children: Vec<_> = (0..3)
        .map(|_| spawn_self("crash::child_takes_keys", &env))
        .collect();
    let mut all = vec![];
    for mut c in children {
        let out = BufReader::new(c.stdout.take().unwrap());
        for line in out.lines() {
            // libtest may print "test name ... " on the same line first.
            let line = line.unwrap();
            if let Some(pos) = line.find("T ") {
                all.push(line[pos + 2..].trim().parse::<u64>().unwrap());
            }
        }
        assert!(c.wait().unwrap().success());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a key was taken by two processes");
    assert_eq!(unique.len(), 3_000, "every key taken once");
}

#[test]
#[ignore = "a child process of a kill -9 test, not a test of its own"]
fn child_writes_until_killed() {
    let Ok(path) = std::env::var("WARMTLS_TEST_WRITE_TO") else {
        return;
    };
    let cfg = StoreConfig {
        path: path.into(),
        capacity: 100_000,
        slot_size: 128,
    };
    let s = open(&cfg);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Fresh keys, as rustls writes them (it never overwrites a key); the round
    // number keeps keys of successive children apart.
    let round: u64 = std::env::var("WARMTLS_TEST_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    for i in 0..30_000u64 {
        let k = round * 1_000_000 + i;
        assert!(s.put(&key(k), &value(k, i, 40 + (i % 57) as usize), TTL));
        writeln!(out, "W {k} {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn entries_written_before_sigkill_survive_byte_exact() {
    let dir = tempdir();
    let cfg = StoreConfig {
        path: dir.path().join("c"),
        capacity: 100_000,
        slot_size: 128,
    };
    let mut rng = Rng(99);
    let mut last: std::collections::HashMap<u64, u64> = Default::default();
    for round in 0..3 {
        let env = [
            ("WARMTLS_TEST_WRITE_TO", cfg.path.display().to_string()),
            ("WARMTLS_TEST_ROUND", round.to_string()),
        ];
        let mut child = spawn_self("crash::child_writes_until_killed", &env);
        let out = BufReader::new(child.stdout.take().unwrap());
        let stop_after = 5_000 + rng.below(20_000);
        let mut n = 0;
        for line in out.lines() {
            let line = line.unwrap();
            let Some(pos) = line.find("W ") else { continue };
            let rest = &line[pos + 2..];
            let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
            let (k, i) = (it.next().unwrap(), it.next().unwrap());
            last.insert(k, i);
            n += 1;
            if n == stop_after {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::SIGKILL,
                )
                .unwrap();
                break;
            }
        }
        child.wait().unwrap();
        let s = open(&cfg);
        assert!(
            s.previous_shutdown_unclean(),
            "round {round}: the kill must look unclean"
        );
        let keys: Vec<u64> = last.keys().copied().collect();
        for k in keys {
            let v = s
                .get(&key(k))
                .unwrap_or_else(|| panic!("round {round}: key {k} lost"));
            let version = check_value(k, &v).expect("byte-exact value");
            // The child may have written a newer version after its last report.
            assert!(
                version >= last[&k],
                "round {round}: key {k} went back in time"
            );
            last.insert(k, version);
        }
        let totals = s.scan(|_| {});
        assert!(
            totals.corrupt <= 1,
            "at most the one in-flight put is torn: {totals:?}"
        );
        drop(s);
    }
}

#[test]
fn flipped_bytes_read_as_misses_never_as_sessions() {
    let dir = tempdir();
    let cfg = config(dir.path(), 5_000);
    let s = open(&cfg);
    for i in 0..5_000 {
        s.put(&key(i), &value(i, 0, 60 + (i % 30) as usize), TTL);
    }
    let geo = s.geometry();
    s.close().unwrap();
    let mut bytes = file_bytes(&cfg.path);
    let mut rng = Rng(7);
    let region = geo.slots_offset()..bytes.len();
    for _ in 0..3_000 {
        let at = region.start + rng.below(region.len() as u64) as usize;
        bytes[at] ^= 1 + rng.below(255) as u8;
    }
    std::fs::write(&cfg.path, &bytes).unwrap();
    let s = open(&cfg);
    let before = s.scan(|_| {});
    assert!(before.corrupt > 100, "corruption is seen: {before:?}");
    let mut hits = 0;
    for i in 0..5_000 {
        if let Some(v) = s.get(&key(i)) {
            assert!(
                check_value(i, &v).is_some(),
                "corrupt value returned for {i}"
            );
            hits += 1;
        }
    }
    assert!(hits > 2_000 && hits < 5_000, "{hits} hits");
    assert!(s.counters().corrupt > 0);
}

#[test]
fn an_inspector_reads_while_writers_write() {
    let dir = tempdir();
    let cfg = config(dir.path(), 5_000);
    let w = Arc::new(open(&cfg));
    let reader = SessionStore::open_existing(&cfg.path, Access::ReadOnly).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (w, stop) = (w.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000_000 {
                let k = n % 4_000;
                w.put(&key(k), &value(k, n, 90), TTL);
                if n % 3 == 0 {
                    w.take(&key((n * 7) % 4_000));
                }
                n += 1;
            }
        })
    };
    for _ in 0..20 {
        let t = reader.scan(|i| assert_ne!(i.state, SlotState::Corrupt, "{i:?}"));
        assert_eq!(t.corrupt, 0);
        assert_eq!(t.busy_buckets, 0, "{t:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn a_lock_word_damaged_on_disk_does_not_hang_the_store() {
    let dir = tempdir();
    let cfg = config(dir.path(), 100);
    let s = open(&cfg);
    s.put(&key(1), &value(1, 0, 50), TTL);
    let geo = s.geometry();
    s.close().unwrap();
    // Every bucket's lock word claims to be held by pid 1 (alive: init).
    let mut b = file_bytes(&cfg.path);
    for bucket in 0..geo.bucket_count {
        let off = geo.bucket_header_offset(bucket);
        b[off..off + 4].copy_from_slice(&1u32.to_le_bytes());
    }
    std::fs::write(&cfg.path, &b).unwrap();
    let s = open(&cfg);
    let t = std::time::Instant::now();
    assert_eq!(s.take(&key(1)), Some(value(1, 0, 50)));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(s.counters().lock_steals >= 1);
}

/// A crash mid-write leaves that bucket's sequence number odd with no lock
/// holder. A read-only inspector (which cannot repair it) must read such a
/// bucket at once, not wait for a writer that will never finish.
#[test]
fn an_inspector_reads_buckets_left_odd_by_a_crash_without_waiting() {
    let dir = tempdir();
    let cfg = config(dir.path(), 2_000);
    let s = open(&cfg);
    for i in 0..1_000 {
        s.put(&key(i), &value(i, 0, 50), TTL);
    }
    let geo = s.geometry();
    s.close().unwrap();
    let mut b = file_bytes(&cfg.path);
    for bucket in 0..geo.bucket_count {
        let off = geo.bucket_header_offset(bucket) + 4;
        let seq = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        b[off..off + 4].copy_from_slice(&(seq | 1).to_le_bytes());
    }
    std::fs::write(&cfg.path, &b).unwrap();
    let reader = SessionStore::open_existing(&cfg.path, Access::ReadOnly).unwrap();
    let t = std::time::Instant::now();
    let totals = reader.scan(|_| {});
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{} buckets took {:?}",
        geo.bucket_count,
        t.elapsed()
    );
    assert_eq!(totals.busy_buckets, 0, "{totals:?}");
    assert_eq!(totals.live, 1_000, "{totals:?}");
}
