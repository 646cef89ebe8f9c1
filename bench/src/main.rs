//! `warmtls-bench`: the demo, the fleet simulator and the benchmarks for warmtls.
//! A thin shell over the `warmtls_bench` library.
//!
//! - `demo`: the whole story in one command (what `cargo run --release -- demo` runs).
//! - `store`: the session store in-process, side by side with rustls' in-memory cache.
//! - `fleet`: simulated devices against any TLS endpoint (src/fleet).
//! - `handover`: devices through endpoint hand-overs vs plain restarts (src/handover.rs).
//! - `economy`: what a reconnect costs a device, per handshake kind and profile.
//! - `rtt`: round trips per handshake kind over a delayed link (network namespaces).
//! - `sleep`: devices sleeping days to months, on simulated time (src/fleet/sleep.rs).
//! - `hold`: server memory per idle or half-open connection.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod cmd;
use cmd::{economy, fleet, handover, hold, lossy, rtt, sleep, store};

#[derive(Parser)]
#[command(
    name = "warmtls-bench",
    version,
    about = "warmtls demo, fleet simulator and benchmarks: demo, store, fleet, handover, economy, rtt, sleep"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One-command demo: endpoint, simulated devices, restart, warm resumption.
    Demo(warmtls_bench::demo::DemoArgs),
    /// Session store throughput, latency, bytes per session and reopen time.
    Store(store::StoreArgs),
    /// Simulated devices resuming TLS sessions against any endpoint.
    Fleet(Box<fleet::FleetArgs>),
    /// Devices connecting through endpoint hand-overs (`warmtls upgrade`) and,
    /// as the control, plain stop+start restarts: refused/reset/failed, resumed.
    Handover(handover::HandoverArgs),
    /// Bytes, TLS overhead and CPU per reconnect, by handshake kind and device profile.
    Economy(economy::EconomyArgs),
    /// Round trips to the first response byte per handshake kind, with and
    /// without TCP Fast Open, over a delayed link between two network namespaces
    /// (needs root).
    Rtt(rtt::RttArgs),
    /// What a lossy link costs a device's next reconnect, per TLS version and
    /// drop point, with and without restored tickets.
    Lossy(lossy::LossyArgs),
    /// Which device sleep patterns resume, per TLS mode, on simulated time.
    Sleep(sleep::SleepArgs),
    /// Server memory per open idle or half-open connection.
    Hold(hold::HoldArgs),
    /// Run the endpoint itself: `warmtls-bench endpoint serve ...` is exactly
    /// `warmtls serve ...` (the same library code), so the demo and the
    /// harnesses need no second binary.
    #[command(hide = true)]
    Endpoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Endpoint { args } => {
            return warmtls::cli::main_from(std::iter::once("warmtls".into()).chain(args))
        }
        Cmd::Demo(a) => {
            warmtls::cli::init_logs("warn", warmtls::cli::LogFormat::Text);
            warmtls_bench::demo::run(a)
        }
        Cmd::Store(a) => store::main(a),
        Cmd::Fleet(a) => fleet::main(*a),
        Cmd::Handover(a) => handover::main(a),
        Cmd::Economy(a) => economy::main(a),
        Cmd::Rtt(a) => rtt::main(a),
        Cmd::Sleep(a) => sleep::main(a),
        Cmd::Lossy(a) => lossy::main(a),
        Cmd::Hold(a) => hold::main(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warmtls-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
