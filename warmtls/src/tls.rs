//! Building the rustls `ServerConfig`: certificates (reloadable, chosen per client),
//! key exchange groups, cipher preference, tickets and the persistent session store.
//!
//! Cheapest defaults for devices: X25519 first (P-256 also on, many embedded
//! stacks only do P-256), TLS13_AES_128_GCM_SHA256 preferred (SHA-384 key
//! derivation is ~36% of a TLS 1.3 resumption's CPU), one ticket per handshake
//! (a second one would be an orphan in the store), stateful tickets unless
//! `tls13_tickets = "store-ticketer"` (7-day tickets, no 0-RTT).
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertConfig, Config, Tls13Tickets};
use crate::store::{SessionCache, SessionMirror, SessionStore, StoreTicketer};

pub mod hello_rule;
use hello_rule::{HelloRules, TicketPolicy};

/// Why certificates or the TLS configuration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("cannot write {path}: {io}")]
    Write { path: PathBuf, io: std::io::Error },
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
}

/// Not `#[from]`: that would make rustls' error both part of the message and its
/// `source()`, and a chain printer would say it twice.
impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e)
    }
}

/// Every cipher suite rustls has, AES-128-GCM/SHA-256 first: the cheapest for
/// a device and for us (SHA-384 key derivation is ~36% of a TLS 1.3
/// resumption's CPU).
fn cheapest_first() -> Vec<rustls::SupportedCipherSuite> {
    let mut suites = provider::DEFAULT_CIPHER_SUITES.to_vec();
    suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    });
    suites
}

/// Load one certificate chain and key from PEM files.
pub fn load_certified_key(c: &CertConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| TlsError::Cert {
            path: c.cert.clone(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: c.cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: c.cert.clone(),
            message: "no CERTIFICATE block in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| TlsError::Key {
        path: c.key.clone(),
        message: e.to_string(),
    })?;
    let signing = provider::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: c.key.clone(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| TlsError::Key {
        path: c.key.clone(),
        message: format!("does not match the certificate: {e}"),
    })?;
    Ok(Arc::new(ck))
}

/// Where the self-signed certificate for a cache file lives.
pub fn self_signed_paths(cache: &Path) -> CertConfig {
    let mut cert = cache.as_os_str().to_owned();
    cert.push(".cert.pem");
    let mut key = cache.as_os_str().to_owned();
    key.push(".key.pem");
    CertConfig {
        cert: cert.into(),
        key: key.into(),
    }
}

/// The self-signed ECDSA P-256 certificate kept beside the cache file, so that
/// restarts present the same certificate: its paths, and a new certificate to
/// write there if there is none yet (made in memory: nothing is written until
/// [`NewSelfSigned::write`], so a start that fails first leaves no files).
pub fn self_signed(cache: &Path) -> Result<(CertConfig, Option<NewSelfSigned>), TlsError> {
    let paths = self_signed_paths(cache);
    if paths.cert.exists() && paths.key.exists() {
        return Ok((paths, None));
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let new = NewSelfSigned {
        paths: paths.clone(),
        key_pem: ck.signing_key.serialize_pem(),
        cert_pem: ck.cert.pem(),
    };
    Ok((paths, Some(new)))
}

/// A self-signed certificate made in memory, not yet on disk.
#[derive(Debug)]
pub struct NewSelfSigned {
    paths: CertConfig,
    key_pem: String,
    cert_pem: String,
}

impl NewSelfSigned {
    /// Its certificate and key, as rustls uses them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        let signing = provider::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    /// The paths it is written to.
    pub fn paths(&self) -> &CertConfig {
        &self.paths
    }

    /// Write key and certificate beside the cache file (mode 0600).
    pub fn write(&self) -> Result<(), TlsError> {
        write_private(&self.paths.key, self.key_pem.as_bytes())?;
        write_private(&self.paths.cert, self.cert_pem.as_bytes())?;
        tracing::info!(cert = %self.paths.cert.display(), "generated a self-signed ECDSA P-256 certificate");
        Ok(())
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |io| TlsError::Write {
        path: path.to_path_buf(),
        io,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The server's certificates, replaceable at run time (SIGHUP) without dropping
/// connections; picks per client the first one it can sign for.
#[derive(Debug)]
pub struct CertResolver {
    keys: RwLock<Vec<Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(keys: Vec<Arc<CertifiedKey>>) -> CertResolver {
        CertResolver {
            keys: RwLock::new(keys),
        }
    }

    /// Swap in a new set of certificates.
    pub fn replace(&self, keys: Vec<Arc<CertifiedKey>>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let offered = hello.signature_schemes();
        keys.iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| keys.first())
            .cloned()
    }
}

/// Load the configured certificates (or the self-signed one, made and written
/// if there is none).
pub fn load_certs(cfg: &Config) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    let (keys, new) = prepare_certs(cfg)?;
    if let Some(new) = new {
        new.write()?;
    }
    Ok(keys)
}

/// Load the configured certificates, or the self-signed one; a self-signed
/// certificate that does not exist yet is made in memory and returned to be
/// written once everything that can be checked alone has been (the caller
/// removes it again if a later step fails).
pub fn prepare_certs(
    cfg: &Config,
) -> Result<(Vec<Arc<CertifiedKey>>, Option<NewSelfSigned>), TlsError> {
    if cfg.certs.is_empty() {
        let (paths, new) = self_signed(&cfg.cache.path)?;
        return match new {
            Some(new) => Ok((vec![new.certified_key()?], Some(new))),
            None => Ok((vec![load_certified_key(&paths)?], None)),
        };
    }
    let keys = cfg
        .certs
        .iter()
        .map(load_certified_key)
        .collect::<Result<_, _>>()?;
    Ok((keys, None))
}

/// The rustls server configuration for `cfg`, storing sessions in `store`.
pub fn server_config(
    cfg: &Config,
    resolver: Arc<CertResolver>,
    store: Arc<SessionStore>,
    session_lifetime: Duration,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_time(
        cfg,
        resolver,
        store,
        session_lifetime,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
}

/// As [`server_config`], with rustls' notion of time from `time` (simulations
/// that move the store's clock by months move rustls' with it).
pub fn server_config_with_time(
    cfg: &Config,
    resolver: Arc<CertResolver>,
    store: Arc<SessionStore>,
    session_lifetime: Duration,
    time: Arc<dyn rustls::time_provider::TimeProvider>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cache = session_cache(cfg, store, session_lifetime);
    build(cfg, resolver, cache, time, TicketPolicy::Default)
}

/// The rustls session cache `cfg` asks for over `store` (without a mirror):
/// what rustls stores through, and what the shared tier adopts found sessions
/// through (the same lifetimes).
pub fn session_cache(
    cfg: &Config,
    store: Arc<SessionStore>,
    session_lifetime: Duration,
) -> SessionCache {
    SessionCache::new(store, session_lifetime)
        .with_max_session_age(cfg.max_session_age)
        .with_ticket_restores(cfg.ticket_restores, cfg.handshake_timeout)
}

/// The rustls configurations an endpoint serves, built once at start-up, and
/// which one a ClientHello gets (`hello_rule`). Every worker holds one (no
/// lock, no per-accept refcount traffic beyond the `Arc<ServerConfig>` rustls
/// itself needs).
#[derive(Debug, Clone)]
pub struct ServerConfigs {
    default: Arc<rustls::ServerConfig>,
    /// TLS 1.2 only; `None` when no TLS 1.2 cipher suite is configured.
    tls12: Option<Arc<rustls::ServerConfig>>,
    /// As `default`, without TLS 1.3 tickets.
    no_tls13_tickets: Arc<rustls::ServerConfig>,
    /// `default` and `no_tls13_tickets` without early data (the same `Arc`
    /// when 0-RTT is off): for a 0-RTT offer the shared session tier could not
    /// vouch for, or on a ticket that was taken before (pending or restored).
    /// The handshake goes on; its early data is refused.
    no_early_data: Arc<rustls::ServerConfig>,
    no_tls13_tickets_no_early_data: Arc<rustls::ServerConfig>,
    /// The store the configurations keep sessions in: where connections settle
    /// the tickets they took. `None`: taken tickets are only ever released by
    /// their pending deadline.
    tickets: Option<SessionCache>,
    rules: HelloRules,
}

/// `config` with 0-RTT data refused (the same `Arc` when it refuses it already).
fn without_early_data(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if config.max_early_data_size == 0 {
        return config.clone();
    }
    let mut c = (**config).clone();
    c.max_early_data_size = 0;
    c.send_half_rtt_data = false;
    Arc::new(c)
}

impl ServerConfigs {
    /// One configuration for every client (no ticket rules).
    pub fn new(default: Arc<rustls::ServerConfig>) -> ServerConfigs {
        let no_early_data = without_early_data(&default);
        ServerConfigs {
            tls12: None,
            no_tls13_tickets: default.clone(),
            no_tls13_tickets_no_early_data: no_early_data.clone(),
            no_early_data,
            default,
            tickets: None,
            rules: HelloRules::default(),
        }
    }

    /// The session cache the configurations store in, where connections settle
    /// the TLS 1.3 tickets they took.
    pub fn tickets(&self) -> Option<&SessionCache> {
        self.tickets.as_ref()
    }

    /// Whether a ClientHello's bytes are needed ([`ServerConfigs::for_hello`]'s
    /// `features`): only when there are ticket rules.
    pub fn reads_hellos(&self) -> bool {
        !self.rules.is_empty() || self.refuses_spent_tickets()
    }

    /// Which configuration the connection that sent `hello` gets (`features`:
    /// read from its bytes, see [`hello_rule::HelloFeatures`]).
    pub fn policy_for(
        &self,
        hello: &ClientHello<'_>,
        features: Option<&hello_rule::HelloFeatures>,
    ) -> TicketPolicy {
        hello_rule::ticket_policy(hello, features, &self.rules)
    }

    /// The configuration for the connection that sent `hello`, and why.
    pub fn for_hello(
        &self,
        hello: &ClientHello<'_>,
        features: Option<&hello_rule::HelloFeatures>,
    ) -> (TicketPolicy, &Arc<rustls::ServerConfig>) {
        let policy = self.policy_for(hello, features);
        let refuse = self.spent_ticket_with_early_data(features);
        (policy, self.for_policy(policy, refuse))
    }

    /// The configuration of `policy`; with `refuse_early_data`, one that refuses
    /// 0-RTT data. One mechanism for both reasons to refuse it: the shared
    /// session tier could not vouch for the ticket, or the ticket was taken
    /// before ([`ServerConfigs::spent_ticket_with_early_data`]).
    pub fn for_policy(
        &self,
        policy: TicketPolicy,
        refuse_early_data: bool,
    ) -> &Arc<rustls::ServerConfig> {
        match (policy, refuse_early_data) {
            (TicketPolicy::Default, false) => &self.default,
            (TicketPolicy::Default, true) => &self.no_early_data,
            // TLS 1.2 has no early data.
            (TicketPolicy::Tls12, refuse) => match &self.tls12 {
                Some(c) => c,
                None if refuse => &self.no_tls13_tickets_no_early_data,
                None => &self.no_tls13_tickets,
            },
            (TicketPolicy::NoTls13Tickets, false) => &self.no_tls13_tickets,
            (TicketPolicy::NoTls13Tickets, true) => &self.no_tls13_tickets_no_early_data,
        }
    }

    /// Whether `policy` makes the handshake TLS 1.2 (it resumes by session ID
    /// even when the ClientHello also offers a TLS 1.3 ticket).
    pub fn is_tls12_only(&self, policy: TicketPolicy) -> bool {
        policy == TicketPolicy::Tls12 && self.tls12.is_some()
    }

    /// Whether 0-RTT data is accepted at all.
    pub fn accepts_early_data(&self) -> bool {
        self.default.max_early_data_size > 0 && !self.default.ticketer.enabled()
    }

    /// Whether the client offers 0-RTT on a ticket that was taken before (it is
    /// pending, or was restored after its connection failed): early data is
    /// accepted on a ticket once, ever, so that client gets a configuration
    /// without early data and resumes in 1-RTT. rustls decides early data from
    /// the configuration's `max_early_data_size` (server/tls13.rs
    /// `decide_if_early_data_allowed`), not from the stored ticket, so the
    /// choice of configuration is the whole decision. The store's take checks
    /// again (a take for a configuration with early data misses on a restored
    /// ticket), which closes the gap between this look and rustls' take.
    pub fn spent_ticket_with_early_data(
        &self,
        features: Option<&hello_rule::HelloFeatures>,
    ) -> bool {
        if !self.refuses_spent_tickets() {
            return false;
        }
        let (Some(cache), Some(f)) = (&self.tickets, features) else {
            return false;
        };
        if !f.offers_early_data {
            return false;
        }
        f.first_psk_identity()
            .and_then(|id| cache.ticket_state(id))
            .is_some_and(|t| !t.fresh())
    }

    /// Whether 0-RTT offers on tickets taken before are looked for: there is
    /// early data to refuse, and a store to ask.
    fn refuses_spent_tickets(&self) -> bool {
        self.tickets.is_some() && self.default.max_early_data_size > 0
    }

    /// The configuration most clients get.
    pub fn default_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.default
    }
}

/// [`server_config`] and its variants for clients matched by `cfg.ticket_rules`,
/// all sharing one session store and one certificate resolver.
pub fn server_configs(
    cfg: &Config,
    resolver: Arc<CertResolver>,
    store: Arc<SessionStore>,
    session_lifetime: Duration,
) -> Result<ServerConfigs, TlsError> {
    server_configs_with(cfg, resolver, store, session_lifetime, None)
}

/// As [`server_configs`], every session also mirrored into the shared session
/// tier when `mirror` is given.
pub fn server_configs_with(
    cfg: &Config,
    resolver: Arc<CertResolver>,
    store: Arc<SessionStore>,
    session_lifetime: Duration,
    mirror: Option<Arc<dyn SessionMirror>>,
) -> Result<ServerConfigs, TlsError> {
    let time: Arc<dyn rustls::time_provider::TimeProvider> =
        Arc::new(rustls::time_provider::DefaultTimeProvider);
    let mut cache = session_cache(cfg, store, session_lifetime);
    if let Some(m) = mirror {
        cache = cache.with_mirror(m);
    }
    let variant = |policy| build(cfg, resolver.clone(), cache.clone(), time.clone(), policy);
    let default = variant(TicketPolicy::Default)?;
    let tls12_suites: Vec<rustls::CipherSuite> = default
        .crypto_provider()
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .map(|s| s.suite())
        .collect();
    let tls12 = if tls12_suites.is_empty() {
        None
    } else {
        Some(variant(TicketPolicy::Tls12)?)
    };
    let no_tls13_tickets = variant(TicketPolicy::NoTls13Tickets)?;
    Ok(ServerConfigs {
        no_early_data: without_early_data(&default),
        no_tls13_tickets_no_early_data: without_early_data(&no_tls13_tickets),
        default,
        tls12,
        no_tls13_tickets,
        tickets: Some(cache),
        rules: HelloRules {
            rules: cfg.ticket_rules.clone(),
            tls12_suites,
        },
    })
}

fn build(
    cfg: &Config,
    resolver: Arc<CertResolver>,
    cache: SessionCache,
    time: Arc<dyn rustls::time_provider::TimeProvider>,
    policy: TicketPolicy,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let groups = cfg.groups.iter().map(|g| g.rustls()).collect();
    let mut suites: Vec<_> = cfg.cipher_suites.iter().map(|s| s.0).collect();
    if suites.is_empty() {
        suites = cheapest_first();
    }
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups,
        cipher_suites: suites,
        ..provider::default_provider()
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match policy {
        TicketPolicy::Tls12 => &[&rustls::version::TLS12],
        TicketPolicy::Default | TicketPolicy::NoTls13Tickets => {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        }
    };
    let mut sc = rustls::ServerConfig::builder_with_details(Arc::new(provider), time)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    if cfg.tls13_tickets == Tls13Tickets::StoreTicketer {
        sc.ticketer = Arc::new(StoreTicketer::new(cache.clone()));
    }
    sc.session_storage = Arc::new(cache.with_stateful_ticket_cap());
    sc.send_tls13_tickets = match policy {
        TicketPolicy::Default => cfg.tickets_per_handshake,
        TicketPolicy::Tls12 | TicketPolicy::NoTls13Tickets => 0,
    };
    // 0-RTT needs the stateful store (rustls refuses it with a ticketer): its
    // single-use `take` is the replay protection. The answer to an early request
    // goes out as 0.5-RTT data, right behind our Finished: there is no client
    // authentication to wait for, and that is what brings a resumed device with
    // TFO to its response in one round trip.
    sc.max_early_data_size = cfg.early_data;
    sc.send_half_rtt_data = cfg.early_data > 0;
    sc.ignore_client_order = true;
    // rustls counts the 5-byte record header in its fragment size.
    sc.max_fragment_size = cfg.max_record_size.map(|n| usize::from(n) + 5);
    Ok(Arc::new(sc))
}
