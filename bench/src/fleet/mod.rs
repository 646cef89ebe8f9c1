//! The fleet simulator: N devices, each holding its own TLS client session,
//! connecting to any TLS endpoint (warmtls, nginx, HAProxy) in phases — `prime`
//! (first, full handshakes) then resume rounds — and measuring what each phase
//! cost: handshake kinds, failures, bytes at the socket, connection times, and
//! the server's CPU and memory.
//!
//! Blocking sockets on a bounded pool of worker threads: every connection is
//! driven start to finish on one thread, which is what lets all devices share one
//! rustls config and one compact session table ([`devices`]). The simulator must
//! never know what server it talks to: nothing here is warmtls-specific, except
//! [`sleep`], which has to move the server's clock.
//!
//! - [`devices`]: the per-device session slots (rustls `ClientSessionStore`).
//! - [`client`]: the devices' rustls configs and certificate checking.
//! - [`connection`]: one device connection, bytes counted at the socket.
//! - [`lossy`]: devices on a lossy link that keep their saved session (OpenSSL).
//! - [`schedule`]: which device connects when.
//! - [`report`]: per-phase tallies, JSON and the human table.
//! - [`probe`]: the server's CPU and memory from /proc; waiting for it to accept.
//! - [`plot`]: the SVG latency histogram.
//! - [`sleep`]: devices that sleep for days or months, on simulated time
//!   (in process against warmtls' own connection driver: the one warmtls-specific part).
//! - [`spread`]: which of several endpoints (behind a load balancer, say) each
//!   connection goes to, and whether the device moved.
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

pub mod client;
pub mod connection;
pub mod devices;
pub mod lossy;
pub mod plot;
pub mod probe;
pub mod report;
pub mod schedule;
pub mod sleep;
pub mod spread;

pub use client::{HelloProfile, TlsMix, Verify};
pub use connection::Limits;
pub use devices::{DeviceId, DeviceTable};
pub use report::{PhaseReport, Report, ServerUsage};
pub use schedule::Pacing;
pub use spread::Spread;

/// What can stop a fleet from starting.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The target does not resolve.
    #[error("target {target:?} does not resolve to an address: {reason}")]
    Target { target: String, reason: String },
    /// The CA file can't be used.
    #[error(
        "CA file {path}: {reason} (give the server's certificate or its CA as PEM, or --insecure)"
    )]
    Ca { path: PathBuf, reason: String },
    /// The server name is not a DNS name or IP address.
    #[error("server name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the client configuration.
    #[error("TLS client configuration: {0}")]
    Tls(rustls::Error),
    /// A setting is out of range.
    #[error("{0}")]
    Setting(&'static str),
    /// The restart hook failed.
    #[error("restarting the server: {0}")]
    Restart(BoxError),
    /// The server did not come back after a restart.
    #[error("{addr} did not accept TCP within {secs} s of the restart")]
    NotAccepting { addr: SocketAddr, secs: u64 },
}

/// Not `#[from]`: rustls' error is part of the message, so it is not also a
/// `source()` that a chain printer would repeat.
impl From<rustls::Error> for FleetError {
    fn from(e: rustls::Error) -> FleetError {
        FleetError::Tls(e)
    }
}

/// The error a restart hook may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often a phase prints a progress line when stderr is not a terminal.
pub const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// How long a restarted server has to accept TCP again.
const RESTART_WAIT: Duration = Duration::from_secs(60);

/// How the fleet is made up and how it connects.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The TLS endpoint, HOST:PORT; several, comma separated, are endpoints
    /// sharing the fleet (see `spread`).
    pub target: String,
    /// How connections spread over several endpoints.
    pub spread: Spread,
    /// SNI and certificate name; defaults to the target's host.
    pub server_name: Option<String>,
    /// Number of devices.
    pub devices: DeviceId,
    /// TLS versions spoken.
    pub tls: TlsMix,
    /// Certificate checking.
    pub verify: Verify,
    /// Connection spacing.
    pub pacing: Pacing,
    /// Longest wall time of one phase; devices not started by then are skipped.
    pub phase_limit: Option<Duration>,
    /// Plaintext request size, bytes.
    pub request_bytes: usize,
    /// Up to this many request bytes go as TLS 1.3 0-RTT when resuming (0: off).
    pub early_data: usize,
    /// What the devices put in their ClientHello.
    pub hello: client::HelloProfile,
    /// Worker threads, i.e. connections in flight at most.
    pub concurrency: usize,
    /// TCP Fast Open (TCP_FASTOPEN_CONNECT) on every connection.
    pub tfo: bool,
    /// Per-connection limits.
    pub limits: Limits,
    /// Show progress on stderr: a bar on a terminal, else a line every
    /// [`PROGRESS_LINE_EVERY`] (a log or a pipe must not sit silent for a minute).
    pub progress: bool,
    /// Seed of the device order and arrival times.
    pub seed: u64,
}

impl FleetConfig {
    /// Defaults for a fleet of `devices` against `target`.
    pub fn new(target: impl Into<String>, devices: DeviceId, verify: Verify) -> FleetConfig {
        FleetConfig {
            target: target.into(),
            spread: Spread::RoundRobin,
            server_name: None,
            devices,
            tls: TlsMix::Tls13,
            verify,
            pacing: Pacing::Unpaced,
            phase_limit: None,
            request_bytes: 64,
            early_data: 0,
            hello: client::HelloProfile::Standard,
            concurrency: 32,
            tfo: false,
            limits: Limits {
                connect: Duration::from_secs(5),
                total: Duration::from_secs(15),
                // nginx sends close_notify but keeps TCP open until the client
                // answers or closes: waiting for its FIN would add the whole linger
                // to every connection. Devices close as soon as close_notify is in.
                linger: Duration::ZERO,
            },
            progress: false,
            seed: 0x5eed,
        }
    }
}

/// A fleet: its devices and their sessions live as long as this value.
pub struct Fleet {
    cfg: FleetConfig,
    /// The first endpoint (the one a restart is waited for).
    addr: SocketAddr,
    /// Every endpoint, and where each device went last.
    spread: spread::Spreader,
    server_name: ServerName<'static>,
    table: Arc<DeviceTable>,
    configs: client::DeviceConfigs,
    request: Vec<u8>,
    phases_run: u64,
}

impl Fleet {
    /// Resolve the target, load the CA and make the devices (no connection yet).
    pub fn new(cfg: FleetConfig) -> Result<Fleet, FleetError> {
        if cfg.devices == 0 {
            return Err(FleetError::Setting("a fleet needs at least one device"));
        }
        if cfg.concurrency == 0 {
            return Err(FleetError::Setting("concurrency must be at least 1"));
        }
        match cfg.pacing {
            Pacing::Rate(r) | Pacing::MeanInterval(r) if !(r.is_finite() && r > 0.0) => {
                return Err(FleetError::Setting(
                    "--rate and --mean-interval must be positive numbers",
                ))
            }
            _ => {}
        }
        let mut addrs = Vec::new();
        for target in cfg.target.split(',') {
            let addr = target
                .to_socket_addrs()
                .map_err(|e| FleetError::Target {
                    target: target.to_string(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| FleetError::Target {
                    target: target.to_string(),
                    reason: "no address".into(),
                })?;
            addrs.push(addr);
        }
        let addr = addrs[0];
        if addrs.len() > usize::from(u8::MAX) {
            return Err(FleetError::Setting("at most 255 targets"));
        }
        if let Spread::Sticky { move_share } = cfg.spread {
            if !(0.0..=1.0).contains(&move_share) {
                return Err(FleetError::Setting(
                    "--move-share is a fraction from 0 to 1",
                ));
            }
        }
        let name = match &cfg.server_name {
            Some(n) => n.clone(),
            None => host_of(cfg.target.split(',').next().unwrap_or_default()).to_string(),
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| FleetError::ServerName(name.clone()))?;
        let table = Arc::new(DeviceTable::new(cfg.devices));
        let configs = client::DeviceConfigs::new(
            cfg.tls,
            &cfg.verify,
            table.clone(),
            cfg.early_data > 0,
            cfg.hello,
        )?;
        let request = connection::http_request(cfg.request_bytes, &name);
        let spread = spread::Spreader::new(cfg.spread, addrs, cfg.devices, cfg.seed);
        Ok(Fleet {
            cfg,
            addr,
            spread,
            server_name,
            table,
            configs,
            request,
            phases_run: 0,
        })
    }

    /// The configuration the fleet was made with.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// The target's resolved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server name the devices send and check.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Devices currently holding a session.
    pub fn devices_with_session(&self) -> usize {
        self.table.with_session()
    }

    /// Every device connects once. `server_pid` (the server under test) adds its
    /// CPU time and memory to the report.
    pub fn run_phase(
        &mut self,
        name: &str,
        after_restart: bool,
        server_pid: Option<u32>,
    ) -> PhaseReport {
        let seed = self.cfg.seed.wrapping_add(self.phases_run);
        self.phases_run += 1;
        // The prime phase goes in device order; later ones shuffled, so the
        // server's cache is read at random like a real fleet's.
        let shuffled = self.phases_run > 1;
        let sched = schedule::Schedule::new(
            self.cfg.devices,
            self.cfg.pacing,
            shuffled,
            seed,
            self.cfg.phase_limit,
        );
        let phase = self.phases_run;
        let bar = self.progress_bar(name);
        let lines = self.progress_lines();
        let done = AtomicU64::new(0);
        let finished = AtomicBool::new(false);
        let cpu_before = server_pid.and_then(probe::cpu_time);
        let mem_before = server_pid.and_then(probe::tree_memory_bytes);
        let start = Instant::now();
        let workers = self.cfg.concurrency.min(self.cfg.devices as usize).max(1);
        let this = &*self;
        let tallies: Vec<report::Tally> = std::thread::scope(|sc| {
            if lines {
                let (done, finished) = (&done, &finished);
                let total = self.cfg.devices;
                sc.spawn(move || progress_lines(name, total, start, done, finished));
            }
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (sched, bar, done) = (&sched, &bar, &done);
                    sc.spawn(move || {
                        let mut tally = report::Tally::default();
                        while let Some((device, at)) = sched.next() {
                            let wait = at.saturating_duration_since(Instant::now());
                            if !wait.is_zero() {
                                std::thread::sleep(wait);
                            }
                            let (addr, moved) = this.spread.pick(device, phase);
                            let o = connection::connect(
                                device,
                                this.configs.for_device(device),
                                addr,
                                &this.server_name,
                                &this.request,
                                this.cfg.early_data,
                                this.cfg.limits,
                                this.cfg.tfo,
                            );
                            tally.record(&o);
                            if this.spread.several() {
                                tally.record_move(&o, moved);
                            }
                            bar.inc(1);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        tally
                    })
                })
                .collect();
            let tallies = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect();
            finished.store(true, Ordering::Relaxed);
            tallies
        });
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let mut total = report::Tally::default();
        for t in &tallies {
            total.merge(t);
        }
        let usage = ServerUsage {
            cpu: server_pid
                .and_then(probe::cpu_time)
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before)),
            rss: server_pid.and_then(probe::tree_memory_bytes),
            rss_before: mem_before,
        };
        PhaseReport::new(name, after_restart, &total, sched.skipped(), elapsed, usage)
    }

    /// Whether this phase prints progress lines: long phases, when stderr is
    /// not a terminal (where the bar would be hidden).
    fn progress_lines(&self) -> bool {
        use std::io::IsTerminal;
        self.cfg.progress && self.cfg.devices >= 5_000 && !std::io::stderr().is_terminal()
    }

    fn progress_bar(&self, name: &str) -> indicatif::ProgressBar {
        // Only long phases get a bar; `stderr()` hides it when not a terminal.
        if !self.cfg.progress || self.cfg.devices < 5_000 {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(u64::from(self.cfg.devices)),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        bar
    }

    /// An empty report for this fleet, to which phases are added.
    pub fn report(&self) -> Report {
        Report {
            target: self.cfg.target.clone(),
            server_name: self.server_name(),
            devices: self.cfg.devices,
            tls: self.cfg.tls.to_string(),
            concurrency: self.cfg.concurrency,
            request_bytes: self.request.len(),
            early_data_bytes: self.cfg.early_data,
            hello: self.cfg.hello,
            tfo: self.cfg.tfo,
            client_bytes_per_device: None,
            client_fixed_bytes_per_device: DeviceTable::fixed_bytes_per_device(),
            phases: Vec::new(),
        }
    }
}

/// The host part of HOST:PORT or [V6]:PORT.
fn host_of(target: &str) -> &str {
    let host = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => target,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Run the prime phase and `rounds` resume rounds, calling `restart` before
/// each round after the first (or before the only round, when there is one):
/// the usual shape of a run, shared by `warmtls-bench fleet` and `warmtls demo`.
/// `restart` returns the server's new pid, if known.
pub fn run_rounds(
    fleet: &mut Fleet,
    rounds: u32,
    mut server_pid: Option<u32>,
    mut restart: Option<&mut dyn FnMut() -> Result<Option<u32>, BoxError>>,
    mut on_phase: impl FnMut(&PhaseReport),
) -> Result<Report, FleetError> {
    let mut report = fleet.report();
    let rss_before = probe::own_rss_bytes();
    let prime = fleet.run_phase("prime", false, server_pid);
    on_phase(&prime);
    report.phases.push(prime);
    report.client_bytes_per_device = probe::own_rss_bytes()
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / f64::from(fleet.cfg.devices));
    for round in 1..=rounds {
        let restart_now = rounds == 1 || round > 1;
        let mut after_restart = false;
        if let (true, Some(r)) = (restart_now, restart.as_mut()) {
            if let Some(pid) = r().map_err(FleetError::Restart)? {
                server_pid = Some(pid);
            }
            probe::wait_for_accept(fleet.addr, RESTART_WAIT).ok_or(FleetError::NotAccepting {
                addr: fleet.addr,
                secs: RESTART_WAIT.as_secs(),
            })?;
            after_restart = true;
        }
        let p = fleet.run_phase(&format!("round{round}"), after_restart, server_pid);
        on_phase(&p);
        report.phases.push(p);
    }
    Ok(report)
}

/// A line on stderr every [`PROGRESS_LINE_EVERY`] until `finished`: how far
/// the phase `name` is, for logs and pipes where no bar is drawn.
fn progress_lines(
    name: &str,
    total: DeviceId,
    start: Instant,
    done: &AtomicU64,
    finished: &AtomicBool,
) {
    let mut next = start + PROGRESS_LINE_EVERY;
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        next += PROGRESS_LINE_EVERY;
        let n = done.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "  {name}: {n}/{total} connections after {secs:.0} s ({:.0}/s)",
            n as f64 / secs.max(1e-3)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_handles_names_ipv4_and_ipv6() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
