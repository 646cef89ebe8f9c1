//! A driver with no sockets: it carries out a connection's actions on byte
//! queues in memory, so the very machine the endpoint runs can be driven by the
//! fuzzer, the sleep simulator and tests — step by step, with the test deciding
//! when each posted operation completes and how.
//!
//! Sends complete at once with every byte lent (or, with [`MemoryDriver::send_limit`],
//! partially); receives stay posted until the caller delivers bytes, an EOF or an
//! error; the backend connect stays in flight until [`MemoryDriver::connected`];
//! a tier lookup until [`MemoryDriver::answer_lookup`] (with
//! [`MemoryDriver::with_tier`]: the tier is whatever the caller says it answered).
//! A pool of [`MemoryDriver::pooled`] idle backend connections satisfies
//! `ConnectPooled` at once (their idle receive becomes the connection's);
//! released connections go back to it, or are counted as closed.
use std::time::{Duration, Instant};

use super::{Action, BackendLog, BufPool, Conn, Env, Limits, Side, TierView, RECV_BUF};
use crate::metrics::WorkerMetrics;
use crate::tier::{LookupRequest, Outcome};
use crate::tls::ServerConfigs;

/// Operations the machine has handed out and the driver holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    /// A receive on the device's socket.
    pub client_recv: bool,
    /// A receive on the backend's socket.
    pub backend_recv: bool,
    /// The backend connect.
    pub connect: bool,
    /// A lookup in the shared tier, waiting for [`MemoryDriver::answer_lookup`].
    pub lookup: Option<LookupRequest>,
}

/// What the machine borrows while it handles an event.
struct World {
    tls: ServerConfigs,
    limits: Limits,
    metrics: WorkerMetrics,
    pool: BufPool,
    log: BackendLog,
    now: Instant,
    tier: Option<TierView>,
}

impl World {
    fn env(&mut self) -> Env<'_> {
        Env {
            now: self.now,
            limits: &self.limits,
            tls: &self.tls,
            metrics: &self.metrics,
            pool: &mut self.pool,
            backend_log: &mut self.log,
            tier: self.tier.as_ref(),
        }
    }
}

/// One connection driven in memory.
pub struct MemoryDriver {
    /// The connection being driven.
    pub conn: Conn,
    world: World,
    posted: Posted,
    /// Bytes the machine sent to the device, not yet taken.
    to_client: Vec<u8>,
    /// Bytes the machine sent to the backend, not yet taken.
    to_backend: Vec<u8>,
    /// Write directions the machine shut: (client, backend).
    pub shut: (bool, bool),
    /// Largest send that completes in one go (partial sends below it).
    pub send_limit: usize,
    /// The machine asked to cancel everything.
    pub cancelled: bool,
    /// Idle backend connections in the pool (http mode).
    pub pooled: usize,
    /// Backend connections the machine gave back: `true` kept in the pool,
    /// `false` closed.
    pub released: Vec<bool>,
    /// Backend connections taken from the pool.
    pub reused: usize,
    /// The pool keeps a receive posted on its idle connections, which the
    /// connection that takes one inherits (epoll's model); else the machine
    /// asks for its own (io_uring's, whose pool watches with a poll).
    pub pool_recv_posted: bool,
    /// Backend sends posted while the machine said it would send nothing more
    /// to the backend until it answers (`Conn::quiet_after_send`).
    pub quiet_backend_sends: usize,
    /// Fail the next backend send with this errno (a connection the backend
    /// reset while it sat in the pool).
    pub fail_backend_send: Option<i32>,
}

impl MemoryDriver {
    /// A connection accepted now.
    pub fn new(tls: ServerConfigs, limits: Limits) -> MemoryDriver {
        MemoryDriver::with_tier(tls, limits, None)
    }

    /// A connection accepted now, on an endpoint sharing sessions through a
    /// tier (`tier`: this host's store and the lookup timeout).
    pub fn with_tier(tls: ServerConfigs, limits: Limits, tier: Option<TierView>) -> MemoryDriver {
        let now = Instant::now();
        let conn = Conn::new(now, &limits, None);
        let mut d = MemoryDriver {
            conn,
            world: World {
                tls,
                limits,
                metrics: WorkerMetrics::default(),
                pool: BufPool::new(8, 0),
                log: BackendLog::new("memory".into(), 0),
                now,
                tier,
            },
            posted: Posted::default(),
            to_client: Vec::new(),
            to_backend: Vec::new(),
            shut: (false, false),
            send_limit: usize::MAX,
            cancelled: false,
            pooled: 0,
            released: Vec::new(),
            reused: 0,
            pool_recv_posted: true,
            quiet_backend_sends: 0,
            fail_backend_send: None,
        };
        d.run();
        d
    }

    /// The time the driver's clock says.
    pub fn now(&self) -> Instant {
        self.world.now
    }

    /// What the connection counted.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.world.metrics
    }

    /// What the machine is waiting on.
    pub fn posted(&self) -> Posted {
        self.posted
    }

    /// Carry out actions until the machine asks for nothing more.
    pub fn run(&mut self) {
        // Bounded: every action flips a flag the next poll checks; sends drain
        // a finite outbox.
        for _ in 0..10_000 {
            let mut env = self.world.env();
            let Some(action) = self.conn.poll(&mut env) else {
                return;
            };
            match action {
                Action::Recv(Side::Client) => self.posted.client_recv = true,
                Action::Recv(Side::Backend) => self.posted.backend_recv = true,
                Action::Send(Side::Backend) if self.fail_backend_send.is_some() => {
                    let e = self.fail_backend_send.take().unwrap_or(libc::EPIPE);
                    let mut env = self.world.env();
                    self.conn.on_sent(Side::Backend, Err(e), &mut env);
                }
                Action::Send(side) => {
                    if side == Side::Backend && self.conn.quiet_after_send(side) {
                        self.quiet_backend_sends += 1;
                    }
                    let lent = self.conn.send_buf(side);
                    let n = lent.len().min(self.send_limit.max(1));
                    match side {
                        Side::Client => self.to_client.extend_from_slice(&lent[..n]),
                        Side::Backend => self.to_backend.extend_from_slice(&lent[..n]),
                    }
                    let mut env = self.world.env();
                    self.conn.on_sent(side, Ok(n), &mut env);
                }
                Action::Connect => self.posted.connect = true,
                Action::ConnectPooled if self.pooled > 0 => {
                    self.pooled -= 1;
                    self.reused += 1;
                    self.posted.backend_recv = self.pool_recv_posted;
                    let mut env = self.world.env();
                    self.conn.on_pooled(self.pool_recv_posted, &mut env);
                }
                Action::ConnectPooled => self.posted.connect = true,
                Action::ReleaseBackend { reusable } => {
                    debug_assert!(!self.posted.backend_recv && !self.posted.connect);
                    self.released.push(reusable);
                    if reusable {
                        self.pooled += 1;
                    }
                }
                Action::CancelConnect => {
                    let mut env = self.world.env();
                    if std::mem::take(&mut self.posted.connect) {
                        self.conn.on_connected(Err(libc::ECANCELED), &mut env);
                    } else if std::mem::take(&mut self.posted.backend_recv) {
                        self.conn
                            .on_recv(Side::Backend, Err(libc::ECANCELED), &mut env);
                    }
                }
                Action::ShutdownWrite(Side::Client) => self.shut.0 = true,
                Action::ShutdownWrite(Side::Backend) => self.shut.1 = true,
                Action::Lookup => self.posted.lookup = self.conn.lookup_request(),
                Action::Cancel => {
                    self.cancelled = true;
                    let p = std::mem::take(&mut self.posted);
                    let mut env = self.world.env();
                    if p.client_recv {
                        self.conn
                            .on_recv(Side::Client, Err(libc::ECANCELED), &mut env);
                    }
                    if p.backend_recv {
                        self.conn
                            .on_recv(Side::Backend, Err(libc::ECANCELED), &mut env);
                    }
                    if p.connect {
                        self.conn.on_connected(Err(libc::ECANCELED), &mut env);
                    }
                }
            }
        }
        panic!("the connection machine kept asking for actions");
    }

    /// Deliver bytes from `side` (in receives of at most [`RECV_BUF`]); bytes
    /// the machine is not reading are returned undelivered.
    pub fn deliver<'b>(&mut self, side: Side, mut bytes: &'b [u8]) -> &'b [u8] {
        while !bytes.is_empty() {
            let posted = match side {
                Side::Client => &mut self.posted.client_recv,
                Side::Backend => &mut self.posted.backend_recv,
            };
            if !std::mem::take(posted) {
                break;
            }
            let n = bytes.len().min(RECV_BUF);
            let mut env = self.world.env();
            self.conn.on_recv(side, Ok(&bytes[..n]), &mut env);
            bytes = &bytes[n..];
            self.run();
        }
        bytes
    }

    /// Complete the posted receive on `side` with EOF (`Ok`) or an error.
    pub fn end(&mut self, side: Side, error: Option<i32>) -> bool {
        let posted = match side {
            Side::Client => &mut self.posted.client_recv,
            Side::Backend => &mut self.posted.backend_recv,
        };
        if !std::mem::take(posted) {
            return false;
        }
        let mut env = self.world.env();
        let got = match error {
            Some(e) => Err(e),
            None => Ok(&[][..]),
        };
        self.conn.on_recv(side, got, &mut env);
        self.run();
        true
    }

    /// Complete the backend connect.
    pub fn connected(&mut self, result: Result<(), i32>) -> bool {
        if !std::mem::take(&mut self.posted.connect) {
            return false;
        }
        let mut env = self.world.env();
        self.conn.on_connected(result, &mut env);
        self.run();
        true
    }

    /// Answer the posted tier lookup (the caller has put a found session in
    /// the store first, as the tier thread does).
    pub fn answer_lookup(&mut self, outcome: Outcome) -> bool {
        if self.posted.lookup.take().is_none() {
            return false;
        }
        let mut env = self.world.env();
        self.conn.on_lookup(outcome, &mut env);
        self.run();
        true
    }

    /// Move the clock on and let the machine see its deadline.
    pub fn advance(&mut self, by: Duration) {
        self.world.now += by;
        if self.conn.deadline().is_some_and(|d| d <= self.world.now) {
            let mut env = self.world.env();
            self.conn.on_timeout(&mut env);
            self.run();
        }
    }

    /// The bytes sent to the device so far (taken).
    pub fn take_to_client(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_client)
    }

    /// The bytes sent to the backend so far (taken).
    pub fn take_to_backend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_backend)
    }

    /// Closed and nothing in flight: the endpoint would free it now.
    pub fn is_finished(&self) -> bool {
        self.conn.is_finished()
    }

    /// Give the connection's pooled buffers back (call once it is finished).
    pub fn release(&mut self) {
        self.conn.release(&mut self.world.pool);
    }
}

#[cfg(test)]
mod tests {
    //! The parked state, in memory: a real rustls client and two hosts' stores;
    //! the test plays the tier (it moves the session between the stores, as the
    //! tier thread does, and says what the lookup found).
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, HandshakeKind};

    use super::*;
    use crate::config::Config;
    use crate::metrics;
    use crate::store::{SessionCache, SessionStore};
    use crate::tier::LookupOp;
    use crate::tls;

    /// One host: its store, the rustls configs over it, the tier view.
    struct Host {
        cache: SessionCache,
        tls: ServerConfigs,
    }

    fn host(dir: &std::path::Path, name: &str, cert: Option<&Host>) -> (Host, Config) {
        let mut cfg = Config::default();
        cfg.cache.path = dir.join(name);
        cfg.cache.capacity = 100;
        cfg.early_data = 4096;
        if cert.is_some() {
            cfg.certs = vec![tls::self_signed_paths(&dir.join("a"))];
        }
        let store = Arc::new(SessionStore::open_or_create(&cfg.store_config()).unwrap());
        let resolver = Arc::new(tls::CertResolver::new(tls::load_certs(&cfg).unwrap()));
        let sc = tls::server_config(&cfg, resolver, store.clone(), cfg.session_lifetime).unwrap();
        let cache =
            tls::session_cache(&cfg, store, cfg.session_lifetime).with_stateful_ticket_cap();
        (
            Host {
                cache,
                tls: ServerConfigs::new(sc),
            },
            cfg,
        )
    }

    fn limits() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            backend_connect_timeout: Duration::from_secs(10),
            proxy_protocol: false,
            http: None,
        }
    }

    fn driver(h: &Host) -> MemoryDriver {
        driver_with(h, limits())
    }

    /// A connection in http mode with one idle pooled backend connection.
    fn http_driver(h: &Host) -> MemoryDriver {
        let mut d = driver_with(
            h,
            Limits {
                http: Some(crate::conn::HttpLimits::default()),
                ..limits()
            },
        );
        d.pooled = 1;
        d
    }

    fn driver_with(h: &Host, limits: Limits) -> MemoryDriver {
        MemoryDriver::with_tier(
            h.tls.clone(),
            limits,
            Some(TierView {
                cache: h.cache.clone(),
                lookup_timeout: Duration::from_millis(5),
            }),
        )
    }

    /// Move bytes both ways until nothing moves; bytes the machine does not
    /// read yet (parked) wait in `pending`.
    fn pump(c: &mut ClientConnection, d: &mut MemoryDriver, pending: &mut Vec<u8>) {
        pump_answering(c, d, pending, b"pong", &mut Vec::new());
    }

    /// As [`pump`], the backend answering `reply` (then its EOF, unless it is
    /// an HTTP response, which keeps the connection alive); what reached the
    /// backend is appended to `to_backend`.
    fn pump_answering(
        c: &mut ClientConnection,
        d: &mut MemoryDriver,
        pending: &mut Vec<u8>,
        reply: &[u8],
        to_backend: &mut Vec<u8>,
    ) {
        for _ in 0..50 {
            while c.wants_write() {
                c.write_tls(pending).unwrap();
            }
            let left = d.deliver(Side::Client, pending).len();
            let moved = pending.len() - left;
            pending.drain(..moved);
            if d.posted().connect {
                d.connected(Ok(()));
            }
            let sent = d.take_to_backend();
            if !sent.is_empty() {
                to_backend.extend_from_slice(&sent);
                d.deliver(Side::Backend, reply);
                if !reply.starts_with(b"HTTP/") {
                    d.end(Side::Backend, None);
                }
            }
            let to_client = d.take_to_client();
            let mut rd: &[u8] = &to_client;
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            if moved == 0 && to_client.is_empty() && !c.wants_write() {
                return;
            }
        }
    }

    fn client(cert: &std::path::Path, early: bool) -> Arc<ClientConfig> {
        client_of(cert, early, &rustls::version::TLS13)
    }

    fn client_of(
        cert: &std::path::Path,
        early: bool,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.enable_early_data = early;
        Arc::new(cfg)
    }

    /// A device connection; its first flight is what `last_flight` returns
    /// until the next one.
    fn connection(cfg: &Arc<ClientConfig>, early: Option<&[u8]>) -> ClientConnection {
        let mut c =
            ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        match early {
            Some(req) => {
                c.early_data()
                    .expect("a 0-RTT ticket")
                    .write_all(req)
                    .unwrap();
            }
            None => c.writer().write_all(b"ping").unwrap(),
        }
        c
    }

    /// The bytes a fresh connection sends first (kept in `pending` for the pump).
    fn first_flight(c: &mut ClientConnection, pending: &mut Vec<u8>) -> Vec<u8> {
        while c.wants_write() {
            c.write_tls(pending).unwrap();
        }
        pending.clone()
    }

    fn got_pong(c: &mut ClientConnection) -> bool {
        let mut buf = Vec::new();
        let _ = c.reader().read_to_end(&mut buf);
        buf == b"pong"
    }

    /// The ticket `key` moves from `from`'s store to `to`'s, as a tier redemption does.
    fn tier_moves(from: &Host, to: &Host, key: &[u8]) {
        let (value, born) = from
            .cache
            .store()
            .take_with_born(key)
            .expect("in the first store");
        assert!(to.cache.adopt(key, &value, born));
    }

    #[test]
    fn a_parked_connection_reads_nothing_and_resumes_with_what_the_tier_found() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = host(dir.path(), "a", None);
        let (b, _) = host(dir.path(), "b", Some(&a));
        let cfg = client(&dir.path().join("a.cert.pem"), true);

        // A full handshake on A: nothing to look up, nothing parked.
        let mut c = connection(&cfg, None);
        let mut d = driver(&a);
        let mut pending = Vec::new();
        pump(&mut c, &mut d, &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        assert!(got_pong(&mut c));
        let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
        assert_eq!((m.cluster.lookups, m.full_handshakes), (0, 1));

        // On B, with 0-RTT: parked, its first flight unread behind the ClientHello.
        let mut c = connection(&cfg, Some(b"early ping"));
        let flight = first_flight(&mut c, &mut pending);
        let mut d = driver(&b);
        pump(&mut c, &mut d, &mut pending);
        let req = d.posted().lookup.expect("a lookup asked for");
        assert_eq!(req.op, LookupOp::Redeem { tombstone: true });
        save_seed("tls13-psk-0rtt", &flight);
        assert!(d.conn.is_parked());
        assert!(!d.posted().client_recv, "nothing read while parked");
        // The tier found it (and this host redeemed it): 0-RTT accepted.
        tier_moves(&a, &b, req.key.as_bytes());
        assert!(d.answer_lookup(Outcome::Found));
        pump(&mut c, &mut d, &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
        assert!(c.is_early_data_accepted());
        assert!(got_pong(&mut c));
        let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
        assert_eq!((m.cluster.lookups, m.cluster.found), (1, 1));
        assert_eq!(m.early_data_accepted, 1);
    }

    #[test]
    fn a_tls12_session_fetched_from_the_tier_resumes_and_stays_multi_use() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = host(dir.path(), "a", None);
        let (b, _) = host(dir.path(), "b", Some(&a));
        let cfg = client_of(
            &dir.path().join("a.cert.pem"),
            false,
            &rustls::version::TLS12,
        );
        let mut pending = Vec::new();
        let mut c = connection(&cfg, None);
        pump(&mut c, &mut driver(&a), &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));

        let mut c = connection(&cfg, None);
        let flight = first_flight(&mut c, &mut pending);
        let mut d = driver(&b);
        pump(&mut c, &mut d, &mut pending);
        let req = d.posted().lookup.expect("a lookup asked for");
        assert_eq!(req.op, LookupOp::Fetch);
        save_seed("tls12-session-id", &flight);
        // The tier copies it (GETEX: it stays there too).
        let (value, born) = a.cache.store().get_with_born(req.key.as_bytes()).unwrap();
        assert!(b.cache.adopt(req.key.as_bytes(), &value, born));
        assert!(d.answer_lookup(Outcome::Found));
        pump(&mut c, &mut d, &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
        assert!(got_pong(&mut c));

        // Back on A: a local hit, no lookup at all.
        let mut c = connection(&cfg, None);
        let mut d = driver(&a);
        pump(&mut c, &mut d, &mut pending);
        assert!(d.posted().lookup.is_none());
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
        let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
        assert_eq!((m.cluster.local_hits, m.cluster.lookups), (1, 0));
    }

    /// With WARMTLS_WRITE_HELLO_SEEDS=DIR, keep a real first flight as a seed
    /// of the `hello` fuzz target (how fuzz/corpus/hello was made).
    fn save_seed(name: &str, flight: &[u8]) {
        if let Some(dir) = std::env::var_os("WARMTLS_WRITE_HELLO_SEEDS") {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-{name}")),
                flight,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_0rtt_offer_the_tier_cannot_vouch_for_resumes_without_its_early_data() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = host(dir.path(), "a", None);
        let cfg = client(&dir.path().join("a.cert.pem"), true);
        let mut pending = Vec::new();
        let mut c = connection(&cfg, None);
        let mut d = driver(&a);
        pump(&mut c, &mut d, &mut pending);

        // A holds the ticket itself; with 0-RTT it still asks the tier, which
        // says another host redeemed it: resumed (from A's copy), early data refused.
        let mut c = connection(&cfg, Some(b"early ping"));
        let mut d = driver(&a);
        pump(&mut c, &mut d, &mut pending);
        assert!(d.conn.is_parked());
        assert!(d.answer_lookup(Outcome::Missing));
        pump(&mut c, &mut d, &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
        assert!(!c.is_early_data_accepted());
        let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
        assert_eq!((m.cluster.missing, m.cluster.zero_rtt_refused), (1, 1));
        assert_eq!(m.early_data_accepted, 0);
    }

    #[test]
    fn past_the_lookup_timeout_a_parked_connection_goes_on_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = host(dir.path(), "a", None);
        let (b, _) = host(dir.path(), "b", Some(&a));
        let cfg = client(&dir.path().join("a.cert.pem"), false);
        let mut pending = Vec::new();
        let mut c = connection(&cfg, None);
        pump(&mut c, &mut driver(&a), &mut pending);

        let mut c = connection(&cfg, None);
        let mut d = driver(&b);
        pump(&mut c, &mut d, &mut pending);
        assert!(d.conn.is_parked());
        d.advance(Duration::from_millis(6));
        assert!(!d.conn.is_parked());
        pump(&mut c, &mut d, &mut pending);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        assert!(got_pong(&mut c));
        // A late answer changes nothing.
        assert!(d.answer_lookup(Outcome::Found));
        let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
        assert_eq!((m.cluster.timeouts, m.cluster.found), (1, 0));
        assert_eq!(m.timeouts, 0, "not a connection timeout");
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// What the device read, up to the server's close_notify.
    fn read_all(c: &mut ClientConnection) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = c.reader().read_to_end(&mut buf);
        buf
    }

    /// http mode and the shared tier together: B parks the 0-RTT request's
    /// connection, the tier answers, and the request goes to the pooled backend
    /// — marked `Early-Data: 1` only when the tier vouched for the ticket;
    /// otherwise sent once after the handshake, unmarked.
    #[test]
    fn http_mode_parks_and_forwards_early_data_only_when_the_tier_vouched() {
        for found in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (a, _) = host(dir.path(), "a", None);
            let (b, _) = host(dir.path(), "b", Some(&a));
            let cfg = client(&dir.path().join("a.cert.pem"), true);
            let mut pending = Vec::new();
            let mut c = connection(&cfg, None);
            pump(&mut c, &mut driver(&a), &mut pending);
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));

            let mut c = connection(&cfg, Some(GET));
            let mut d = http_driver(&b);
            let mut to_backend = Vec::new();
            pump_answering(&mut c, &mut d, &mut pending, OK, &mut to_backend);
            let req = d.posted().lookup.expect("a lookup asked for");
            assert!(d.conn.is_parked());
            assert!(to_backend.is_empty(), "nothing forwarded while parked");
            if found {
                tier_moves(&a, &b, req.key.as_bytes());
            }
            assert!(d.answer_lookup(if found {
                Outcome::Found
            } else {
                Outcome::Missing
            }));
            pump_answering(&mut c, &mut d, &mut pending, OK, &mut to_backend);
            assert_eq!(c.is_early_data_accepted(), found);
            if !found {
                // The device sends its request again once the handshake is done.
                c.writer().write_all(GET).unwrap();
                pump_answering(&mut c, &mut d, &mut pending, OK, &mut to_backend);
            }
            let response = read_all(&mut c);
            assert!(response.starts_with(b"HTTP/1.1 200 OK"), "{response:?}");
            let sent = String::from_utf8_lossy(&to_backend);
            assert_eq!(sent.matches("GET / ").count(), 1, "{sent}");
            assert_eq!(sent.contains("Early-Data: 1"), found, "{sent}");
            assert_eq!(d.reused, 1, "the pooled backend connection served it");
            let m = metrics::snapshot(std::slice::from_ref(d.metrics()));
            assert_eq!(m.cluster.lookups, 1);
            assert_eq!(m.cluster.found, u64::from(found));
            assert_eq!(m.cluster.zero_rtt_refused, u64::from(!found));
            assert_eq!((m.http.requests, m.http.backend_reused), (1, 1));
        }
    }
}
