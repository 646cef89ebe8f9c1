//! `warmtls demo`: the whole story in one command, on loopback, with no setup —
//! a built-in plaintext backend, the endpoint as a child process (self-signed
//! certificate, cache file in a temp directory), a fleet of simulated devices that
//! prime and resume, a restart of the endpoint on the same cache file, and the
//! share of devices that still resume afterwards.
//!
//! It drives the real endpoint through its command-line contract (readiness
//! line, `<cache>.cert.pem`, `--stats-file`), never its internals: a `warmtls`
//! binary, or this crate's own `warmtls-bench endpoint serve ...`, which runs the
//! same library code ([`EndpointProgram`]).
//! [`Backend`] and [`Endpoint`] are public so the integration tests use the same
//! ones.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::fleet::{self, Fleet, FleetConfig, PhaseReport, TlsMix, Verify};

/// Options of `warmtls demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Simulated devices (the default finishes in about two minutes on 2 cores).
    #[arg(long, default_value_t = 100_000)]
    pub devices: u32,
    /// TLS versions of the devices (mix: half each).
    #[arg(long, value_enum, default_value_t = TlsMix::Mix)]
    pub tls: TlsMix,
    /// Sessions the cache file holds (default: the devices plus headroom).
    #[arg(long)]
    pub cache_capacity: Option<u64>,
    /// Connections in flight at most.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Resumption after the restart below this share fails the demo.
const MIN_RESUMED_PCT_AFTER_RESTART: f64 = 99.0;

/// What can go wrong starting or stopping the demo's processes.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket or process call failed.
    #[error("{what}: {io}")]
    Io { what: String, io: std::io::Error },
    /// The endpoint exited or stayed silent instead of printing its readiness line.
    #[error("the endpoint did not become ready ({reason}); its log:\n{log}")]
    NotReady { reason: String, log: String },
    /// The endpoint did not exit cleanly on SIGTERM.
    #[error("the endpoint did not stop cleanly on SIGTERM ({status}); its log:\n{log}")]
    UncleanStop { status: String, log: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |io| DemoError::Io { what, io }
}

/// The demo's plaintext backend: a few threads answering each HTTP/1.0 request
/// with a small response and closing, on 127.0.0.1 at a free port.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// The body every request gets.
const BODY: &[u8] = b"warm\n";
/// Largest request the backend reads before answering anyway.
const MAX_REQUEST: usize = 16 * 1024;

impl Backend {
    /// Start `threads` responder threads.
    pub fn start(threads: usize) -> Result<Backend, DemoError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the backend"))?;
        let addr = listener.local_addr().map_err(io_err("backend address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            let l = listener
                .try_clone()
                .map_err(io_err("cloning the backend listener"))?;
            let (stop, served) = (stop.clone(), served.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((s, _)) = l.accept() else { continue };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if answer(s).is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Backend {
            addr,
            stop,
            served,
            threads: handles,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST {
        match s.read(&mut buf)? {
            0 => break,
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    s.write_all(&response())
}

/// The demo backend's whole answer to every request.
fn response() -> Vec<u8> {
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        BODY.len()
    );
    let mut resp = head.into_bytes();
    resp.extend_from_slice(BODY);
    resp
}

/// How many bytes the demo backend answers with.
pub fn response_len() -> usize {
    response().len()
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake each thread blocked in accept.
        for _ in &self.threads {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The program that runs the endpoint: a `warmtls` binary, or a
/// `warmtls-bench` binary's hidden `endpoint` subcommand (the same code, so the
/// demo and the harnesses need no second binary built).
#[derive(Debug, Clone)]
pub struct EndpointProgram {
    /// The executable.
    pub path: PathBuf,
    /// Arguments that come before `serve`.
    pub leading: Vec<String>,
}

impl EndpointProgram {
    /// A `warmtls` binary.
    pub fn warmtls(path: impl Into<PathBuf>) -> EndpointProgram {
        EndpointProgram {
            path: path.into(),
            leading: Vec::new(),
        }
    }

    /// A `warmtls-bench` binary's `endpoint` subcommand.
    pub fn bench(path: impl Into<PathBuf>) -> EndpointProgram {
        EndpointProgram {
            path: path.into(),
            leading: vec!["endpoint".into()],
        }
    }

    /// `path` if given (a `warmtls` binary), else this `warmtls-bench` binary.
    pub fn given_or_this(path: Option<&Path>) -> std::io::Result<EndpointProgram> {
        match path {
            Some(p) => Ok(EndpointProgram::warmtls(p)),
            None => std::env::current_exe().map(EndpointProgram::bench),
        }
    }

    /// A command that runs `SUBCOMMAND ...` of the endpoint, e.g. `serve`.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.args(&self.leading);
        c
    }

    /// The same as a shell word list (single-quoted), for restart scripts.
    pub fn shell(&self) -> String {
        std::iter::once(self.path.display().to_string())
            .chain(self.leading.iter().cloned())
            .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How to start a `warmtls serve`: everything but the listen address.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// What runs the endpoint.
    pub exe: EndpointProgram,
    pub backend: SocketAddr,
    pub cache: PathBuf,
    pub capacity: u64,
    pub stats: PathBuf,
    /// Its stderr is appended here.
    pub log: PathBuf,
    /// More `serve` arguments.
    pub extra: Vec<String>,
}

/// A `warmtls serve` child process.
pub struct Endpoint {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

/// How long the endpoint gets to print its readiness line, and to exit on SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl Endpoint {
    /// Start `serve --listen LISTEN ...` and wait for its readiness line
    /// (`warmtls: listening on ADDR`).
    pub fn start(spec: &EndpointSpec, listen: &str) -> Result<Endpoint, DemoError> {
        let EndpointSpec {
            exe,
            backend,
            cache,
            capacity,
            stats,
            log,
            extra,
        } = spec;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let mut child = exe
            .command()
            .arg("serve")
            .args(["--listen", listen])
            .arg("--backend")
            .arg(backend.to_string())
            .arg("--cache")
            .arg(cache)
            .arg("--cache-capacity")
            .arg(capacity.to_string())
            .arg("--stats-file")
            .arg(stats)
            .args(["--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(io_err(format!("starting {} serve", exe.path.display())))?;
        let not_ready = |reason: String| DemoError::NotReady {
            reason,
            log: tail(log),
        };
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(not_ready("no stdout".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            // Keep draining, so the endpoint never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(not_ready(format!("it exited: {status}")));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(not_ready(format!(
                    "silent for {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
        };
        let addr = line
            .strip_prefix("warmtls: listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(not_ready(format!("unexpected first line {line:?}")));
        };
        Ok(Endpoint {
            child: Some(child),
            addr,
            log: log.clone(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Wait (up to `within`) for it to exit by itself, as the old process of a
    /// hand-over does once it has drained; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus, DemoError> {
        let start = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return Err(DemoError::UncleanStop {
                status: "already stopped".into(),
                log: String::new(),
            });
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) if start.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    return Err(DemoError::UncleanStop {
                        status: format!("still running after {} s", within.as_secs()),
                        log: tail(&self.log),
                    })
                }
            }
        }
    }

    /// SIGTERM, and wait for a clean exit (the store is flushed by then).
    pub fn stop(&mut self) -> Result<Duration, DemoError> {
        let start = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() < STOP_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(DemoError::UncleanStop {
                        status: format!("still running after {} s", STOP_TIMEOUT.as_secs()),
                        log: tail(&self.log),
                    });
                }
            }
        };
        if !status.success() {
            return Err(DemoError::UncleanStop {
                status: status.to_string(),
                log: tail(&self.log),
            });
        }
        Ok(start.elapsed())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `<cache>.cert.pem`: where the endpoint keeps its self-signed certificate.
pub fn self_signed_cert_path(cache: &Path) -> PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".cert.pem");
    p.into()
}

/// Bytes per connection of one handshake kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindBytes {
    pub c2s: Option<f64>,
    pub s2c: Option<f64>,
}

/// The demo's report (also its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub devices: u32,
    pub tls: String,
    /// Live sessions in the cache file while the endpoint was down.
    pub sessions_stored: u64,
    /// Sessions the cache file was sized for.
    pub cache_capacity: u64,
    pub cache_file_bytes: u64,
    /// Cache file size / sessions stored: what each stored session cost.
    pub bytes_per_session: Option<f64>,
    /// Cache file size / capacity: what each session of capacity costs (the
    /// figure `warmtls-cache stats` and the README give; a file is sized
    /// before it fills).
    pub bytes_per_session_of_capacity: f64,
    pub resumed_pct_before_restart: f64,
    pub resumed_pct_after_restart: f64,
    /// Mean bytes on the wire per connection, by handshake kind.
    pub bytes_per_full_connection: KindBytes,
    pub bytes_per_resumed_connection: KindBytes,
    /// SIGTERM to exit, and start to readiness of the second endpoint.
    pub stop_ms: f64,
    pub restart_ready_ms: f64,
    /// The simulator's memory per device.
    pub client_bytes_per_device: Option<f64>,
    /// The endpoint's own counters (its stats file), once per run, read after it exited.
    pub endpoint_stats: Vec<serde_json::Value>,
    pub total_s: f64,
    pub phases: Vec<PhaseReport>,
}

/// What the demo shows, in plain words, before anything runs.
pub fn intro(devices: u32) -> String {
    format!(
        "warmtls demo: {devices} simulated devices connect over TLS, reconnect, and \
         reconnect again after the endpoint restarts.\n\
         A device that resumes skips the full TLS handshake: it presents the session \
         from its last connection, so it downloads no certificate and checks no \
         signature, and each reconnect costs it fewer radio bytes and less CPU, i.e. \
         less battery and data. warmtls keeps those sessions in a file, so devices \
         still resume after a restart.\n"
    )
}

impl DemoReport {
    fn text(&self) -> String {
        let b = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
        let mut s = format!(
            "\nwarmtls demo: {} devices (TLS {}), endpoint restarted between the two resume rounds\n\n",
            self.devices, self.tls
        );
        s += &format!(
            "  sessions stored        {} in a {:.1} MiB file sized for {}: {} bytes per stored \
             session ({:.0} per session of capacity)\n",
            self.sessions_stored,
            self.cache_file_bytes as f64 / (1024.0 * 1024.0),
            self.cache_capacity,
            b(self.bytes_per_session),
            self.bytes_per_session_of_capacity
        );
        s += &format!(
            "  resumed                {:.2}% before the restart, {:.2}% after\n",
            self.resumed_pct_before_restart, self.resumed_pct_after_restart
        );
        // The store's counters are in the file, so the last stats cover both runs.
        if let Some(st) = self.endpoint_stats.last().map(|v| &v["store"]) {
            s += &format!(
                "  store                  {} live sessions evicted, {} moved to their other bucket instead\n",
                st["evictions"], st["displacements"]
            );
        }
        s += &format!(
            "  bytes per connection   full {} up / {} down, resumed {} up / {} down\n\
             \x20                        (a resumed ClientHello carries the session's ticket or ID,\n\
             \x20                        so a little more goes up; far less comes down: no certificate)\n",
            b(self.bytes_per_full_connection.c2s),
            b(self.bytes_per_full_connection.s2c),
            b(self.bytes_per_resumed_connection.c2s),
            b(self.bytes_per_resumed_connection.s2c)
        );
        s += &format!(
            "  restart                stop {:.0} ms, ready again {:.0} ms later\n\n",
            self.stop_ms, self.restart_ready_ms
        );
        s += &format!(
            "  {:<24} {:>9} {:>8} {:>8} {:>8} {:>7} {:>10} {:>10}\n",
            "phase", "resumed%", "p50 ms", "p99 ms", "conn/s", "failed", "srv us/c", "srv RSS MB"
        );
        for p in &self.phases {
            let name = match (p.name.as_str(), p.after_restart) {
                ("prime", _) => "prime (full handshakes)".to_string(),
                (n, true) => format!("{n} (after restart)"),
                (n, false) => n.to_string(),
            };
            s += &format!(
                "  {:<24} {:>9.2} {:>8.2} {:>8.2} {:>8.0} {:>7} {:>10} {:>10}\n",
                name,
                p.resumed_pct,
                p.conn_time_ms.p50,
                p.conn_time_ms.p99,
                p.conn_per_s,
                p.unsuccessful(),
                b(p.server_cpu_us_per_conn),
                p.server_rss_mb
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}"))
            );
        }
        if let Some(c) = self.client_bytes_per_device {
            s += &format!("\n  (the simulator held {c:.0} bytes per device)\n");
        }
        s += &format!("  total {:.1} s\n", self.total_s);
        s
    }
}

/// Room for every device's session plus 2%: TLS 1.3 replaces each session with
/// a new one on every resumption, and the store keeps a table this full under
/// that churn without evicting a live session (it moves residents to their
/// other bucket instead; bench/RESULTS.md).
fn default_capacity(devices: u32) -> u64 {
    let d = u64::from(devices);
    d + d / 50 + 64
}

/// The endpoint's last stats file (written at exit), or null.
fn read_stats(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Mean per-connection bytes of one kind over phases, weighted by connections.
fn kind_bytes(phases: &[PhaseReport], resumed: bool) -> KindBytes {
    let mean = |f: fn(&PhaseReport) -> Option<f64>| {
        let (mut bytes, mut n) = (0.0, 0u64);
        for p in phases {
            let count = if resumed { p.resumed } else { p.full };
            if let Some(v) = f(p) {
                bytes += v * count as f64;
                n += count;
            }
        }
        (n > 0).then(|| bytes / n as f64)
    };
    if resumed {
        KindBytes {
            c2s: mean(|p| p.bytes_c2s_per_conn.resumed),
            s2c: mean(|p| p.bytes_s2c_per_conn.resumed),
        }
    } else {
        KindBytes {
            c2s: mean(|p| p.bytes_c2s_per_conn.full),
            s2c: mean(|p| p.bytes_s2c_per_conn.full),
        }
    }
}

/// Run the demo and print its report; fails when too few devices resume after
/// the restart.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    print!("{}", intro(a.devices));
    let _ = std::io::stdout().flush();
    let report = demo(&a)?;
    print!("{}", report.text());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.resumed_pct_after_restart >= MIN_RESUMED_PCT_AFTER_RESTART,
        "only {:.2}% of devices resumed after the restart (want ≥ {MIN_RESUMED_PCT_AFTER_RESTART}%)",
        report.resumed_pct_after_restart
    );
    Ok(())
}

fn demo(a: &DemoArgs) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let exe = EndpointProgram::given_or_this(None).context("finding this binary")?;
    let dir = tempfile::Builder::new()
        .prefix("warmtls-demo-")
        .tempdir()
        .context("creating a temp directory")?;
    let cache = dir.path().join("warmtls.cache");
    let stats = dir.path().join("stats.json");
    let log = dir.path().join("endpoint.log");
    // Room for every device's session, plus 2%: the store keeps them all.
    let capacity = a
        .cache_capacity
        .unwrap_or_else(|| default_capacity(a.devices));

    let backend = Backend::start(4)?;
    eprintln!(
        "demo: backend on {}, starting the endpoint (cache {})",
        backend.addr(),
        cache.display()
    );
    let spec = EndpointSpec {
        exe,
        backend: backend.addr(),
        cache: cache.clone(),
        capacity,
        stats,
        log,
        extra: Vec::new(),
    };
    let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0")?;
    let addr = endpoint.addr();
    eprintln!(
        "demo: endpoint on {addr}; {} devices connect, resume, and resume after a restart",
        a.devices
    );

    let mut cfg = FleetConfig::new(
        addr.to_string(),
        a.devices,
        Verify::Ca(self_signed_cert_path(&cache)),
    );
    cfg.server_name = Some("localhost".into());
    cfg.tls = a.tls;
    cfg.concurrency = a.concurrency;
    cfg.progress = true;
    let mut fleet = Fleet::new(cfg)?;

    let first_pid = endpoint.pid();
    let mut sessions_stored = 0;
    let mut endpoint_stats = Vec::new();
    let mut stop_ms = 0.0;
    let mut restart_ready_ms = 0.0;
    let mut restart = || -> Result<Option<u32>, fleet::BoxError> {
        let stopped = endpoint.stop()?;
        stop_ms = stopped.as_secs_f64() * 1000.0;
        endpoint_stats.push(read_stats(&spec.stats));
        sessions_stored =
            warmtls::store::SessionStore::open_existing(&cache, warmtls::store::Access::ReadOnly)
                .map(|s| s.scan(|_| {}).live)
                .unwrap_or(0);
        let t = Instant::now();
        endpoint = Endpoint::start(&spec, &addr.to_string())?;
        restart_ready_ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("demo: endpoint restarted on the same cache file");
        Ok(endpoint.pid())
    };
    let report = fleet::run_rounds(&mut fleet, 2, first_pid, Some(&mut restart), |p| {
        eprintln!(
            "demo: {} done in {:.1} s: {:.2}% resumed, {} failed",
            p.name,
            p.elapsed_s,
            p.resumed_pct,
            p.unsuccessful()
        );
    })?;
    endpoint.stop()?;
    endpoint_stats.push(read_stats(&spec.stats));
    let cache_file_bytes = std::fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
    let pct = |after: bool| {
        report
            .phases
            .iter()
            .find(|p| p.name != "prime" && p.after_restart == after)
            .map_or(0.0, |p| p.resumed_pct)
    };
    Ok(DemoReport {
        devices: a.devices,
        tls: a.tls.to_string(),
        sessions_stored,
        cache_capacity: capacity,
        cache_file_bytes,
        bytes_per_session: (sessions_stored > 0)
            .then(|| cache_file_bytes as f64 / sessions_stored as f64),
        bytes_per_session_of_capacity: cache_file_bytes as f64 / capacity.max(1) as f64,
        resumed_pct_before_restart: pct(false),
        resumed_pct_after_restart: pct(true),
        bytes_per_full_connection: kind_bytes(&report.phases, false),
        bytes_per_resumed_connection: kind_bytes(&report.phases, true),
        stop_ms,
        restart_ready_ms,
        client_bytes_per_device: report.client_bytes_per_device,
        endpoint_stats,
        total_s: started.elapsed().as_secs_f64(),
        phases: report.phases,
    })
}
