//! `warmtls-bench handover`: a fleet at a fixed rate through N endpoint
//! hand-overs, and the same through N plain stop+start restarts (the control):
//! refused, reset and failed connections, resumption, the cache file checked.
use std::path::PathBuf;

use anyhow::Context;
use warmtls_bench::demo::EndpointProgram;
use warmtls_bench::fleet::TlsMix;
use warmtls_bench::handover::{self, HandoverConfig, HandoverReport, Switch};

#[derive(clap::Args, Debug)]
pub struct HandoverArgs {
    /// Devices; each connects once per phase (a phase lasts devices / rate).
    #[arg(long, default_value_t = 1500)]
    devices: u32,
    /// Connections per second, the whole fleet.
    #[arg(long, default_value_t = 600.0)]
    rate: f64,
    /// Switches (phases after the prime phase) per mode.
    #[arg(long, default_value_t = 5)]
    switches: u32,
    /// TLS versions: 1.2, 1.3, or mix (half each).
    #[arg(long, value_enum, default_value_t = TlsMix::Mix)]
    tls: TlsMix,
    /// Which switches to run (both by default: hand-over, then the stop+start control).
    #[arg(long, value_enum)]
    mode: Vec<Switch>,
    /// Endpoint workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Connections in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A `warmtls` binary to run (default: this binary's `endpoint` subcommand).
    #[arg(long)]
    endpoint: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn main(a: HandoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rate.is_finite() && a.rate > 0.0,
        "--rate must be a positive number"
    );
    let dir = tempfile::Builder::new()
        .prefix("warmtls-handover-")
        .tempdir()
        .context("creating a temp directory")?;
    let cfg = HandoverConfig {
        exe: EndpointProgram::given_or_this(a.endpoint.as_deref())
            .context("finding the endpoint")?,
        devices: a.devices,
        rate: a.rate,
        switches: a.switches,
        tls: a.tls,
        workers: a.workers,
        concurrency: a.concurrency,
        dir: dir.path().to_path_buf(),
    };
    let modes = if a.mode.is_empty() {
        vec![Switch::Handover, Switch::StopStart]
    } else {
        a.mode.clone()
    };
    let mut report = HandoverReport {
        devices: a.devices,
        rate: a.rate,
        switches: a.switches,
        tls: a.tls.to_string(),
        workers: a.workers,
        modes: Vec::new(),
    };
    for mode in modes {
        eprintln!("handover: {mode}, {} switches", a.switches);
        report.modes.push(handover::run_mode(&cfg, mode)?);
    }
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
