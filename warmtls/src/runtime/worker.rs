//! The per-core io_uring loop: one ring, one listener, and the worker's
//! connections (`slots`).
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
use std::time::Duration;

use nix::sys::socket::{shutdown, Shutdown};

use super::listener;
use super::ring::{buffer_id, more, Ring};
pub use super::slots::WorkerSetup;
use super::slots::{BackendAddr, Driver, Live, Slot, Slots};
use super::token::{ConnToken, Op};
use crate::conn::{Action, Env, Side, RECV_BUF};

/// Receive buffers in the worker's provided-buffer ring: a buffer is held only
/// from the moment bytes arrive until the machine has consumed them (in the
/// same loop iteration), so this bounds receives completing in one batch, not
/// open connections.
const RECV_BUFFERS: u16 = 256;

/// The ring and what the io_uring driver keeps beside it.
struct Uring {
    ring: Ring,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    /// Receives that found the buffer ring empty, to post again once buffers
    /// come back.
    starved: Vec<ConnToken>,
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
    let mut slots: Slots<()> = match Slots::new(&s) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut io = Uring {
        ring,
        listener: Some(s.listener),
        accept_armed: false,
        starved: Vec::with_capacity(usize::from(RECV_BUFFERS)),
    };
    let _ = ready.send(Ok(()));
    io.arm_accept();
    io.ring.push_tick();
    let mut cqes = Vec::with_capacity(4096);
    loop {
        if let Err(e) = io.ring.submit_and_wait() {
            tracing::error!(worker = slots.index(), "io_uring_enter failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        slots.now = std::time::Instant::now();
        io.ring.drain(&mut cqes);
        for &(ud, res, flags) in &cqes {
            io.complete(&mut slots, ud, res, flags);
        }
        if !io.starved.is_empty() {
            // Every buffer taken in this batch has been consumed and given back.
            io.retry_starved(&mut slots);
        }
        if slots.finished() {
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
    tracing::debug!("worker stopped");
}

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}

/// Token of the multishot accept (not a connection).
fn accept_token() -> ConnToken {
    ConnToken::new(u32::MAX as usize, 0, Op::Accept)
}

/// Token of operations that belong to no live connection (cancels, closes).
fn detached_token(op: Op) -> ConnToken {
    ConnToken::new(u32::MAX as usize, 0, op)
}

impl Uring {
    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            if !self.accept_armed {
                let fd = l.as_raw_fd();
                self.ring.push_accept(fd, accept_token());
                self.accept_armed = true;
            }
        }
    }

    fn complete(&mut self, slots: &mut Slots<()>, ud: u64, res: i32, flags: u32) {
        let Some(t) = ConnToken::decode(ud) else {
            return;
        };
        let side = match t.op {
            Op::Accept => return self.accepted(slots, res, flags),
            Op::Tick => return self.tick(slots),
            Op::Cancel | Op::Close | Op::Client | Op::Backend => return,
            Op::ClientRecv | Op::ClientSend => Side::Client,
            Op::BackendConnect | Op::BackendRecv | Op::BackendSend => Side::Backend,
        };
        let bid = buffer_id(flags);
        let key = t.key as usize;
        let Some(Live { slot, mut env, .. }) = slots.live(key, t.gen) else {
            // A completion for a previous occupant of this slot.
            if let Some(bid) = bid {
                self.ring.recv_buffers().recycle(bid);
            }
            return;
        };
        match t.op {
            Op::ClientRecv | Op::BackendRecv => {
                if res == -libc::ENOBUFS {
                    // The buffer ring ran dry: post it again once buffers return.
                    self.starved.push(t);
                    return;
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
                let done = if res < 0 { Err(-res) } else { Ok(res as usize) };
                slot.conn.on_sent(side, done, &mut env);
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

    fn accepted(&mut self, slots: &mut Slots<()>, res: i32, flags: u32) {
        if !more(flags) {
            self.accept_armed = false; // re-armed on the next tick (a back-off on EMFILE)
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                slots.accept_failed(errno(res));
            }
            return;
        }
        if let Some(key) = slots.admit(listener::adopt(res), |_, _| Ok(())) {
            slots.carry_out(self, key);
        }
    }

    /// Post again the receives that found no buffer.
    fn retry_starved(&mut self, slots: &mut Slots<()>) {
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

    fn tick(&mut self, slots: &mut Slots<()>) {
        self.ring.push_tick();
        let now = slots.now;
        slots.tick(self, now);
        if !slots.draining() {
            self.arm_accept();
        }
    }
}

impl Driver for Uring {
    type Io = ();

    fn act(
        &mut self,
        key: usize,
        slot: &mut Slot<()>,
        action: Action,
        backend: &BackendAddr,
        env: &mut Env<'_>,
    ) {
        let gen = slot.gen;
        let token = move |op| ConnToken::new(key, gen, op);
        match action {
            Action::Recv(side) => {
                let op = match side {
                    Side::Client => Op::ClientRecv,
                    Side::Backend => Op::BackendRecv,
                };
                if let Some(fd) = slot.fd(side) {
                    self.ring.push_recv_select(fd, token(op));
                }
            }
            Action::Send(side) => {
                let op = match side {
                    Side::Client => Op::ClientSend,
                    Side::Backend => Op::BackendSend,
                };
                if let Some(fd) = slot.fd(side) {
                    // SAFETY: the bytes are the outbox's lent buffer, which is
                    // neither touched nor freed until this send completes
                    // (`on_sent`), and the connection is not freed while an
                    // operation is in flight.
                    unsafe { self.ring.push_send(fd, slot.conn.send_buf(side), token(op)) };
                }
            }
            Action::Connect => match backend.socket() {
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
        }
    }

    /// Its sockets are closed by the ring (no close(2) of their own).
    fn close(&mut self, slot: Slot<()>) {
        let token = detached_token(Op::Close);
        self.ring.push_close(slot.client, token);
        if let Some(b) = slot.backend {
            self.ring.push_close(b, token);
        }
    }

    fn stop_accepting(&mut self) {
        if self.accept_armed {
            // The multishot accept holds the listening socket open: cancel it,
            // so dropping ours really closes it and the kernel stops queueing
            // connections to this worker.
            self.ring
                .push_cancel(accept_token(), detached_token(Op::Cancel));
        }
        self.listener = None;
    }
}
