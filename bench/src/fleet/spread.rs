//! Several endpoints serving one fleet (behind an L4 load balancer or DNS):
//! which one each connection goes to, and whether its device *moved* — its
//! previous connection went to another endpoint — so a report can set devices
//! that move beside devices that stay.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};

use super::devices::DeviceId;

/// How connections spread over the endpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spread {
    /// Device d's connection in phase p goes to endpoint (d + p) mod n: with
    /// two endpoints, every device alternates at every reconnect.
    RoundRobin,
    /// Each connection to an endpoint drawn at random (seeded).
    Random,
    /// Each device keeps to one endpoint (d mod n at first), and in each phase
    /// a `move_share` of them (drawn at random) moves to another one.
    Sticky { move_share: f64 },
}

const NEVER: u8 = u8::MAX;

/// The endpoints and where each device went last.
#[derive(Debug)]
pub struct Spreader {
    spread: Spread,
    addrs: Vec<SocketAddr>,
    last: Vec<AtomicU8>,
    seed: u64,
}

impl Spreader {
    /// At most 255 endpoints.
    pub fn new(spread: Spread, addrs: Vec<SocketAddr>, devices: DeviceId, seed: u64) -> Spreader {
        assert!(!addrs.is_empty() && addrs.len() < usize::from(NEVER));
        Spreader {
            spread,
            // One byte per device, only when there is a choice to remember.
            last: if addrs.len() > 1 {
                (0..devices).map(|_| AtomicU8::new(NEVER)).collect()
            } else {
                Vec::new()
            },
            addrs,
            seed,
        }
    }

    /// Whether there is more than one endpoint.
    pub fn several(&self) -> bool {
        self.addrs.len() > 1
    }

    /// Where `device` connects in phase `phase`, and whether that is a move
    /// (`None`: its first connection).
    pub fn pick(&self, device: DeviceId, phase: u64) -> (SocketAddr, Option<bool>) {
        let n = self.addrs.len() as u64;
        if n == 1 {
            return (self.addrs[0], None);
        }
        let slot = &self.last[device as usize];
        let last = slot.load(Ordering::Relaxed);
        let draw = mix(self.seed ^ (u64::from(device) << 20) ^ phase);
        let to = match self.spread {
            Spread::RoundRobin => ((u64::from(device) + phase) % n) as u8,
            Spread::Random => (draw % n) as u8,
            Spread::Sticky { move_share } => {
                if last == NEVER {
                    (u64::from(device) % n) as u8
                } else if unit(draw) < move_share {
                    let step = 1 + mix(draw) % (n - 1);
                    ((u64::from(last) + step) % n) as u8
                } else {
                    last
                }
            }
        };
        slot.store(to, Ordering::Relaxed);
        let moved = (last != NEVER).then_some(last != to);
        (self.addrs[usize::from(to)], moved)
    }
}

/// splitmix64: a seeded, reproducible draw.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A draw as a fraction in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Vec<SocketAddr> {
        vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]
    }

    #[test]
    fn round_robin_alternates_every_reconnect() {
        let s = Spreader::new(Spread::RoundRobin, two(), 10, 1);
        for d in 0..10 {
            let (a, first) = s.pick(d, 1);
            assert_eq!(first, None);
            let (b, moved) = s.pick(d, 2);
            assert_ne!(a, b);
            assert_eq!(moved, Some(true));
        }
    }

    #[test]
    fn sticky_moves_about_the_share_asked_for() {
        let s = Spreader::new(Spread::Sticky { move_share: 0.1 }, two(), 10_000, 7);
        for d in 0..10_000 {
            s.pick(d, 1);
        }
        let moved = (0..10_000)
            .filter(|&d| s.pick(d, 2).1 == Some(true))
            .count();
        assert!((800..1200).contains(&moved), "{moved}");
        let never = Spreader::new(Spread::Sticky { move_share: 0.0 }, two(), 100, 7);
        for d in 0..100 {
            never.pick(d, 1);
            assert_eq!(never.pick(d, 2).1, Some(false));
        }
    }
}
