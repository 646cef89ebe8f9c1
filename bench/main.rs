//! `warmtls-bench`: benchmarks for warmtls. A thin shell over the library.
//!
//! - `store`: the session store in-process, side by side with rustls' in-memory cache.
//! - `fleet`: simulated devices against any TLS endpoint (src/fleet).
//! - `sleep`: devices sleeping days to months, on simulated time (src/fleet/sleep.rs).
use clap::{Parser, Subcommand};

mod fleet;
mod sleep;
mod store;

#[derive(Parser)]
#[command(
    name = "warmtls-bench",
    version,
    about = "warmtls benchmarks: store, fleet, sleep"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Session store throughput, latency, bytes per session and reopen time.
    Store(store::StoreArgs),
    /// Simulated devices resuming TLS sessions against any endpoint.
    Fleet(Box<fleet::FleetArgs>),
    /// Which device sleep patterns resume, per TLS mode, on simulated time.
    Sleep(sleep::SleepArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Store(a) => store::main(a),
        Cmd::Fleet(a) => fleet::main(*a),
        Cmd::Sleep(a) => sleep::main(a),
    }
}
