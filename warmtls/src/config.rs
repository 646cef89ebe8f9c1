//! The endpoint's configuration: a TOML file, then command-line overrides.
//!
//! Every field has a default that works on loopback, so `warmtls serve` with no
//! file runs. Unknown keys are errors: a typo must not silently mean "default".
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE};

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

/// The session cache file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub path: PathBuf,
    pub capacity: u64,
    pub slot_size: u32,
    /// Key file (32 bytes, 0600, kept apart from the cache) sealing values at rest.
    pub key_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            path: PathBuf::from("warmtls.cache"),
            capacity: DEFAULT_CAPACITY,
            slot_size: DEFAULT_SLOT_SIZE,
            key_file: None,
        }
    }
}

/// How TLS 1.3 tickets are issued. Either way the session state stays in the store
/// and a ticket is single use; TLS 1.2 session IDs are the same in both.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Tls13Tickets {
    /// rustls' stateful tickets: a fixed 24 h lifetime (rustls clients drop them
    /// after a day); the only mode in which rustls accepts 0-RTT.
    #[default]
    Stateful,
    /// Tickets from [`crate::store::StoreTicketer`]: up to 7 days (capped by
    /// `session_lifetime` and `max_session_age`), for devices that sleep longer
    /// than a day; rustls refuses 0-RTT with a ticketer.
    StoreTicketer,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `warmtls serve` needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub backend: String,
    /// Certificates; several (e.g. ECDSA + RSA) are chosen per client. Empty: a
    /// self-signed ECDSA P-256 certificate is made and kept beside the cache file.
    pub certs: Vec<CertConfig>,
    pub cache: CacheConfig,
    /// How long an unused session stays resumable.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Cap on a chain of resumptions since its full handshake (RFC 8446 §4.6.1).
    #[serde(with = "humantime_serde")]
    pub max_session_age: Duration,
    /// Worker threads (one ring and listener each); 0 = one per core.
    pub workers: usize,
    /// Open client connections, all workers together.
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backend_connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    pub tickets_per_handshake: usize,
    /// TLS 1.3 0-RTT: the most early-data bytes accepted from a resuming client
    /// (0 = off). Accepted early data goes to the backend before the handshake
    /// completes, and the backend's answer goes out as 0.5-RTT data. Replays are
    /// refused by the store's single-use tickets, but the request itself is not
    /// protected by the client's Finished: only turn this on for requests the
    /// backend may safely see from a client whose handshake then fails.
    pub early_data: u32,
    /// Cipher suites in the server's order of preference, by IANA name (e.g.
    /// "TLS13_AES_128_GCM_SHA256"). Empty: every suite rustls has, cheapest
    /// first (AES-128-GCM/SHA-256 before AES-256-GCM/SHA-384 and ChaCha20).
    pub cipher_suites: Vec<String>,
    /// Send a PROXY protocol v2 header to the backend before the plaintext: the
    /// device's address, SNI, TLS version and suite, resumed and 0-RTT flags.
    pub proxy_protocol: bool,
    /// `"stateful"` (24 h, 0-RTT possible) or `"store-ticketer"` (7 days, no 0-RTT).
    pub tls13_tickets: Tls13Tickets,
    /// Key exchange groups in preference order: x25519, secp256r1, secp384r1, x25519mlkem768.
    pub groups: Vec<String>,
    /// Write counters as JSON here every stats interval and at exit.
    pub stats_file: Option<PathBuf>,
    /// TCP Fast Open queue length per listener (pending SYNs with data); 0 = off.
    /// The kernel also needs bit 0x2 in `sysctl net.ipv4.tcp_fastopen`.
    pub tcp_fastopen: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8443".into(),
            backend: "127.0.0.1:8080".into(),
            certs: Vec::new(),
            cache: CacheConfig::default(),
            session_lifetime: Duration::from_secs(7 * 86_400),
            max_session_age: crate::store::DEFAULT_MAX_SESSION_AGE,
            workers: 0,
            max_connections: 8_192,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            backend_connect_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_secs(10),
            stats_interval: Duration::from_secs(10),
            tickets_per_handshake: 1,
            early_data: 0,
            cipher_suites: Vec::new(),
            proxy_protocol: false,
            tls13_tickets: Tls13Tickets::Stateful,
            groups: vec!["x25519".into(), "secp256r1".into()],
            stats_file: None,
            tcp_fastopen: 256,
        }
    }
}

/// A configuration that could not be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
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

    /// Check everything that can be checked without serving.
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
        if self.early_data > MAX_EARLY_DATA {
            return invalid(
                "early_data",
                format!(
                    "{} bytes is more than the {MAX_EARLY_DATA} one receive buffer holds",
                    self.early_data
                ),
            );
        }
        if !crate::store::Geometry::slot_size_is_valid(self.cache.slot_size) {
            return invalid(
                "cache.slot_size",
                format!(
                    "{} must be a multiple of 64 from 128 to 4096",
                    self.cache.slot_size
                ),
            );
        }
        if self.cache.capacity == 0 {
            return invalid("cache.capacity", "must be at least 1".into());
        }
        for g in &self.groups {
            if crate::tls::group_by_name(g).is_none() {
                return invalid(
                    "groups",
                    format!(
                        "unknown group {g:?} (known: x25519, secp256r1, secp384r1, x25519mlkem768)"
                    ),
                );
            }
        }
        for c in &self.cipher_suites {
            if crate::tls::suite_by_name(c).is_none() {
                return invalid(
                    "cipher_suites",
                    format!(
                        "unknown cipher suite {c:?} (known: {})",
                        crate::tls::suite_names()
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

    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.parse()
    }

    pub fn backend_addr(&self) -> Result<Backend, String> {
        self.backend.parse()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen_addr().unwrap().to_string(), "127.0.0.1:8443");
        assert_eq!(
            c.backend_addr().unwrap(),
            Backend::Tcp("127.0.0.1:8080".parse().unwrap())
        );
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
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::from_toml("lisen = \"x\"")
            .unwrap_err()
            .contains("lisen"));
        let c = Config {
            groups: vec!["x448".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("x448"));
        let c = Config {
            listen: "nope".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            cipher_suites: vec!["TLS13_AES_128_CCM_SHA256".into()],
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
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
    }
}
