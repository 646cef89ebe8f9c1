//! Counters of the endpoint: one cache-line-padded block per worker, summed on read,
//! so the hot path only ever touches its own core's line.
//!
//! The connection machine (`conn::Conn`) counts what happens to a connection and
//! the shared part of a worker (`runtime::slots`) counts accepts, so both drivers
//! report the same numbers. [`snapshot`] is the one reading of them: the stats
//! line, the stats JSON and the Prometheus page (`runtime::admin`) all show a
//! snapshot, never counters of their own.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::EventLoop;
use crate::store::{Counters, EncodingStatus, SessionStore};
use crate::tier::{TierCounters, TierStatus};

/// What a worker counts.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Metric {
    Connections = 0,
    Active,
    // Completed handshakes, one counter per kind and TLS version (they add up
    // to every handshake; see `Handshakes`).
    FullTls12,
    FullTls13,
    ResumedTls12,
    ResumedTls13,
    /// A TLS 1.3 resumption whose 0-RTT data was accepted and forwarded.
    ResumedTls13EarlyData,
    TlsErrors,
    /// Every backend failure: connect failures, connect timeouts and errors on
    /// an open backend connection.
    BackendErrors,
    /// Backend connects that failed (refused, unreachable ...); also in `BackendErrors`.
    BackendConnectFailures,
    /// Backend connects that did not complete within `backend_connect_timeout`;
    /// also in `BackendErrors`.
    BackendConnectTimeouts,
    Timeouts,
    Refused,
    AcceptErrors,
    BytesFromClients,
    BytesToClients,
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
    // TLS 1.3 tickets taken by connections, by how they were settled (see
    // `store::SessionCache::settle`), and 0-RTT refused on a spent ticket.
    TicketsSpent,
    TicketsRestored,
    EarlyDataSpentTicket,
    /// Ticks of the worker's loop: the systemd watchdog is only fed while every
    /// worker's count moves. Not in the snapshot.
    Ticks,
}

/// How many counters: `Ticks` is the last.
const N: usize = Metric::Ticks as usize + 1;

/// Upper bounds of the connection-time histogram's buckets, in microseconds
/// (the last bucket, +Inf, is implicit). Devices should be done in < 100 ms.
pub const CONNECTION_TIME_BOUNDS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = CONNECTION_TIME_BOUNDS_US.len() + 1;

/// One worker's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    counters: [AtomicU64; N],
    /// Connections by time from accept to close, per bucket (not cumulative).
    connection_time: [AtomicU64; BUCKETS],
    /// Sum of those times, microseconds.
    connection_time_us: AtomicU64,
}

impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            connection_time: std::array::from_fn(|_| AtomicU64::new(0)),
            connection_time_us: AtomicU64::new(0),
        }
    }
}

impl WorkerMetrics {
    #[inline]
    pub fn add(&self, m: Metric, n: u64) {
        self.counters[m as usize].fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn sub(&self, m: Metric, n: u64) {
        self.counters[m as usize].fetch_sub(n, Ordering::Relaxed);
    }
    /// Ticks so far: a worker whose count stops moving is stuck.
    pub fn ticks(&self) -> u64 {
        self.get(Metric::Ticks)
    }
    fn get(&self, m: Metric) -> u64 {
        self.counters[m as usize].load(Ordering::Relaxed)
    }

    /// A connection closed `took` after it was accepted.
    #[inline]
    pub fn observe_connection_time(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = CONNECTION_TIME_BOUNDS_US.partition_point(|&b| b < us);
        self.connection_time[bucket].fetch_add(1, Ordering::Relaxed);
        self.connection_time_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A point-in-time sum over all workers.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq)]
pub struct Snapshot {
    pub connections: u64,
    pub active_connections: u64,
    /// Full handshakes, both versions.
    pub full_handshakes: u64,
    /// Resumed handshakes, both versions, 0-RTT ones included.
    pub resumed_handshakes: u64,
    pub handshakes: Handshakes,
    pub tls_errors: u64,
    pub backend_errors: u64,
    pub backend_connect_failures: u64,
    pub backend_connect_timeouts: u64,
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
    /// The shared session tier, as connections saw it (all 0 without one);
    /// reported in [`Stats::cluster`] beside what the tier thread counts.
    #[serde(skip)]
    pub cluster: ClusterMetrics,
    pub connection_time: ConnectionTime,
    /// `backend_protocol = "http"`.
    pub http: HttpCounters,
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

/// Completed handshakes by kind and TLS version; each handshake is in exactly one.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Handshakes {
    pub tls12_full: u64,
    pub tls12_resumed: u64,
    pub tls13_full: u64,
    /// Resumed without 0-RTT data (or with 0-RTT data refused).
    pub tls13_resumed: u64,
    /// Resumed with the request accepted as 0-RTT data.
    pub tls13_resumed_early_data: u64,
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

impl TlsErrorReasons {
    /// Each reason with its name (the JSON field and the Prometheus label).
    pub fn by_name(&self) -> [(&'static str, u64); 8] {
        [
            ("malformed", self.malformed),
            ("oversized_record", self.oversized_record),
            ("bad_psk_binder", self.bad_psk_binder),
            ("misbehaved", self.misbehaved),
            ("incompatible", self.incompatible),
            ("decrypt_failed", self.decrypt_failed),
            ("peer_alert", self.peer_alert),
            ("other", self.other),
        ]
    }
}

/// How long connections stayed open, accept to close, as a histogram.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq)]
pub struct ConnectionTime {
    pub count: u64,
    pub sum_seconds: f64,
    /// Connections that took at most `CONNECTION_TIME_BOUNDS_US[i]` (cumulative,
    /// as Prometheus buckets are); `count` is the +Inf bucket.
    pub at_most: [u64; BUCKETS - 1],
}

impl ConnectionTime {
    /// Upper bounds of the buckets, in seconds.
    pub fn bounds_seconds() -> impl Iterator<Item = f64> {
        CONNECTION_TIME_BOUNDS_US.iter().map(|&us| us as f64 / 1e6)
    }
}

/// Sum the workers' counters.
pub fn snapshot(workers: &[WorkerMetrics]) -> Snapshot {
    let s = |m| workers.iter().map(|w| w.get(m)).sum();
    let handshakes = Handshakes {
        tls12_full: s(Metric::FullTls12),
        tls12_resumed: s(Metric::ResumedTls12),
        tls13_full: s(Metric::FullTls13),
        tls13_resumed: s(Metric::ResumedTls13),
        tls13_resumed_early_data: s(Metric::ResumedTls13EarlyData),
    };
    let mut connection_time = ConnectionTime::default();
    let mut cumulative = 0;
    for b in 0..BUCKETS {
        cumulative += workers
            .iter()
            .map(|w| w.connection_time[b].load(Ordering::Relaxed))
            .sum::<u64>();
        if b < BUCKETS - 1 {
            connection_time.at_most[b] = cumulative;
        }
    }
    connection_time.count = cumulative;
    connection_time.sum_seconds = workers
        .iter()
        .map(|w| w.connection_time_us.load(Ordering::Relaxed))
        .sum::<u64>() as f64
        / 1e6;
    Snapshot {
        connections: s(Metric::Connections),
        active_connections: s(Metric::Active),
        full_handshakes: handshakes.tls12_full + handshakes.tls13_full,
        resumed_handshakes: handshakes.tls12_resumed
            + handshakes.tls13_resumed
            + handshakes.tls13_resumed_early_data,
        handshakes,
        tls_errors: s(Metric::TlsErrors),
        backend_errors: s(Metric::BackendErrors),
        backend_connect_failures: s(Metric::BackendConnectFailures),
        backend_connect_timeouts: s(Metric::BackendConnectTimeouts),
        timeouts: s(Metric::Timeouts),
        refused: s(Metric::Refused),
        accept_errors: s(Metric::AcceptErrors),
        bytes_from_clients: s(Metric::BytesFromClients),
        bytes_to_clients: s(Metric::BytesToClients),
        early_data_accepted: handshakes.tls13_resumed_early_data,
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
        connection_time,
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
        tickets: TicketCounts {
            spent: s(Metric::TicketsSpent),
            restored: s(Metric::TicketsRestored),
            early_data_refused: s(Metric::EarlyDataSpentTicket),
        },
    }
}

/// Everything the endpoint reports, read at one moment: the stats line, the
/// stats JSON and the Prometheus page all show one of these.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    #[serde(flatten)]
    pub conns: Snapshot,
    pub store: StoreStats,
    /// The cache file's session-encoding record, as found at start-up.
    pub session_encoding: EncodingStatus,
    /// The event loop the workers run.
    pub runtime: EventLoop,
    /// The shared session tier: what connections saw, and (with a tier) what
    /// its thread counted.
    pub cluster: ClusterStats,
}

/// `cluster` in the stats JSON.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ClusterStats {
    /// Whether `[cluster]` is configured.
    pub enabled: bool,
    /// Whether the tier is reachable (as last seen); absent without a tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// Whether values are sealed in the tier; absent without a tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed: Option<bool>,
    #[serde(flatten)]
    pub conns: ClusterMetrics,
    /// The tier thread's counters (absent without a tier).
    #[serde(flatten)]
    pub tier: Option<TierCounters>,
}

/// The store's counters (shared by every process on the file) and how full it is.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StoreStats {
    #[serde(flatten)]
    pub counters: Counters,
    /// Sessions the file was sized for.
    pub capacity: u64,
    /// Live sessions over slots, estimated from a sample of buckets (a
    /// different run of buckets at each reading).
    pub load_factor: f64,
}

/// Buckets read per estimate of the load factor (16 slots each): ±1 % or so.
const SAMPLE_BUCKETS: u64 = 256;

/// Where [`Stats`] are read from: the workers' counters, the store, and what
/// start-up found.
#[derive(Debug)]
pub struct StatsSource {
    workers: Arc<Vec<WorkerMetrics>>,
    store: Arc<SessionStore>,
    encoding: EncodingStatus,
    runtime: EventLoop,
    tier: Option<TierStatus>,
    /// Where the next load-factor sample starts.
    sample_at: Mutex<u64>,
}

impl StatsSource {
    pub fn new(
        workers: Arc<Vec<WorkerMetrics>>,
        store: Arc<SessionStore>,
        encoding: EncodingStatus,
        runtime: EventLoop,
        tier: Option<TierStatus>,
    ) -> StatsSource {
        StatsSource {
            workers,
            store,
            encoding,
            runtime,
            tier,
            sample_at: Mutex::new(0),
        }
    }

    /// Read everything now.
    /// The event loop the workers run.
    pub fn runtime(&self) -> EventLoop {
        self.runtime
    }

    pub fn read(&self) -> Stats {
        let conns = snapshot(&self.workers);
        let t = self.tier.as_ref();
        Stats {
            cluster: ClusterStats {
                enabled: t.is_some(),
                up: t.map(TierStatus::is_up),
                sealed: t.map(TierStatus::seals),
                conns: conns.cluster,
                tier: t.map(TierStatus::counters),
            },
            conns,
            store: StoreStats {
                counters: self.store.counters(),
                capacity: self.store.geometry().capacity,
                load_factor: self.sample_load_factor(),
            },
            session_encoding: self.encoding,
            runtime: self.runtime,
        }
    }

    fn sample_load_factor(&self) -> f64 {
        let buckets = self.store.geometry().bucket_count;
        let n = SAMPLE_BUCKETS.min(buckets);
        let start = {
            let mut at = self.sample_at.lock().unwrap_or_else(|e| e.into_inner());
            let start = if *at + n > buckets { 0 } else { *at };
            *at = start + n;
            start
        };
        let t = self.store.scan_buckets(start..start + n, |_| {});
        let read = t.slots.max(1);
        t.live as f64 / read as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_times_land_in_the_first_bucket_that_holds_them() {
        let w = WorkerMetrics::default();
        w.observe_connection_time(Duration::from_micros(1_000)); // le 0.001
        w.observe_connection_time(Duration::from_micros(1_001)); // le 0.0025
        w.observe_connection_time(Duration::from_millis(80)); // le 0.1
        w.observe_connection_time(Duration::from_secs(3_600)); // +Inf only
        let t = snapshot(std::slice::from_ref(&w)).connection_time;
        assert_eq!(t.count, 4);
        assert_eq!(t.at_most[0], 1);
        assert_eq!(t.at_most[1], 2);
        assert_eq!(t.at_most[5], 2, "le 0.05");
        assert_eq!(t.at_most[6], 3, "le 0.1");
        assert_eq!(t.at_most[BUCKETS - 2], 3, "le 60");
        assert!(
            (t.sum_seconds - 3_600.082_001).abs() < 1e-6,
            "{}",
            t.sum_seconds
        );
    }
}
