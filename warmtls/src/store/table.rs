//! The session table: put/get/take over one mapped file.
//!
//! Owns the open/create sequence of one file (permissions, header and geometry
//! checks, the file lock that tells whether other processes have the file
//! mapped, recovery after a crash) and the slot logic (lookup, placement,
//! cuckoo displacement, eviction, expiry, checksums, erasure). It must never
//! return bytes whose checksum does not match, never leave a secret in a slot it
//! has given up, never store a key twice, and never block on anything but a
//! bucket lock.
//!
//! Reads are lock-free: one pass copies both candidate buckets' tags (their two
//! header lines are fetched at once) and the matching slot, then checks that
//! neither bucket's sequence number moved. Reading both buckets under one check
//! is what lets an entry move between its two buckets (displacement, which holds
//! both locks) without a reader missing it. Writers lock the one bucket a
//! lock-free probe found the key in, or both candidate buckets (lower index
//! first, in every process) when they place a key.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use siphasher::sip128::SipHasher13;

use super::clock::{Clock, SystemClock};
use super::error::StoreError;
use super::format::{
    hdr, Counter, Geometry, HeaderProblem, StaticHeader, COUNTER_STRIPES, COUNTER_STRIPE_SIZE,
    FINGERPRINT_LEN, FLAG_OPEN, FLAG_SEALED, HEADER_SIZE, MAGIC, SLOTS_PER_BUCKET, SLOT_PENDING,
    SLOT_SEALED, VERSION,
};
use super::map::{BucketGuard, Mapping};
use super::migrate::Predecessor;
use super::seal::{ValueKey, SEAL_OVERHEAD};
use super::slot::{
    born_of, compose, expires_of, fingerprint_of, raw_value, reseal_place, slot_intact,
    slots_tagged, tag_of, Entry, RawValue, SlotBuf,
};
use super::NotPrivate;

/// Default number of sessions a cache file is sized for.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;
/// Default slot size: 32 bytes of metadata and fingerprint + 96 bytes of value,
/// enough for rustls' 55–87-byte session values.
pub const DEFAULT_SLOT_SIZE: u32 = 128;

/// Where the cache file is and what shape it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The cache file. Its directory must be writable by the endpoint: new files
    /// are made there, and a migration's `<path>.prev` is kept beside it.
    pub path: PathBuf,
    /// Sessions the file holds (the table has 33/32 as many slots).
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
    /// Mapped writable: lookups erase what is expired or corrupt, counters count,
    /// and the file must be owned by this user (unless root).
    ReadWrite,
    /// Mapped read-only: lookups and scans only; nothing is counted or erased,
    /// and any owner may open the file (its mode is still checked).
    ReadOnly,
}

/// The store's counters, summed over the file's stripes (shared by every process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Lookups (get, take, refreshing get) that returned a value; includes
    /// `takes` and `undecodable`.
    pub hits: u64,
    /// Lookups that found nothing usable: absent, expired, too old, corrupt, or
    /// not openable with this store's key.
    pub misses: u64,
    /// Values stored (new keys and overwrites); refused ones are in `too_large`.
    pub puts: u64,
    /// Values removed and returned by a take (single-use TLS 1.3 resumption);
    /// also counted in `hits`.
    pub takes: u64,
    /// Live sessions evicted to make room (the table was full around them).
    pub evictions: u64,
    /// Entries erased (or their slots reused) because they expired or their
    /// lineage outlived the maximum session age: by lookups, puts, the
    /// background sweep and migrations.
    pub expired: u64,
    /// Slots erased because they did not verify (checksum, tag, bucket) or a
    /// killed writer left them half-written. Expected after a kill; growth
    /// without crashes points at damage to the file or its disk.
    pub corrupt: u64,
    /// Values that did not fit a slot: refused by a put, or dropped by a
    /// migration or by sealing in place. If it grows, raise the slot size.
    pub too_large: u64,
    /// Bucket locks taken over from a process that died holding them (each
    /// followed by a scrub of that bucket, counted in `corrupt`).
    pub lock_steals: u64,
    /// Entries erased by a purge (`warmtls-cache purge`).
    pub purged: u64,
    /// Sealed values that did not open with this key (key rotated, or bytes
    /// altered), and values sealed when this store does not seal or vice versa:
    /// each one a miss, never an error.
    pub decrypt_failures: u64,
    /// Values found (each also counted in `hits`) that this build's rustls
    /// cannot decode: stored in another session encoding (see encoding.rs).
    /// Each one is a full handshake.
    pub undecodable: u64,
    /// Resident entries moved to their other candidate bucket to make room
    /// instead of evicting a live session.
    pub displacements: u64,
    /// Entries moved into this file from the previous file of a migration.
    pub migrated: u64,
    /// Entries of the previous file of a migration that did not fit (the new
    /// table is smaller than the live sessions; the youngest were kept).
    pub migration_dropped: u64,
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
    /// Whether this open created the file.
    created: bool,
    /// Seals values at rest when set (see seal.rs).
    value_key: Option<ValueKey>,
    /// This store seals, but values put before sealing was turned on may still
    /// be in the file: they are served, and sealed in place by the background
    /// pass, which then marks the file [`FLAG_SEALED`] and clears this.
    pub(crate) unsealed_ok: AtomicBool,
    /// The file's [`FLAG_SEALED`] as this process last saw or set it.
    marked_sealed: AtomicBool,
    /// Next bucket of the in-place seal pass (migrate.rs).
    pub(crate) seal_cursor: AtomicU64,
    /// The file this one replaces, while its entries move here (migrate.rs).
    pub(crate) predecessor: Option<Box<Predecessor>>,
}

/// Where a key may live: its two candidate buckets (two-choice hashing with
/// cuckoo displacement keeps a nearly full table from evicting), tag and
/// fingerprint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash {
    pub(crate) bucket: u64,
    pub(crate) alt: u64,
    pub(crate) tag: u16,
    pub(crate) fingerprint: [u8; FINGERPRINT_LEN],
    fp_words: [u64; 2],
}

/// What one lock-free pass over a key's two candidate buckets saw.
pub(crate) enum Probe {
    Absent,
    Found {
        bucket: u64,
        slot: usize,
    },
    /// Writers kept a bucket busy: decide under the lock.
    Busy,
}

/// How a new entry may make room for itself in two full buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A put: evict the live entry closest to expiry if nothing can move.
    Put,
    /// An entry moving in from the previous file: keep whichever of it and the
    /// entry closest to expiry expires later (a shrink keeps the youngest), and
    /// keep an entry already stored under the key.
    Migrate,
}

/// What [`SessionStore::store_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Written,
    /// A live entry under the key was already here (kept; migrations only).
    AlreadyThere,
    /// No room for an entry older than everything around it (migrations only).
    Dropped,
    ReadOnly,
}

/// The candidate buckets of one key, locked (lower index first).
pub(crate) struct LockedPair<'a> {
    guards: [Option<BucketGuard<'a>>; 2],
}

impl<'a> LockedPair<'a> {
    pub(crate) fn guard(&mut self, gi: usize) -> &mut BucketGuard<'a> {
        self.guards[gi].as_mut().expect("a locked bucket")
    }
}

impl KeyHash {
    fn matches(&self, g: &BucketGuard<'_>, slot: usize) -> bool {
        g.tag(slot) == self.tag
            && g.slot_word(slot, 2) == self.fp_words[0]
            && g.slot_word(slot, 3) == self.fp_words[1]
    }
}

thread_local! {
    /// This thread's counter stripe (see [`SessionStore::bump`]).
    static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

static NEXT_STRIPE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The counter stripe of the calling thread: threads of one process take
/// stripes in turn (offset by the pid, for other processes), so a core's
/// counter increments stay in a cache line no other core writes.
fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = (std::process::id() as usize)
                .wrapping_mul(7)
                .wrapping_add(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed))
                % COUNTER_STRIPES;
            s.set(v);
        }
        v
    })
}

impl SessionStore {
    /// Open the cache file of `cfg`, creating it if it does not exist. A file of
    /// another geometry is not refused: it becomes the previous file of a
    /// migration into a new file of the configured geometry, and its sessions
    /// stay resumable while they move (migrate.rs).
    pub fn open_or_create(cfg: &StoreConfig) -> Result<SessionStore, StoreError> {
        SessionStore::open_or_create_with_clock(cfg, Arc::new(SystemClock))
    }

    /// As [`SessionStore::open_or_create`], with time taken from `clock`.
    pub fn open_or_create_with_clock(
        cfg: &StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<SessionStore, StoreError> {
        cfg.validate()?;
        super::migrate::open_or_migrate(cfg, clock)
    }

    /// Open an existing cache file with whatever geometry it has (the inspector).
    /// Never migrates and never attaches a previous file.
    pub fn open_existing(path: &Path, access: Access) -> Result<SessionStore, StoreError> {
        SessionStore::open_inner(path, access, Arc::new(SystemClock))
    }

    /// As [`SessionStore::open_existing`], with time taken from `clock`.
    pub fn open_existing_with_clock(
        path: &Path,
        access: Access,
        clock: Arc<dyn Clock>,
    ) -> Result<SessionStore, StoreError> {
        SessionStore::open_inner(path, access, clock)
    }

    pub(crate) fn open_inner(
        path: &Path,
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
        super::check_private(&meta, writable).map_err(|e| match e {
            NotPrivate::Mode(mode) => StoreError::Permissions {
                path: path.to_path_buf(),
                mode,
            },
            NotPrivate::Owner { owner, euid } => StoreError::Owner {
                path: path.to_path_buf(),
                owner,
                euid,
            },
        })?;
        let header = check_header(path, &file, meta.len())?;
        let geo = header.geometry;

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
        // Lookups touch two random buckets anywhere in the file: with 4 KiB pages
        // nearly every one is a TLB miss, and in a VM a nested page walk costs
        // about as much as the memory access itself. Huge pages (2 MiB page-cache
        // folios mapped by one entry, where the filesystem has large folios, e.g.
        // ext4 on Linux 6.16+; a no-op elsewhere) make the whole table fit the
        // TLB. Measured in bench/RESULTS.md.
        let _ = raw.advise(memmap2::Advice::HugePage);
        let map = Mapping::new(raw, writable);

        let flags = map.atomic_u32(hdr::FLAGS).load(Ordering::Acquire);
        let mut store = SessionStore {
            path: path.to_path_buf(),
            file,
            hasher: SipHasher13::new_with_key(&header.seed),
            header,
            map,
            clock,
            owner: std::process::id(),
            previous_unclean: false,
            created: false,
            value_key: None,
            unsealed_ok: AtomicBool::new(false),
            marked_sealed: AtomicBool::new(flags & FLAG_SEALED != 0),
            seal_cursor: AtomicU64::new(0),
            predecessor: None,
        };
        if writable {
            let prev = store
                .map
                .atomic_u32(hdr::FLAGS)
                .fetch_or(FLAG_OPEN, Ordering::AcqRel);
            store
                .map
                .atomic_u64(hdr::OPEN_COUNT)
                .fetch_add(1, Ordering::Relaxed);
            if exclusive {
                store.previous_unclean = prev & FLAG_OPEN != 0;
                if store.previous_unclean {
                    let interrupted = store.map.reset_locks(&geo);
                    let torn = store.scrub_buckets(&interrupted);
                    tracing::warn!(path = %path.display(), interrupted_writes = interrupted.len(), torn,
                        "cache file was not closed cleanly; slots its writers left half-written were cleared");
                }
                let _ = store.file.relock(FlockArg::LockShared);
            }
        }
        Ok(store)
    }

    /// Mark this store as the one that created its file (a fresh, empty table).
    pub(crate) fn set_created(&mut self) {
        self.created = true;
    }

    pub(crate) fn is_created(&self) -> bool {
        self.created
    }

    /// The file's hash seed: shared with the file a migration moves entries to,
    /// so an entry's fingerprint stays the same. Never leaves the cache files.
    pub(crate) fn seed(&self) -> [u8; 16] {
        self.header.seed
    }

    /// The open file (its lock, its inode).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// Seal every value put from now on with `key`, and open values read with it.
    /// Sealed values under another key, and unsealed values, read as misses
    /// (counted in `decrypt_failures`) — except, when sealing was just turned on
    /// for this file, the unsealed values already in it: they stay resumable and
    /// are sealed in place in the background ([`SessionStore::migrate_some`]),
    /// after which the file is marked sealed. Sealing costs [`SEAL_OVERHEAD`]
    /// bytes of each slot's value room.
    pub fn seal_values_with(mut self, key: ValueKey) -> SessionStore {
        self.value_key = Some(key);
        if !self.marked_sealed.load(Ordering::Relaxed) {
            if self.created && self.map.writable() {
                self.mark_sealed();
            } else {
                self.unsealed_ok.store(true, Ordering::Relaxed);
            }
        }
        self
    }

    /// Set the file's [`FLAG_SEALED`]: from now on a store that seals serves no
    /// unsealed value from it. Never cleared: values a store without the key
    /// puts later are misses for one with it, as before sealing was turned on.
    pub(crate) fn mark_sealed(&self) {
        if !self.map.writable() {
            return;
        }
        self.map
            .atomic_u32(hdr::FLAGS)
            .fetch_or(FLAG_SEALED, Ordering::AcqRel);
        self.marked_sealed.store(true, Ordering::Relaxed);
    }

    /// Whether values are sealed at rest.
    pub fn seals_values(&self) -> bool {
        self.value_key.is_some()
    }

    pub(crate) fn value_key(&self) -> Option<&ValueKey> {
        self.value_key.as_ref()
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

    /// Whether the file is marked as holding only sealed values.
    pub fn marked_sealed(&self) -> bool {
        self.map.atomic_u32(hdr::FLAGS).load(Ordering::Relaxed) & FLAG_SEALED != 0
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
        self.key_hash_of(&fingerprint)
    }

    /// Where an entry with fingerprint `fp` lives in this table (a migration
    /// places the old file's entries by their fingerprints: both files share
    /// their seed).
    pub(crate) fn key_hash_of(&self, fp: &[u8; FINGERPRINT_LEN]) -> KeyHash {
        let fp_words = [
            u64::from_le_bytes(fp[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(fp[8..].try_into().expect("8 bytes")),
        ];
        let (bucket, alt) = self.buckets_of_words(fp_words);
        KeyHash {
            bucket,
            alt,
            tag: tag_of(fp),
            fingerprint: *fp,
            fp_words,
        }
    }

    /// The two buckets an entry with fingerprint `fp` may live in (equal only in a
    /// one-bucket table).
    pub(crate) fn buckets_of_fingerprint(&self, fp: &[u8; FINGERPRINT_LEN]) -> (u64, u64) {
        let k = self.key_hash_of(fp);
        (k.bucket, k.alt)
    }

    fn buckets_of_words(&self, [h1, h2]: [u64; 2]) -> (u64, u64) {
        let n = self.header.geometry.bucket_count;
        let b1 = ((h1 as u128 * n as u128) >> 64) as u64;
        let mut b2 = ((h2 as u128 * n as u128) >> 64) as u64;
        if b2 == b1 {
            b2 = (b1 + 1) % n;
        }
        (b1, b2)
    }

    /// Count one event. Each thread adds to its own stripe of the counters, so
    /// the increment is a locked add on a line that stays in its core's cache.
    pub(crate) fn bump(&self, c: Counter) {
        self.bump_by(c, 1)
    }

    pub(crate) fn bump_by(&self, c: Counter, n: u64) {
        if self.map.writable() && n > 0 {
            let off = hdr::COUNTERS + stripe() * COUNTER_STRIPE_SIZE + c as usize * 8;
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
            displacements: get(Counter::Displacements),
            migrated: get(Counter::Migrated),
            migration_dropped: get(Counter::MigrationDropped),
        }
    }

    pub(crate) fn lock(&self, bucket: u64) -> Option<BucketGuard<'_>> {
        let mut guard = self
            .map
            .lock_bucket(&self.header.geometry, bucket, self.owner)?;
        if guard.was_stolen() {
            self.bump(Counter::LockSteals);
            let torn = self.scrub(&mut guard);
            tracing::warn!(
                bucket,
                torn,
                "took over a bucket lock left by a dead process"
            );
        }
        Some(guard)
    }

    /// Lock both candidate buckets of `kh`, lower index first (every process
    /// follows that order, so two writers cannot deadlock). `None` if read-only.
    pub(crate) fn lock_pair(&self, kh: &KeyHash) -> Option<LockedPair<'_>> {
        let (lo, hi) = (kh.bucket.min(kh.alt), kh.bucket.max(kh.alt));
        let g_lo = self.lock(lo)?;
        let g_hi = if hi != lo { self.lock(hi) } else { None };
        Some(LockedPair {
            guards: [Some(g_lo), g_hi],
        })
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    pub(crate) fn slot_buf(&self) -> SlotBuf {
        SlotBuf::new(self.header.geometry.slot_size as usize)
    }

    /// Clear the slots of the locked bucket `g` that a writer killed inside it
    /// may have left half-written (data without a tag, or a tag whose slot does
    /// not verify). Returns how many, counted as corrupt.
    pub(crate) fn scrub(&self, g: &mut BucketGuard<'_>) -> u64 {
        let mut buf = self.slot_buf();
        let max = self.max_value_len();
        let mut n = 0;
        for i in 0..SLOTS_PER_BUCKET {
            let tag = g.tag(i);
            g.load_slot(i, buf.bytes_mut());
            let s = buf.bytes();
            let torn = if tag == 0 {
                s.iter().any(|&b| b != 0)
            } else {
                let fp = fingerprint_of(s);
                let (b1, b2) = self.buckets_of_fingerprint(&fp);
                !slot_intact(s, g.bucket(), i, max)
                    || tag != tag_of(&fp)
                    || (g.bucket() != b1 && g.bucket() != b2)
            };
            if torn {
                erase(g, i);
                n += 1;
            }
        }
        self.bump_by(Counter::Corrupt, n);
        n
    }

    fn scrub_buckets(&self, buckets: &[u64]) -> u64 {
        let mut n = 0;
        for &b in buckets {
            if let Some(mut g) = self.map.lock_bucket(&self.header.geometry, b, self.owner) {
                n += self.scrub(&mut g);
            }
        }
        n
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
            self.bump(Counter::TooLarge);
            return false;
        }
        let born = clamp_secs(born);
        let expires = clamp_secs(now.saturating_add(ttl.as_secs()));
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
        let entry = Entry {
            fingerprint: &kh.fingerprint,
            value,
            expires,
            born,
            flags,
        };
        match self.store_entry(&kh, &entry, now, Placement::Put) {
            Stored::ReadOnly => false,
            _ => {
                self.bump(Counter::Puts);
                true
            }
        }
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
        let found = match self.active_predecessor() {
            Some(p) => self.get_refreshed_migrating(p, &kh, now, ttl, max_age),
            None => self.get_refreshed_in_file(&kh, now, ttl, max_age),
        };
        self.count_lookup(found.is_some());
        found
    }

    /// Whether a live entry for `key` is present (in this file, or in the
    /// previous file of a migration), without opening it and without counting a
    /// lookup: a probe before rustls' own `get` or `take` (the shared session
    /// tier asks it to skip a round trip).
    pub fn contains(&self, key: &[u8]) -> bool {
        let kh = self.key_hash(key);
        let now = self.clock.now_secs();
        if self.get_in_file(&kh, now).is_some() {
            return true;
        }
        self.active_predecessor().is_some_and(|p| {
            let okh = p.store.key_hash_of(&kh.fingerprint);
            p.store.get_in_file(&okh, now).is_some()
        })
    }

    pub(crate) fn get_refreshed_in_file(
        &self,
        kh: &KeyHash,
        now: u64,
        ttl: Duration,
        max_age: Duration,
    ) -> Option<(Vec<u8>, u64)> {
        self.with_locked_entry(kh, now, |g, i, s| {
            let born = u64::from(born_of(s));
            if now.saturating_sub(born) > max_age.as_secs() {
                erase(g, i);
                self.bump(Counter::Expired);
                return None;
            }
            // Opened under the lock, so a value that does not open (the key
            // was rotated) is erased at once rather than kept alive.
            let Some(v) = self.open_value(kh, raw_value(s), false) else {
                erase(g, i);
                return None;
            };
            let expires = clamp_secs(now.saturating_add(ttl.as_secs())).max(expires_of(s));
            rewrite_expiry(g, i, expires, born_of(s));
            Some(v)
        })
        .flatten()
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

    fn lookup(&self, key: &[u8], remove: bool) -> Option<(Vec<u8>, u64)> {
        let kh = self.key_hash(key);
        let now = self.clock.now_secs();
        let found = match self.active_predecessor() {
            Some(p) => self.lookup_migrating(p, &kh, now, remove),
            None => {
                let raw = if remove {
                    self.take_in_file(&kh, now)
                } else {
                    self.get_in_file(&kh, now)
                };
                // Opened outside the bucket lock: the cipher's cost is not paid under it.
                raw.and_then(|r| self.open_value(&kh, r, false))
            }
        };
        self.count_lookup(found.is_some());
        if found.is_some() && remove {
            self.bump(Counter::Takes);
        }
        found
    }

    /// One lock-free pass over both candidate buckets of `kh`: their sequence
    /// numbers (both header lines are fetched at once), tags, the fingerprint of
    /// each slot whose tag matches, and a copy of the matching slot into `copy`.
    /// The pass counts only if neither bucket was written meanwhile; reading
    /// both under one check means an entry moving between the two (which holds
    /// both locks) cannot slip past.
    pub(crate) fn probe(&self, kh: &KeyHash, mut copy: Option<&mut SlotBuf>) -> Probe {
        let geo = &self.header.geometry;
        let (b1, b2) = (kh.bucket, kh.alt);
        for _ in 0..64 {
            let s1 = self.map.read_begin(geo, b1);
            let s2 = self.map.read_begin(geo, b2);
            let (Some(s1), Some(s2)) = (s1, s2) else {
                std::hint::spin_loop();
                continue;
            };
            let mut found = None;
            'buckets: for b in [b1, b2] {
                let mut m = slots_tagged(&self.map.tag_words(geo, b), kh.tag);
                while m != 0 {
                    let i = m.trailing_zeros() as usize;
                    m &= m - 1;
                    let off = geo.slot_offset(b, i);
                    if self.map.load_word(off + 16) == kh.fp_words[0]
                        && self.map.load_word(off + 24) == kh.fp_words[1]
                    {
                        if let Some(buf) = copy.as_deref_mut() {
                            self.map.load_bytes(off, buf.bytes_mut());
                        }
                        found = Some((b, i));
                        break 'buckets;
                    }
                }
            }
            if self.map.read_validate(geo, b1, s1) && self.map.read_validate(geo, b2, s2) {
                return match found {
                    Some((bucket, slot)) => Probe::Found { bucket, slot },
                    None => Probe::Absent,
                };
            }
        }
        Probe::Busy
    }

    /// The value of `kh` in this file: lock-free when the entry is whole and
    /// alive; under the lock (which erases an expired or corrupt entry) otherwise.
    pub(crate) fn get_in_file(&self, kh: &KeyHash, now: u64) -> Option<RawValue> {
        let mut buf = self.slot_buf();
        match self.probe(kh, Some(&mut buf)) {
            Probe::Absent => return None,
            Probe::Found { bucket, slot } => {
                let s = buf.bytes();
                if slot_intact(s, bucket, slot, self.max_value_len())
                    && u64::from(expires_of(s)) > now
                {
                    return Some(raw_value(s));
                }
            }
            Probe::Busy => {}
        }
        self.with_locked_entry(kh, now, |_, _, s| raw_value(s))
    }

    /// Remove `kh` from this file and return its value.
    pub(crate) fn take_in_file(&self, kh: &KeyHash, now: u64) -> Option<RawValue> {
        self.with_locked_entry(kh, now, |g, i, s| {
            erase(g, i);
            raw_value(s)
        })
    }

    /// Find `kh` under its bucket's lock and apply `f` to its slot (with a copy
    /// of the slot's bytes, verified and unexpired). A lock-free probe says which
    /// bucket to lock; if the entry moved meanwhile, both candidate buckets are
    /// locked and searched. `None` if absent (or read-only).
    pub(crate) fn with_locked_entry<R>(
        &self,
        kh: &KeyHash,
        now: u64,
        f: impl FnOnce(&mut BucketGuard<'_>, usize, &[u8]) -> R,
    ) -> Option<R> {
        let mut buf = self.slot_buf();
        match self.probe(kh, None) {
            Probe::Absent => return None,
            Probe::Found { bucket, slot } => {
                let mut g = self.lock(bucket)?;
                if kh.matches(&g, slot) {
                    if !self.check_locked(&mut g, slot, now, &mut buf) {
                        return None;
                    }
                    return Some(f(&mut g, slot, buf.bytes()));
                }
                // Moved to its other bucket, or gone, since the probe.
            }
            Probe::Busy => {}
        }
        let mut pair = self.lock_pair(kh)?;
        let (gi, i) = self.find_locked(&mut pair, kh, now, &mut buf)?;
        Some(f(pair.guard(gi), i, buf.bytes()))
    }

    /// With `kh`'s buckets locked: where its live entry is, with a copy of its
    /// bytes in `buf`. Expired and corrupt matches met on the way are erased.
    pub(crate) fn find_locked(
        &self,
        pair: &mut LockedPair<'_>,
        kh: &KeyHash,
        now: u64,
        buf: &mut SlotBuf,
    ) -> Option<(usize, usize)> {
        for gi in 0..2 {
            let Some(g) = pair.guards[gi].as_mut() else {
                continue;
            };
            let mut m = slots_tagged(&g.tag_words(), kh.tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if kh.matches(g, i) && self.check_locked(g, i, now, buf) {
                    return Some((gi, i));
                }
            }
        }
        None
    }

    /// Copy slot `i` of the locked bucket into `buf` and check it: a corrupt or
    /// expired entry is erased (and counted) and `false` returned.
    fn check_locked(&self, g: &mut BucketGuard<'_>, i: usize, now: u64, buf: &mut SlotBuf) -> bool {
        g.load_slot(i, buf.bytes_mut());
        let s = buf.bytes();
        if !slot_intact(s, g.bucket(), i, self.max_value_len()) {
            erase(g, i);
            self.bump(Counter::Corrupt);
            return false;
        }
        if u64::from(expires_of(s)) <= now {
            erase(g, i);
            self.bump(Counter::Expired);
            return false;
        }
        true
    }

    /// The plaintext of a value copied out of `kh`'s slot, if this store can
    /// vouch for it: unsealed when the store does not seal, sealed under this
    /// store's key when it does — and unsealed ones too while sealing is being
    /// turned on, or when they come from the previous file of a migration
    /// (`from_previous`), which was written before. Anything else is counted and
    /// missed.
    pub(crate) fn open_value(
        &self,
        kh: &KeyHash,
        raw: RawValue,
        from_previous: bool,
    ) -> Option<(Vec<u8>, u64)> {
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
            (Some(_), false) if from_previous || self.unsealed_ok.load(Ordering::Relaxed) => {
                Some(bytes.len())
            }
            _ => None,
        };
        match opened {
            Some(n) => {
                bytes.truncate(n);
                Some((bytes, born))
            }
            None => {
                self.bump(Counter::DecryptFailures);
                None
            }
        }
    }

    pub(crate) fn count_lookup(&self, hit: bool) {
        self.bump(if hit { Counter::Hits } else { Counter::Misses });
    }

    /// Write `e` under `kh`: over an entry already stored under the key (a put;
    /// a migration keeps a live one), else into an empty slot of the emptier
    /// candidate bucket, else over an expired one, else into a slot made free by
    /// moving a resident to its other bucket, else over the live entry closest
    /// to expiry (see [`Placement`]).
    pub(crate) fn store_entry(
        &self,
        kh: &KeyHash,
        e: &Entry<'_>,
        now: u64,
        placement: Placement,
    ) -> Stored {
        let geo = &self.header.geometry;
        // Start both header lines' misses before the first lock waits on one.
        self.map
            .prefetch_for_write(geo.bucket_header_offset(kh.bucket));
        self.map
            .prefetch_for_write(geo.bucket_header_offset(kh.alt));
        let Some(mut pair) = self.lock_pair(kh) else {
            return Stored::ReadOnly;
        };
        let at = match self.find_key(&pair, kh) {
            Some((gi, i)) => {
                if placement == Placement::Migrate {
                    let mut buf = self.slot_buf();
                    if self.check_locked(pair.guard(gi), i, now, &mut buf) {
                        return Stored::AlreadyThere;
                    }
                }
                (gi, i)
            }
            None => match self.room(&mut pair, now, e.expires, placement) {
                Some(at) => at,
                None => return Stored::Dropped,
            },
        };
        let mut buf = self.slot_buf();
        let g = pair.guard(at.0);
        compose(buf.bytes_mut(), e, g.bucket(), at.1);
        write_slot(g, at.1, buf.bytes(), kh.tag);
        Stored::Written
    }

    /// A slot holding `kh` (alive or not), in either locked bucket.
    fn find_key(&self, pair: &LockedPair<'_>, kh: &KeyHash) -> Option<(usize, usize)> {
        for (gi, g) in pair.guards.iter().enumerate() {
            let Some(g) = g else { continue };
            let mut m = slots_tagged(&g.tag_words(), kh.tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if kh.matches(g, i) {
                    return Some((gi, i));
                }
            }
        }
        None
    }

    /// A slot for a new entry in the locked pair (see [`SessionStore::store_entry`]).
    fn room(
        &self,
        pair: &mut LockedPair<'_>,
        now: u64,
        incoming_expires: u32,
        placement: Placement,
    ) -> Option<(usize, usize)> {
        let mut best: Option<(usize, u32, usize)> = None;
        for (gi, g) in pair.guards.iter().enumerate() {
            let Some(g) = g else { continue };
            let empty = slots_tagged(&g.tag_words(), 0);
            let n = empty.count_ones();
            if n > 0 && best.is_none_or(|(_, bn, _)| n > bn) {
                best = Some((gi, n, empty.trailing_zeros() as usize));
            }
        }
        if let Some((gi, _, i)) = best {
            return Some((gi, i));
        }
        // Both buckets are full. The first 32 bytes of each slot (one cache line)
        // hold its expiry and fingerprint: enough to find an expired slot, the
        // entry closest to expiry and every resident's other bucket.
        let mut fps = [[0u64; 2]; 2 * SLOTS_PER_BUCKET];
        let mut soonest: Option<(usize, usize, u32)> = None;
        for (gi, g) in pair.guards.iter().enumerate() {
            let Some(g) = g else { continue };
            for i in 0..SLOTS_PER_BUCKET {
                let expires = g.slot_word(i, 0) as u32;
                if u64::from(expires) <= now {
                    self.bump(Counter::Expired);
                    return Some((gi, i));
                }
                fps[gi * SLOTS_PER_BUCKET + i] = [g.slot_word(i, 2), g.slot_word(i, 3)];
                if soonest.is_none_or(|(_, _, se)| expires < se) {
                    soonest = Some((gi, i, expires));
                }
            }
        }
        if let Some(at) = self.displace(pair, &fps, now) {
            return Some(at);
        }
        let (gi, i, expires) = soonest.expect("a bucket has slots");
        match placement {
            Placement::Put => {
                self.bump(Counter::Evictions);
                Some((gi, i))
            }
            Placement::Migrate => {
                // One of the two is dropped either way: the older.
                self.bump(Counter::MigrationDropped);
                (expires < incoming_expires).then_some((gi, i))
            }
        }
    }

    /// Free a slot in the full locked pair by moving one resident to its other
    /// candidate bucket, if one of those has an empty slot (one step of cuckoo
    /// hashing). The third bucket is only try-locked: we already hold two locks
    /// and may not wait out of order. The resident is erased before its copy is
    /// written, so a crash in between loses that one entry and never leaves it
    /// in two places (a single-use ticket must not be taken twice).
    fn displace(
        &self,
        pair: &mut LockedPair<'_>,
        fps: &[[u64; 2]; 2 * SLOTS_PER_BUCKET],
        now: u64,
    ) -> Option<(usize, usize)> {
        let geo = &self.header.geometry;
        let locked: [Option<u64>; 2] =
            std::array::from_fn(|gi| pair.guards[gi].as_ref().map(|g| g.bucket()));
        let mut alts = [u64::MAX; 2 * SLOTS_PER_BUCKET];
        for (k, fp) in fps.iter().enumerate() {
            let Some(here) = locked[k / SLOTS_PER_BUCKET] else {
                continue;
            };
            let (x, y) = self.buckets_of_words(*fp);
            let alt = match (x == here, y == here) {
                (true, _) => y,
                (_, true) => x,
                // Not placed by this table (its checksum will say so): leave it.
                _ => continue,
            };
            if locked.contains(&Some(alt)) {
                continue;
            }
            alts[k] = alt;
            self.map.prefetch_for_write(geo.bucket_header_offset(alt));
        }
        let mut room = [0u32; 2 * SLOTS_PER_BUCKET];
        for (k, &alt) in alts.iter().enumerate() {
            if alt != u64::MAX {
                room[k] = slots_tagged(&self.map.tag_words(geo, alt), 0).count_ones();
            }
        }
        let mut buf = self.slot_buf();
        for _ in 0..4 {
            let (k, n) = room
                .iter()
                .enumerate()
                .max_by_key(|&(_, n)| *n)
                .map(|(k, n)| (k, *n))?;
            if n == 0 {
                return None;
            }
            room[k] = 0;
            let Some(mut to) = self.map.try_lock_bucket(geo, alts[k], self.owner) else {
                continue;
            };
            let empty = slots_tagged(&to.tag_words(), 0);
            if empty == 0 {
                continue;
            }
            let j = empty.trailing_zeros() as usize;
            let (gi, i) = (k / SLOTS_PER_BUCKET, k % SLOTS_PER_BUCKET);
            let g = pair.guard(gi);
            if !self.check_locked(g, i, now, &mut buf) {
                // It was corrupt or expired, and is erased: room made.
                return Some((gi, i));
            }
            let tag = g.tag(i);
            let pending_until = g.pending_deadline();
            erase(g, i);
            reseal_place(buf.bytes_mut(), alts[k], j);
            if buf.bytes()[15] & SLOT_PENDING != 0 {
                // A ticket in use moves with its connection's deadline.
                to.raise_pending_deadline(pending_until);
            }
            write_slot(&mut to, j, buf.bytes(), tag);
            self.bump(Counter::Displacements);
            return Some((gi, i));
        }
        None
    }

    /// Erase expired slots in buckets `range` (the background sweep). Returns how many.
    pub fn sweep(&self, range: std::ops::Range<u64>) -> u64 {
        let now = self.clock.now_secs();
        let mut n = 0;
        for b in range.start..range.end.min(self.header.geometry.bucket_count) {
            let Some(mut g) = self.lock(b) else { return 0 };
            let mut here = 0;
            let mut m = !slots_tagged(&g.tag_words(), 0);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if u64::from(g.slot_word(i, 0) as u32) <= now {
                    erase(&mut g, i);
                    here += 1;
                }
            }
            drop(g);
            self.bump_by(Counter::Expired, here);
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
        }
        let _ = self.file.relock(FlockArg::LockShared);
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

/// Check the header of an open file of `len` bytes against the format.
fn check_header(path: &Path, file: &File, len: u64) -> Result<StaticHeader, StoreError> {
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
    file.read_exact_at(&mut head, 0)
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            io: source,
        })?;
    let header = StaticHeader::decode(&head).map_err(|p| header_error(path, p))?;
    if len != header.geometry.file_len() {
        return Err(StoreError::Truncated {
            path: path.to_path_buf(),
            found: len,
            expected: header.geometry.file_len(),
        });
    }
    Ok(header)
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
pub(crate) fn create_file(
    path: &Path,
    geo: &Geometry,
    seed: Option<[u8; 16]>,
    clock: &dyn Clock,
) -> Result<(), StoreError> {
    create_file_as(path, geo, seed, clock, false)
}

/// As [`create_file`]; with `replace`, renamed over whatever is at `path`
/// instead. With `seed` the file shares another file's keyed hash (a
/// migration's new file); without, it gets a fresh random one.
pub(crate) fn create_file_as(
    path: &Path,
    geo: &Geometry,
    seed: Option<[u8; 16]>,
    clock: &dyn Clock,
    replace: bool,
) -> Result<(), StoreError> {
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
        let seed = match seed {
            Some(s) => s,
            None => {
                let mut s = [0u8; 16];
                getrandom::fill(&mut s)
                    .map_err(|e| create_err(std::io::Error::other(e.to_string())))?;
                s
            }
        };
        let header = StaticHeader {
            version: VERSION,
            geometry: *geo,
            created_at: clock.now_secs(),
            seed,
        };
        file.write_all_at(&header.encode(), 0).map_err(create_err)?;
        file.sync_all().map_err(create_err)?;
        if replace {
            return std::fs::rename(&tmp, path).map_err(create_err);
        }
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

/// Store a composed slot and announce it: tag cleared first, bytes, then the
/// tag. A crash mid-way leaves data without a tag (cleared when the lock is
/// recovered), never a half-old, half-new session under a tag.
pub(crate) fn write_slot(g: &mut BucketGuard<'_>, idx: usize, bytes: &[u8], tag: u16) {
    g.set_tag(idx, 0);
    g.store_slot(idx, bytes);
    g.set_tag(idx, tag);
}

/// Change a live slot's expiry in place: word 0 (expires, born) in one aligned
/// store. Outside the checksum (see `slot_crc`), so a crash cannot tear it.
pub(crate) fn rewrite_expiry(g: &mut BucketGuard<'_>, idx: usize, expires: u32, born: u32) {
    g.store_slot_word(idx, 0, u64::from(expires) | u64::from(born) << 32);
}

/// Hide a slot (tag cleared first), then zero it, secrets included.
pub(crate) fn erase(g: &mut BucketGuard<'_>, idx: usize) {
    g.set_tag(idx, 0);
    g.zero_slot(idx);
}
