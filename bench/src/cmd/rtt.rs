//! `warmtls-bench rtt`: how many round trips a device waits for its answer, per
//! handshake kind, over a link with real delay.
//!
//! The fleet simulator and `warmtls serve` (with its backend) run in two network
//! namespaces joined by a link delaying every packet (netem, or the userspace
//! delay line: see `netlab`). For each handshake kind, with and without TCP Fast
//! Open, a few devices connect one after another; the time from starting the
//! TCP connect to the first byte of the response, divided by the round-trip
//! time, is the number of round trips the device waited.
//!
//! Expected counts (TCP connect = 1 RTT, or 0 with TFO, where the ClientHello
//! rides in the SYN):
//! - TLS 1.3 full or resumed: +1 RTT handshake, +1 RTT request/response.
//! - TLS 1.2 full: +2 RTT handshake, +1 RTT request/response.
//! - TLS 1.2 resumed (session ID, abbreviated): +1 RTT handshake, +1 request.
//! - TLS 1.3 resumed with the request as 0-RTT data: +1 RTT (the answer comes
//!   back with the server's first flight, as 0.5-RTT data).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use warmtls_bench::demo::{self, Backend, Endpoint, EndpointProgram, EndpointSpec};
use warmtls_bench::fleet::{Fleet, FleetConfig, PhaseReport, TlsMix, Verify};

use super::netlab::{DelayMethod, Lab, SERVER_ADDR};

#[derive(clap::Args, Debug)]
pub struct RttArgs {
    /// Delay each packet this long each way, milliseconds (RTT = twice this).
    #[arg(long, default_value_t = 150.0)]
    one_way_ms: f64,
    /// Connections per handshake kind (one after another).
    #[arg(long, default_value_t = 5)]
    connections: u32,
    /// What delays the packets.
    #[arg(long, value_enum, default_value_t = DelayMethod::Auto)]
    method: DelayMethod,
    /// Leave out the 0-RTT rows (for an endpoint without early data).
    #[arg(long)]
    no_early_data: bool,
    /// A `warmtls` binary to measure (default: this binary's own endpoint, the same code).
    #[arg(long)]
    warmtls: Option<PathBuf>,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One handshake kind's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub handshake: &'static str,
    pub tfo: bool,
    pub connections: u64,
    pub completed: u64,
    pub resumed: u64,
    pub failed: u64,
    /// Connections whose SYN carried the ClientHello (TCP Fast Open).
    pub tfo_syn_data: u64,
    pub early_data_accepted: u64,
    pub connect_p50_ms: f64,
    pub connect_rtts: f64,
    pub first_byte_p50_ms: f64,
    pub first_byte_max_ms: f64,
    /// Median first response byte time in round trips.
    pub first_byte_rtts: f64,
    pub first_byte_max_rtts: f64,
    /// What the protocols say it should be.
    pub expected_rtts: u32,
}

/// The whole run, as written with `--json`.
#[derive(Debug, Serialize)]
pub struct RttReport {
    pub one_way_ms: f64,
    pub rtt_ms: f64,
    pub method: DelayMethod,
    pub connections_per_row: u32,
    /// Packets the userspace delay line carried (null with netem).
    pub packets_delayed: Option<u64>,
    pub rows: Vec<Row>,
}

/// What a fleet of one TLS profile measures: its prime phase (full handshakes)
/// and a resume round.
struct Case {
    tls: TlsMix,
    early_data: bool,
    full: Option<(&'static str, u32)>,
    resumed: (&'static str, u32),
}

const REQUEST_BYTES: usize = 64;

fn cases(early_data: bool) -> Vec<Case> {
    let mut v = vec![
        Case {
            tls: TlsMix::Tls13,
            early_data: false,
            full: Some(("full TLS 1.3", 2)),
            resumed: ("resumed TLS 1.3", 2),
        },
        Case {
            tls: TlsMix::Tls12,
            early_data: false,
            full: Some(("full TLS 1.2", 3)),
            resumed: ("resumed TLS 1.2", 2),
        },
    ];
    if early_data {
        // Its prime phase repeats "full TLS 1.3": not a row.
        v.push(Case {
            tls: TlsMix::Tls13,
            early_data: true,
            full: None,
            resumed: ("resumed TLS 1.3 + 0-RTT", 1),
        });
    }
    v
}

pub fn main(a: RttArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("warmtls-bench rtt makes network namespaces: run it as root");
    }
    if !(a.one_way_ms.is_finite() && a.one_way_ms > 0.0 && a.one_way_ms <= 10_000.0) {
        bail!("--one-way-ms must be between 0 and 10000");
    }
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let one_way = Duration::from_secs_f64(a.one_way_ms / 1000.0);
    let rtt_ms = 2.0 * a.one_way_ms;
    let exe = EndpointProgram::given_or_this(a.warmtls.as_deref())?;

    let lab = Lab::new(one_way, a.method)?;
    // The server side takes data in SYNs (bit 0x2); devices send it (0x1).
    lab.server.sysctl("net.ipv4.tcp_fastopen", "3")?;
    lab.device.sysctl("net.ipv4.tcp_fastopen", "1")?;
    eprintln!(
        "rtt: {} ms each way (RTT {rtt_ms} ms) by {}",
        a.one_way_ms,
        method_name(lab.method)
    );

    let dir = tempfile::tempdir().context("making a temp dir")?;
    let backend = lab.server.run(|| Backend::start(2))??;
    let spec = EndpointSpec {
        exe,
        backend: backend.addr(),
        cache: dir.path().join("rtt.cache"),
        capacity: 10_000,
        stats: dir.path().join("stats.json"),
        log: dir.path().join("endpoint.log"),
        extra: if a.no_early_data {
            vec![]
        } else {
            vec!["--early-data".into(), "4096".into()]
        },
    };
    let listen = format!("{SERVER_ADDR}:8443");
    let endpoint = lab.server.run(|| Endpoint::start(&spec, &listen))??;
    let target = endpoint.addr().to_string();
    let ca = demo::self_signed_cert_path(&spec.cache);

    let fleet_cfg = |tls: TlsMix, devices: u32, early_data: bool, tfo: bool| {
        let mut c = FleetConfig::new(target.clone(), devices, Verify::Ca(ca.clone()));
        c.server_name = Some("localhost".into());
        c.tls = tls;
        c.concurrency = 1;
        c.request_bytes = REQUEST_BYTES;
        c.early_data = if early_data { REQUEST_BYTES } else { 0 };
        c.tfo = tfo;
        c.limits.total = Duration::from_secs(30) + one_way * 40;
        c.limits.connect = c.limits.total;
        c
    };
    let measure = |ms: f64| ms / rtt_ms;
    let run = || -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        for tfo in [false, true] {
            if tfo {
                // The first TFO connection to a server only fetches its cookie.
                let cfg = fleet_cfg(TlsMix::Tls13, 1, false, true);
                lab.device.run(|| -> anyhow::Result<()> {
                    Fleet::new(cfg)?.run_phase("tfo-cookie", false, None);
                    Ok(())
                })??;
            }
            for case in cases(!a.no_early_data) {
                let cfg = fleet_cfg(case.tls, a.connections, case.early_data, tfo);
                let (prime, resumed) = lab.device.run(|| -> anyhow::Result<_> {
                    let mut fleet = Fleet::new(cfg)?;
                    let prime = fleet.run_phase("prime", false, None);
                    let resumed = fleet.run_phase("resume", false, None);
                    Ok((prime, resumed))
                })??;
                let tcp = if tfo { 0 } else { 1 };
                if let Some((name, extra)) = case.full {
                    rows.push(row(name, tfo, &prime, tcp + extra, measure));
                }
                let (name, extra) = case.resumed;
                rows.push(row(name, tfo, &resumed, tcp + extra, measure));
            }
        }
        Ok(rows)
    };
    let rows = run();
    drop(endpoint);
    // Its threads wait in accept inside the server namespace: stop it from there.
    lab.server.run(move || drop(backend))?;
    let rows = rows?;
    let report = RttReport {
        one_way_ms: a.one_way_ms,
        rtt_ms,
        method: lab.method,
        connections_per_row: a.connections,
        packets_delayed: lab.packets_delayed(),
        rows,
    };
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: u64 = report.rows.iter().map(|r| r.failed).sum();
    if failed > 0 {
        bail!("{failed} connections failed (see the table)");
    }
    Ok(())
}

fn method_name(m: DelayMethod) -> &'static str {
    match m {
        DelayMethod::Netem => "tc netem on a veth pair",
        DelayMethod::Tun => "the userspace delay line (TUN devices)",
        DelayMethod::Auto => "auto",
    }
}

fn row(
    handshake: &'static str,
    tfo: bool,
    p: &PhaseReport,
    expected_rtts: u32,
    rtts: impl Fn(f64) -> f64,
) -> Row {
    Row {
        handshake,
        tfo,
        connections: p.connections,
        completed: p.full + p.resumed,
        resumed: p.resumed,
        failed: p.unsuccessful(),
        tfo_syn_data: p.tfo_syn_data,
        early_data_accepted: p.early_data_accepted,
        connect_p50_ms: p.connect_ms.p50,
        connect_rtts: rtts(p.connect_ms.p50),
        first_byte_p50_ms: p.first_byte_ms.p50,
        first_byte_max_ms: p.first_byte_ms.max,
        first_byte_rtts: rtts(p.first_byte_ms.p50),
        first_byte_max_rtts: rtts(p.first_byte_ms.max),
        expected_rtts,
    }
}

fn table(r: &RttReport) -> String {
    let mut s = format!(
        "round trips to the first response byte: {} ms each way (RTT {} ms) by {}, {} connections per row, one at a time\n",
        r.one_way_ms,
        r.rtt_ms,
        method_name(r.method),
        r.connections_per_row
    );
    s += &format!(
        "{:<24} {:>4} {:>6} {:>8} {:>8} {:>6} {:>12} {:>8} {:>14} {:>10} {:>10} {:>9}\n",
        "handshake",
        "TFO",
        "conns",
        "resumed",
        "SYN data",
        "0-RTT",
        "connect p50",
        "(RTT)",
        "1st byte p50",
        "(RTT)",
        "max (RTT)",
        "expected"
    );
    for w in &r.rows {
        s += &format!(
            "{:<24} {:>4} {:>6} {:>8} {:>8} {:>6} {:>9.1} ms {:>8.2} {:>11.1} ms {:>10.2} {:>10.2} {:>9}\n",
            w.handshake,
            if w.tfo { "yes" } else { "no" },
            w.completed,
            w.resumed,
            w.tfo_syn_data,
            w.early_data_accepted,
            w.connect_p50_ms,
            w.connect_rtts,
            w.first_byte_p50_ms,
            w.first_byte_rtts,
            w.first_byte_max_rtts,
            w.expected_rtts
        );
        if w.failed > 0 {
            s += &format!("{:<24}   failed: {}\n", "", w.failed);
        }
    }
    s
}
