//! The demo (`cargo run --release -- demo`, i.e. `warmtls-bench demo`) at CI size: it runs end to end on its own, and its report says
//! what a user is promised — sessions survive the restart and resume.
use std::process::Command;

use serde_json::Value;

fn num(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for k in path {
        v = &v[*k];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in the report", path.join(".")))
}

#[test]
fn two_thousand_devices_resume_after_the_endpoint_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("demo.json");
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-bench"))
        .args(["demo", "--devices", "2000", "--json"])
        .arg(&json)
        .output()
        .expect("run warmtls demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for words in [
        "skips the full TLS handshake",
        "battery",
        "per stored session",
        "per session of capacity",
        "carries the session's ticket or ID",
    ] {
        assert!(stdout.contains(words), "{words:?} in the report:\n{stdout}");
    }

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
        .expect("JSON report");
    assert_eq!(r["devices"], 2000);
    assert!(num(&r, &["resumed_pct_after_restart"]) >= 99.0, "{r}");
    assert!(num(&r, &["resumed_pct_before_restart"]) >= 99.0, "{r}");
    let stored = num(&r, &["sessions_stored"]);
    assert!(
        (1980.0..=2000.0).contains(&stored),
        "one session per device: {stored}"
    );
    let per_session = num(&r, &["bytes_per_session"]);
    assert!(
        (64.0..1024.0).contains(&per_session),
        "bytes per session {per_session}"
    );
    // The file is sized before it fills: a session of capacity costs less
    // than a stored one while the table has room.
    let per_capacity = num(&r, &["bytes_per_session_of_capacity"]);
    let capacity = num(&r, &["cache_capacity"]);
    assert!(capacity >= stored, "{r}");
    assert!(
        per_capacity <= per_session,
        "{per_capacity} vs {per_session}"
    );

    let full_up = num(&r, &["bytes_per_full_connection", "c2s"]);
    let full_down = num(&r, &["bytes_per_full_connection", "s2c"]);
    let res_up = num(&r, &["bytes_per_resumed_connection", "c2s"]);
    let res_down = num(&r, &["bytes_per_resumed_connection", "s2c"]);
    // Each way carries at least the 64-byte request or the response, and a
    // resumed handshake spares the server's certificate.
    for b in [full_up, full_down, res_up, res_down] {
        assert!((64.0..8192.0).contains(&b), "bytes per connection {b}");
    }
    assert!(
        res_down < full_down,
        "resumed {res_down} < full {full_down} bytes down"
    );

    let phases = r["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3, "prime, before and after the restart");
    for p in phases {
        assert_eq!(p["failed_total"], 0, "{p}");
        assert_eq!((&p["refused"], &p["reset"]), (&0.into(), &0.into()), "{p}");
        assert!(num(p, &["conn_time_ms", "p99"]) >= num(p, &["conn_time_ms", "p50"]));
        assert!(num(p, &["conn_per_s"]) > 0.0);
    }
}
