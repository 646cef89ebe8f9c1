//! `warmtls-bench sleep`: which device sleep patterns still resume, per TLS mode,
//! on simulated time (src/fleet/sleep.rs).
use std::path::PathBuf;
use std::time::Duration;

use warmtls_bench::fleet::sleep::{self, SleepMode, SleepSim};

#[derive(clap::Args, Debug)]
pub struct SleepArgs {
    /// Percent of devices and their sleep, e.g. 89%:30m,10%:3d,1%:60d (must add up to 100%).
    #[arg(long, default_value = "89%:30m,10%:3d,1%:60d")]
    profile: String,
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Connections per device after its first, each after one sleep.
    #[arg(long, default_value_t = 1)]
    wakes: u32,
    /// Modes, comma-separated.
    #[arg(
        long,
        value_enum,
        default_value = "1.2,1.2-ticketer,1.3-stateful,1.3-ticketer",
        value_delimiter = ','
    )]
    mode: Vec<SleepMode>,
    /// The server's session_lifetime (default: the endpoint's default).
    #[arg(long, value_parser = warmtls::config::parse_duration)]
    session_lifetime: Option<Duration>,
    /// The server's max_session_age (default: the endpoint's default).
    #[arg(long, value_parser = warmtls::config::parse_duration)]
    max_session_age: Option<Duration>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn main(a: SleepArgs) -> anyhow::Result<()> {
    let profiles = sleep::parse_profiles(&a.profile)?;
    let mut runs = Vec::new();
    for mode in a.mode {
        let mut sim = SleepSim::new(profiles.clone(), a.devices, mode);
        sim.wakes = a.wakes;
        if let Some(l) = a.session_lifetime {
            sim.session_lifetime = l;
        }
        if let Some(m) = a.max_session_age {
            sim.max_session_age = m;
        }
        let started = std::time::Instant::now();
        let results = sleep::simulate(&sim)?;
        eprintln!(
            "{mode}: {} devices, session_lifetime {}, max_session_age {}: {:.1} s",
            a.devices,
            sleep::short(sim.session_lifetime),
            sleep::short(sim.max_session_age),
            started.elapsed().as_secs_f64()
        );
        runs.push((mode, results));
    }
    print!("{}", sleep::table(&runs));
    if let Some(path) = a.json {
        let json: Vec<_> = runs
            .iter()
            .map(|(m, r)| serde_json::json!({ "mode": m.to_string(), "profiles": r }))
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
