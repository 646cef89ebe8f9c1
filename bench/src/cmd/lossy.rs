//! `warmtls-bench lossy`: what a lossy radio link costs a device's next
//! reconnect, per TLS version and drop point, against the real `warmtls serve`
//! on loopback — with tickets restored after a dropped connection
//! (`ticket_restores`, the default) and without (`--ticket-restores 0`: the
//! single-use take that erases a TLS 1.3 ticket whatever becomes of its
//! connection), in one run.
//!
//! The devices keep their saved session until a replacement arrives (wolfSSL /
//! Mbed TLS applications; see `fleet::lossy`). Each cell (server setting, drop
//! probability P, drop point) runs on its own endpoint and cache file: a prime
//! round (full handshakes), a settling round (everyone resumes), then `rounds`
//! rounds in which each connection is abandoned at the drop point with
//! probability P — by a reset or by going silent, alternately — and one last
//! round without drops. A device whose connection was dropped reconnects in
//! the next round without a drop: that *next reconnect* is what is measured.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use warmtls_bench::demo::{
    self_signed_cert_path, Backend, Endpoint, EndpointProgram, EndpointSpec,
};
use warmtls_bench::fleet::lossy::{wait_out, DropPoint, LossyDevices, Manner};

#[derive(Args, Debug)]
pub struct LossyArgs {
    /// Devices per cell (half TLS 1.3, half TLS 1.2).
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Rounds with drops per cell.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Drop probabilities, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.10])]
    p: Vec<f64>,
    /// Drop points (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    points: Vec<DropPoint>,
    /// Connections in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The endpoint's handshake and idle timeouts, seconds (how long it waits
    /// on a silent device; short, so the run is).
    #[arg(long, default_value_t = 2)]
    handshake_timeout: u64,
    /// Request size, bytes.
    #[arg(long, default_value_t = 64)]
    request: usize,
    /// A `warmtls` binary to measure (default: this binary's own endpoint).
    #[arg(long)]
    warmtls: Option<PathBuf>,
    /// Seed of the drops.
    #[arg(long, default_value_t = 0x10557)]
    seed: u64,
    /// Write the cells as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print every connection that did not complete, and the endpoint's ticket
    /// counters per cell.
    #[arg(long)]
    verbose: bool,
}

/// The tallies of one TLS version in one cell.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Tally {
    /// Connections in the measured rounds (dropped ones included).
    reconnects: u64,
    drops: u64,
    /// Reconnects right after a drop.
    next: u64,
    /// ... that were full handshakes (or failed: `next_failed`).
    next_full: u64,
    /// Reconnects right after a drop that failed.
    next_failed: u64,
    /// Full handshakes among all reconnects (a failed connection counts as
    /// neither).
    full: u64,
    /// Connections that failed without a drop.
    failed: u64,
    bytes: u64,
    cpu_us: u64,
    /// Completed connections by handshake kind, with their bytes and device
    /// CPU: what one full handshake costs over a resumption, measured in the
    /// same rounds.
    completed_full: u64,
    completed_full_bytes: u64,
    completed_full_cpu_us: u64,
    completed_resumed: u64,
    completed_resumed_bytes: u64,
    completed_resumed_cpu_us: u64,
}

impl Tally {
    /// Mean bytes and device CPU (µs) of a completed full handshake minus a
    /// completed resumption.
    fn full_premium(&self) -> Option<(f64, f64)> {
        if self.completed_full == 0 || self.completed_resumed == 0 {
            return None;
        }
        let f = self.completed_full as f64;
        let r = self.completed_resumed as f64;
        Some((
            self.completed_full_bytes as f64 / f - self.completed_resumed_bytes as f64 / r,
            self.completed_full_cpu_us as f64 / f - self.completed_resumed_cpu_us as f64 / r,
        ))
    }
}

#[derive(Debug, serde::Serialize)]
struct Cell {
    server: &'static str,
    p: f64,
    point: DropPoint,
    tls13: Tally,
    tls12: Tally,
    /// The endpoint's ticket counters (spent, restored, early data refused).
    endpoint_tickets: serde_json::Value,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One round: every device connects once; `drop_p` of them (but never one
/// whose previous connection was dropped) are abandoned at `point`. Returns
/// the connections left in silence, to hold.
#[allow(clippy::too_many_arguments)]
fn round(
    devices: &LossyDevices,
    n: u32,
    addr: SocketAddr,
    request: &[u8],
    point: DropPoint,
    drop_p: f64,
    concurrency: usize,
    dropped_before: &mut [bool],
    rng: &mut u64,
    tally: Option<&mut [Tally; 2]>,
    verbose: bool,
) -> Vec<std::net::TcpStream> {
    // Decide the round's drops up front (deterministic for a seed).
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..order.len()).rev() {
        let j = (xorshift(rng) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let plan: Vec<Option<(DropPoint, Manner)>> = (0..n)
        .map(|d| {
            let r = (xorshift(rng) >> 11) as f64 / (1u64 << 53) as f64;
            (!dropped_before[d as usize] && r < drop_p).then(|| {
                let manner = if xorshift(rng).is_multiple_of(2) {
                    Manner::Reset
                } else {
                    Manner::Silence
                };
                (point, manner)
            })
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(n as usize));
    let silent = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..concurrency.max(1) {
            sc.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&d) = order.get(k) else { break };
                let o =
                    devices.connect(d, addr, request, plan[d as usize], Duration::from_secs(10));
                let mut o = o;
                if let Some(s) = o.silent.take() {
                    silent.lock().unwrap().push(s);
                }
                results.lock().unwrap().push((d, o));
            });
        }
    });
    let results = results.into_inner().unwrap();
    if let Some(t) = tally {
        for (d, o) in &results {
            let t = &mut t[usize::from(!LossyDevices::is_tls13(*d))];
            t.reconnects += 1;
            t.bytes += o.bytes;
            t.cpu_us += o.cpu.as_micros() as u64;
            if o.resumed == Some(false) {
                t.full += 1;
            }
            let cpu = o.cpu.as_micros() as u64;
            match (o.completed, o.resumed) {
                (true, Some(false)) => {
                    t.completed_full += 1;
                    t.completed_full_bytes += o.bytes;
                    t.completed_full_cpu_us += cpu;
                }
                (true, Some(true)) => {
                    t.completed_resumed += 1;
                    t.completed_resumed_bytes += o.bytes;
                    t.completed_resumed_cpu_us += cpu;
                }
                _ => {}
            }
            if plan[*d as usize].is_some() {
                t.drops += 1;
            } else {
                if !o.completed {
                    t.failed += 1;
                }
                if dropped_before[*d as usize] {
                    t.next += 1;
                    if o.resumed != Some(true) {
                        t.next_full += 1;
                    }
                    if !o.completed {
                        t.next_failed += 1;
                    }
                }
            }
        }
    }
    if verbose {
        for (d, o) in &results {
            if !o.completed {
                eprintln!(
                    "  device {d} plan {:?} dropped before {} resumed {:?} bytes {}",
                    plan[*d as usize], dropped_before[*d as usize], o.resumed, o.bytes
                );
            }
        }
    }
    for (d, p) in plan.iter().enumerate() {
        dropped_before[d] = p.is_some();
    }
    silent.into_inner().unwrap()
}

pub fn main(a: LossyArgs) -> anyhow::Result<()> {
    let exe = EndpointProgram::given_or_this(a.warmtls.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("warmtls-lossy-")
        .tempdir()?;
    // A device that goes quiet after its Finished holds a backend connection
    // (the endpoint connected it) until the endpoint's idle timeout: enough
    // backend threads that those never stall the other devices.
    let backend = Backend::start(128)?;
    let points = if a.points.is_empty() {
        DropPoint::ALL.to_vec()
    } else {
        a.points.clone()
    };
    let request = warmtls_bench::fleet::connection::http_request(a.request, "localhost");
    let servers: [(&'static str, &[&str]); 2] = [
        (
            "single use (ticket_restores = 0)",
            &["--ticket-restores", "0"],
        ),
        ("restored (ticket_restores = 2)", &[]),
    ];
    // Silent devices are held past the server's handshake timeout and linger.
    let hold = Duration::from_secs(a.handshake_timeout + 2);
    let mut cells = Vec::new();
    let mut seed = a.seed;
    for &p in &a.p {
        for &point in &points {
            for (name, args) in servers {
                let i = cells.len();
                let cache = dir.path().join(format!("cell{i}.cache"));
                let mut extra: Vec<String> = vec![
                    "--workers".into(),
                    "2".into(),
                    "--handshake-timeout".into(),
                    format!("{}s", a.handshake_timeout),
                    "--idle-timeout".into(),
                    format!("{}s", a.handshake_timeout),
                ];
                extra.extend(args.iter().map(|s| s.to_string()));
                let spec = EndpointSpec {
                    exe: exe.clone(),
                    backend: backend.addr(),
                    cache: cache.clone(),
                    capacity: u64::from(a.devices) * 4 + 64,
                    stats: dir.path().join(format!("cell{i}.stats.json")),
                    log: dir.path().join(format!("cell{i}.log")),
                    extra,
                };
                let mut endpoint = Endpoint::start(&spec, "127.0.0.1:0")?;
                let devices = LossyDevices::new(a.devices, &self_signed_cert_path(&cache))
                    .context("OpenSSL device contexts")?;
                let addr = endpoint.addr();
                let mut dropped = vec![false; a.devices as usize];
                // The same drops for both servers of a cell: same seed.
                let mut rng = seed | 1;
                let run = |dropped: &mut [bool],
                           rng: &mut u64,
                           drop_p: f64,
                           tally: Option<&mut [Tally; 2]>| {
                    round(
                        &devices,
                        a.devices,
                        addr,
                        &request,
                        point,
                        drop_p,
                        a.concurrency,
                        dropped,
                        rng,
                        tally,
                        a.verbose,
                    )
                };
                // The prime round's full handshakes measure what one costs.
                let mut prime: [Tally; 2] = Default::default();
                run(&mut dropped, &mut rng, 0.0, Some(&mut prime));
                run(&mut dropped, &mut rng, 0.0, None); // settle
                let mut t: [Tally; 2] = Default::default();
                for _ in 0..a.rounds {
                    let silent = run(&mut dropped, &mut rng, p, Some(&mut t));
                    wait_out(silent, hold);
                }
                run(&mut dropped, &mut rng, 0.0, Some(&mut t));
                endpoint.stop()?;
                let stats: serde_json::Value = std::fs::read_to_string(&spec.stats)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                if a.verbose {
                    eprintln!(
                        "  endpoint: tickets {} timeouts {} tls_errors {}",
                        stats["tickets"], stats["timeouts"], stats["tls_errors"]
                    );
                }
                let [mut tls13, mut tls12] = t;
                for (t, p) in [(&mut tls13, &prime[0]), (&mut tls12, &prime[1])] {
                    t.completed_full += p.completed_full;
                    t.completed_full_bytes += p.completed_full_bytes;
                    t.completed_full_cpu_us += p.completed_full_cpu_us;
                }
                eprintln!(
                    "P={p} {:<20} {name}: TLS 1.3 next full {}/{}, TLS 1.2 next full {}/{} (failed without a drop: {}, {}; next failed {}, {})",
                    point.as_str(),
                    tls13.next_full,
                    tls13.next,
                    tls12.next_full,
                    tls12.next,
                    tls13.failed,
                    tls12.failed,
                    tls13.next_failed,
                    tls12.next_failed,
                );
                cells.push(Cell {
                    server: name,
                    p,
                    point,
                    tls13,
                    tls12,
                    endpoint_tickets: stats["tickets"].clone(),
                });
            }
            seed = seed.wrapping_add(0x9E37_79B9);
        }
    }
    print_table(&a, &cells);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&cells)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(a: &LossyArgs, cells: &[Cell]) {
    println!(
        "{} devices per cell (half TLS 1.3, half TLS 1.2, OpenSSL, saved session kept until replaced), \
         {} rounds with drops, drops by reset or silence alternately, handshake timeout {} s\n",
        a.devices, a.rounds, a.handshake_timeout
    );
    for c in cells.iter().take(2) {
        for (tls, t) in [("1.3", &c.tls13), ("1.2", &c.tls12)] {
            if let Some((b, cpu)) = t.full_premium() {
                println!(
                    "A full TLS {tls} handshake costs the device {b:.0} B and {cpu:.0} µs CPU more than a resumption ({}, P = {:.0}%, {}).",
                    c.server,
                    c.p * 100.0,
                    c.point.as_str()
                );
            }
        }
    }
    println!();
    println!(
        "| P | drop point | TLS | server | drops | next reconnects | of them full | full per 1,000 reconnects | KB per 1,000 reconnects | device CPU ms per 1,000 reconnects | drops' cost per 1,000 reconnects: KB, device CPU ms |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in cells {
        for (tls, t) in [("1.3", &c.tls13), ("1.2", &c.tls12)] {
            let per_k = |v: u64| v as f64 * 1000.0 / (t.reconnects.max(1)) as f64;
            let share = if t.next > 0 {
                format!(
                    "{} ({:.0}%)",
                    t.next_full,
                    100.0 * t.next_full as f64 / t.next as f64
                )
            } else {
                "-".into()
            };
            // Full handshakes after drops (none happen otherwise), each
            // costing what a full handshake costs over a resumption.
            let cost = match t.full_premium() {
                Some((b, cpu)) => format!(
                    "{:.1} KB, {:.1} ms",
                    per_k(t.next_full) * b / 1000.0,
                    per_k(t.next_full) * cpu / 1000.0
                ),
                None => "-".into(),
            };
            println!(
                "| {:.0}% | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} |",
                c.p * 100.0,
                c.point.as_str(),
                tls,
                c.server,
                t.drops,
                t.next,
                share,
                per_k(t.full),
                per_k(t.bytes) / 1000.0,
                per_k(t.cpu_us) / 1000.0,
                cost,
            );
        }
    }
}
