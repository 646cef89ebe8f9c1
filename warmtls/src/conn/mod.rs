//! One client connection: the TLS state machine driven by hand, the plaintext on
//! its way to and from the backend, and where the connection is in its life.
//!
//! This module never does I/O: the worker (`runtime::worker`) feeds it received
//! bytes and sends what it queues. It must never panic on client bytes; a TLS
//! error queues the alert rustls made and moves the connection to `Draining`.
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustls::ServerConnection;

use crate::metrics::Metric;
use crate::store::SessionCache;

mod first_flight;
mod outbox;
pub mod proxy;
use first_flight::{FirstFlight, RECORD_OVERFLOW_ALERT};
pub use outbox::Outbox;

/// Bytes buffered toward one side before we stop reading the other side.
pub const PIPE_LIMIT: usize = 64 * 1024;
/// Size of each receive buffer: one maximum-size TLS plaintext fragment, so a
/// backend read goes out as one record.
pub const RECV_BUF: usize = 16 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TLS handshake in progress (bounded by `handshake_timeout`).
    Handshaking,
    /// Handshake done; connecting to the backend (bounded by `backend_connect_timeout`).
    ConnectingBackend,
    /// Forwarding plaintext both ways (bounded by `idle_timeout` between events).
    Piping,
    /// Our last bytes (an alert or close_notify) are going out; then half-close
    /// and wait briefly for the client's EOF so the alert is not lost to a reset.
    Draining,
    /// Done: sockets shut down, waiting for the operations still in flight to
    /// complete; the slab slot is freed when none is left.
    Closing,
}

/// The outcome of feeding received client bytes to rustls.
#[derive(Debug)]
pub enum Fed {
    /// Nothing new of note.
    Progress,
    /// The handshake completed with these bytes.
    HandshakeDone,
    /// A resuming client's 0-RTT data was accepted and is queued for the
    /// backend, whose connection has not been started yet: start it now, before
    /// the handshake completes.
    EarlyData,
    /// The client sent a fatal error or bad TLS; an alert is queued.
    Failed(TlsFailure),
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

/// A client connection and everything it owns. Buffers are boxed so they stay put
/// while the kernel uses them, even when the slab holding this struct grows; the
/// receive buffers come from (and go back to) the worker's pool.
pub struct Conn {
    pub gen: u32,
    pub client: OwnedFd,
    pub backend: Option<OwnedFd>,
    pub backend_addr: Box<nix::sys::socket::SockaddrStorage>,
    pub tls: ServerConnection,
    pub phase: Phase,
    pub deadline: Instant,
    /// The timer-wheel tick of this connection's live timer entry.
    pub timer_tick: u64,
    /// Operations handed to the kernel and not yet completed.
    pub inflight: u32,
    pub client_rx: Box<[u8]>,
    /// Only from the backend connect on.
    pub backend_rx: Option<Box<[u8]>>,
    pub to_client: Outbox,
    pub to_backend: Outbox,
    pub client_recv_posted: bool,
    pub backend_recv_posted: bool,
    pub connect_posted: bool,
    pub client_eof: bool,
    pub backend_eof: bool,
    pub backend_shut: bool,
    pub close_notify_sent: bool,
    pub client_shut: bool,
    /// Start of this connection's session lineage, once the store has told us
    /// (see `store::SessionCache::lineage_scope`); `None` for a full handshake.
    pub lineage: Option<u64>,
    /// When the handshake must be done: a 0-RTT connection pipes before its
    /// handshake completes, and this still bounds it.
    pub handshake_deadline: Instant,
    /// 0-RTT bytes accepted from the client and queued for the backend.
    pub early_data: usize,
    /// Record-size checks until we have sent the client anything.
    first_flight: Option<FirstFlight>,
}

impl Conn {
    pub fn new(
        gen: u32,
        client: OwnedFd,
        tls: ServerConnection,
        client_rx: Box<[u8]>,
        deadline: Instant,
    ) -> Conn {
        Conn {
            gen,
            client,
            backend: None,
            backend_addr: Box::new(nix::sys::socket::SockaddrStorage::from(
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            )),
            tls,
            phase: Phase::Handshaking,
            deadline,
            timer_tick: u64::MAX,
            inflight: 0,
            client_rx,
            backend_rx: None,
            to_client: Outbox::with_capacity(RECV_BUF + 1024),
            to_backend: Outbox::with_capacity(RECV_BUF),
            client_recv_posted: false,
            backend_recv_posted: false,
            connect_posted: false,
            client_eof: false,
            backend_eof: false,
            backend_shut: false,
            close_notify_sent: false,
            client_shut: false,
            lineage: None,
            handshake_deadline: deadline,
            early_data: 0,
            first_flight: Some(FirstFlight::default()),
        }
    }

    /// Feed `n` bytes just received into `client_rx` to rustls; queue what it
    /// wants to send and the plaintext it releases.
    pub fn feed_client(&mut self, n: usize) -> Fed {
        let was_handshaking = self.tls.is_handshaking();
        // Lend the buffer out of `self` (a pointer swap) so rustls can be driven
        // while we read from it; it is put back before returning.
        let buf = std::mem::take(&mut self.client_rx);
        if let Some(f) = &mut self.first_flight {
            if !f.check(&buf[..n]) {
                self.client_rx = buf;
                self.to_client.queue(&RECORD_OVERFLOW_ALERT);
                return self.fail(TlsFailure::RecordOverflow);
            }
        }
        let outcome = self.feed_bytes(&buf[..n]);
        self.client_rx = buf;
        if let Err(why) = outcome {
            return self.fail(why);
        }
        self.flush_tls();
        if was_handshaking && !self.tls.is_handshaking() {
            Fed::HandshakeDone
        } else if self.early_data > 0 && self.backend.is_none() {
            Fed::EarlyData
        } else {
            Fed::Progress
        }
    }

    fn feed_bytes(&mut self, mut rd: &[u8]) -> Result<(), TlsFailure> {
        while !rd.is_empty() {
            match self.tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(TlsFailure::Records(e)),
            }
            let tls = &mut self.tls;
            let processed =
                SessionCache::lineage_scope(&mut self.lineage, || tls.process_new_packets());
            if let Err(e) = processed {
                return Err(TlsFailure::Protocol(e));
            }
            self.take_early_data();
            self.take_plaintext();
        }
        Ok(())
    }

    fn fail(&mut self, why: TlsFailure) -> Fed {
        // rustls has queued the matching alert; send it, then drain.
        self.flush_tls();
        self.phase = Phase::Draining;
        self.close_notify_sent = true;
        Fed::Failed(why)
    }

    /// Move accepted 0-RTT bytes to the backend's outbox. rustls only yields them
    /// for a resumption whose ticket it just took from the store, so a replayed
    /// ClientHello (its ticket already taken) never gets here, and it bounds them
    /// by `max_early_data_size` (≤ [`PIPE_LIMIT`]).
    fn take_early_data(&mut self) {
        let Some(mut early) = self.tls.early_data() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = early.read(&mut buf) {
            self.to_backend.queue(&buf[..n]);
            self.early_data += n;
        }
    }

    /// Move decrypted client bytes to the backend's outbox.
    fn take_plaintext(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_eof = true; // close_notify
                    return;
                }
                Ok(n) => self.to_backend.queue(&buf[..n]),
                Err(_) => return, // WouldBlock: nothing more for now
            }
        }
    }

    /// Encrypt bytes the backend sent, as one record when they fit (a receive
    /// is at most [`RECV_BUF`], rustls' maximum fragment).
    pub fn feed_backend(&mut self, n: usize) {
        let Some(rx) = self.backend_rx.as_deref() else {
            return;
        };
        // The writer accepts everything (buffered in rustls when needed).
        let _ = self.tls.writer().write_all(&rx[..n]);
        self.flush_tls();
    }

    /// The backend closed: say close_notify to the client. A 0-RTT connection's
    /// backend may be done before the client's Finished arrives: then nothing
    /// happens yet, and the caller calls again once the handshake is complete,
    /// so the device's next ticket goes out before the close_notify.
    pub fn backend_closed(&mut self) {
        if self.tls.is_handshaking() {
            return;
        }
        if !self.close_notify_sent {
            self.tls.send_close_notify();
            self.close_notify_sent = true;
            self.flush_tls();
        }
    }

    /// Move everything rustls wants to send into the client outbox.
    pub fn flush_tls(&mut self) {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.to_client.writer()) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.first_flight = None, // we have spoken: records may be encrypted from now on
            }
        }
    }
}
