//! What a phase measured: tallies kept per worker and merged at the end, and the
//! report built from them (JSON and a human table).
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::connection::{Failure, Outcome};

/// Connections and bytes of one handshake kind.
#[derive(Debug, Default, Clone, Copy)]
struct KindTally {
    connections: u64,
    c2s: u64,
    s2c: u64,
    overhead: u64,
    client_cpu_ns: u64,
}

impl KindTally {
    fn add(&mut self, o: &Outcome) {
        self.connections += 1;
        self.c2s += o.bytes_c2s;
        self.s2c += o.bytes_s2c;
        self.overhead += o.tls_overhead();
        self.client_cpu_ns += o.client_cpu.as_nanos() as u64;
    }
    fn merge(&mut self, o: &KindTally) {
        self.connections += o.connections;
        self.c2s += o.c2s;
        self.s2c += o.s2c;
        self.overhead += o.overhead;
        self.client_cpu_ns += o.client_cpu_ns;
    }
}

/// One worker's counts for a phase.
#[derive(Debug)]
pub struct Tally {
    /// Connection times of successful connections, in microseconds.
    hist: Histogram<u64>,
    /// Their TCP connect and first-response-byte times, µs.
    connect: Histogram<u64>,
    first_byte: Histogram<u64>,
    /// Connections whose SYN carried data the server took (TCP Fast Open).
    syn_data: u64,
    full: KindTally,
    /// Resumed without 0-RTT (none offered, or refused).
    resumed: KindTally,
    /// Resumed with the request accepted as 0-RTT early data.
    resumed_0rtt: KindTally,
    failed: BTreeMap<Failure, KindTally>,
    early_data_accepted: u64,
    unclean_closes: u64,
}

/// The histogram's range: 1 µs to 10 minutes, 3 significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            hist: new_histogram(),
            connect: new_histogram(),
            first_byte: new_histogram(),
            syn_data: 0,
            full: KindTally::default(),
            resumed: KindTally::default(),
            resumed_0rtt: KindTally::default(),
            failed: BTreeMap::new(),
            early_data_accepted: 0,
            unclean_closes: 0,
        }
    }
}

impl Tally {
    /// Count one connection.
    pub fn record(&mut self, o: &Outcome) {
        match o.result {
            Ok(h) => {
                let us = (o.elapsed.as_micros() as u64).clamp(1, self.hist.high());
                self.hist.saturating_record(us);
                let high = self.hist.high();
                let us = |d: Duration| (d.as_micros() as u64).clamp(1, high);
                if let Some(d) = o.connected {
                    self.connect.saturating_record(us(d));
                }
                if let Some(d) = o.first_byte {
                    self.first_byte.saturating_record(us(d));
                }
                self.syn_data += u64::from(o.syn_data);
                if h.resumed && h.early_data_accepted {
                    self.resumed_0rtt.add(o);
                } else if h.resumed {
                    self.resumed.add(o);
                } else {
                    self.full.add(o);
                }
                self.early_data_accepted += u64::from(h.early_data_accepted);
                self.unclean_closes += u64::from(h.unclean_close);
            }
            Err(why) => self.failed.entry(why).or_default().add(o),
        }
    }

    /// Add another worker's counts.
    pub fn merge(&mut self, o: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&o.hist);
        let _ = self.connect.add(&o.connect);
        let _ = self.first_byte.add(&o.first_byte);
        self.syn_data += o.syn_data;
        self.full.merge(&o.full);
        self.resumed.merge(&o.resumed);
        self.resumed_0rtt.merge(&o.resumed_0rtt);
        for (k, v) in &o.failed {
            self.failed.entry(*k).or_default().merge(v);
        }
        self.early_data_accepted += o.early_data_accepted;
        self.unclean_closes += o.unclean_closes;
    }
}

/// Per-connection bytes, split by handshake kind (`null` when there was none of
/// that kind).
#[derive(Debug, Clone, Serialize)]
pub struct PerKind {
    pub full: Option<f64>,
    /// All resumptions, with or without 0-RTT.
    pub resumed: Option<f64>,
    /// Resumptions whose request went as accepted 0-RTT data.
    pub resumed_0rtt: Option<f64>,
    pub all: Option<f64>,
}

/// Connection time quantiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// What the server under test spent, from /proc (given its pid).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerUsage {
    /// CPU time (user + system) the server used during the phase.
    pub cpu: Option<Duration>,
    /// Its memory at the end of the phase, bytes (PSS summed over the process
    /// and its descendants).
    pub rss: Option<u64>,
    /// The same at the start of the phase.
    pub rss_before: Option<u64>,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// The server was restarted just before this phase.
    pub after_restart: bool,
    /// Connections attempted (completed + failed).
    pub connections: u64,
    pub resumed: u64,
    pub full: u64,
    /// Connections refused at TCP connect: nothing listened (the port was
    /// closed, e.g. while a server restarted).
    pub refused: u64,
    /// Connections the server reset (RST) once connected: e.g. queued on a
    /// listening socket that was then closed.
    pub reset: u64,
    /// Connections that failed for any other reason, by reason.
    pub failed: BTreeMap<&'static str, u64>,
    /// Their sum (refused and reset connections are not in it).
    pub failed_total: u64,
    /// Devices not dispatched because the phase hit its time limit.
    pub skipped: u64,
    /// Resumed connections as a share of connections attempted.
    pub resumed_pct: f64,
    pub early_data_accepted: u64,
    /// Completed connections whose server closed without close_notify.
    pub unclean_closes: u64,
    pub bytes_c2s_per_conn: PerKind,
    pub bytes_s2c_per_conn: PerKind,
    /// Wire bytes both ways minus the request and response: the handshake,
    /// record headers and tags, alerts, close_notify.
    pub tls_overhead_per_conn: PerKind,
    /// The device thread's CPU time (user + system) per connection, µs.
    pub client_cpu_us_per_conn: PerKind,
    /// All bytes written/read at the devices' sockets, failed connections included.
    pub bytes_c2s_total: u64,
    pub bytes_s2c_total: u64,
    pub conn_time_ms: Quantiles,
    /// TCP connect time (near zero when TCP Fast Open defers the SYN).
    pub connect_ms: Quantiles,
    /// Connect to the first byte of the response.
    pub first_byte_ms: Quantiles,
    /// Completed connections whose SYN carried data the server took (TCP Fast Open).
    pub tfo_syn_data: u64,
    /// Completed connections per second of the phase's wall time.
    pub conn_per_s: f64,
    pub elapsed_s: f64,
    /// Server CPU time (its process and descendants) over the phase / connections.
    pub server_cpu_us_per_conn: Option<f64>,
    /// Server memory at the end of the phase (PSS over its process tree), MiB.
    pub server_rss_mb: Option<f64>,
    /// How much that memory grew over the phase, MiB (after the prime phase:
    /// what the server holds for the fleet's sessions).
    pub server_rss_growth_mb: Option<f64>,
    /// Connection times in µs, for the plot.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl PhaseReport {
    /// The report of a phase from its merged tally.
    pub fn new(
        name: &str,
        after_restart: bool,
        t: &Tally,
        skipped: u64,
        elapsed: Duration,
        server: ServerUsage,
    ) -> PhaseReport {
        let count = |f: Failure| t.failed.get(&f).map_or(0, |k| k.connections);
        let (refused, reset) = (count(Failure::ConnectRefused), count(Failure::Reset));
        let failed_total: u64 =
            t.failed.values().map(|k| k.connections).sum::<u64>() - refused - reset;
        let mut resumed = t.resumed;
        resumed.merge(&t.resumed_0rtt);
        let completed = t.full.connections + resumed.connections;
        let connections = completed + refused + reset + failed_total;
        let mut all = t.full;
        all.merge(&resumed);
        let per = |bytes: u64, n: u64| (n > 0).then(|| bytes as f64 / n as f64);
        let per_kind = |f: fn(&KindTally) -> u64, scale: f64| {
            let per = |k: &KindTally| per(f(k), k.connections).map(|v| v / scale);
            PerKind {
                full: per(&t.full),
                resumed: per(&resumed),
                resumed_0rtt: per(&t.resumed_0rtt),
                all: per(&all),
            }
        };
        let total = |f: fn(&KindTally) -> u64| {
            f(&t.full) + f(&resumed) + t.failed.values().map(f).sum::<u64>()
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let quantiles = |h: &Histogram<u64>| {
            let q = |p: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    ms(h.value_at_quantile(p))
                }
            };
            Quantiles {
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                max: if h.is_empty() { 0.0 } else { ms(h.max()) },
                mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            }
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        PhaseReport {
            name: name.to_string(),
            after_restart,
            connections,
            resumed: resumed.connections,
            full: t.full.connections,
            refused,
            reset,
            failed: t
                .failed
                .iter()
                .filter(|(k, _)| !matches!(k, Failure::ConnectRefused | Failure::Reset))
                .map(|(k, v)| (k.as_str(), v.connections))
                .collect(),
            failed_total,
            skipped,
            resumed_pct: if connections == 0 {
                0.0
            } else {
                100.0 * resumed.connections as f64 / connections as f64
            },
            early_data_accepted: t.early_data_accepted,
            unclean_closes: t.unclean_closes,
            bytes_c2s_per_conn: per_kind(|k| k.c2s, 1.0),
            bytes_s2c_per_conn: per_kind(|k| k.s2c, 1.0),
            tls_overhead_per_conn: per_kind(|k| k.overhead, 1.0),
            client_cpu_us_per_conn: per_kind(|k| k.client_cpu_ns, 1000.0),
            bytes_c2s_total: total(|k| k.c2s),
            bytes_s2c_total: total(|k| k.s2c),
            conn_time_ms: quantiles(&t.hist),
            connect_ms: quantiles(&t.connect),
            first_byte_ms: quantiles(&t.first_byte),
            tfo_syn_data: t.syn_data,
            conn_per_s: completed as f64 / secs,
            elapsed_s: elapsed.as_secs_f64(),
            server_cpu_us_per_conn: server
                .cpu
                .filter(|_| connections > 0)
                .map(|c| c.as_secs_f64() * 1e6 / connections as f64),
            server_rss_mb: server.rss.map(|b| b as f64 / MIB),
            server_rss_growth_mb: server
                .rss
                .zip(server.rss_before)
                .map(|(a, b)| (a as f64 - b as f64) / MIB),
            histogram: t.hist.clone(),
        }
    }
}

impl PhaseReport {
    /// Connections that did not complete, whatever the reason (refused, reset
    /// or failed otherwise).
    pub fn unsuccessful(&self) -> u64 {
        self.refused + self.reset + self.failed_total
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A whole run: the fleet and its phases.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub server_name: String,
    pub devices: u32,
    pub tls: String,
    pub concurrency: usize,
    pub request_bytes: usize,
    pub early_data_bytes: usize,
    /// The devices' ClientHello profile.
    pub hello: super::client::HelloProfile,
    /// The devices asked for TCP Fast Open.
    pub tfo: bool,
    /// The simulator's own memory per device (RSS growth over the prime phase /
    /// devices): what 1M devices cost this machine.
    pub client_bytes_per_device: Option<f64>,
    /// Bytes per device before any session (the slot table).
    pub client_fixed_bytes_per_device: usize,
    pub phases: Vec<PhaseReport>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "fleet: {} devices, TLS {}, target {} (SNI {}), concurrency {}, request {} B{}\n",
            self.devices,
            self.tls,
            self.target,
            self.server_name,
            self.concurrency,
            self.request_bytes,
            if self.early_data_bytes > 0 {
                format!(", 0-RTT up to {} B", self.early_data_bytes)
            } else {
                String::new()
            }
        );
        if let Some(b) = self.client_bytes_per_device {
            s += &format!("client memory: {b:.0} B per device (RSS growth over prime)\n");
        }
        s += &format!(
            "{:<18} {:>8} {:>8} {:>8} {:>7} {:>6} {:>7} {:>8} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}\n",
            "phase",
            "conns",
            "resumed",
            "full",
            "refused",
            "reset",
            "failed",
            "resumed%",
            "c2s B full/res",
            "s2c B full/res",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "conn/s",
            "srv us/c",
            "srv MB"
        );
        for p in &self.phases {
            let name = if p.after_restart {
                format!("{} (restart)", p.name)
            } else {
                p.name.clone()
            };
            s += &format!(
                "{:<18} {:>8} {:>8} {:>8} {:>7} {:>6} {:>7} {:>8.2} {:>14} {:>14} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.0} {:>9} {:>7}\n",
                name,
                p.connections,
                p.resumed,
                p.full,
                p.refused,
                p.reset,
                p.failed_total,
                p.resumed_pct,
                format!(
                    "{}/{}",
                    opt(p.bytes_c2s_per_conn.full, 0),
                    opt(p.bytes_c2s_per_conn.resumed, 0)
                ),
                format!(
                    "{}/{}",
                    opt(p.bytes_s2c_per_conn.full, 0),
                    opt(p.bytes_s2c_per_conn.resumed, 0)
                ),
                p.conn_time_ms.p50,
                p.conn_time_ms.p90,
                p.conn_time_ms.p99,
                p.conn_time_ms.max,
                p.conn_per_s,
                opt(p.server_cpu_us_per_conn, 0),
                opt(p.server_rss_mb, 1),
            );
            let kinds = |k: &PerKind, digits| {
                format!(
                    "{}/{}/{}",
                    opt(k.full, digits),
                    opt(k.resumed, digits),
                    opt(k.resumed_0rtt, digits)
                )
            };
            s += &format!(
                "{:<18}   per conn, full/resumed/resumed with 0-RTT: TLS overhead {} B, device CPU {} us\n",
                "",
                kinds(&p.tls_overhead_per_conn, 0),
                kinds(&p.client_cpu_us_per_conn, 0),
            );
            if !p.failed.is_empty() {
                let reasons: Vec<String> =
                    p.failed.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s += &format!("{:<18}   failed: {}\n", "", reasons.join(", "));
            }
            if p.skipped > 0 {
                s += &format!("{:<18}   skipped (time limit): {}\n", "", p.skipped);
            }
            if self.tfo {
                s += &format!(
                    "{:<18}   TCP Fast Open: {} of {} completed connections sent data in the SYN; TCP connect p50 {:.2} ms, first response byte p50 {:.2} ms\n",
                    "",
                    p.tfo_syn_data,
                    p.resumed + p.full,
                    p.connect_ms.p50,
                    p.first_byte_ms.p50
                );
            }
        }
        s
    }
}
