//! `warmtls-bench fleet`: simulated devices against any TLS endpoint — prime,
//! resume rounds, optionally a server restart between rounds — reported as a
//! table, JSON and an SVG latency plot.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use warmtls_bench::fleet::{self, Fleet, FleetConfig, Pacing, TlsMix, Verify};

#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// The TLS endpoint, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Simulated devices, each with its own session.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// TLS versions of the devices (mix: half each).
    #[arg(long, value_enum, default_value_t = TlsMix::Tls13)]
    tls: TlsMix,
    /// Fixed connection rate for the fleet, connections per second.
    #[arg(long, conflicts_with = "mean_interval")]
    rate: Option<f64>,
    /// Each device reconnects on average every SECS (Poisson arrivals).
    #[arg(long)]
    mean_interval: Option<f64>,
    /// Longest wall time of one phase, seconds (devices not started are skipped).
    #[arg(long)]
    duration: Option<f64>,
    /// Resume rounds after the prime phase.
    #[arg(long)]
    rounds: Option<u32>,
    /// Shell command restarting the server; runs before each round after the
    /// first (before the only round if --rounds 1), then waits until the target
    /// accepts TCP again. Defaults --rounds to 2.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// The server's pid, for its CPU time and memory per phase.
    #[arg(long, conflicts_with = "server_pidfile")]
    server_pid: Option<u32>,
    /// A file holding the server's pid, read again after every restart.
    #[arg(long)]
    server_pidfile: Option<PathBuf>,
    /// Send up to BYTES of the request as TLS 1.3 0-RTT when resuming.
    #[arg(long, default_value_t = 0)]
    early_data: usize,
    /// ClientHello profile (see the README's "device economy").
    #[arg(long, value_enum, default_value = "standard")]
    hello: warmtls_bench::fleet::HelloProfile,
    /// TCP Fast Open: the ClientHello rides in the SYN once the kernel holds the
    /// server's cookie (the report counts the connections that did).
    #[arg(long)]
    tfo: bool,
    /// Request size, bytes (an HTTP/1.0 GET padded with a header).
    #[arg(long, default_value_t = 64)]
    request: usize,
    /// Connections in flight at most (worker threads).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Trust this PEM certificate (the server's own, or its CA).
    #[arg(long, required_unless_present = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// SNI and certificate name (default: the target's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Per-connection limit, seconds (connect to close).
    #[arg(long, default_value_t = 15.0)]
    conn_timeout: f64,
    /// Seed of the device order and arrival times.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG latency histogram here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn read_pidfile(path: &std::path::Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading server pidfile {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", path.display()))
}

pub fn main(a: FleetArgs) -> anyhow::Result<()> {
    let verify = match (&a.ca, a.insecure) {
        (Some(ca), _) => Verify::Ca(ca.clone()),
        (None, _) => Verify::Insecure,
    };
    let positive = |v: f64, what: &str| {
        anyhow::ensure!(v.is_finite() && v > 0.0, "{what} must be a positive number");
        Ok(v)
    };
    let mut cfg = FleetConfig::new(a.target.clone(), a.devices, verify);
    cfg.server_name = a.server_name.clone();
    cfg.tls = a.tls;
    cfg.pacing = match (a.rate, a.mean_interval) {
        (Some(r), _) => Pacing::Rate(positive(r, "--rate")?),
        (None, Some(m)) => Pacing::MeanInterval(positive(m, "--mean-interval")?),
        (None, None) => Pacing::Unpaced,
    };
    cfg.phase_limit = a
        .duration
        .map(|d| positive(d, "--duration").map(Duration::from_secs_f64))
        .transpose()?;
    cfg.request_bytes = a.request;
    cfg.early_data = a.early_data;
    cfg.hello = a.hello;
    cfg.tfo = a.tfo;
    cfg.concurrency = a.concurrency;
    cfg.limits.total = Duration::from_secs_f64(positive(a.conn_timeout, "--conn-timeout")?);
    cfg.limits.connect = cfg.limits.total.min(cfg.limits.connect);
    cfg.progress = true;
    cfg.seed = a.seed;
    let rounds = a
        .rounds
        .unwrap_or(if a.restart_cmd.is_some() { 2 } else { 1 });

    let mut fleet = Fleet::new(cfg)?;
    let server_pid = match (&a.server_pidfile, a.server_pid) {
        (Some(p), _) => Some(read_pidfile(p)?),
        (None, pid) => pid,
    };
    let restart_cmd = a.restart_cmd.clone();
    let pidfile = a.server_pidfile.clone();
    let mut restart = move || -> Result<Option<u32>, fleet::BoxError> {
        let Some(cmd) = &restart_cmd else {
            return Ok(None);
        };
        eprintln!("fleet: restarting the server: {cmd}");
        let status = Command::new("sh").arg("-c").arg(cmd).status()?;
        if !status.success() {
            return Err(format!("--restart-cmd {cmd:?} failed: {status}").into());
        }
        match &pidfile {
            Some(p) => Ok(Some(read_pidfile(p)?)),
            None => Ok(None),
        }
    };
    let restart: Option<&mut dyn FnMut() -> Result<Option<u32>, fleet::BoxError>> =
        if a.restart_cmd.is_some() {
            Some(&mut restart)
        } else {
            None
        };
    let report = fleet::run_rounds(&mut fleet, rounds, server_pid, restart, |p| {
        eprintln!(
            "fleet: {} done: {} connections, {:.2}% resumed, {} refused, {} reset, {} failed, {:.0} conn/s",
            p.name, p.connections, p.resumed_pct, p.refused, p.reset, p.failed_total, p.conn_per_s
        );
    })?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "warmtls-bench fleet: {} devices, TLS {}, {}",
            report.devices, report.tls, report.target
        );
        std::fs::write(path, fleet::plot::latency_svg(&title, &report.phases))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: u64 = report.phases.iter().map(|p| p.unsuccessful()).sum();
    if failed > 0 {
        eprintln!("fleet: {failed} connections refused, reset or failed (see the table)");
    }
    Ok(())
}
