//! The fleet simulator's accounting against ground truth: 500 devices against the
//! real `warmtls serve`, where every number is known in advance — the prime
//! phase is all full handshakes, the next round all resumed, the round after a
//! restart all resumed — and the bytes the devices counted at their sockets are
//! exactly the bytes the server counted at its end.
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warmtls_bench::demo::{
    self_signed_cert_path, Backend, Endpoint, EndpointProgram, EndpointSpec,
};
use warmtls_bench::fleet::{Fleet, FleetConfig, PhaseReport, TlsMix, Verify};

const DEVICES: u32 = 500;

fn stats(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the endpoint wrote its stats file at exit");
    serde_json::from_str(&text).expect("stats file is JSON")
}

fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats key {key} in {v}"))
}

fn assert_bytes_match(phases: &[&PhaseReport], server: &Value) {
    let c2s: u64 = phases.iter().map(|p| p.bytes_c2s_total).sum();
    let s2c: u64 = phases.iter().map(|p| p.bytes_s2c_total).sum();
    assert_eq!(
        c2s,
        count(server, "bytes_from_clients"),
        "devices' bytes sent = server's bytes read"
    );
    assert_eq!(
        s2c,
        count(server, "bytes_to_clients"),
        "devices' bytes read = server's bytes written"
    );
}

#[test]
fn counts_match_the_servers_before_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(4).expect("backend");
    let cache = dir.path().join("fleet.cache");
    let spec = EndpointSpec {
        exe: EndpointProgram::bench(env!("CARGO_BIN_EXE_warmtls-bench")),
        backend: backend.addr(),
        cache: cache.clone(),
        capacity: 2_000,
        stats: dir.path().join("stats.json"),
        log: dir.path().join("endpoint.log"),
        extra: vec!["--workers".into(), "2".into()],
    };
    let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0").expect("endpoint starts");
    let addr = endpoint.addr();

    let mut cfg = FleetConfig::new(
        addr.to_string(),
        DEVICES,
        Verify::Ca(self_signed_cert_path(&cache)),
    );
    cfg.server_name = Some("localhost".into());
    cfg.tls = TlsMix::Mix;
    cfg.concurrency = 8;
    let mut fleet = Fleet::new(cfg).expect("fleet");
    let n = u64::from(DEVICES);

    let prime = fleet.run_phase("prime", false, endpoint.pid());
    assert_eq!(prime.unsuccessful(), 0, "no failures: {:?}", prime.failed);
    assert_eq!((prime.full, prime.resumed), (n, 0), "prime: all full");
    assert_eq!(fleet.devices_with_session(), DEVICES as usize);
    let round1 = fleet.run_phase("round1", false, endpoint.pid());
    assert_eq!(round1.unsuccessful(), 0, "no failures: {:?}", round1.failed);
    assert_eq!(
        (round1.full, round1.resumed),
        (0, n),
        "round 1: all resumed"
    );
    assert_eq!(round1.resumed_pct, 100.0);
    assert!(round1.server_cpu_us_per_conn.is_some() && round1.server_rss_mb.is_some());

    // Sizes that hold for any server: a resumed handshake sends no certificate.
    let s2c = &round1.bytes_s2c_per_conn;
    let full_s2c = prime.bytes_s2c_per_conn.full.expect("full s2c");
    assert!(
        s2c.resumed.expect("resumed s2c") < full_s2c,
        "{s2c:?} vs full {full_s2c}"
    );

    endpoint.stop().expect("clean stop");
    let before = stats(&spec.stats);
    assert_eq!(count(&before, "full_handshakes"), n);
    assert_eq!(count(&before, "resumed_handshakes"), n);
    assert_eq!(count(&before, "connections"), 2 * n);
    assert_bytes_match(&[&prime, &round1], &before);

    let endpoint = Endpoint::start(&spec, &addr.to_string()).expect("restarts on the same port");
    let round2 = fleet.run_phase("round2", true, endpoint.pid());
    assert_eq!(round2.unsuccessful(), 0, "no failures: {:?}", round2.failed);
    assert_eq!(
        (round2.full, round2.resumed),
        (0, n),
        "after restart: all resumed"
    );
    let mut endpoint = endpoint;
    endpoint.stop().expect("clean stop");
    let after = stats(&spec.stats);
    assert_eq!(count(&after, "resumed_handshakes"), n);
    assert_eq!(count(&after, "full_handshakes"), 0);
    assert_bytes_match(&[&round2], &after);
    assert_eq!(backend.served(), 3 * n, "every request reached the backend");
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The CLI end to end: `warmtls-bench fleet` restarts the server itself with
/// `--restart-cmd` (a shell script, as an operator would write one), follows it
/// with `--server-pidfile`, and writes its JSON and SVG.
#[test]
fn fleet_binary_restarts_the_server_and_writes_json_and_plot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let backend = Backend::start(4).expect("backend");
    let port = free_port();
    let cache = d.join("bin.cache");
    let start = d.join("start.sh");
    std::fs::write(
        &start,
        format!(
            "{exe} serve --listen 127.0.0.1:{port} --backend {backend} --cache '{cache}' \
             --cache-capacity 2000 --workers 2 --log warn >>'{d}/out.txt' 2>>'{d}/err.txt' &\n\
             echo $! >'{d}/pid'\n",
            exe = EndpointProgram::bench(env!("CARGO_BIN_EXE_warmtls-bench")).shell(),
            backend = backend.addr(),
            cache = cache.display(),
            d = d.display(),
        ),
    )
    .expect("write start.sh");
    // Stop the running server (waiting until it is gone, or a zombie), start a new one.
    let restart = format!(
        "P=$(cat '{d}/pid'); kill -TERM $P; i=0; \
         while [ $i -lt 600 ] && [ -e /proc/$P ] && [ \"$(cut -d' ' -f3 /proc/$P/stat)\" != Z ]; \
         do sleep 0.05; i=$((i+1)); done; sh '{start}'",
        d = d.display(),
        start = start.display()
    );
    let ok = Command::new("sh")
        .arg(&start)
        .status()
        .expect("sh")
        .success();
    assert!(ok, "start.sh ran");
    let addr = format!("127.0.0.1:{port}");
    let up = warmtls_bench::fleet::probe::wait_for_accept(
        addr.parse().expect("addr"),
        Duration::from_secs(30),
    );
    assert!(
        up.is_some(),
        "server up: {}",
        std::fs::read_to_string(d.join("err.txt")).unwrap_or_default()
    );

    let json = d.join("fleet.json");
    let plot = d.join("fleet.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-bench"))
        .args([
            "fleet",
            "--target",
            &addr,
            "--devices",
            "200",
            "--tls",
            "mix",
        ])
        .args([
            "--rounds",
            "2",
            "--concurrency",
            "8",
            "--server-name",
            "localhost",
        ])
        .arg("--ca")
        .arg(self_signed_cert_path(&cache))
        .args(["--restart-cmd", &restart])
        .arg("--server-pidfile")
        .arg(d.join("pid"))
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run warmtls-bench");
    // Whatever happened, stop the server the scripts started.
    if let Ok(pid) = std::fs::read_to_string(d.join("pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    assert!(
        out.status.success(),
        "warmtls-bench fleet failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("round2 (restart)"), "table:\n{table}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("JSON report");
    assert_eq!(r["devices"], 200);
    let phases = r["phases"].as_array().expect("phases");
    let names: Vec<_> = phases
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["prime", "round1", "round2"]);
    let expect = [(200, 0, false), (0, 200, false), (0, 200, true)];
    for (p, (full, resumed, restarted)) in phases.iter().zip(expect) {
        assert_eq!(p["connections"], 200, "{p}");
        assert_eq!(p["full"], full, "{p}");
        assert_eq!(p["resumed"], resumed, "{p}");
        assert_eq!(p["failed_total"], 0, "{p}");
        assert_eq!((&p["refused"], &p["reset"]), (&0.into(), &0.into()), "{p}");
        assert_eq!(p["after_restart"], restarted, "{p}");
        for key in ["p50", "p90", "p99", "max"] {
            assert!(
                p["conn_time_ms"][key].as_f64().is_some_and(|v| v > 0.0),
                "{key} in {p}"
            );
        }
        for key in ["bytes_c2s_per_conn", "bytes_s2c_per_conn"] {
            assert!(
                p[key]["all"].as_f64().is_some_and(|v| v > 64.0),
                "{key} in {p}"
            );
        }
        assert!(p["conn_per_s"].as_f64().is_some_and(|v| v > 0.0));
        assert!(
            p["server_cpu_us_per_conn"].is_number(),
            "pidfile followed: {p}"
        );
        assert!(p["server_rss_mb"].as_f64().is_some_and(|v| v > 0.0), "{p}");
    }
    assert_eq!(phases[2]["resumed_pct"], 100.0);
    assert!(r["client_bytes_per_device"].is_number());
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("round2 (after restart)"));
}

/// Per-kind economy figures against the server's own byte counters: TLS overhead
/// is the wire bytes minus exactly the request and response, 0-RTT resumptions
/// are told apart, and the lean ClientHello really is smaller than the standard one.
#[test]
fn overhead_per_kind_is_wire_minus_payload_and_lean_hellos_are_smaller() {
    use warmtls_bench::fleet::HelloProfile;
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(2).expect("backend");
    let n = 100u32;
    let mut resumed_c2s = Vec::new();
    for (i, hello) in [HelloProfile::Standard, HelloProfile::Lean]
        .into_iter()
        .enumerate()
    {
        let cache = dir.path().join(format!("e{i}.cache"));
        let spec = EndpointSpec {
            exe: EndpointProgram::bench(env!("CARGO_BIN_EXE_warmtls-bench")),
            backend: backend.addr(),
            cache: cache.clone(),
            capacity: 1_000,
            stats: dir.path().join(format!("e{i}.json")),
            log: dir.path().join(format!("e{i}.log")),
            extra: vec![
                "--workers".into(),
                "2".into(),
                "--early-data".into(),
                "1024".into(),
            ],
        };
        let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0").expect("endpoint starts");
        let mut cfg = FleetConfig::new(
            endpoint.addr().to_string(),
            n,
            Verify::Ca(self_signed_cert_path(&cache)),
        );
        cfg.server_name = Some("localhost".into());
        cfg.hello = hello;
        cfg.early_data = 1024;
        cfg.concurrency = 4;
        let mut fleet = Fleet::new(cfg).expect("fleet");
        let prime = fleet.run_phase("prime", false, endpoint.pid());
        let round = fleet.run_phase("round1", false, endpoint.pid());
        endpoint.stop().expect("clean stop");
        let server = stats(&spec.stats);
        assert_bytes_match(&[&prime, &round], &server);
        assert_eq!(
            (round.resumed, round.early_data_accepted),
            (u64::from(n), u64::from(n))
        );
        assert_eq!(count(&server, "early_data_accepted"), u64::from(n));
        // Every request reached the backend once: 0-RTT data is not sent twice.
        assert_eq!(backend.served(), u64::from(2 * n) * (i as u64 + 1));
        let wire = (round.bytes_c2s_total + round.bytes_s2c_total) as f64 / f64::from(n);
        let overhead = round
            .tls_overhead_per_conn
            .resumed_0rtt
            .expect("0-RTT kind");
        let payload = 64.0 + warmtls_bench::demo::response_len() as f64;
        assert!(
            (wire - overhead - payload).abs() < 1e-6,
            "{wire} - {overhead} != {payload}"
        );
        assert_eq!(round.tls_overhead_per_conn.resumed, Some(overhead));
        assert!(prime.client_cpu_us_per_conn.full.is_some_and(|us| us > 0.0));
        resumed_c2s.push(round.bytes_c2s_per_conn.resumed.expect("resumed"));
    }
    assert!(
        resumed_c2s[1] + 40.0 < resumed_c2s[0],
        "lean ClientHello saves bytes: {resumed_c2s:?}"
    );
}
