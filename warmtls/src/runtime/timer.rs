//! A coarse per-core timer wheel for connection deadlines (handshake, backend
//! connect, idle, drain linger), advanced by the worker's periodic ring tick.
//!
//! One slot per tick; a deadline is filed in the first slot at or after it, so
//! timeouts fire up to one tick late, never early. Each connection keeps one live
//! entry (the slot it remembers); any other entry for it is stale and skipped when
//! its slot fires. A deadline that moves later — the idle timeout, refreshed on
//! every event — costs nothing: its entry fires, sees the later deadline and is
//! filed again. Deadlines beyond the wheel's horizon are filed at the horizon and
//! re-filed the same way. Firing touches only due entries, not every connection.
use std::time::{Duration, Instant};

/// Entries each slot has room for from the start.
const SLOT_ROOM: usize = 64;

/// A connection's entry: slab key and generation.
pub type Entry = (u32, u32);

/// Deadlines of one worker's connections, in tick-sized slots.
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    origin: Instant,
    tick_nanos: u128,
    /// The next tick number to fire; everything before it has fired.
    next: u64,
}

impl TimerWheel {
    /// A wheel of `tick`-sized slots covering `horizon` ahead.
    pub fn new(origin: Instant, tick: Duration, horizon: Duration) -> TimerWheel {
        let tick_nanos = tick.as_nanos().max(1);
        let n = (horizon.as_nanos().div_ceil(tick_nanos) as usize).max(2) + 1;
        TimerWheel {
            // Room made now, so filing a deadline does not allocate once warm.
            slots: (0..n).map(|_| Vec::with_capacity(SLOT_ROOM)).collect(),
            origin,
            tick_nanos,
            next: 0,
        }
    }

    /// The tick at which `deadline` fires: rounded up to a tick, not before the
    /// next tick to fire, at most the horizon ahead.
    pub fn tick_for(&self, deadline: Instant) -> u64 {
        let since = deadline.saturating_duration_since(self.origin).as_nanos();
        let t = since.div_ceil(self.tick_nanos) as u64;
        t.clamp(self.next, self.next + self.slots.len() as u64 - 1)
    }

    /// File `entry` to fire at `tick` (from [`TimerWheel::tick_for`]).
    pub fn insert(&mut self, tick: u64, entry: Entry) {
        debug_assert!(tick >= self.next && tick < self.next + self.slots.len() as u64);
        let n = self.slots.len() as u64;
        self.slots[(tick % n) as usize].push(entry);
    }

    /// Move every entry due at `now` into `out`, each with the tick it was filed at.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(u64, Entry)>) {
        let due = (now.saturating_duration_since(self.origin).as_nanos() / self.tick_nanos) as u64;
        let n = self.slots.len() as u64;
        while self.next <= due {
            let tick = self.next;
            out.extend(self.slots[(tick % n) as usize].drain(..).map(|e| (tick, e)));
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_at_or_after_their_deadline_never_before() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        let mut w = TimerWheel::new(t0, tick, Duration::from_secs(1));
        let at = w.tick_for(t0 + Duration::from_millis(250));
        assert_eq!(at, 3);
        w.insert(at, (7, 1));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out, vec![(3, (7, 1))]);
        // Past deadlines fire on the next expire.
        let at = w.tick_for(t0);
        assert_eq!(at, 4);
        w.insert(at, (8, 1));
        out.clear();
        w.expire(t0 + Duration::from_millis(400), &mut out);
        assert_eq!(out, vec![(4, (8, 1))]);
    }

    #[test]
    fn far_deadlines_are_capped_at_the_horizon_and_slots_wrap() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        let mut w = TimerWheel::new(t0, tick, Duration::from_secs(1));
        let at = w.tick_for(t0 + Duration::from_secs(60));
        assert_eq!(at, 10, "one horizon ahead");
        w.insert(at, (1, 1));
        let mut out = Vec::new();
        let mut fired = Vec::new();
        for ms in (0..=3_000).step_by(50) {
            w.expire(t0 + Duration::from_millis(ms), &mut out);
            for &(tick, e) in &out {
                fired.push((ms, tick));
                if tick == 10 {
                    // Not due yet (60 s): re-filed, past the wrap of an 11-slot wheel.
                    w.insert(w.tick_for(t0 + Duration::from_secs(2)), e);
                }
            }
            out.clear();
        }
        assert_eq!(fired, vec![(1_000, 10), (2_000, 20)]);
        w.expire(t0 + Duration::from_secs(10), &mut out);
        assert!(out.is_empty());
    }
}
