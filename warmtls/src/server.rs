//! `warmtls serve`: check everything that can fail (config, certificates, cache
//! key, io_uring, another instance on the same cache or port) before creating
//! anything; take the listening sockets (bound here, from systemd's socket
//! activation, or handed over by the process we replace); open the store, start
//! the workers; then watch signals (TERM/INT: drain and exit; HUP: reload
//! certificates; USR2: hand over to a new process) and the control socket, and
//! write the periodic stats.
//!
//! A start that fails removes what it created (cache file, self-signed
//! certificate, control socket). The hand-over protocol itself is in
//! [`crate::handover`]; this module only decides when to stop accepting.
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::AdminListener;
use crate::config::Config;
use crate::handover::{
    self, ControlRequest, ControlSocket, InstanceInfo, Offer, Predecessor, Progress, Relaunch,
    Successor, Waiter,
};
use crate::metrics::{StatsSource, WorkerMetrics};
use crate::runtime::{listener, worker, EventLoop};
use crate::store::{check_key_apart, encoding, Flusher, SessionStore, ValueKey};
use crate::systemd::{self, Notifier};
use crate::tier::{Tier, TierKeys, TierSettings};
use crate::tls::{self, CertResolver};

/// Listen backlog of every socket we bind.
const BACKLOG: i32 = 4096;
/// How long a process taking over waits for the running one to let go of the
/// metrics port (it does once the hand-over is confirmed).
const ADMIN_PORT_WAIT: Duration = Duration::from_secs(30);

/// In a hand-over, how long the new process waits for its session tier client
/// to connect before it takes over (the old process serves meanwhile).
const TIER_UP_WAIT: Duration = Duration::from_secs(2);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {io}{}", listen_hint(.io))]
    Listen { addr: String, io: std::io::Error },
    #[error(transparent)]
    Ring(#[from] crate::runtime::ring::RingError),
    #[error("worker {0} could not start: {1}")]
    Worker(usize, String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(
        "listen = {configured} but the running process listens on {handed}: a hand-over keeps \
             the listening sockets, so the address cannot change; stop the running process and \
             start this one instead"
    )]
    ListenChanged {
        configured: SocketAddr,
        handed: SocketAddr,
    },
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error(transparent)]
    SocketActivation(#[from] systemd::ListenFdsError),
    #[error(transparent)]
    Tier(#[from] crate::tier::TierError),
}

/// What to do about a listen address the kernel refused.
fn listen_hint(io: &std::io::Error) -> &'static str {
    match io.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            "; another process listens there (`ss -ltnp` shows which): stop it, or choose \
             another address (--listen, `listen` in the file). warmtls does not share a port \
             with another process (SO_REUSEPORT would let the kernel split devices between two \
             endpoints and their caches); to replace a running warmtls without refusing a \
             connection, use `warmtls upgrade`"
        }
        Some(libc::EACCES) => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE \
             (AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit)"
        }
        Some(libc::EADDRNOTAVAIL) => "; no interface of this host has that address",
        _ => "",
    }
}

/// Raise RLIMIT_NOFILE to cover `max_connections` (a client and a backend socket
/// each), or say why not.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (max_connections as u64) * 2 + 64;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < want => {
            let new = want.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
                tracing::warn!("cannot raise the open-file limit to {want}: {e}");
            } else if new < want {
                tracing::warn!("open-file limit is {new} (hard limit), below the {want} that max_connections={max_connections} needs; raise it with `ulimit -Hn` or LimitNOFILE=");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// TCP Fast Open is on (it is by default) but the kernel will ignore it: say so
/// once, at info level, with the fix. Most kernels ship servers without TFO, so
/// this is the ordinary case, not a fault: connections work, one round trip slower.
fn note_if_fastopen_disabled(queue: u32) {
    if queue == 0 {
        return;
    }
    match crate::runtime::sockopt::server_fastopen_allowed() {
        Some(true) => {}
        Some(false) => tracing::info!(
            "TCP Fast Open is off for servers in this kernel (net.ipv4.tcp_fastopen lacks \
             bit 0x2): devices pay one more round trip per connection; `sysctl -w \
             net.ipv4.tcp_fastopen=3` turns it on (per network namespace; persist it in \
             /etc/sysctl.d/), tcp_fastopen = 0 stops this note"
        ),
        None => tracing::info!(
            "TCP Fast Open may be off: {} cannot be read",
            crate::runtime::sockopt::FASTOPEN_SYSCTL
        ),
    }
}

/// Run the endpoint until SIGTERM/SIGINT, or until it has handed over to a
/// successor (`warmtls upgrade`, SIGUSR2). Prints `warmtls: listening on ADDR`
/// on stdout once every worker listens, and tells systemd (when it asked).
pub fn serve(cfg: Config) -> Result<(), ServeError> {
    // What the process that started us left for us: read (and cleared from the
    // environment) before anything else runs.
    let predecessor = Predecessor::from_env()?;
    let activated = systemd::listen_fds();
    let notify = Notifier::from_env();
    let relaunch = Relaunch::current();
    let started = activated
        .map_err(ServeError::from)
        .and_then(|fds| start(cfg, predecessor.as_ref(), fds));
    let mut ep = match started {
        Ok(ep) => ep,
        Err(e) => {
            if let Some(p) = &predecessor {
                p.fail(&e.to_string());
            }
            return Err(e);
        }
    };
    // The hand-over channel is closed at the end of this match: it is done.
    let status = match predecessor {
        Some(p) => {
            // Our workers accept from the handed sockets; now the old process
            // may stop (it confirms once it has begun draining).
            if !p.serving() {
                tracing::warn!(
                    "the previous process did not confirm the hand-over; serving anyway"
                );
            }
            ep.control.own();
            let from = nix::unistd::getppid();
            tracing::info!(%from, "took over from the previous process");
            format!("serving on {} (took over from pid {from})", ep.bound)
        }
        None => format!("serving on {}", ep.bound),
    };
    tracing::info!(bound = %ep.bound, workers = ep.handles.len(), runtime = ep.stats.runtime().name(), sockets = ep.sockets.len(),
        activated = ep.activated, cache = %ep.cfg.cache.path.display(),
        previous_shutdown_unclean = ep.store.previous_shutdown_unclean(), "serving");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "warmtls: listening on {}", ep.bound);
    let _ = out.flush();
    notify.ready(&status);
    run(ep, &notify, &relaunch)
}

/// A started endpoint: what the main loop watches and what a successor gets.
struct Endpoint {
    cfg: Config,
    store: Arc<SessionStore>,
    flusher: Flusher,
    resolver: Arc<CertResolver>,
    tls_cfgs: Arc<tls::ServerConfigs>,
    /// The shared session tier's client (this process's own: a successor
    /// opens its own).
    tier: Option<Tier>,
    /// The one reading of the counters every report shows (the stats line and
    /// file, the metrics page).
    stats: Arc<StatsSource>,
    /// The metrics page (`metrics_listen`), if asked for.
    admin: Option<AdminListener>,
    metrics: Arc<Vec<WorkerMetrics>>,
    shutdown: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    /// Every distinct listening socket (workers hold copies): handed to a
    /// successor, dropped when we stop accepting.
    sockets: Vec<OwnedFd>,
    /// The sockets came from systemd: workers share them, none are bound here.
    activated: bool,
    control: ControlSocket,
    bound: SocketAddr,
    signals: Signals,
}

/// The signals the main loop watches.
struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr2: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Result<Signals, ServeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
        let s = Signals {
            term: Arc::new(AtomicBool::new(false)),
            hup: Arc::new(AtomicBool::new(false)),
            usr2: Arc::new(AtomicBool::new(false)),
        };
        for (sig, flag) in [
            (SIGTERM, &s.term),
            (SIGINT, &s.term),
            (SIGHUP, &s.hup),
            (SIGUSR2, &s.usr2),
        ] {
            signal_hook::flag::register(sig, flag.clone()).map_err(ServeError::Signals)?;
        }
        Ok(s)
    }
}

/// Files this start created; removed if the start fails.
#[derive(Default)]
struct Created(Vec<PathBuf>);

impl Created {
    /// Remove `path` if the start fails, unless it exists already (a key left
    /// without its certificate is overwritten, but not removed).
    fn claim_if_missing(&mut self, path: &Path) {
        if std::fs::symlink_metadata(path).is_err() {
            self.0.push(path.to_path_buf());
        }
    }

    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Everything up to serving. Nothing is created before everything that can be
/// checked alone has been (another instance and the port included); what is
/// created is removed again if a later step fails (binding the port, a worker).
fn start(
    cfg: Config,
    predecessor: Option<&Predecessor>,
    activated_fds: Vec<OwnedFd>,
) -> Result<Endpoint, ServeError> {
    cfg.validate()?;
    // Before touching the cache file: which event loop runs (a host that forbids
    // io_uring falls back to epoll under `auto`, and gets a clear error and no
    // side effects when io_uring was asked for).
    let event_loop = EventLoop::choose(cfg.runtime)?;
    let workers = cfg.worker_count();
    raise_fd_limit(cfg.max_connections);
    let mut cache_key = cache_key_bytes(&cfg)?;
    let (keys, new_cert) = tls::prepare_certs(&cfg)?;
    let listen = cfg.listen_addr().map_err(|e| ServeError::Listen {
        addr: cfg.listen.clone(),
        io: std::io::Error::other(e),
    })?;
    let backend = cfg
        .backend_addr()
        .map_err(|m| crate::config::ConfigError::Invalid {
            field: "backend",
            message: m,
        })?;
    let signals = Signals::register()?;
    let listen_err = |io| ServeError::Listen {
        addr: cfg.listen.clone(),
        io,
    };
    let tfo = cfg.tcp_fastopen;

    // The control socket and the listening sockets: the running process's, or
    // claimed here (refusing if another instance has the cache or the port).
    let control_path = cfg.control_socket_path();
    // Empty `sockets`: bind our own, once the files below exist (a client that
    // connects as soon as the port opens finds the self-signed certificate).
    let (control, sockets, activated) = match predecessor {
        Some(p) => {
            let h = p.take_sockets(&control_path)?;
            if !h.activated {
                let handed = listener::local_addr(&h.listeners[0]).map_err(listen_err)?;
                let same_port = listen.port() == 0 || listen.port() == handed.port();
                if listen.ip() != handed.ip() || !same_port {
                    return Err(ServeError::ListenChanged {
                        configured: listen,
                        handed,
                    });
                }
            }
            for s in &h.listeners {
                listener::adopt(s, tfo).map_err(listen_err)?;
            }
            (h.control, h.listeners, h.activated)
        }
        None => {
            let control = handover::claim(&control_path)?;
            if activated_fds.is_empty() {
                // A killed instance's sockets close a moment after it died.
                let grace = if control.replaced_stale() {
                    Duration::from_secs(3)
                } else {
                    Duration::ZERO
                };
                probe_free_within(listen, grace).map_err(listen_err)?;
                (control, Vec::new(), false)
            } else {
                for s in &activated_fds {
                    listener::adopt(s, tfo).map_err(listen_err)?;
                }
                (control, activated_fds, true)
            }
        }
    };

    // Everything that can be checked alone has been: create what is missing,
    // and remove it again if a later step fails.
    let mut created = Created::default();
    if let Some(c) = &new_cert {
        created.claim_if_missing(&c.paths().key);
        created.claim_if_missing(&c.paths().cert);
        c.write()?;
    }
    created.claim_if_missing(&cfg.cache.path);
    let mut store = SessionStore::open_or_create(&cfg.store_config())?;
    if let Some(k) = &cache_key {
        store = store.seal_values_with(ValueKey::from_bytes(k));
        log_sealed_room(&store);
    }
    let mut sockets = sockets;
    if sockets.is_empty() {
        sockets.push(listener::bind(listen, BACKLOG, tfo).map_err(listen_err)?);
    }
    let (per_worker, sockets) = assign(sockets, workers, activated, tfo).map_err(listen_err)?;
    let bound = listener::local_addr(&sockets[0]).map_err(listen_err)?;
    note_if_fastopen_disabled(tfo);
    // Before any session is stored: which rustls session encoding the file holds,
    // and whether this build can read it (loud if not).
    let encoding = encoding::check_at_startup(&store, cfg.session_lifetime);
    let store = Arc::new(store);
    let resolver = Arc::new(CertResolver::new(keys));
    // What rustls stores through; the shared tier adopts found sessions
    // through the same lifetimes.
    let cache =
        tls::session_cache(&cfg, store.clone(), cfg.session_lifetime).with_stateful_ticket_cap();
    let tier = if cfg.cluster.enabled() {
        let settings = TierSettings {
            mode: cfg.cluster.mode,
            urls: cfg.cluster.url.clone(),
            lookup_timeout: cfg.cluster.lookup_timeout,
            write_queue: cfg.cluster.write_queue,
            keys: TierKeys::new(&cfg.cluster.key_prefix, cache_key.as_ref()),
        };
        if cache_key.is_none() {
            tracing::warn!(
                "session tier without a cache key: resumption secrets are stored in it in the \
                 clear; give every endpoint the same --cache-key file, or protect the tier as \
                 the README's \"Several endpoints\" says"
            );
        }
        Some(Tier::start(settings, cache.clone(), workers)?)
    } else {
        None
    };
    if let Some(k) = &mut cache_key {
        k.fill(0);
    }
    if let (Some(t), Some(_)) = (&tier, predecessor) {
        // A hand-over: the running process serves (with its own tier client)
        // until this one does, so give ours a moment to connect rather than
        // send the first devices that moved here to full handshakes.
        let end = Instant::now() + TIER_UP_WAIT;
        while !t.is_up() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !t.is_up() {
            tracing::warn!(
                "taking over with the session tier not up yet: lookups are answered as \
                 unavailable until it is"
            );
        }
    }
    let tls_cfgs = Arc::new(tls::server_configs_with(
        &cfg,
        resolver.clone(),
        store.clone(),
        cfg.session_lifetime,
        tier.as_ref().map(Tier::mirror),
    )?);
    let flusher = Flusher::start(store.clone(), cfg.flush_interval);

    let metrics: Arc<Vec<WorkerMetrics>> =
        Arc::new((0..workers).map(|_| WorkerMetrics::default()).collect());
    let shutdown = Arc::new(AtomicBool::new(false));
    let per_worker_conns = cfg.max_connections.div_ceil(workers).max(1);
    let cores = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut failed = None;
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let setup = worker::WorkerSetup {
            index,
            listeners,
            tls: tls_cfgs.clone(),
            backend: backend.clone(),
            max_connections: per_worker_conns,
            limits: crate::conn::Limits {
                handshake_timeout: cfg.handshake_timeout,
                idle_timeout: cfg.idle_timeout,
                backend_connect_timeout: cfg.backend_connect_timeout,
                proxy_protocol: cfg.proxy_protocol,
                http: (cfg.backend_protocol == crate::config::BackendProtocol::Http).then_some(
                    crate::conn::HttpLimits {
                        resumed_header: cfg.http_resumed_header,
                    },
                ),
            },
            backend_pool: match cfg.backend_protocol {
                crate::config::BackendProtocol::Http => cfg.backend_pool,
                crate::config::BackendProtocol::Tcp => 0,
            },
            backend_idle_timeout: cfg.backend_idle_timeout,
            drain_timeout: cfg.drain_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            tier: tier.as_ref().map(|t| t.port(index, cache.clone())),
        };
        let ready = ready_tx.clone();
        let pin = cores.as_ref().and_then(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .nth(index)
        });
        let spawned = std::thread::Builder::new()
            .name(format!("warmtls-w{index}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    let mut one = nix::sched::CpuSet::new();
                    if one.set(cpu).is_ok() {
                        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one);
                    }
                }
                event_loop.run(setup, ready)
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                failed = Some(ServeError::Worker(index, e.to_string()));
                break;
            }
        }
    }
    drop(ready_tx);
    for i in 0..handles.len() {
        if failed.is_some() {
            break;
        }
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(ServeError::Worker(i, e)),
            Err(_) => failed = Some(ServeError::Worker(i, "exited during start-up".into())),
        }
    }
    let stats = Arc::new(StatsSource::new(
        metrics.clone(),
        store.clone(),
        encoding,
        event_loop,
        tier.as_ref().map(Tier::status),
    ));
    let mut admin = None;
    if let (None, Some(addr)) = (&failed, cfg.metrics_addr()) {
        // Taking over: the running process holds the metrics port until it has
        // handed over, so ours waits for it.
        let wait = if predecessor.is_some() {
            ADMIN_PORT_WAIT
        } else {
            Duration::ZERO
        };
        match AdminListener::start(addr, stats.clone(), wait) {
            Ok(a) => {
                tracing::info!(addr = %a.local_addr(), "metrics at http://{}/metrics", a.local_addr());
                admin = Some(a);
            }
            Err(io) => {
                failed = Some(ServeError::Listen {
                    addr: addr.to_string(),
                    io,
                })
            }
        }
    }
    if let Some(e) = failed {
        // Workers that did start may have accepted connections already (from
        // sockets a running process shares with us): let them finish.
        shutdown.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    created.keep();
    Ok(Endpoint {
        cfg,
        store,
        flusher,
        resolver,
        tls_cfgs,
        tier,
        stats,
        admin,
        metrics,
        shutdown,
        handles,
        sockets,
        activated,
        control,
        bound,
        signals,
    })
}

/// [`listener::probe_free`], retried for up to `grace` while the address is in use.
fn probe_free_within(addr: SocketAddr, grace: Duration) -> std::io::Result<()> {
    let end = Instant::now() + grace;
    loop {
        match listener::probe_free(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

/// Give each of `workers` its listening sockets. Fewer sockets than workers:
/// bind more in the same SO_REUSEPORT group, or, for systemd's sockets (which
/// we must not add to: a restart through systemd keeps only its own), let
/// workers share them. More sockets than workers (a hand-over from a process
/// with more workers): some workers accept from several; none is closed, as
/// closing a listener resets the connections queued on it. Returns the
/// workers' copies and the distinct sockets.
fn assign(
    mut sockets: Vec<OwnedFd>,
    workers: usize,
    share: bool,
    tfo: u32,
) -> std::io::Result<(Vec<Vec<OwnedFd>>, Vec<OwnedFd>)> {
    assert!(!sockets.is_empty() && workers > 0);
    if !share && sockets.len() < workers {
        let addr = listener::local_addr(&sockets[0])?;
        while sockets.len() < workers {
            sockets.push(listener::bind(addr, BACKLOG, tfo)?);
        }
    }
    let mut per: Vec<Vec<OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    if sockets.len() >= workers {
        for (j, s) in sockets.iter().enumerate() {
            per[j % workers].push(s.try_clone()?);
        }
    } else {
        for (i, p) in per.iter_mut().enumerate() {
            p.push(sockets[i % sockets.len()].try_clone()?);
        }
    }
    Ok((per, sockets))
}

/// How the main loop ended.
enum Ending {
    /// SIGTERM/SIGINT.
    Stop,
    /// A successor serves with our sockets (its pid).
    HandedOver(Successor, u32),
}

/// The main loop: signals, control requests, a hand-over in progress, the
/// watchdog and the stats; then stop accepting, drain and exit.
fn run(ep: Endpoint, notify: &Notifier, relaunch: &Relaunch) -> Result<(), ServeError> {
    let info = InstanceInfo {
        pid: std::process::id(),
        listen: ep.bound.to_string(),
        cache: ep.cfg.cache.path.display().to_string(),
    };
    let mut watchdog = systemd::watchdog_interval()
        .filter(|_| notify.enabled())
        .map(|usec| Watchdog::new(usec, &ep.metrics));
    let mut successor: Option<Successor> = None;
    let mut last_stats = Instant::now();
    let ending = loop {
        std::thread::sleep(Duration::from_millis(50));
        if ep.signals.term.load(Ordering::Relaxed) {
            break Ending::Stop;
        }
        if ep.signals.hup.swap(false, Ordering::Relaxed) {
            match tls::load_certs(&ep.cfg) {
                Ok(keys) => {
                    ep.resolver.replace(keys);
                    tracing::info!("SIGHUP: certificates reloaded");
                }
                Err(e) => tracing::error!("SIGHUP: keeping the current certificates: {e}"),
            }
        }
        let mut upgrade_requested = ep.signals.usr2.swap(false, Ordering::Relaxed);
        let mut waiters = Vec::new();
        while let Some(req) = ep.control.next_request() {
            match req {
                ControlRequest::Status(s) => ControlRequest::answer_status(s, &info),
                ControlRequest::Upgrade(w) => {
                    waiters.push(w);
                    upgrade_requested = true;
                }
            }
        }
        if upgrade_requested && successor.is_none() {
            successor = begin_upgrade(relaunch, notify, &mut waiters);
        }
        if let Some(s) = successor.as_mut() {
            s.waiters.append(&mut waiters);
            let offer = Offer {
                listeners: ep.sockets.iter().map(|s| s.as_fd()).collect(),
                activated: ep.activated,
            };
            match s.poll(&ep.control, &offer) {
                Progress::Pending => {}
                Progress::Serving(pid) => {
                    let s = successor.take().expect("a successor is running");
                    break Ending::HandedOver(s, pid);
                }
                Progress::Failed(why) => {
                    tracing::error!("upgrade failed, still serving: {why}");
                    notify.ready(&format!(
                        "serving on {}; last upgrade failed: {why}",
                        ep.bound
                    ));
                    let s = successor.take().expect("a successor is running");
                    for w in s.abandon() {
                        w.answer(&Err(why.clone()));
                    }
                }
            }
        }
        if let Some(w) = watchdog.as_mut() {
            w.feed(notify, &ep.metrics);
        }
        if last_stats.elapsed() >= ep.cfg.stats_interval {
            last_stats = Instant::now();
            report(&ep.stats, ep.cfg.stats_file.as_deref());
        }
    };
    let Endpoint {
        cfg,
        store,
        flusher,
        tls_cfgs,
        mut tier,
        stats,
        mut admin,
        shutdown,
        handles,
        sockets,
        control,
        ..
    } = ep;
    // Stop accepting: the workers cancel their accepts on their next tick and
    // drop their copies of the sockets; ours go too.
    shutdown.store(true, Ordering::Relaxed);
    drop(sockets);
    let handed_over = match ending {
        Ending::Stop => {
            notify.stopping();
            if let Some(s) = successor.take() {
                for w in s.abandon() {
                    w.answer(&Err("the running process is stopping".into()));
                }
            }
            drop(control); // removes the socket: a new instance may start now
            tracing::info!(
                "shutting down: draining connections (up to {:?})",
                cfg.drain_timeout
            );
            false
        }
        Ending::HandedOver(mut s, pid) => {
            // systemd follows the successor from now on; it, not we, says READY.
            notify.main_pid(pid, &format!("handed over to pid {pid}; draining"));
            let waiters = std::mem::take(&mut s.waiters);
            s.confirm();
            for w in waiters {
                w.answer(&Ok(pid));
            }
            control.release();
            // The successor waits for the metrics port: let it go now, not
            // after the drain.
            admin = None;
            tracing::info!(successor = pid,
                "handed over: the new process accepts on the same sockets; draining connections (up to {:?})",
                cfg.drain_timeout);
            true
        }
    };
    for h in handles {
        let _ = h.join();
    }
    // The last handshakes' sessions get a moment to reach the tier.
    if let Some(t) = &mut tier {
        t.stop();
    }
    drop(admin);
    drop(flusher);
    store.flush()?;
    // After a hand-over the stats file is the successor's to write.
    let stats_file = if handed_over {
        None
    } else {
        cfg.stats_file.as_deref()
    };
    report(&stats, stats_file);
    drop(stats);
    drop(tier);
    drop(tls_cfgs);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close()?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Start a successor for an upgrade; on failure answer the waiters at once.
fn begin_upgrade(
    relaunch: &Relaunch,
    notify: &Notifier,
    waiters: &mut Vec<Waiter>,
) -> Option<Successor> {
    match Successor::spawn(relaunch) {
        Ok(s) => {
            tracing::info!(pid = s.pid(), "upgrade: started a new process to take over");
            notify.reloading(&format!("handing over to pid {}", s.pid()));
            Some(s)
        }
        Err(e) => {
            let why = format!("cannot start the new process: {e}");
            tracing::error!("upgrade failed, still serving: {why}");
            for w in waiters.drain(..) {
                w.answer(&Err(why.clone()));
            }
            None
        }
    }
}

/// Feeds systemd's watchdog at half its interval, but only while every worker's
/// loop still turns (a tick every 100 ms): a worker stuck for [`STUCK`] stops
/// the pings, and systemd restarts the service.
struct Watchdog {
    every: Duration,
    last: Instant,
    /// Per worker: its tick count, and when it last moved.
    seen: Vec<(u64, Instant)>,
    stalled: bool,
}

/// How long a worker's tick count may stand still before it counts as stuck.
const STUCK: Duration = Duration::from_secs(2);

impl Watchdog {
    fn new(interval: Duration, metrics: &[WorkerMetrics]) -> Watchdog {
        let now = Instant::now();
        Watchdog {
            every: interval / 2,
            last: now - interval,
            seen: metrics.iter().map(|m| (m.ticks(), now)).collect(),
            stalled: false,
        }
    }

    fn feed(&mut self, notify: &Notifier, metrics: &[WorkerMetrics]) {
        let now = Instant::now();
        for (seen, m) in self.seen.iter_mut().zip(metrics) {
            let t = m.ticks();
            if t != seen.0 {
                *seen = (t, now);
            }
        }
        if now.duration_since(self.last) < self.every {
            return;
        }
        match self
            .seen
            .iter()
            .position(|s| now.duration_since(s.1) > STUCK)
        {
            None => {
                notify.watchdog();
                self.last = now;
                self.stalled = false;
            }
            Some(w) if !self.stalled => {
                self.stalled = true;
                tracing::error!(
                    worker = w,
                    "a worker's loop has not turned for {STUCK:?}: not feeding the watchdog"
                );
            }
            Some(_) => {}
        }
    }
}

/// The key sealing cached values at rest, if the configuration names one: read
/// and checked (size, mode, owner, apart from the cache) before the cache is opened.
pub fn value_key(cfg: &Config) -> Result<Option<ValueKey>, crate::store::StoreError> {
    let Some(path) = &cfg.cache.key_file else {
        return Ok(None);
    };
    check_key_apart(path, &cfg.cache.path)?;
    ValueKey::load(path).map(Some)
}

/// The cache key's bytes, checked as [`value_key`] checks them: they seal the
/// local store's values and, with a shared tier, derive its names and seals.
fn cache_key_bytes(cfg: &Config) -> Result<Option<[u8; 32]>, crate::store::StoreError> {
    let Some(path) = &cfg.cache.key_file else {
        return Ok(None);
    };
    check_key_apart(path, &cfg.cache.path)?;
    ValueKey::read_file(path).map(Some)
}

/// Sealing takes 16 bytes of each slot: say which sessions still fit (rustls
/// values are 71 bytes for TLS 1.2 and TLS 1.3 SHA-384 suites, 55 for TLS 1.3
/// SHA-256 ones, plus 1 + the server name's length when the client sent one).
fn log_sealed_room(store: &SessionStore) {
    let room = store.max_put_len();
    let tls12_sni = room.saturating_sub(72);
    let tls13_sni = room.saturating_sub(56);
    if tls12_sni < 32 {
        tracing::warn!(room, "cache values sealed at rest: TLS 1.2 sessions with server names longer than {tls12_sni} characters (TLS 1.3 AES-128: {tls13_sni}) do not fit and will do full handshakes; to fit them, use 192-byte slots (--cache-slot-size 192, `[cache] slot_size = 192`; a new cache file)");
    } else {
        tracing::info!(room, "cache values sealed at rest");
    }
}

/// The stats line, and the stats file if there is one: both from one reading.
fn report(stats: &StatsSource, stats_file: Option<&std::path::Path>) {
    let st = stats.read();
    let (m, s) = (&st.conns, &st.store.counters);
    tracing::info!(
        conns = m.connections,
        active = m.active_connections,
        full = m.full_handshakes,
        resumed = m.resumed_handshakes,
        tls_errors = m.tls_errors,
        backend_errors = m.backend_errors,
        timeouts = m.timeouts,
        refused = m.refused,
        store_hits = s.hits,
        store_misses = s.misses,
        store_puts = s.puts,
        store_evictions = s.evictions,
        store_undecodable = s.undecodable,
        "stats"
    );
    let c = &st.cluster;
    if let (Some(up), Some(t)) = (c.up, &c.tier) {
        tracing::info!(
            tier = if up { "up" } else { "down" },
            local_hits = c.conns.local_hits,
            lookups = c.conns.lookups,
            found = c.conns.found,
            missing = c.conns.missing,
            timeouts = c.conns.timeouts,
            unavailable = c.conns.unavailable,
            zero_rtt_refused = c.conns.zero_rtt_refused,
            writes = t.writes,
            writes_dropped = t.writes_dropped,
            write_errors = t.write_errors,
            "tier"
        );
    }
    if let Some(path) = stats_file {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_string(&st).unwrap_or_default();
        if std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, path))
            .is_err()
        {
            tracing::warn!(path = %path.display(), "cannot write the stats file");
        }
    }
}
