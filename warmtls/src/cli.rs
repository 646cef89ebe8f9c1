//! The `warmtls` command line (serve, upgrade, check, keygen), as a library function so
//! that `warmtls-bench endpoint ...` runs exactly the same code as `warmtls ...`.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{CertConfig, Config};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Replace the running endpoint with a new process (a new binary at the same
    /// path, or a changed config file) without refusing a connection: the new
    /// process takes over the listening sockets, the old one drains and exits.
    /// Give it the running endpoint's --config (or --cache, or --control-socket)
    /// to find its control socket. Exits non-zero, with the reason, if the new
    /// process could not start (the old one then keeps serving).
    Upgrade(Box<ServeArgs>),
    /// Create a cache key file (32 random bytes, mode 0600) for `--cache-key`; never overwrites.
    Keygen { file: PathBuf },
    /// Validate a configuration (file and flags, as `serve` takes them) and its
    /// certificates and cache key, then exit, like `nginx -t`.
    Check(Box<ServeArgs>),
    /// The demo lives in warmtls-bench (`cargo run --release -- demo` in the source
    /// tree): this runs `warmtls-bench demo` from beside this binary.
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// `serve`'s command line: the configuration file, then every setting of
/// [`Config`] as a flag that overrides it.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Certificate chain (PEM), with --key; replaces the file's [[certs]].
    /// Default: a self-signed ECDSA P-256 certificate kept beside the cache file.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log: String,
    /// Log format: text (for people), json (one JSON object per line, for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: Config,
}

impl ServeArgs {
    /// The file's settings (or the defaults) with the flags given in `matches` on top.
    fn config(&self, matches: &ArgMatches) -> anyhow::Result<Config> {
        let mut c = Config::layered(self.config.as_deref(), &self.settings, matches)?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c.certs = vec![CertConfig {
                cert: cert.clone(),
                key: key.clone(),
            }];
        }
        Ok(c)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, in colour on a terminal.
    Text,
    /// One JSON object per event and line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields at the top level.
    Json,
}

/// Log to stderr at `level` (RUST_LOG overrides). Text is in colour only when
/// stderr is a terminal and NO_COLOR is unset: a log file or a journal gets
/// plain text. Events are state changes (start, fallbacks, reloads, stats,
/// faults), never one per connection at info level.
pub fn init_logs(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // redis-rs warns once per failed reconnect attempt (a dead cluster shard:
    // one per command); the session tier logs its own changes of state, once.
    // RUST_LOG=redis=... still shows them.
    let asked_for_redis = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("redis"));
    if !asked_for_redis {
        if let Ok(d) = "redis=error".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).try_init()
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// Parse `args` (the program name first) and run the command.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = match matches.subcommand() {
        Some((_, m)) => m.clone(),
        None => ArgMatches::default(),
    };
    let result = match cli.cmd {
        Cmd::Serve(a) => {
            init_logs(&a.log, a.log_format);
            match a.config(&sub) {
                Ok(c) => crate::server::serve(c).map_err(anyhow::Error::from),
                Err(e) => {
                    // Started for a hand-over: the running process reports why.
                    if let Ok(Some(p)) = crate::handover::Predecessor::from_env() {
                        p.fail(&format!("{e:#}"));
                    }
                    Err(e)
                }
            }
        }
        Cmd::Upgrade(a) => a
            .config(&sub)
            .and_then(|c| upgrade(&c.control_socket_path())),
        Cmd::Check(a) => a.config(&sub).and_then(|c| {
            c.validate()?;
            if !c.certs.is_empty() {
                crate::tls::load_certs(&c)?;
            }
            crate::server::value_key(&c)?;
            match &a.config {
                Some(p) => println!("{}: OK", p.display()),
                None => println!("configuration OK"),
            }
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

/// `warmtls upgrade`: ask the instance at `control` for a hand-over and wait
/// for the outcome.
fn upgrade(control: &std::path::Path) -> anyhow::Result<()> {
    let old = crate::handover::request_status(control)?;
    let timeout = crate::handover::HANDOVER_TIMEOUT + std::time::Duration::from_secs(15);
    let new = crate::handover::request_upgrade(control, timeout)?;
    println!(
        "warmtls: pid {new} took over {} from pid {} (draining)",
        old.listen, old.pid
    );
    Ok(())
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
