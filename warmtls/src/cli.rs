//! The `warmtls` command line (serve, check, keygen), as a library function so
//! that `warmtls-bench endpoint ...` runs exactly the same code as `warmtls ...`.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{CertConfig, Config};
use clap::{Args, Parser, Subcommand};

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
    /// Run the endpoint.
    Serve(Box<ServeArgs>),
    /// Create a cache key file (32 random bytes, mode 0600) for `--cache-key`; never overwrites.
    Keygen { file: PathBuf },
    /// Validate a configuration file (and its certificates) and exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// The demo lives in warmtls-bench (`cargo run --release -- demo` in the source
    /// tree): this runs `warmtls-bench demo` from beside this binary.
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Command-line overrides of the configuration file.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (flags below override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (IP:PORT; port 0 picks one, printed when ready).
    #[arg(long)]
    listen: Option<String>,
    /// Backend: HOST:PORT or unix:PATH.
    #[arg(long)]
    backend: Option<String>,
    /// Session cache file.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Sessions the cache file holds (used when the file is created).
    #[arg(long)]
    cache_capacity: Option<u64>,
    /// Key file sealing cached session values at rest (make one with `warmtls keygen`).
    #[arg(long)]
    cache_key: Option<PathBuf>,
    /// Certificate chain (PEM); with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM); with --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Worker threads (0: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Open client connections, all workers together.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Handshake timeout, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    handshake_timeout: Option<std::time::Duration>,
    /// Backend connect timeout, e.g. 3s.
    #[arg(long, value_parser = humantime::parse_duration)]
    backend_connect_timeout: Option<std::time::Duration>,
    /// Idle timeout between bytes once piping, e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
    /// How long SIGTERM/SIGINT waits for open connections, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_timeout: Option<std::time::Duration>,
    /// Send a PROXY protocol v2 header (client address, SNI, TLS details,
    /// resumed / 0-RTT flags) to the backend before the plaintext.
    #[arg(long)]
    proxy_protocol: bool,
    /// Accept up to this many bytes of TLS 1.3 0-RTT early data (0: off).
    #[arg(long)]
    early_data: Option<u32>,
    /// TCP Fast Open queue length per listener (0: off).
    #[arg(long)]
    tcp_fastopen: Option<u32>,
    /// Write counters as JSON to this file every stats interval and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Seconds between stats lines / stats file writes.
    #[arg(long)]
    stats_interval: Option<u64>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log: String,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.backend {
            c.backend = v.clone();
        }
        if let Some(v) = &self.cache {
            c.cache.path = v.clone();
        }
        if let Some(v) = self.cache_capacity {
            c.cache.capacity = v;
        }
        if let Some(v) = &self.cache_key {
            c.cache.key_file = Some(v.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c.certs = vec![CertConfig {
                cert: cert.clone(),
                key: key.clone(),
            }];
        }
        if let Some(v) = self.workers {
            c.workers = v;
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = self.handshake_timeout {
            c.handshake_timeout = v;
        }
        if let Some(v) = self.backend_connect_timeout {
            c.backend_connect_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            c.idle_timeout = v;
        }
        if let Some(v) = self.drain_timeout {
            c.drain_timeout = v;
        }
        if self.proxy_protocol {
            c.proxy_protocol = true;
        }
        if let Some(v) = self.early_data {
            c.early_data = v;
        }
        if let Some(v) = self.tcp_fastopen {
            c.tcp_fastopen = v;
        }
        if let Some(v) = &self.stats_file {
            c.stats_file = Some(v.clone());
        }
        if let Some(v) = self.stats_interval {
            c.stats_interval = std::time::Duration::from_secs(v.max(1));
        }
        Ok(c)
    }
}

/// Log to stderr at `level` (RUST_LOG overrides).
pub fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parse `args` (the program name first) and run the command.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let result = match cli.cmd {
        Cmd::Serve(a) => {
            init_logs(&a.log);
            a.config()
                .and_then(|c| crate::server::serve(c).map_err(anyhow::Error::from))
        }
        Cmd::Check { config } => Config::from_file(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| c.validate().map(|_| c).map_err(anyhow::Error::from))
            .and_then(|c| {
                if !c.certs.is_empty() {
                    crate::tls::load_certs(&c)?;
                }
                crate::server::value_key(&c)?;
                println!("{}: OK", config.display());
                Ok(())
            }),
        Cmd::Keygen { file } => crate::store::ValueKey::generate(&file)
            .map(|()| println!("{}: new cache key (mode 0600)", file.display()))
            .map_err(anyhow::Error::from),
        Cmd::Demo { args } => run_bench_demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warmtls: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warmtls demo`: hand over to `warmtls-bench demo` installed beside this binary.
fn run_bench_demo(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bench = std::env::current_exe()?.with_file_name("warmtls-bench");
    if !bench.exists() {
        anyhow::bail!(
            "the demo is part of warmtls-bench, which is not installed beside this binary: \
             run `cargo run --release -- demo` in the source tree, or install both \
             (`cargo install --path bench`)"
        );
    }
    let err = std::process::Command::new(&bench)
        .arg("demo")
        .args(args)
        .exec();
    Err(anyhow::anyhow!("running {}: {err}", bench.display()))
}
