//! `warmtls-bench handover`: what devices see while the endpoint is replaced.
//!
//! A fleet connects at a fixed rate; in the middle of each of N phases the
//! endpoint is replaced, either by a hand-over (`warmtls upgrade`: the new
//! process takes over the listening sockets, the old one drains and exits) or,
//! as the control, by a plain stop and start on the same port and cache file
//! (SIGTERM, wait for the exit, start again). Per phase it counts what the
//! fleet simulator counts, refused and reset connections on their own; after
//! the run it checks every slot of the cache file (`warmtls-cache verify`'s scan).
//!
//! Both modes run the real endpoint through its command line, each with a
//! fresh cache file, on loopback.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::demo::{self_signed_cert_path, Backend, Endpoint, EndpointProgram, EndpointSpec};
use crate::fleet::{Fleet, FleetConfig, Pacing, PhaseReport, TlsMix, Verify};

/// How the endpoint is replaced in the middle of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Switch {
    /// `warmtls upgrade`: the listening sockets pass to the new process.
    Handover,
    /// SIGTERM, wait for the exit, start a new process (what a restart did
    /// before hand-overs existed).
    StopStart,
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Switch::Handover => "hand-over",
            Switch::StopStart => "stop+start",
        })
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct HandoverConfig {
    /// What runs the endpoint.
    pub exe: EndpointProgram,
    /// Devices; each connects once per phase, so a phase lasts devices / rate.
    pub devices: u32,
    /// Connections per second, the whole fleet.
    pub rate: f64,
    /// Phases after the prime phase, one switch in the middle of each.
    pub switches: u32,
    pub tls: TlsMix,
    /// Endpoint workers.
    pub workers: usize,
    /// Connections in flight at most.
    pub concurrency: usize,
    /// Where the cache files and logs go (a directory per mode).
    pub dir: PathBuf,
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Switch,
    /// Per phase: the prime phase, then one per switch.
    pub phases: Vec<PhaseReport>,
    /// Wall time of each switch, ms: the upgrade command until it answered, or
    /// SIGTERM until the new process was ready.
    pub switch_ms: Vec<f64>,
    /// Exit codes of the replaced processes (hand-over: each old process
    /// exits by itself once drained).
    pub old_exit_codes: Vec<i32>,
    /// Over the phases with a switch.
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
    pub connections: u64,
    /// The lowest share of connections that resumed, over the phases with a switch.
    pub min_resumed_pct: f64,
    /// `warmtls-cache verify` after the run: slots that failed their checksum.
    pub corrupt_slots: u64,
    /// Live sessions in the cache file at the end.
    pub live_sessions: u64,
}

/// The whole run (the JSON of `warmtls-bench handover`).
#[derive(Debug, Clone, Serialize)]
pub struct HandoverReport {
    pub devices: u32,
    pub rate: f64,
    pub switches: u32,
    pub tls: String,
    pub workers: usize,
    pub modes: Vec<ModeReport>,
}

/// Run the fleet across `cfg.switches` switches of kind `mode`.
pub fn run_mode(cfg: &HandoverConfig, mode: Switch) -> anyhow::Result<ModeReport> {
    // Successors are started by the processes they replace; as their
    // subreaper we can collect their exit codes when their parents are gone.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let dir = cfg.dir.join(match mode {
        Switch::Handover => "handover",
        Switch::StopStart => "stop-start",
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cache = dir.join("warmtls.cache");
    let backend = Backend::start(4)?;
    let spec = EndpointSpec {
        exe: cfg.exe.clone(),
        backend: backend.addr(),
        cache: cache.clone(),
        capacity: u64::from(cfg.devices) * 2 + 1000,
        stats: dir.join("stats.json"),
        log: dir.join("endpoint.log"),
        extra: vec!["--workers".into(), cfg.workers.to_string()],
    };
    let first = Endpoint::start(&spec, "127.0.0.1:0")?;
    let addr = first.addr();
    let mut current = Running::Child(first);

    let mut fc = FleetConfig::new(
        addr.to_string(),
        cfg.devices,
        Verify::Ca(self_signed_cert_path(&cache)),
    );
    fc.server_name = Some("localhost".into());
    fc.tls = cfg.tls;
    fc.pacing = Pacing::Rate(cfg.rate);
    fc.concurrency = cfg.concurrency;
    let mut fleet = Fleet::new(fc)?;
    let phase = Duration::from_secs_f64(f64::from(cfg.devices) / cfg.rate);

    let mut phases = vec![fleet.run_phase("prime", false, current.pid())];
    let mut switch_ms = Vec::new();
    let mut old_exit_codes = Vec::new();
    for i in 1..=cfg.switches {
        let pid = current.pid();
        let (spec, addr) = (&spec, addr.to_string());
        let (report, switched) = std::thread::scope(|sc| {
            let switcher = sc.spawn(move || {
                std::thread::sleep(phase / 2);
                switch(mode, spec, &addr, current)
            });
            let report = fleet.run_phase(&format!("switch{i}"), true, pid);
            (report, switcher.join())
        });
        let (next, took, old_code) = match switched {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the switch thread panicked"),
        };
        phases.push(report);
        switch_ms.push(took.as_secs_f64() * 1000.0);
        old_exit_codes.push(old_code);
        current = next;
    }
    let code = current.stop()?;
    anyhow::ensure!(code == 0, "the last endpoint exited with {code}");
    let (corrupt_slots, live_sessions) = verify(&cache)?;
    let switched = &phases[1..];
    Ok(ModeReport {
        mode,
        refused: switched.iter().map(|p| p.refused).sum(),
        reset: switched.iter().map(|p| p.reset).sum(),
        failed: switched.iter().map(|p| p.failed_total).sum(),
        connections: switched.iter().map(|p| p.connections).sum(),
        min_resumed_pct: switched.iter().map(|p| p.resumed_pct).fold(100.0, f64::min),
        phases,
        switch_ms,
        old_exit_codes,
        corrupt_slots,
        live_sessions,
    })
}

/// The endpoint now serving: our child (the first process, or one we started
/// after a stop), or a successor started by the process it replaced.
enum Running {
    Child(Endpoint),
    Successor(Successor),
}

/// A successor's pid; killed if dropped while it still runs (a failed run).
struct Successor(Option<u32>);

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
    }
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Child(e) => e.pid(),
            Running::Successor(s) => s.0,
        }
    }

    /// Wait for it to exit by itself; its exit code.
    fn wait_exit(self, within: Duration) -> anyhow::Result<i32> {
        match self {
            Running::Child(mut e) => Ok(e.wait_exit(within)?.code().unwrap_or(-1)),
            Running::Successor(mut s) => {
                let pid = s.0.expect("a running successor");
                let code = wait_pid(pid, within)?;
                s.0 = None;
                Ok(code)
            }
        }
    }

    /// SIGTERM and wait; its exit code.
    fn stop(self) -> anyhow::Result<i32> {
        match self {
            Running::Child(mut e) => {
                e.stop()?;
                Ok(0)
            }
            Running::Successor(s) => {
                let pid = s.0.expect("a running successor");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )?;
                Running::Successor(s).wait_exit(Duration::from_secs(30))
            }
        }
    }
}

/// Wait for `pid`, a descendant that becomes our child once its parent has
/// exited (we are its subreaper), to exit.
fn wait_pid(pid: u32, within: Duration) -> anyhow::Result<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let end = Instant::now() + within;
    loop {
        match waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => anyhow::bail!("pid {pid} was killed by {sig}"),
            Ok(_) | Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => anyhow::bail!("waiting for pid {pid}: {e}"),
        }
        anyhow::ensure!(
            Instant::now() < end,
            "pid {pid} still runs after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replace `current`; returns the new endpoint, how long the switch took and
/// the old process's exit code.
fn switch(
    mode: Switch,
    spec: &EndpointSpec,
    addr: &str,
    current: Running,
) -> anyhow::Result<(Running, Duration, i32)> {
    let t = Instant::now();
    match mode {
        Switch::Handover => {
            let out = spec
                .exe
                .command()
                .arg("upgrade")
                .arg("--cache")
                .arg(&spec.cache)
                .output()
                .context("running the upgrade command")?;
            anyhow::ensure!(
                out.status.success(),
                "upgrade failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let took = t.elapsed();
            // "warmtls: pid NEW took over ADDR from pid OLD (draining)"
            let text = String::from_utf8_lossy(&out.stdout);
            let new: u32 = text
                .split_whitespace()
                .nth(2)
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("unexpected upgrade output {text:?}"))?;
            let code = current.wait_exit(Duration::from_secs(30))?;
            Ok((Running::Successor(Successor(Some(new))), took, code))
        }
        Switch::StopStart => {
            let code = current.stop()?;
            let next = Endpoint::start(spec, addr)?;
            Ok((Running::Child(next), t.elapsed(), code))
        }
    }
}

/// Check every slot's checksum, like `warmtls-cache verify`: corrupt slots and
/// live sessions.
fn verify(cache: &Path) -> anyhow::Result<(u64, u64)> {
    let store =
        warmtls::store::SessionStore::open_existing(cache, warmtls::store::Access::ReadOnly)
            .with_context(|| format!("opening {}", cache.display()))?;
    let t = store.scan(|_| {});
    anyhow::ensure!(
        t.busy_buckets == 0,
        "{} buckets busy after the run",
        t.busy_buckets
    );
    Ok((t.corrupt, t.live))
}

impl HandoverReport {
    /// The comparison table, then each mode's phases.
    pub fn table(&self) -> String {
        let mut s = format!(
            "handover: {} devices, TLS {}, {:.0} connections/s, {} switches per mode, {} workers\n",
            self.devices, self.tls, self.rate, self.switches, self.workers
        );
        s += &format!(
            "{:<12} {:>8} {:>8} {:>6} {:>7} {:>17} {:>12} {:>13} {:>16}\n",
            "mode",
            "conns",
            "refused",
            "reset",
            "failed",
            "resumed% (worst)",
            "switch ms",
            "old exit 0",
            "cache verify"
        );
        for m in &self.modes {
            let max_ms = m.switch_ms.iter().copied().fold(0.0, f64::max);
            s += &format!(
                "{:<12} {:>8} {:>8} {:>6} {:>7} {:>17.2} {:>12.0} {:>13} {:>16}\n",
                m.mode.to_string(),
                m.connections,
                m.refused,
                m.reset,
                m.failed,
                m.min_resumed_pct,
                max_ms,
                format!(
                    "{}/{}",
                    m.old_exit_codes.iter().filter(|&&c| c == 0).count(),
                    m.old_exit_codes.len()
                ),
                if m.corrupt_slots == 0 {
                    format!("OK ({} live)", m.live_sessions)
                } else {
                    format!("{} CORRUPT", m.corrupt_slots)
                }
            );
        }
        for m in &self.modes {
            s += &format!("\n{}, per phase:\n", m.mode);
            for p in &m.phases {
                s += &format!(
                    "  {:<8} {:>6} conns {:>6} resumed {:>5} full {:>4} refused {:>4} reset {:>4} failed {:>7.2}% resumed  p99 {:>7.2} ms  max {:>7.2} ms  {:>4.0} conn/s\n",
                    p.name,
                    p.connections,
                    p.resumed,
                    p.full,
                    p.refused,
                    p.reset,
                    p.failed_total,
                    p.resumed_pct,
                    p.conn_time_ms.p99,
                    p.conn_time_ms.max,
                    p.conn_per_s
                );
            }
        }
        s
    }
}
