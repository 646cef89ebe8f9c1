//! The per-core event loop: a slab of connections, one ring, one listener.
//!
//! Shape (as in io-uring's tcp_echo): push SQEs, submit and wait, drain CQEs,
//! dispatch on the token, then `pump` the connection, which posts whatever I/O its
//! state now allows. A connection is freed only when none of its operations is in
//! flight, so the kernel never writes into a freed buffer.
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

use super::ring::{more, Ring};
use super::token::{ConnToken, Op};
use crate::config::Backend;
use crate::conn::{Conn, Fed, Phase, PIPE_LIMIT};
use crate::metrics::{Metric, WorkerMetrics};

/// How long a connection that sent its alert or close_notify waits for the
/// client's EOF before it is closed anyway.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

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
    pub metrics: Arc<Vec<WorkerMetrics>>,
    pub shutdown: Arc<AtomicBool>,
}

struct Worker {
    ring: Ring,
    conns: Slab<Conn>,
    next_gen: u32,
    s: WorkerSetup,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    drain_deadline: Option<Instant>,
    scratch: Vec<usize>,
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
    let cap = s.max_connections;
    let listener = s.listener.try_clone().ok();
    let mut w = Worker {
        ring,
        conns: Slab::with_capacity(cap.min(65_536)),
        next_gen: 0,
        listener,
        s,
        accept_armed: false,
        drain_deadline: None,
        scratch: Vec::new(),
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
        w.ring.drain(&mut cqes);
        for &(ud, res, flags) in &cqes {
            w.complete(ud, res, flags);
        }
        if w.finished() {
            break;
        }
    }
    tracing::debug!(worker = w.s.index, "worker stopped");
}

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}

impl Worker {
    fn m(&self) -> &WorkerMetrics {
        &self.s.metrics[self.s.index]
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            if !self.accept_armed {
                let fd = l.as_raw_fd();
                self.ring.push_accept(fd);
                self.accept_armed = true;
            }
        }
    }

    fn finished(&self) -> bool {
        match self.drain_deadline {
            Some(d) => self.conns.is_empty() || (Instant::now() > d + Duration::from_secs(2)),
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
            Op::Cancel => {}
            _ => {
                let key = t.key as usize;
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if c.gen != t.gen {
                    return; // a completion for a previous occupant of this slot
                }
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
        // SAFETY-free: the kernel handed us a new descriptor we now own.
        let fd = owned_fd(res);
        if self.conns.len() >= self.s.max_connections || self.drain_deadline.is_some() {
            self.m().add(Metric::Refused, 1);
            return; // dropping `fd` closes it
        }
        let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
        let cfg = self.s.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Ok(tls) = ServerConnection::new(cfg) else {
            return;
        };
        self.next_gen = self.next_gen.wrapping_add(1) & ConnToken::GEN_MASK;
        let conn = Conn::new(
            self.next_gen,
            fd,
            tls,
            Instant::now() + self.s.handshake_timeout,
        );
        let key = self.conns.insert(conn);
        self.m().add(Metric::Connections, 1);
        self.m().add(Metric::Active, 1);
        self.pump(key);
    }

    fn on_conn_event(&mut self, key: usize, op: Op, res: i32) {
        let now = Instant::now();
        let idle = self.s.idle_timeout;
        let metrics = self.s.metrics.clone();
        let m = &metrics[self.s.index];
        let c = &mut self.conns[key];
        if c.closing {
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
                    if matches!(c.phase, Phase::Handshaking | Phase::Draining) {
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
                        tracing::debug!("TLS error from client: {why}");
                        c.deadline = now + DRAIN_LINGER;
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
                        self.connect_backend(key);
                        return;
                    }
                }
                if c.phase == Phase::Piping {
                    c.deadline = now + idle;
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
                    c.deadline = now + idle;
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
                c.phase = Phase::Piping;
                c.deadline = now + idle;
            }
            Op::BackendRecv => {
                c.backend_recv_posted = false;
                if res <= 0 {
                    if res < 0 {
                        m.add(Metric::BackendErrors, 1);
                    }
                    c.backend_eof = true;
                    c.backend_closed();
                    return;
                }
                c.feed_backend(res as usize);
                c.deadline = now + idle;
            }
            Op::BackendSend => {
                if res < 0 {
                    c.to_backend.failed();
                    m.add(Metric::BackendErrors, 1);
                    self.begin_close(key);
                    return;
                }
                c.to_backend.sent(res as usize);
                c.deadline = now + idle;
            }
            Op::Accept | Op::Tick | Op::Cancel => {}
        }
    }

    fn connect_backend(&mut self, key: usize) {
        let now = Instant::now();
        let timeout = self.s.backend_connect_timeout;
        let (family, addr) = match &self.s.backend {
            Backend::Tcp(a) => (
                if a.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                },
                SockaddrStorage::from(*a),
            ),
            Backend::Unix(p) => match UnixAddr::new(p.as_path()) {
                Ok(u) => (AddressFamily::Unix, unix_storage(&u)),
                Err(_) => {
                    self.m().add(Metric::BackendErrors, 1);
                    self.begin_close(key);
                    return;
                }
            },
        };
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
        let c = &mut self.conns[key];
        *c.backend_addr = addr;
        let raw = fd.as_raw_fd();
        c.backend = Some(fd);
        c.phase = Phase::ConnectingBackend;
        c.deadline = now + timeout;
        c.connect_posted = true;
        c.inflight += 1;
        let token = ConnToken::new(key, c.gen, Op::BackendConnect);
        // SAFETY: `backend_addr` is boxed inside the connection, which is not freed
        // while this operation is in flight (inflight > 0).
        unsafe { self.ring.push_connect(raw, &c.backend_addr, token) };
    }

    /// Post whatever I/O the connection's state allows, or free it.
    fn pump(&mut self, key: usize) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closing {
            if c.inflight == 0 {
                self.conns.remove(key);
                self.m().sub(Metric::Active, 1);
            }
            return;
        }
        let cfd = c.client.as_raw_fd();
        let gen = c.gen;
        tracing::trace!(key, phase = ?c.phase, inflight = c.inflight, client_eof = c.client_eof, backend_eof = c.backend_eof,
            to_client = c.to_client.len(), to_backend = c.to_backend.len(), close_notify = c.close_notify_sent, client_shut = c.client_shut, "pump");
        // Half-closes and close_notify.
        if c.phase == Phase::Piping {
            if c.client_eof && c.to_backend.is_empty() && !c.backend_shut {
                if let Some(b) = &c.backend {
                    let _ = shutdown(b.as_raw_fd(), Shutdown::Write);
                }
                c.backend_shut = true;
            }
            if c.backend_eof && c.close_notify_sent && c.to_client.is_empty() {
                c.phase = Phase::Draining;
                c.deadline = now + DRAIN_LINGER;
            }
        }
        if c.phase == Phase::Draining
            && c.to_client.is_empty()
            && !c.to_client.posted()
            && !c.client_shut
        {
            let _ = shutdown(cfd, Shutdown::Write);
            c.client_shut = true;
        }
        if c.phase == Phase::Draining && c.client_shut && c.client_eof {
            self.begin_close(key);
            self.pump(key); // frees it now if nothing is in flight
            return;
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
        if !c.client_recv_posted
            && !c.client_eof
            && c.to_backend.len() < PIPE_LIMIT
            && !c.client_shut_read()
        {
            c.client_recv_posted = true;
            c.inflight += 1;
            // SAFETY: `client_rx` is boxed in the connection and only read after
            // this receive completes; the connection outlives the operation.
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
            c.backend_recv_posted = true;
            c.inflight += 1;
            // SAFETY: as for the client receive, with `backend_rx`.
            unsafe {
                self.ring.push_recv(
                    bfd,
                    &mut c.backend_rx,
                    ConnToken::new(key, gen, Op::BackendRecv),
                )
            };
        }
    }

    /// Close both sockets' traffic so pending operations complete, then free the
    /// connection once none is in flight.
    fn begin_close(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
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

    fn tick(&mut self) {
        self.ring.push_tick();
        let now = Instant::now();
        if self.s.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.drain_deadline = Some(now + self.s.drain_timeout);
            self.listener = None; // closes our listener: the kernel stops queueing to it
            tracing::debug!(worker = self.s.index, open = self.conns.len(), "draining");
        }
        if self.drain_deadline.is_none() {
            self.arm_accept();
        }
        let force = self.drain_deadline.is_some_and(|d| now > d);
        let mut expired = std::mem::take(&mut self.scratch);
        expired.clear();
        for (key, c) in self.conns.iter() {
            if !c.closing && (force || c.deadline <= now) {
                expired.push(key);
            }
        }
        for &key in &expired {
            let phase = self.conns[key].phase;
            match phase {
                Phase::Handshaking | Phase::Piping => self.m().add(Metric::Timeouts, 1),
                Phase::ConnectingBackend => self.m().add(Metric::BackendErrors, 1),
                Phase::Draining => {}
            }
            self.begin_close(key);
            self.pump(key);
        }
        self.scratch = expired;
    }
}

impl Conn {
    fn client_shut_read(&self) -> bool {
        false
    }
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
