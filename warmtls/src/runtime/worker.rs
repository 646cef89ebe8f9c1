//! The per-core event loop: a slab of connections, one ring, one listener.
//!
//! Shape (as in io-uring's tcp_echo): push SQEs, submit and wait, drain CQEs,
//! dispatch on the token, then `pump` the connection, which posts whatever I/O its
//! state now allows. A connection is freed only when none of its operations is in
//! flight, so the kernel never writes into a freed buffer; a completion whose
//! token names an older occupant of the slot is dropped.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, shutdown, AddressFamily, Shutdown, SockFlag, SockType, SockaddrStorage, UnixAddr,
};
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use slab::Slab;

use super::buffers::BufferPool;
use super::ring::{more, Ring, TICK};
use super::timer::TimerWheel;
use super::token::{ConnToken, Op};
use crate::config::Backend;
use crate::conn::proxy::ProxyInfo;
use crate::conn::{Conn, Fed, Phase, PIPE_LIMIT, RECV_BUF};
use crate::metrics::{Metric, WorkerMetrics};

/// How long a connection that sent its alert or close_notify waits for the
/// client's EOF before it is closed anyway.
const DRAIN_LINGER: Duration = Duration::from_secs(1);
/// How far ahead the timer wheel files deadlines; later ones are re-filed.
const TIMER_HORIZON: Duration = Duration::from_secs(64);
/// Receive buffers made at start-up (more are made, then reused, up to the bound).
const WARM_BUFFERS: usize = 64;

/// What a worker needs; all shared state is behind `Arc`s.
pub struct WorkerSetup {
    pub index: usize,
    pub listener: OwnedFd,
    pub tls: Arc<std::sync::RwLock<Arc<ServerConfig>>>,
    pub backend: Backend,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub backend_connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub proxy_protocol: bool,
    pub metrics: Arc<Vec<WorkerMetrics>>,
    pub shutdown: Arc<AtomicBool>,
}

/// The worker's copy of its settings (the listener is owned separately, so that
/// dropping it at drain time really closes it).
struct Settings {
    index: usize,
    tls: Arc<std::sync::RwLock<Arc<ServerConfig>>>,
    backend: (AddressFamily, SockaddrStorage),
    max_connections: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    backend_connect_timeout: Duration,
    drain_timeout: Duration,
    proxy_protocol: bool,
    metrics: Arc<Vec<WorkerMetrics>>,
    shutdown: Arc<AtomicBool>,
}

struct Worker {
    ring: Ring,
    conns: Slab<Conn>,
    buffers: BufferPool,
    timers: TimerWheel,
    next_gen: u32,
    s: Settings,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    drain_deadline: Option<Instant>,
    /// The time of the current batch of completions (one clock read per batch).
    now: Instant,
    due: Vec<(u64, super::timer::Entry)>,
}

/// Set up the ring (on this thread, as SINGLE_ISSUER requires) and report the
/// outcome through `ready`, then run until shutdown.
pub fn run(s: WorkerSetup, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let ring = match Ring::new(1024) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
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
    let mut w = Worker {
        ring,
        conns: Slab::with_capacity(cap.min(65_536)),
        buffers: BufferPool::new(RECV_BUF, 2 * cap, WARM_BUFFERS),
        timers: TimerWheel::new(now, TICK, TIMER_HORIZON),
        next_gen: 0,
        listener: Some(s.listener),
        s: Settings {
            index: s.index,
            tls: s.tls,
            backend,
            max_connections: cap,
            handshake_timeout: s.handshake_timeout,
            idle_timeout: s.idle_timeout,
            backend_connect_timeout: s.backend_connect_timeout,
            drain_timeout: s.drain_timeout,
            proxy_protocol: s.proxy_protocol,
            metrics: s.metrics,
            shutdown: s.shutdown,
        },
        accept_armed: false,
        drain_deadline: None,
        now,
        due: Vec::new(),
    };
    let _ = ready.send(Ok(()));
    w.arm_accept();
    w.ring.push_tick();
    let mut cqes = Vec::with_capacity(1024);
    loop {
        if let Err(e) = w.ring.submit_and_wait() {
            tracing::error!(worker = w.s.index, "io_uring_enter failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        w.now = Instant::now();
        w.ring.drain(&mut cqes);
        for &(ud, res, flags) in &cqes {
            w.complete(ud, res, flags);
        }
        if w.finished() {
            break;
        }
    }
    if let Err(e) = w.ring.submit() {
        tracing::warn!(worker = w.s.index, "last io_uring submit failed: {e}");
    }
    let stuck = w.conns.iter().filter(|(_, c)| c.inflight > 0).count();
    if stuck > 0 {
        // The drain deadline passed with operations still in flight. The kernel
        // may still use their buffers until the ring is torn down, so leak them
        // rather than free memory it could write into; the process is exiting.
        tracing::warn!(
            worker = w.s.index,
            stuck,
            "exiting with operations in flight"
        );
        std::mem::forget(std::mem::take(&mut w.conns));
    }
    tracing::debug!(worker = w.s.index, "worker stopped");
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

/// Token of the multishot accept (not a connection).
fn accept_token() -> ConnToken {
    ConnToken::new(u32::MAX as usize, 0, Op::Accept)
}

/// Set a connection's deadline; file a timer entry when it is earlier than the
/// live one (a later deadline is found when the live entry fires).
fn set_deadline(timers: &mut TimerWheel, key: usize, c: &mut Conn, at: Instant) {
    c.deadline = at;
    let tick = timers.tick_for(at);
    if tick < c.timer_tick {
        c.timer_tick = tick;
        timers.insert(tick, (key as u32, c.gen));
    }
}

/// Push a piping connection's deadline out to `at`, except that a 0-RTT
/// connection, which pipes before its handshake is done, stays bound by its
/// handshake deadline until then.
fn set_idle_deadline(timers: &mut TimerWheel, key: usize, c: &mut Conn, at: Instant) {
    let at = if c.tls.is_handshaking() {
        at.min(c.handshake_deadline)
    } else {
        at
    };
    set_deadline(timers, key, c, at);
}

impl Worker {
    fn m(&self) -> &WorkerMetrics {
        &self.s.metrics[self.s.index]
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            if !self.accept_armed {
                let fd = l.as_raw_fd();
                self.ring.push_accept(fd, accept_token());
                self.accept_armed = true;
            }
        }
    }

    fn finished(&self) -> bool {
        match self.drain_deadline {
            Some(d) => self.conns.is_empty() || (self.now > d + Duration::from_secs(2)),
            None => false,
        }
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let Some(t) = ConnToken::decode(ud) else {
            return;
        };
        match t.op {
            Op::Accept => self.accepted(res, flags),
            Op::Tick => self.tick(),
            Op::Cancel | Op::Close => {}
            _ => {
                let key = t.key as usize;
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if c.gen != t.gen {
                    return; // a completion for a previous occupant of this slot
                }
                debug_assert!(c.inflight > 0);
                c.inflight -= 1;
                self.on_conn_event(key, t.op, res);
                self.pump(key);
            }
        }
    }

    fn accepted(&mut self, res: i32, flags: u32) {
        if !more(flags) {
            self.accept_armed = false; // re-armed on the next tick (a back-off on EMFILE)
        }
        if res < 0 {
            let e = errno(res);
            if res != -libc::ECANCELED {
                self.m().add(Metric::AcceptErrors, 1);
                tracing::warn!(
                    worker = self.s.index,
                    "accept failed: {e}; backing off until the next tick"
                );
            }
            return;
        }
        let fd = owned_fd(res);
        if self.conns.len() >= self.s.max_connections || self.drain_deadline.is_some() {
            self.m().add(Metric::Refused, 1);
            return; // dropping `fd` closes it
        }
        let cfg = self.s.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Ok(tls) = ServerConnection::new(cfg) else {
            return;
        };
        self.next_gen = self.next_gen.wrapping_add(1) & ConnToken::GEN_MASK;
        let deadline = self.now + self.s.handshake_timeout;
        let rx = self.buffers.take();
        let key = self
            .conns
            .insert(Conn::new(self.next_gen, fd, tls, rx, deadline));
        set_deadline(&mut self.timers, key, &mut self.conns[key], deadline);
        self.m().add(Metric::Connections, 1);
        self.m().add(Metric::Active, 1);
        self.pump(key);
    }

    fn on_conn_event(&mut self, key: usize, op: Op, res: i32) {
        let now = self.now;
        let idle = self.s.idle_timeout;
        let metrics = self.s.metrics.clone();
        let m = &metrics[self.s.index];
        let c = &mut self.conns[key];
        if c.phase == Phase::Closing {
            return;
        }
        match op {
            Op::ClientRecv => {
                c.client_recv_posted = false;
                if res < 0 {
                    // Reset or error: nobody is left to answer.
                    self.begin_close(key);
                    return;
                }
                if res == 0 {
                    c.client_eof = true;
                    // A FIN after the handshake is a half-close: the request already
                    // read still goes to the backend and its answer comes back.
                    if matches!(c.phase, Phase::Handshaking | Phase::Draining)
                        || c.tls.is_handshaking()
                    {
                        self.begin_close(key);
                    }
                    return;
                }
                m.add(Metric::BytesFromClients, res as u64);
                if c.phase == Phase::Draining {
                    return; // discard while we linger
                }
                match c.feed_client(res as usize) {
                    Fed::Progress => {}
                    Fed::Failed(why) => {
                        m.add(Metric::TlsErrors, 1);
                        m.add(why.reason(), 1);
                        tracing::debug!("TLS error from client: {why}");
                        set_deadline(&mut self.timers, key, c, now + DRAIN_LINGER);
                        return;
                    }
                    Fed::EarlyData => {
                        // Only a resumption carries early data; count it now, as
                        // the backend may answer and close before the client's
                        // Finished arrives.
                        m.add(Metric::ResumedHandshakes, 1);
                        m.add(Metric::EarlyDataAccepted, 1);
                        self.connect_backend(key);
                        return;
                    }
                    Fed::HandshakeDone if c.backend.is_some() => {
                        // A 0-RTT connection, already counted and piping.
                        m.add(Metric::EarlyDataBytes, c.early_data as u64);
                        if c.backend_eof && c.phase == Phase::Piping {
                            c.backend_closed();
                        }
                    }
                    Fed::HandshakeDone => {
                        let kind = c.tls.handshake_kind();
                        m.add(
                            if kind == Some(HandshakeKind::Resumed) {
                                Metric::ResumedHandshakes
                            } else {
                                Metric::FullHandshakes
                            },
                            1,
                        );
                        if c.early_data > 0 {
                            // Early data and Finished came in one read: the
                            // backend starts now, with the early data queued first.
                            m.add(Metric::EarlyDataAccepted, 1);
                            m.add(Metric::EarlyDataBytes, c.early_data as u64);
                        }
                        self.connect_backend(key);
                        return;
                    }
                }
                if c.phase == Phase::Piping {
                    set_idle_deadline(&mut self.timers, key, c, now + idle);
                }
            }
            Op::ClientSend => {
                if res < 0 {
                    c.to_client.failed();
                    self.begin_close(key);
                    return;
                }
                m.add(Metric::BytesToClients, res as u64);
                c.to_client.sent(res as usize);
                if c.phase == Phase::Piping {
                    set_idle_deadline(&mut self.timers, key, c, now + idle);
                }
            }
            Op::BackendConnect => {
                c.connect_posted = false;
                if res < 0 {
                    m.add(Metric::BackendErrors, 1);
                    tracing::debug!("backend connect failed: {}", errno(res));
                    self.begin_close(key);
                    return;
                }
                if c.phase == Phase::ConnectingBackend {
                    c.phase = Phase::Piping;
                    set_idle_deadline(&mut self.timers, key, c, now + idle);
                }
            }
            Op::BackendRecv => {
                c.backend_recv_posted = false;
                if res < 0 {
                    // The backend reset mid-answer: close without close_notify,
                    // so the device sees a truncation, not a complete answer.
                    m.add(Metric::BackendErrors, 1);
                    tracing::debug!("backend receive failed: {}", errno(res));
                    self.begin_close(key);
                    return;
                }
                if res == 0 {
                    c.backend_eof = true;
                    if c.phase == Phase::Piping {
                        c.backend_closed();
                    }
                    return;
                }
                if c.phase != Phase::Piping {
                    return; // our last bytes to the client are already queued
                }
                c.feed_backend(res as usize);
                set_idle_deadline(&mut self.timers, key, c, now + idle);
            }
            Op::BackendSend => {
                if res < 0 {
                    c.to_backend.failed();
                    m.add(Metric::BackendErrors, 1);
                    self.begin_close(key);
                    return;
                }
                c.to_backend.sent(res as usize);
                set_idle_deadline(&mut self.timers, key, c, now + idle);
            }
            Op::Accept | Op::Tick | Op::Cancel | Op::Close => {}
        }
    }

    fn connect_backend(&mut self, key: usize) {
        let (family, addr) = self.s.backend;
        let fd = match socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot create a backend socket: {e}");
                self.m().add(Metric::BackendErrors, 1);
                self.begin_close(key);
                return;
            }
        };
        if family != AddressFamily::Unix {
            let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
        }
        let rx = self.buffers.take();
        let c = &mut self.conns[key];
        if self.s.proxy_protocol {
            let addresses = client_addresses(&c.client);
            let info = ProxyInfo::of(&c.tls, addresses, c.early_data > 0);
            c.to_backend.prepend(&info.encode());
        }
        *c.backend_addr = addr;
        let raw = fd.as_raw_fd();
        c.backend = Some(fd);
        c.backend_rx = Some(rx);
        c.phase = Phase::ConnectingBackend;
        set_deadline(
            &mut self.timers,
            key,
            c,
            self.now + self.s.backend_connect_timeout,
        );
        c.connect_posted = true;
        c.inflight += 1;
        let token = ConnToken::new(key, c.gen, Op::BackendConnect);
        // SAFETY: `backend_addr` is boxed inside the connection, which is not freed
        // while this operation is in flight (inflight > 0).
        unsafe { self.ring.push_connect(raw, &c.backend_addr, token) };
    }

    /// Post whatever I/O the connection's state allows, or free it.
    fn pump(&mut self, key: usize) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Closing {
            if c.inflight == 0 {
                self.free(key);
            }
            return;
        }
        let cfd = c.client.as_raw_fd();
        let gen = c.gen;
        tracing::trace!(key, phase = ?c.phase, inflight = c.inflight, client_eof = c.client_eof, backend_eof = c.backend_eof,
            to_client = c.to_client.len(), to_backend = c.to_backend.len(), close_notify = c.close_notify_sent, client_shut = c.client_shut, "pump");
        // Half-closes and close_notify.
        if c.phase == Phase::Piping {
            if c.client_eof && c.to_backend.is_empty() && !c.to_backend.posted() && !c.backend_shut
            {
                // shutdown(2), not IORING_OP_SHUTDOWN: the kernel always punts the
                // latter to an io-wq thread, dearer than the syscall.
                if let Some(b) = &c.backend {
                    let _ = shutdown(b.as_raw_fd(), Shutdown::Write);
                }
                c.backend_shut = true;
            }
            if c.backend_eof && c.close_notify_sent && c.to_client.is_empty() {
                c.phase = Phase::Draining;
                set_deadline(&mut self.timers, key, c, now + DRAIN_LINGER);
            }
        }
        // Draining and our last bytes are out: if the client is done too, close
        // (a plain close sends the FIN); else half-close and linger for its EOF,
        // so an alert is not destroyed by a reset.
        if c.phase == Phase::Draining && c.to_client.is_empty() && !c.to_client.posted() {
            if c.client_eof {
                self.begin_close(key);
                self.pump(key); // frees it now if nothing is in flight
                return;
            }
            if !c.client_shut {
                let _ = shutdown(cfd, Shutdown::Write);
                c.client_shut = true;
            }
        }
        // Client send.
        if let Some(buf) = c.to_client.next_send() {
            c.inflight += 1;
            // SAFETY: `buf` is the outbox's lent buffer, which is not touched until
            // `sent`/`failed` is called from this send's completion, and the
            // connection is not freed while inflight > 0.
            unsafe {
                self.ring
                    .push_send(cfd, buf, ConnToken::new(key, gen, Op::ClientSend))
            };
        }
        // Client receive, unless the backend side is backed up.
        if !c.client_recv_posted && !c.client_eof && c.to_backend.len() < PIPE_LIMIT {
            c.client_recv_posted = true;
            c.inflight += 1;
            // SAFETY: `client_rx` is boxed in the connection and only read after
            // this receive completes; the connection (and the box) is not freed
            // or replaced while inflight > 0.
            unsafe {
                self.ring.push_recv(
                    cfd,
                    &mut c.client_rx,
                    ConnToken::new(key, gen, Op::ClientRecv),
                )
            };
        }
        if c.phase != Phase::Piping {
            return;
        }
        let Some(bfd) = c.backend.as_ref().map(|b| b.as_raw_fd()) else {
            return;
        };
        if let Some(buf) = c.to_backend.next_send() {
            c.inflight += 1;
            // SAFETY: as for the client send.
            unsafe {
                self.ring
                    .push_send(bfd, buf, ConnToken::new(key, gen, Op::BackendSend))
            };
        }
        if !c.backend_recv_posted && !c.backend_eof && c.to_client.len() < PIPE_LIMIT {
            if let Some(rx) = c.backend_rx.as_deref_mut() {
                c.backend_recv_posted = true;
                c.inflight += 1;
                // SAFETY: as for the client receive, with `backend_rx`, which stays
                // in the connection until it is freed.
                unsafe {
                    self.ring
                        .push_recv(bfd, rx, ConnToken::new(key, gen, Op::BackendRecv))
                };
            }
        }
    }

    /// Shut both sockets down so pending operations complete, then free the
    /// connection once none is in flight (see [`Worker::pump`]).
    fn begin_close(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Closing {
            return;
        }
        c.phase = Phase::Closing;
        if c.inflight == 0 {
            return; // nothing to wake: the caller's pump frees it
        }
        // Wake whatever receive or send is pending so it completes and the
        // connection can be freed.
        let _ = shutdown(c.client.as_raw_fd(), Shutdown::Both);
        if let Some(b) = &c.backend {
            let _ = shutdown(b.as_raw_fd(), Shutdown::Both);
        }
        if c.connect_posted {
            let target = ConnToken::new(key, c.gen, Op::BackendConnect);
            self.ring
                .push_cancel(target, ConnToken::new(key, 0, Op::Cancel));
        }
    }

    /// Free a connection with nothing in flight: its buffers go back to the
    /// pool, its sockets are closed by the ring (no close(2) of their own).
    fn free(&mut self, key: usize) {
        let c = self.conns.remove(key);
        debug_assert_eq!(c.inflight, 0);
        let Conn {
            client,
            backend,
            client_rx,
            backend_rx,
            ..
        } = c;
        let token = ConnToken::new(u32::MAX as usize, 0, Op::Close);
        self.ring.push_close(client, token);
        if let Some(b) = backend {
            self.ring.push_close(b, token);
        }
        self.buffers.give(client_rx);
        if let Some(b) = backend_rx {
            self.buffers.give(b);
        }
        self.m().sub(Metric::Active, 1);
    }

    fn tick(&mut self) {
        self.ring.push_tick();
        let now = self.now;
        if self.s.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.drain_deadline = Some(now + self.s.drain_timeout);
            if self.accept_armed {
                // The multishot accept holds the listening socket open: cancel it,
                // so dropping ours really closes it and the kernel stops queueing
                // connections to this worker.
                let cancel = ConnToken::new(u32::MAX as usize, 0, Op::Cancel);
                self.ring.push_cancel(accept_token(), cancel);
            }
            self.listener = None;
            tracing::debug!(worker = self.s.index, open = self.conns.len(), "draining");
        }
        if self.drain_deadline.is_none() {
            self.arm_accept();
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        if self.drain_deadline.is_some_and(|d| now > d) {
            // Drain time is up: everything still open goes.
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.expire(key);
            }
        } else {
            self.timers.expire(now, &mut due);
            for &(tick, (key, gen)) in &due {
                let key = key as usize;
                let Some(c) = self.conns.get_mut(key) else {
                    continue;
                };
                if c.gen != gen || c.timer_tick != tick {
                    continue; // a stale entry: the connection has a newer one
                }
                c.timer_tick = u64::MAX;
                if c.phase == Phase::Closing {
                    continue;
                }
                if c.deadline > now {
                    let at = c.deadline;
                    set_deadline(&mut self.timers, key, c, at);
                    continue;
                }
                self.expire(key);
            }
        }
        self.due = due;
    }

    /// A connection's deadline passed: count why, and close it.
    fn expire(&mut self, key: usize) {
        match self.conns[key].phase {
            Phase::Handshaking | Phase::Piping => self.m().add(Metric::Timeouts, 1),
            Phase::ConnectingBackend => self.m().add(Metric::BackendErrors, 1),
            Phase::Draining | Phase::Closing => {}
        }
        self.begin_close(key);
        self.pump(key);
    }
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
