//! Counters of the endpoint: one cache-line-padded block per worker, summed on read,
//! so the hot path only ever touches its own core's line.
use std::sync::atomic::{AtomicU64, Ordering};

/// What a worker counts.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Metric {
    Connections = 0,
    Active,
    FullHandshakes,
    ResumedHandshakes,
    TlsErrors,
    BackendErrors,
    Timeouts,
    Refused,
    AcceptErrors,
    BytesFromClients,
    BytesToClients,
    EarlyDataAccepted,
    EarlyDataBytes,
    // Why TLS errors happened (each also counts in `TlsErrors`); see
    // `conn::TlsFailure::reason`.
    TlsMalformed,
    TlsOversizedRecord,
    TlsBadPskBinder,
    TlsMisbehaved,
    TlsIncompatible,
    TlsDecryptFailed,
    TlsPeerAlert,
    TlsOther,
    // The shared session tier, as connections saw it (see `tier`).
    ClusterLookups,
    ClusterLocalHits,
    ClusterFound,
    ClusterMissing,
    ClusterTimeouts,
    ClusterUnavailable,
    ClusterZeroRttRefused,
    ClusterHelloUnparsed,
    // backend_protocol = "http" (see `conn::http`).
    HttpRequests,
    HttpRefused,
    HttpBadGateway,
    BackendReused,
    BackendRetried,
    EarlyDataTooEarly,
    // Handshakes whose ClientHello matched a ticket rule (`tls::hello_rule`).
    HelloRuleTls12,
    HelloRuleNoTickets,
    /// Ticks of the worker's loop: the systemd watchdog is only fed while every
    /// worker's count moves. Not in the snapshot.
    Ticks,
}

/// How many counters: `Ticks` is the last.
const N: usize = Metric::Ticks as usize + 1;

/// One worker's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics([AtomicU64; N]);

// By hand: `Default` for arrays stops at 32 elements.
impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl WorkerMetrics {
    #[inline]
    pub fn add(&self, m: Metric, n: u64) {
        self.0[m as usize].fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn sub(&self, m: Metric, n: u64) {
        self.0[m as usize].fetch_sub(n, Ordering::Relaxed);
    }
    /// Ticks so far: a worker whose count stops moving is stuck.
    pub fn ticks(&self) -> u64 {
        self.get(Metric::Ticks)
    }
    fn get(&self, m: Metric) -> u64 {
        self.0[m as usize].load(Ordering::Relaxed)
    }
}

/// A point-in-time sum over all workers.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: u64,
    pub active_connections: u64,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
    pub tls_errors: u64,
    pub backend_errors: u64,
    pub timeouts: u64,
    pub refused: u64,
    pub accept_errors: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    /// Resumptions whose 0-RTT data was accepted and forwarded.
    pub early_data_accepted: u64,
    /// 0-RTT bytes forwarded, counted when the handshake completes.
    pub early_data_bytes: u64,
    pub tls_error_reasons: TlsErrorReasons,
    /// The shared session tier, as connections saw it (all 0 without one).
    pub cluster: ClusterMetrics,
    /// `backend_protocol = "http"`.
    pub http: HttpCounters,
    /// Handshakes served without TLS 1.3 tickets because a ticket rule matched.
    pub ticket_rules: TicketRuleCounts,
}

/// What connections did with the shared session tier (`cluster` in the stats
/// JSON, beside what the tier thread counts).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// Connections parked to ask the tier for their session.
    pub lookups: u64,
    /// Sessions found in this host's store: no round trip.
    pub local_hits: u64,
    /// Parked connections whose session the tier had (now resumed from here),
    /// did not have, did not answer for in time, or could not be asked about
    /// (down, queue full). Each of the last three is a full handshake unless
    /// this host holds the session.
    pub found: u64,
    pub missing: u64,
    pub timeouts: u64,
    pub unavailable: u64,
    /// 0-RTT offers refused because this host's redemption of the ticket in
    /// the tier did not succeed (the handshake itself goes on).
    pub zero_rtt_refused: u64,
    /// ClientHellos whose session keys could not be read (too large, not
    /// parsable): not looked up.
    pub hello_unparsed: u64,
}

/// What the HTTP framing did (all zero in tcp mode).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct HttpCounters {
    /// Requests forwarded to the backend (a retried one counts once).
    pub requests: u64,
    /// Requests refused before reaching the backend (400, 431, 501).
    pub refused: u64,
    /// 502/504 answers for a backend that was down or broke its response.
    pub bad_gateway: u64,
    /// Requests sent on a backend connection taken from the pool.
    pub backend_reused: u64,
    /// Requests sent again on a new connection because the pooled one was
    /// found dead before any of its bytes were written.
    pub backend_retried: u64,
    /// 0-RTT requests a backend answered with 425 Too Early, sent again once the
    /// handshake was complete.
    pub early_data_too_early: u64,
}

/// Handshakes whose ClientHello matched a ticket rule, by what they got.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct TicketRuleCounts {
    /// Served TLS 1.2 (resumes by session ID).
    pub tls12: u64,
    /// Served TLS 1.3 without a ticket (offered no TLS 1.2).
    pub no_tls13_tickets: u64,
}

/// `tls_errors` by cause; the names say which alert the client got.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct TlsErrorReasons {
    /// Undecodable messages: decode_error (illegal_parameter for a duplicate extension).
    pub malformed: u64,
    /// A record longer than the protocol allows: record_overflow.
    pub oversized_record: u64,
    /// A TLS 1.3 PSK binder that does not verify: decrypt_error (the ticket is spent).
    pub bad_psk_binder: u64,
    /// Well-formed but against the protocol (wrong message, bad parameter).
    pub misbehaved: u64,
    /// Nothing in common: version, cipher suite, group, signature scheme.
    pub incompatible: u64,
    /// A record that does not decrypt, or a Finished that does not verify.
    pub decrypt_failed: u64,
    /// The client sent a fatal alert.
    pub peer_alert: u64,
    pub other: u64,
}

/// Sum the workers' counters.
pub fn snapshot(workers: &[WorkerMetrics]) -> Snapshot {
    let s = |m| workers.iter().map(|w| w.get(m)).sum();
    Snapshot {
        connections: s(Metric::Connections),
        active_connections: s(Metric::Active),
        full_handshakes: s(Metric::FullHandshakes),
        resumed_handshakes: s(Metric::ResumedHandshakes),
        tls_errors: s(Metric::TlsErrors),
        backend_errors: s(Metric::BackendErrors),
        timeouts: s(Metric::Timeouts),
        refused: s(Metric::Refused),
        accept_errors: s(Metric::AcceptErrors),
        bytes_from_clients: s(Metric::BytesFromClients),
        bytes_to_clients: s(Metric::BytesToClients),
        early_data_accepted: s(Metric::EarlyDataAccepted),
        early_data_bytes: s(Metric::EarlyDataBytes),
        tls_error_reasons: TlsErrorReasons {
            malformed: s(Metric::TlsMalformed),
            oversized_record: s(Metric::TlsOversizedRecord),
            bad_psk_binder: s(Metric::TlsBadPskBinder),
            misbehaved: s(Metric::TlsMisbehaved),
            incompatible: s(Metric::TlsIncompatible),
            decrypt_failed: s(Metric::TlsDecryptFailed),
            peer_alert: s(Metric::TlsPeerAlert),
            other: s(Metric::TlsOther),
        },
        cluster: ClusterMetrics {
            lookups: s(Metric::ClusterLookups),
            local_hits: s(Metric::ClusterLocalHits),
            found: s(Metric::ClusterFound),
            missing: s(Metric::ClusterMissing),
            timeouts: s(Metric::ClusterTimeouts),
            unavailable: s(Metric::ClusterUnavailable),
            zero_rtt_refused: s(Metric::ClusterZeroRttRefused),
            hello_unparsed: s(Metric::ClusterHelloUnparsed),
        },
        http: HttpCounters {
            requests: s(Metric::HttpRequests),
            refused: s(Metric::HttpRefused),
            bad_gateway: s(Metric::HttpBadGateway),
            backend_reused: s(Metric::BackendReused),
            backend_retried: s(Metric::BackendRetried),
            early_data_too_early: s(Metric::EarlyDataTooEarly),
        },
        ticket_rules: TicketRuleCounts {
            tls12: s(Metric::HelloRuleTls12),
            no_tls13_tickets: s(Metric::HelloRuleNoTickets),
        },
    }
}
