//! The session table: put/get/take over the mapped file.
//!
//! Owns the open/create sequence (permissions, header and geometry checks, the
//! file lock that tells whether other processes have the file mapped) and the
//! slot logic (lookup, eviction, expiry, checksums, erasure). It must never
//! return bytes whose checksum does not match, never leave a secret in a slot it
//! has given up, and never block on anything but a bucket lock.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use siphasher::sip128::SipHasher13;

use super::clock::{Clock, SystemClock};
use super::error::StoreError;
use super::format::{
    hdr, Counter, Geometry, HeaderProblem, StaticHeader, COUNTER_STRIPES, COUNTER_STRIPE_SIZE,
    FINGERPRINT_LEN, FLAG_OPEN, HEADER_SIZE, MAGIC, SLOTS_PER_BUCKET, SLOT_LIVE, SLOT_META_SIZE,
    SLOT_SEALED, VALUE_OFFSET, VERSION,
};
use super::map::{BucketGuard, Mapping};
use super::seal::{ValueKey, SEAL_OVERHEAD};

/// Default number of sessions a cache file is sized for.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;
/// Default slot size: 32 bytes of metadata and fingerprint + 96 bytes of value,
/// enough for rustls' 55–87-byte session values.
pub const DEFAULT_SLOT_SIZE: u32 = 128;

/// Where the cache file is and what shape it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Sessions the file holds (the table has 8/7 as many slots).
    pub capacity: u64,
    /// Bytes per slot: a multiple of 64 from 128 to 4096; values up to `slot_size - 32`.
    pub slot_size: u32,
}

impl StoreConfig {
    /// The default geometry at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            capacity: DEFAULT_CAPACITY,
            slot_size: DEFAULT_SLOT_SIZE,
        }
    }

    /// Whether a file of this shape can be made: the one check behind both
    /// [`SessionStore::open_or_create`] and the endpoint's configuration check.
    pub fn validate(&self) -> Result<(), StoreError> {
        if !Geometry::slot_size_is_valid(self.slot_size) {
            return Err(StoreError::InvalidConfig(format!(
                "slot_size {} must be a multiple of 64 between 128 and 4096",
                self.slot_size
            )));
        }
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(StoreError::InvalidConfig(format!(
                "capacity {} must be between 1 and {MAX_CAPACITY}",
                self.capacity,
            )));
        }
        Ok(())
    }
}

/// The most sessions a cache file may be sized for.
const MAX_CAPACITY: u64 = 1 << 36;

/// Whether an existing file is opened for writing (the endpoint, `purge`) or only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// The store's counters, summed over the file's stripes (shared by every process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub takes: u64,
    pub evictions: u64,
    pub expired: u64,
    pub corrupt: u64,
    pub too_large: u64,
    pub lock_steals: u64,
    pub purged: u64,
    /// Sealed values that did not open with this key (key rotated, or bytes
    /// altered), and values sealed when this store does not seal or vice versa:
    /// each one a miss, never an error.
    pub decrypt_failures: u64,
    /// Values found (each also counted in `hits`) that this build's rustls
    /// cannot decode: stored in another session encoding (see encoding.rs).
    /// Each one is a full handshake.
    pub undecodable: u64,
}

/// A memory-mapped, file-backed table of TLS sessions shared by every core and
/// every process that opens the same file.
#[derive(Debug)]
pub struct SessionStore {
    path: PathBuf,
    file: Flock<File>,
    map: Mapping,
    header: StaticHeader,
    hasher: SipHasher13,
    clock: Arc<dyn Clock>,
    owner: u32,
    previous_unclean: bool,
    /// Seals values at rest when set (see seal.rs).
    value_key: Option<ValueKey>,
}

/// A value copied out of its slot, still sealed if `sealed`.
struct RawValue {
    bytes: Vec<u8>,
    born: u64,
    sealed: bool,
}

/// Where a key may live: its two candidate buckets (two-choice hashing keeps a
/// full table from overflowing single buckets), tag and fingerprint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash {
    pub(crate) bucket: u64,
    pub(crate) alt: u64,
    pub(crate) tag: u16,
    pub(crate) fingerprint: [u8; FINGERPRINT_LEN],
}

impl KeyHash {
    /// The distinct buckets the entry may be in, primary first.
    fn candidates(&self) -> impl Iterator<Item = u64> {
        let alt = (self.alt != self.bucket).then_some(self.alt);
        std::iter::once(self.bucket).chain(alt)
    }
}

impl SessionStore {
    /// Open the cache file of `cfg`, creating it if it does not exist.
    pub fn open_or_create(cfg: &StoreConfig) -> Result<SessionStore, StoreError> {
        SessionStore::open_or_create_with_clock(cfg, Arc::new(SystemClock))
    }

    /// As [`SessionStore::open_or_create`], with time taken from `clock`.
    pub fn open_or_create_with_clock(
        cfg: &StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<SessionStore, StoreError> {
        cfg.validate()?;
        let want = Geometry::for_capacity(cfg.capacity, cfg.slot_size);
        match std::fs::symlink_metadata(&cfg.path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_file(&cfg.path, &want, &*clock)?
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: cfg.path.clone(),
                    io: source,
                })
            }
        }
        SessionStore::open_inner(&cfg.path, Some(&want), Access::ReadWrite, clock)
    }

    /// Open an existing cache file with whatever geometry it has (the inspector).
    pub fn open_existing(path: &Path, access: Access) -> Result<SessionStore, StoreError> {
        SessionStore::open_inner(path, None, access, Arc::new(SystemClock))
    }

    /// As [`SessionStore::open_existing`], with time taken from `clock`.
    pub fn open_existing_with_clock(
        path: &Path,
        access: Access,
        clock: Arc<dyn Clock>,
    ) -> Result<SessionStore, StoreError> {
        SessionStore::open_inner(path, None, access, clock)
    }

    fn open_inner(
        path: &Path,
        want: Option<&Geometry>,
        access: Access,
        clock: Arc<dyn Clock>,
    ) -> Result<SessionStore, StoreError> {
        let writable = access == Access::ReadWrite;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            io: source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if writable && euid != 0 && meta.uid() != euid {
            return Err(StoreError::Owner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                euid,
            });
        }
        let len = meta.len();
        if len < HEADER_SIZE as u64 {
            let mut found = [0u8; 8];
            let n = file.read_at(&mut found, 0).unwrap_or(0);
            if n == 8 && found != MAGIC {
                return Err(StoreError::BadMagic {
                    path: path.to_path_buf(),
                    found,
                    expected: MAGIC,
                });
            }
            return Err(StoreError::Truncated {
                path: path.to_path_buf(),
                found: len,
                expected: HEADER_SIZE as u64,
            });
        }
        let mut head = [0u8; 68];
        file.read_exact_at(&mut head, 0).map_err(open_err)?;
        let header = StaticHeader::decode(&head).map_err(|p| header_error(path, p))?;
        let geo = header.geometry;
        if len != geo.file_len() {
            return Err(StoreError::Truncated {
                path: path.to_path_buf(),
                found: len,
                expected: geo.file_len(),
            });
        }
        if let Some(want) = want {
            if want.capacity != geo.capacity || want.slot_size != geo.slot_size {
                return Err(StoreError::geometry(path.to_path_buf(), &geo, want));
            }
        }

        // Exclusive flock = nobody else has the file mapped: locks left in it are
        // from a dead process and may be cleared. Everyone then holds it shared.
        let (file, exclusive) = if writable {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => (f, true),
                Err((f, _)) => (
                    Flock::lock(f, FlockArg::LockShared).map_err(|(_, e)| open_err(e.into()))?,
                    false,
                ),
            }
        } else {
            (
                Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| open_err(e.into()))?,
                false,
            )
        };

        let raw = if writable {
            memmap2::MmapOptions::new().map_raw(&*file)
        } else {
            memmap2::MmapOptions::new().map_raw_read_only(&*file)
        }
        .map_err(|source| StoreError::Map {
            path: path.to_path_buf(),
            io: source,
        })?;
        // Lookups touch one random bucket: read-ahead would only waste page cache.
        let _ = raw.advise(memmap2::Advice::Random);
        let map = Mapping::new(raw, writable);

        let mut previous_unclean = false;
        if writable {
            let prev = map
                .atomic_u32(hdr::FLAGS)
                .fetch_or(FLAG_OPEN, Ordering::AcqRel);
            map.atomic_u64(hdr::OPEN_COUNT)
                .fetch_add(1, Ordering::Relaxed);
            if exclusive {
                previous_unclean = prev & FLAG_OPEN != 0;
                if previous_unclean {
                    let cleared = map.reset_locks(&geo);
                    tracing::warn!(path = %path.display(), stale_locks = cleared,
                        "cache file was not closed cleanly; torn slots will read as misses");
                }
                let _ = file.relock(FlockArg::LockShared);
            }
        }
        Ok(SessionStore {
            path: path.to_path_buf(),
            file,
            hasher: SipHasher13::new_with_key(&header.seed),
            header,
            map,
            clock,
            owner: std::process::id(),
            previous_unclean,
            value_key: None,
        })
    }

    /// Seal every value put from now on with `key`, and open values read with it.
    /// Values sealed under another key, and unsealed values, read as misses
    /// (counted in `decrypt_failures`). Sealing costs [`SEAL_OVERHEAD`] bytes of
    /// each slot's value room.
    pub fn seal_values_with(mut self, key: ValueKey) -> SessionStore {
        self.value_key = Some(key);
        self
    }

    /// Whether values are sealed at rest.
    pub fn seals_values(&self) -> bool {
        self.value_key.is_some()
    }

    /// Largest value `put` accepts: the slot's value room, less the seal's tag.
    pub fn max_put_len(&self) -> usize {
        let overhead = if self.seals_values() {
            SEAL_OVERHEAD
        } else {
            0
        };
        self.max_value_len() - overhead
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table's shape.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// Unix seconds when the file was created.
    pub fn created_at(&self) -> u64 {
        self.header.created_at
    }

    /// Whether the last writer before us exited without closing the file.
    pub fn previous_shutdown_unclean(&self) -> bool {
        self.previous_unclean
    }

    /// Whether a writer currently has the file open (or the last one crashed).
    pub fn open_flag(&self) -> bool {
        self.map.atomic_u32(hdr::FLAGS).load(Ordering::Relaxed) & FLAG_OPEN != 0
    }

    /// Unix seconds of the last clean close (0: never).
    pub fn last_clean_close(&self) -> u64 {
        self.map
            .atomic_u64(hdr::LAST_CLEAN_CLOSE)
            .load(Ordering::Relaxed)
    }

    /// Largest value a slot holds.
    pub fn max_value_len(&self) -> usize {
        self.header.geometry.max_value_len()
    }

    /// Current time according to the store's clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    pub(crate) fn key_hash(&self, key: &[u8]) -> KeyHash {
        let h = self.hasher.hash(key);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint[..8].copy_from_slice(&h.h1.to_le_bytes());
        fingerprint[8..].copy_from_slice(&h.h2.to_le_bytes());
        let (bucket, alt) = self.buckets_of_fingerprint(&fingerprint);
        KeyHash {
            bucket,
            alt,
            tag: tag_of(&fingerprint),
            fingerprint,
        }
    }

    /// The two buckets an entry with fingerprint `fp` may live in (equal only in a
    /// one-bucket table).
    pub(crate) fn buckets_of_fingerprint(&self, fp: &[u8; FINGERPRINT_LEN]) -> (u64, u64) {
        let n = self.header.geometry.bucket_count;
        let h1 = u64::from_le_bytes(fp[..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(fp[8..].try_into().expect("8 bytes"));
        let b1 = ((h1 as u128 * n as u128) >> 64) as u64;
        let mut b2 = ((h2 as u128 * n as u128) >> 64) as u64;
        if b2 == b1 {
            b2 = (b1 + 1) % n;
        }
        (b1, b2)
    }

    pub(crate) fn bump(&self, bucket: u64, c: Counter) {
        self.bump_by(bucket, c, 1)
    }

    pub(crate) fn bump_by(&self, bucket: u64, c: Counter, n: u64) {
        if self.map.writable() && n > 0 {
            let stripe = (bucket as usize) % COUNTER_STRIPES;
            let off = hdr::COUNTERS + stripe * COUNTER_STRIPE_SIZE + c as usize * 8;
            self.map.atomic_u64(off).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counters, summed over stripes; readable from any process.
    pub fn counters(&self) -> Counters {
        let get = |c: Counter| -> u64 {
            (0..COUNTER_STRIPES)
                .map(|s| {
                    let off = hdr::COUNTERS + s * COUNTER_STRIPE_SIZE + c as usize * 8;
                    self.map.atomic_u64(off).load(Ordering::Relaxed)
                })
                .sum()
        };
        Counters {
            hits: get(Counter::Hits),
            misses: get(Counter::Misses),
            puts: get(Counter::Puts),
            takes: get(Counter::Takes),
            evictions: get(Counter::Evictions),
            expired: get(Counter::Expired),
            corrupt: get(Counter::Corrupt),
            too_large: get(Counter::TooLarge),
            lock_steals: get(Counter::LockSteals),
            purged: get(Counter::Purged),
            decrypt_failures: get(Counter::DecryptFailures),
            undecodable: get(Counter::Undecodable),
        }
    }

    pub(crate) fn lock(&self, bucket: u64) -> Option<BucketGuard<'_>> {
        let guard = self
            .map
            .lock_bucket(&self.header.geometry, bucket, self.owner)?;
        if guard.was_stolen() {
            self.bump(bucket, Counter::LockSteals);
            tracing::warn!(bucket, "took over a bucket lock left by a dead process");
        }
        Some(guard)
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Store `value` under `key` for `ttl`. Returns false if the value does not fit a
    /// slot (counted) or the file is open read-only.
    ///
    /// A new key is crash-safe: a kill mid-put leaves a slot that reads as a miss.
    /// Overwriting an existing key happens in place, so a kill during that put
    /// loses the key (a miss, never a torn value); rustls never overwrites keys.
    pub fn put(&self, key: &[u8], value: &[u8], ttl: Duration) -> bool {
        let now = self.clock.now_secs();
        self.put_at(key, value, now, ttl, now)
    }

    /// As [`SessionStore::put`], recording `born` (unix seconds) as the start of
    /// this session's lineage (the full handshake it descends from).
    pub fn put_with_born(&self, key: &[u8], value: &[u8], ttl: Duration, born: u64) -> bool {
        self.put_at(key, value, self.clock.now_secs(), ttl, born)
    }

    fn put_at(&self, key: &[u8], value: &[u8], now: u64, ttl: Duration, born: u64) -> bool {
        let kh = self.key_hash(key);
        if value.len() > self.max_put_len() {
            self.bump(kh.bucket, Counter::TooLarge);
            return false;
        }
        let born = clamp_secs(born);
        // Sealed before any lock is taken: the cipher's cost is not paid under it.
        // (The buffer is only initialised when sealing: unsealed puts pay nothing.)
        let mut sealed: [u8; super::format::MAX_SLOT_SIZE as usize];
        let (value, flags) = match &self.value_key {
            Some(k) => {
                sealed = [0u8; super::format::MAX_SLOT_SIZE as usize];
                let out = &mut sealed[..value.len() + SEAL_OVERHEAD];
                k.seal(&kh.fingerprint, born, value, out);
                (&*out, SLOT_SEALED)
            }
            None => (value, 0),
        };
        // Both candidate buckets are locked, lower index first (every process
        // follows that order, so two puts cannot deadlock), so a key is never
        // stored twice.
        let (lo, hi) = (kh.bucket.min(kh.alt), kh.bucket.max(kh.alt));
        let Some(g_lo) = self.lock(lo) else {
            return false;
        };
        let g_hi = if hi != lo { self.lock(hi) } else { None };
        let mut guards = [Some(g_lo), g_hi];
        let expires = clamp_secs(now.saturating_add(ttl.as_secs()));
        let (gi, idx) = match self.find_in(&mut guards, &kh, now) {
            Some(at) => at,
            None => self.victim(&mut guards, now),
        };
        let g = guards[gi].as_mut().expect("chosen guard exists");
        write_slot(g, idx, &kh, value, expires, born, flags);
        drop(guards);
        self.bump(kh.bucket, Counter::Puts);
        true
    }

    /// A copy of the value stored under `key`, if present, unexpired and intact.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, false).map(|(v, _)| v)
    }

    /// As [`SessionStore::get`], with the lineage start (`born`, unix seconds).
    pub fn get_with_born(&self, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        self.lookup(key, false)
    }

    /// As [`SessionStore::get_with_born`], and extend the entry's expiry to at least
    /// `ttl` from now (a resumed TLS 1.2 session stays resumable while in use). An
    /// entry whose lineage began more than `max_age` ago is erased and missed.
    pub fn get_refreshed(
        &self,
        key: &[u8],
        ttl: Duration,
        max_age: Duration,
    ) -> Option<(Vec<u8>, u64)> {
        let kh = self.key_hash(key);
        let now = self.clock.now_secs();
        let found = self
            .with_locked_entry(&kh, now, |g, i| {
                let born = u64::from(born_of(g.slot(i)));
                if now.saturating_sub(born) > max_age.as_secs() {
                    erase(g, i);
                    self.bump(g.bucket(), Counter::Expired);
                    return None;
                }
                // Opened under the lock, so a value that does not open (the key
                // was rotated) is erased at once rather than kept alive.
                let Some(v) = self.open_value(&kh, raw_value(g.slot(i))) else {
                    erase(g, i);
                    return None;
                };
                let s = g.slot(i);
                let expires = clamp_secs(now.saturating_add(ttl.as_secs())).max(expires_of(s));
                rewrite_expiry(g, i, expires);
                Some(v)
            })
            .flatten();
        self.count_lookup(kh.bucket, found.is_some());
        found
    }

    /// Whether a live entry for `key` is present, without copying or opening
    /// it and without counting a lookup: a probe before rustls' own `get` or
    /// `take` (the shared session tier asks it to skip a round trip).
    pub fn contains(&self, key: &[u8]) -> bool {
        let kh = self.key_hash(key);
        let now = self.clock.now_secs();
        match self.get_optimistic(&kh, now) {
            Some(found) => found.is_some(),
            None => self.with_locked_entry(&kh, now, |_, _| ()).is_some(),
        }
    }

    /// Remove the value stored under `key` and return it. Exactly one caller, in
    /// any thread of any process, gets a given stored value.
    pub fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, true).map(|(v, _)| v)
    }

    /// As [`SessionStore::take`], with the lineage start (`born`, unix seconds).
    pub fn take_with_born(&self, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        self.lookup(key, true)
    }

    /// A lock-free read of `kh`: copies candidate slots and checks the bucket's
    /// sequence number did not move. `None` when the locked path must decide
    /// (a writer kept the bucket busy, or the entry is expired or corrupt and
    /// must be erased).
    fn get_optimistic(&self, kh: &KeyHash, now: u64) -> Option<Option<RawValue>> {
        let geo = &self.header.geometry;
        let slot_size = geo.slot_size as usize;
        let mut buf = [0u8; super::format::MAX_SLOT_SIZE as usize];
        let buf = &mut buf[..slot_size];
        // Start the second bucket's cache miss now, in parallel with the first's.
        let _ = self.map.read_begin(geo, kh.alt);
        for b in kh.candidates() {
            let mut settled = false;
            for _ in 0..64 {
                let Some(seq) = self.map.read_begin(geo, b) else {
                    std::hint::spin_loop();
                    continue;
                };
                let tags = geo.bucket_header_offset(b) + 8;
                let mut hit = None;
                for i in 0..SLOTS_PER_BUCKET {
                    if self.map.atomic_u16(tags + 2 * i).load(Ordering::Relaxed) != kh.tag {
                        continue;
                    }
                    let off = geo.slot_offset(b, i);
                    self.map
                        .read_volatile_words(off + SLOT_META_SIZE, &mut buf[..FINGERPRINT_LEN]);
                    if buf[..FINGERPRINT_LEN] == kh.fingerprint {
                        self.map.read_volatile_words(off, buf);
                        hit = Some(i);
                        break;
                    }
                }
                if !self.map.read_validate(geo, b, seq) {
                    continue;
                }
                settled = true;
                if let Some(i) = hit {
                    if !slot_intact(buf, b, i, geo.max_value_len())
                        || u64::from(expires_of(buf)) <= now
                    {
                        return None;
                    }
                    return Some(Some(raw_value(buf)));
                }
                break;
            }
            if !settled {
                return None;
            }
        }
        Some(None)
    }

    fn lookup(&self, key: &[u8], remove: bool) -> Option<(Vec<u8>, u64)> {
        let kh = self.key_hash(key);
        let now = self.clock.now_secs();
        let raw = match (!remove).then(|| self.get_optimistic(&kh, now)).flatten() {
            Some(found) => found,
            None => self.with_locked_entry(&kh, now, |g, i| {
                let raw = raw_value(g.slot(i));
                if remove {
                    erase(g, i);
                }
                raw
            }),
        };
        // Opened outside the bucket lock: the cipher's cost is not paid under it.
        let found = raw.and_then(|r| self.open_value(&kh, r));
        self.count_lookup(kh.bucket, found.is_some());
        if found.is_some() && remove {
            self.bump(kh.bucket, Counter::Takes);
        }
        found
    }

    /// Find `kh` under its bucket's lock and apply `f` to its slot. Entries never
    /// move between buckets, so locking one candidate bucket at a time is enough:
    /// a stored entry is in exactly one of them. `None` if absent (or read-only).
    fn with_locked_entry<R>(
        &self,
        kh: &KeyHash,
        now: u64,
        f: impl FnOnce(&mut BucketGuard<'_>, usize) -> R,
    ) -> Option<R> {
        for b in kh.candidates() {
            let mut g = self.lock(b)?;
            if let Some(i) = self.find(&mut g, kh, now) {
                return Some(f(&mut g, i));
            }
        }
        None
    }

    /// The plaintext of a value copied out of `kh`'s slot, if this store can
    /// vouch for it: unsealed when the store does not seal, sealed under this
    /// store's key when it does. Anything else is counted and missed.
    fn open_value(&self, kh: &KeyHash, raw: RawValue) -> Option<(Vec<u8>, u64)> {
        let RawValue {
            mut bytes,
            born,
            sealed,
        } = raw;
        let opened = match (&self.value_key, sealed) {
            (None, false) => Some(bytes.len()),
            (Some(k), true) => k
                .open(&kh.fingerprint, born as u32, &mut bytes)
                .map(|p| p.len()),
            _ => None,
        };
        match opened {
            Some(n) => {
                bytes.truncate(n);
                Some((bytes, born))
            }
            None => {
                self.bump(kh.bucket, Counter::DecryptFailures);
                None
            }
        }
    }

    fn count_lookup(&self, bucket: u64, hit: bool) {
        self.bump(bucket, if hit { Counter::Hits } else { Counter::Misses });
    }

    fn find_in(
        &self,
        guards: &mut [Option<BucketGuard<'_>>; 2],
        kh: &KeyHash,
        now: u64,
    ) -> Option<(usize, usize)> {
        for (gi, g) in guards.iter_mut().enumerate() {
            if let Some(g) = g {
                if let Some(i) = self.find(g, kh, now) {
                    return Some((gi, i));
                }
            }
        }
        None
    }

    /// The slot holding `kh` in this bucket, if live and intact. Expired and
    /// corrupt matches met on the way are erased and counted.
    fn find(&self, g: &mut BucketGuard<'_>, kh: &KeyHash, now: u64) -> Option<usize> {
        for i in 0..SLOTS_PER_BUCKET {
            if g.tag(i) != kh.tag {
                continue;
            }
            let s = g.slot(i);
            if s[SLOT_META_SIZE..VALUE_OFFSET] != kh.fingerprint {
                continue;
            }
            if !slot_intact(s, g.bucket(), i, self.max_value_len()) {
                erase(g, i);
                self.bump(kh.bucket, Counter::Corrupt);
                continue;
            }
            if u64::from(expires_of(s)) <= now {
                erase(g, i);
                self.bump(kh.bucket, Counter::Expired);
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Where a new entry goes: an empty slot in the emptier bucket, else an
    /// expired slot, else the slot closest to expiry, over both buckets.
    fn victim(&self, guards: &mut [Option<BucketGuard<'_>>; 2], now: u64) -> (usize, usize) {
        let empties =
            |g: &BucketGuard<'_>| (0..SLOTS_PER_BUCKET).filter(|&i| g.tag(i) == 0).count();
        let mut best: Option<(usize, usize)> = None;
        for (gi, g) in guards.iter().enumerate() {
            if let Some(g) = g {
                let e = empties(g);
                if e > 0 && best.is_none_or(|(_, be)| e > be) {
                    best = Some((gi, e));
                }
            }
        }
        if let Some((gi, _)) = best {
            let g = guards[gi].as_ref().expect("guard");
            let i = (0..SLOTS_PER_BUCKET)
                .find(|&i| g.tag(i) == 0)
                .expect("an empty slot");
            return (gi, i);
        }
        let mut oldest: Option<(usize, usize, u64)> = None;
        for (gi, g) in guards.iter().enumerate() {
            if let Some(g) = g {
                for i in 0..SLOTS_PER_BUCKET {
                    let e = u64::from(expires_of(g.slot(i)));
                    if oldest.is_none_or(|(_, _, oe)| e < oe) {
                        oldest = Some((gi, i, e));
                    }
                }
            }
        }
        let (gi, i, expires) = oldest.expect("a bucket has slots");
        let bucket = guards[gi].as_ref().expect("guard").bucket();
        self.bump(
            bucket,
            if expires <= now {
                Counter::Expired
            } else {
                Counter::Evictions
            },
        );
        (gi, i)
    }

    /// Erase expired slots in buckets `range` (the background sweep). Returns how many.
    pub fn sweep(&self, range: std::ops::Range<u64>) -> u64 {
        let now = self.clock.now_secs();
        let mut n = 0;
        for b in range.start..range.end.min(self.header.geometry.bucket_count) {
            let Some(mut g) = self.lock(b) else { return 0 };
            let mut here = 0;
            for i in 0..SLOTS_PER_BUCKET {
                if g.tag(i) != 0 && u64::from(expires_of(g.slot(i))) <= now {
                    erase(&mut g, i);
                    here += 1;
                }
            }
            drop(g);
            self.bump_by(b, Counter::Expired, here);
            n += here;
        }
        n
    }

    /// Write dirty pages of the mapping to disk (msync, like fdatasync for the file).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.map.flush().map_err(|source| StoreError::Flush {
            path: self.path.clone(),
            io: source,
        })
    }

    /// Flush and, if no other process has the file open, mark it closed cleanly.
    pub fn close(self) -> Result<(), StoreError> {
        self.flush()?;
        self.mark_clean();
        Ok(())
    }

    fn mark_clean(&self) {
        if !self.map.writable() {
            return;
        }
        if self.file.relock(FlockArg::LockExclusiveNonblock).is_ok() {
            self.map
                .atomic_u64(hdr::LAST_CLEAN_CLOSE)
                .store(self.clock.now_secs(), Ordering::Relaxed);
            self.map
                .atomic_u32(hdr::FLAGS)
                .fetch_and(!FLAG_OPEN, Ordering::AcqRel);
            let _ = self.map.flush();
            let _ = self.file.relock(FlockArg::LockShared);
        }
    }
}

impl Drop for SessionStore {
    fn drop(&mut self) {
        if self.map.writable() {
            if let Err(e) = self.flush() {
                tracing::error!("{e}");
            }
            self.mark_clean();
        }
    }
}

fn header_error(path: &Path, p: HeaderProblem) -> StoreError {
    let path = path.to_path_buf();
    match p {
        HeaderProblem::Magic(found) => StoreError::BadMagic { path, found, expected: MAGIC },
        HeaderProblem::Version(found) => StoreError::Version { path, found, expected: VERSION },
        HeaderProblem::Short => StoreError::Truncated { path, found: 0, expected: HEADER_SIZE as u64 },
        HeaderProblem::Checksum => StoreError::BadHeader { path, what: "header checksum mismatch".into() },
        HeaderProblem::Layout { header_size, slots_per_bucket, slot_size, bucket_count } => StoreError::BadHeader {
            path,
            what: format!(
                "header_size {header_size}, slots_per_bucket {slots_per_bucket}, slot_size {slot_size}, bucket_count {bucket_count}"
            ),
        },
    }
}

/// Create the file at `path` with geometry `geo`: written to a temporary name,
/// space reserved (so a full disk fails now, not with SIGBUS later), synced, then
/// linked into place only if nothing is there yet. Nothing half-written is left.
fn create_file(path: &Path, geo: &Geometry, clock: &dyn Clock) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let create_err = |io: std::io::Error| {
        let d = dir.display();
        let hint = match io.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => format!(
                "directory {d} is not writable by this user; fix its owner or choose another cache path"
            ),
            Some(libc::EROFS) => format!(
                "{d} is on a read-only filesystem; choose a cache path on a writable one"
            ),
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!(
                "not enough free space in {d} for the {} MiB file ({} sessions × {}-byte slots); free disk space or lower the cache capacity",
                geo.file_len().div_ceil(1 << 20),
                geo.capacity,
                geo.slot_size
            ),
            Some(libc::ENOENT) => format!(
                "directory {d} does not exist; create it (`mkdir -p {d}`) or choose another cache path"
            ),
            _ => "check the path and the filesystem".to_string(),
        };
        StoreError::Create {
            path: path.to_path_buf(),
            io,
            hint,
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cache".into());
    let tmp = dir.join(format!(".{name}.creating-{}", std::process::id()));
    let result = (|| -> Result<(), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(create_err)?;
        let len = i64::try_from(geo.file_len())
            .map_err(|_| create_err(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        match nix::fcntl::posix_fallocate(&file, 0, len) {
            Ok(()) => {}
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => {
                file.set_len(geo.file_len()).map_err(create_err)?;
            }
            Err(e) => return Err(create_err(e.into())),
        }
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).map_err(|e| create_err(std::io::Error::other(e.to_string())))?;
        let header = StaticHeader {
            version: VERSION,
            geometry: *geo,
            created_at: clock.now_secs(),
            seed,
        };
        file.write_all_at(&header.encode(), 0).map_err(create_err)?;
        file.sync_all().map_err(create_err)?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            // Someone else created it first: theirs wins, we open it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(create_err(e)),
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    if result.is_ok() {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    result
}

fn clamp_secs(t: u64) -> u32 {
    t.min(u64::from(u32::MAX)) as u32
}

pub(crate) fn tag_of(fp: &[u8; FINGERPRINT_LEN]) -> u16 {
    match u16::from_le_bytes([fp[14], fp[15]]) {
        0 => 1,
        t => t,
    }
}

fn u32_at(s: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
}

pub(crate) fn expires_of(s: &[u8]) -> u32 {
    u32_at(s, 0)
}

pub(crate) fn born_of(s: &[u8]) -> u32 {
    u32_at(s, 4)
}

pub(crate) fn val_len(s: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([s[12], s[13]]))
}

/// Whether a slot's value is sealed (encrypted at rest).
pub(crate) fn is_sealed(s: &[u8]) -> bool {
    s[15] & SLOT_SEALED != 0
}

/// A copy of an intact slot's value bytes (sealed or not) and lineage start.
fn raw_value(s: &[u8]) -> RawValue {
    RawValue {
        bytes: s[VALUE_OFFSET..VALUE_OFFSET + val_len(s)].to_vec(),
        born: u64::from(born_of(s)),
        sealed: is_sealed(s),
    }
}

/// The checksum of slot `idx` of `bucket`: binds the bytes to their place, so a
/// slot copied or shifted elsewhere by a torn write does not verify.
pub(crate) fn slot_crc(s: &[u8], bucket: u64, idx: usize, max_value_len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bucket.to_le_bytes());
    h.update(&[idx as u8]);
    // The expiry (bytes 0..4) is not covered: it is the one field rewritten in
    // place (a resumed TLS 1.2 session's lifetime is extended), and one aligned
    // 4-byte store cannot be torn by a crash, whereas expiry + checksum could.
    h.update(&s[4..8]);
    h.update(&s[12..VALUE_OFFSET]);
    h.update(&s[VALUE_OFFSET..VALUE_OFFSET + val_len(s).min(max_value_len)]);
    h.finalize()
}

/// Whether a slot's bytes are a complete, uncorrupted live entry.
pub(crate) fn slot_intact(s: &[u8], bucket: u64, idx: usize, max_value_len: usize) -> bool {
    s[14] == SLOT_LIVE
        && val_len(s) <= max_value_len
        && slot_crc(s, bucket, idx, max_value_len) == u32_at(s, 8)
}

fn write_slot(
    g: &mut BucketGuard<'_>,
    idx: usize,
    kh: &KeyHash,
    value: &[u8],
    expires: u32,
    born: u32,
    flags: u8,
) {
    // Hide the slot from lookups while it is rewritten; a crash mid-way leaves a
    // slot whose checksum fails, never a half-old, half-new session.
    g.set_tag(idx, 0);
    let bucket = g.bucket();
    let max = g.slot(idx).len() - VALUE_OFFSET;
    let s = g.slot_mut(idx);
    s[0..4].copy_from_slice(&expires.to_le_bytes());
    s[4..8].copy_from_slice(&born.to_le_bytes());
    s[12..14].copy_from_slice(&(value.len() as u16).to_le_bytes());
    s[14] = SLOT_LIVE;
    s[15] = flags;
    s[SLOT_META_SIZE..VALUE_OFFSET].copy_from_slice(&kh.fingerprint);
    s[VALUE_OFFSET..VALUE_OFFSET + value.len()].copy_from_slice(value);
    // Zero what is left of a previous, longer value: no stale secret bytes.
    s[VALUE_OFFSET + value.len()..].fill(0);
    let crc = slot_crc(s, bucket, idx, max);
    s[8..12].copy_from_slice(&crc.to_le_bytes());
    g.set_tag(idx, kh.tag);
}

/// Change a live slot's expiry in place.
fn rewrite_expiry(g: &mut BucketGuard<'_>, idx: usize, expires: u32) {
    // Outside the checksum (see `slot_crc`), so a crash cannot make this slot torn.
    g.slot_mut(idx)[0..4].copy_from_slice(&expires.to_le_bytes());
}

/// Zero a slot (secrets included) and mark it empty.
pub(crate) fn erase(g: &mut BucketGuard<'_>, idx: usize) {
    g.slot_mut(idx).fill(0);
    g.set_tag(idx, 0);
}
