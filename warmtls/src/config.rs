//! The endpoint's configuration: one struct, [`Config`], that both the TOML file
//! (serde) and the `serve` command line (clap) fill.
//!
//! Every setting has a TOML key and a flag of the same name (`stats_interval`,
//! `--stats-interval`; `[cache] slot_size`, `--cache-slot-size`) that parse the
//! same way, and a default that works on loopback, so `warmtls serve` with no
//! file runs. The defaults are written once, in the `#[arg]` attributes below:
//! `serve --help` shows them and [`Config::default`] is built from them. Layers:
//! the defaults, then the file, then the flags given on the command line
//! ([`Config::layered`]). Unknown keys are errors: a typo must not silently mean
//! "default".
//!
//! This module owns the names of things (groups, cipher suites, durations) and
//! what a valid configuration is; it never builds TLS or opens the cache.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use rustls::crypto::aws_lc_rs as provider;
use serde::{Deserialize, Serialize};

use crate::store::{StoreConfig, DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE};

/// The most 0-RTT bytes `early_data` may allow: what the backend outbox holds
/// while the backend connects, so early data never needs a second buffer.
pub const MAX_EARLY_DATA: u32 = crate::conn::PIPE_LIMIT as u32;

/// Where plaintext goes after TLS is terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: backend needs a socket path".into());
            }
            return Ok(Backend::Unix(PathBuf::from(p)));
        }
        use std::net::ToSocketAddrs;
        s.to_socket_addrs()
            .map_err(|e| format!("backend {s:?}: {e} (expected HOST:PORT or unix:PATH)"))?
            .next()
            .map(Backend::Tcp)
            .ok_or_else(|| format!("backend {s:?} resolves to no address"))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Tcp(a) => write!(f, "{a}"),
            Backend::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A duration as the TOML file and the command line both write it: a number
/// and a unit, `"10s"`, `"250ms"`, `"5m"`, `"7d"`, `"1h 30m"` (humantime). A
/// bare number is refused in both places, with the fix: is `10` seconds or
/// milliseconds?
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{t} has no unit: write \"{t}s\" for seconds (units: ms, s, m, h, d)"
        ));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{t:?} is not a duration ({e}); write e.g. \"10s\", \"5m\" or \"7d\""))
}

/// serde for [`Duration`] fields, through [`parse_duration`].
mod duration {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"10s\", \"5m\" or \"7d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `"x"` or `["x", "y"]`: one URL, or a list of seed nodes.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A key exchange group, by its configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum KxGroup {
    X25519,
    #[serde(alias = "p-256", alias = "p256")]
    #[value(alias = "p-256", alias = "p256")]
    Secp256r1,
    #[serde(alias = "p-384", alias = "p384")]
    #[value(alias = "p-384", alias = "p384")]
    Secp384r1,
    /// Post-quantum hybrid; ≈ +1.2 KB per full handshake.
    X25519mlkem768,
}

impl KxGroup {
    /// The rustls implementation.
    pub fn rustls(self) -> &'static dyn rustls::crypto::SupportedKxGroup {
        use provider::kx_group::*;
        match self {
            KxGroup::X25519 => X25519,
            KxGroup::Secp256r1 => SECP256R1,
            KxGroup::Secp384r1 => SECP384R1,
            KxGroup::X25519mlkem768 => X25519MLKEM768,
        }
    }
}

/// A cipher suite rustls offers, by its IANA name (`TLS13_AES_128_GCM_SHA256`).
#[derive(Clone, Copy, PartialEq)]
pub struct CipherSuite(pub rustls::SupportedCipherSuite);

impl CipherSuite {
    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.0.suite().as_str().unwrap_or("unnamed")
    }

    /// Every suite there is a name for, comma separated (for error messages).
    pub fn names() -> String {
        let names: Vec<&str> = provider::DEFAULT_CIPHER_SUITES
            .iter()
            .filter_map(|s| s.suite().as_str())
            .collect();
        names.join(", ")
    }
}

impl std::str::FromStr for CipherSuite {
    type Err = String;
    fn from_str(name: &str) -> Result<CipherSuite, String> {
        provider::DEFAULT_CIPHER_SUITES
            .iter()
            .find(|s| s.suite().as_str() == Some(name))
            .map(|s| CipherSuite(*s))
            .ok_or_else(|| {
                format!(
                    "unknown cipher suite {name:?} (known: {})",
                    CipherSuite::names()
                )
            })
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Debug for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for CipherSuite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for CipherSuite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CipherSuite, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What the backend speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// Bytes piped untouched, one backend connection per device connection.
    #[default]
    Tcp,
    /// HTTP/1.x: requests framed, X-Forwarded-For/-Proto added, backend
    /// connections kept alive and shared (one request at a time) by devices.
    Http,
}

/// How TLS 1.3 tickets are issued. Either way the session state stays in the store
/// and a ticket is single use; TLS 1.2 session IDs are the same in both.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Tls13Tickets {
    /// rustls' stateful tickets: a fixed 24 h lifetime (rustls clients drop them
    /// after a day); the only mode in which rustls accepts 0-RTT.
    #[default]
    Stateful,
    /// Tickets from the store's ticketer: up to 7 days (capped by
    /// session_lifetime and max_session_age), for devices that sleep longer
    /// than a day; rustls refuses 0-RTT with a ticketer.
    StoreTicketer,
}

/// Which event loop drives the workers. Both carry out the same connection
/// machine: TLS, the store, the backend pipe and the stats do not differ.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// io_uring where this process may set it up, else epoll (said once in the
    /// log, with the reason).
    #[default]
    Auto,
    /// io_uring or nothing: start-up fails, saying why, if it cannot be set up.
    #[serde(rename = "io_uring", alias = "io-uring")]
    #[value(name = "io_uring", alias = "io-uring")]
    IoUring,
    /// epoll readiness (works under container runtimes' default seccomp profiles).
    Epoll,
}

/// Clients that must not get a TLS 1.3 ticket, recognised by their ClientHello
/// (see `tls::hello_rule`): the first matching rule decides.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TicketRule {
    /// For logs and the stats file.
    pub name: String,
    /// The ClientHello's extensions begin with these types, in this order
    /// (IANA numbers: 45 psk_key_exchange_modes, 51 key_share, 43 supported_versions, ...).
    pub extensions_start: Vec<u16>,
    /// If set, the client's psk_key_exchange_modes, exactly and in order
    /// (0 psk_ke, 1 psk_dhe_ke).
    #[serde(default)]
    pub psk_modes: Option<Vec<u8>>,
    /// What a matching client is served.
    #[serde(default)]
    pub serves: RuleServes,
}

/// What a client matched by a [`TicketRule`] gets instead of TLS 1.3 tickets.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuleServes {
    /// TLS 1.2 when the client offers it (resumes by session ID, the cheapest
    /// reconnect), else TLS 1.3 without tickets.
    #[default]
    Tls12OrNoTickets,
    /// TLS 1.3 without tickets: connects every time, never resumes TLS 1.3.
    NoTls13Tickets,
}

impl TicketRule {
    /// wolfSSL's ClientHello whenever it offers TLS 1.3: psk_key_exchange_modes
    /// is the first extension, offering psk_ke then psk_dhe_ke. wolfSSL pushes
    /// each extension onto the front of its list and adds that one last, so it
    /// leads whatever the application set up (groups, key shares, SNI,
    /// max_fragment_length), full or resuming. Captured from Debian's wolfSSL
    /// 5.5.4 (tests/fixtures/hello/). The first extension alone is not enough:
    /// rustls (like browsers) shuffles its extensions, and one ClientHello in
    /// about eleven starts with psk_key_exchange_modes; none of them, nor
    /// OpenSSL or GnuTLS, offers psk_ke (GnuTLS offers psk_dhe_ke first).
    pub fn wolfssl_default() -> TicketRule {
        TicketRule {
            name: "wolfssl-8-byte-ticket-nonce".into(),
            extensions_start: vec![45],
            psk_modes: Some(vec![0, 1]),
            serves: RuleServes::Tls12OrNoTickets,
        }
    }
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The session cache file (`[cache]` in the file, `--cache-*` flags).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Args)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Session cache file (created on first start, 0600).
    #[arg(
        id = "cache.path",
        long = "cache",
        value_name = "PATH",
        default_value = "warmtls.cache"
    )]
    pub path: PathBuf,
    /// Sessions the cache file holds (fixed when the file is created; ≈ 151
    /// bytes of file per session at the default slot size).
    #[arg(id = "cache.capacity", long = "cache-capacity", value_name = "N", default_value_t = DEFAULT_CAPACITY)]
    pub capacity: u64,
    /// Bytes per slot: a multiple of 64 from 128 to 4096 (fixed when the file is
    /// created); 192 with --cache-key for TLS 1.2 or named devices.
    #[arg(id = "cache.slot_size", long = "cache-slot-size", value_name = "BYTES", default_value_t = DEFAULT_SLOT_SIZE)]
    pub slot_size: u32,
    /// Key file sealing cached session values at rest (32 bytes, 0600, kept
    /// apart from the cache; make one with `warmtls keygen`). Default: none.
    #[arg(id = "cache.key_file", long = "cache-key", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        defaults_from_args()
    }
}

/// How the shared session tier is laid out.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TierMode {
    /// One Redis/Valkey server (or a primary behind a fixed address): `url`
    /// names it.
    #[default]
    Standalone,
    /// A Redis Cluster: `url` lists seed nodes; keys are spread over its shards.
    Cluster,
}

/// The session tier several endpoints share (`[cluster]` in the file,
/// `--cluster-*` flags): off unless `url` is set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Args)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis/Valkey to share sessions through: `redis://[user:password@]host:port`
    /// (several, comma separated, as seed nodes with --cluster-mode cluster).
    /// Default: none (every endpoint on its own).
    #[arg(
        id = "cluster.url",
        long = "cluster-url",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// standalone (one server) or cluster (Redis Cluster seed nodes).
    #[arg(id = "cluster.mode", long = "cluster-mode", value_enum, default_value_t = TierMode::Standalone)]
    pub mode: TierMode,
    /// Prefix of every key this fleet writes (several fleets can share a
    /// server); no braces, so keys spread over a cluster's slots.
    #[arg(
        id = "cluster.key_prefix",
        long = "cluster-key-prefix",
        value_name = "PREFIX",
        default_value = "warmtls:"
    )]
    pub key_prefix: String,
    /// How long a connection whose session is not on this host waits for the
    /// tier before it goes on as a full handshake.
    #[arg(id = "cluster.lookup_timeout", long = "cluster-lookup-timeout", value_name = "DURATION", value_parser = parse_duration, default_value = "5ms")]
    #[serde(with = "duration")]
    pub lookup_timeout: Duration,
    /// Session writes waiting for the tier at most; beyond, writes are dropped
    /// (counted; the local copy stays).
    #[arg(
        id = "cluster.write_queue",
        long = "cluster-write-queue",
        value_name = "N",
        default_value_t = 65_536
    )]
    pub write_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        defaults_from_args()
    }
}

impl ClusterConfig {
    /// Whether a tier is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// Everything `warmtls serve` needs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (IP:PORT; port 0 picks one, printed when ready).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Backend the plaintext goes to: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub backend: String,
    /// Certificates; several (e.g. ECDSA + RSA) are chosen per client. Empty: a
    /// self-signed ECDSA P-256 certificate is made and kept beside the cache file.
    /// On the command line: one pair, `--cert` and `--key`.
    #[arg(skip)]
    pub certs: Vec<CertConfig>,
    #[command(flatten, next_help_heading = "Session cache")]
    pub cache: CacheConfig,
    #[command(flatten, next_help_heading = "Shared session tier (several endpoints)")]
    pub cluster: ClusterConfig,
    /// How long an unused session stays resumable.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "7d", help_heading = "Sessions")]
    #[serde(with = "duration")]
    pub session_lifetime: Duration,
    /// Cap on a chain of resumptions since its full handshake (RFC 8446 §4.6.1).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "90d", help_heading = "Sessions")]
    #[serde(with = "duration")]
    pub max_session_age: Duration,
    /// TLS 1.3 tickets: stateful (24 h, 0-RTT possible) or store-ticketer (7 days, no 0-RTT).
    #[arg(long, value_enum, default_value_t = Tls13Tickets::Stateful, help_heading = "Sessions")]
    pub tls13_tickets: Tls13Tickets,
    /// TLS 1.3 tickets issued per handshake (at most 8; a second one is an orphan in the store).
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Sessions")]
    pub tickets_per_handshake: usize,
    /// TLS 1.3 0-RTT: the most early-data bytes accepted from a resuming device
    /// (0 = off). Only for requests the backend may see from a client whose
    /// handshake then fails: the request is not covered by the client's Finished.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 0,
        help_heading = "Sessions"
    )]
    pub early_data: u32,
    /// How many times a TLS 1.3 ticket whose connection died before the
    /// replacement ticket reached the device is made resumable again (1-RTT,
    /// never 0-RTT); 0 = strict single use (a dropped connection costs the
    /// device its session). At most 3.
    #[arg(long, value_name = "N", default_value_t = crate::store::DEFAULT_TICKET_RESTORES, help_heading = "Sessions")]
    pub ticket_restores: u8,
    /// Key exchange groups in preference order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [KxGroup::X25519, KxGroup::Secp256r1], help_heading = "TLS")]
    pub groups: Vec<KxGroup>,
    /// Cipher suites in preference order, by IANA name (e.g.
    /// TLS13_AES_128_GCM_SHA256). Default: every suite, AES-128-GCM/SHA-256 first.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        help_heading = "TLS"
    )]
    pub cipher_suites: Vec<CipherSuite>,
    /// Worker threads, one ring and listener each (0 = one per core).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Connections"
    )]
    pub workers: usize,
    /// Open client connections, all workers together.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8_192,
        help_heading = "Connections"
    )]
    pub max_connections: usize,
    /// Time a client has to complete its handshake.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", help_heading = "Connections")]
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Idle time between bytes once piping.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s", help_heading = "Connections")]
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Time the backend has to accept a connection.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "3s", help_heading = "Connections")]
    #[serde(with = "duration")]
    pub backend_connect_timeout: Duration,
    /// How long SIGTERM/SIGINT waits for open connections.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s", help_heading = "Connections")]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Send a PROXY protocol v2 header to the backend before the plaintext: the
    /// device's address, SNI, TLS version and suite, resumed and 0-RTT flags.
    #[arg(long, help_heading = "Connections")]
    pub proxy_protocol: bool,
    /// Event loop: auto (io_uring, else epoll with a log line saying why),
    /// io_uring (fail if unavailable) or epoll.
    #[arg(long, value_enum, default_value_t = Runtime::Auto, help_heading = "Connections")]
    pub runtime: Runtime,
    /// What the backend speaks: tcp (bytes piped untouched) or http (HTTP/1.x
    /// framed, X-Forwarded-For added, kept-alive backend connections pooled).
    #[arg(long, value_enum, default_value_t = BackendProtocol::Tcp, help_heading = "HTTP backends")]
    pub backend_protocol: BackendProtocol,
    /// http: idle kept-alive backend connections each worker keeps (0 = none:
    /// a new backend connection per request).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        help_heading = "HTTP backends"
    )]
    pub backend_pool: usize,
    /// http: how long an idle backend connection is kept; keep it below the
    /// backend's own keep-alive timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "4s", help_heading = "HTTP backends")]
    #[serde(with = "duration")]
    pub backend_idle_timeout: Duration,
    /// http: add `X-TLS-Resumed: 1|0` (whether the device resumed its TLS
    /// session) to each request.
    #[arg(long, help_heading = "HTTP backends")]
    pub http_resumed_header: bool,
    /// TCP Fast Open queue length per listener (0 = off); the kernel also needs
    /// bit 0x2 in `sysctl net.ipv4.tcp_fastopen`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        help_heading = "Connections"
    )]
    pub tcp_fastopen: u32,
    /// How often the cache file is fdatasync'ed (bounds what a power cut loses).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", help_heading = "Operations")]
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// How often a stats line is logged (and --stats-file written).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", help_heading = "Operations")]
    #[serde(with = "duration")]
    pub stats_interval: Duration,
    /// Write the counters as JSON to this file every stats interval and at exit.
    /// Default: none.
    #[arg(long, value_name = "FILE", help_heading = "Operations")]
    pub stats_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: keep it on
    /// loopback or a management network; never the TLS address). Default: off.
    #[arg(long, value_name = "ADDR", help_heading = "Operations")]
    pub metrics_listen: Option<String>,
    /// The running instance's control socket (mode 0600): `warmtls upgrade`
    /// asks it for a hand-over, and a second `warmtls serve` on the same cache
    /// finds it and refuses to start. Default: the cache path plus `.ctl`.
    #[arg(long, value_name = "PATH", help_heading = "Operations")]
    pub control_socket: Option<PathBuf>,
    /// Clients recognised by their ClientHello that get no TLS 1.3 ticket
    /// (default: wolfSSL, which fails on rustls' 32-byte ticket nonce). `[]`:
    /// none. Only in the file (`[[ticket_rules]]`).
    #[arg(skip = vec![TicketRule::wolfssl_default()])]
    pub ticket_rules: Vec<TicketRule>,
    /// The most plaintext bytes in one record sent (512 to 16384). rustls
    /// ignores a client's max_fragment_length and record_size_limit; this caps
    /// every record for every client. Default: none (16384).
    #[arg(long, value_name = "BYTES", help_heading = "TLS")]
    pub max_record_size: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        defaults_from_args()
    }
}

/// `T` as its flags' defaults make it: the one place defaults are written is
/// the `#[arg]` attributes, which `--help` shows.
fn defaults_from_args<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("the defaults in the #[arg] attributes parse")
}

/// A configuration that could not be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {io}")]
    Read { path: PathBuf, io: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Cache(crate::store::StoreError),
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|io| ConfigError::Read {
            path: path.into(),
            io,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The configuration `serve` runs with: the settings of `file` (or the
    /// defaults), then each setting whose flag `matches` saw on the command line,
    /// with its value from `flags` (what clap parsed from the same matches).
    pub fn layered(
        file: Option<&Path>,
        flags: &Config,
        matches: &ArgMatches,
    ) -> Result<Config, ConfigError> {
        let base = match file {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        let given: Vec<String> = Config::flags()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| {
                matches!(
                    matches.value_source(id),
                    Some(clap::parser::ValueSource::CommandLine)
                )
            })
            .collect();
        if given.is_empty() {
            return Ok(base);
        }
        let as_table = |c: &Config| {
            toml::Table::try_from(c).map_err(|e| ConfigError::Invalid {
                field: "command line",
                message: e.to_string(),
            })
        };
        let mut table = as_table(&base)?;
        let from_flags = as_table(flags)?;
        for id in &given {
            let path: Vec<&str> = id.split('.').collect();
            let Some(value) = lookup(&from_flags, &path) else {
                continue;
            };
            insert(&mut table, &path, value.clone());
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                field: "command line",
                message: e.to_string(),
            })
    }

    /// The settings' flags, as `serve` has them (for `--help` and layering).
    pub fn flags() -> clap::Command {
        Config::augment_args(clap::Command::new("serve"))
    }

    /// Where the control socket is: `control_socket`, else `<cache path>.ctl`.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| {
            let mut p = self.cache.path.as_os_str().to_owned();
            p.push(".ctl");
            p.into()
        })
    }

    /// Check everything that can be checked without serving; `warmtls check`
    /// and `warmtls serve` both run this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        if self.listen_addr().is_err() {
            return invalid(
                "listen",
                format!("{:?} is not an IP:PORT address", self.listen),
            );
        }
        if let Err(m) = self.backend_addr() {
            return invalid("backend", m);
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1".into());
        }
        if self.tickets_per_handshake > 8 {
            return invalid("tickets_per_handshake", "at most 8".into());
        }
        if self.early_data > 0 && self.tls13_tickets == Tls13Tickets::StoreTicketer {
            return invalid(
                "early_data",
                "0-RTT needs tls13_tickets = \"stateful\": rustls refuses early data with a \
                 ticketer (its replay protection is the store's single-use take of a stateful \
                 ticket); choose one"
                    .into(),
            );
        }
        if self.ticket_restores > 3 {
            return invalid("ticket_restores", "at most 3".into());
        }
        if self.backend_protocol == BackendProtocol::Http && self.proxy_protocol {
            return invalid(
                "proxy_protocol",
                "backend_protocol = \"http\" shares backend connections between devices, so a \
                 PROXY header (one per connection) cannot describe the device: the device's \
                 address goes in X-Forwarded-For instead; choose one"
                    .into(),
            );
        }
        if self.early_data > MAX_EARLY_DATA {
            return invalid(
                "early_data",
                format!(
                    "{} bytes is more than the {MAX_EARLY_DATA} one receive buffer holds",
                    self.early_data
                ),
            );
        }
        for (field, d) in [
            ("session_lifetime", self.session_lifetime),
            ("max_session_age", self.max_session_age),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("backend_connect_timeout", self.backend_connect_timeout),
            ("backend_idle_timeout", self.backend_idle_timeout),
        ] {
            if d.is_zero() {
                return invalid(field, "must be longer than 0".into());
            }
        }
        for (field, d) in [
            ("flush_interval", self.flush_interval),
            ("stats_interval", self.stats_interval),
        ] {
            if d < Duration::from_secs(1) {
                return invalid(
                    field,
                    format!(
                        "{} is too short: at least 1s",
                        humantime::format_duration(d)
                    ),
                );
            }
        }
        if self.cluster.enabled() {
            self.validate_cluster()?;
        }
        if let Some(m) = &self.metrics_listen {
            let Ok(addr) = m.parse::<SocketAddr>() else {
                return invalid(
                    "metrics_listen",
                    format!("{m:?} is not an IP:PORT address (e.g. \"127.0.0.1:9443\")"),
                );
            };
            if let Ok(tls) = self.listen_addr() {
                let overlap = addr.ip() == tls.ip()
                    || addr.ip().is_unspecified()
                    || tls.ip().is_unspecified();
                if addr.port() == tls.port() && addr.port() != 0 && overlap {
                    return invalid(
                        "metrics_listen",
                        format!(
                            "{m} is the TLS listener's address ({}): the metrics page is plain \
                             HTTP, give it a port of its own",
                            self.listen
                        ),
                    );
                }
            }
        }
        self.store_config().validate().map_err(ConfigError::Cache)?;
        if let Some(n) = self.max_record_size {
            if !(512..=16_384).contains(&n) {
                return invalid(
                    "max_record_size",
                    format!("{n} is outside 512 to 16384 bytes"),
                );
            }
        }
        for r in &self.ticket_rules {
            if r.extensions_start.is_empty() || r.extensions_start.len() > 8 {
                return invalid(
                    "ticket_rules",
                    format!(
                        "rule {:?}: extensions_start needs 1 to 8 extension types, has {}",
                        r.name,
                        r.extensions_start.len()
                    ),
                );
            }
        }
        if self.groups.is_empty() {
            return invalid("groups", "at least one key exchange group is needed".into());
        }
        for c in &self.certs {
            for p in [&c.cert, &c.key] {
                if !p.exists() {
                    return invalid("certs", format!("{} does not exist", p.display()));
                }
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        let c = &self.cluster;
        for u in &c.url {
            if !(u.starts_with("redis://") || u.starts_with("valkey://")) {
                return invalid(
                    "cluster.url",
                    format!("{u:?} is not a redis://host:port URL (TLS to the tier, rediss://, is not built in: see the README's \"Several endpoints\")"),
                );
            }
        }
        if c.mode == TierMode::Standalone && c.url.len() > 1 {
            return invalid(
                "cluster.url",
                "several URLs are the seed nodes of a Redis Cluster: add mode = \"cluster\" \
                 (--cluster-mode cluster), or give one URL"
                    .into(),
            );
        }
        if c.key_prefix.contains(['{', '}']) {
            return invalid(
                "cluster.key_prefix",
                format!(
                    "{:?} has a brace: Redis Cluster would hash only the part between braces \
                     and put every session on one shard",
                    c.key_prefix
                ),
            );
        }
        if c.lookup_timeout.is_zero() || c.lookup_timeout > Duration::from_secs(1) {
            return invalid(
                "cluster.lookup_timeout",
                "between 1ms and 1s: a connection waits that long for the tier at most".into(),
            );
        }
        if c.write_queue == 0 {
            return invalid("cluster.write_queue", "must be at least 1".into());
        }
        if self.early_data > crate::tier::MAX_EARLY_DATA_WITH_TIER {
            return invalid(
                "early_data",
                format!(
                    "at most {} with a shared tier: a 0-RTT request the tier cannot vouch for is \
                     refused, and rustls skips at most that many refused early bytes",
                    crate::tier::MAX_EARLY_DATA_WITH_TIER
                ),
            );
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.parse()
    }

    /// The metrics listener's address, if one is configured (validated).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.as_ref()?.parse().ok()
    }

    pub fn backend_addr(&self) -> Result<Backend, String> {
        self.backend.parse()
    }

    /// The cache file's location and shape, as the store takes it.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            path: self.cache.path.clone(),
            capacity: self.cache.capacity,
            slot_size: self.cache.slot_size,
        }
    }

    /// Worker count, resolving 0 to the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

fn lookup<'t>(table: &'t toml::Table, path: &[&str]) -> Option<&'t toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)
}

fn insert(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        t = next;
    }
    t.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Flags {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Config,
    }

    /// `serve`'s layering, as cli.rs does it.
    fn layered(args: &[&str]) -> Result<Config, ConfigError> {
        let matches = Flags::command()
            .try_get_matches_from(std::iter::once("warmtls").chain(args.iter().copied()))
            .map_err(|e| ConfigError::Invalid {
                field: "command line",
                message: e.to_string(),
            })?;
        let f = Flags::from_arg_matches(&matches).unwrap();
        Config::layered(f.config.as_deref(), &f.settings, &matches)
    }

    #[test]
    fn defaults_work_on_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen_addr().unwrap().to_string(), "127.0.0.1:8443");
        assert_eq!(
            c.backend_addr().unwrap(),
            Backend::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(c.max_session_age, crate::store::DEFAULT_MAX_SESSION_AGE);
        assert_eq!(c.session_lifetime, Duration::from_secs(7 * 86_400));
        assert_eq!(c.groups, [KxGroup::X25519, KxGroup::Secp256r1]);
        assert_eq!(c.cache.capacity, DEFAULT_CAPACITY);
        assert_eq!(
            Config::from_toml("").unwrap(),
            c,
            "an empty file is the defaults"
        );
        assert_eq!(layered(&[]).unwrap(), c, "no flags are the defaults");
    }

    #[test]
    fn runtime_and_metrics_listener_parse_alike_in_file_and_flags() {
        let c = Config::from_toml("runtime = \"io_uring\"\nmetrics_listen = \"127.0.0.1:9443\"\n")
            .unwrap();
        assert_eq!(c.runtime, Runtime::IoUring);
        assert_eq!(c.metrics_addr(), Some("127.0.0.1:9443".parse().unwrap()));
        c.validate().unwrap();
        assert_eq!(Config::default().runtime, Runtime::Auto);
        assert_eq!(Config::default().metrics_listen, None);
        let c = layered(&["--runtime", "epoll", "--metrics-listen", "[::1]:9443"]).unwrap();
        assert_eq!(c.runtime, Runtime::Epoll);
        c.validate().unwrap();
        let c = layered(&["--runtime", "io_uring"]).unwrap();
        assert_eq!(c.runtime, Runtime::IoUring);
    }

    #[test]
    fn metrics_are_never_served_on_the_tls_address() {
        for (listen, metrics) in [
            ("127.0.0.1:8443", "127.0.0.1:8443"),
            ("0.0.0.0:443", "127.0.0.1:443"),
            ("127.0.0.1:443", "0.0.0.0:443"),
        ] {
            let c = layered(&["--listen", listen, "--metrics-listen", metrics]).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("metrics_listen") && e.contains("port of its own"),
                "{e}"
            );
        }
        let c = layered(&["--metrics-listen", "localhost:9443"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("not an IP:PORT"), "{e}");
        let c = layered(&[
            "--listen",
            "127.0.0.1:443",
            "--metrics-listen",
            "127.0.0.2:443",
        ]);
        c.unwrap().validate().unwrap();
    }

    #[test]
    fn toml_with_durations_parses() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:443\"\nbackend = \"unix:/run/app.sock\"\nsession_lifetime = \"90d\"\n[cache]\npath = \"/var/lib/warmtls/cache\"\ncapacity = 2000000\n",
        )
        .unwrap();
        assert_eq!(c.session_lifetime, Duration::from_secs(90 * 86_400));
        assert_eq!(
            c.backend_addr().unwrap(),
            Backend::Unix("/run/app.sock".into())
        );
        assert_eq!(c.cache.capacity, 2_000_000);
        assert_eq!(c.cache.slot_size, 128);
        assert_eq!(c.tls13_tickets, Tls13Tickets::Stateful);
        let c = Config::from_toml("tls13_tickets = \"store-ticketer\"").unwrap();
        assert_eq!(c.tls13_tickets, Tls13Tickets::StoreTicketer);
        assert!(Config::from_toml("tls13_tickets = \"stateless\"")
            .unwrap_err()
            .contains("store-ticketer"));
    }

    #[test]
    fn every_duration_reads_the_same_in_the_file_and_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let fields = [
            "session_lifetime",
            "max_session_age",
            "handshake_timeout",
            "idle_timeout",
            "backend_connect_timeout",
            "drain_timeout",
            "flush_interval",
            "stats_interval",
        ];
        for field in fields {
            let flag = format!("--{}", field.replace('_', "-"));
            for (text, want) in [
                ("10s", Duration::from_secs(10)),
                ("1500ms", Duration::from_millis(1500)),
                ("5m", Duration::from_secs(300)),
                ("1h 30m", Duration::from_secs(5400)),
                ("7d", Duration::from_secs(7 * 86_400)),
            ] {
                let file = dir.path().join("c.toml");
                std::fs::write(&file, format!("{field} = \"{text}\"\n")).unwrap();
                let from_file = layered(&["--config", file.to_str().unwrap()]).unwrap();
                let from_flag = layered(&[&flag, text]).unwrap();
                assert_eq!(from_file, from_flag, "{field} = {text:?}");
                let t = toml::Table::try_from(&from_flag).unwrap();
                assert_eq!(
                    parse_duration(t[field].as_str().unwrap()).unwrap(),
                    want,
                    "{field} = {text:?}"
                );
            }
            // A bare number is refused in both places, with the fix.
            let e = Config::from_toml(&format!("{field} = 10")).unwrap_err();
            assert!(e.contains("write \"10s\""), "{field}: {e}");
            let e = layered(&[&flag, "10"]).unwrap_err().to_string();
            assert!(e.contains("write \"10s\""), "{flag}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_only_the_flags_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9443\"\nworkers = 3\nproxy_protocol = true\nstats_interval = \"30s\"\n\
             groups = [\"secp256r1\"]\n[cache]\ncapacity = 5000\nslot_size = 192\n",
        )
        .unwrap();
        let c = layered(&[
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "2",
            "--cache-slot-size",
            "256",
            "--cache",
            "/tmp/x.cache",
            "--groups",
            "x25519,p-256",
        ])
        .unwrap();
        assert_eq!(c.workers, 2, "flag over file");
        assert_eq!(c.cache.slot_size, 256, "flag over file, nested");
        assert_eq!(c.cache.path, PathBuf::from("/tmp/x.cache"));
        assert_eq!(c.groups, [KxGroup::X25519, KxGroup::Secp256r1]);
        assert_eq!(c.listen, "127.0.0.1:9443", "file over default");
        assert_eq!(c.cache.capacity, 5000, "file over default, nested");
        assert!(c.proxy_protocol);
        assert_eq!(c.stats_interval, Duration::from_secs(30));
        assert_eq!(c.max_connections, 8_192, "default");
    }

    #[test]
    fn every_setting_has_a_flag_and_serve_help_shows_every_default() {
        let mut cmd = Config::flags();
        let table = toml::Table::try_from(Config::default()).unwrap();
        let mut keys: Vec<String> = Vec::new();
        for (k, v) in &table {
            match v.as_table() {
                Some(t) => keys.extend(t.keys().map(|k2| format!("{k}.{k2}"))),
                // --cert/--key: serve's own pair of flags; ticket rules are
                // structured, in the file only.
                None if k != "certs" && k != "ticket_rules" => keys.push(k.clone()),
                None => {}
            }
        }
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for k in &keys {
            assert!(ids.contains(k), "setting {k} has no flag");
        }
        for a in cmd.get_arguments() {
            let says_default = a
                .get_long_help()
                .or(a.get_help())
                .is_some_and(|h| h.to_string().contains("Default: "));
            let switch = !a.get_action().takes_values();
            assert!(
                !a.get_default_values().is_empty() || says_default || switch,
                "--{} shows no default",
                a.get_long().unwrap_or_default()
            );
        }
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("[default: 10s]"), "{help}");
        assert!(help.contains("[default: x25519 secp256r1]"), "{help}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::from_toml("lisen = \"x\"")
            .unwrap_err()
            .contains("lisen"));
        assert!(Config::from_toml("groups = [\"x448\"]")
            .unwrap_err()
            .contains("x448"));
        let c = Config {
            listen: "nope".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let e = Config::from_toml("cipher_suites = [\"TLS13_AES_128_CCM_SHA256\"]").unwrap_err();
        assert!(
            e.contains("TLS13_AES_128_CCM_SHA256") && e.contains("TLS13_AES_128_GCM_SHA256"),
            "{e}"
        );
        let c = Config {
            early_data: 1024,
            tls13_tickets: Tls13Tickets::StoreTicketer,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("stateful"));
        let c = Config {
            early_data: MAX_EARLY_DATA + 1,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("early_data"));
        let c = Config {
            ticket_restores: 4,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ticket_restores"));
        assert_eq!(
            Config::default().ticket_restores,
            crate::store::DEFAULT_TICKET_RESTORES
        );
        let c = Config {
            stats_interval: Duration::from_millis(10),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stats_interval"));
    }

    #[test]
    fn a_capacity_the_store_refuses_is_refused_by_validate() {
        let mut c = Config::default();
        c.cache.capacity = 1 << 40;
        let e = c.validate().unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert!(chain.contains("capacity"), "{chain}");
        c.cache.capacity = 0;
        assert!(c.validate().is_err());
        c.cache.capacity = 1000;
        c.cache.slot_size = 100;
        assert!(c.validate().is_err());
    }

    #[test]
    fn ticket_rules_default_to_wolfssl_and_can_be_replaced_or_emptied() {
        assert_eq!(
            Config::default().ticket_rules,
            vec![TicketRule::wolfssl_default()]
        );
        assert!(Config::from_toml("ticket_rules = []")
            .unwrap()
            .ticket_rules
            .is_empty());
        let c = Config::from_toml(
            "[[ticket_rules]]\nname = \"my-wolfssl\"\nextensions_start = [45, 43]\nserves = \"no-tls13-tickets\"\n",
        )
        .unwrap();
        assert_eq!(c.ticket_rules.len(), 1);
        assert_eq!(c.ticket_rules[0].extensions_start, vec![45, 43]);
        assert_eq!(c.ticket_rules[0].psk_modes, None);
        assert_eq!(c.ticket_rules[0].serves, RuleServes::NoTls13Tickets);
        c.validate().unwrap();
        assert!(Config::from_toml(
            "[[ticket_rules]]\nname = \"x\"\nextensions_start = [45]\nserves = \"tls12\"\n"
        )
        .unwrap_err()
        .contains("tls12-or-no-tickets"));
        let mut c = Config::default();
        c.ticket_rules[0].extensions_start.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("extensions_start"), "{e}");
    }

    #[test]
    fn max_record_size_is_bounded() {
        let c = Config::from_toml("max_record_size = 4096").unwrap();
        assert_eq!(c.max_record_size, Some(4096));
        c.validate().unwrap();
        for bad in [100, 20_000] {
            let c = Config {
                max_record_size: Some(bad),
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("max_record_size"), "{e}");
        }
    }
}
