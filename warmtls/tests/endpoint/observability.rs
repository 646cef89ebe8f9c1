//! What an operator's monitoring reads: the Prometheus page of the admin
//! listener, scraped by curl (a real HTTP client) and parsed by the text
//! format's rules, shows exactly the numbers of the stats JSON; `--log-format
//! json` writes one JSON object per line, one per state change, never one per
//! connection.
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support::{mixed_devices, responder, round, Launch, Server};

/// A port nobody listens on now (bound and released; loopback only).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `curl` to `url`; returns the HTTP status and the body.
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl (Debian: apt-get install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// One sample: `name{labels}` → value.
type Samples = BTreeMap<String, f64>;

/// Parse a page of the Prometheus text format (0.0.4), checking its rules on
/// the way: every sample belongs to a family announced by `# TYPE` (histograms:
/// with `_bucket`, `_sum`, `_count`), names and label names are valid, label
/// values quoted, values numbers, each family once, counters end in `_total`,
/// histogram buckets never decrease and `+Inf` equals `_count`.
fn parse(page: &str) -> Samples {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in page.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(valid_name(name), "metric name {name:?}");
            if kind == "TYPE" {
                let t = words.next().unwrap().to_string();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t.as_str()),
                    "{line}"
                );
                if t == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} ends in _total");
                }
                assert!(
                    types.insert(name.to_string(), t).is_none(),
                    "{name} announced twice"
                );
            } else {
                assert_eq!(kind, "HELP", "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for pair in inner.expect("labels in braces").split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(valid_name(k), "{line}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has a # TYPE line");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    for (name, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = samples
            .range(format!("{name}_bucket")..format!("{name}_bucket~"))
            .map(|(series, v)| {
                let le = series
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("\"}");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: {buckets:?}"
        );
        assert_eq!(
            samples[&format!("{name}_bucket{{le=\"+Inf\"}}")],
            samples[&format!("{name}_count")],
            "{name}: +Inf bucket = count"
        );
    }
    samples
}

fn n(v: &serde_json::Value) -> f64 {
    v.as_u64().unwrap_or_else(|| panic!("a count: {v}")) as f64
}

#[test]
fn metrics_page_shows_the_stats_json_numbers_in_prometheus_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let port = free_port();
    let metrics_at = format!("127.0.0.1:{port}");
    let server = Server::start(
        &dir.path().join("m.cache"),
        &backend,
        &["--metrics-listen", &metrics_at],
    );
    let devices = mixed_devices(&server.cert_path(), 40);
    assert_eq!(round(&devices, &server.addr()), (40, 0));
    assert_eq!(round(&devices, &server.addr()), (0, 40));
    // One TLS error: bytes that are no TLS record.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(s);
    assert!(server.wait_idle(Duration::from_secs(10)));

    let url = format!("http://{metrics_at}/metrics");
    let stats = server.stats();
    let (code, page) = curl(&url, &[]);
    assert_eq!(code, 200, "{page}");
    let m = parse(&page);
    eprintln!("{page}");

    let same = |series: &str, json: &serde_json::Value| {
        assert_eq!(
            m.get(series).copied(),
            Some(n(json)),
            "{series} vs {json} in {stats}"
        );
    };
    same("warmtls_connections_total", &stats["connections"]);
    same("warmtls_connections_active", &stats["active_connections"]);
    same("warmtls_connections_refused_total", &stats["refused"]);
    let h = &stats["handshakes"];
    same(
        "warmtls_handshakes_total{kind=\"full\",version=\"1.2\"}",
        &h["tls12_full"],
    );
    same(
        "warmtls_handshakes_total{kind=\"resumed\",version=\"1.2\"}",
        &h["tls12_resumed"],
    );
    same(
        "warmtls_handshakes_total{kind=\"full\",version=\"1.3\"}",
        &h["tls13_full"],
    );
    same(
        "warmtls_handshakes_total{kind=\"resumed\",version=\"1.3\"}",
        &h["tls13_resumed"],
    );
    same(
        "warmtls_handshakes_total{kind=\"resumed_early_data\",version=\"1.3\"}",
        &h["tls13_resumed_early_data"],
    );
    assert_eq!(n(&h["tls12_full"]) + n(&h["tls13_full"]), 40.0, "{stats}");
    assert_eq!(
        n(&h["tls12_resumed"]) + n(&h["tls13_resumed"]),
        40.0,
        "{stats}"
    );
    let reasons = stats["tls_error_reasons"].as_object().unwrap();
    for (reason, v) in reasons {
        same(
            &format!("warmtls_tls_errors_total{{reason=\"{reason}\"}}"),
            v,
        );
    }
    let errors: f64 = reasons.values().map(n).sum();
    assert_eq!(
        errors, 1.0,
        "the plain-text request is one TLS error: {stats}"
    );
    assert_eq!(n(&stats["tls_errors"]), 1.0, "{stats}");
    same("warmtls_backend_errors_total", &stats["backend_errors"]);
    same(
        "warmtls_backend_connect_failures_total",
        &stats["backend_connect_failures"],
    );
    same(
        "warmtls_backend_connect_timeouts_total",
        &stats["backend_connect_timeouts"],
    );
    same("warmtls_client_timeouts_total", &stats["timeouts"]);
    same(
        "warmtls_client_received_bytes_total",
        &stats["bytes_from_clients"],
    );
    same(
        "warmtls_client_sent_bytes_total",
        &stats["bytes_to_clients"],
    );
    let t = &stats["connection_time"];
    same("warmtls_connection_duration_seconds_count", &t["count"]);
    assert_eq!(
        m["warmtls_connection_duration_seconds_count"], 81.0,
        "every connection closed"
    );
    same(
        "warmtls_connection_duration_seconds_bucket{le=\"0.1\"}",
        &t["at_most"][6],
    );
    let st = &stats["store"];
    for (series, field) in [
        ("warmtls_store_hits_total", "hits"),
        ("warmtls_store_misses_total", "misses"),
        ("warmtls_store_puts_total", "puts"),
        ("warmtls_store_takes_total", "takes"),
        ("warmtls_store_evictions_total{state=\"live\"}", "evictions"),
        (
            "warmtls_store_evictions_total{state=\"expired\"}",
            "expired",
        ),
    ] {
        same(series, &st[field]);
    }
    // Every other store counter in the stats JSON is on the page under its own
    // name (so a counter the store gains cannot be left off).
    for (field, v) in st.as_object().unwrap() {
        if ["evictions", "expired", "capacity", "load_factor"].contains(&field.as_str()) {
            continue;
        }
        same(&format!("warmtls_store_{field}_total"), v);
    }
    let rules = &stats["ticket_rules"];
    same(
        "warmtls_ticket_rule_handshakes_total{served=\"tls12\"}",
        &rules["tls12"],
    );
    same(
        "warmtls_ticket_rule_handshakes_total{served=\"no_tls13_tickets\"}",
        &rules["no_tls13_tickets"],
    );
    // The settled TLS 1.3 tickets, each under its own name too.
    let tickets = stats["tickets"].as_object().unwrap();
    assert!(tickets.contains_key("restored"), "{stats}");
    for (field, v) in tickets {
        same(&format!("warmtls_tickets_{field}_total"), v);
    }
    // The http framing's counters (all zero here: a tcp backend), each under
    // its own name, so one the framing gains cannot be left off either.
    let http = stats["http"].as_object().unwrap();
    assert!(http.contains_key("requests"), "{stats}");
    for (field, v) in http {
        same(&format!("warmtls_http_{field}_total"), v);
    }
    // The shared session tier's counters (all zero here: no tier), each under
    // its own name too.
    let cluster = stats["cluster"].as_object().unwrap();
    assert!(cluster.contains_key("lookups"), "{stats}");
    for (field, v) in cluster {
        if v.is_u64() {
            same(&format!("warmtls_cluster_{field}_total"), v);
        }
    }
    assert_eq!(m["warmtls_cluster_enabled"], 0.0);
    assert!(m["warmtls_store_puts_total"] >= 40.0);
    same("warmtls_store_capacity_sessions", &st["capacity"]);
    let load = m["warmtls_store_load_factor"];
    assert!((0.0..=1.0).contains(&load), "{load}");
    let runtime = stats["runtime"].as_str().unwrap();
    assert_eq!(
        m[&format!("warmtls_runtime_info{{runtime=\"{runtime}\"}}")],
        1.0
    );
    assert_eq!(m["warmtls_session_encoding_readable"], 1.0);

    // Only GET /metrics; nothing else is served.
    assert_eq!(curl(&format!("http://{metrics_at}/"), &[]).0, 404);
    assert_eq!(curl(&url, &["-X", "POST"]).0, 405);
    let big = format!("X-Big: {}", "a".repeat(16 * 1024));
    assert_eq!(curl(&url, &["-H", &big]).0, 431);
}

#[test]
fn json_logs_are_one_object_per_line_and_not_one_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let log = dir.path().join("log.json");
    let info = [("RUST_LOG".to_string(), "info".to_string())];
    let mut server = Server::launch(
        &dir.path().join("j.cache"),
        &backend,
        &["--log-format", "json"],
        &Launch {
            env: &info,
            stderr: Some(&log),
            ..Launch::default()
        },
    );
    let devices = mixed_devices(&server.cert_path(), 100);
    assert_eq!(round(&devices, &server.addr()), (100, 0));
    assert!(server.wait_idle(Duration::from_secs(10)));
    assert!(server.stop());
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    for e in &events {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(e.get(field).is_some(), "{field} in {e}");
        }
    }
    let with = |msg: &str| events.iter().filter(|e| e["message"] == msg).count();
    assert_eq!(with("serving"), 1, "{text}");
    assert_eq!(with("stopped"), 1, "{text}");
    let stats: Vec<_> = events.iter().filter(|e| e["message"] == "stats").collect();
    assert!(!stats.is_empty(), "{text}");
    let last = stats.last().unwrap();
    assert_eq!(last["conns"], 100, "stats fields are JSON fields: {last}");
    assert_eq!(last["full"], 100, "{last}");
    // 100 connections, a few state changes: nothing per connection.
    let other = events.len() - stats.len();
    assert!(other < 10, "{} events besides the stats: {text}", other);
}
