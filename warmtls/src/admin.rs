//! The optional admin listener (`metrics_listen`): `GET /metrics` in the
//! Prometheus text format (0.0.4), on a plain std thread of its own.
//!
//! It shows one reading of [`StatsSource`] per scrape — the very numbers the
//! stats line and the stats JSON show — encoded by `prometheus-client`. The
//! responder is a bounded HTTP/1.1 subset: one request per connection, 8 KiB of
//! request at most, two seconds to send it, then `Connection: close`. It never
//! runs on a worker and never touches the TLS listener.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{ClusterStats, ConnectionTime, Stats, StatsSource};

/// Largest request taken (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and then to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The running admin listener; dropping it stops it.
#[derive(Debug)]
pub struct AdminListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminListener {
    /// Listen on `addr` and answer scrapes from `stats` until dropped. If the
    /// address is in use and `wait` is not zero (a process taking over, whose
    /// predecessor still holds the port), keep trying for up to `wait` on the
    /// listener's thread, and serve once the port is free.
    pub fn start(
        addr: SocketAddr,
        stats: Arc<StatsSource>,
        wait: Duration,
    ) -> std::io::Result<AdminListener> {
        let (listener, addr) = match TcpListener::bind(addr) {
            Ok(l) => {
                let a = l.local_addr()?;
                (Some(l), a)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !wait.is_zero() => (None, addr),
            Err(e) => return Err(e),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collector(stats)));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("warmtls-admin".into())
            .spawn(move || {
                let listener = match listener {
                    Some(l) => l,
                    None => match bind_within(addr, wait, &stop2) {
                        Some(l) => l,
                        None => return,
                    },
                };
                serve(&listener, &registry, &stop2)
            })?;
        Ok(AdminListener {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port, when it was given as 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bind `addr`, retried every 100 ms for up to `wait` while it is in use.
fn bind_within(addr: SocketAddr, wait: Duration, stop: &AtomicBool) -> Option<TcpListener> {
    let end = Instant::now() + wait;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::error!("metrics listener: cannot listen on {addr}: {e}; no metrics page");
                return None;
            }
        }
    }
}

fn serve(listener: &TcpListener, registry: &Registry, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("metrics listener: poll failed: {e}; stopping it");
                return;
            }
        }
        match listener.accept() {
            Ok((s, _)) => {
                if let Err(e) = answer(s, registry) {
                    tracing::debug!("metrics request: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Read one request and answer it.
fn answer(mut s: TcpStream, registry: &Registry) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        if req.len() > MAX_REQUEST {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
            );
        }
        if Instant::now() > deadline {
            return respond(
                &mut s,
                "408 Request Timeout",
                "text/plain",
                b"request too slow\n",
            );
        }
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let mut body = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => respond(
                    &mut s,
                    "200 OK",
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body.as_bytes(),
                ),
                Err(_) => respond(
                    &mut s,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encoding failed\n",
                ),
            }
        }
        (b"GET", _) => respond(
            &mut s,
            "404 Not Found",
            "text/plain",
            b"metrics are at /metrics\n",
        ),
        _ => respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET /metrics\n",
        ),
    }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// Reads the stats at each scrape.
#[derive(Debug)]
struct Collector(Arc<StatsSource>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_stats(&self.0.read(), &mut e)
    }
}

/// One counter.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// The shared session tier (`cluster` in the stats JSON): every counter
/// there, each under its own name (`warmtls_cluster_<field>_total`), so one the
/// tier gains cannot be left off; whether it is configured, reachable, sealed.
fn cluster(e: &mut DescriptorEncoder, c: &ClusterStats) -> std::fmt::Result {
    gauge(
        e,
        "warmtls_cluster_enabled",
        "1 when a shared session tier is configured ([cluster]).",
        f64::from(u8::from(c.enabled)),
    )?;
    if let Some(up) = c.up {
        gauge(
            e,
            "warmtls_cluster_up",
            "1 while the shared session tier is reachable (as last seen).",
            f64::from(u8::from(up)),
        )?;
    }
    let serde_json::Value::Object(fields) = serde_json::to_value(c).unwrap_or_default() else {
        return Ok(());
    };
    for (field, v) in fields {
        let Some(v) = v.as_u64() else {
            continue; // enabled, up, sealed: not counters
        };
        counter(
            e,
            &format!("warmtls_cluster_{field}"),
            cluster_help(&field),
            v,
        )?;
    }
    Ok(())
}

/// What each `cluster` counter counts (connections' view, then the tier thread's).
fn cluster_help(field: &str) -> &'static str {
    match field {
        "lookups" => "Connections parked to ask the shared tier for their session.",
        "local_hits" => "ClientHellos whose session this host held: no round trip to the tier.",
        "found" => "Parked connections whose session the tier had (resumed from here).",
        "missing" => "Parked connections whose session the tier did not have.",
        "timeouts" => "Parked connections the tier did not answer in lookup_timeout.",
        "unavailable" => {
            "Parked connections whose lookup could not be sent (tier down, queue full)."
        }
        "zero_rtt_refused" => {
            "0-RTT offers refused: this host's redemption in the tier did not succeed."
        }
        "hello_unparsed" => "ClientHellos whose session keys could not be read: not looked up.",
        "tier_lookups" => "Lookups the tier thread sent to the tier.",
        "tier_found" => "Tier lookups that found the session.",
        "tier_missing" => "Tier lookups answered: not there.",
        "tier_timeouts" => "Tier lookups not answered within lookup_timeout.",
        "tier_errors" => "Tier lookups that failed (connection, server error).",
        "tier_unavailable" => "Lookups not sent: the tier was down or its queue full.",
        "lookup_rtt_us_sum" => "Sum of the tier lookups' round trips, microseconds.",
        "writes" => "Sessions written to the tier.",
        "deletes" => "Ticket deletions sent to the tier.",
        "refreshes" => "TLS 1.2 session rewrites sent to the tier.",
        "write_errors" => "Writes the tier refused or that failed (the local copy stays).",
        "writes_dropped" => "Writes dropped: queue full, tier down, or waited too long.",
        "decrypt_failures" => "Values from the tier that did not open (another key, altered).",
        "adopt_failures" => "Values from the tier this host's store could not hold.",
        "down_events" => "Times the tier went down.",
        "reconnects" => "Times the tier came back.",
        _ => "A shared session tier counter (see the stats JSON's cluster).",
    }
}

/// One gauge.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Counters of one name, told apart by their labels.
fn counters<const L: usize>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[([(&str, &str); L], u64)],
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Every metric, from one reading. Names: `warmtls_` + what; counters end in
/// `_total` (added by the encoder).
fn encode_stats(st: &Stats, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let m = &st.conns;
    let h = &m.handshakes;
    {
        let g = ConstGauge::new(1i64);
        let mut family = e.encode_descriptor(
            "warmtls_runtime_info",
            "The event loop the workers run: io_uring, or epoll where io_uring cannot be set up.",
            None,
            g.metric_type(),
        )?;
        g.encode(family.encode_family(&[("runtime", st.runtime.name())])?)?;
    }
    counter(
        e,
        "warmtls_connections",
        "Client connections accepted.",
        m.connections,
    )?;
    gauge(
        e,
        "warmtls_connections_active",
        "Client connections open now.",
        m.active_connections as f64,
    )?;
    counter(
        e,
        "warmtls_connections_refused",
        "Connections closed at once: the worker was at max_connections.",
        m.refused,
    )?;
    counter(
        e,
        "warmtls_accept_errors",
        "Accepts that failed (out of file descriptors or memory).",
        m.accept_errors,
    )?;
    counters(
        e,
        "warmtls_handshakes",
        "Completed TLS handshakes by kind (full, resumed, resumed_early_data: the request came as accepted 0-RTT data) and version.",
        &[
            ([("kind", "full"), ("version", "1.2")], h.tls12_full),
            ([("kind", "resumed"), ("version", "1.2")], h.tls12_resumed),
            ([("kind", "full"), ("version", "1.3")], h.tls13_full),
            ([("kind", "resumed"), ("version", "1.3")], h.tls13_resumed),
            ([("kind", "resumed_early_data"), ("version", "1.3")], h.tls13_resumed_early_data),
        ],
    )?;
    counters(
        e,
        "warmtls_tls_errors",
        "Client connections ended by a TLS error, by reason (the alert the client got).",
        &m.tls_error_reasons
            .by_name()
            .map(|(reason, v)| ([("reason", reason)], v)),
    )?;
    counter(e, "warmtls_backend_errors", "Backend failures of every kind: connect failures, connect timeouts, errors on an open backend connection.", m.backend_errors)?;
    counter(
        e,
        "warmtls_backend_connect_failures",
        "Backend connects that failed (refused, unreachable).",
        m.backend_connect_failures,
    )?;
    counter(
        e,
        "warmtls_backend_connect_timeouts",
        "Backend connects that did not complete within backend_connect_timeout.",
        m.backend_connect_timeouts,
    )?;
    counter(
        e,
        "warmtls_client_timeouts",
        "Client connections closed by handshake_timeout or idle_timeout.",
        m.timeouts,
    )?;
    counter(
        e,
        "warmtls_client_received_bytes",
        "Bytes received from clients (TLS records).",
        m.bytes_from_clients,
    )?;
    counter(
        e,
        "warmtls_client_sent_bytes",
        "Bytes sent to clients (TLS records).",
        m.bytes_to_clients,
    )?;
    counters(
        e,
        "warmtls_ticket_rule_handshakes",
        "Handshakes whose ClientHello matched a ticket rule, by what they were served (tls12: TLS 1.2, resumes by session ID; no_tls13_tickets: TLS 1.3 without a ticket).",
        &[
            ([("served", "tls12")], m.ticket_rules.tls12),
            ([("served", "no_tls13_tickets")], m.ticket_rules.no_tls13_tickets),
        ],
    )?;
    let t = &m.tickets;
    counter(
        e,
        "warmtls_tickets_spent",
        "TLS 1.3 tickets taken by a connection and erased once the device had its replacement (it closed after the new ticket went out, or was still talking when the pending window closed).",
        t.spent,
    )?;
    counter(
        e,
        "warmtls_tickets_restored",
        "TLS 1.3 tickets taken by a connection that failed first (reset, timeout, TLS error, a device gone quiet after its Finished): resumable again, 1-RTT only.",
        t.restored,
    )?;
    counter(
        e,
        "warmtls_tickets_early_data_refused",
        "ClientHellos offering 0-RTT on a ticket that was taken before: served without early data (a 1-RTT resumption).",
        t.early_data_refused,
    )?;
    counter(
        e,
        "warmtls_early_data_bytes",
        "0-RTT bytes accepted and forwarded to the backend.",
        m.early_data_bytes,
    )?;
    let http = &m.http;
    counter(
        e,
        "warmtls_http_requests",
        "http backends: requests forwarded to the backend (a retried one counts once).",
        http.requests,
    )?;
    counter(
        e,
        "warmtls_http_refused",
        "http backends: requests refused before reaching the backend (400, 431, 501).",
        http.refused,
    )?;
    counter(
        e,
        "warmtls_http_bad_gateway",
        "http backends: 502/504 answers for a backend that was down or broke its response.",
        http.bad_gateway,
    )?;
    counter(
        e,
        "warmtls_http_backend_reused",
        "http backends: requests sent on a kept-alive backend connection from the pool.",
        http.backend_reused,
    )?;
    counter(
        e,
        "warmtls_http_backend_retried",
        "http backends: requests sent again on a new connection because the pooled one was found dead before any byte was written.",
        http.backend_retried,
    )?;
    counter(
        e,
        "warmtls_http_early_data_too_early",
        "http backends: 0-RTT requests the backend answered with 425 Too Early, sent again once the handshake was complete.",
        http.early_data_too_early,
    )?;
    connection_time(e, &m.connection_time)?;
    cluster(e, &st.cluster)?;
    let s = &st.store.counters;
    counter(
        e,
        "warmtls_store_hits",
        "Session lookups that found a session (TLS 1.2 get, TLS 1.3 take).",
        s.hits,
    )?;
    counter(
        e,
        "warmtls_store_misses",
        "Session lookups that found none.",
        s.misses,
    )?;
    counter(e, "warmtls_store_puts", "Sessions stored.", s.puts)?;
    counter(
        e,
        "warmtls_store_takes",
        "TLS 1.3 tickets redeemed (taken: single use).",
        s.takes,
    )?;
    counters(
        e,
        "warmtls_store_evictions",
        "Slots given up for a new session: state=live evicted a session still resumable (the cache is too small), state=expired reclaimed an expired one (also by lookups and the sweep).",
        &[([("state", "live")], s.evictions), ([("state", "expired")], s.expired)],
    )?;
    counter(e, "warmtls_store_decrypt_failures", "Sealed sessions that did not open with this cache key (key rotated or bytes altered): each a full handshake.", s.decrypt_failures)?;
    counter(e, "warmtls_store_undecodable", "Stored sessions this build's rustls cannot decode (another session encoding): each a full handshake.", s.undecodable)?;
    counter(
        e,
        "warmtls_store_corrupt",
        "Slots that failed their checksum (torn by a crash, or altered): each a miss.",
        s.corrupt,
    )?;
    counter(
        e,
        "warmtls_store_too_large",
        "Sessions not stored: larger than a slot holds.",
        s.too_large,
    )?;
    counter(
        e,
        "warmtls_store_lock_steals",
        "Bucket locks taken over from a process that died holding them.",
        s.lock_steals,
    )?;
    counter(
        e,
        "warmtls_store_purged",
        "Entries erased by warmtls-cache purge.",
        s.purged,
    )?;
    counter(
        e,
        "warmtls_store_displacements",
        "Sessions moved to their other candidate bucket to make room instead of evicting a live one.",
        s.displacements,
    )?;
    counter(
        e,
        "warmtls_store_migrated",
        "Sessions moved into this cache file from the previous file of a migration (another capacity, slot size or sealing).",
        s.migrated,
    )?;
    counter(
        e,
        "warmtls_store_migration_dropped",
        "Sessions of the previous file of a migration that did not fit the new one (the youngest were kept): each a full handshake.",
        s.migration_dropped,
    )?;
    gauge(
        e,
        "warmtls_store_capacity_sessions",
        "Sessions the cache file was sized for.",
        st.store.capacity as f64,
    )?;
    gauge(
        e,
        "warmtls_store_load_factor",
        "Live sessions over slots, estimated from a sample of buckets.",
        st.store.load_factor,
    )?;
    gauge(
        e,
        "warmtls_session_encoding_readable",
        "1 if this build reads the session encoding the cache file recorded at start-up.",
        f64::from(u8::from(st.session_encoding.readable)),
    )?;
    Ok(())
}

fn connection_time(e: &mut DescriptorEncoder, t: &ConnectionTime) -> std::fmt::Result {
    // The snapshot's buckets are cumulative; the encoder wants each bucket's own count.
    let mut buckets = Vec::with_capacity(t.at_most.len());
    let mut below = 0;
    for (bound, &at_most) in ConnectionTime::bounds_seconds().zip(&t.at_most) {
        buckets.push((bound, at_most - below));
        below = at_most;
    }
    let mut m = e.encode_descriptor(
        "warmtls_connection_duration",
        "Client connections from accept to close.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    m.encode_histogram::<NoLabelSet>(t.sum_seconds, t.count, &buckets, None)
}
