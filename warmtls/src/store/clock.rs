//! Where the store gets "now" from. Injectable so tests can move time by months.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current time in unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in whole seconds since the unix epoch; every expiry and
    /// lineage age in the store is compared with it.
    fn now_secs(&self) -> u64;
}

/// The system's wall clock: session lifetimes must span restarts and reboots,
/// so a monotonic clock would not do. Read with `CLOCK_REALTIME_COARSE` (the
/// last timer tick, a few milliseconds old at most): whole seconds are all the
/// store needs, and every lookup reads the clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
            Ok(t) => u64::try_from(t.tv_sec()).unwrap_or(0),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock stopped at `now_secs` (unix seconds).
    pub fn new(now_secs: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now_secs))
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemClock.now_secs())
    }

    /// Move time forward by `secs` seconds, for every store sharing this clock.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    /// Jump to `now_secs` (unix seconds), forwards or backwards.
    pub fn set(&self, now_secs: u64) {
        self.0.store(now_secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
