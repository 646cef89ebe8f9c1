//! Devices that sleep: which sleep patterns still resume, per TLS mode.
//!
//! A device that wakes every 30 minutes and one that is silent for 60 days need
//! different resumption mechanisms: rustls clients drop stateful TLS 1.3 tickets
//! after 24 h, the store's 7-day tickets ([`warmtls::store::StoreTicketer`]) after 7
//! days, and TLS 1.2 session IDs only when the server's `session_lifetime` runs out.
//! Nobody waits 60 days, so this part of the simulator runs on simulated time: the
//! devices' rustls clock and the server's (rustls' and the store's) are one
//! [`ManualClock`], moved from one wake-up to the next.
//!
//! Unlike the rest of the fleet simulator this is warmtls-specific, because it must
//! move the server's clock: the server is warmtls' own connection state machine
//! (`warmtls::conn::Conn`, driven in memory) with its rustls config and a real store file, in process; bytes go
//! between client and server in memory instead of over a socket. Everything else
//! — handshakes, store calls, lineage, ticket lifetimes — is the real code.
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig};

use super::client::{DeviceConfigs, TlsMix, Verify};
use super::devices::{CurrentDevice, DeviceId, DeviceTable};
use warmtls::config::{Config, Tls13Tickets};
use warmtls::conn::memory::MemoryDriver;
use warmtls::conn::{Limits, Side};
use warmtls::store::{Clock, ManualClock, SessionStore};
use warmtls::tls::{self, ServerConfigs};

/// Why a sleep simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SleepError {
    /// A `--profile` list that does not parse.
    #[error("sleep profile {0}")]
    Profile(String),
    #[error("cannot make a temporary directory for the cache file: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Store(#[from] warmtls::store::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Fleet(#[from] super::FleetError),
}

/// A share of the fleet and how long those devices sleep between connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepProfile {
    /// Percent of the devices, 0–100.
    pub percent: f64,
    /// Time between two connections of one device.
    pub sleep: Duration,
}

impl std::fmt::Display for SleepProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%:{}", self.percent, short(self.sleep))
    }
}

/// A sleep as written in a profile: `60d`, `25h`, `30m`, `90s`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parse `89%:30m,10%:3d,1%:60d`: percent of devices, then sleep; the percents
/// must add up to 100.
pub fn parse_profiles(s: &str) -> Result<Vec<SleepProfile>, SleepError> {
    let bad = |m: String| SleepError::Profile(m);
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (pct, sleep) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("{part:?}: expected PERCENT%:SLEEP, e.g. 10%:3d")))?;
        let percent: f64 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| bad(format!("{part:?}: {pct:?} is not a percentage")))?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(bad(format!("{part:?}: the percentage must be in (0, 100]")));
        }
        let sleep = warmtls::config::parse_duration(sleep)
            .map_err(|e| bad(format!("{part:?}: sleep {sleep:?}: {e}")))?;
        if sleep.is_zero() {
            return Err(bad(format!("{part:?}: the sleep must be longer than 0")));
        }
        out.push(SleepProfile { percent, sleep });
    }
    let total: f64 = out.iter().map(|p| p.percent).sum();
    if out.is_empty() || (total - 100.0).abs() > 1e-6 {
        return Err(bad(format!(
            "{s:?}: the percentages add up to {total}%; they must add up to 100%"
        )));
    }
    Ok(out)
}

/// How the server lets devices resume, and which TLS version they speak
/// (`--mode`; [`Display`](std::fmt::Display) is the table's longer label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SleepMode {
    /// TLS 1.2 session IDs.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.2 session IDs, the server in store-ticketer mode (must not change
    /// anything for TLS 1.2).
    #[value(name = "1.2-ticketer")]
    Tls12TicketerServer,
    /// TLS 1.3, stateful tickets (24 h).
    #[value(name = "1.3-stateful", alias = "1.3")]
    Tls13Stateful,
    /// TLS 1.3, the store's 7-day tickets.
    #[value(name = "1.3-ticketer", alias = "1.3-store-ticketer")]
    Tls13StoreTicketer,
}

impl SleepMode {
    /// Every mode, in table order.
    pub const ALL: [SleepMode; 4] = [
        SleepMode::Tls12,
        SleepMode::Tls12TicketerServer,
        SleepMode::Tls13Stateful,
        SleepMode::Tls13StoreTicketer,
    ];

    fn tls(self) -> TlsMix {
        match self {
            SleepMode::Tls12 | SleepMode::Tls12TicketerServer => TlsMix::Tls12,
            _ => TlsMix::Tls13,
        }
    }

    fn tickets(self) -> Tls13Tickets {
        match self {
            SleepMode::Tls13StoreTicketer | SleepMode::Tls12TicketerServer => {
                Tls13Tickets::StoreTicketer
            }
            _ => Tls13Tickets::Stateful,
        }
    }
}

impl std::fmt::Display for SleepMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SleepMode::Tls12 => "TLS 1.2 session ID",
            SleepMode::Tls12TicketerServer => "TLS 1.2 session ID, server store-ticketer",
            SleepMode::Tls13Stateful => "TLS 1.3 stateful (24 h)",
            SleepMode::Tls13StoreTicketer => "TLS 1.3 store-ticketer (7 d)",
        })
    }
}

/// One simulation: a fleet with sleep profiles against one server mode.
#[derive(Debug, Clone)]
pub struct SleepSim {
    pub profiles: Vec<SleepProfile>,
    pub devices: DeviceId,
    /// Connections per device after its first (full) one, each after one sleep.
    pub wakes: u32,
    pub mode: SleepMode,
    /// The server's `session_lifetime`.
    pub session_lifetime: Duration,
    /// The server's `max_session_age`.
    pub max_session_age: Duration,
}

impl SleepSim {
    /// `devices` devices with `profiles`, one wake each, at the server's defaults.
    pub fn new(profiles: Vec<SleepProfile>, devices: DeviceId, mode: SleepMode) -> SleepSim {
        let d = Config::default();
        SleepSim {
            profiles,
            devices,
            wakes: 1,
            mode,
            session_lifetime: d.session_lifetime,
            max_session_age: d.max_session_age,
        }
    }
}

/// What the devices of one profile saw.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfileResult {
    pub percent: f64,
    #[serde(rename = "sleep_secs", serialize_with = "secs")]
    pub sleep: Duration,
    pub devices: u64,
    /// Connections after a sleep.
    pub wakes: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Of those, that failed (never expected; a bug if not 0).
    pub failed: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl ProfileResult {
    /// Resumed wake-ups, percent (0 with no wake-ups).
    pub fn resumed_pct(&self) -> f64 {
        if self.wakes == 0 {
            return 0.0;
        }
        100.0 * self.resumed as f64 / self.wakes as f64
    }
}

/// rustls' clock from a [`ManualClock`], so one clock moves the devices, rustls
/// and the store together.
#[derive(Debug)]
pub struct SimTime(pub Arc<ManualClock>);

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(
            self.0.now_secs(),
        )))
    }
}

/// Device counts per profile: each its rounded share, the last the remainder.
fn apportion(profiles: &[SleepProfile], devices: DeviceId) -> Vec<u64> {
    let n = u64::from(devices);
    let mut counts: Vec<u64> = profiles
        .iter()
        .map(|p| (p.percent / 100.0 * n as f64).round() as u64)
        .collect();
    let but_last: u64 = counts.iter().rev().skip(1).sum::<u64>().min(n);
    if let Some(last) = counts.last_mut() {
        *last = n - but_last;
    }
    counts
}

/// Run `sim` to the end and report per profile (in `sim.profiles` order).
pub fn simulate(sim: &SleepSim) -> Result<Vec<ProfileResult>, SleepError> {
    if sim.devices == 0 {
        return Err(SleepError::Profile("needs at least one device".into()));
    }
    let dir = tempfile::tempdir().map_err(SleepError::TempDir)?;
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(SimTime(clock.clone()));
    let cfg = Config {
        session_lifetime: sim.session_lifetime,
        max_session_age: sim.max_session_age,
        tls13_tickets: sim.mode.tickets(),
        cache: warmtls::config::CacheConfig {
            path: dir.path().join("sleep.cache"),
            capacity: (u64::from(sim.devices) * 4).max(1024),
            ..Default::default()
        },
        ..Config::default()
    };
    let store = Arc::new(SessionStore::open_or_create_with_clock(
        &cfg.store_config(),
        clock.clone(),
    )?);
    let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg)?));
    let server =
        tls::server_config_with_time(&cfg, resolver, store, cfg.session_lifetime, time.clone())?;
    let table = Arc::new(DeviceTable::new(sim.devices));
    let verify = Verify::Ca(tls::self_signed_paths(&cfg.cache.path).cert);
    let configs = DeviceConfigs::with_time(
        sim.mode.tls(),
        &verify,
        table,
        false,
        super::client::HelloProfile::Standard,
        time,
    )?;

    let counts = apportion(&sim.profiles, sim.devices);
    let mut results: Vec<ProfileResult> = sim
        .profiles
        .iter()
        .zip(&counts)
        .map(|(p, &devices)| ProfileResult {
            percent: p.percent,
            sleep: p.sleep,
            devices,
            wakes: 0,
            resumed: 0,
            failed: 0,
        })
        .collect();
    // Every device connects at t0 (a full handshake), then after each sleep.
    let mut events: Vec<(u64, DeviceId, usize)> = Vec::new();
    let mut device: DeviceId = 0;
    for (pi, (p, &n)) in sim.profiles.iter().zip(&counts).enumerate() {
        for _ in 0..n {
            for k in 0..=u64::from(sim.wakes) {
                events.push((k * p.sleep.as_secs(), device, pi));
            }
            device += 1;
        }
    }
    events.sort_unstable();
    let t0 = clock.now_secs();
    for (at, device, pi) in events {
        clock.set(t0 + at);
        let kind = {
            let _d = CurrentDevice::enter(device);
            connect(configs.for_device(device), &server)
        };
        if at == 0 {
            continue; // the first connection: full by definition
        }
        let r = &mut results[pi];
        r.wakes += 1;
        match kind {
            Some(HandshakeKind::Resumed) => r.resumed += 1,
            Some(_) => {}
            None => r.failed += 1,
        }
    }
    Ok(results)
}

/// One connection between an in-memory rustls client and warmtls' connection
/// state machine (the endpoint's, driven in memory), with a backend answering
/// `pong` to `ping`. `None` if the connection failed or did not complete.
pub fn connect(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Option<HandshakeKind> {
    let name = ServerName::try_from("localhost").ok()?;
    let mut c = ClientConnection::new(client.clone(), name).ok()?;
    let limits = Limits {
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        backend_connect_timeout: Duration::from_secs(60),
        proxy_protocol: false,
        http: None,
    };
    let mut s = MemoryDriver::new(ServerConfigs::new(server.clone()), limits);
    c.writer().write_all(b"ping").ok()?;
    let mut got = Vec::new();
    let mut answered = false;
    for _ in 0..30 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).ok()?;
        }
        s.deliver(Side::Client, &out);
        if s.posted().connect {
            s.connected(Ok(()));
        }
        if !answered && !s.take_to_backend().is_empty() {
            s.deliver(Side::Backend, b"pong");
            answered = true;
        }
        let to_client = s.take_to_client();
        let mut rd: &[u8] = &to_client;
        while !rd.is_empty() {
            c.read_tls(&mut rd).ok()?;
            c.process_new_packets().ok()?;
        }
        let mut buf = [0u8; 64];
        if let Ok(n) = c.reader().read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        if got == b"pong" && !c.is_handshaking() {
            return c.handshake_kind();
        }
    }
    None
}

/// The human table: one row per profile, one column per mode.
pub fn table(runs: &[(SleepMode, Vec<ProfileResult>)]) -> String {
    let mut s = String::from("| devices | sleep |");
    for (mode, _) in runs {
        s.push_str(&format!(" {mode} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(runs.len()));
    s.push('\n');
    let Some((_, first)) = runs.first() else {
        return s;
    };
    for (i, p) in first.iter().enumerate() {
        s.push_str(&format!(
            "| {}% ({}) | {} |",
            p.percent,
            p.devices,
            short(p.sleep)
        ));
        for (_, results) in runs {
            match results.get(i) {
                Some(r) if r.failed > 0 => {
                    s.push_str(&format!(" {:.1}% ({} failed) |", r.resumed_pct(), r.failed))
                }
                Some(r) => s.push_str(&format!(" {:.1}% |", r.resumed_pct())),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_must_add_up_to_100() {
        let p = parse_profiles("89%:30m, 10%:3d,1%:60d").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].sleep, Duration::from_secs(3 * 86_400));
        assert_eq!(p[2].percent, 1.0);
        assert_eq!(p[2].to_string(), "1%:60d");
        assert_eq!(short(Duration::from_secs(25 * 3600)), "25h");
        let e = parse_profiles("90%:30m,10%:3d,1%:60d").unwrap_err();
        assert!(e.to_string().contains("101%"), "{e}");
        assert!(parse_profiles("100%").is_err());
        assert!(parse_profiles("100%:soon").is_err());
        assert!(parse_profiles("").is_err());
    }

    #[test]
    fn every_device_gets_exactly_one_profile() {
        let p = parse_profiles("89%:30m,10%:3d,1%:60d").unwrap();
        assert_eq!(apportion(&p, 1000), vec![890, 100, 10]);
        assert_eq!(apportion(&p, 7).iter().sum::<u64>(), 7);
    }
}
