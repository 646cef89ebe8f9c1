//! The shared session tier: several endpoints behind one load balancer share
//! their sessions through Redis/Valkey (one server, or a Redis Cluster), so a
//! device that lands on another host resumes, and a TLS 1.3 ticket is redeemed
//! — its 0-RTT data accepted — at most once in the whole fleet.
//!
//! The local store stays the first level: a local hit costs no round trip. What
//! the tier adds:
//!
//! - **Writes** ([`SessionMirror`], called by the store adapter): every session
//!   rustls stores is queued for the tier (`SET name value PX ttl NX`), a TLS
//!   1.3 ticket taken locally is queued for deletion, a TLS 1.2 session resumed
//!   locally is written again with a fresh expiry (which also heals a tier
//!   restarted empty). Queued, bounded, never waited for;
//!   a full queue drops the write (counted) and the local copy stays.
//! - **Lookups**, asked by a connection parked in the machine (`conn`) before
//!   rustls sees its ClientHello: a TLS 1.2 session ID is fetched with its
//!   expiry refreshed (`GETEX`); a TLS 1.3 ticket is *redeemed*: read and
//!   deleted in one atomic step (a Lua script), and when the ClientHello
//!   carries 0-RTT data and the ticket is not there, a short tombstone is left
//!   so a write of it still on its way cannot land and be redeemed elsewhere.
//!   A found session is opened and put in this host's store, then the
//!   connection is told [`Outcome::Found`] and rustls resumes it from there.
//!   0-RTT is accepted only after this host's redemption returned the ticket.
//! - **Failure is an outage of speed**: after a run of failed or timed-out
//!   commands the tier is marked down; lookups are answered `Unavailable` at
//!   once and writes dropped (counted) while one probe reconnects with
//!   back-off; each change of state is logged once.
//!
//! Threads: one side thread runs redis-rs's async client (per-command routing
//! to a cluster's shards, commands in flight multiplexed and written together
//! on one connection per node) on a one-thread tokio runtime. Workers hand it
//! requests through two bounded queues and get outcomes back through a
//! per-worker [`Inbox`]: a queue and an eventfd any event loop can wait on
//! (io_uring posts a read on it; an epoll loop would register it).
//!
//! This module must never make a worker wait: everything a worker calls here
//! is a `try_send` or a lock held for a `Vec` push.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TierMode;
use crate::conn::hello::SessionKey;
use crate::conn::TierView;
use crate::store::{SessionCache, SessionMirror};

mod client;
mod inbox;
pub mod keys;

pub use inbox::Inbox;
pub use keys::{OpenError, TierKeys};

/// The most 0-RTT bytes `early_data` may allow with a tier: a 0-RTT request the
/// tier cannot vouch for is refused through a configuration without early
/// data, and rustls then skips at most one record's worth of it.
pub const MAX_EARLY_DATA_WITH_TIER: u32 = 16 * 1024;

/// How long a tombstone left by a 0-RTT redemption that found nothing keeps a
/// late write of that ticket out. Writes are dropped rather than sent once they
/// have waited [`WRITE_MAX_AGE`], so this only has to cover a write already on
/// the wire.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// A queued write older than this is dropped, not sent (see [`TOMBSTONE_TTL`]).
pub const WRITE_MAX_AGE: Duration = Duration::from_secs(10);

/// Lookups waiting for the tier thread at most (each is one parked
/// connection; a full queue answers `Unavailable` at once).
const LOOKUP_QUEUE: usize = 16 * 1024;

/// What to do with a key in the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOp {
    /// A TLS 1.2 session ID: read it and refresh its expiry (multi-use).
    Fetch,
    /// A TLS 1.3 ticket: read and delete it atomically (single use); with
    /// `tombstone`, leave a short tombstone if it is not there (the ClientHello
    /// carries 0-RTT data).
    Redeem { tombstone: bool },
}

/// A lookup a parked connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupRequest {
    pub key: SessionKey,
    pub op: LookupOp,
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Found (and, for a ticket, removed from the tier by this host); now in
    /// this host's store.
    Found,
    /// The tier answered: not there (or not usable here: another key, too
    /// large for a slot).
    Missing,
    /// No answer within `lookup_timeout`.
    TimedOut,
    /// Not asked: the tier is down, or its queue is full.
    Unavailable,
}

/// The tier's settings, from `[cluster]`.
#[derive(Debug)]
pub struct TierSettings {
    pub mode: TierMode,
    pub urls: Vec<String>,
    pub lookup_timeout: Duration,
    pub write_queue: usize,
    pub keys: TierKeys,
}

/// Why the tier could not be set up (a tier that is down is not an error).
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("cluster.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot start the session tier thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot make the tier's wake-up eventfd: {0}")]
    EventFd(nix::errno::Errno),
}

/// A lookup on its way to the tier thread.
#[derive(Debug)]
struct Lookup {
    worker: usize,
    token: u64,
    req: LookupRequest,
    queued: Instant,
}

/// A write on its way to the tier thread (raw session keys: names and seals
/// are made there, off the workers).
#[derive(Debug)]
enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
        born: u64,
        queued: Instant,
    },
    Delete {
        key: Vec<u8>,
        queued: Instant,
    },
    /// A TLS 1.2 session resumed from this host's store: written again with a
    /// fresh expiry (so a tier restarted empty, or one that missed the first
    /// write during an outage, has it again after its next use).
    Refresh {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
        born: u64,
        queued: Instant,
    },
}

impl Write {
    fn queued(&self) -> Instant {
        match self {
            Write::Put { queued, .. }
            | Write::Delete { queued, .. }
            | Write::Refresh { queued, .. } => *queued,
        }
    }
}

macro_rules! counters {
    ($(#[$m:meta])* $name:ident, $snap:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        struct $name { $($f: AtomicU64),* }
        /// The tier thread's counters at one instant (`cluster` in the stats JSON).
        #[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
        pub struct $snap { $($(#[$fm])* pub $f: u64),* }
        impl $name {
            fn snapshot(&self) -> $snap {
                $snap { $($f: self.$f.load(Ordering::Relaxed)),* }
            }
        }
    };
}

counters!(
    /// What the tier thread and the mirror count (plain counters, summed on read).
    Counters,
    TierCounters {
        /// Lookups sent to the tier.
        tier_lookups,
        /// Of those: found (and put in the local store).
        tier_found,
        /// Of those: answered "not there".
        tier_missing,
        /// Of those: no answer within lookup_timeout.
        tier_timeouts,
        /// Of those: failed (connection, server error).
        tier_errors,
        /// Lookups not sent: the tier was down or its queue full.
        tier_unavailable,
        /// Sum of the lookup round trips, µs (with tier_lookups: the mean).
        lookup_rtt_us_sum,
        /// Sessions written to the tier.
        writes,
        /// Ticket deletions and TLS 1.2 session rewrites sent.
        deletes,
        refreshes,
        /// Writes the tier refused or that failed (the local copy stays).
        write_errors,
        /// Writes dropped: queue full, tier down, or waited too long.
        writes_dropped,
        /// Values found that did not open (another key, altered, foreign).
        decrypt_failures,
        /// Found values this host's store could not hold (too large for a slot).
        adopt_failures,
        /// Times the tier went down, and came back.
        down_events,
        reconnects,
    }
);

/// What workers and the adapter share with the tier thread.
#[derive(Debug)]
struct Shared {
    lookups: tokio::sync::mpsc::Sender<Lookup>,
    writes: tokio::sync::mpsc::Sender<Write>,
    inboxes: Vec<Inbox>,
    counters: Counters,
    up: AtomicBool,
    lookup_timeout: Duration,
    /// The writer side is closed at shutdown: nothing more is queued.
    closed: AtomicBool,
}

impl Shared {
    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn queue_write(&self, w: Write) {
        if !self.up.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) {
            self.count(&self.counters.writes_dropped);
            return;
        }
        if self.writes.try_send(w).is_err() {
            self.count(&self.counters.writes_dropped);
        }
    }
}

/// The tier of one endpoint process: its thread, queues and counters.
pub struct Tier {
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    sealed: bool,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("up", &self.is_up())
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl Tier {
    /// Start the tier thread for `workers` workers. `cache` is where found
    /// sessions are put (this host's store, without a mirror). Returns at once:
    /// the first connection is made in the background, and until it is up,
    /// lookups are `Unavailable` and writes dropped.
    pub fn start(
        settings: TierSettings,
        cache: SessionCache,
        workers: usize,
    ) -> Result<Tier, TierError> {
        let target = client::Target::parse(settings.mode, &settings.urls)?;
        let (lookups, lookups_rx) = tokio::sync::mpsc::channel(LOOKUP_QUEUE);
        let (writes, writes_rx) = tokio::sync::mpsc::channel(settings.write_queue.max(1));
        let inboxes = (0..workers)
            .map(|_| Inbox::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TierError::EventFd)?;
        let shared = Arc::new(Shared {
            lookups,
            writes,
            inboxes,
            counters: Counters::default(),
            up: AtomicBool::new(false),
            lookup_timeout: settings.lookup_timeout,
            closed: AtomicBool::new(false),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        let sealed = settings.keys.seals();
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            let run = client::Runner {
                shared,
                keys: settings.keys,
                target,
                cache: cache.without_mirror(),
            };
            std::thread::Builder::new()
                .name("warmtls-tier".into())
                .spawn(move || run.run(lookups_rx, writes_rx, stop))
                .map_err(TierError::Thread)?
        };
        Ok(Tier {
            shared,
            stop,
            thread: Some(thread),
            sealed,
        })
    }

    /// What the store adapter tells about rustls' puts, takes and reads.
    pub fn mirror(&self) -> Arc<dyn SessionMirror> {
        Arc::new(Mirror(self.shared.clone()))
    }

    /// Worker `worker`'s handle: lookups out, outcomes in. `cache` is the
    /// store the worker probes before asking the tier.
    pub fn port(&self, worker: usize, cache: SessionCache) -> TierPort {
        assert!(worker < self.shared.inboxes.len(), "one inbox per worker");
        TierPort {
            shared: self.shared.clone(),
            worker,
            cache,
        }
    }

    /// Whether the tier is reachable (as last seen).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Whether values are sealed in the tier.
    pub fn seals(&self) -> bool {
        self.sealed
    }

    /// The tier thread's counters.
    pub fn counters(&self) -> TierCounters {
        self.shared.counters.snapshot()
    }

    /// A handle the stats reports read the tier's state through.
    pub fn status(&self) -> TierStatus {
        TierStatus {
            shared: self.shared.clone(),
            sealed: self.sealed,
        }
    }

    /// Stop the tier thread: writes still queued get a moment to go out.
    pub fn stop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The adapter's view of the tier: queue, never wait.
#[derive(Debug)]
struct Mirror(Arc<Shared>);

impl SessionMirror for Mirror {
    fn put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration, born: u64) {
        self.0.queue_write(Write::Put {
            key,
            value,
            ttl,
            born,
            queued: Instant::now(),
        });
    }

    fn taken(&self, key: &[u8]) {
        self.0.queue_write(Write::Delete {
            key: key.to_vec(),
            queued: Instant::now(),
        });
    }

    fn read(&self, key: &[u8], value: &[u8], ttl: Duration, born: u64) {
        self.0.queue_write(Write::Refresh {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl,
            born,
            queued: Instant::now(),
        });
    }
}

/// One worker's handle on the tier: what a connection machine and its driver
/// need, and nothing that blocks.
#[derive(Debug, Clone)]
pub struct TierPort {
    shared: Arc<Shared>,
    worker: usize,
    cache: SessionCache,
}

impl TierPort {
    /// What the connection machine needs of the tier (see `conn::Env`).
    pub fn view(&self) -> TierView {
        TierView {
            cache: self.cache.clone(),
            lookup_timeout: self.shared.lookup_timeout,
        }
    }

    /// Send a lookup; its outcome comes back through [`TierPort::inbox`] with
    /// `token`. `false`: not sent (tier down or queue full) — the caller goes
    /// on as if the outcome were [`Outcome::Unavailable`].
    pub fn submit(&self, token: u64, req: LookupRequest) -> bool {
        let s = &self.shared;
        if !s.up.load(Ordering::Relaxed) {
            s.count(&s.counters.tier_unavailable);
            return false;
        }
        let sent = s
            .lookups
            .try_send(Lookup {
                worker: self.worker,
                token,
                req,
                queued: Instant::now(),
            })
            .is_ok();
        if !sent {
            s.count(&s.counters.tier_unavailable);
        }
        sent
    }

    /// This worker's inbox: outcomes, and the eventfd that says there are some.
    pub fn inbox(&self) -> &Inbox {
        &self.shared.inboxes[self.worker]
    }
}

/// The tier's state as the stats reports show it (`cluster` in the stats JSON,
/// `warmtls_cluster_*` on the metrics page).
#[derive(Debug, Clone)]
pub struct TierStatus {
    shared: Arc<Shared>,
    sealed: bool,
}

impl TierStatus {
    /// Whether the tier is reachable (as last seen).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Whether values are sealed in the tier.
    pub fn seals(&self) -> bool {
        self.sealed
    }

    /// The tier thread's counters.
    pub fn counters(&self) -> TierCounters {
        self.shared.counters.snapshot()
    }
}
