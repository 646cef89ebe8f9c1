//! `warmtls-bench store`: the session store in-process, against rustls' own
//! `ServerSessionMemoryCache` with the same entries and operations, in one run;
//! with `--encrypt`, also with values sealed at rest, side by side; with
//! `--churn N`, N rounds of TLS 1.3 churn in a table sized at the fleet × 1.02
//! (live evictions, displacements, bytes per stored session); with `--migrate`,
//! the time to move a full table into one twice its size.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use warmtls::store::{SessionStore, StoreConfig, ValueKey, SEAL_OVERHEAD};

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Sessions to store (the file is sized for exactly this many).
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Threads doing operations at once.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Bytes per stored value (rustls values are 55–87 bytes).
    #[arg(long, default_value_t = 90)]
    value_bytes: usize,
    /// Directory for the temporary cache file.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also run put/get/take on a second file with values sealed at rest
    /// (AES-256-GCM-SIV, a random key), and report the cost per operation.
    #[arg(long)]
    encrypt: bool,
    /// Skip the rustls in-memory cache comparison.
    #[arg(long)]
    no_rustls: bool,
    /// Also run this many rounds of TLS 1.3 churn (every device takes its
    /// ticket and puts a new one, in random order) on a file sized at
    /// `--entries` × `--churn-sizing`, and report live evictions per round.
    #[arg(long, default_value_t = 0)]
    churn: u32,
    /// Capacity of the churn file, as a multiple of the devices (`--entries`).
    #[arg(long, default_value_t = 1.02)]
    churn_sizing: f64,
    /// Also time the migration of the full table into one of twice the
    /// capacity (`warmtls-cache migrate`, or an endpoint restarted with a
    /// larger `cache.capacity`).
    #[arg(long)]
    migrate: bool,
    /// Write the results as JSON to stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Throughput and latency of one operation over all threads.
#[derive(serde::Serialize, Clone, Copy, Default)]
struct OpResult {
    ops_per_s: f64,
    per_thread_ops_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    hits: u64,
}

trait Table: Sync {
    fn put(&self, k: &[u8], v: &[u8]) -> bool;
    fn get(&self, k: &[u8]) -> bool;
    fn take(&self, k: &[u8]) -> bool;
}

impl Table for SessionStore {
    fn put(&self, k: &[u8], v: &[u8]) -> bool {
        SessionStore::put(self, k, v, Duration::from_secs(7 * 86_400))
    }
    fn get(&self, k: &[u8]) -> bool {
        SessionStore::get(self, k).is_some()
    }
    fn take(&self, k: &[u8]) -> bool {
        SessionStore::take(self, k).is_some()
    }
}

impl Table for Arc<ServerSessionMemoryCache> {
    fn put(&self, k: &[u8], v: &[u8]) -> bool {
        StoresServerSessions::put(&**self, k.to_vec(), v.to_vec())
    }
    fn get(&self, k: &[u8]) -> bool {
        StoresServerSessions::get(&**self, k).is_some()
    }
    fn take(&self, k: &[u8]) -> bool {
        StoresServerSessions::take(&**self, k).is_some()
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Take,
}

/// Keys are 32 pseudo-random bytes, like rustls session IDs and ticket IDs.
fn keys(n: u64) -> Vec<[u8; 32]> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            let mut k = [0u8; 32];
            for c in k.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            k
        })
        .collect()
}

/// Run `op` over every key, split across `threads`. Gets visit each thread's
/// keys in a shuffled order (the same for every table): devices reconnect in an
/// order unrelated to the one their sessions were stored in, and an order that
/// follows the insertion order would let a cache that allocates each entry on
/// the heap walk its allocations almost sequentially. Takes go in insertion
/// order, the best case of rustls' in-memory cache: its `take` scans its queue
/// of keys in insertion order for the one removed, so a random order costs it a
/// scan of half the cache per take ([`random_take_sample`] measures that).
fn run(table: &dyn Table, keys: &[[u8; 32]], value: &[u8], threads: usize, op: Op) -> OpResult {
    let chunk = keys.len().div_ceil(threads);
    // Each thread's keys in the order it will visit them, laid out in that
    // order before the clock starts: reading the next key is then a sequential
    // read (a server has the key in the packet it just received), and neither
    // the shuffle nor a cache miss on the key list is part of any operation.
    let work: Vec<Vec<[u8; 32]>> = keys
        .chunks(chunk)
        .enumerate()
        .map(|(t, mine)| match op {
            Op::Put | Op::Take => mine.to_vec(),
            Op::Get => shuffled(mine.len(), t as u64)
                .into_iter()
                .map(|i| mine[i])
                .collect(),
        })
        .collect();
    let started = Instant::now();
    let per_thread: Vec<(Histogram<u64>, u64, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = work
            .iter()
            .map(|mine| {
                sc.spawn(move || {
                    let mut h =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                    let mut hits = 0u64;
                    let t0 = Instant::now();
                    for (i, k) in mine.iter().enumerate() {
                        let sample = i.is_multiple_of(16);
                        let s0 = sample.then(Instant::now);
                        let hit = match op {
                            Op::Put => table.put(k, value),
                            Op::Get => table.get(k),
                            Op::Take => table.take(k),
                        };
                        if let Some(s0) = s0 {
                            let _ = h.record(s0.elapsed().as_nanos().max(1) as u64);
                        }
                        hits += u64::from(hit);
                    }
                    (h, hits, t0.elapsed())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let wall = started.elapsed();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut hits = 0;
    let mut per_thread_rate = 0.0;
    for (h, n, d) in &per_thread {
        all.add(h).expect("same bounds");
        hits += n;
        per_thread_rate += (keys.len() / per_thread.len()) as f64 / d.as_secs_f64();
    }
    OpResult {
        ops_per_s: keys.len() as f64 / wall.as_secs_f64(),
        per_thread_ops_per_s: per_thread_rate / per_thread.len() as f64,
        p50_ns: all.value_at_quantile(0.50),
        p99_ns: all.value_at_quantile(0.99),
        hits,
    }
}

/// Takes of [`RANDOM_TAKES`] keys in random order, one thread: ops/s. Run after
/// the warm gets; the later passes then miss these keys (never the middle key,
/// which the reopen check gets).
fn random_take_sample(table: &dyn Table, keys: &[[u8; 32]]) -> Option<f64> {
    let sample: Vec<[u8; 32]> = shuffled(keys.len(), 99)
        .into_iter()
        .filter(|&i| i != keys.len() / 2)
        .take(RANDOM_TAKES)
        .map(|i| keys[i])
        .collect();
    if sample.is_empty() {
        return None;
    }
    let t0 = Instant::now();
    for k in &sample {
        table.take(k);
    }
    Some(sample.len() as f64 / t0.elapsed().as_secs_f64())
}

/// Keys in the random-order take sample: enough for a stable rate, few enough
/// that an O(n) take over a million entries finishes in seconds.
const RANDOM_TAKES: usize = 2_000;

/// `0..n` in a pseudo-random order (Fisher–Yates with a fixed xorshift seed, so
/// every table in a run sees the same order).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Evict the file's pages from the page cache, so the reopen is measured cold.
fn drop_from_page_cache(path: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_data();
        let _ = nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

pub fn main(a: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.entries > 0 && a.threads > 0,
        "--entries and --threads must be at least 1"
    );
    let dir = tempfile::tempdir_in(a.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let cfg = StoreConfig {
        path: dir.path().join("bench.cache"),
        capacity: a.entries,
        slot_size: 128,
    };
    let value: Vec<u8> = (0..a.value_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let keys = keys(a.entries);
    eprintln!(
        "store: {} entries, {} threads, {}-byte values, file {}",
        a.entries,
        a.threads,
        a.value_bytes,
        cfg.path.display()
    );

    let t = Instant::now();
    let store = SessionStore::open_or_create(&cfg)?;
    let create_ms = t.elapsed().as_secs_f64() * 1e3;
    let put = run(&store, &keys, &value, a.threads, Op::Put);
    let get = run(&store, &keys, &value, a.threads, Op::Get);
    let counters = store.counters();
    // Here, while the file's pages are mapped and written: after the reopen
    // below, each take would also pay the first write to its page.
    let random_take = random_take_sample(&store, &keys);
    let file_bytes = std::fs::metadata(&cfg.path)?.len();
    store.close()?;

    drop_from_page_cache(&cfg.path);
    let t = Instant::now();
    let store = SessionStore::open_or_create(&cfg)?;
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    let first = store.get(&keys[keys.len() / 2]);
    let reopen_first_get_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        first.as_deref() == Some(&value[..]),
        "the first get after reopen must hit"
    );
    // The first pass after a cold reopen pays a page fault per bucket it touches:
    // that is what a restart costs, spread over the first lookups.
    let cold_get = run(&store, &keys, &value, a.threads, Op::Get);
    let take = run(&store, &keys, &value, a.threads, Op::Take);
    drop(store);

    // The same entries and operations with values sealed at rest, in a file of
    // the same geometry: the difference is the cipher's cost per operation.
    let sealed = if a.encrypt {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no random key: {e}"))?;
        let scfg = StoreConfig {
            path: dir.path().join("bench-sealed.cache"),
            ..cfg.clone()
        };
        let store =
            SessionStore::open_or_create(&scfg)?.seal_values_with(ValueKey::from_bytes(&key));
        anyhow::ensure!(
            a.value_bytes <= store.max_put_len(),
            "--value-bytes {} plus the {SEAL_OVERHEAD}-byte seal does not fit a 128-byte slot; use --value-bytes {} or less (rustls TLS 1.2 values are 71 bytes without SNI)",
            a.value_bytes,
            store.max_put_len()
        );
        let p = run(&store, &keys, &value, a.threads, Op::Put);
        let g = run(&store, &keys, &value, a.threads, Op::Get);
        // Placement differs (each file has its own hash seed), so a few evictions
        // may differ too; every kept entry must open.
        anyhow::ensure!(
            g.hits + store.counters().evictions == a.entries,
            "sealed gets hit {} of {} entries",
            g.hits,
            a.entries
        );
        let t = run(&store, &keys, &value, a.threads, Op::Take);
        let c = store.counters();
        anyhow::ensure!(c.decrypt_failures == 0, "sealed values failed to open");
        Some((p, g, t))
    } else {
        None
    };

    let churn = if a.churn > 0 {
        Some(churn(&a, dir.path(), &value)?)
    } else {
        None
    };
    let migration = if a.migrate {
        Some(migration(&a, dir.path(), &keys, &value)?)
    } else {
        None
    };

    let rustls = (!a.no_rustls).then(|| {
        let cache = ServerSessionMemoryCache::new(a.entries as usize);
        let p = run(&cache, &keys, &value, a.threads, Op::Put);
        let g = run(&cache, &keys, &value, a.threads, Op::Get);
        let rt = random_take_sample(&cache, &keys);
        let t = run(&cache, &keys, &value, a.threads, Op::Take);
        (p, g, t, rt)
    });

    let ratio =
        |ours: &OpResult, theirs: Option<&OpResult>| theirs.map(|t| ours.ops_per_s / t.ops_per_s);
    let report = serde_json::json!({
        "entries": a.entries,
        "threads": a.threads,
        "value_bytes": a.value_bytes,
        "file_bytes": file_bytes,
        "bytes_per_session": file_bytes as f64 / a.entries as f64,
        "kept_after_fill_pct": 100.0 * get.hits as f64 / a.entries as f64,
        "evictions": counters.evictions,
        "create_ms": create_ms,
        "put_ops_per_s": put.ops_per_s,
        "get_ops_per_s": get.ops_per_s,
        "take_ops_per_s": take.ops_per_s,
        "put": put, "get": get, "take": take,
        "reopen_ms": reopen_ms,
        "reopen_first_get_ms": reopen_first_get_ms,
        "cold_get_after_reopen_ops_per_s": cold_get.ops_per_s,
        "rustls_memcache_put_ops_per_s": rustls.as_ref().map(|r| r.0.ops_per_s),
        "rustls_memcache_get_ops_per_s": rustls.as_ref().map(|r| r.1.ops_per_s),
        "rustls_memcache_take_ops_per_s": rustls.as_ref().map(|r| r.2.ops_per_s),
        "get_ratio_vs_rustls_memcache": ratio(&get, rustls.as_ref().map(|r| &r.1)),
        "take_ratio_vs_rustls_memcache": ratio(&take, rustls.as_ref().map(|r| &r.2)),
        "random_order_takes": RANDOM_TAKES.min(keys.len().saturating_sub(1)),
        "random_order_take_ops_per_s": random_take,
        "rustls_memcache_random_order_take_ops_per_s": rustls.as_ref().and_then(|r| r.3),
        "put_ratio_vs_rustls_memcache": ratio(&put, rustls.as_ref().map(|r| &r.0)),
        "churn": churn,
        "migration": migration,
        "sealed": sealed.map(|(p, g, t)| serde_json::json!({
            "put": p, "get": g, "take": t,
            "put_extra_ns_per_op": extra_ns(&put, &p),
            "get_extra_ns_per_op": extra_ns(&get, &g),
            "take_extra_ns_per_op": extra_ns(&take, &t),
            "put_p50_extra_ns": p.p50_ns as i64 - put.p50_ns as i64,
            "get_p50_extra_ns": g.p50_ns as i64 - get.p50_ns as i64,
            "take_p50_extra_ns": t.p50_ns as i64 - take.p50_ns as i64,
        })),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "entries {}  threads {}  file {:.1} MiB  bytes/session {:.1}  kept after fill {:.3}%",
        a.entries,
        a.threads,
        file_bytes as f64 / (1 << 20) as f64,
        file_bytes as f64 / a.entries as f64,
        100.0 * get.hits as f64 / a.entries as f64
    );
    println!(
        "{:<6} {:>14} {:>16} {:>9} {:>9} {:>18} {:>8}",
        "op", "warmtls ops/s", "per thread", "p50 ns", "p99 ns", "rustls memcache", "ratio"
    );
    for (name, ours, theirs) in [
        ("put", &put, rustls.as_ref().map(|r| r.0)),
        ("get", &get, rustls.as_ref().map(|r| r.1)),
        ("take", &take, rustls.as_ref().map(|r| r.2)),
    ] {
        println!(
            "{:<6} {:>14.0} {:>16.0} {:>9} {:>9} {:>18} {:>8}",
            name,
            ours.ops_per_s,
            ours.per_thread_ops_per_s,
            ours.p50_ns,
            ours.p99_ns,
            theirs
                .map(|t| format!("{:.0}", t.ops_per_s))
                .unwrap_or_else(|| "-".into()),
            theirs
                .map(|t| format!("{:.2}x", ours.ops_per_s / t.ops_per_s))
                .unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(ours) = random_take {
        println!(
            "take in random order ({} keys, one thread): warmtls {:.0} ops/s, rustls memcache {}",
            RANDOM_TAKES.min(keys.len().saturating_sub(1)),
            ours,
            rustls
                .as_ref()
                .and_then(|r| r.3)
                .map(|theirs| format!("{theirs:.0} ops/s ({:.0}x)", ours / theirs))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("reopen (page cache dropped) {reopen_ms:.2} ms; first get served {reopen_first_get_ms:.2} ms after open began");
    println!(
        "first pass of gets after the cold reopen: {:.0} ops/s (page faults)",
        cold_get.ops_per_s
    );
    if let Some((p, g, t)) = &sealed {
        println!("values sealed at rest (AES-256-GCM-SIV), same entries, second file:");
        println!(
            "{:<6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "op",
            "plain ops/s",
            "sealed ops/s",
            "plain p50",
            "sealed p50",
            "p50 extra",
            "plain p99",
            "sealed p99",
            "mean extra"
        );
        for (name, plain, sealed) in [("put", &put, p), ("get", &get, g), ("take", &take, t)] {
            println!(
                "{:<6} {:>12.0} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12.0}",
                name,
                plain.ops_per_s,
                sealed.ops_per_s,
                plain.p50_ns,
                sealed.p50_ns,
                sealed.p50_ns as i64 - plain.p50_ns as i64,
                plain.p99_ns,
                sealed.p99_ns,
                extra_ns(plain, sealed)
            );
        }
        println!("(ns per operation; mean extra = difference of 1/throughput, noisier than p50 on a shared machine)");
    }
    Ok(())
}

/// One round of TLS 1.3 churn.
#[derive(serde::Serialize, Clone, Copy)]
struct ChurnRound {
    /// Devices whose ticket was gone when they came back.
    lost: u64,
    resumed_pct: f64,
    /// Live sessions evicted to make room, and residents moved instead.
    evictions: u64,
    displacements: u64,
    takes_puts_per_s: f64,
}

#[derive(serde::Serialize)]
struct ChurnReport {
    devices: u64,
    capacity: u64,
    file_bytes: u64,
    live_at_end: u64,
    bytes_per_stored_session: f64,
    rounds: Vec<ChurnRound>,
}

/// `--churn`: devices × 1.02 capacity, one ticket per device, then rounds in
/// which every device (in a random order) takes its ticket and puts a new one.
fn churn(a: &StoreArgs, dir: &std::path::Path, value: &[u8]) -> anyhow::Result<ChurnReport> {
    let devices = a.entries;
    let capacity = ((devices as f64) * a.churn_sizing).ceil() as u64;
    let cfg = StoreConfig {
        path: dir.join("churn.cache"),
        capacity,
        slot_size: 128,
    };
    let store = SessionStore::open_or_create(&cfg)?;
    let ttl = Duration::from_secs(86_400);
    let key = |n: u64| -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&n.to_le_bytes());
        k[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        k
    };
    let mut ticket: Vec<u64> = (0..devices).collect();
    for d in 0..devices {
        store.put(&key(d), value, ttl);
    }
    let mut next = devices;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut order: Vec<u64> = (0..devices).collect();
    let mut rounds = Vec::new();
    for r in 0..a.churn {
        // A fresh random order each round (Fisher-Yates, xorshift).
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let before = store.counters();
        let t = Instant::now();
        let mut lost = 0;
        for &d in &order {
            let d = d as usize;
            if store.take(&key(ticket[d])).is_none() {
                lost += 1;
            }
            ticket[d] = next;
            store.put(&key(next), value, ttl);
            next += 1;
        }
        let after = store.counters();
        let round = ChurnRound {
            lost,
            resumed_pct: 100.0 * (devices - lost) as f64 / devices as f64,
            evictions: after.evictions - before.evictions,
            displacements: after.displacements - before.displacements,
            takes_puts_per_s: devices as f64 / t.elapsed().as_secs_f64(),
        };
        eprintln!(
            "churn round {}: resumed {:.4}%, {} live evictions, {} displacements",
            r + 1,
            round.resumed_pct,
            round.evictions,
            round.displacements
        );
        rounds.push(round);
    }
    let live = store.scan(|_| {}).live;
    let file_bytes = std::fs::metadata(&cfg.path)?.len();
    Ok(ChurnReport {
        devices,
        capacity,
        file_bytes,
        live_at_end: live,
        bytes_per_stored_session: file_bytes as f64 / live.max(1) as f64,
        rounds,
    })
}

#[derive(serde::Serialize)]
struct MigrationBench {
    sessions: u64,
    from_capacity: u64,
    to_capacity: u64,
    open_ms: f64,
    moved: u64,
    dropped: u64,
    seconds: f64,
    sessions_per_s: f64,
}

/// `--migrate`: a file filled to capacity, reopened with twice the capacity,
/// and every entry moved at once (what `warmtls-cache migrate` does; an
/// endpoint does the same in the background, in batches).
fn migration(
    a: &StoreArgs,
    dir: &std::path::Path,
    keys: &[[u8; 32]],
    value: &[u8],
) -> anyhow::Result<MigrationBench> {
    let cfg = StoreConfig {
        path: dir.join("migrate.cache"),
        capacity: a.entries,
        slot_size: 128,
    };
    let store = SessionStore::open_or_create(&cfg)?;
    for k in keys {
        store.put(k, value, Duration::from_secs(86_400));
    }
    let sessions = store.scan(|_| {}).live;
    store.close()?;
    let bigger = StoreConfig {
        capacity: a.entries * 2,
        ..cfg
    };
    let t = Instant::now();
    let store = SessionStore::open_or_create(&bigger)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let r = store.finish_migration()?;
    anyhow::ensure!(
        store.get(&keys[keys.len() / 3]).as_deref() == Some(value),
        "an entry did not survive the migration"
    );
    eprintln!(
        "migration of {sessions} sessions to twice the capacity: {:.2} s ({:.0} sessions/s), {} dropped",
        r.seconds,
        r.moved as f64 / r.seconds,
        r.dropped
    );
    Ok(MigrationBench {
        sessions,
        from_capacity: a.entries,
        to_capacity: a.entries * 2,
        open_ms,
        moved: r.moved,
        dropped: r.dropped,
        seconds: r.seconds,
        sessions_per_s: r.moved as f64 / r.seconds,
    })
}

/// Wall-clock nanoseconds per operation that `sealed` costs more than `plain`.
fn extra_ns(plain: &OpResult, sealed: &OpResult) -> f64 {
    1e9 / sealed.ops_per_s - 1e9 / plain.ops_per_s
}
