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
use warmtls_bench::demo::{
    self_signed_cert_path, Backend, Endpoint, EndpointProgram, EndpointSpec,
};
use warmtls_bench::fleet::{Fleet, FleetConfig, HelloProfile, PhaseReport, TlsMix, Verify};

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
    /// A `warmtls` binary to measure (default: this binary's own endpoint, the same code).
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
    /// Serve a two-certificate chain under a private CA, as a public CA would
    /// issue (instead of the small self-signed certificate).
    chain: bool,
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
                chain: false,
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
        chain: false,
    });
    // RFC 8879 certificate compression, on a chain of the usual size.
    for hello in [HelloProfile::Standard, HelloProfile::Uncompressed] {
        v.push(Case {
            server: "warmtls defaults, 2-certificate chain",
            server_args: &[],
            server_toml: None,
            tls: TlsMix::Tls13,
            hello,
            early_data: 0,
            chain: true,
        });
    }
    v
}

/// A root CA (P-384), an intermediate (P-384) and a P-256 leaf for localhost:
/// writes `chain.pem` (leaf + intermediate), `leaf.key.pem` and `root.pem`.
fn write_chain(dir: &std::path::Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    };
    let ca_params = |cn: &str| -> anyhow::Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "warmtls economy bench");
        p.distinguished_name.push(DnType::CountryName, "DE");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(p)
    };
    let root = CertifiedIssuer::self_signed(
        ca_params("warmtls economy root CA")?,
        KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?,
    )?;
    let mut inter_params = ca_params("warmtls economy issuing CA E1")?;
    inter_params.use_authority_key_identifier_extension = true;
    let inter = CertifiedIssuer::signed_by(
        inter_params,
        KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?,
        &root,
    )?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "devices.example.net".to_string(),
        "127.0.0.1".to_string(),
    ])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "devices.example.net");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &inter)?;
    std::fs::write(dir.join("chain.pem"), leaf_cert.pem() + &inter.pem())?;
    std::fs::write(dir.join("leaf.key.pem"), leaf_key.serialize_pem())?;
    std::fs::write(dir.join("root.pem"), root.pem())?;
    Ok(())
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
    let exe = EndpointProgram::given_or_this(a.warmtls.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("warmtls-economy-")
        .tempdir()?;
    let backend = Backend::start(4)?;
    write_chain(dir.path())?;
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
        let mut spec = spec;
        let ca = if case.chain {
            for (flag, file) in [("--cert", "chain.pem"), ("--key", "leaf.key.pem")] {
                spec.extra.push(flag.into());
                spec.extra.push(dir.path().join(file).display().to_string());
            }
            dir.path().join("root.pem")
        } else {
            self_signed_cert_path(&cache)
        };
        let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0")?;
        let mut cfg = FleetConfig::new(endpoint.addr().to_string(), a.devices, Verify::Ca(ca));
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
            let pick = |k: &warmtls_bench::fleet::report::PerKind| {
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
        let failed = if r.phase.unsuccessful() > 0 {
            format!(" ({} failed)", r.phase.unsuccessful())
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
