//! The store's background duties: `fdatasync` on an interval (bounding what a power
//! cut can lose; a killed process loses nothing, the mapping is shared), a slow
//! sweep that reclaims expired slots nobody looks up any more, and the moving of
//! entries out of the previous file of a migration (migrate.rs).
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::migrate::MigrationState;
use super::table::SessionStore;

/// A full sweep of the table takes about this long.
const SWEEP_PERIOD: Duration = Duration::from_secs(600);
/// Entries a migration moves between pauses (a few milliseconds of work).
const MIGRATION_BATCH: usize = 4096;

/// Runs the flush and sweep until dropped; dropping it flushes one last time.
#[derive(Debug)]
pub struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Flush `store` every `interval` and sweep it in the background.
    pub fn start(store: Arc<SessionStore>, interval: Duration) -> Flusher {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("warmtls-flush".into())
            .spawn(move || run(&store, interval, &rx))
            .expect("spawn the store flusher thread");
        Flusher {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

fn run(store: &SessionStore, interval: Duration, stop: &mpsc::Receiver<()>) {
    let tick = interval
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let buckets = store.geometry().bucket_count;
    let ticks_per_sweep = (SWEEP_PERIOD.as_millis() / tick.as_millis()).max(1) as u64;
    let per_tick = buckets.div_ceil(ticks_per_sweep).max(1);
    let mut cursor = 0u64;
    let mut last_flush = Instant::now();
    let mut next_sweep = Instant::now() + tick;
    loop {
        // A migration moves a batch, then pauses as long as the batch took: it
        // uses at most about half of one core, and finishes 1M entries in seconds.
        let started = Instant::now();
        let wait = match store.migrate_some(MIGRATION_BATCH) {
            MigrationState::Moving | MigrationState::Done => {
                started.elapsed().max(Duration::from_millis(1))
            }
            MigrationState::Idle | MigrationState::WaitingForOtherProcesses => tick,
        };
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + tick;
            store.sweep(cursor..cursor + per_tick);
            cursor = if cursor + per_tick >= buckets {
                0
            } else {
                cursor + per_tick
            };
        }
        if last_flush.elapsed() >= interval {
            if let Err(e) = store.flush() {
                tracing::error!("{e}");
            }
            last_flush = Instant::now();
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!("{e}");
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
