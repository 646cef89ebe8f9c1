//! Where the store gets "now" from. Injectable so tests can move time by months.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current time in unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
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
    pub fn new(now_secs: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now_secs))
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemClock.now_secs())
    }

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn set(&self, now_secs: u64) {
        self.0.store(now_secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
