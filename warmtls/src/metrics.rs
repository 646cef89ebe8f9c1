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
    // Handshakes whose ClientHello matched a ticket rule (`tls::hello_rule`).
    HelloRuleTls12,
    HelloRuleNoTickets,
    // TLS 1.3 tickets taken by connections, by how they were settled (see
    // `store::SessionCache::settle`), and 0-RTT refused on a spent ticket.
    TicketsSpent,
    TicketsRestored,
    EarlyDataSpentTicket,
}

const N: usize = 26;

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics([AtomicU64; N]);

impl WorkerMetrics {
    #[inline]
    pub fn add(&self, m: Metric, n: u64) {
        self.0[m as usize].fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn sub(&self, m: Metric, n: u64) {
        self.0[m as usize].fetch_sub(n, Ordering::Relaxed);
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
    /// Handshakes served without TLS 1.3 tickets because a ticket rule matched.
    pub ticket_rules: TicketRuleCounts,
    /// TLS 1.3 tickets redeemed by connections, by how each was settled.
    pub tickets: TicketCounts,
}

/// TLS 1.3 tickets taken by connections: kept pending while the connection
/// ran, then erased or restored.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct TicketCounts {
    /// Erased: the device got its replacement ticket.
    pub spent: u64,
    /// Restored: the connection died first; resumable again (1-RTT only).
    pub restored: u64,
    /// ClientHellos offering 0-RTT on a ticket used before: served without
    /// early data (a 1-RTT resumption).
    pub early_data_refused: u64,
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
        ticket_rules: TicketRuleCounts {
            tls12: s(Metric::HelloRuleTls12),
            no_tls13_tickets: s(Metric::HelloRuleNoTickets),
        },
        tickets: TicketCounts {
            spent: s(Metric::TicketsSpent),
            restored: s(Metric::TicketsRestored),
            early_data_refused: s(Metric::EarlyDataSpentTicket),
        },
    }
}
