//! `warmtls serve`: open the store, build TLS, bind one listener per worker, start
//! the workers, then watch signals (TERM/INT: drain and exit; HUP: reload
//! certificates) and write the periodic stats.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::AdminListener;
use crate::config::Config;
use crate::metrics::{StatsSource, WorkerMetrics};
use crate::runtime::{listener, worker, EventLoop};
use crate::store::{check_key_apart, encoding, Flusher, SessionStore, ValueKey};
use crate::tls::{self, CertResolver};

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
}

/// What to do about a listen address the kernel refused.
fn listen_hint(io: &std::io::Error) -> &'static str {
    match io.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            "; another process listens there (`ss -ltnp` shows which): stop it, or choose \
             another address (--listen, `listen` in the file)"
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

/// Run the endpoint until SIGTERM/SIGINT. Prints `warmtls: listening on ADDR` on
/// stdout once every worker listens.
pub fn serve(cfg: Config) -> Result<(), ServeError> {
    cfg.validate()?;
    // Before touching the cache file: which event loop runs (a host that forbids
    // io_uring falls back to epoll under `auto`, and gets a clear error and no
    // side effects when io_uring was asked for).
    let event_loop = EventLoop::choose(cfg.runtime)?;
    let workers = cfg.worker_count();
    raise_fd_limit(cfg.max_connections);

    let value_key = value_key(&cfg)?;
    let mut store = SessionStore::open_or_create(&cfg.store_config())?;
    if let Some(k) = value_key {
        store = store.seal_values_with(k);
        log_sealed_room(&store);
    }
    // Before any session is stored: which rustls session encoding the file holds,
    // and whether this build can read it (loud if not).
    let encoding = encoding::check_at_startup(&store, cfg.session_lifetime);
    let store = Arc::new(store);
    let flusher = Flusher::start(store.clone(), cfg.flush_interval);
    let resolver = Arc::new(CertResolver::new(tls::load_certs(&cfg)?));
    let tls_cfgs = Arc::new(tls::server_configs(
        &cfg,
        resolver.clone(),
        store.clone(),
        cfg.session_lifetime,
    )?);

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).map_err(ServeError::Signals)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(ServeError::Signals)?;

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
    let listen_err = |io| ServeError::Listen {
        addr: cfg.listen.clone(),
        io,
    };
    let tfo = cfg.tcp_fastopen;
    let first = listener::bind(listen, 4096, tfo).map_err(listen_err)?;
    let bound = listener::local_addr(&first).map_err(listen_err)?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(listener::bind(bound, 4096, tfo).map_err(listen_err)?);
    }
    note_if_fastopen_disabled(tfo);

    let metrics: Arc<Vec<WorkerMetrics>> =
        Arc::new((0..workers).map(|_| WorkerMetrics::default()).collect());
    let shutdown = Arc::new(AtomicBool::new(false));
    let per_worker = cfg.max_connections.div_ceil(workers).max(1);
    let cores = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (index, l) in listeners.into_iter().enumerate() {
        let setup = worker::WorkerSetup {
            index,
            listener: l,
            tls: tls_cfgs.clone(),
            backend: backend.clone(),
            max_connections: per_worker,
            limits: crate::conn::Limits {
                handshake_timeout: cfg.handshake_timeout,
                idle_timeout: cfg.idle_timeout,
                backend_connect_timeout: cfg.backend_connect_timeout,
                proxy_protocol: cfg.proxy_protocol,
            },
            drain_timeout: cfg.drain_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let ready = ready_tx.clone();
        let pin = cores.as_ref().and_then(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .nth(index)
        });
        let h = std::thread::Builder::new()
            .name(format!("warmtls-w{index}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    let mut one = nix::sched::CpuSet::new();
                    if one.set(cpu).is_ok() {
                        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one);
                    }
                }
                event_loop.run(setup, ready)
            })
            .map_err(|e| ServeError::Worker(index, e.to_string()))?;
        handles.push(h);
    }
    drop(ready_tx);
    for i in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.store(true, Ordering::Relaxed);
                return Err(ServeError::Worker(i, e));
            }
            Err(_) => return Err(ServeError::Worker(i, "exited during start-up".into())),
        }
    }
    let stats = Arc::new(StatsSource::new(
        metrics.clone(),
        store.clone(),
        encoding,
        event_loop,
    ));
    let admin =
        match cfg.metrics_addr() {
            Some(addr) => Some(AdminListener::start(addr, stats.clone()).map_err(|io| {
                ServeError::Listen {
                    addr: addr.to_string(),
                    io,
                }
            })?),
            None => None,
        };
    if let Some(a) = &admin {
        tracing::info!(addr = %a.local_addr(), "metrics at http://{}/metrics", a.local_addr());
    }
    tracing::info!(%bound, workers, runtime = event_loop.name(), backend = %backend, cache = %cfg.cache.path.display(),
        previous_shutdown_unclean = store.previous_shutdown_unclean(), "serving");
    println!("warmtls: listening on {bound}");
    let _ = std::io::stdout().flush();

    let mut last_stats = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if term.load(Ordering::Relaxed) {
            break;
        }
        if hup.swap(false, Ordering::Relaxed) {
            match tls::load_certs(&cfg) {
                Ok(keys) => {
                    resolver.replace(keys);
                    tracing::info!("SIGHUP: certificates reloaded");
                }
                Err(e) => tracing::error!("SIGHUP: keeping the current certificates: {e}"),
            }
        }
        if last_stats.elapsed() >= cfg.stats_interval {
            last_stats = Instant::now();
            report(&stats, cfg.stats_file.as_deref());
        }
    }
    tracing::info!(
        "shutting down: draining connections (up to {:?})",
        cfg.drain_timeout
    );
    shutdown.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    drop(admin);
    drop(flusher);
    store.flush()?;
    report(&stats, cfg.stats_file.as_deref());
    drop(stats);
    drop(tls_cfgs);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close()?;
    }
    tracing::info!("stopped");
    Ok(())
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
