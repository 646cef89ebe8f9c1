//! `warmtls-bench`: benchmarks for warmtls. A thin shell over the library.
//!
//! - `store`: the session store in-process, side by side with rustls' in-memory cache.
use clap::{Parser, Subcommand};

mod store;

#[derive(Parser)]
#[command(
    name = "warmtls-bench",
    version,
    about = "warmtls benchmarks: store, fleet"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Session store throughput, latency, bytes per session and reopen time.
    Store(store::StoreArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Store(a) => store::main(a),
    }
}
