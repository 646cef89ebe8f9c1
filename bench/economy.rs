//! `warmtls-bench economy`: what one reconnect costs a device and the server, per
//! handshake kind and ClientHello profile, measured against the real
//! `warmtls serve` on loopback: bytes each way, TLS overhead (wire bytes minus
//! the request and response), the device's CPU time (its thread, in-process)
//! and the server's CPU time per connection (from /proc).
//!
//! Each case starts a fresh endpoint on a fresh cache file, primes every device
//! (full handshakes) and runs one resumed round. Round trips are not measured
//! here (loopback has none worth counting): see `warmtls-bench rtt`.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use warmtls::demo::{self_signed_cert_path, Backend, Endpoint, EndpointSpec};
use warmtls::fleet::{Fleet, FleetConfig, HelloProfile, PhaseReport, TlsMix, Verify};

#[derive(Args, Debug)]
pub struct EconomyArgs {
    /// Devices per case (each primes once and resumes once).
    #[arg(long, default_value_t = 2000)]
    devices: u32,
    /// Connections in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Request size, bytes.
    #[arg(long, default_value_t = 64)]
    request: usize,
    /// The `warmtls` binary (default: beside this one).
    #[arg(long)]
    warmtls: Option<PathBuf>,
    /// Write every case's phase reports as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One endpoint configuration and one kind of device.
struct Case {
    server: &'static str,
    /// `serve` arguments beyond the basics.
    server_args: &'static [&'static str],
    /// A config file for `serve --config` (TOML), if any.
    server_toml: Option<&'static str>,
    tls: TlsMix,
    hello: HelloProfile,
    early_data: usize,
}

/// rustls' own defaults, for the before/after of ours: AES-256-GCM/SHA-384
/// first and two tickets per handshake.
const RUSTLS_DEFAULTS: &str = r#"
tickets_per_handshake = 2
cipher_suites = [
  "TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256", "TLS13_CHACHA20_POLY1305_SHA256",
  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
]
"#;

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for hello in [HelloProfile::Standard, HelloProfile::Lean] {
        for (tls, early_data) in [
            (TlsMix::Tls12, 0),
            (TlsMix::Tls13, 0),
            (TlsMix::Tls13, 16_384),
        ] {
            v.push(Case {
                server: "warmtls defaults",
                server_args: if early_data > 0 {
                    &["--early-data", "16384"]
                } else {
                    &[]
                },
                server_toml: None,
                tls,
                hello,
                early_data,
            });
        }
    }
    v.push(Case {
        server: "rustls defaults (AES-256/SHA-384 first, 2 tickets)",
        server_args: &[],
        server_toml: Some(RUSTLS_DEFAULTS),
        tls: TlsMix::Tls13,
        hello: HelloProfile::Standard,
        early_data: 0,
    });
    v
}

/// One row of the table.
#[derive(serde::Serialize)]
struct Row {
    server: &'static str,
    hello: HelloProfile,
    tls: TlsMix,
    kind: &'static str,
    c2s: Option<f64>,
    s2c: Option<f64>,
    tls_overhead: Option<f64>,
    device_cpu_us: Option<f64>,
    server_cpu_us: Option<f64>,
    phase: PhaseReport,
}

pub fn main(a: EconomyArgs) -> anyhow::Result<()> {
    let exe = match &a.warmtls {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating the warmtls binary")?
            .join("warmtls"),
    };
    let dir = tempfile::Builder::new()
        .prefix("warmtls-economy-")
        .tempdir()?;
    let backend = Backend::start(4)?;
    let mut rows = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let cache = dir.path().join(format!("case{i}.cache"));
        let mut extra: Vec<String> = ["--workers", "2"]
            .iter()
            .chain(case.server_args)
            .map(|s| s.to_string())
            .collect();
        if let Some(toml) = case.server_toml {
            let path = dir.path().join(format!("case{i}.toml"));
            std::fs::write(&path, toml)?;
            extra.push("--config".into());
            extra.push(path.display().to_string());
        }
        let spec = EndpointSpec {
            exe: exe.clone(),
            backend: backend.addr(),
            cache: cache.clone(),
            capacity: u64::from(a.devices) * 2 + 64,
            stats: dir.path().join(format!("case{i}.stats.json")),
            log: dir.path().join(format!("case{i}.log")),
            extra,
        };
        let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0")?;
        let mut cfg = FleetConfig::new(
            endpoint.addr().to_string(),
            a.devices,
            Verify::Ca(self_signed_cert_path(&cache)),
        );
        cfg.server_name = Some("localhost".into());
        cfg.tls = case.tls;
        cfg.hello = case.hello;
        cfg.early_data = case.early_data;
        cfg.request_bytes = a.request;
        cfg.concurrency = a.concurrency;
        cfg.progress = false;
        let mut fleet = Fleet::new(cfg)?;
        let prime = fleet.run_phase("prime", false, endpoint.pid());
        let resumed = fleet.run_phase("resumed", false, endpoint.pid());
        endpoint.stop()?;
        for (phase, full) in [(prime, true), (resumed, false)] {
            if case.early_data > 0 && full {
                continue; // the same full handshake as the row above it
            }
            let pick = |k: &warmtls::fleet::report::PerKind| {
                if full {
                    k.full
                } else if case.early_data > 0 {
                    k.resumed_0rtt
                } else {
                    k.resumed
                }
            };
            rows.push(Row {
                server: case.server,
                hello: case.hello,
                tls: case.tls,
                kind: match (full, case.early_data > 0) {
                    (true, _) => "full",
                    (false, false) => "resumed",
                    (false, true) => "resumed + 0-RTT request",
                },
                c2s: pick(&phase.bytes_c2s_per_conn),
                s2c: pick(&phase.bytes_s2c_per_conn),
                tls_overhead: pick(&phase.tls_overhead_per_conn),
                device_cpu_us: pick(&phase.client_cpu_us_per_conn),
                server_cpu_us: phase.server_cpu_us_per_conn,
                phase,
            });
        }
    }
    println!(
        "{} devices per case, request {} B, the demo backend's HTTP/1.0 answer, concurrency {}\n",
        a.devices, a.request, a.concurrency
    );
    println!("| server | ClientHello | TLS | handshake | C→S B | S→C B | TLS overhead B | device CPU µs | server CPU µs |");
    println!("|---|---|---|---|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    for r in &rows {
        let failed = if r.phase.failed_total > 0 {
            format!(" ({} failed)", r.phase.failed_total)
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} |",
            r.server,
            serde_json::to_value(r.hello)?.as_str().unwrap_or("?"),
            r.tls,
            r.kind,
            failed,
            f(r.c2s),
            f(r.s2c),
            f(r.tls_overhead),
            f(r.device_cpu_us),
            f(r.server_cpu_us),
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
