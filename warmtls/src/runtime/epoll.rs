//! The per-core epoll loop: the second driver of the same connection machine,
//! for hosts where io_uring cannot be set up (a container runtime's default
//! seccomp profile, `kernel.io_uring_disabled`, an old kernel) or where
//! `runtime = "epoll"` asks for it.
//!
//! Readiness instead of completions. Each socket is registered once,
//! edge-triggered, for input and output (nothing is re-armed); per socket the
//! driver remembers whether it is readable and writable and which operations
//! the machine has posted. A posted `Recv` on a readable socket is carried out
//! at once — one `recv` into the worker's one buffer, the slice handed to
//! `on_recv` — else when the socket reports input; `Send` alike with output
//! (the outbox's bytes stay lent until `on_sent`). A short read or write means
//! the socket is drained or full until its next edge (unless the peer has
//! closed: its EOF has no edge of its own), as nginx reads it.
//! `Cancel` completes what is posted at once with ECANCELED: the kernel holds
//! nothing. Admission, deadlines, the drain and freeing are `slots`', as for
//! io_uring, so both drivers behave and count alike.
//!
//! A worker may accept from several listeners (after a hand-over from a
//! process with more workers), each registered under its index. http mode's
//! idle kept-alive backend connections (`pool`) stay registered, level-
//! triggered for input under their pool entry's token: a backend that closes
//! one (or speaks unasked) wakes the loop, and the socket is retired before
//! any connection can take it. A connection that takes one re-registers it
//! under its own token, with the receive the machine counts as posted.
//!
//! No `unsafe`: every buffer is ours for the length of one system call.
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, shutdown, MsgFlags, Shutdown};

use super::listener;
use super::pool::BackendPool;
use super::slots::{BackendAddr, Driver, Live, Slot, Slots, WorkerSetup, TICK};
use super::token::{ConnToken, Op};
use crate::conn::{Action, Env, Side, RECV_BUF};

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// I/O calls carried out at once per connection per loop round; past it the
/// connection waits for the next round, so one fast pair of peers cannot hold
/// the worker.
const ROUND_BUDGET: u16 = 16;

/// What a connection's sockets are registered for (once, edge-triggered).
fn socket_events() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET
}

/// One socket of a connection, as the driver knows it.
#[derive(Debug, Default, Clone, Copy)]
struct SideIo {
    /// Input may be waiting (no short read or EAGAIN since its last edge).
    readable: bool,
    /// The peer closed its side (EPOLLRDHUP): a read never waits again, and a
    /// short read does not mean drained — the EOF behind the bytes has no edge
    /// of its own.
    peer_closed: bool,
    /// Output room may be there (no short write or EAGAIN since its last edge).
    writable: bool,
    /// The machine posted a receive, not yet carried out.
    recv: bool,
    /// The machine posted a send, not yet carried out.
    send: bool,
}

/// What the epoll driver keeps per connection.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    client: SideIo,
    backend: SideIo,
    /// The backend connect is in flight.
    connecting: bool,
    /// The loop round `spent` counts for.
    round: u64,
    spent: u16,
    /// Queued to be carried on next round.
    deferred: bool,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            // A socket fresh from accept has room for output; input says so itself.
            client: SideIo {
                writable: true,
                ..SideIo::default()
            },
            backend: SideIo::default(),
            connecting: false,
            round: 0,
            spent: 0,
            deferred: false,
        }
    }
}

impl Readiness {
    fn side(&mut self, side: Side) -> &mut SideIo {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }
}

/// The epoll instance and what the driver keeps beside it.
struct Epoller {
    epoll: Epoll,
    /// Empty once draining (taken out of the epoll set first: a socket another
    /// process also holds after a hand-over would otherwise still report).
    listeners: Vec<OwnedFd>,
    /// Accepting stopped until the next tick after an accept error (EMFILE ...).
    accept_paused: bool,
    /// The one receive buffer: bytes are handed to the machine during the same call.
    buf: Box<[u8]>,
    round: u64,
    /// Connections that ran out of budget with I/O still to do.
    deferred: Vec<(usize, u32)>,
    /// Idle kept-alive backend connections (http mode).
    pool: BackendPool,
    /// Sockets leaving the pool, closed (and so out of the epoll set) at once.
    retired: Vec<OwnedFd>,
}

/// The token of listener `i` (its index rides in the generation field).
fn accept_token(i: usize) -> u64 {
    ConnToken::new(u32::MAX as usize, i as u32, Op::Accept).encode()
}

/// What an idle pooled backend connection is registered for: level-triggered
/// input, so a close or unasked bytes are reported however they came.
fn pooled_events() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
}

/// Set up the epoll instance and report the outcome through `ready`, then run
/// until shutdown.
pub fn run(s: WorkerSetup, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create an epoll instance: {e}")));
            return;
        }
    };
    let mut slots: Slots<Readiness> = match Slots::new(&s) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Level-triggered: a connection left in the queue is reported again.
    for (i, l) in s.listeners.iter().enumerate() {
        if let Err(e) = epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, accept_token(i))) {
            let _ = ready.send(Err(format!("cannot watch the listener with epoll: {e}")));
            return;
        }
    }
    // The shared session tier's wake-up eventfd: readable while lookups'
    // outcomes wait in this worker's inbox (level-triggered; non-blocking, so a
    // read can never stall the loop).
    if let Some(fd) = slots.tier_wake() {
        let watched = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .and_then(|_| epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, tier_token())));
        if let Err(e) = watched {
            let _ = ready.send(Err(format!(
                "cannot watch the session tier's eventfd with epoll: {e}"
            )));
            return;
        }
    }
    let mut io = Epoller {
        epoll,
        listeners: s.listeners,
        accept_paused: false,
        buf: vec![0; RECV_BUF].into_boxed_slice(),
        round: 0,
        deferred: Vec::new(),
        pool: BackendPool::new(s.backend_pool, s.backend_idle_timeout),
        retired: Vec::with_capacity(s.backend_pool),
    };
    let _ = ready.send(Ok(()));
    let mut events = vec![EpollEvent::empty(); EVENTS];
    let mut next_tick = slots.now + TICK;
    loop {
        let timeout = if io.deferred.is_empty() {
            let left = next_tick.saturating_duration_since(Instant::now());
            // Rounded up, so the wait does not end just before the tick.
            u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX)
        } else {
            0
        };
        let n = match io.epoll.wait(&mut events, EpollTimeout::from(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!(worker = slots.index(), "epoll_wait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                0
            }
        };
        slots.now = Instant::now();
        io.round += 1;
        // Pooled connections first: one the backend closed while it sat idle
        // is retired before a connection of this batch could take it.
        for ev in &events[..n] {
            if is_pool_token(ev.data()) {
                io.pool_ready(ev.data());
            }
        }
        for ev in &events[..n] {
            if !is_pool_token(ev.data()) {
                io.ready(&mut slots, ev.data(), ev.events());
            }
        }
        if !io.deferred.is_empty() {
            io.round += 1;
            io.run_deferred(&mut slots);
        }
        if slots.now >= next_tick {
            next_tick = slots.now + TICK;
            io.tick(&mut slots);
        }
        // No accept is ever in flight: each is done within its call.
        if slots.finished(true) {
            break;
        }
    }
    tracing::debug!("worker stopped");
}

/// Token of the session tier's eventfd (not a connection).
fn tier_token() -> u64 {
    ConnToken::new(u32::MAX as usize, 0, Op::TierWake).encode()
}

fn is_pool_token(data: u64) -> bool {
    data as u8 == Op::PoolWatch as u8
}

impl Epoller {
    /// A readiness event for the socket whose token is `data`.
    fn ready(&mut self, slots: &mut Slots<Readiness>, data: u64, flags: EpollFlags) {
        let Some(t) = ConnToken::decode(data) else {
            return;
        };
        let side = match t.op {
            Op::Accept => return self.accept(slots, t.gen as usize),
            Op::TierWake => {
                // Reset the eventfd's count, then hand the outcomes out (the
                // same drain as the io_uring driver's, in `Slots`).
                if let Some(fd) = slots.tier_wake() {
                    let _ = nix::unistd::read(fd, &mut [0u8; 8]);
                }
                return slots.tier_woke(self);
            }
            Op::Client => Side::Client,
            Op::Backend => Side::Backend,
            _ => return,
        };
        let key = t.key as usize;
        let Some(Live { slot, mut env, .. }) = slots.live(key, t.gen) else {
            return; // a previous occupant of this slot
        };
        // An error or hang-up: the next call on the socket says which.
        let failed = flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
        let s = slot.io.side(side);
        if failed || flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP) {
            s.readable = true;
        }
        if failed || flags.contains(EpollFlags::EPOLLRDHUP) {
            s.peer_closed = true;
        }
        if failed || flags.contains(EpollFlags::EPOLLOUT) {
            s.writable = true;
        }
        if side == Side::Backend
            && slot.io.connecting
            && (failed || flags.contains(EpollFlags::EPOLLOUT))
        {
            Self::connected(slot, failed, &mut env);
        }
        self.attempt(key, slot, side, &mut env);
        slots.carry_out(self, key);
    }

    /// An idle pooled connection reported input: the backend closed it (or
    /// broke it, or spoke unasked). Retire it, unless it is already gone
    /// (taken, expired) and this is a stale report.
    fn pool_ready(&mut self, data: u64) {
        let Some(t) = ConnToken::decode(data) else {
            return;
        };
        let key = t.key as usize;
        if self.pool.get(key, t.gen).is_some_and(|e| e.owner.is_none()) {
            // Closing it takes it out of the epoll set.
            drop(self.pool.finish(key));
        }
    }

    /// Carry out what is posted on `side` and ready.
    fn attempt(&mut self, key: usize, slot: &mut Slot<Readiness>, side: Side, env: &mut Env<'_>) {
        let s = *slot.io.side(side);
        if s.recv && s.readable {
            self.recv(key, slot, side, env);
        }
        let s = *slot.io.side(side);
        if s.send && s.writable {
            self.send(key, slot, side, env);
        }
    }

    /// One more I/O call for this connection this round, or queue it for the next.
    fn spend(&mut self, key: usize, slot: &mut Slot<Readiness>) -> bool {
        let io = &mut slot.io;
        if io.round != self.round {
            io.round = self.round;
            io.spent = 0;
        }
        if io.spent < ROUND_BUDGET {
            io.spent += 1;
            return true;
        }
        self.defer(key, slot);
        false
    }

    /// Carry on with this connection's posted I/O next round.
    fn defer(&mut self, key: usize, slot: &mut Slot<Readiness>) {
        if !slot.io.deferred {
            slot.io.deferred = true;
            self.deferred.push((key, slot.gen));
        }
    }

    fn run_deferred(&mut self, slots: &mut Slots<Readiness>) {
        let mut deferred = std::mem::take(&mut self.deferred);
        for &(key, gen) in &deferred {
            let Some(Live { slot, mut env, .. }) = slots.live(key, gen) else {
                continue;
            };
            slot.io.deferred = false;
            for side in [Side::Client, Side::Backend] {
                self.attempt(key, slot, side, &mut env);
            }
            slots.carry_out(self, key);
        }
        deferred.clear();
        if self.deferred.is_empty() {
            self.deferred = deferred; // keep the capacity
        }
    }

    /// Receive into the worker's buffer and hand the bytes to the machine.
    fn recv(&mut self, key: usize, slot: &mut Slot<Readiness>, side: Side, env: &mut Env<'_>) {
        let Some(fd) = slot.fd(side) else {
            return;
        };
        let s = slot.io.side(side);
        match socket::recv(fd, &mut self.buf, MsgFlags::empty()) {
            Ok(n) => {
                s.recv = false;
                if n < self.buf.len() && !s.peer_closed {
                    s.readable = false; // drained: wait for the next edge
                }
                slot.conn.on_recv(side, Ok(&self.buf[..n]), env);
            }
            Err(Errno::EAGAIN) => s.readable = false,
            Err(Errno::EINTR) => self.defer(key, slot),
            Err(e) => {
                s.recv = false;
                slot.conn.on_recv(side, Err(e as i32), env);
            }
        }
    }

    /// Send the outbox's lent bytes and tell the machine how many went.
    fn send(&mut self, key: usize, slot: &mut Slot<Readiness>, side: Side, env: &mut Env<'_>) {
        let Some(fd) = slot.fd(side) else {
            return;
        };
        let bytes = slot.conn.send_buf(side);
        let len = bytes.len();
        let s = slot.io.side(side);
        match socket::send(fd, bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => {
                s.send = false;
                if n < len {
                    s.writable = false; // full: wait for the next edge
                }
                slot.conn.on_sent(side, Ok(n), env);
            }
            Err(Errno::EAGAIN) => s.writable = false,
            Err(Errno::EINTR) => self.defer(key, slot),
            Err(e) => {
                s.send = false;
                slot.conn.on_sent(side, Err(e as i32), env);
            }
        }
    }

    /// Connect the backend socket: done at once (a unix socket), in progress
    /// (registered: its output edge says it is done), or refused or turned
    /// away for now (EAGAIN: the machine tries again with a new socket).
    fn start_connect(
        &mut self,
        key: usize,
        slot: &mut Slot<Readiness>,
        backend: &BackendAddr,
        env: &mut Env<'_>,
    ) {
        let Some(fd) = slot.backend.as_ref() else {
            return;
        };
        // Registered only once the connect is under way: an unconnected socket
        // reports a hang-up.
        let register = |fd: &OwnedFd| {
            let token = ConnToken::new(key, slot.gen, Op::Backend).encode();
            self.epoll.add(fd, EpollEvent::new(socket_events(), token))
        };
        let outcome = match socket::connect(fd.as_raw_fd(), &*backend.addr) {
            Ok(()) => register(fd).map(|()| true),
            Err(Errno::EINPROGRESS) => register(fd).map(|()| false),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => {
                slot.io.connecting = false;
                slot.io.backend.writable = true;
                slot.conn.on_connected(Ok(()), env);
            }
            Ok(false) => slot.io.connecting = true,
            Err(e) => {
                if e != Errno::EAGAIN {
                    tracing::debug!("backend connect failed: {e}");
                }
                slot.io.connecting = false;
                slot.conn.on_connected(Err(e as i32), env);
            }
        }
    }

    /// The backend socket reported output (connected) or an error.
    fn connected(slot: &mut Slot<Readiness>, failed: bool, env: &mut Env<'_>) {
        slot.io.connecting = false;
        let result = if failed {
            let errno = slot
                .backend
                .as_ref()
                .map(|fd| socket::getsockopt(fd, socket::sockopt::SocketError))
                .unwrap_or(Ok(libc::ENOTCONN));
            match errno {
                Ok(0) => Err(libc::ECONNRESET),
                Ok(e) => Err(e),
                Err(e) => Err(e as i32),
            }
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::debug!(
                "backend connect failed: {}",
                std::io::Error::from_raw_os_error(e)
            );
        }
        slot.conn.on_connected(result, env);
    }

    /// The listener has a connection waiting: take one (the listener is
    /// level-triggered, so the next waits for the next round, as nginx does).
    fn accept(&mut self, slots: &mut Slots<Readiness>, i: usize) {
        let Some(l) = self.listeners.get(i) else {
            return;
        };
        match listener::accept(l) {
            Ok(fd) => {
                let epoll = &self.epoll;
                // http mode: the device's address by getpeername(2), in `admit`.
                let key = slots.admit(fd, false, |fd, token| {
                    epoll
                        .add(fd, EpollEvent::new(socket_events(), token.encode()))
                        .map_err(std::io::Error::from)
                });
                if let Some(key) = key {
                    slots.carry_out(self, key);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                slots.accept_failed(e);
                // Out of descriptors or memory: the listeners would report the
                // same connections at once, so stop watching them until the tick.
                for (i, l) in self.listeners.iter().enumerate() {
                    let mut none = EpollEvent::new(EpollFlags::empty(), accept_token(i));
                    if self.epoll.modify(l, &mut none).is_ok() {
                        self.accept_paused = true;
                    }
                }
            }
        }
    }

    fn tick(&mut self, slots: &mut Slots<Readiness>) {
        let now = slots.now;
        slots.tick(self, now);
        if slots.draining() {
            self.pool.drain(&mut self.retired);
        } else {
            self.pool.expire(now, &mut self.retired);
        }
        self.retired.clear(); // closed, so out of the epoll set
        if self.accept_paused && !slots.draining() {
            let mut resumed = true;
            for (i, l) in self.listeners.iter().enumerate() {
                let mut watch = EpollEvent::new(EpollFlags::EPOLLIN, accept_token(i));
                resumed &= self.epoll.modify(l, &mut watch).is_ok();
            }
            self.accept_paused = !resumed;
        }
    }
}

impl Driver for Epoller {
    type Io = Readiness;

    fn act(
        &mut self,
        key: usize,
        slot: &mut Slot<Readiness>,
        action: Action,
        backend: &BackendAddr,
        env: &mut Env<'_>,
    ) {
        match action {
            Action::Recv(side) => {
                slot.io.side(side).recv = true;
                if slot.io.side(side).readable && self.spend(key, slot) {
                    self.recv(key, slot, side, env);
                }
            }
            Action::Send(side) => {
                slot.io.side(side).send = true;
                if slot.io.side(side).writable && self.spend(key, slot) {
                    self.send(key, slot, side, env);
                }
            }
            Action::ConnectPooled if self.pool.idle() > 0 => {
                let Some(fd) = self.pool.checkout() else {
                    return;
                };
                // From the pool's token to this connection's, edge-triggered
                // again: the modification reports what is ready now.
                let token = ConnToken::new(key, slot.gen, Op::Backend).encode();
                let mut ev = EpollEvent::new(socket_events(), token);
                if let Err(e) = self.epoll.modify(&fd, &mut ev) {
                    // Unusable: closed; a new connection instead.
                    tracing::debug!("cannot watch a pooled backend connection: {e}");
                    drop(fd);
                    return self.act(key, slot, Action::Connect, backend, env);
                }
                slot.backend = Some(fd);
                slot.io.connecting = false;
                // The machine counts a receive as posted on a pooled link (as
                // io_uring's pool posts one while the connection is idle).
                slot.io.backend = SideIo {
                    writable: true,
                    recv: true,
                    ..SideIo::default()
                };
                slot.conn.on_pooled(true, env);
            }
            Action::ReleaseBackend { reusable } => {
                slot.io.backend = SideIo::default();
                slot.io.connecting = false;
                let Some(fd) = slot.backend.take() else {
                    return;
                };
                if reusable {
                    match self
                        .pool
                        .put(fd, env.now, |k, g| ConnToken::new(k, g, Op::PoolWatch))
                    {
                        Ok(t) => {
                            if let Some(e) = self.pool.get(t.key as usize, t.gen) {
                                if let Some(fd) = &e.fd {
                                    let mut ev = EpollEvent::new(pooled_events(), t.encode());
                                    if self.epoll.modify(fd, &mut ev).is_err() {
                                        drop(self.pool.finish(t.key as usize));
                                    }
                                }
                            }
                        }
                        Err(fd) => drop(fd), // the pool is full: closed
                    }
                }
                // else: dropping it closes it (and takes it out of the epoll set).
            }
            Action::Connect | Action::ConnectPooled => match backend.socket() {
                Ok(fd) => {
                    slot.backend = Some(fd);
                    self.start_connect(key, slot, backend, env);
                }
                Err(e) => {
                    tracing::warn!("cannot create a backend socket: {e}");
                    slot.conn.on_connected(Err(e as i32), env);
                }
            },
            Action::CancelConnect => {
                // A connect being given up, or a receive before the backend
                // socket is released: nothing is in the kernel's hands.
                if std::mem::take(&mut slot.io.connecting) {
                    slot.conn.on_connected(Err(libc::ECANCELED), env);
                } else if std::mem::take(&mut slot.io.backend.recv) {
                    slot.conn.on_recv(Side::Backend, Err(libc::ECANCELED), env);
                }
            }
            Action::ShutdownWrite(side) => {
                if let Some(fd) = slot.fd(side) {
                    let _ = shutdown(fd, Shutdown::Write);
                }
            }
            Action::Cancel => {
                // Nothing is in the kernel's hands: complete what is posted.
                for side in [Side::Client, Side::Backend] {
                    if std::mem::take(&mut slot.io.side(side).recv) {
                        slot.conn.on_recv(side, Err(libc::ECANCELED), env);
                    }
                    if std::mem::take(&mut slot.io.side(side).send) {
                        slot.conn.on_sent(side, Err(libc::ECANCELED), env);
                    }
                }
                if std::mem::take(&mut slot.io.connecting) {
                    slot.conn.on_connected(Err(libc::ECANCELED), env);
                }
            }
            // Carried out by `Slots::carry_out` for both drivers.
            Action::Lookup => {}
        }
    }

    /// Closing the sockets also takes them out of the epoll set.
    fn close(&mut self, slot: Slot<Readiness>) {
        drop(slot);
    }

    fn stop_accepting(&mut self) {
        // Out of the epoll set first: closing our descriptor does not end the
        // registration while a successor holds the same socket.
        for l in self.listeners.drain(..) {
            let _ = self.epoll.delete(&l);
        }
    }
}
