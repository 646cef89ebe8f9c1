//! `warmtls-bench`: benchmarks for warmtls. A thin shell over the library.
//!
//! - `store`: the session store in-process, side by side with rustls' in-memory cache.
//! - `fleet`: simulated devices against any TLS endpoint (src/fleet).
//! - `economy`: what a reconnect costs a device, per handshake kind and profile.
//! - `rtt`: round trips per handshake kind over a delayed link (network namespaces).
//! - `sleep`: devices sleeping days to months, on simulated time (src/fleet/sleep.rs).
use clap::{Parser, Subcommand};

mod economy;
mod fleet;
mod netlab;
mod rtt;
mod sleep;
mod store;

#[derive(Parser)]
#[command(
    name = "warmtls-bench",
    version,
    about = "warmtls benchmarks: store, fleet, economy, rtt, sleep"
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
    /// Bytes, TLS overhead and CPU per reconnect, by handshake kind and device profile.
    Economy(economy::EconomyArgs),
    /// Round trips to the first response byte per handshake kind, with and
    /// without TCP Fast Open, over a delayed link between two network namespaces
    /// (needs root).
    Rtt(rtt::RttArgs),
    /// Which device sleep patterns resume, per TLS mode, on simulated time.
    Sleep(sleep::SleepArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Store(a) => store::main(a),
        Cmd::Fleet(a) => fleet::main(*a),
        Cmd::Economy(a) => economy::main(a),
        Cmd::Rtt(a) => rtt::main(a),
        Cmd::Sleep(a) => sleep::main(a),
    }
}
