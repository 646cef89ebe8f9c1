//! `warmtls-bench`: benchmarks for warmtls. A thin shell over the library.
//!
//! - `store`: the session store in-process, side by side with rustls' in-memory cache.
//! - `fleet`: simulated devices against any TLS endpoint (src/fleet).
//! - `economy`: what a reconnect costs a device, per handshake kind and profile.
use clap::{Parser, Subcommand};

mod economy;
mod fleet;
mod store;

#[derive(Parser)]
#[command(
    name = "warmtls-bench",
    version,
    about = "warmtls benchmarks: store, fleet, economy"
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Store(a) => store::main(a),
        Cmd::Fleet(a) => fleet::main(*a),
        Cmd::Economy(a) => economy::main(a),
    }
}
