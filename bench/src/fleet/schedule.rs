//! Which device connects when: every device once per phase, in a shuffled order
//! (so the server's cache sees random access, as with a real fleet), at a fixed
//! rate, as Poisson arrivals, or as fast as the workers go.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::devices::DeviceId;

/// How connections are spaced in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// As fast as the workers can connect.
    Unpaced,
    /// A connection every 1/rate seconds.
    Rate(f64),
    /// Each device reconnects on average every `mean` seconds: Poisson arrivals
    /// at devices/mean per second for the fleet.
    MeanInterval(f64),
}

/// A small deterministic generator (SplitMix64): reproducible runs, no crate.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// A permutation of `0..n` as an affine map `i -> (a*i + b) mod n` with `a`
/// coprime to `n`: shuffled enough for a cache, and no table to hold.
#[derive(Debug, Clone, Copy)]
struct Shuffle {
    n: u64,
    a: u64,
    b: u64,
}

impl Shuffle {
    fn new(n: u64, rng: &mut SplitMix64, shuffled: bool) -> Shuffle {
        if !shuffled || n < 3 {
            return Shuffle { n, a: 1, b: 0 };
        }
        let mut a = rng.next_u64() % n;
        while a < 2 || gcd(a, n) != 1 {
            a = (a + 1) % n;
        }
        Shuffle {
            n,
            a,
            b: rng.next_u64() % n,
        }
    }

    fn get(&self, i: u64) -> u64 {
        ((self.a as u128 * i as u128 + self.b as u128) % self.n as u128) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The dispatcher of one phase, shared by its workers.
#[derive(Debug)]
pub struct Schedule {
    state: Mutex<State>,
    pacing: Pacing,
    devices: u64,
    start: Instant,
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct State {
    next: u64,
    shuffle: Shuffle,
    rng: SplitMix64,
    /// Seconds after `start` when the next connection is due.
    due: f64,
}

impl Schedule {
    /// A phase over `devices` devices; `shuffled` visits them in random order;
    /// nothing is dispatched after `limit`.
    pub fn new(
        devices: DeviceId,
        pacing: Pacing,
        shuffled: bool,
        seed: u64,
        limit: Option<Duration>,
    ) -> Schedule {
        let mut rng = SplitMix64::new(seed);
        let shuffle = Shuffle::new(u64::from(devices), &mut rng, shuffled);
        let start = Instant::now();
        Schedule {
            state: Mutex::new(State {
                next: 0,
                shuffle,
                rng,
                due: 0.0,
            }),
            pacing,
            devices: u64::from(devices),
            start,
            deadline: limit.map(|l| start + l),
        }
    }

    /// The next device to connect and when, or `None` when the phase is over.
    pub fn next(&self) -> Option<(DeviceId, Instant)> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.next >= self.devices {
            return None;
        }
        let device = s.shuffle.get(s.next) as DeviceId;
        s.next += 1;
        let at = self.start + Duration::from_secs_f64(s.due);
        s.due += match self.pacing {
            Pacing::Unpaced => 0.0,
            Pacing::Rate(r) => 1.0 / r,
            Pacing::MeanInterval(mean) => {
                let rate = self.devices as f64 / mean;
                -s.rng.unit().ln() / rate
            }
        };
        if self.deadline.is_some_and(|d| at >= d) {
            s.next = self.devices;
            return None;
        }
        Some((device, at))
    }

    /// Devices not dispatched because the phase ran out of time.
    pub fn skipped(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.devices - s.next.min(self.devices)
    }

    /// Whether the phase's time limit has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_comes_exactly_once() {
        for n in [1u32, 2, 3, 10, 997, 1000] {
            let s = Schedule::new(n, Pacing::Unpaced, true, 7, None);
            let mut seen = vec![false; n as usize];
            while let Some((d, _)) = s.next() {
                assert!(!seen[d as usize], "device {d} twice");
                seen[d as usize] = true;
            }
            assert!(seen.iter().all(|&x| x), "all {n} devices");
        }
    }

    #[test]
    fn a_fixed_rate_spaces_connections_evenly() {
        let s = Schedule::new(5, Pacing::Rate(10.0), false, 1, None);
        let times: Vec<_> = std::iter::from_fn(|| s.next()).map(|(_, t)| t).collect();
        let gap = times[4] - times[0];
        assert!((gap.as_secs_f64() - 0.4).abs() < 1e-6);
    }
}
