//! `warmtls`: the endpoint binary (serve, check, demo). A thin shell over the library.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warmtls",
    version,
    about = "TLS-terminating endpoint with a persistent session cache"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the endpoint (TODO: endpoint issue).
    Serve,
    /// Validate a configuration file and exit (TODO).
    Check,
    /// One-command demo: endpoint, simulated devices, restart, warm resumption (TODO).
    Demo,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve | Cmd::Check | Cmd::Demo => anyhow::bail!("not implemented yet"),
    }
}
