//! `warmtls-cache` on real files, including one a writer has open.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn cache(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .args(args)
        .output()
        .expect("run warmtls-cache");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stats_list_verify_and_purge_work_while_a_writer_has_the_file_open() {
    let dir = tempdir();
    let cfg = config(dir.path(), 2_000);
    let s = open(&cfg);
    let secret = [0xC3u8; 80];
    for i in 0..1_000 {
        s.put(
            &key(i),
            &secret,
            Duration::from_secs(if i < 100 { 1 } else { 3_600 }),
        );
    }
    let f = cfg.path.to_str().unwrap();

    let (code, out, err) = cache(&["stats", f, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["live"].as_u64().unwrap() + v["expired"].as_u64().unwrap(),
        1_000
    );
    assert_eq!(v["capacity"], 2_000);
    assert!(v["bytes_per_session"].as_f64().unwrap() <= 160.0);
    assert_eq!(v["counters"]["puts"], 1_000);
    assert_eq!(v["writer_open_or_crashed"], true);

    let (code, out, _) = cache(&["stats", f]);
    assert_eq!(code, 0);
    assert!(
        out.contains("per session of capacity") && out.contains("per stored session"),
        "{out}"
    );

    let (code, out, _) = cache(&["list", f, "--limit", "5", "--json"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["value_bytes"] == 80));
    let (_, text, _) = cache(&["list", f, "--limit", "1000"]);
    // Eight secret bytes in hex: a random fingerprint id contains this by
    // chance about once in 10^15 runs (four hex digits did in one run of three).
    assert!(
        !text.to_lowercase().contains("c3c3c3c3c3c3c3c3"),
        "never prints secret bytes"
    );

    let (code, out, _) = cache(&["verify", f]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"));

    std::thread::sleep(Duration::from_millis(1100));
    let (code, out, _) = cache(&["purge", f, "--expired"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("purged 100"), "{out}");
    assert!(s.get(&key(500)).is_some(), "live entries kept");

    let (code, out, _) = cache(&["purge", f, "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(s.get(&key(500)).is_none(), "the writer sees the purge");
    let (_, out, _) = cache(&["stats", f, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["live"], 0);
}

#[test]
fn verify_reports_corrupt_slots_and_exits_1() {
    let dir = tempdir();
    let cfg = config(dir.path(), 2_000);
    let s = open(&cfg);
    for i in 0..1_500 {
        s.put(&key(i), &value(i, 0, 80), Duration::from_secs(3_600));
    }
    let slots_offset = s.geometry().slots_offset();
    s.close().unwrap();
    let mut b = file_bytes(&cfg.path);
    let mut rng = Rng(3);
    for _ in 0..200 {
        let at = slots_offset + rng.below((b.len() - slots_offset) as u64) as usize;
        b[at] ^= 0x5a;
    }
    std::fs::write(&cfg.path, &b).unwrap();
    let (code, out, _) = cache(&["verify", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("corrupt slot: bucket"), "{out}");
    assert!(out.contains("FAILED"), "{out}");
    // purge clears them; verify is then clean
    let (code, _, _) = cache(&["purge", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, out, _) = cache(&["verify", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_missing_or_foreign_file_is_a_clear_error() {
    let dir = tempdir();
    let p = dir.path().join("nope");
    let (code, _, err) = cache(&["stats", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot open cache file") && err.contains("nope"),
        "{err}"
    );
    std::fs::write(&p, b"hello world, not a cache").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = cache(&["verify", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not a warmtls cache file"), "{err}");
}

#[test]
fn migrate_reshapes_a_file_nobody_has_open_and_refuses_one_in_use() {
    let dir = tempdir();
    let cfg = config(dir.path(), 1_000);
    let s = open(&cfg);
    for i in 0..900 {
        s.put(&key(i), &value(i, 0, 70), Duration::from_secs(3_600));
    }
    let f = cfg.path.to_str().unwrap();

    // In use by another process: refused, nothing touched.
    let child = std::process::Command::new("flock")
        .args(["-s", "-o", f, "sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(Duration::from_millis(300));
    let before = file_bytes(&cfg.path);
    let (code, _, err) = cache(&["migrate", f, "--capacity", "4000"]);
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("open in another process"), "{err}");
    assert_eq!(file_bytes(&cfg.path), before);

    s.close().unwrap();
    let (code, out, err) = cache(&["migrate", f, "--capacity", "4000", "--slot-size", "192"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("900 moved, 0 dropped"), "{out}");
    let (code, out, _) = cache(&["stats", f, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["capacity"].as_u64(), v["slot_size"].as_u64()),
        (Some(4_000), Some(192))
    );
    assert_eq!(v["live"], 900);
    assert_eq!(v["counters"]["migrated"], 900);
    assert!(v["migrating_from"].is_null());
    let (code, _, _) = cache(&["verify", f]);
    assert_eq!(code, 0);
    let s = open(&warmtls::store::StoreConfig {
        capacity: 4_000,
        slot_size: 192,
        ..cfg.clone()
    });
    for i in 0..900 {
        assert_eq!(s.get(&key(i)), Some(value(i, 0, 70)), "entry {i}");
    }
}
