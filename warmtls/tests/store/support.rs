//! Shared pieces of the store tests: temp stores, keys and self-checking values.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warmtls::store::{Clock, ManualClock, SessionStore, StoreConfig};

pub fn config(dir: &Path, capacity: u64) -> StoreConfig {
    StoreConfig {
        path: dir.join("sessions.cache"),
        capacity,
        slot_size: 128,
    }
}

pub fn open(cfg: &StoreConfig) -> SessionStore {
    SessionStore::open_or_create(cfg).expect("open store")
}

pub fn open_with_clock(cfg: &StoreConfig, clock: &Arc<ManualClock>) -> SessionStore {
    let c: Arc<dyn Clock> = clock.clone();
    SessionStore::open_or_create_with_clock(cfg, c).expect("open store")
}

/// A rustls-sized key (32 bytes) for entry `i`.
pub fn key(i: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..16].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    k
}

/// A value of `len` bytes that names its key and version and can be checked
/// for tearing: every byte after the 16-byte prefix derives from both.
pub fn value(i: u64, version: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    let seed = i.wrapping_mul(31).wrapping_add(version.wrapping_mul(7));
    for j in 16..len {
        v.push((seed.wrapping_add(j as u64 * 13) % 251) as u8);
    }
    v
}

/// Checks a value made by [`value`]: Some(version) if it is whole and for key `i`.
pub fn check_value(i: u64, v: &[u8]) -> Option<u64> {
    if v.len() < 16 {
        return None;
    }
    let ki = u64::from_le_bytes(v[..8].try_into().ok()?);
    let version = u64::from_le_bytes(v[8..16].try_into().ok()?);
    (ki == i && value(i, version, v.len()) == v).then_some(version)
}

pub fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read cache file")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn cache_path(dir: &Path) -> PathBuf {
    dir.join("sessions.cache")
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Re-run this test binary as a child process running only test `name`, with
/// `env` set; its stdout is piped.
pub fn spawn_self(name: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("current exe"));
    // The child entry points are #[ignore]d so a normal run does not count them.
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawn child test process")
}
