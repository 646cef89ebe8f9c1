//! `warmtls-cache`: inspect a warmtls session cache file, live or not.
//!
//! Reads never block the endpoint (optimistic, sequence-checked copies); `purge`
//! takes bucket locks one at a time, like the endpoint does; `migrate` re-shapes
//! a file nobody has open, with the same code the endpoint uses when its cache
//! configuration changes. Never prints secret bytes: entries are identified by a
//! prefix of their keyed fingerprint.
#![forbid(unsafe_code)]
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use warmtls::store::{
    open_elsewhere, previous_file_of, Access, Counters, EncodingStatus, ScanTotals, SessionStore,
    SlotInfo, SlotState, StoreConfig, StoreError, ValueKey,
};

#[derive(Parser)]
#[command(
    name = "warmtls-cache",
    version,
    about = "Inspect a warmtls session cache file (live or not)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capacity, live entries, bytes per session, age/expiry histograms, counters,
    /// and the session encoding of the values (and whether this build reads it).
    Stats {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Live entries: id, age, time to expiry, value size (never secret bytes).
    List {
        file: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check every slot; report torn or corrupt ones; exit 1 if there are any.
    Verify { file: PathBuf },
    /// Give a cache file a new capacity and/or slot size (and seal its values
    /// with --key) without losing a session: what the endpoint does by itself
    /// when its configuration changes, done now on a file nobody has open.
    Migrate {
        file: PathBuf,
        /// Sessions the new table holds.
        #[arg(long)]
        capacity: u64,
        /// Bytes per slot of the new table (a multiple of 64, 128 to 4096).
        #[arg(long)]
        slot_size: Option<u32>,
        /// Key file (`warmtls keygen`) to seal the values with.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Erase expired and corrupt entries (--expired, the default) or everything (--all).
    Purge {
        file: PathBuf,
        #[arg(long, conflicts_with = "all")]
        expired: bool,
        #[arg(long)]
        all: bool,
    },
}

/// Histogram edges in seconds, with their labels.
const EDGES: [(u64, &str); 7] = [
    (60, "<1m"),
    (3_600, "<1h"),
    (86_400, "<1d"),
    (7 * 86_400, "<7d"),
    (30 * 86_400, "<30d"),
    (90 * 86_400, "<90d"),
    (365 * 86_400, "<1y"),
];

#[derive(serde::Serialize, Default)]
struct Histogram(Vec<(String, u64)>);

impl Histogram {
    fn new() -> Histogram {
        let mut v: Vec<(String, u64)> = EDGES.iter().map(|(_, l)| (l.to_string(), 0)).collect();
        v.push((">=1y".into(), 0));
        Histogram(v)
    }
    fn add(&mut self, secs: u64) {
        let i = EDGES
            .iter()
            .position(|(e, _)| secs < *e)
            .unwrap_or(EDGES.len());
        self.0[i].1 += 1;
    }
}

#[derive(serde::Serialize)]
struct Stats {
    file: String,
    file_bytes: u64,
    capacity: u64,
    slots: u64,
    slot_size: u32,
    max_value_bytes: usize,
    live: u64,
    /// Live entries whose values are encrypted at rest (the key file is not read here).
    sealed: u64,
    expired: u64,
    corrupt: u64,
    /// Slots a killed writer left half-written; the next writer clears them.
    torn: u64,
    empty: u64,
    load_factor: f64,
    /// File size / capacity: what a session of capacity costs.
    bytes_per_session: f64,
    /// File size / live entries: what each stored session costs today.
    bytes_per_live_session: Option<f64>,
    created_at: u64,
    writer_open_or_crashed: bool,
    last_clean_close: u64,
    /// Which rustls session encoding the values are in, and whether this build
    /// (and so the endpoint of the same release) can decode it.
    session_encoding: EncodingStatus,
    age_histogram: Histogram,
    expiry_histogram: Histogram,
    counters: Counters,
    /// The previous file of a migration in progress, and its live entries.
    migrating_from: Option<Migrating>,
}

#[derive(serde::Serialize)]
struct Migrating {
    file: String,
    live: u64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warmtls-cache: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(file: &std::path::Path, access: Access) -> anyhow::Result<SessionStore> {
    Ok(SessionStore::open_existing(file, access)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Stats { file, json } => {
            let s = open(&file, Access::ReadOnly)?;
            let stats = stats(&s, &file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
        }
        Cmd::List { file, limit, json } => {
            let s = open(&file, Access::ReadOnly)?;
            let now = s.now();
            let mut rows: Vec<SlotInfo> = Vec::new();
            s.scan(|i| {
                if i.state == SlotState::Live && rows.len() < limit {
                    rows.push(*i);
                }
            });
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": format!("{:016x}", i.id),
                            "bucket": i.bucket,
                            "slot": i.index,
                            "age_s": now.saturating_sub(i.born),
                            "expires_in_s": i.expires.saturating_sub(now),
                            "value_bytes": i.value_len,
                            "sealed": i.sealed,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<16}  {:>10}  {:>12}  {:>11}  {:>6}",
                    "id", "age", "expires in", "value bytes", "sealed"
                );
                for i in &rows {
                    println!(
                        "{:016x}  {:>10}  {:>12}  {:>11}  {:>6}",
                        i.id,
                        human(now.saturating_sub(i.born)),
                        human(i.expires.saturating_sub(now)),
                        i.value_len,
                        if i.sealed { "yes" } else { "no" }
                    );
                }
            }
        }
        Cmd::Verify { file } => {
            let s = open(&file, Access::ReadOnly)?;
            let mut bad: Vec<(u64, usize)> = Vec::new();
            let t = s.scan(|i| {
                if i.state == SlotState::Corrupt {
                    bad.push((i.bucket, i.index));
                }
            });
            for (b, i) in bad.iter().take(20) {
                println!("corrupt slot: bucket {b} slot {i}");
            }
            if bad.len() > 20 {
                println!("... and {} more", bad.len() - 20);
            }
            print_totals(&t);
            if t.torn > 0 {
                println!(
                    "{} slots were left half-written by a writer that was killed; they read as misses and the next writer to open the file clears them",
                    t.torn
                );
            }
            if t.busy_buckets > 0 {
                println!(
                    "{} buckets were busy with writers and not checked; run verify again",
                    t.busy_buckets
                );
            }
            if t.corrupt > 0 {
                println!("FAILED: {} corrupt or torn slots (they read as misses; `warmtls-cache purge` clears them)", t.corrupt);
                return Ok(ExitCode::from(1));
            }
            println!("OK");
        }
        Cmd::Migrate {
            file,
            capacity,
            slot_size,
            key,
        } => migrate(&file, capacity, slot_size, key.as_deref())?,
        Cmd::Purge {
            file,
            expired: _,
            all,
        } => {
            let s = open(&file, Access::ReadWrite)?;
            let n = s
                .purge(all)
                .with_context(|| format!("purging {}", file.display()))?;
            println!(
                "purged {n} entries ({})",
                if all { "all" } else { "expired and corrupt" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(s: &SessionStore, file: &std::path::Path) -> anyhow::Result<Stats> {
    let geo = s.geometry();
    let now = s.now();
    let mut age = Histogram::new();
    let mut expiry = Histogram::new();
    let t = s.scan(|i| {
        if i.state == SlotState::Live {
            age.add(now.saturating_sub(i.born));
            expiry.add(i.expires.saturating_sub(now));
        }
    });
    let file_bytes = std::fs::metadata(file)?.len();
    Ok(Stats {
        file: file.display().to_string(),
        file_bytes,
        capacity: geo.capacity,
        slots: geo.slot_count(),
        slot_size: geo.slot_size,
        max_value_bytes: geo.max_value_len(),
        live: t.live,
        sealed: t.sealed,
        expired: t.expired,
        corrupt: t.corrupt,
        torn: t.torn,
        empty: t.empty,
        load_factor: t.live as f64 / geo.slot_count() as f64,
        bytes_per_session: file_bytes as f64 / geo.capacity as f64,
        bytes_per_live_session: (t.live > 0).then(|| file_bytes as f64 / t.live as f64),
        created_at: s.created_at(),
        writer_open_or_crashed: s.open_flag(),
        last_clean_close: s.last_clean_close(),
        session_encoding: s.encoding_status(),
        age_histogram: age,
        expiry_histogram: expiry,
        counters: s.counters(),
        migrating_from: migrating_from(file)?,
    })
}

/// The previous file of a migration of `file`, if one is in progress.
fn migrating_from(file: &std::path::Path) -> anyhow::Result<Option<Migrating>> {
    let prev = previous_file_of(file);
    if !prev.exists() {
        return Ok(None);
    }
    let live = SessionStore::open_existing(&prev, Access::ReadOnly)?
        .scan(|_| {})
        .live;
    Ok(Some(Migrating {
        file: prev.display().to_string(),
        live,
    }))
}

fn migrate(
    file: &std::path::Path,
    capacity: u64,
    slot_size: Option<u32>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if !file.exists() {
        anyhow::bail!("{} does not exist; the endpoint creates a cache file of the configured geometry by itself", file.display());
    }
    if let Some(pid) = open_elsewhere(file)? {
        return Err(StoreError::InUse {
            path: file.to_path_buf(),
            pid,
        }
        .into());
    }
    let old = SessionStore::open_existing(file, Access::ReadOnly)?;
    let from = old.geometry();
    let live = old.scan(|_| {}).live;
    drop(old);
    let cfg = StoreConfig {
        path: file.to_path_buf(),
        capacity,
        slot_size: slot_size.unwrap_or(from.slot_size),
    };
    let mut store = SessionStore::open_or_create(&cfg)?;
    if let Some(k) = key {
        warmtls::store::check_key_apart(k, file)?;
        store = store.seal_values_with(ValueKey::load(k)?);
    }
    let r = store
        .finish_migration()
        .with_context(|| format!("migrating {}", file.display()))?;
    let to = store.geometry();
    store.close()?;
    println!(
        "{}: capacity {} -> {}, slot size {} -> {}; {} live sessions: {} moved, {} dropped{} in {:.2} s ({:.0} sessions/s)",
        file.display(),
        from.capacity,
        to.capacity,
        from.slot_size,
        to.slot_size,
        live,
        r.moved,
        r.dropped,
        if r.dropped > 0 {
            " (the new table is smaller: the youngest were kept)"
        } else {
            ""
        },
        r.seconds,
        r.moved as f64 / r.seconds.max(1e-9)
    );
    Ok(())
}

fn print_totals(t: &ScanTotals) {
    println!(
        "slots {}: live {}, expired {}, empty {}, corrupt {}, torn {}",
        t.slots, t.live, t.expired, t.empty, t.corrupt, t.torn
    );
}

fn print_stats(s: &Stats) {
    println!(
        "file              {} ({:.1} MiB)",
        s.file,
        s.file_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "capacity          {} sessions ({} slots of {} bytes, values up to {} bytes)",
        s.capacity, s.slots, s.slot_size, s.max_value_bytes
    );
    println!(
        "bytes per session {:.1} per session of capacity (file / capacity){}",
        s.bytes_per_session,
        match s.bytes_per_live_session {
            Some(v) => format!(", {v:.1} per stored session (file / live)"),
            None => String::new(),
        }
    );
    println!(
        "live              {} (load {:.1}% of slots), {} sealed (encrypted at rest)",
        s.live,
        s.load_factor * 100.0,
        s.sealed
    );
    println!(
        "expired           {}   corrupt {}   torn {}   empty {}",
        s.expired, s.corrupt, s.torn, s.empty
    );
    println!(
        "writer            {}",
        if s.writer_open_or_crashed {
            "open (or last writer crashed)"
        } else {
            "closed cleanly"
        }
    );
    print_encoding(&s.session_encoding);
    let c = &s.counters;
    println!(
        "counters          hits {} misses {} puts {} takes {} evictions {} (live sessions) displacements {} expired {} corrupt {} too_large {} lock_steals {} purged {} decrypt_failures {} undecodable {} migrated {} migration_dropped {}",
        c.hits, c.misses, c.puts, c.takes, c.evictions, c.displacements, c.expired, c.corrupt, c.too_large, c.lock_steals, c.purged, c.decrypt_failures, c.undecodable, c.migrated, c.migration_dropped
    );
    if let Some(m) = &s.migrating_from {
        println!(
            "migrating from    {} ({} live sessions still there; they resume from it and move here)",
            m.file, m.live
        );
    }
    for (name, h) in [
        ("age", &s.age_histogram),
        ("expires in", &s.expiry_histogram),
    ] {
        let line: Vec<String> = h.0.iter().map(|(l, n)| format!("{l} {n}")).collect();
        println!("{name:<17} {}", line.join("  "));
    }
}

fn print_encoding(e: &EncodingStatus) {
    println!(
        "session encoding  generation {} ({}): {}",
        e.generation,
        e.generation_name,
        if e.readable {
            "this build reads it".to_string()
        } else {
            format!(
                "THIS BUILD CANNOT READ IT (it reads generation {}, {}): those sessions will be full handshakes; see README \"Upgrading warmtls\"",
                e.this_build, e.this_build_name
            )
        }
    );
    if e.previous != 0 {
        println!(
            "                  before unix time {}: generation {} ({}), {}",
            e.since,
            e.previous,
            e.previous_name,
            if e.previous_readable {
                "this build reads it"
            } else {
                "this build cannot read it"
            }
        );
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3_600),
    }
}
