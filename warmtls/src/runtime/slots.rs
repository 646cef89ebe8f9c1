//! What a worker holds whichever driver carries out its connections' actions:
//! the slab of connection [`Slot`]s, the handles every connection's machine
//! borrows while it handles an event (its `Env`), the accept accounting, the
//! deadlines on the timer wheel and the drain on shutdown.
//!
//! A driver — io_uring completions (`worker`) or epoll readiness (`epoll`) —
//! turns what the kernel reports into the machine's events and carries out the
//! [`Action`]s the machine hands back, through [`Driver::act`]. This module
//! decides when a connection is admitted, when it times out and when it is
//! freed, so both drivers do those alike, and counts accepts, refusals and
//! active connections for both. It never reads or writes a socket.
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, UnixAddr};
use slab::Slab;

use super::timer::{Entry, TimerWheel};
use super::token::{ConnToken, Op};
use crate::config::Backend;
use crate::conn::{Action, BackendLog, BufPool, Conn, Env, Limits, Side, TierView};
use crate::metrics::{Metric, WorkerMetrics};
use crate::tier::{Outcome, TierPort};
use crate::tls::ServerConfigs;

/// The period of a worker's tick (timeouts, drain, accept re-arm), for both drivers.
pub const TICK: Duration = Duration::from_millis(100);
/// How far ahead the timer wheel files deadlines; later ones are re-filed.
const TIMER_HORIZON: Duration = Duration::from_secs(64);
/// Send buffers made at start-up (more are made, then reused, up to the bound).
const WARM_SEND_BUFFERS: usize = 64;

/// What a worker needs; all shared state is behind `Arc`s.
pub struct WorkerSetup {
    pub index: usize,
    /// Listening sockets this worker accepts from (at least one; more after a
    /// hand-over from a process with more workers).
    pub listeners: Vec<OwnedFd>,
    pub tls: Arc<ServerConfigs>,
    pub backend: Backend,
    pub max_connections: usize,
    pub limits: Limits,
    /// Idle kept-alive backend connections kept (http mode; 0: none).
    pub backend_pool: usize,
    pub backend_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub metrics: Arc<Vec<WorkerMetrics>>,
    pub shutdown: Arc<AtomicBool>,
    /// This worker's handle on the shared session tier, if there is one.
    pub tier: Option<TierPort>,
}

/// A connection and the resources its worker holds for it.
pub struct Slot<Io> {
    pub conn: Conn,
    /// The slab slot's incarnation, in every token of this connection.
    pub gen: u32,
    pub client: OwnedFd,
    pub backend: Option<OwnedFd>,
    /// The timer-wheel tick of this connection's live timer entry.
    timer_tick: u64,
    /// What the driver keeps beside the machine (epoll: readiness and posted
    /// operations; io_uring: the sends linked before a receive).
    pub io: Io,
}

impl<Io> Slot<Io> {
    /// The socket of `side`, if it has one yet.
    pub fn fd(&self, side: Side) -> Option<RawFd> {
        match side {
            Side::Client => Some(self.client.as_raw_fd()),
            Side::Backend => self.backend.as_ref().map(|b| b.as_raw_fd()),
        }
    }
}

/// Carries out a connection's actions on real sockets.
pub trait Driver {
    /// What the driver keeps per connection.
    type Io: Default;

    /// Carry out `action` for the connection in `slot` (slab key `key`). The
    /// driver may complete it at once, reporting the event to `slot.conn` with
    /// `env` (as epoll does when the socket is ready), or later.
    fn act(
        &mut self,
        key: usize,
        slot: &mut Slot<Self::Io>,
        action: Action,
        backend: &BackendAddr,
        env: &mut Env<'_>,
    );

    /// The connection asks for nothing more for now: post what `act` held
    /// back (io_uring: a send it hoped to link before a receive).
    fn flush(&mut self, _key: usize, _slot: &mut Slot<Self::Io>) {}

    /// The connection is finished and freed: close its sockets.
    fn close(&mut self, slot: Slot<Self::Io>);

    /// The endpoint is shutting down: stop taking connections. A listening
    /// socket another process also holds (a hand-over) stays open, its queue
    /// intact, for that process.
    fn stop_accepting(&mut self);
}

/// The backend's socket family and address, resolved once per worker; boxed so
/// that a connect SQE can point at it while the worker moves.
pub struct BackendAddr {
    pub family: AddressFamily,
    pub addr: Box<SockaddrStorage>,
}

impl BackendAddr {
    fn resolve(b: &Backend) -> Result<BackendAddr, String> {
        let (family, addr) = match b {
            Backend::Tcp(a) => (
                if a.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                },
                SockaddrStorage::from(*a),
            ),
            Backend::Unix(p) => {
                let u = UnixAddr::new(p.as_path())
                    .map_err(|e| format!("backend unix:{}: {e}", p.display()))?;
                (AddressFamily::Unix, super::listener::unix_storage(&u))
            }
        };
        Ok(BackendAddr {
            family,
            addr: Box::new(addr),
        })
    }

    /// A non-blocking socket for the backend (TCP_NODELAY for TCP).
    pub fn socket(&self) -> Result<OwnedFd, nix::errno::Errno> {
        let fd = socket::socket(
            self.family,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        if self.family != AddressFamily::Unix {
            let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
        }
        Ok(fd)
    }
}

/// What every connection's machine borrows while it handles an event.
struct Shared {
    index: usize,
    tls: Arc<ServerConfigs>,
    limits: Limits,
    metrics: Arc<Vec<WorkerMetrics>>,
    pool: BufPool,
    backend_log: BackendLog,
    tier: Option<TierView>,
}

impl Shared {
    fn env(&mut self, now: Instant) -> Env<'_> {
        Env {
            now,
            limits: &self.limits,
            tls: &self.tls,
            metrics: &self.metrics[self.index],
            pool: &mut self.pool,
            backend_log: &mut self.backend_log,
            tier: self.tier.as_ref(),
        }
    }

    fn m(&self) -> &WorkerMetrics {
        &self.metrics[self.index]
    }
}

/// A live connection, the `Env` to hand it an event with, and the backend's
/// address (see [`Slots::live`]).
pub struct Live<'a, Io> {
    pub slot: &'a mut Slot<Io>,
    pub env: Env<'a>,
    pub backend: &'a BackendAddr,
}

/// A worker's connections and everything both drivers do with them.
pub struct Slots<Io> {
    slab: Slab<Slot<Io>>,
    shared: Shared,
    timers: TimerWheel,
    next_gen: u32,
    max_connections: usize,
    backend: BackendAddr,
    drain_timeout: Duration,
    shutdown: Arc<AtomicBool>,
    drain_deadline: Option<Instant>,
    /// The time of the current batch of events (one clock read per batch).
    pub now: Instant,
    due: Vec<(u64, Entry)>,
    /// The shared session tier: lookups out (`Action::Lookup`, carried out here
    /// for both drivers), outcomes in through its inbox, whose eventfd the
    /// driver waits on ([`Slots::tier_wake_fd`], then [`Slots::tier_woke`]).
    tier: Option<TierPort>,
    tier_outcomes: Vec<(u64, Outcome)>,
}

impl<Io: Default> Slots<Io> {
    /// The connections of worker `s`, none yet; the listener stays with the caller.
    pub fn new(s: &WorkerSetup) -> Result<Slots<Io>, String> {
        let now = Instant::now();
        let cap = s.max_connections;
        Ok(Slots {
            slab: Slab::with_capacity(cap.min(65_536)),
            shared: Shared {
                index: s.index,
                tls: s.tls.clone(),
                limits: s.limits.clone(),
                metrics: s.metrics.clone(),
                // Two outboxes of two buffers per connection at most.
                pool: BufPool::new(4 * cap, WARM_SEND_BUFFERS),
                backend_log: BackendLog::new(s.backend.to_string(), s.index),
                tier: s.tier.as_ref().map(TierPort::view),
            },
            timers: TimerWheel::new(now, TICK, TIMER_HORIZON),
            next_gen: 0,
            max_connections: cap,
            backend: BackendAddr::resolve(&s.backend)?,
            drain_timeout: s.drain_timeout,
            shutdown: s.shutdown.clone(),
            drain_deadline: None,
            now,
            due: Vec::new(),
            tier: s.tier.clone(),
            tier_outcomes: Vec::with_capacity(256),
        })
    }

    /// The shared session tier's wake-up eventfd, if there is a tier: readable
    /// when lookups' outcomes wait in this worker's inbox.
    pub fn tier_wake_fd(&self) -> Option<RawFd> {
        self.tier.as_ref().map(|t| t.inbox().wake_raw_fd())
    }

    /// The same eventfd, borrowed (for a driver that reads it itself).
    pub fn tier_wake(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.tier.as_ref().map(|t| t.inbox().wake_fd())
    }

    /// The tier's eventfd said outcomes are waiting (the driver has consumed
    /// its count): hand each to its connection, if it is still the connection
    /// that asked, and carry out what it asks next.
    pub fn tier_woke<D: Driver<Io = Io>>(&mut self, driver: &mut D) {
        let Some(tier) = &self.tier else {
            return;
        };
        let mut outcomes = std::mem::take(&mut self.tier_outcomes);
        tier.inbox().drain(&mut outcomes);
        for &(ud, outcome) in &outcomes {
            let Some(t) = ConnToken::decode(ud) else {
                continue;
            };
            let key = t.key as usize;
            let Some(slot) = self.slab.get_mut(key).filter(|s| s.gen == t.gen) else {
                continue; // the connection is gone (it stopped waiting)
            };
            let mut env = self.shared.env(self.now);
            slot.conn.on_lookup(outcome, &mut env);
            self.carry_out(driver, key);
        }
        outcomes.clear();
        self.tier_outcomes = outcomes;
    }

    /// This worker's index (for log lines).
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// The connection in slab slot `key`, if it is still incarnation `gen`,
    /// with what a driver needs to hand it an event.
    pub fn live(&mut self, key: usize, gen: u32) -> Option<Live<'_, Io>> {
        let slot = self.slab.get_mut(key).filter(|s| s.gen == gen)?;
        Some(Live {
            slot,
            env: self.shared.env(self.now),
            backend: &self.backend,
        })
    }

    /// The connection in slab slot `key`, whatever its incarnation.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut Slot<Io>> {
        self.slab.get_mut(key)
    }

    /// The worker's limits (http mode, PROXY header ...).
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The worker's counters.
    pub fn metrics(&self) -> &WorkerMetrics {
        self.shared.m()
    }

    /// An accept failed (not merely "nothing to accept"): counted and said.
    pub fn accept_failed(&self, e: std::io::Error) {
        self.shared.m().add(Metric::AcceptErrors, 1);
        tracing::warn!(
            worker = self.shared.index,
            "accept failed: {e}; backing off until the next tick"
        );
    }

    /// Take an accepted connection: refused (counted, closed) when the worker is
    /// full, else given a slot, which `register` (the driver's bookkeeping for
    /// the socket, with the slot's token) must accept. A connection accepted
    /// while draining (its accept was on its way) is served like any other:
    /// closing it would reset a device that did nothing wrong, and after a
    /// hand-over nobody else will take it. `peer_later`: the driver will report
    /// the device's address itself ([`Conn::on_peer_address`]) before its first
    /// bytes; else http mode asks getpeername(2) here. Returns the slot's key;
    /// the caller then [`Slots::carry_out`]s it.
    pub fn admit(
        &mut self,
        fd: OwnedFd,
        peer_later: bool,
        register: impl FnOnce(&OwnedFd, ConnToken) -> std::io::Result<()>,
    ) -> Option<usize> {
        if self.slab.len() >= self.max_connections {
            self.shared.m().add(Metric::Refused, 1);
            return None; // dropping `fd` closes it
        }
        let gen = self.next_gen.wrapping_add(1) & ConnToken::GEN_MASK;
        let key = self.slab.vacant_key();
        if let Err(e) = register(&fd, ConnToken::new(key, gen, super::token::Op::Client)) {
            self.accept_failed(e);
            return None;
        }
        self.next_gen = gen;
        let addresses = if self.shared.limits.proxy_protocol {
            client_addresses(&fd)
        } else if self.shared.limits.http.is_some() && !peer_later {
            client_peer(&fd)
        } else {
            None
        };
        let inserted = self.slab.insert(Slot {
            conn: Conn::new(self.now, &self.shared.limits, addresses),
            gen,
            client: fd,
            backend: None,
            timer_tick: u64::MAX,
            io: Io::default(),
        });
        debug_assert_eq!(inserted, key);
        self.shared.m().add(Metric::Connections, 1);
        self.shared.m().add(Metric::Active, 1);
        Some(key)
    }

    /// Carry out what the connection asks for until it asks for nothing; free
    /// it if it is finished, else make sure its deadline is on the wheel.
    pub fn carry_out<D: Driver<Io = Io>>(&mut self, driver: &mut D, key: usize) {
        loop {
            let Some(slot) = self.slab.get_mut(key) else {
                return;
            };
            let mut env = self.shared.env(self.now);
            let Some(action) = slot.conn.poll(&mut env) else {
                break;
            };
            if let Action::Lookup = action {
                // Both drivers alike: the tier's answer comes back through its
                // inbox, not through the kernel.
                let token = ConnToken::new(key, slot.gen, Op::TierLookup).encode();
                let sent = match (&self.tier, slot.conn.lookup_request()) {
                    (Some(tier), Some(req)) => tier.submit(token, req),
                    _ => false,
                };
                if !sent {
                    // Tier down or its queue full: on as if it had said so.
                    slot.conn.on_lookup(Outcome::Unavailable, &mut env);
                }
                continue;
            }
            driver.act(key, slot, action, &self.backend, &mut env);
        }
        let slot = &mut self.slab[key];
        driver.flush(key, slot);
        if slot.conn.is_finished() {
            let mut slot = self.slab.remove(key);
            slot.conn.release(&mut self.shared.pool);
            driver.close(slot);
            self.shared.m().sub(Metric::Active, 1);
            return;
        }
        if let Some(at) = slot.conn.deadline() {
            let tick = self.timers.tick_for(at);
            if tick < slot.timer_tick {
                slot.timer_tick = tick;
                self.timers.insert(tick, (key as u32, slot.gen));
            }
        }
    }

    /// The periodic tick at `now`: start draining once shutdown is asked for
    /// (the driver stops accepting), close everything once the drain time is
    /// up, and hand each connection whose deadline passed its timeout.
    pub fn tick<D: Driver<Io = Io>>(&mut self, driver: &mut D, now: Instant) {
        self.now = now;
        self.shared.m().add(Metric::Ticks, 1);
        self.shared.backend_log.tick(now);
        if self.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.drain_deadline = Some(now + self.drain_timeout);
            driver.stop_accepting();
            tracing::debug!(
                worker = self.shared.index,
                open = self.slab.len(),
                "draining"
            );
        }
        if self.drain_deadline.is_some_and(|d| now > d) {
            // Drain time is up: everything still open goes.
            let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
            for key in keys {
                let mut env = self.shared.env(now);
                self.slab[key].conn.abort(&mut env);
                self.carry_out(driver, key);
            }
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.timers.expire(now, &mut due);
        for &(tick, (key, gen)) in &due {
            let key = key as usize;
            let Some(slot) = self.slab.get_mut(key) else {
                continue;
            };
            if slot.gen != gen || slot.timer_tick != tick {
                continue; // a stale entry: the connection has a newer one
            }
            slot.timer_tick = u64::MAX;
            let mut env = self.shared.env(now);
            slot.conn.on_timeout(&mut env);
            // Files the deadline again if it is still ahead.
            self.carry_out(driver, key);
        }
        self.due = due;
    }

    /// Shutting down (no new connections).
    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// Draining, `accepts_ended` (no accepted connection can still be on its
    /// way to us) and every connection is done; or well past the drain deadline.
    pub fn finished(&self, accepts_ended: bool) -> bool {
        match self.drain_deadline {
            Some(d) => {
                (self.slab.is_empty() && accepts_ended) || (self.now > d + Duration::from_secs(2))
            }
            None => false,
        }
    }

    /// Connections with operations the kernel may still hold.
    pub fn in_flight(&self) -> usize {
        self.slab
            .iter()
            .filter(|(_, s)| s.conn.in_flight() > 0)
            .count()
    }

    /// Give up the connections without freeing them: their buffers may still be
    /// the kernel's (io_uring, at exit with operations in flight).
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slab));
    }
}

/// The device's address, and ours as an unspecified stand-in (one syscall, for
/// X-Forwarded-For).
pub fn client_peer(fd: &OwnedFd) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let peer = socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    let peer = if let Some(v4) = peer.as_sockaddr_in() {
        std::net::SocketAddr::V4((*v4).into())
    } else {
        std::net::SocketAddr::V6((*peer.as_sockaddr_in6()?).into())
    };
    let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    Some((peer, unspecified))
}

/// The device's address and the local address it connected to (two syscalls,
/// only made for the PROXY header).
fn client_addresses(fd: &OwnedFd) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let to_std = |a: SockaddrStorage| -> Option<std::net::SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(std::net::SocketAddr::V4((*v4).into()))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| std::net::SocketAddr::V6((*v6).into()))
        }
    };
    let peer = socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    let local = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    Some((to_std(peer)?, to_std(local)?))
}
