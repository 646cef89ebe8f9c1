//! One client connection as a sans-I/O state machine: it owns the connection's
//! whole life — the ClientHello, the TLS handshake driven by hand, the backend
//! connection, the plaintext both ways, half-closes, timeouts, draining — and
//! never touches a socket.
//!
//! A driver (the io_uring worker in `runtime::worker`; the sleep simulator and
//! the fuzz target in memory) feeds it events (`on_recv`, `on_sent`,
//! `on_connected`, `on_timeout`) and carries out the [`Action`]s that
//! [`Conn::poll`] hands back, one at a time, until it says there is nothing to
//! do. The machine assumes every action it hands out is carried out and
//! completes exactly once (a cancelled operation completes too, with an error);
//! the driver frees the connection when [`Conn::is_finished`].
//!
//! It must never panic on client bytes: a TLS error queues the alert rustls made
//! and moves the connection to `Draining`. What happens is counted here (one
//! place, whichever driver runs it).
//!
//! Two backend protocols ([`Limits::http`]): `tcp` pipes the plaintext both ways
//! untouched, one backend connection per device connection, half-closes passed
//! on. `http` frames HTTP/1.x requests and responses (`http`), one exchange at
//! a time, and hands the backend connection back to the driver's pool
//! ([`Action::ReleaseBackend`]) when a response is complete and both sides keep
//! it alive; the next exchange, this device's or another's, asks for one with
//! [`Action::ConnectPooled`].
//!
//! States (see docs/ARCHITECTURE.md for the diagram):
//!
//! | state | waits for | ends by |
//! |---|---|---|
//! | `Hello` | the whole ClientHello (rustls' `Acceptor`) | the config is chosen, TLS starts; or an alert; or `Parked` |
//! | `Parked` | the shared session tier's answer for the session it names (no byte read meanwhile) | TLS starts (a found session resumes); past `lookup_timeout`, TLS starts as a miss |
//! | `Handshaking` | the handshake to complete | backend connect starts; or an alert |
//! | `Connecting` | the backend connect (0-RTT: the handshake may still run) | `Piping`; or close_notify if the backend is down |
//! | `Piping` | bytes either way, idle timeout | close_notify sent and out → `Draining` |
//! | `Draining` | our last bytes out, then the client's EOF (a short linger) | `Closing` |
//! | `Closing` | operations still in flight to complete | freed |
#![deny(missing_docs)]

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::server::Acceptor;
use rustls::{HandshakeKind, ServerConnection};

use crate::metrics::{Metric, WorkerMetrics};
use crate::store::{SessionCache, TicketScope};
use crate::tier::{LookupOp, LookupRequest, Outcome};
use crate::tls::hello_rule::{self, HelloFeatures, TicketPolicy};
use crate::tls::ServerConfigs;

mod backend_log;
mod first_flight;
pub mod hello;
pub mod http;
#[cfg(test)]
mod lifecycle_tests;
pub mod memory;
mod outbox;
pub mod proxy;
#[cfg(test)]
mod tests;
pub use backend_log::{BackendFailure, BackendLog};
use first_flight::FirstFlight;
use http::{Completed, Forwarding, Http};
pub use outbox::{BufPool, Outbox, POOLED_CAPACITY};

/// Bytes buffered toward one side before we stop reading the other side.
pub const PIPE_LIMIT: usize = 64 * 1024;
/// Largest receive a driver hands in at once: one maximum-size TLS plaintext
/// fragment, so a backend read goes out as one record.
pub const RECV_BUF: usize = 16 * 1024;
/// How long a connection that sent its alert or close_notify waits for the
/// client's EOF before it is closed anyway.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);
/// How long a backend connect the kernel turned away with EAGAIN (a unix
/// backend whose accept queue is full, or no local port left) waits before it
/// is tried again, until the connect timeout.
pub const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// Which socket of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device.
    Client,
    /// The plaintext backend.
    Backend,
}

/// What the driver must do next for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Post a receive on this side's socket; report it with [`Conn::on_recv`].
    Recv(Side),
    /// Post a send of [`Conn::send_buf`] for this side, which stays put until
    /// [`Conn::on_sent`].
    Send(Side),
    /// Open a new backend connection (socket + connect); report it with
    /// [`Conn::on_connected`].
    Connect,
    /// Give the connection a backend connection (http mode): an idle one from
    /// the driver's pool, if it holds one, reported with [`Conn::on_pooled`];
    /// else a new one, exactly as [`Action::Connect`]. A driver without a pool
    /// treats it as `Connect`.
    ConnectPooled,
    /// The connection is done with its backend socket and nothing of it is in
    /// flight: keep it open in the pool for a later `ConnectPooled` if
    /// `reusable` (and the pool has room), else close it. The connection has no
    /// backend socket afterwards until it asks again.
    ReleaseBackend {
        /// The backend may take another request on this connection.
        reusable: bool,
    },
    /// Cancel what is in flight on the backend socket: a connect being given
    /// up, or a receive before [`Action::ReleaseBackend`] (each still
    /// completes, cancelled).
    CancelConnect,
    /// Half-close this side's socket for writing (a FIN after what was sent).
    ShutdownWrite(Side),
    /// Cancel every operation still in flight; the connection is freed once
    /// [`Conn::is_finished`].
    Cancel,
    /// Ask the shared session tier for [`Conn::lookup_request`]; report the
    /// outcome with [`Conn::on_lookup`] (a late one, after the connection gave
    /// up waiting, is ignored). Nothing is lent: the request is a copy.
    Lookup,
}

/// What the machine needs of the shared session tier, when there is one.
#[derive(Debug, Clone)]
pub struct TierView {
    /// This host's store, probed before the tier is asked.
    pub cache: SessionCache,
    /// How long a connection stays parked for the tier's answer.
    pub lookup_timeout: Duration,
}

/// Timeouts and options, the same for every connection of an endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to the client's Finished (`handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Between bytes once piping (`idle_timeout`).
    pub idle_timeout: Duration,
    /// For the backend connect (`backend_connect_timeout`).
    pub backend_connect_timeout: Duration,
    /// Send a PROXY protocol v2 header to the backend first.
    pub proxy_protocol: bool,
    /// `backend_protocol = "http"`: frame HTTP/1.x and pool backend connections
    /// (`None`: pipe bytes untouched).
    pub http: Option<HttpLimits>,
}

/// Options of `backend_protocol = "http"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpLimits {
    /// Add `X-TLS-Resumed: 1|0` to each forwarded request.
    pub resumed_header: bool,
}

/// What a connection needs from its worker while it handles an event.
pub struct Env<'a> {
    /// The driver's clock for this event.
    pub now: Instant,
    /// The endpoint's timeouts and options.
    pub limits: &'a Limits,
    /// The TLS configurations, chosen per ClientHello.
    pub tls: &'a ServerConfigs,
    /// This worker's counters.
    pub metrics: &'a WorkerMetrics,
    /// This worker's send buffers.
    pub pool: &'a mut BufPool,
    /// This worker's backend failure log.
    pub backend_log: &'a mut BackendLog,
    /// The shared session tier, if several endpoints share sessions.
    pub tier: Option<&'a TierView>,
}

/// Why a client's TLS stream was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// rustls would not take the bytes (e.g. a record too large for its buffer).
    #[error("unreadable TLS records: {0}")]
    Records(std::io::Error),
    /// The bytes broke the protocol (bad message, failed handshake, fatal alert).
    #[error(transparent)]
    Protocol(#[from] rustls::Error),
    /// A record in the client's first flight longer than the protocol allows
    /// (see `first_flight`).
    #[error("a record longer than 2^14 bytes (record_overflow)")]
    RecordOverflow,
}

impl TlsFailure {
    /// The counter this failure goes under (besides `tls_errors`).
    pub fn reason(&self) -> Metric {
        use rustls::{Error as E, InvalidMessage, PeerMisbehaved};
        match self {
            TlsFailure::Records(_) | TlsFailure::RecordOverflow => Metric::TlsOversizedRecord,
            TlsFailure::Protocol(e) => match e {
                E::InvalidMessage(InvalidMessage::MessageTooLarge) | E::PeerSentOversizedRecord => {
                    Metric::TlsOversizedRecord
                }
                E::InvalidMessage(_) => Metric::TlsMalformed,
                E::PeerMisbehaved(PeerMisbehaved::IncorrectBinder) => Metric::TlsBadPskBinder,
                E::PeerMisbehaved(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. } => Metric::TlsMisbehaved,
                E::PeerIncompatible(_) => Metric::TlsIncompatible,
                E::DecryptError => Metric::TlsDecryptFailed,
                E::AlertReceived(_) => Metric::TlsPeerAlert,
                _ => Metric::TlsOther,
            },
        }
    }
}

/// Where the connection is in its life; each state carries its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the whole ClientHello.
    Hello,
    /// The ClientHello is whole and names a session this host may not hold:
    /// waiting for the shared tier until `deadline`, reading nothing.
    Parked { deadline: Instant },
    /// Handshaking, no backend yet.
    Handshaking,
    /// The backend connect is in flight (posted or about to be).
    Connecting { deadline: Instant },
    /// Forwarding plaintext both ways.
    Piping { idle_deadline: Instant },
    /// Our last bytes (an alert or close_notify) are going out; then half-close
    /// and wait briefly for the client's EOF so the alert is not lost to a reset.
    Draining { deadline: Instant },
    /// Done: waiting for the operations still in flight to complete.
    Closing { cancelled: bool },
}

/// The TLS side: nothing until the first byte (an idle connection allocates
/// nothing), then rustls' `Acceptor` until the ClientHello is whole, then the
/// connection made with the configuration chosen for that ClientHello.
enum Tls {
    Waiting,
    Accepting(Acceptor),
    /// The whole ClientHello, held while the connection is parked.
    Held(rustls::server::Accepted),
    Established(ServerConnection),
    /// The ClientHello was refused; only its alert is left to send.
    Refused,
}

/// The backend connection's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not asked for yet.
    None,
    /// Asked for: `Action::Connect` not handed out yet.
    Wanted,
    /// `Action::Connect` handed out, not completed.
    Connecting,
    /// The connect was turned away for now (EAGAIN): `Wanted` again at `at`.
    Retry { at: Instant },
    /// Connected.
    Open,
    /// Down (connect failed or timed out, or an I/O error). `cancel` while a
    /// connect is still in flight and `Action::CancelConnect` is still to go.
    Failed {
        connect_in_flight: bool,
        cancel: bool,
    },
    /// http: being handed back (`Action::ReleaseBackend`) once nothing of it is
    /// in flight; `cancelled` once `Action::CancelConnect` went for a receive.
    Releasing { reusable: bool, cancelled: bool },
}

/// One socket's side of the connection: what waits to go out on it, and where
/// its receive and write direction stand.
#[derive(Debug, Default)]
struct Half {
    outbox: Outbox,
    recv_posted: bool,
    /// EOF (for the client: TCP FIN or close_notify) seen.
    eof: bool,
    /// We shut its write direction.
    shut: bool,
}

impl Half {
    /// Operations of this half the kernel holds.
    fn in_flight(&self) -> u32 {
        u32::from(self.recv_posted) + u32::from(self.outbox.posted())
    }
}

/// A client connection and everything it knows; its sockets are the driver's.
pub struct Conn {
    state: State,
    tls: Tls,
    client: Half,
    backend: Half,
    link: Link,
    /// When the handshake must be done: a 0-RTT connection pipes before its
    /// handshake completes, and this still bounds it.
    handshake_deadline: Instant,
    close_notify_sent: bool,
    /// What the store learned about this connection's session (see
    /// `store::SessionCache::ticket_scope`): its lineage, and the TLS 1.3 ticket
    /// it took, kept pending until [`Conn::settle_ticket`].
    session: TicketScope,
    /// Everything queued for the client once the handshake was complete (the
    /// replacement ticket included) has been handed to the kernel.
    ticket_flight_sent: bool,
    /// The device sent bytes after that flight went out: it is alive and
    /// talking, not lost on the link.
    client_spoke_after_ticket: bool,
    /// The device has its replacement ticket: it closed its side (FIN or
    /// close_notify) after that flight went out, or it was still talking when
    /// the pending window closed.
    ticket_delivered: bool,
    /// The ticket's pending window is over: settle it, delivered or not.
    settle_now: bool,
    /// 0-RTT bytes accepted from the client and queued for the backend.
    early_data: usize,
    /// The backend was started on accepted 0-RTT data, before the handshake
    /// completed (the resumption is counted then).
    zero_rtt: bool,
    /// Record-size checks until we have sent the client anything.
    first_flight: Option<FirstFlight>,
    /// The device's address and ours, when the driver knows them (PROXY header,
    /// X-Forwarded-For).
    addresses: Option<(SocketAddr, SocketAddr)>,
    /// With a shared tier: a copy of the first flight until the ClientHello is
    /// whole (its session keys are read from it), then, while parked, the
    /// bytes received behind it. A pooled buffer, held only while bytes wait.
    hello_buf: Vec<u8>,
    /// The first flight outgrew one pooled buffer: no tier lookup.
    hello_overflow: bool,
    /// The lookup of a parked connection.
    parked: Option<ParkedLookup>,
    /// When the driver accepted it (the connection-time histogram).
    accepted_at: Instant,
    /// http mode: the framing of requests and responses.
    http: Option<Http>,
    /// `Action::ConnectPooled` to ask for (else `Connect`) when the link is wanted.
    pooled_wanted: bool,
    /// The open backend link came from the pool.
    link_pooled: bool,
    /// Bytes of this device's requests were written to the open backend link.
    link_written: bool,
    /// http: the pooled link died before any byte of the request was written:
    /// send it again on a new connection once the old one is released.
    retry_fresh: bool,
    /// http: a 425 answered the 0-RTT request; send it again once the
    /// handshake is complete.
    retry_after_handshake: bool,
    /// http: the device connection ends (close_notify) once the current
    /// response is out; nothing more is read from the backend for it.
    ending: bool,
    /// Our last words to the device were a fatal alert (not close_notify).
    alerted: bool,
    /// The ClientHello's bytes when it came in more than one read and ticket
    /// rules need them (empty, unallocated, otherwise).
    hello_bytes: Vec<u8>,
}

/// What a parked connection asked the tier.
#[derive(Debug, Clone, Copy)]
struct ParkedLookup {
    req: LookupRequest,
    /// The ClientHello carries 0-RTT data this endpoint would accept: only a
    /// ticket this host redeemed from the tier may let it through.
    zero_rtt: bool,
    /// `Action::Lookup` handed out.
    posted: bool,
    /// The configuration the ClientHello gets (its ticket rule), decided
    /// before parking: the bytes it was read from are not kept.
    policy: TicketPolicy,
    /// What the ClientHello said of early data, read before parking.
    early: EarlyData,
}

/// What a ClientHello says of early data, as far as the configuration it gets
/// is concerned.
#[derive(Debug, Clone, Copy)]
struct EarlyData {
    /// It offers 0-RTT (or its bytes were not read: assume it may).
    offered: bool,
    /// It offers it on a ticket taken before (pending or restored): refused,
    /// 0-RTT is accepted on a ticket once, ever.
    spent_ticket: bool,
}

/// How far `accept_hello` got.
enum Hello {
    /// The ClientHello is not whole yet, or TLS is running.
    Fed,
    /// Parked for the tier.
    Parked,
}

impl Conn {
    /// A connection just accepted at `now`.
    pub fn new(now: Instant, limits: &Limits, addresses: Option<(SocketAddr, SocketAddr)>) -> Conn {
        Conn {
            state: State::Hello,
            tls: Tls::Waiting,
            client: Half::default(),
            backend: Half::default(),
            link: Link::None,
            handshake_deadline: now + limits.handshake_timeout,
            close_notify_sent: false,
            session: TicketScope::default(),
            ticket_flight_sent: false,
            client_spoke_after_ticket: false,
            ticket_delivered: false,
            settle_now: false,
            early_data: 0,
            zero_rtt: false,
            first_flight: Some(FirstFlight::default()),
            addresses,
            hello_buf: Vec::new(),
            hello_overflow: false,
            parked: None,
            accepted_at: now,
            http: limits.http.map(|_| Http::default()),
            pooled_wanted: false,
            link_pooled: false,
            link_written: false,
            retry_fresh: false,
            retry_after_handshake: false,
            ending: false,
            alerted: false,
            hello_bytes: Vec::new(),
        }
    }

    // ---- what the driver asks ----

    /// Operations the kernel holds for this connection (derived, never counted
    /// separately, so it cannot drift from the flags).
    pub fn in_flight(&self) -> u32 {
        let connect = matches!(
            self.link,
            Link::Connecting
                | Link::Failed {
                    connect_in_flight: true,
                    ..
                }
        );
        self.client.in_flight() + self.backend.in_flight() + u32::from(connect)
    }

    /// Closed and nothing in flight: the driver may free it (and close its sockets).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closing { .. }) && self.in_flight() == 0
    }

    /// When [`Conn::on_timeout`] must be called, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        let state = self.state_deadline();
        match (state, self.session.taken) {
            // A taken ticket is settled by the end of its pending window.
            (Some(d), Some(_)) => Some(d.min(self.handshake_deadline)),
            (d, _) => d,
        }
    }

    /// The deadline of the state the connection is in.
    fn state_deadline(&self) -> Option<Instant> {
        let handshaking = self.handshaking();
        let hs = self.handshake_deadline;
        match self.state {
            State::Hello | State::Handshaking => Some(hs),
            State::Parked { deadline } => Some(deadline.min(hs)),
            State::Connecting { deadline } => {
                let deadline = match self.link {
                    Link::Retry { at } => deadline.min(at),
                    _ => deadline,
                };
                Some(if handshaking {
                    deadline.min(hs)
                } else {
                    deadline
                })
            }
            State::Piping { idle_deadline } => Some(if handshaking {
                idle_deadline.min(hs)
            } else {
                idle_deadline
            }),
            State::Draining { deadline } => Some(deadline),
            State::Closing { .. } => None,
        }
    }

    /// The bytes of the send posted for `side` (valid until its `on_sent`).
    pub fn send_buf(&self, side: Side) -> &[u8] {
        self.half(side).outbox.lent()
    }

    /// Whether the machine will send nothing more on `side` until bytes (or an
    /// EOF) arrive from it, or a deadline passes: our handshake flight while no
    /// backend is involved yet, or our last words (close_notify). A driver may
    /// then learn that a send posted now is done only when the next receive on
    /// that side completes (io_uring: the receive linked behind the send, whose
    /// success posts no completion: one wakeup less). `on_sent` must still come
    /// before that receive's `on_recv`. On the backend side (http mode): the
    /// request has gone out whole and its response is awaited.
    pub fn quiet_after_send(&self, side: Side) -> bool {
        match side {
            Side::Client => {
                (self.close_notify_sent && !self.alerted)
                    || (matches!(self.state, State::Hello | State::Handshaking)
                        && self.link == Link::None
                        && self.early_data == 0)
            }
            // http: the request went out whole and its response is awaited;
            // nothing more goes to the backend until it answers.
            Side::Backend => self
                .http
                .as_ref()
                .is_some_and(|h| h.awaiting_response() && self.link == Link::Open),
        }
    }

    /// The TLS connection, once the ClientHello has been accepted.
    pub fn tls(&self) -> Option<&ServerConnection> {
        match &self.tls {
            Tls::Established(c) => Some(c),
            _ => None,
        }
    }

    /// Give pooled buffers back; call once, when the connection is freed.
    pub fn release(&mut self, pool: &mut BufPool) {
        debug_assert!(self.is_finished());
        self.client.outbox.release(pool);
        self.backend.outbox.release(pool);
        pool.give(std::mem::take(&mut self.hello_buf));
        if let Some(h) = &mut self.http {
            h.release(pool);
        }
    }

    /// What a parked connection asks the tier (after `Action::Lookup`).
    pub fn lookup_request(&self) -> Option<LookupRequest> {
        self.parked.map(|p| p.req)
    }

    /// Whether the connection waits for the tier.
    pub fn is_parked(&self) -> bool {
        matches!(self.state, State::Parked { .. })
    }

    /// The next thing the driver must do, or `None`. Call until `None` after
    /// every event.
    pub fn poll(&mut self, env: &mut Env<'_>) -> Option<Action> {
        let action = self.next_action(env);
        debug_assert!(self.invariants_hold(), "{self:?}");
        action
    }

    // ---- events ----

    /// A receive on `side` completed: `Ok(bytes)` (empty: EOF) or `Err(errno)`.
    pub fn on_recv(&mut self, side: Side, got: Result<&[u8], i32>, env: &mut Env<'_>) {
        let half = self.half_mut(side);
        debug_assert!(half.recv_posted);
        half.recv_posted = false;
        if matches!(self.state, State::Closing { .. }) {
            return;
        }
        match (side, got) {
            (Side::Client, Err(_)) => self.close(env), // reset: nobody is left to answer
            (Side::Client, Ok([])) => {
                self.client_eof(env);
                self.http_client_eof(env);
            }
            (Side::Client, Ok(bytes)) => {
                env.metrics
                    .add(Metric::BytesFromClients, bytes.len() as u64);
                self.client_spoke_after_ticket |= self.ticket_flight_sent;
                if matches!(self.state, State::Draining { .. }) {
                    return; // discard while we linger
                }
                self.feed_client(bytes, env);
            }
            (Side::Backend, _) if matches!(self.link, Link::Releasing { .. }) => {
                // The receive cancelled (or overtaken) on a link being given back.
            }
            (Side::Backend, Err(e)) if self.http.is_some() => {
                self.backend.eof = true;
                self.http_backend_lost(BackendFailure::Io(e), env);
            }
            (Side::Backend, Err(e)) => {
                // The backend reset mid-answer: close without close_notify, so
                // the device sees a truncation, not a complete answer.
                env.metrics.add(Metric::BackendErrors, 1);
                env.backend_log.failed(BackendFailure::Io(e), env.now);
                self.close(env);
            }
            (Side::Backend, Ok([])) if self.http.is_some() => {
                self.backend.eof = true;
                let ended = self.http.as_mut().map(|h| h.backend_eof());
                match ended {
                    Some(Ok(done)) => self.http_completed(done, env),
                    _ => self.http_backend_lost(BackendFailure::Closed, env),
                }
            }
            (Side::Backend, Ok([])) => {
                self.backend.eof = true;
                self.backend_closed(env);
            }
            (Side::Backend, Ok(bytes)) if self.http.is_some() => self.http_response(bytes, env),
            (Side::Backend, Ok(bytes)) => {
                if self.close_notify_sent {
                    return; // our last bytes to the client are already queued
                }
                if let Tls::Established(tls) = &mut self.tls {
                    // The writer takes everything (buffered in rustls if need be).
                    let _ = tls.writer().write_all(bytes);
                }
                self.flush_tls(env);
                self.touch(env);
            }
        }
    }

    /// A send on `side` completed: `Ok(bytes written)` or `Err(errno)`.
    pub fn on_sent(&mut self, side: Side, done: Result<usize, i32>, env: &mut Env<'_>) {
        let closing = matches!(self.state, State::Closing { .. });
        match done {
            Ok(n) => {
                self.half_mut(side).outbox.sent(n, env.pool);
                if side == Side::Client {
                    env.metrics.add(Metric::BytesToClients, n as u64);
                    if !self.handshaking() && self.client.outbox.is_empty() {
                        self.ticket_flight_sent = true;
                    }
                }
                if !closing {
                    self.touch(env);
                }
                if side == Side::Backend && n > 0 {
                    self.link_written = true;
                    // A receive that saw the backend go while this send was in
                    // flight: the request reached it, so no retry (see below).
                    if self.http.is_some() && self.backend.eof && self.link == Link::Open {
                        self.http_backend_lost(BackendFailure::Closed, env);
                    }
                }
            }
            Err(e) => {
                self.half_mut(side).outbox.failed();
                if closing {
                    return;
                }
                if side == Side::Backend && self.http.is_some() && self.link == Link::Open {
                    // The retry rule: a pooled connection whose first write of
                    // this request failed took none of its bytes (the kernel
                    // refused them all: the backend had reset it while idle),
                    // so the request provably never reached the backend and
                    // goes again, once, on a new connection. Anything else —
                    // a write that succeeded, then an EOF or reset before the
                    // response — may have reached it: 502, never a retry.
                    if self.link_pooled && !self.link_written {
                        env.metrics.add(Metric::BackendRetried, 1);
                        self.retry_fresh = true;
                        self.link = Link::Releasing {
                            reusable: false,
                            cancelled: false,
                        };
                        return;
                    }
                    self.backend.eof = true;
                    return self.http_backend_lost(BackendFailure::Io(e), env);
                }
                if side == Side::Backend {
                    env.metrics.add(Metric::BackendErrors, 1);
                    env.backend_log.failed(BackendFailure::Io(e), env.now);
                }
                self.close(env);
            }
        }
    }

    /// The backend connect completed: `Ok(())` or `Err(errno)`.
    pub fn on_connected(&mut self, done: Result<(), i32>, env: &mut Env<'_>) {
        match self.link {
            Link::Connecting => {}
            Link::Failed { .. } => {
                // Already given up (timed out): this is the cancelled connect.
                self.link = Link::Failed {
                    connect_in_flight: false,
                    cancel: false,
                };
                return;
            }
            other => {
                debug_assert!(false, "connect completion in {other:?}");
                return;
            }
        }
        // Given up while the connect was in flight (closing, or draining after
        // a TLS error such as a record the protocol forbids right after the
        // client's Finished): the backend is not wanted any more. Piping now
        // would undo the drain and keep the device waiting for `idle_timeout`.
        if matches!(self.state, State::Closing { .. } | State::Draining { .. }) {
            self.link = Link::Failed {
                connect_in_flight: false,
                cancel: false,
            };
            return;
        }
        match done {
            Ok(()) => {
                self.link = Link::Open;
                self.link_pooled = false;
                self.link_written = false;
                self.state = State::Piping {
                    idle_deadline: env.now + env.limits.idle_timeout,
                };
                // The backend may have been waited for by a 0-RTT handshake that
                // has completed since, with nothing more to say.
                if self.backend.eof && self.http.is_none() {
                    self.backend_closed(env);
                }
            }
            Err(libc::EAGAIN) => {
                // Not refused, only not now: the backend's accept queue is full
                // (a unix socket says so at once, where TCP would wait for the
                // SYN to be taken). Try again shortly, within the connect timeout.
                tracing::debug!("backend connect would block; trying again");
                self.link = Link::Retry {
                    at: env.now + CONNECT_RETRY,
                };
            }
            Err(e) => {
                self.link = Link::Failed {
                    connect_in_flight: false,
                    cancel: false,
                };
                self.backend_failed(BackendFailure::Connect(e), env);
            }
        }
    }

    /// The tier answered the lookup of `Action::Lookup` (or the driver could
    /// not send it: `Outcome::Unavailable`). Ignored unless still parked.
    pub fn on_lookup(&mut self, outcome: Outcome, env: &mut Env<'_>) {
        if matches!(self.state, State::Parked { .. }) {
            self.unpark(outcome, env);
        }
    }

    /// `Action::ConnectPooled` was satisfied from the driver's pool: the link is
    /// open. `recv_posted`: a receive is already posted on it — the pool's idle
    /// watch, which the driver now reports as `on_recv(Side::Backend, ..)` of
    /// this connection (epoll, whose watch is the socket's readiness); else the
    /// machine asks for one (io_uring, whose pool watches idle connections with
    /// a poll, so the request can go out linked before the receive).
    pub fn on_pooled(&mut self, recv_posted: bool, env: &mut Env<'_>) {
        debug_assert_eq!(self.link, Link::Connecting);
        env.metrics.add(Metric::BackendReused, 1);
        self.link = Link::Open;
        self.link_pooled = true;
        self.link_written = false;
        self.backend.recv_posted = recv_posted;
        // As for a fresh connect: a connection that has failed meanwhile stays failed.
        if matches!(self.state, State::Closing { .. } | State::Draining { .. }) {
            return;
        }
        self.state = State::Piping {
            idle_deadline: env.now + env.limits.idle_timeout,
        };
    }

    /// The driver learned the device's address after the accept (http mode:
    /// asked through the ring, so it costs no syscall of its own); it must come
    /// before the device's first bytes are handed in.
    pub fn on_peer_address(&mut self, peer: SocketAddr) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        self.addresses = Some((peer, unspecified));
    }

    /// The driver's clock passed [`Conn::deadline`] (it may call early: nothing
    /// happens then).
    pub fn on_timeout(&mut self, env: &mut Env<'_>) {
        if self.session.taken.is_some() && env.now >= self.handshake_deadline {
            // The ticket's pending window is closing: settle it now. A device
            // still talking after its new ticket went out has it; one that
            // went quiet (the radio dropped after its Finished) gets its old
            // ticket back.
            self.ticket_delivered |= self.client_spoke_after_ticket && !self.handshaking();
            self.settle_now = true;
        }
        let Some(deadline) = self.state_deadline() else {
            return;
        };
        if env.now < deadline {
            return;
        }
        if let (State::Connecting { deadline: d }, Link::Retry { at }) = (self.state, self.link) {
            let handshake_late = self.handshaking() && env.now >= self.handshake_deadline;
            if env.now >= at && env.now < d && !handshake_late {
                self.link = Link::Wanted; // `poll` hands out the connect again
                return;
            }
        }
        match self.state {
            State::Connecting { deadline: d } if env.now >= d => {
                let in_flight = self.link == Link::Connecting;
                self.link = Link::Failed {
                    connect_in_flight: in_flight,
                    cancel: in_flight,
                };
                self.backend_failed(
                    BackendFailure::ConnectTimeout(env.limits.backend_connect_timeout),
                    env,
                );
            }
            State::Parked { deadline: d } if env.now >= d && env.now < self.handshake_deadline => {
                // The tier did not answer in time: go on as a miss.
                self.unpark(Outcome::TimedOut, env);
            }
            // Our close_notify is out and the device lingered: as `Draining`.
            State::Piping { .. } if self.close_notify_sent => self.close(env),
            State::Hello
            | State::Parked { .. }
            | State::Handshaking
            | State::Connecting { .. }
            | State::Piping { .. } => {
                env.metrics.add(Metric::Timeouts, 1);
                self.close(env);
            }
            State::Draining { .. } => self.close(env),
            State::Closing { .. } => {}
        }
    }

    /// The endpoint is shutting down and its drain time is up: close now.
    pub fn abort(&mut self, env: &mut Env<'_>) {
        self.close(env);
    }

    // ---- the machine ----

    fn next_action(&mut self, env: &mut Env<'_>) -> Option<Action> {
        self.settle_ticket(env);
        if let State::Closing { cancelled } = self.state {
            if !cancelled && self.in_flight() > 0 {
                self.state = State::Closing { cancelled: true };
                return Some(Action::Cancel);
            }
            return None;
        }
        if let Link::Failed {
            connect_in_flight: true,
            cancel: cancel @ true,
        } = &mut self.link
        {
            *cancel = false;
            return Some(Action::CancelConnect);
        }
        // http: hand the backend connection back once nothing of it is in flight.
        if let Link::Releasing {
            reusable,
            cancelled,
        } = self.link
        {
            if self.backend.in_flight() == 0 {
                self.link = Link::None;
                self.link_pooled = false;
                self.link_written = false;
                self.backend.eof = false;
                self.backend.shut = false;
                if std::mem::take(&mut self.retry_fresh) {
                    // The request still waits in the backend outbox.
                    self.want_backend(false, env);
                } else if self.http.as_ref().is_some_and(|h| h.in_exchange()) && !self.ending {
                    self.want_backend(true, env);
                }
                return Some(Action::ReleaseBackend { reusable });
            }
            if !cancelled && self.backend.recv_posted {
                self.link = Link::Releasing {
                    reusable,
                    cancelled: true,
                };
                return Some(Action::CancelConnect);
            }
        }
        // Piping: pass the client's half-close on (tcp); close_notify out → drain.
        if let State::Piping { .. } = self.state {
            if self.http.is_none()
                && self.client.eof
                && self.backend.outbox.is_empty()
                && !self.backend.outbox.posted()
                && !self.backend.shut
            {
                self.backend.shut = true;
                return Some(Action::ShutdownWrite(Side::Backend));
            }
            if (self.backend.eof || self.http.is_some())
                && self.close_notify_sent
                && self.client.outbox.is_empty()
            {
                self.state = State::Draining {
                    deadline: env.now + DRAIN_LINGER,
                };
            }
        }
        // Draining and our last bytes are out: if the client is done too, close
        // (a plain close sends the FIN); else linger for its EOF, so our last
        // bytes are not destroyed by a reset. After an alert, half-close first:
        // a peer that failed its handshake may wait for the FIN. After
        // close_notify, do not: a TLS peer closes on it (and most have by the
        // time a shutdown(2) would run: it failed with ENOTCONN for 97% of
        // sequential `openssl s_time` connections).
        if let State::Draining { .. } = self.state {
            if self.client.outbox.is_empty() && !self.client.outbox.posted() {
                if self.client.eof {
                    self.close(env);
                    return self.next_action(env);
                }
                if !self.client.shut && self.alerted {
                    self.client.shut = true;
                    return Some(Action::ShutdownWrite(Side::Client));
                }
            }
        }
        if self.client.outbox.lend() {
            return Some(Action::Send(Side::Client));
        }
        if let State::Parked { .. } = self.state {
            // Nothing is read while parked: the bytes wait in the socket.
            return match &mut self.parked {
                Some(p) if !p.posted => {
                    p.posted = true;
                    Some(Action::Lookup)
                }
                _ => None,
            };
        }
        // Receive from the client unless the backend side is backed up (http:
        // or a request is complete and its response awaited).
        if !self.client.recv_posted
            && !self.client.eof
            && self.backend.outbox.len() < PIPE_LIMIT
            && self.reading_requests()
        {
            self.client.recv_posted = true;
            return Some(Action::Recv(Side::Client));
        }
        match self.link {
            Link::Wanted => {
                self.link = Link::Connecting;
                return Some(if std::mem::take(&mut self.pooled_wanted) {
                    Action::ConnectPooled
                } else {
                    Action::Connect
                });
            }
            Link::Open if matches!(self.state, State::Piping { .. }) => {}
            _ => return None,
        }
        if !self.backend.shut && self.backend.outbox.lend() {
            return Some(Action::Send(Side::Backend));
        }
        if !self.backend.recv_posted
            && !self.backend.eof
            && self.client.outbox.len() < PIPE_LIMIT
            && self
                .http
                .as_ref()
                .is_none_or(|h| h.in_exchange() && !self.ending)
        {
            self.backend.recv_posted = true;
            return Some(Action::Recv(Side::Backend));
        }
        None
    }

    /// Settle the TLS 1.3 ticket this connection took, once its fate is known:
    /// erased when the device has its replacement, restored (1-RTT only) when
    /// the connection ends first — a reset, a timeout, a TLS error, a device
    /// that never closed after the new ticket went out.
    ///
    /// Why the device's own close is the proof, not our send completing: a
    /// send completes when the kernel has the bytes, and the radio drop this is
    /// for ("after the device sent its Finished") loses exactly those bytes.
    /// A device reads the response behind the ticket and then closes; the
    /// close comes after the ticket in its TCP stream. A device that dies
    /// after reading the ticket is restored too: it then holds a new ticket and
    /// an old one (1-RTT only), each single use, both bounded.
    fn settle_ticket(&mut self, env: &mut Env<'_>) {
        let Some(taken) = self.session.taken else {
            return;
        };
        let closing = matches!(self.state, State::Closing { .. });
        if !self.ticket_delivered && !closing && !self.settle_now {
            return;
        }
        self.session.taken = None;
        if let Some(cache) = env.tls.tickets() {
            cache.settle(&taken, self.ticket_delivered);
        }
        env.metrics.add(
            if self.ticket_delivered {
                Metric::TicketsSpent
            } else {
                Metric::TicketsRestored
            },
            1,
        );
    }

    /// The client closed its side: if the flight with its new ticket was out
    /// by then, it has read past it.
    fn client_closed(&mut self) {
        self.client.eof = true;
        if self.ticket_flight_sent && !self.handshaking() {
            self.ticket_delivered = true;
        }
    }

    /// Whether more device bytes are wanted. http: not while a whole request
    /// waits for its response (unless the handshake still needs the device's
    /// Finished), nor past a bounded backlog.
    fn reading_requests(&self) -> bool {
        let Some(h) = &self.http else {
            return true;
        };
        if self.ending {
            return true; // for the device's close_notify or FIN
        }
        (!h.awaiting_response() || self.handshaking()) && h.inbox_len() < PIPE_LIMIT
    }

    fn invariants_hold(&self) -> bool {
        let closing = matches!(self.state, State::Closing { .. });
        // No new work once closing; a send is only ever posted with bytes lent.
        (!self.client.outbox.posted() || !self.client.outbox.lent().is_empty() || closing)
            // Plaintext toward the backend stays bounded (one receive past the limit at most).
            && self.backend.outbox.len() <= PIPE_LIMIT + RECV_BUF + 2 * POOLED_CAPACITY
            // Backend I/O only over an open link (or one being given back).
            && (matches!(self.link, Link::Open | Link::Releasing { .. }) || self.backend.in_flight() == 0)
            // The TLS side is past the ClientHello once anything but `Hello` is reached.
            && (matches!(
                self.state,
                State::Hello | State::Parked { .. } | State::Draining { .. } | State::Closing { .. }
            ) || matches!(self.tls, Tls::Established(_)))
            // Parked: the ClientHello held, its lookup asked for, nothing read.
            && (!matches!(self.state, State::Parked { .. })
                || (matches!(self.tls, Tls::Held(_))
                    && self.parked.is_some()
                    && !self.client.recv_posted))
    }

    fn half(&self, side: Side) -> &Half {
        match side {
            Side::Client => &self.client,
            Side::Backend => &self.backend,
        }
    }

    fn half_mut(&mut self, side: Side) -> &mut Half {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }

    fn handshaking(&self) -> bool {
        match &self.tls {
            Tls::Established(c) => c.is_handshaking(),
            _ => true,
        }
    }

    /// Activity while piping pushes the idle deadline out (not once our
    /// close_notify is queued: then the device has [`DRAIN_LINGER`] to answer).
    fn touch(&mut self, env: &Env<'_>) {
        if self.close_notify_sent {
            return;
        }
        if let State::Piping { idle_deadline } = &mut self.state {
            *idle_deadline = env.now + env.limits.idle_timeout;
        }
    }

    /// Stop: nothing new is posted; what is in flight is cancelled. The
    /// connection's time ends here (whatever the driver still has to reap).
    fn close(&mut self, env: &Env<'_>) {
        if !matches!(self.state, State::Closing { .. }) {
            self.state = State::Closing { cancelled: false };
            env.metrics
                .observe_connection_time(env.now.saturating_duration_since(self.accepted_at));
        }
    }

    fn client_eof(&mut self, env: &Env<'_>) {
        self.client_closed();
        // A FIN after the handshake is a half-close: the request already read
        // still goes to the backend and its answer comes back (http: see
        // `http_client_eof`).
        if matches!(
            self.state,
            State::Hello | State::Handshaking | State::Draining { .. }
        ) || self.handshaking()
        {
            self.close(env);
        }
    }

    /// Feed bytes from the client to rustls; queue what it wants to send and
    /// the plaintext it releases, and move on when the handshake does.
    fn feed_client(&mut self, bytes: &[u8], env: &mut Env<'_>) {
        if let Some(f) = &mut self.first_flight {
            if !f.check(bytes) {
                self.client.outbox.queue(
                    &first_flight::fatal_alert(rustls::AlertDescription::RecordOverflow),
                    env.pool,
                );
                return self.fail(TlsFailure::RecordOverflow, env);
            }
        }
        if env.tier.is_some() && matches!(self.tls, Tls::Waiting | Tls::Accepting(_)) {
            self.keep_hello_bytes(bytes, env.pool);
        }
        let was_handshaking = self.handshaking();
        let mut rd = bytes;
        match self.accept_hello(&mut rd, env) {
            Err(why) => return self.fail(why, env),
            Ok(Hello::Parked) => {
                // What came behind the ClientHello waits with it.
                self.hello_buf.clear();
                self.hello_buf.extend_from_slice(rd);
                return;
            }
            Ok(Hello::Fed) => {}
        }
        if let Err(why) = self.feed_established(rd, env) {
            return self.fail(why, env);
        }
        self.after_feed(was_handshaking, env);
    }

    /// After rustls has read: queue what it wants to send, and move on when the
    /// handshake does.
    fn after_feed(&mut self, was_handshaking: bool, env: &mut Env<'_>) {
        self.flush_tls(env);
        let Tls::Established(tls) = &self.tls else {
            return; // the ClientHello is not whole yet
        };
        let handshaking = tls.is_handshaking();
        let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
        let tls12 = tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        if self.state == State::Hello {
            self.state = State::Handshaking;
        }
        let done = was_handshaking && !handshaking;
        if self.early_data > 0 && !self.zero_rtt && handshaking {
            // 0-RTT: start the backend now, before the handshake completes, with
            // the early data queued first (http: once a request head is whole).
            // Only a resumption carries early data; count it now, as the
            // backend may answer and close before the client's Finished arrives.
            env.metrics.add(Metric::ResumedTls13EarlyData, 1);
            self.zero_rtt = true;
            if self.http.is_none() {
                self.start_backend(env);
            }
        }
        if done {
            if self.zero_rtt {
                env.metrics
                    .add(Metric::EarlyDataBytes, self.early_data as u64);
                if self.http.is_some() {
                    if std::mem::take(&mut self.retry_after_handshake) {
                        if let Some(h) = &mut self.http {
                            h.rewind_for_retry();
                        }
                    }
                    if self.ending {
                        self.backend_closed(env);
                    }
                } else if self.backend.eof || matches!(self.link, Link::Failed { .. }) {
                    // The backend may have finished while the handshake ran.
                    self.backend_closed(env);
                }
            } else {
                let kind = match (resumed, tls12) {
                    (false, true) => Metric::FullTls12,
                    (false, false) => Metric::FullTls13,
                    (true, true) => Metric::ResumedTls12,
                    // Early data and Finished came in one read.
                    (true, false) if self.early_data > 0 => Metric::ResumedTls13EarlyData,
                    (true, false) => Metric::ResumedTls13,
                };
                env.metrics.add(kind, 1);
                if self.early_data > 0 {
                    env.metrics
                        .add(Metric::EarlyDataBytes, self.early_data as u64);
                }
                if self.http.is_none() {
                    self.start_backend(env);
                }
            }
        }
        self.pump_http(env);
        if self.client.eof {
            self.http_client_eof(env);
        }
        self.touch(env);
    }

    /// Copy first-flight bytes for the session-key parser, bounded by one
    /// pooled buffer (a ClientHello is a few hundred bytes; one that does not
    /// fit is simply not looked up in the tier).
    fn keep_hello_bytes(&mut self, bytes: &[u8], pool: &mut BufPool) {
        if self.hello_overflow {
            return;
        }
        if self.hello_buf.len() + bytes.len() > POOLED_CAPACITY {
            self.hello_overflow = true;
            pool.give(std::mem::take(&mut self.hello_buf));
            return;
        }
        if self.hello_buf.capacity() == 0 {
            self.hello_buf = pool.take();
        }
        self.hello_buf.extend_from_slice(bytes);
    }

    /// Whether the session the ClientHello names must be asked of the tier
    /// before rustls looks for it, and how.
    fn plan_lookup(
        &mut self,
        policy: TicketPolicy,
        early: EarlyData,
        env: &mut Env<'_>,
    ) -> Option<ParkedLookup> {
        let tier = env.tier?;
        if self.hello_overflow {
            env.metrics.add(Metric::ClusterHelloUnparsed, 1);
            return None;
        }
        let keys = match hello::keys_of_first_flight(&mut self.hello_buf) {
            Ok(k) => k,
            Err(_) => {
                env.metrics.add(Metric::ClusterHelloUnparsed, 1);
                return None;
            }
        };
        // A ticket rule that makes the handshake TLS 1.2 resumes by session ID.
        let (key, ticket) = if env.tls.is_tls12_only(policy) {
            (keys.session_id?, false)
        } else {
            keys.resumption_key()?
        };
        let zero_rtt = ticket && keys.early_data && env.tls.accepts_early_data();
        // A local hit needs no round trip — unless 0-RTT data rides on it: then
        // only this host's atomic redemption in the tier may let it through
        // (another host may hold a copy of the same ticket).
        if !zero_rtt && tier.cache.contains(key.as_bytes()) {
            env.metrics.add(Metric::ClusterLocalHits, 1);
            return None;
        }
        let op = if ticket {
            LookupOp::Redeem {
                tombstone: zero_rtt,
            }
        } else {
            LookupOp::Fetch
        };
        Some(ParkedLookup {
            req: LookupRequest { key, op },
            zero_rtt,
            posted: false,
            policy,
            early,
        })
    }

    /// The tier answered (or did not in time): start TLS with what this host's
    /// store now holds, then feed what arrived behind the ClientHello.
    fn unpark(&mut self, outcome: Outcome, env: &mut Env<'_>) {
        let (Some(p), Tls::Held(accepted)) = (
            self.parked.take(),
            std::mem::replace(&mut self.tls, Tls::Waiting),
        ) else {
            debug_assert!(false, "parked without a held ClientHello");
            return self.close(env);
        };
        env.metrics.add(
            match outcome {
                Outcome::Found => Metric::ClusterFound,
                Outcome::Missing => Metric::ClusterMissing,
                Outcome::TimedOut => Metric::ClusterTimeouts,
                Outcome::Unavailable => Metric::ClusterUnavailable,
            },
            1,
        );
        let not_vouched = p.zero_rtt && outcome != Outcome::Found;
        if not_vouched {
            env.metrics.add(Metric::ClusterZeroRttRefused, 1);
        }
        // Found or missing, the tier has settled this key: rustls' take or
        // read of it is not mirrored again.
        let settled = matches!(outcome, Outcome::Found | Outcome::Missing).then_some(p.req.key);
        self.state = State::Hello;
        let behind = std::mem::take(&mut self.hello_buf);
        let made = self
            .establish(
                accepted,
                p.policy,
                EarlyData {
                    // One refusal for both reasons: the tier did not vouch
                    // for the ticket, or it was taken before.
                    spent_ticket: p.early.spent_ticket || not_vouched,
                    ..p.early
                },
                settled.as_ref().map(|k| k.as_bytes()),
                env,
            )
            .and_then(|()| self.feed_established(&behind, env));
        env.pool.give(behind);
        match made {
            Ok(()) => self.after_feed(true, env),
            Err(why) => self.fail(why, env),
        }
    }

    /// Until the ClientHello is whole, bytes go to rustls' `Acceptor`; then the
    /// configuration for that ClientHello makes the connection, which takes
    /// whatever followed — or, when the shared tier must be asked first, the
    /// connection parks. Leaves in `rd` the bytes the connection has not read.
    fn accept_hello(&mut self, rd: &mut &[u8], env: &mut Env<'_>) -> Result<Hello, TlsFailure> {
        let first_read = matches!(self.tls, Tls::Waiting);
        if first_read {
            self.tls = Tls::Accepting(Acceptor::default());
        }
        let Tls::Accepting(acceptor) = &mut self.tls else {
            return Ok(Hello::Fed);
        };
        // This read's bytes, for the ticket rules (`tls::hello_rule`): a
        // ClientHello that came whole in its first read is read in place.
        let this_read = *rd;
        let reads_hellos = env.tls.reads_hellos();
        let keep = |kept: &mut Vec<u8>, rd: &[u8]| {
            let read = &this_read[..this_read.len() - rd.len()];
            if reads_hellos && kept.len() + read.len() <= hello_rule::MAX_HELLO_BYTES {
                kept.extend_from_slice(read);
            }
        };
        loop {
            match acceptor.accept() {
                Ok(None) => {}
                Ok(Some(accepted)) => {
                    let features = if !reads_hellos {
                        None
                    } else if first_read {
                        HelloFeatures::parse(&this_read[..this_read.len() - rd.len()])
                    } else {
                        keep(&mut self.hello_bytes, rd);
                        HelloFeatures::parse(&self.hello_bytes)
                    };
                    self.hello_bytes = Vec::new();
                    let policy = env
                        .tls
                        .policy_for(&accepted.client_hello(), features.as_ref());
                    match policy {
                        TicketPolicy::Default => {}
                        TicketPolicy::Tls12 => env.metrics.add(Metric::HelloRuleTls12, 1),
                        TicketPolicy::NoTls13Tickets => {
                            env.metrics.add(Metric::HelloRuleNoTickets, 1)
                        }
                    }
                    if let Some(f) = &features {
                        // What an operator needs to write a rule for a device's stack.
                        tracing::debug!(extensions = ?f.extensions(), psk_modes = ?f.psk_modes(),
                            tls12 = f.offers_tls12, tls13 = f.offers_tls13, ?policy, "ClientHello");
                    }
                    let early = EarlyData {
                        offered: features.as_ref().is_none_or(|f| f.offers_early_data),
                        spent_ticket: env.tls.spent_ticket_with_early_data(features.as_ref()),
                    };
                    if early.spent_ticket && !env.tls.is_tls12_only(policy) {
                        env.metrics.add(Metric::EarlyDataSpentTicket, 1);
                    }
                    if let Some(p) = self.plan_lookup(policy, early, env) {
                        let timeout = env.tier.map_or(Duration::ZERO, |t| t.lookup_timeout);
                        env.metrics.add(Metric::ClusterLookups, 1);
                        self.tls = Tls::Held(accepted);
                        self.parked = Some(p);
                        self.state = State::Parked {
                            deadline: env.now + timeout,
                        };
                        return Ok(Hello::Parked);
                    }
                    env.pool.give(std::mem::take(&mut self.hello_buf));
                    return self
                        .establish(accepted, policy, early, None, env)
                        .map(|()| Hello::Fed);
                }
                Err((e, mut alert)) => {
                    let out = self.client.outbox.writer(env.pool);
                    match &e {
                        // rustls' Acceptor answers every undecodable ClientHello
                        // with decode_error, where a ServerConnection would say
                        // what was wrong (illegal_parameter for a duplicate
                        // extension): say what the protocol says.
                        rustls::Error::InvalidMessage(m) => {
                            let desc = rustls::AlertDescription::from(*m);
                            out.extend_from_slice(&first_flight::fatal_alert(desc));
                        }
                        _ => {
                            let _ = alert.write_all(out);
                        }
                    }
                    self.tls = Tls::Refused;
                    return Err(TlsFailure::Protocol(e));
                }
            }
            if rd.is_empty() {
                keep(&mut self.hello_bytes, rd);
                return Ok(Hello::Fed);
            }
            match acceptor.read_tls(rd) {
                Ok(0) => {
                    keep(&mut self.hello_bytes, rd);
                    return Ok(Hello::Fed);
                }
                Ok(_) => {}
                Err(e) => {
                    self.tls = Tls::Refused;
                    return Err(TlsFailure::Records(e));
                }
            }
        }
    }

    /// Make the TLS connection for a whole ClientHello, with the configuration
    /// chosen for it (one that refuses early data when the tier could not vouch
    /// for the ticket). rustls looks the session up here: lend it the lineage
    /// slot, and say which key the tier already settled.
    fn establish(
        &mut self,
        accepted: rustls::server::Accepted,
        policy: TicketPolicy,
        early: EarlyData,
        settled: Option<&[u8]>,
        env: &mut Env<'_>,
    ) -> Result<(), TlsFailure> {
        let config = env.tls.for_policy(policy, early.spent_ticket).clone();
        // A ticket taken for a connection that may accept its early data must
        // never have been used before.
        self.session.early_data = config.max_early_data_size > 0 && early.offered;
        self.session.settles = env.tls.tickets().is_some();
        let session = &mut self.session;
        let made = SessionCache::tier_scope(settled, || {
            SessionCache::ticket_scope(session, || accepted.into_connection(config))
        });
        match made {
            Ok(conn) => {
                self.tls = Tls::Established(conn);
                Ok(())
            }
            Err((e, mut alert)) => {
                let _ = alert.write_all(self.client.outbox.writer(env.pool));
                self.tls = Tls::Refused;
                Err(TlsFailure::Protocol(e))
            }
        }
    }

    /// Feed bytes to the established connection (and what rustls buffered from
    /// the ClientHello's read), taking out early data and plaintext.
    fn feed_established(&mut self, mut rd: &[u8], env: &mut Env<'_>) -> Result<(), TlsFailure> {
        let Tls::Established(tls) = &mut self.tls else {
            return Ok(());
        };
        loop {
            let processed =
                SessionCache::ticket_scope(&mut self.session, || tls.process_new_packets());
            if let Err(e) = processed {
                return Err(TlsFailure::Protocol(e));
            }
            // 0-RTT bytes: rustls only yields them for a resumption whose ticket
            // it just took from the store, so a replayed ClientHello (its ticket
            // already taken) never gets here, and it bounds them by
            // `max_early_data_size` (≤ PIPE_LIMIT).
            if let Some(mut early) = tls.early_data() {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = early.read(&mut chunk) {
                    match &mut self.http {
                        Some(h) => h.inbox(env.pool).extend_from_slice(&chunk[..n]),
                        None => self.backend.outbox.queue(&chunk[..n], env.pool),
                    }
                    self.early_data += n;
                }
            }
            // Decrypted bytes for the backend (http: for the framing first),
            // copied straight from rustls' own buffer; a pooled buffer is taken
            // only when there are some.
            let handshaking = tls.is_handshaking();
            let mut reader = tls.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => {
                        // close_notify (as `client_closed`, with rustls borrowed)
                        self.client.eof = true;
                        if self.ticket_flight_sent && !handshaking {
                            self.ticket_delivered = true;
                        }
                        break;
                    }
                    Ok(bytes) => {
                        let n = bytes.len();
                        match &mut self.http {
                            Some(h) => h.inbox(env.pool).extend_from_slice(bytes),
                            None => self.backend.outbox.queue(bytes, env.pool),
                        }
                        reader.consume(n);
                    }
                    Err(_) => break, // WouldBlock: nothing more for now
                }
            }
            if rd.is_empty() {
                return Ok(());
            }
            match tls.read_tls(&mut rd) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(TlsFailure::Records(e)),
            }
        }
    }

    fn fail(&mut self, why: TlsFailure, env: &mut Env<'_>) {
        env.pool.give(std::mem::take(&mut self.hello_buf));
        env.metrics.add(Metric::TlsErrors, 1);
        let reason = why.reason();
        env.metrics.add(reason, 1);
        if matches!(reason, Metric::TlsBadPskBinder) {
            // Not a lossy link but a client that does not know the ticket's
            // secret: the ticket is spent, not restored, so a forger cannot
            // probe it again.
            self.ticket_delivered = true;
        }
        tracing::debug!("TLS error from client: {why}");
        // rustls has queued the matching alert; send it, then drain.
        self.flush_tls(env);
        self.close_notify_sent = true;
        self.alerted = true;
        self.state = State::Draining {
            deadline: env.now + DRAIN_LINGER,
        };
    }

    /// Move everything rustls wants to send into the client outbox.
    fn flush_tls(&mut self, env: &mut Env<'_>) {
        let Tls::Established(tls) = &mut self.tls else {
            return;
        };
        while tls.wants_write() {
            match tls.write_tls(self.client.outbox.writer(env.pool)) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.first_flight = None, // we have spoken: records may be encrypted from now on
            }
        }
    }

    /// Ask for the backend connection, with the PROXY header first if configured.
    fn start_backend(&mut self, env: &mut Env<'_>) {
        debug_assert_eq!(self.link, Link::None);
        if env.limits.proxy_protocol {
            if let Tls::Established(tls) = &self.tls {
                let mut header = env.pool.take();
                proxy::ProxyInfo::of(tls, self.addresses, self.early_data > 0)
                    .encode_into(&mut header);
                // In front of the early data already queued.
                self.backend.outbox.prepend(&header, env.pool);
                env.pool.give(header);
            }
        }
        self.link = Link::Wanted;
        self.state = State::Connecting {
            deadline: env.now + env.limits.backend_connect_timeout,
        };
    }

    /// The backend is down: tell the device with close_notify (once its
    /// handshake is complete) rather than a bare EOF (http: a 502 or 504 first),
    /// and count it.
    fn backend_failed(&mut self, why: BackendFailure, env: &mut Env<'_>) {
        if self.http.is_some() {
            return self.http_backend_lost(why, env);
        }
        count_backend_failure(why, env);
        env.backend_log.failed(why, env.now);
        self.backend.eof = true;
        self.backend_closed(env);
    }

    // ---- http mode (see `http`) ----

    /// Ask for a backend connection for the current exchange.
    fn want_backend(&mut self, pooled: bool, env: &Env<'_>) {
        debug_assert_eq!(self.link, Link::None);
        self.link = Link::Wanted;
        self.pooled_wanted = pooled;
        self.state = State::Connecting {
            deadline: env.now + env.limits.backend_connect_timeout,
        };
    }

    /// Frame what the device sent of the current request toward the backend;
    /// a whole head starts an exchange (and asks for a backend connection).
    fn pump_http(&mut self, env: &mut Env<'_>) {
        let early = self.handshaking();
        let resumed = env.limits.http.is_some_and(|h| h.resumed_header).then(|| {
            self.tls()
                .is_some_and(|t| t.handshake_kind() == Some(HandshakeKind::Resumed))
        });
        let Some(h) = &mut self.http else {
            return;
        };
        if h.awaiting_response()
            || self.ending
            || self.retry_after_handshake
            || matches!(self.state, State::Draining { .. } | State::Closing { .. })
            || !matches!(self.tls, Tls::Established(_))
        {
            return;
        }
        let fwd = Forwarding {
            client: self.addresses.map(|(peer, _)| peer.ip()),
            resumed,
            early,
        };
        let started = h.in_exchange();
        let framed = h.frame_request(self.backend.outbox.writer(env.pool), &fwd);
        let now_started = h.in_exchange();
        match framed {
            Ok(()) if !started && now_started => {
                env.metrics.add(Metric::HttpRequests, 1);
                if self.link == Link::None {
                    self.want_backend(true, env);
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::debug!("request refused: {e}");
                env.metrics.add(Metric::HttpRefused, 1);
                self.http_answer_and_end(e.status(), env);
            }
        }
    }

    /// Backend bytes of the current response.
    fn http_response(&mut self, bytes: &[u8], env: &mut Env<'_>) {
        if self.ending {
            return; // the device already has its last answer
        }
        let (Some(h), Tls::Established(tls)) = (&mut self.http, &mut self.tls) else {
            return;
        };
        // One write, so a head and the body behind it leave in one record.
        let mut staged = env.pool.take();
        let framed = h.frame_response(bytes, &mut staged);
        if !staged.is_empty() {
            let _ = tls.writer().write_all(&staged);
        }
        env.pool.give(staged);
        self.flush_tls(env);
        self.touch(env);
        match framed {
            Ok(None) => {}
            Ok(Some(done)) => self.http_completed(done, env),
            Err(e) => {
                self.backend.eof = true; // nothing more is read from it
                self.http_backend_lost(BackendFailure::Http(e), env);
            }
        }
    }

    /// The current response ended: give the backend connection back (or
    /// close it), then serve the device's next request or end.
    fn http_completed(&mut self, done: Completed, env: &mut Env<'_>) {
        self.flush_tls(env);
        let reusable = match done {
            Completed::Relayed {
                backend_reusable, ..
            }
            | Completed::TooEarly { backend_reusable } => backend_reusable && !self.backend.eof,
        };
        if matches!(self.link, Link::Open) {
            self.link = Link::Releasing {
                reusable,
                cancelled: false,
            };
        }
        let handshaking = self.handshaking();
        let Some(h) = &mut self.http else {
            return;
        };
        match done {
            Completed::TooEarly { .. } => {
                // RFC 8470 §5.2: an intermediary may send the request again
                // once the handshake is complete (the device never sent
                // Early-Data itself: warmtls strips it).
                env.metrics.add(Metric::EarlyDataTooEarly, 1);
                if handshaking {
                    self.retry_after_handshake = true;
                } else {
                    h.rewind_for_retry();
                    self.pump_http(env);
                }
            }
            Completed::Relayed {
                device_continues, ..
            } => {
                h.next_exchange();
                if device_continues && !self.client.eof {
                    self.pump_http(env);
                } else {
                    self.ending = true;
                    self.backend_closed(env);
                }
            }
        }
    }

    /// The backend failed the current exchange (down, closed or reset before
    /// its response was complete, or broke HTTP): a 502 (504 for a connect
    /// timeout) if nothing of the response reached the device yet, else a
    /// truncation (no close_notify).
    fn http_backend_lost(&mut self, why: BackendFailure, env: &mut Env<'_>) {
        // A send still in flight decides whether the request reached the
        // backend (the retry rule in `on_sent`).
        if self.link == Link::Open
            && self.link_pooled
            && !self.link_written
            && self.backend.outbox.posted()
        {
            return;
        }
        count_backend_failure(why, env);
        env.backend_log.failed(why, env.now);
        if self.ending {
            return;
        }
        if self.http.as_ref().is_some_and(|h| h.relayed() > 0) {
            return self.close(env);
        }
        env.metrics.add(Metric::HttpBadGateway, 1);
        let status = match why {
            BackendFailure::ConnectTimeout(_) => 504,
            _ => 502,
        };
        self.http_answer_and_end(status, env);
    }

    /// Answer the device ourselves (`status`) and end the connection after it.
    fn http_answer_and_end(&mut self, status: u16, env: &mut Env<'_>) {
        if let Tls::Established(tls) = &mut self.tls {
            let _ = tls.writer().write_all(&http::error_response(status));
        }
        self.flush_tls(env);
        self.ending = true;
        self.backend_closed(env);
    }

    /// The device sent close_notify or FIN (http): between requests that is
    /// the end, answered with close_notify; with a whole request waiting, its
    /// answer still goes out first; in the middle of a request, nobody is left
    /// to answer.
    fn http_client_eof(&mut self, env: &mut Env<'_>) {
        let Some(h) = &self.http else {
            return;
        };
        if self.ending || matches!(self.state, State::Closing { .. } | State::Draining { .. }) {
            return;
        }
        if h.idle() && !h.in_exchange() {
            self.ending = true;
            self.backend_closed(env);
        } else if !h.awaiting_response() && !self.handshaking() {
            self.close(env);
        }
    }

    /// The backend is done (EOF, or down): say close_notify to the client once
    /// everything it sent is out. A 0-RTT connection's backend may be done
    /// before the client's Finished arrives: then nothing happens yet, and this
    /// is called again once the handshake is complete, so the device's next
    /// ticket goes out before the close_notify.
    fn backend_closed(&mut self, env: &mut Env<'_>) {
        if self.handshaking() || matches!(self.state, State::Closing { .. }) {
            return;
        }
        if !self.close_notify_sent {
            if let Tls::Established(tls) = &mut self.tls {
                tls.send_close_notify();
            }
            self.close_notify_sent = true;
            self.flush_tls(env);
            if let State::Piping { idle_deadline } = &mut self.state {
                *idle_deadline = (*idle_deadline).min(env.now + DRAIN_LINGER);
            }
        }
        if !matches!(self.state, State::Piping { .. } | State::Draining { .. }) {
            // Never connected: nothing else will come; drain what we said.
            self.state = State::Draining {
                deadline: env.now + DRAIN_LINGER,
            };
        }
    }
}

/// Count a backend failure: every kind in `BackendErrors`, a failed or timed
/// out connect also in its own counter (both drivers, both protocols).
fn count_backend_failure(why: BackendFailure, env: &Env<'_>) {
    env.metrics.add(Metric::BackendErrors, 1);
    match why {
        BackendFailure::Connect(_) => env.metrics.add(Metric::BackendConnectFailures, 1),
        BackendFailure::ConnectTimeout(_) => env.metrics.add(Metric::BackendConnectTimeouts, 1),
        BackendFailure::Io(_) | BackendFailure::Closed | BackendFailure::Http(_) => {}
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("state", &self.state)
            .field("link", &self.link)
            .field("client", &self.client)
            .field("backend", &self.backend)
            .field("close_notify_sent", &self.close_notify_sent)
            .field("early_data", &self.early_data)
            .finish_non_exhaustive()
    }
}
