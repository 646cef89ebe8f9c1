//! The per-core io_uring loop: one ring, its listeners (usually one; more after
//! a hand-over from a process with more workers), the worker's idle kept-alive
//! backend connections (`pool`), and the worker's connections (`slots`).
//!
//! Shape (as in io-uring's tcp_echo): push SQEs, submit and wait, drain CQEs,
//! dispatch on the token, hand the event to the connection's state machine
//! (`conn::Conn`), then carry out the actions it asks for. The loop owns the
//! ring and the buffers; `slots` owns the connections, their deadlines and the
//! drain, as it does for the epoll driver; the machine owns everything the
//! connection knows. A connection is freed only when the machine says none of
//! its operations is in flight, so the kernel never writes into a freed
//! buffer; a completion whose token names an older occupant of the slot is
//! dropped (its receive buffer, if it took one, goes back to the ring).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{self, shutdown, AddressFamily, Shutdown, SockaddrStorage};

use super::listener;
use super::pool::BackendPool;
use super::ring::{buffer_id, more, Ring};
pub use super::slots::WorkerSetup;
use super::slots::{client_peer, BackendAddr, Driver, Live, Slot, Slots};
use super::token::{ConnToken, Op};
use crate::conn::{Action, Env, Side, RECV_BUF};

/// Receive buffers in the worker's provided-buffer ring: a buffer is held only
/// from the moment bytes arrive until the machine has consumed them (in the
/// same loop iteration), so this bounds receives completing in one batch, not
/// open connections.
const RECV_BUFFERS: u16 = 256;

/// What the io_uring driver keeps per connection.
#[derive(Default)]
struct UringIo {
    /// Per side (client, backend), a send linked before a receive
    /// (`Ring::push_send_then_recv`) whose success is not known yet: its length.
    linked: [Option<usize>; 2],
    /// The device's address was asked through the ring with no completion on
    /// success (`Ring::push_peer_name`): it is read from `peer_names` before
    /// the device's first bytes are handed in.
    peer_pending: bool,
    /// The backend socket is lent by the pool: its entry (key, generation),
    /// whose poll stays posted on it.
    pool_entry: Option<(usize, u32)>,
    /// The backend socket is being opened through the ring; its connect is
    /// posted when it completes.
    socket_pending: bool,
    /// The connect was cancelled while its socket was being opened: the
    /// socket is closed when it arrives and the connect reported cancelled.
    connect_cancelled: bool,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Backend => 1,
    }
}

/// The ring and what the io_uring driver keeps beside it.
struct Uring {
    ring: Ring,
    /// The shared session tier's wake-up eventfd (with a tier), with a read
    /// posted on it into `tier_wake` (boxed: the kernel writes there while the
    /// worker moves).
    tier_fd: Option<std::os::fd::RawFd>,
    tier_wake: Box<[u8; 8]>,
    /// Empty once draining. A socket another process also holds (a hand-over)
    /// stays open after we drop ours, with its queue, for that process.
    listeners: Vec<OwnedFd>,
    /// Per listener: its multishot accept is in flight.
    accept_armed: Vec<bool>,
    /// Receives that found the buffer ring empty, to post again once buffers
    /// come back.
    starved: Vec<ConnToken>,
    /// Idle kept-alive backend connections (http mode).
    pool: BackendPool,
    /// Sockets leaving the pool, to be closed.
    retired: Vec<OwnedFd>,
    /// http mode without a PROXY header: X-Forwarded-For needs the device's
    /// address.
    wants_peer_names: bool,
    /// http mode: each connection's device address, written by the kernel
    /// (`Ring::push_peer_name`), indexed by slab key; boxed so it never moves.
    peer_names: Box<[libc::sockaddr_storage]>,
    /// The kernel answers `Ring::push_peer_name` (else getpeername(2)).
    peer_name_by_ring: bool,
    /// The peer address size to ask for, per listener (its address family).
    peer_name_len: Vec<u32>,
    /// Backend sockets are opened and set up through the ring (socket and
    /// TCP_NODELAY as SQEs: no syscall of their own), else by socket(2) and
    /// setsockopt(2).
    sockets_by_ring: bool,
    /// Sends held back within one `Slots::carry_out`, per side: when the machine
    /// will send nothing more on that side until it speaks, a receive on the
    /// same side asked for next goes out linked behind the send, so the send's
    /// success costs no completion (and no wakeup) of its own. Posted by
    /// `flush` at the latest.
    held: [bool; 2],
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
    let mut slots: Slots<UringIo> = match Slots::new(&s) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let wants_peer_names = s.limits.http.is_some() && !s.limits.proxy_protocol;
    // Per listener: the kernel wants the exact size of the family's address.
    let peer_name_len = s
        .listeners
        .iter()
        .map(|l| match listener::local_addr(l) {
            Ok(a) if a.is_ipv4() => std::mem::size_of::<libc::sockaddr_in>() as u32,
            _ => std::mem::size_of::<libc::sockaddr_in6>() as u32,
        })
        .collect();
    let ring_sockets = ring.can_open_sockets();
    let mut io = Uring {
        ring,
        tier_fd: slots.tier_wake_fd(),
        tier_wake: Box::new([0u8; 8]),
        accept_armed: vec![false; s.listeners.len()],
        listeners: s.listeners,
        starved: Vec::with_capacity(usize::from(RECV_BUFFERS)),
        pool: BackendPool::new(s.backend_pool, s.backend_idle_timeout),
        retired: Vec::with_capacity(s.backend_pool),
        wants_peer_names,
        peer_names: if wants_peer_names {
            // One 128-byte address per connection slot (the slab's keys stay
            // below `max_connections`).
            vec![zeroed_sockaddr(); s.max_connections].into_boxed_slice()
        } else {
            Box::new([])
        },
        peer_name_by_ring: true,
        peer_name_len,
        sockets_by_ring: ring_sockets,
        held: [false; 2],
    };
    if !io.sockets_by_ring {
        say_once(
            &SOCKETS_BY_SYSCALL,
            "this kernel's io_uring cannot open sockets (IORING_OP_SOCKET, Linux 5.19+): \
             backend sockets by socket(2) and setsockopt(2)",
        );
    }
    let _ = ready.send(Ok(()));
    io.arm_accept();
    io.ring.push_tick();
    io.arm_tier_wake();
    let mut cqes = Vec::with_capacity(4096);
    loop {
        if let Err(e) = io.ring.submit_and_wait() {
            tracing::error!(worker = slots.index(), "io_uring_enter failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        slots.now = std::time::Instant::now();
        io.ring.drain(&mut cqes);
        // Pooled connections first: one the backend closed while it sat idle
        // is retired before a connection of this batch could take it.
        for &(ud, res, flags) in &cqes {
            if is_pool_op(ud) {
                io.complete(&mut slots, ud, res, flags);
            }
        }
        for &(ud, res, flags) in &cqes {
            if !is_pool_op(ud) {
                io.complete(&mut slots, ud, res, flags);
            }
        }
        if !io.starved.is_empty() {
            // Every buffer taken in this batch has been consumed and given back.
            io.retry_starved(&mut slots);
        }
        if slots.finished(!io.accept_armed.contains(&true)) {
            break;
        }
    }
    if let Err(e) = io.ring.submit() {
        tracing::warn!(worker = slots.index(), "last io_uring submit failed: {e}");
    }
    let stuck = slots.in_flight();
    if stuck > 0 {
        // The drain deadline passed with operations still in flight. The kernel
        // may still use their buffers until the ring is torn down, so leak them
        // (and the ring, with its receive buffers) rather than free memory it
        // could write into; the process is exiting.
        tracing::warn!(
            worker = slots.index(),
            stuck,
            "exiting with operations in flight"
        );
        slots.leak();
        std::mem::forget(io.ring);
    }
    // The tier's eventfd read may still be posted: its buffer must outlive
    // anything the kernel could do with it (8 bytes, once per process).
    Box::leak(io.tier_wake);
    tracing::debug!("worker stopped");
}

/// Kernel features this process found missing, each said once in the log
/// whatever the number of workers.
static SOCKETS_BY_SYSCALL: AtomicBool = AtomicBool::new(false);
static NODELAY_BY_SYSCALL: AtomicBool = AtomicBool::new(false);

fn say_once(said: &AtomicBool, what: &str) {
    if !said.swap(true, Ordering::Relaxed) {
        tracing::info!("{what}");
    }
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
    ud as u8 == Op::PoolWatch as u8
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

impl Uring {
    /// Keep a read posted on the tier's wake-up eventfd.
    fn arm_tier_wake(&mut self) {
        if let Some(fd) = self.tier_fd {
            let token = detached_token(Op::TierWake);
            // SAFETY: `tier_wake` is boxed and owned by the driver, untouched
            // until this read completes, and leaked (never freed) when the
            // worker exits with the read possibly still posted.
            unsafe { self.ring.push_read(fd, &mut self.tier_wake[..], token) };
        }
    }

    /// Outcomes of lookups are waiting: post the read again, then hand them
    /// to their connections.
    fn tier_woke(&mut self, slots: &mut Slots<UringIo>, res: i32) {
        match -res {
            libc::ECANCELED => return, // shutting down
            e if res < 0 && e != libc::EINTR && e != libc::EAGAIN => {
                // Not posted again (it would fail the same way, in a loop):
                // parked connections then go on at their own deadline.
                tracing::error!(
                    worker = slots.index(),
                    "reading the session tier's eventfd failed: {}; lookups will time out",
                    errno(res)
                );
            }
            _ => self.arm_tier_wake(),
        }
        slots.tier_woke(self);
    }

    fn arm_accept(&mut self) {
        for (i, l) in self.listeners.iter().enumerate() {
            if !self.accept_armed[i] {
                self.ring.push_accept(l.as_raw_fd(), accept_token(i));
                self.accept_armed[i] = true;
            }
        }
    }

    fn complete(&mut self, slots: &mut Slots<UringIo>, ud: u64, res: i32, flags: u32) {
        let Some(t) = ConnToken::decode(ud) else {
            return;
        };
        let side = match t.op {
            Op::Accept => return self.accepted(slots, t.gen as usize, res, flags),
            Op::Tick => return self.tick(slots),
            Op::TierWake => return self.tier_woke(slots, res),
            Op::Cancel | Op::Close | Op::Client | Op::Backend | Op::TierLookup => return,
            Op::PoolWatch => return self.pool_watch(t),
            Op::PeerName => return self.peer_name(slots, t, res),
            Op::ClientRecv | Op::ClientSend | Op::ClientRecvAfterSend => Side::Client,
            Op::BackendConnect
            | Op::BackendRecv
            | Op::BackendSend
            | Op::BackendRecvAfterSend
            | Op::BackendSocket
            | Op::BackendNoDelay => Side::Backend,
        };
        self.dispatch(slots, t, side, res, flags);
    }

    /// The poll watching a pooled backend connection completed: while the
    /// connection was idle, the backend closed it (or reset it) — retire it;
    /// while lent out, its owner's own receive sees the close (the entry
    /// notes it is no longer watched).
    fn pool_watch(&mut self, t: ConnToken) {
        let key = t.key as usize;
        if self.pool.get(key, t.gen).is_none() {
            return; // cancelled as it expired: the entry is gone
        }
        if let Some(fd) = self.pool.finish(key) {
            self.ring.push_close(fd, detached_token(Op::Close));
        }
    }

    /// The device's address asked through the ring completed: an error (the
    /// kernel does not answer that: ask getpeername(2) from now on), or, on a
    /// kernel that posts completions for successes too, the address.
    fn peer_name(&mut self, slots: &mut Slots<UringIo>, t: ConnToken, res: i32) {
        let key = t.key as usize;
        let Some(Live { slot, .. }) = slots.live(key, t.gen) else {
            return;
        };
        slot.io.peer_pending = false;
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

    /// The device's first bytes are in and its address, asked through the
    /// ring with no completion on success, has not been handed over: it is in
    /// `peer_names` (the request completed at submission, before the receive
    /// was posted), or, if the kernel did not write it, getpeername(2) says it.
    fn take_peer_name(&self, key: usize, slot: &mut Slot<UringIo>) {
        slot.io.peer_pending = false;
        let a = &self.peer_names[key];
        let len = match i32::from(a.ss_family) {
            libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => 0,
        };
        let peer = match len {
            0 => client_peer(&slot.client).map(|(p, _)| p),
            len => sockaddr_to_std(a, len),
        };
        if let Some(peer) = peer {
            slot.conn.on_peer_address(peer);
        }
    }

    /// A completion of connection `t.key`'s operation `t.op` on `side`.
    fn dispatch(
        &mut self,
        slots: &mut Slots<UringIo>,
        t: ConnToken,
        side: Side,
        res: i32,
        flags: u32,
    ) {
        let bid = buffer_id(flags);
        let key = t.key as usize;
        let Some(Live {
            slot,
            mut env,
            backend,
        }) = slots.live(key, t.gen)
        else {
            // A completion for a previous occupant of this slot.
            if let Some(bid) = bid {
                self.ring.recv_buffers().recycle(bid);
            }
            return;
        };
        match t.op {
            Op::ClientRecv
            | Op::BackendRecv
            | Op::ClientRecvAfterSend
            | Op::BackendRecvAfterSend => {
                if matches!(t.op, Op::ClientRecvAfterSend | Op::BackendRecvAfterSend) {
                    // The linked send posted no completion before this one: it
                    // succeeded, whole (a failed send's completion comes first).
                    if let Some(n) = slot.io.linked[side_index(side)].take() {
                        slot.conn.on_sent(side, Ok(n), &mut env);
                    }
                }
                if slot.io.peer_pending && side == Side::Client {
                    self.take_peer_name(key, slot);
                }
                if res == -libc::ENOBUFS {
                    // The buffer ring ran dry: post it again once buffers return.
                    let op = match side {
                        Side::Client => Op::ClientRecv,
                        Side::Backend => Op::BackendRecv,
                    };
                    self.starved.push(ConnToken::new(key, t.gen, op));
                    return slots.carry_out(self, key);
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
                slot.io.linked[side_index(side)] = None;
                let done = if res < 0 { Err(-res) } else { Ok(res as usize) };
                slot.conn.on_sent(side, done, &mut env);
            }
            Op::BackendSocket => {
                slot.io.socket_pending = false;
                if res < 0 {
                    tracing::warn!("cannot create a backend socket: {}", errno(res));
                    slot.conn.on_connected(Err(-res), &mut env);
                } else {
                    let fd = listener::own_accepted(res);
                    if std::mem::take(&mut slot.io.connect_cancelled) {
                        self.ring.push_close(fd, detached_token(Op::Close));
                        slot.conn.on_connected(Err(libc::ECANCELED), &mut env);
                    } else {
                        let raw = fd.as_raw_fd();
                        slot.backend = Some(fd);
                        let token = ConnToken::new(key, t.gen, Op::BackendNoDelay);
                        if backend.family != AddressFamily::Unix {
                            self.ring.push_set_nodelay(raw, token);
                        }
                        // SAFETY: the address is boxed in the worker's slots
                        // and lives as long as the ring.
                        unsafe {
                            self.ring.push_connect(
                                raw,
                                &backend.addr,
                                ConnToken::new(key, t.gen, Op::BackendConnect),
                            )
                        };
                    }
                }
            }
            Op::BackendNoDelay => {
                // Only a failure completes: this kernel cannot set socket
                // options through the ring (before Linux 6.7).
                say_once(
                    &NODELAY_BY_SYSCALL,
                    "this kernel's io_uring cannot set socket options (Linux 6.7+): \
                     backend sockets by socket(2) and setsockopt(2)",
                );
                tracing::debug!("TCP_NODELAY through io_uring failed: {}", errno(res));
                self.sockets_by_ring = false;
                if let Some(fd) = &slot.backend {
                    let _ = socket::setsockopt(fd, socket::sockopt::TcpNoDelay, &true);
                }
            }
            Op::BackendConnect => {
                if res < 0 && res != -libc::ECANCELED && res != -libc::EAGAIN {
                    tracing::debug!("backend connect failed: {}", errno(res));
                }
                slot.conn
                    .on_connected(if res < 0 { Err(-res) } else { Ok(()) }, &mut env);
            }
            _ => {}
        }
        slots.carry_out(self, key);
    }

    fn accepted(&mut self, slots: &mut Slots<UringIo>, listener: usize, res: i32, flags: u32) {
        if !more(flags) {
            // Re-armed on the next tick (a back-off on EMFILE), unless draining.
            if let Some(armed) = self.accept_armed.get_mut(listener) {
                *armed = false;
            }
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                slots.accept_failed(errno(res));
            }
            return;
        }
        // X-Forwarded-For needs the device's address only: asked through the
        // ring with the first receive (no syscall of its own) where the kernel
        // can, it is in before the device's first bytes are handed in.
        let by_ring = self.wants_peer_names && self.peer_name_by_ring;
        let Some(key) = slots.admit(listener::own_accepted(res), by_ring, |_, _| Ok(())) else {
            return;
        };
        if by_ring && key < self.peer_names.len() {
            if let Some(slot) = slots.get_mut(key) {
                let raw = slot.client.as_raw_fd();
                // Unwritten until the kernel answers (no completion if it does).
                self.peer_names[key].ss_family = libc::AF_UNSPEC as libc::sa_family_t;
                slot.io.peer_pending = true;
                let addr: *mut libc::sockaddr_storage = &mut self.peer_names[key];
                let len = self
                    .peer_name_len
                    .get(listener)
                    .copied()
                    .unwrap_or(std::mem::size_of::<libc::sockaddr_in6>() as u32);
                // SAFETY: the driver's boxed array outlives the ring's use of
                // it; the operation completes at submission, before this slab
                // key could hold another connection that asks again.
                unsafe {
                    self.ring.push_peer_name(
                        raw,
                        addr,
                        len,
                        ConnToken::new(key, slot.gen, Op::PeerName),
                    )
                };
            }
        }
        slots.carry_out(self, key);
    }

    /// Post again the receives that found no buffer.
    fn retry_starved(&mut self, slots: &mut Slots<UringIo>) {
        let starved = std::mem::take(&mut self.starved);
        for t in &starved {
            let Some(Live { slot, .. }) = slots.live(t.key as usize, t.gen) else {
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

    /// Close pooled connections leaving the pool: their receive is cancelled
    /// first (in the same submission), or the socket would stay open under it.
    fn close_retired(&mut self) {
        for fd in self.retired.drain(..) {
            self.ring
                .push_cancel_fd(fd.as_raw_fd(), detached_token(Op::Cancel));
            self.ring.push_close(fd, detached_token(Op::Close));
        }
    }

    fn tick(&mut self, slots: &mut Slots<UringIo>) {
        self.ring.push_tick();
        let now = slots.now;
        slots.tick(self, now);
        if slots.draining() {
            self.pool.drain(&mut self.retired);
        } else {
            self.pool.expire(now, &mut self.retired);
            self.arm_accept();
        }
        self.close_retired();
    }

    /// Post the send `slot`'s machine asked for on `side`: alone, or linked
    /// before the receive `then_recv` (whose completion then reports the
    /// send's success).
    fn push_send(
        &mut self,
        key: usize,
        slot: &mut Slot<UringIo>,
        side: Side,
        then_recv: Option<Op>,
    ) {
        let gen = slot.gen;
        let token = move |op| ConnToken::new(key, gen, op);
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
                slot.io.linked[side_index(side)] = Some(buf.len());
                // SAFETY: the bytes are the outbox's lent buffer, neither
                // touched nor freed until the machine hears of this send
                // (`on_sent`, from the send's own completion or the linked
                // receive's), and the connection is not freed while an
                // operation is in flight.
                unsafe {
                    self.ring
                        .push_send_then_recv(fd, buf, token(op), token(recv))
                };
            }
            // SAFETY: as above; `on_sent` comes from this send's completion.
            None => unsafe { self.ring.push_send(fd, buf, token(op)) },
        }
    }
}

impl Driver for Uring {
    type Io = UringIo;

    fn act(
        &mut self,
        key: usize,
        slot: &mut Slot<UringIo>,
        action: Action,
        backend: &BackendAddr,
        env: &mut Env<'_>,
    ) {
        let gen = slot.gen;
        let token = move |op| ConnToken::new(key, gen, op);
        if !matches!(action, Action::Recv(_) | Action::Send(_)) {
            // Anything else (a cancel above all) comes after the sends asked before it.
            for side in [Side::Client, Side::Backend] {
                if std::mem::take(&mut self.held[side_index(side)]) {
                    self.push_send(key, slot, side, None);
                }
            }
        }
        match action {
            Action::Recv(side) => {
                let (op, after_send) = match side {
                    Side::Client => (Op::ClientRecv, Op::ClientRecvAfterSend),
                    Side::Backend => (Op::BackendRecv, Op::BackendRecvAfterSend),
                };
                if std::mem::take(&mut self.held[side_index(side)]) {
                    self.push_send(key, slot, side, Some(after_send));
                } else if let Some(fd) = slot.fd(side) {
                    self.ring.push_recv_select(fd, token(op));
                }
            }
            Action::Send(side)
                if self.ring.can_link_sends() && slot.conn.quiet_after_send(side) =>
            {
                self.held[side_index(side)] = true;
            }
            Action::Send(side) => self.push_send(key, slot, side, None),
            Action::ConnectPooled if self.pool.idle() > 0 => {
                // The pool's poll (for the backend's close) stays posted; the
                // machine posts its own receive, the request linked before it.
                match self.pool.take((key, gen)) {
                    Some((fd, entry)) => {
                        slot.backend = Some(fd);
                        slot.io.pool_entry = Some(entry);
                        slot.conn.on_pooled(false, env);
                    }
                    None => self.act(key, slot, Action::Connect, backend, env),
                }
            }
            Action::ReleaseBackend { reusable } => {
                let Some(fd) = slot.backend.take() else {
                    return;
                };
                let raw = fd.as_raw_fd();
                let fd = match (reusable, slot.io.pool_entry.take()) {
                    (true, Some(entry)) => match self.pool.give_back(entry, fd, env.now) {
                        Ok(rewatch) => {
                            if rewatch {
                                let (k, g) = entry;
                                self.ring
                                    .push_poll_closed(raw, ConnToken::new(k, g, Op::PoolWatch));
                            }
                            return;
                        }
                        Err(fd) => {
                            self.ring.push_cancel_fd(raw, detached_token(Op::Cancel));
                            fd
                        }
                    },
                    (true, None) => match self
                        .pool
                        .put(fd, env.now, |k, g| ConnToken::new(k, g, Op::PoolWatch))
                    {
                        Ok(t) => {
                            self.ring.push_poll_closed(raw, t);
                            return;
                        }
                        Err(fd) => fd,
                    },
                    (false, Some(entry)) => {
                        // Its poll holds the socket open: cancelled first.
                        self.pool.forget(entry);
                        self.ring.push_cancel_fd(raw, detached_token(Op::Cancel));
                        fd
                    }
                    (false, None) => fd,
                };
                self.ring.push_close(fd, detached_token(Op::Close));
            }
            Action::Connect | Action::ConnectPooled if self.sockets_by_ring => {
                // The socket through the ring: its completion (at submission)
                // posts TCP_NODELAY and the connect, with no syscall of their own.
                slot.io.socket_pending = true;
                self.ring
                    .push_socket(backend.family as i32, token(Op::BackendSocket));
            }
            Action::Connect | Action::ConnectPooled => match backend.socket() {
                Ok(fd) => {
                    let raw = fd.as_raw_fd();
                    slot.backend = Some(fd);
                    // SAFETY: the address is boxed in the worker's slots and
                    // lives as long as the ring.
                    unsafe {
                        self.ring
                            .push_connect(raw, &backend.addr, token(Op::BackendConnect))
                    };
                }
                Err(e) => {
                    tracing::warn!("cannot create a backend socket: {e}");
                    slot.conn.on_connected(Err(e as i32), env);
                }
            },
            Action::CancelConnect => {
                slot.io.connect_cancelled |= slot.io.socket_pending;
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
                slot.io.connect_cancelled |= slot.io.socket_pending;
                for side in [Side::Client, Side::Backend] {
                    if let Some(fd) = slot.fd(side) {
                        self.ring.push_cancel_fd(fd, detached_token(Op::Cancel));
                    }
                }
            }
            // Carried out by `Slots::carry_out` for both drivers.
            Action::Lookup => {}
        }
    }

    /// Sends still held back go out alone.
    fn flush(&mut self, key: usize, slot: &mut Slot<UringIo>) {
        for side in [Side::Client, Side::Backend] {
            if std::mem::take(&mut self.held[side_index(side)]) {
                self.push_send(key, slot, side, None);
            }
        }
    }

    /// Its sockets are closed by the ring (no close(2) of their own).
    fn close(&mut self, slot: Slot<UringIo>) {
        let token = detached_token(Op::Close);
        self.ring.push_close(slot.client, token);
        if let (Some(entry), Some(b)) = (slot.io.pool_entry, &slot.backend) {
            // A socket lent by the pool: its poll holds it open.
            self.pool.forget(entry);
            self.ring
                .push_cancel_fd(b.as_raw_fd(), detached_token(Op::Cancel));
        }
        if let Some(b) = slot.backend {
            self.ring.push_close(b, token);
        }
    }

    fn stop_accepting(&mut self) {
        // The multishot accepts hold the listening sockets open: cancel them,
        // so that dropping ours really closes a socket nobody else holds (the
        // kernel stops queueing connections to this worker), while a socket
        // handed to a successor stays open, its queue intact, for the
        // successor to accept from.
        for i in 0..self.listeners.len() {
            if self.accept_armed[i] {
                self.ring
                    .push_cancel(accept_token(i), detached_token(Op::Cancel));
            }
        }
        self.listeners.clear();
    }
}
