//! A driver with no sockets: it carries out a connection's actions on byte
//! queues in memory, so the very machine the endpoint runs can be driven by the
//! fuzzer, the sleep simulator and tests — step by step, with the test deciding
//! when each posted operation completes and how.
//!
//! Sends complete at once with every byte lent (or, with [`MemoryDriver::send_limit`],
//! partially); receives stay posted until the caller delivers bytes, an EOF or an
//! error; the backend connect stays in flight until [`MemoryDriver::connected`].
//! A pool of [`MemoryDriver::pooled`] idle backend connections satisfies
//! `ConnectPooled` at once (their idle receive becomes the connection's);
//! released connections go back to it, or are counted as closed.
use std::time::{Duration, Instant};

use super::{Action, BackendLog, BufPool, Conn, Env, Limits, Side, RECV_BUF};
use crate::metrics::WorkerMetrics;
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
}

/// What the machine borrows while it handles an event.
struct World {
    tls: ServerConfigs,
    limits: Limits,
    metrics: WorkerMetrics,
    pool: BufPool,
    log: BackendLog,
    now: Instant,
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
    /// Fail the next backend send with this errno (a connection the backend
    /// reset while it sat in the pool).
    pub fail_backend_send: Option<i32>,
}

impl MemoryDriver {
    /// A connection accepted now.
    pub fn new(tls: ServerConfigs, limits: Limits) -> MemoryDriver {
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
                    self.posted.backend_recv = true;
                    let mut env = self.world.env();
                    self.conn.on_pooled(&mut env);
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
