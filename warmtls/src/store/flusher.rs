//! The store's background duties: `fdatasync` on an interval (bounding what a power
//! cut can lose; a killed process loses nothing, the mapping is shared) and a slow
//! sweep that reclaims expired slots nobody looks up any more.
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::table::SessionStore;

/// A full sweep of the table takes about this long.
const SWEEP_PERIOD: Duration = Duration::from_secs(600);

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
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        store.sweep(cursor..cursor + per_tick);
        cursor = if cursor + per_tick >= buckets {
            0
        } else {
            cursor + per_tick
        };
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
