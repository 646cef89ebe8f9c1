//! The per-core event loop: a slab of connections, one ring, its listeners
//! (usually one; more after a hand-over from a process with more workers).
//!
//! Shape (as in io-uring's tcp_echo): push SQEs, submit and wait, drain CQEs,
//! dispatch on the token, hand the event to the connection's state machine
//! (`conn::Conn`), then carry out the actions it asks for. The loop owns the
//! sockets, the ring, the timers and the buffers; the machine owns everything
//! the connection knows. A connection is freed only when the machine says none
//! of its operations is in flight, so the kernel never writes into a freed
//! buffer; a completion whose token names an older occupant of the slot is
//! dropped (its receive buffer, if it took one, goes back to the ring).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, shutdown, AddressFamily, Shutdown, SockFlag, SockType, SockaddrStorage, UnixAddr,
};
use slab::Slab;

use super::pool::BackendPool;
use super::ring::{buffer_id, more, Ring, TICK};
use super::timer::TimerWheel;
use super::token::{ConnToken, Op};
use crate::config::Backend;
use crate::conn::{Action, BackendLog, BufPool, Conn, Env, Limits, Side, TierView, RECV_BUF};
use crate::metrics::{Metric, WorkerMetrics};
use crate::tier::{Outcome, TierPort};
use crate::tls::ServerConfigs;

/// How far ahead the timer wheel files deadlines; later ones are re-filed.
const TIMER_HORIZON: Duration = Duration::from_secs(64);
/// Receive buffers in the worker's provided-buffer ring: a buffer is held only
/// from the moment bytes arrive until the machine has consumed them (in the
/// same loop iteration), so this bounds receives completing in one batch, not
/// open connections.
const RECV_BUFFERS: u16 = 256;
/// Send buffers made at start-up (more are made, then reused, up to the bound).
const WARM_SEND_BUFFERS: usize = 64;

/// What a worker needs; all shared state is behind `Arc`s.
pub struct WorkerSetup {
    pub index: usize,
    /// Listening sockets this worker accepts from (at least one).
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

/// A connection and the resources the loop holds for it.
struct Slot {
    conn: Conn,
    /// The slab slot's incarnation, in every token of this connection.
    gen: u32,
    client: OwnedFd,
    backend: Option<OwnedFd>,
    /// The timer-wheel tick of this connection's live timer entry.
    timer_tick: u64,
    /// Per side (client, backend): a send linked before a receive
    /// (`Ring::push_send_then_recv`) whose success is not known yet: its length.
    linked_send: [Option<usize>; 2],
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Backend => 1,
    }
}

impl Slot {
    fn fd(&self, side: Side) -> Option<RawFd> {
        match side {
            Side::Client => Some(self.client.as_raw_fd()),
            Side::Backend => self.backend.as_ref().map(|b| b.as_raw_fd()),
        }
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

struct Worker {
    ring: Ring,
    slots: Slab<Slot>,
    shared: Shared,
    timers: TimerWheel,
    next_gen: u32,
    max_connections: usize,
    /// The backend's family and address, resolved once; boxed so the connect
    /// SQEs can point at it while the worker moves.
    backend: (AddressFamily, Box<SockaddrStorage>),
    drain_timeout: Duration,
    shutdown: Arc<AtomicBool>,
    /// Empty once draining. A socket another process also holds (a hand-over)
    /// stays open after we drop ours, with its queue, for that process.
    listeners: Vec<OwnedFd>,
    /// Per listener: its multishot accept is in flight.
    accept_armed: Vec<bool>,
    drain_deadline: Option<Instant>,
    /// The time of the current batch of completions (one clock read per batch).
    now: Instant,
    due: Vec<(u64, super::timer::Entry)>,
    /// Receives that found the buffer ring empty, to post again once buffers
    /// come back.
    starved: Vec<ConnToken>,
    /// The shared session tier: lookups out, outcomes in through its inbox,
    /// whose eventfd has a read posted into `tier_wake` (boxed: the kernel
    /// writes there while the worker moves).
    tier: Option<TierPort>,
    tier_wake: Box<[u8; 8]>,
    tier_outcomes: Vec<(u64, Outcome)>,
    /// Idle kept-alive backend connections (http mode).
    pool: BackendPool,
    /// Sockets leaving the pool, to be closed.
    retired: Vec<OwnedFd>,
    /// http mode: each connection's device address, written by the kernel
    /// (`Ring::push_peer_name`), indexed by slab key; boxed so it never moves.
    peer_names: Box<[libc::sockaddr_storage]>,
    /// The kernel answers `Ring::push_peer_name` (else getpeername(2)).
    peer_name_by_ring: bool,
    /// The peer address size to ask for, per listener (its address family).
    peer_name_len: Vec<u32>,
}

/// Set up the ring (on this thread, as SINGLE_ISSUER requires) and report the
/// outcome through `ready`, then run until shutdown.
pub fn run(s: WorkerSetup, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let ring = match Ring::new(1024).map_err(|e| e.to_string()).and_then(|r| {
        r.with_recv_buffers(RECV_BUFFERS, RECV_BUF)
            .map_err(|e| format!("cannot register receive buffers with io_uring: {e}"))
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let backend = match backend_sockaddr(&s.backend) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let now = Instant::now();
    let cap = s.max_connections;
    let wants_peer_names = s.limits.http.is_some() && !s.limits.proxy_protocol;
    // Per listener: the kernel wants the exact size of the family's address.
    let peer_name_len = s
        .listeners
        .iter()
        .map(|l| match super::listener::local_addr(l) {
            Ok(a) if a.is_ipv4() => std::mem::size_of::<libc::sockaddr_in>() as u32,
            _ => std::mem::size_of::<libc::sockaddr_in6>() as u32,
        })
        .collect();
    let mut w = Worker {
        ring,
        slots: Slab::with_capacity(cap.min(65_536)),
        shared: Shared {
            index: s.index,
            tls: s.tls,
            limits: s.limits,
            metrics: s.metrics,
            // Two outboxes of two buffers per connection at most.
            pool: BufPool::new(4 * cap, WARM_SEND_BUFFERS),
            backend_log: BackendLog::new(s.backend.to_string(), s.index),
            tier: s.tier.as_ref().map(TierPort::view),
        },
        timers: TimerWheel::new(now, TICK, TIMER_HORIZON),
        next_gen: 0,
        max_connections: cap,
        backend: (backend.0, Box::new(backend.1)),
        drain_timeout: s.drain_timeout,
        shutdown: s.shutdown,
        accept_armed: vec![false; s.listeners.len()],
        listeners: s.listeners,
        drain_deadline: None,
        now,
        due: Vec::new(),
        starved: Vec::with_capacity(usize::from(RECV_BUFFERS)),
        tier: s.tier,
        tier_wake: Box::new([0u8; 8]),
        tier_outcomes: Vec::with_capacity(256),
        pool: BackendPool::new(s.backend_pool, s.backend_idle_timeout),
        retired: Vec::with_capacity(s.backend_pool),
        peer_names: if wants_peer_names {
            // One 128-byte address per connection slot (the slab's keys stay
            // below `cap`).
            vec![zeroed_sockaddr(); cap].into_boxed_slice()
        } else {
            Box::new([])
        },
        peer_name_by_ring: true,
        peer_name_len,
    };
    let _ = ready.send(Ok(()));
    w.arm_accept();
    w.ring.push_tick();
    w.arm_tier_wake();
    let mut cqes = Vec::with_capacity(4096);
    loop {
        if let Err(e) = w.ring.submit_and_wait() {
            tracing::error!(worker = w.shared.index, "io_uring_enter failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        w.now = Instant::now();
        w.ring.drain(&mut cqes);
        // Pooled connections first: one the backend closed while it sat idle
        // is retired before a connection of this batch could take it.
        for &(ud, res, flags) in &cqes {
            if is_pool_op(ud) {
                w.complete(ud, res, flags);
            }
        }
        for &(ud, res, flags) in &cqes {
            if !is_pool_op(ud) {
                w.complete(ud, res, flags);
            }
        }
        if !w.starved.is_empty() {
            // Every buffer taken in this batch has been consumed and given back.
            w.retry_starved();
        }
        if w.finished() {
            break;
        }
    }
    if let Err(e) = w.ring.submit() {
        tracing::warn!(worker = w.shared.index, "last io_uring submit failed: {e}");
    }
    let stuck = w
        .slots
        .iter()
        .filter(|(_, s)| s.conn.in_flight() > 0)
        .count();
    if stuck > 0 {
        // The drain deadline passed with operations still in flight. The kernel
        // may still use their buffers until the ring is torn down, so leak them
        // (and the ring, with its receive buffers) rather than free memory it
        // could write into; the process is exiting.
        tracing::warn!(
            worker = w.shared.index,
            stuck,
            "exiting with operations in flight"
        );
        std::mem::forget(std::mem::take(&mut w.slots));
        std::mem::forget(w.ring);
    }
    // The tier's eventfd read may still be posted: its buffer must outlive
    // anything the kernel could do with it (8 bytes, once per process).
    Box::leak(w.tier_wake);
    tracing::debug!("worker stopped");
}

/// The backend's socket family and address, resolved once per worker.
fn backend_sockaddr(b: &Backend) -> Result<(AddressFamily, SockaddrStorage), String> {
    Ok(match b {
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
            (AddressFamily::Unix, unix_storage(&u))
        }
    })
}

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}

fn zeroed_sockaddr() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain integers, for which all zeroes is valid.
    unsafe { std::mem::zeroed() }
}

/// The address the kernel wrote into `a` (`len` bytes), if it is IPv4 or IPv6.
fn sockaddr_to_std(a: &libc::sockaddr_storage, len: usize) -> Option<std::net::SocketAddr> {
    use nix::sys::socket::SockaddrLike;
    // SAFETY: `a` is a sockaddr_storage the kernel filled with `len` bytes.
    let s = unsafe {
        SockaddrStorage::from_raw(
            (a as *const libc::sockaddr_storage).cast(),
            Some(len as libc::socklen_t),
        )
    }?;
    if let Some(v4) = s.as_sockaddr_in() {
        Some(std::net::SocketAddr::V4((*v4).into()))
    } else {
        s.as_sockaddr_in6()
            .map(|v6| std::net::SocketAddr::V6((*v6).into()))
    }
}

fn is_pool_op(ud: u64) -> bool {
    ud as u8 == Op::PoolRecv as u8
}

/// Token of the multishot accept on listener `i` (not a connection): the
/// listener's index rides in the generation field.
fn accept_token(i: usize) -> ConnToken {
    ConnToken::new(u32::MAX as usize, i as u32, Op::Accept)
}

/// Token of operations that belong to no live connection (cancels, closes).
fn detached_token(op: Op) -> ConnToken {
    ConnToken::new(u32::MAX as usize, 0, op)
}

impl Worker {
    fn arm_accept(&mut self) {
        for (i, l) in self.listeners.iter().enumerate() {
            if !self.accept_armed[i] {
                self.ring.push_accept(l.as_raw_fd(), accept_token(i));
                self.accept_armed[i] = true;
            }
        }
    }

    /// Draining, and every accept has ended (so no accepted connection can
    /// still be on its way to us), and every connection is done; or well past
    /// the drain deadline.
    fn finished(&self) -> bool {
        match self.drain_deadline {
            Some(d) => {
                (self.slots.is_empty() && !self.accept_armed.contains(&true))
                    || (self.now > d + Duration::from_secs(2))
            }
            None => false,
        }
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let Some(t) = ConnToken::decode(ud) else {
            return;
        };

        let side = match t.op {
            Op::Accept => return self.accepted(t.gen as usize, res, flags),
            Op::Tick => return self.tick(),
            Op::TierWake => return self.tier_woke(res),
            Op::Cancel | Op::Close | Op::TierLookup => return,
            Op::PoolRecv => return self.pool_recv(t, res, flags),
            Op::PeerName => return self.peer_name(t, res),
            Op::ClientRecv | Op::ClientSend | Op::ClientRecvAfterSend => Side::Client,
            Op::BackendConnect | Op::BackendRecv | Op::BackendSend | Op::BackendRecvAfterSend => {
                Side::Backend
            }
        };
        self.dispatch(t, side, res, flags);
    }

    /// The receive of a pooled backend connection completed: while the
    /// connection was idle, it is dead (EOF, reset) or the backend spoke unasked
    /// — retire it; once taken, it is its new owner's backend receive.
    fn pool_recv(&mut self, t: ConnToken, res: i32, flags: u32) {
        let key = t.key as usize;
        let owner = match self.pool.get(key, t.gen) {
            Some(e) => e.owner,
            None => {
                // Cancelled as it expired: the entry is gone.
                if let Some(bid) = buffer_id(flags) {
                    self.ring.recv_buffers().recycle(bid);
                }
                return;
            }
        };
        if let Some(fd) = self.pool.finish(key) {
            if let Some(bid) = buffer_id(flags) {
                self.ring.recv_buffers().recycle(bid);
            }
            self.ring.push_close(fd, detached_token(Op::Close));
            return;
        }
        if let Some((conn, gen)) = owner {
            self.dispatch(
                ConnToken::new(conn, gen, Op::BackendRecv),
                Side::Backend,
                res,
                flags,
            );
        }
    }

    /// The device's address arrived through the ring (or the kernel does not
    /// answer that: ask getpeername(2) from now on).
    fn peer_name(&mut self, t: ConnToken, res: i32) {
        let key = t.key as usize;
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == t.gen) else {
            return;
        };
        let peer = if res > 0 {
            sockaddr_to_std(&self.peer_names[key], res as usize)
        } else {
            if self.peer_name_by_ring {
                tracing::debug!(
                    "no getsockopt through io_uring ({}): X-Forwarded-For by getpeername(2)",
                    errno(res)
                );
            }
            self.peer_name_by_ring = false;
            client_peer(&slot.client).map(|(p, _)| p)
        };
        if let Some(peer) = peer {
            slot.conn.on_peer_address(peer);
        }
    }

    /// A completion of connection `t.key`'s operation `t.op` on `side`.
    fn dispatch(&mut self, t: ConnToken, side: Side, res: i32, flags: u32) {
        let bid = buffer_id(flags);
        let key = t.key as usize;
        let live = self.slots.get(key).is_some_and(|s| s.gen == t.gen);
        if !live {
            // A completion for a previous occupant of this slot.
            if let Some(bid) = bid {
                self.ring.recv_buffers().recycle(bid);
            }
            return;
        }
        let slot = &mut self.slots[key];
        let mut env = self.shared.env(self.now);
        match t.op {
            Op::ClientRecv
            | Op::BackendRecv
            | Op::ClientRecvAfterSend
            | Op::BackendRecvAfterSend => {
                if matches!(t.op, Op::ClientRecvAfterSend | Op::BackendRecvAfterSend) {
                    // The linked send posted no completion before this one: it
                    // succeeded, whole (a failed send's completion comes first).
                    if let Some(n) = slot.linked_send[side_index(side)].take() {
                        slot.conn.on_sent(side, Ok(n), &mut env);
                    }
                }
                if res == -libc::ENOBUFS {
                    // The buffer ring ran dry: post it again once buffers return.
                    let op = match side {
                        Side::Client => Op::ClientRecv,
                        Side::Backend => Op::BackendRecv,
                    };
                    self.starved.push(ConnToken::new(key, t.gen, op));
                    return self.carry_out(key);
                }
                let got = if res < 0 {
                    Err(-res)
                } else {
                    match bid {
                        Some(bid) => Ok(self.ring.recv_buffers().get(bid, res as usize)),
                        None => Ok(&[][..]),
                    }
                };
                slot.conn.on_recv(side, got, &mut env);
                if let Some(bid) = bid {
                    self.ring.recv_buffers().recycle(bid);
                }
            }
            Op::ClientSend | Op::BackendSend => {
                // A linked send's completion (it failed or fell short) comes
                // before its receive's: the receive must not report it again.
                slot.linked_send[side_index(side)] = None;
                let done = if res < 0 { Err(-res) } else { Ok(res as usize) };
                slot.conn.on_sent(side, done, &mut env);
            }
            Op::BackendConnect => {
                if res < 0 && res != -libc::ECANCELED {
                    tracing::debug!("backend connect failed: {}", errno(res));
                }
                slot.conn
                    .on_connected(if res < 0 { Err(-res) } else { Ok(()) }, &mut env);
            }
            Op::Accept
            | Op::Tick
            | Op::Cancel
            | Op::Close
            | Op::PoolRecv
            | Op::PeerName
            | Op::TierWake
            | Op::TierLookup => {}
        }
        self.carry_out(key);
    }

    fn accepted(&mut self, listener: usize, res: i32, flags: u32) {
        if !more(flags) {
            // Re-armed on the next tick (a back-off on EMFILE), unless draining.
            if let Some(armed) = self.accept_armed.get_mut(listener) {
                *armed = false;
            }
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                self.shared.m().add(Metric::AcceptErrors, 1);
                tracing::warn!(
                    worker = self.shared.index,
                    "accept failed: {}; backing off until the next tick",
                    errno(res)
                );
            }
            return;
        }
        let fd = owned_fd(res);
        // A connection accepted while the accept is being cancelled (draining)
        // is served like any other: closing it would reset a device that did
        // nothing wrong, and after a hand-over nobody else will take it.
        if self.slots.len() >= self.max_connections {
            self.shared.m().add(Metric::Refused, 1);
            return; // dropping `fd` closes it
        }
        // X-Forwarded-For needs the device's address only: asked through the
        // ring with the first receive (no syscall of its own) where the kernel
        // can, it is in before the device's first bytes are handed in.
        let by_ring = self.shared.limits.http.is_some()
            && !self.shared.limits.proxy_protocol
            && self.peer_name_by_ring;
        let addresses = if self.shared.limits.proxy_protocol {
            client_addresses(&fd)
        } else if self.shared.limits.http.is_some() && !by_ring {
            client_peer(&fd)
        } else {
            None
        };
        self.next_gen = self.next_gen.wrapping_add(1) & ConnToken::GEN_MASK;
        let key = self.slots.insert(Slot {
            conn: Conn::new(self.now, &self.shared.limits, addresses),
            gen: self.next_gen,
            client: fd,
            backend: None,
            timer_tick: u64::MAX,
            linked_send: [None, None],
        });
        self.shared.m().add(Metric::Connections, 1);
        self.shared.m().add(Metric::Active, 1);
        if by_ring && key < self.peer_names.len() {
            let raw = self.slots[key].client.as_raw_fd();
            let gen = self.slots[key].gen;
            let addr: *mut libc::sockaddr_storage = &mut self.peer_names[key];
            // SAFETY: the worker's boxed array outlives the ring's use of it;
            // the operation completes at submission, before this slab key
            // could hold another connection that asks again.
            unsafe {
                self.ring.push_peer_name(
                    raw,
                    addr,
                    self.peer_name_len[listener],
                    ConnToken::new(key, gen, Op::PeerName),
                )
            };
        }
        self.carry_out(key);
    }

    /// Carry out what the connection asks for until it asks for nothing; free
    /// it if it is finished, else make sure its deadline is on the wheel.
    fn carry_out(&mut self, key: usize) {
        // Sends held back within this call, per side: when the machine will send
        // nothing more on that side until it speaks, a receive on the same side
        // asked for next goes out linked behind the send, so the send's success
        // costs no completion (and no wakeup) of its own.
        let mut held = [false; 2];
        loop {
            let Some(slot) = self.slots.get_mut(key) else {
                return;
            };
            let mut env = self.shared.env(self.now);
            let Some(action) = slot.conn.poll(&mut env) else {
                break;
            };
            let gen = slot.gen;
            let token = move |op| ConnToken::new(key, gen, op);
            if !matches!(action, Action::Recv(_) | Action::Send(_)) {
                // Anything else (a cancel above all) comes after the sends asked before it.
                for side in [Side::Client, Side::Backend] {
                    if std::mem::take(&mut held[side_index(side)]) {
                        push_send(&mut self.ring, slot, side, token, None);
                    }
                }
            }
            match action {
                Action::Recv(side) => {
                    let (op, after_send) = match side {
                        Side::Client => (Op::ClientRecv, Op::ClientRecvAfterSend),
                        Side::Backend => (Op::BackendRecv, Op::BackendRecvAfterSend),
                    };
                    if std::mem::take(&mut held[side_index(side)]) {
                        push_send(&mut self.ring, slot, side, token, Some(token(after_send)));
                    } else if let Some(fd) = slot.fd(side) {
                        self.ring.push_recv_select(fd, token(op));
                    }
                }
                Action::Send(side)
                    if self.ring.can_link_sends() && slot.conn.quiet_after_send(side) =>
                {
                    held[side_index(side)] = true;
                }
                Action::Send(side) => push_send(&mut self.ring, slot, side, token, None),
                Action::ConnectPooled if self.pool.idle() > 0 => {
                    slot.backend = self.pool.take((key, gen));
                    debug_assert!(slot.backend.is_some());
                    slot.conn.on_pooled(&mut env);
                }
                Action::ReleaseBackend { reusable } => {
                    let Some(fd) = slot.backend.take() else {
                        continue;
                    };
                    let fd = if reusable {
                        let raw = fd.as_raw_fd();
                        match self
                            .pool
                            .put(fd, self.now, |k, g| ConnToken::new(k, g, Op::PoolRecv))
                        {
                            Ok(t) => {
                                self.ring.push_recv_select(raw, t);
                                continue;
                            }
                            Err(fd) => fd,
                        }
                    } else {
                        fd
                    };
                    self.ring.push_close(fd, detached_token(Op::Close));
                }
                Action::Connect | Action::ConnectPooled => {
                    let (family, addr) = (self.backend.0, &*self.backend.1);
                    match backend_socket(family) {
                        Ok(fd) => {
                            let raw = fd.as_raw_fd();
                            slot.backend = Some(fd);
                            // SAFETY: the address is boxed in the worker and lives
                            // as long as the ring.
                            unsafe { self.ring.push_connect(raw, addr, token(Op::BackendConnect)) };
                        }
                        Err(e) => {
                            tracing::warn!("cannot create a backend socket: {e}");
                            slot.conn.on_connected(Err(e as i32), &mut env);
                        }
                    }
                }
                Action::CancelConnect => {
                    if let Some(fd) = slot.fd(Side::Backend) {
                        self.ring.push_cancel_fd(fd, detached_token(Op::Cancel));
                    }
                }
                Action::ShutdownWrite(side) => {
                    // shutdown(2), not IORING_OP_SHUTDOWN: the kernel always punts
                    // the latter to an io-wq thread, dearer than the syscall.
                    if let Some(fd) = slot.fd(side) {
                        let _ = shutdown(fd, Shutdown::Write);
                    }
                }
                Action::Cancel => {
                    for side in [Side::Client, Side::Backend] {
                        if let Some(fd) = slot.fd(side) {
                            self.ring.push_cancel_fd(fd, detached_token(Op::Cancel));
                        }
                    }
                }
                Action::Lookup => {
                    let sent = match (&self.tier, slot.conn.lookup_request()) {
                        (Some(tier), Some(req)) => tier.submit(token(Op::TierLookup).encode(), req),
                        _ => false,
                    };
                    if !sent {
                        // Tier down or its queue full: on as if it had said so.
                        slot.conn.on_lookup(Outcome::Unavailable, &mut env);
                    }
                }
            }
        }
        let slot = &mut self.slots[key];
        for side in [Side::Client, Side::Backend] {
            if held[side_index(side)] {
                let gen = slot.gen;
                push_send(
                    &mut self.ring,
                    slot,
                    side,
                    move |op| ConnToken::new(key, gen, op),
                    None,
                );
            }
        }
        if slot.conn.is_finished() {
            return self.free(key);
        }
        if let Some(at) = slot.conn.deadline() {
            let tick = self.timers.tick_for(at);
            if tick < slot.timer_tick {
                slot.timer_tick = tick;
                self.timers.insert(tick, (key as u32, slot.gen));
            }
        }
    }

    /// Keep a read posted on the tier's wake-up eventfd.
    fn arm_tier_wake(&mut self) {
        if let Some(tier) = &self.tier {
            let fd = tier.inbox().wake_raw_fd();
            let token = detached_token(Op::TierWake);
            // SAFETY: `tier_wake` is boxed and owned by the worker, untouched
            // until this read completes, and leaked (never freed) when the
            // worker exits with the read possibly still posted.
            unsafe { self.ring.push_read(fd, &mut self.tier_wake[..], token) };
        }
    }

    /// Outcomes of lookups are waiting: hand each to its connection (if it is
    /// still the connection that asked), then wait for the next ones.
    fn tier_woke(&mut self, res: i32) {
        match -res {
            libc::ECANCELED => return, // shutting down
            e if res < 0 && e != libc::EINTR && e != libc::EAGAIN => {
                // Not posted again (it would fail the same way, in a loop):
                // parked connections then go on at their own deadline.
                tracing::error!(
                    worker = self.shared.index,
                    "reading the session tier's eventfd failed: {}; lookups will time out",
                    errno(res)
                );
            }
            _ => self.arm_tier_wake(),
        }
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
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == t.gen) else {
                continue; // the connection is gone (it stopped waiting)
            };
            let mut env = self.shared.env(self.now);
            slot.conn.on_lookup(outcome, &mut env);
            self.carry_out(key);
        }
        outcomes.clear();
        self.tier_outcomes = outcomes;
    }

    /// Post again the receives that found no buffer.
    fn retry_starved(&mut self) {
        let starved = std::mem::take(&mut self.starved);
        for t in &starved {
            let key = t.key as usize;
            let Some(slot) = self.slots.get(key).filter(|s| s.gen == t.gen) else {
                continue;
            };
            let side = if t.op == Op::ClientRecv {
                Side::Client
            } else {
                Side::Backend
            };
            if let Some(fd) = slot.fd(side) {
                self.ring.push_recv_select(fd, *t);
            }
        }
        self.starved = starved;
        self.starved.clear();
    }

    /// Free a finished connection: its buffers go back to the pool, its sockets
    /// are closed by the ring (no close(2) of their own).
    fn free(&mut self, key: usize) {
        let mut slot = self.slots.remove(key);
        slot.conn.release(&mut self.shared.pool);
        let token = detached_token(Op::Close);
        self.ring.push_close(slot.client, token);
        if let Some(b) = slot.backend {
            self.ring.push_close(b, token);
        }
        self.shared.m().sub(Metric::Active, 1);
    }

    /// Close pooled connections leaving the pool: their receive is cancelled
    /// first (in the same submission), or the socket would stay open under it.
    fn close_retired(&mut self) {
        for fd in self.retired.drain(..) {
            self.ring
                .push_cancel_fd(fd.as_raw_fd(), detached_token(Op::Cancel));
            self.ring.push_close(fd, detached_token(Op::Close));
        }
    }

    fn tick(&mut self) {
        self.ring.push_tick();
        self.shared.m().add(Metric::Ticks, 1);
        let now = self.now;
        self.shared.backend_log.tick(now);
        if self.drain_deadline.is_some() {
            self.pool.drain(&mut self.retired);
        } else {
            self.pool.expire(now, &mut self.retired);
        }
        self.close_retired();
        if self.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            // Stop accepting, keep draining. The multishot accepts hold the
            // listening sockets open: cancel them, so that dropping ours really
            // closes a socket nobody else holds (the kernel stops queueing
            // connections to this worker), while a socket handed to a successor
            // stays open, its queue intact, for the successor to accept from.
            self.drain_deadline = Some(now + self.drain_timeout);
            for i in 0..self.listeners.len() {
                if self.accept_armed[i] {
                    self.ring
                        .push_cancel(accept_token(i), detached_token(Op::Cancel));
                }
            }
            self.listeners.clear();
            tracing::debug!(
                worker = self.shared.index,
                open = self.slots.len(),
                "draining"
            );
        }
        if self.drain_deadline.is_none() {
            self.arm_accept();
        }
        if self.drain_deadline.is_some_and(|d| now > d) {
            // Drain time is up: everything still open goes.
            let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.slots[key].conn.abort();
                self.carry_out(key);
            }
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.timers.expire(now, &mut due);
        for &(tick, (key, gen)) in &due {
            let key = key as usize;
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.gen != gen || slot.timer_tick != tick {
                continue; // a stale entry: the connection has a newer one
            }
            slot.timer_tick = u64::MAX;
            let mut env = self.shared.env(now);
            slot.conn.on_timeout(&mut env);
            // Files the deadline again if it is still ahead.
            self.carry_out(key);
        }
        self.due = due;
    }
}

/// Post the send `slot`'s machine asked for on `side`: alone, or linked before
/// the receive `then_recv` (whose completion then reports the send's success).
fn push_send(
    ring: &mut Ring,
    slot: &mut Slot,
    side: Side,
    token: impl Fn(Op) -> ConnToken,
    then_recv: Option<ConnToken>,
) {
    let op = match side {
        Side::Client => Op::ClientSend,
        Side::Backend => Op::BackendSend,
    };
    let Some(fd) = slot.fd(side) else {
        return;
    };
    let buf = slot.conn.send_buf(side);
    match then_recv {
        Some(recv) => {
            slot.linked_send[side_index(side)] = Some(buf.len());
            // SAFETY: the bytes are the outbox's lent buffer, neither touched
            // nor freed until the machine hears of this send (`on_sent`, from
            // the send's own completion or the linked receive's), and the
            // connection is not freed while an operation is in flight.
            unsafe { ring.push_send_then_recv(fd, buf, token(op), recv) };
        }
        // SAFETY: as above; `on_sent` comes from this send's completion.
        None => unsafe { ring.push_send(fd, buf, token(op)) },
    }
}

/// A non-blocking socket for the backend (TCP_NODELAY for TCP).
fn backend_socket(family: AddressFamily) -> Result<OwnedFd, nix::errno::Errno> {
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if family != AddressFamily::Unix {
        let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
    }
    Ok(fd)
}

/// The device's address, and ours as an unspecified stand-in (one syscall, for
/// X-Forwarded-For).
fn client_peer(fd: &OwnedFd) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
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

fn owned_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by a successful accept completion: it is
    // open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn unix_storage(u: &UnixAddr) -> SockaddrStorage {
    use nix::sys::socket::SockaddrLike;
    // SAFETY: `u` is a valid sockaddr_un of length `u.len()`; SockaddrStorage
    // copies it.
    unsafe { SockaddrStorage::from_raw(u.as_ptr().cast(), Some(u.len())) }
        .expect("a unix address fits a sockaddr_storage")
}
