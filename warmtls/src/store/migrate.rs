//! Growing, shrinking and re-shaping a cache file without losing a session.
//!
//! A file's geometry (capacity, slot size) is fixed when it is created. When the
//! configuration asks for another one, opening the store does not refuse the
//! file and does not rewrite it in place; it
//!
//! 1. creates a new file of the configured geometry beside it, with the *same
//!    hash seed* (an entry keeps its fingerprint, so it can be placed in the new
//!    table without knowing its session key, and the keyed hash stays secret:
//!    the seed goes from one 0600 file to another and nowhere else),
//! 2. gives the old file a second name, `<path>.prev` (a hard link), and
//! 3. renames the new file over `<path>`.
//!
//! A crash after 2 leaves two names for the old file, which the next open undoes
//! and starts again; a crash after 3 leaves a migration in progress, which the
//! next open continues. The directory is flocked while this happens, so two
//! processes starting at once cannot both do it.
//!
//! While `<path>.prev` exists the store reads through it: a lookup tries the new
//! file first, then the old one. A TLS 1.3 `take` locks the key's buckets in the
//! old file first and then takes the key from *both* files, so a ticket is used
//! once even if a crash left a copy in each. A TLS 1.2 hit in the old file
//! moves the entry (with its expiry refreshed). A background pass (the
//! [`super::Flusher`] thread, or [`SessionStore::finish_migration`]) moves the
//! rest, youngest first, writing the new copy before erasing the old one: a kill
//! at any point loses nothing, and at worst leaves one entry in both files,
//! which the rules above make harmless and the next pass removes. Expiry,
//! lineage start (`born`) and sealed values carry over unchanged (a sealed value
//! is bound to the fingerprint and `born`, which do not change); unsealed values
//! are sealed on the way when the store seals. When the new table is smaller
//! than the live sessions, the older of two contenders for a slot is dropped and
//! counted (`migration_dropped`): the youngest sessions stay.
//!
//! Entries only move while no other process has the old file open (a process
//! being replaced in a hand-over of the listening sockets, which knows nothing of
//! the new file): until it exits, the new process reads through the old file and
//! takes from it under its bucket locks, which both processes respect, and puts
//! only into the new one. Once every entry has moved and nobody else holds the
//! old file, it is unlinked and its blocks are released.
//!
//! Turning sealing on for the same geometry needs no second file: the store
//! serves the unsealed values already there and seals them in place in the
//! background, then marks the file sealed (`FLAG_SEALED`), after which an
//! unsealed value is a miss again.
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::clock::Clock;
use super::error::StoreError;
use super::format::{Counter, Geometry, SLOTS_PER_BUCKET, SLOT_SEALED, VALUE_OFFSET};
use super::seal::SEAL_OVERHEAD;
use super::slot::{
    born_of, expires_of, fingerprint_of, is_sealed, raw_value, slot_intact, slots_tagged, val_len,
    Entry, SlotBuf,
};
use super::table::{
    create_file, create_file_as, erase, rewrite_expiry, write_slot, Access, KeyHash, Placement,
    SessionStore, StoreConfig, Stored,
};

/// The name the previous file of a migration has while its entries move.
pub fn previous_file_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    p.into()
}

/// Where a background migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Nothing to move or seal.
    Idle,
    /// Another process still has the previous file open; entries stay there
    /// (and resumable) until it exits.
    WaitingForOtherProcesses,
    /// Entries are moving (or values being sealed in place).
    Moving,
    /// The last step finished the migration (or the in-place sealing).
    Done,
}

/// What [`SessionStore::finish_migration`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MigrationReport {
    /// Entries moved from the previous file.
    pub moved: u64,
    /// Entries of the previous file not kept (a smaller table: the oldest; or
    /// values too large for the new slots, or sealed with a key this store lacks).
    pub dropped: u64,
    /// Wall-clock seconds the call took.
    pub seconds: f64,
}

/// The file a migration moves entries out of, while it still has some.
#[derive(Debug)]
pub(crate) struct Predecessor {
    pub(crate) store: SessionStore,
    /// Every entry has moved and the file is gone: lookups skip it.
    retired: AtomicBool,
    /// No other process has the file open, so entries may move.
    movable: AtomicBool,
    /// This process holds the directory lock already (an open finishing a
    /// migration before it starts another): retiring must not take it again.
    dir_held: AtomicBool,
    work: Mutex<Work>,
}

#[derive(Debug)]
struct Work {
    phase: Phase,
    next_check: Instant,
    waiting_logged: bool,
    started: Instant,
}

#[derive(Debug)]
enum Phase {
    /// List the live entries, youngest first.
    Plan,
    /// Move the listed entries (expiry << 32 | bucket << 4 | slot).
    Order { entries: Vec<u64>, next: usize },
    /// Walk every bucket and move what is left; retire once a walk finds nothing.
    Sweep { bucket: u64, found: u64 },
}

impl Predecessor {
    fn new(store: SessionStore) -> Predecessor {
        let movable = !others_hold(store.file());
        Predecessor {
            store,
            retired: AtomicBool::new(false),
            movable: AtomicBool::new(movable),
            dir_held: AtomicBool::new(false),
            work: Mutex::new(Work {
                phase: Phase::Plan,
                next_check: Instant::now() + Duration::from_secs(1),
                waiting_logged: false,
                started: Instant::now(),
            }),
        }
    }

    fn movable(&self) -> bool {
        self.movable.load(Ordering::Relaxed)
    }
}

/// An exclusive flock on the cache file's directory, held while cache files
/// are created, linked and renamed there, so that two processes starting at
/// once cannot both start a migration. Best effort: where the directory cannot
/// be locked, creation is still race-free (link, never overwrite).
struct DirLock(#[allow(dead_code)] Option<Flock<File>>);

impl DirLock {
    fn acquire(path: &Path) -> DirLock {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        DirLock(
            File::open(dir)
                .ok()
                .and_then(|f| Flock::lock(f, FlockArg::LockExclusive).ok()),
        )
    }
}

/// Whether a process other than this one holds a flock on `file`. Unknown (no
/// procfs) counts as yes: entries then stay where they are, and resumable.
pub(crate) fn others_hold(file: &File) -> bool {
    other_holders(file).is_none_or(|pids| !pids.is_empty())
}

/// The processes other than this one that hold a flock on `file` (every process
/// that has a cache file open does), from `/proc/locks`; `None` if unknown.
pub(crate) fn other_holders(file: &File) -> Option<Vec<u32>> {
    let meta = file.metadata().ok()?;
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let me = std::process::id();
    let mut pids = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  READ  1234 fd:01:5678 0 EOF"; waiters have "->".
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && f[1] == "FLOCK" && f[5] == want {
            // A pid this namespace cannot see reads as unparsable: someone else.
            let pid = f[4].parse::<u32>().unwrap_or(0);
            if pid != me {
                pids.push(pid);
            }
        }
    }
    Some(pids)
}

/// A process other than this one that has the cache file at `path` (or the
/// previous file of its migration) open, if any: `warmtls-cache migrate` works
/// only on files nobody has open.
pub fn open_elsewhere(path: &Path) -> Result<Option<u32>, StoreError> {
    for p in [path.to_path_buf(), previous_file_of(path)] {
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(io) => return Err(StoreError::Open { path: p, io }),
        };
        match other_holders(&file) {
            Some(pids) if pids.is_empty() => {}
            Some(pids) => return Ok(Some(pids[0])),
            None => return Ok(Some(0)),
        }
    }
    Ok(None)
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Open {
            path: path.to_path_buf(),
            io: source,
        }),
    }
}

fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The open sequence of [`SessionStore::open_or_create`]: create, open, continue
/// a migration, or start one (see the module docs).
pub(crate) fn open_or_migrate(
    cfg: &StoreConfig,
    clock: Arc<dyn Clock>,
) -> Result<SessionStore, StoreError> {
    let want = Geometry::for_capacity(cfg.capacity, cfg.slot_size);
    let path = cfg.path.as_path();
    let prev = previous_file_of(path);
    let _dir = DirLock::acquire(path);
    let mut prev_exists = exists(&prev)?;
    if !exists(path)? {
        let old = if prev_exists {
            // A migration's new file was deleted: start again from the old one.
            Some(SessionStore::open_inner(
                &prev,
                Access::ReadWrite,
                clock.clone(),
            )?)
        } else {
            None
        };
        create_file(path, &want, old.as_ref().map(|o| o.seed()), &*clock)?;
        let mut new = SessionStore::open_inner(path, Access::ReadWrite, clock)?;
        new.set_created();
        return Ok(match old {
            Some(old) => attach(new, old),
            None => new,
        });
    }
    let mut current = SessionStore::open_inner(path, Access::ReadWrite, clock.clone())?;
    if prev_exists && same_file(&prev, current.file()) {
        // A start interrupted between link and rename: both names are the old file.
        std::fs::remove_file(&prev).map_err(|source| StoreError::Open {
            path: prev.clone(),
            io: source,
        })?;
        prev_exists = false;
    }
    if prev_exists {
        let old = SessionStore::open_inner(&prev, Access::ReadWrite, clock.clone())?;
        if old.seed() == current.seed() {
            current = attach(current, old);
        } else {
            tracing::warn!(previous = %prev.display(), cache = %path.display(),
                "ignoring the previous cache file: it was not made for this one (another hash seed); delete it");
        }
    }
    let geo = current.geometry();
    if geo.capacity == want.capacity && geo.slot_size == want.slot_size {
        return Ok(current);
    }
    if let Some(p) = &current.predecessor {
        // A migration into this file has not finished: finish it first, so
        // there is never more than one previous file.
        p.dir_held.store(true, Ordering::Relaxed);
        current.finish_migration()?;
        current.predecessor = None;
    }
    start_migration(current, &want, &*clock, clock.clone())
}

fn attach(mut new: SessionStore, old: SessionStore) -> SessionStore {
    if new.is_created() {
        carry_encoding(&old, &new);
    }
    new.predecessor = Some(Box::new(Predecessor::new(old)));
    new
}

/// A new file made for a migration holds the old file's values as they are:
/// give it the old file's record of their session encoding (encoding.rs), so
/// the start-up check still compares what the values really are.
fn carry_encoding(old: &SessionStore, new: &SessionStore) {
    use super::format::hdr;
    let (from, to) = (old.mapping(), new.mapping());
    if !to.writable() {
        return;
    }
    for off in [hdr::PREVIOUS_ENCODING, hdr::ENCODING] {
        let v = from.atomic_u32(off).load(Ordering::Acquire);
        to.atomic_u32(off).store(v, Ordering::Release);
    }
    let since = from.atomic_u64(hdr::ENCODING_SINCE).load(Ordering::Acquire);
    to.atomic_u64(hdr::ENCODING_SINCE)
        .store(since, Ordering::Release);
}

/// Steps 1–3 of the module docs: `old` (at its path) becomes the previous file
/// of a new file of geometry `want` at that path.
fn start_migration(
    mut old: SessionStore,
    want: &Geometry,
    clock: &dyn Clock,
    shared_clock: Arc<dyn Clock>,
) -> Result<SessionStore, StoreError> {
    let path = old.path().to_path_buf();
    let prev = previous_file_of(&path);
    let from = old.geometry();
    std::fs::hard_link(&path, &prev).map_err(|source| StoreError::Open {
        path: prev.clone(),
        io: source,
    })?;
    if let Err(e) = create_file_as(&path, want, Some(old.seed()), clock, true) {
        // Nothing replaced the old file: drop its second name again.
        let _ = std::fs::remove_file(&prev);
        return Err(e);
    }
    sync_dir(&path);
    let mut new = SessionStore::open_inner(&path, Access::ReadWrite, shared_clock)?;
    new.set_created();
    old.set_path(prev.clone());
    tracing::info!(cache = %path.display(), previous = %prev.display(),
        from_capacity = from.capacity, from_slot_size = from.slot_size,
        to_capacity = want.capacity, to_slot_size = want.slot_size,
        "cache geometry changed: sessions move to the new file in the background and stay resumable meanwhile");
    Ok(attach(new, old))
}

impl SessionStore {
    /// The previous file of a migration, while entries are still moving out of it.
    pub(crate) fn active_predecessor(&self) -> Option<&Predecessor> {
        self.predecessor
            .as_deref()
            .filter(|p| !p.retired.load(Ordering::Acquire))
    }

    /// The previous file a migration is moving entries out of, if any.
    pub fn migrating_from(&self) -> Option<&Path> {
        self.active_predecessor().map(|p| p.store.path())
    }

    /// A lookup while a migration runs (module docs): a get reads through; a
    /// take removes the key from both files under the old file's bucket locks.
    pub(crate) fn lookup_migrating(
        &self,
        p: &Predecessor,
        kh: &KeyHash,
        now: u64,
        remove: bool,
    ) -> Option<(Vec<u8>, u64)> {
        let old = &p.store;
        let okh = old.key_hash_of(&kh.fingerprint);
        if !remove {
            if let Some(raw) = self.get_in_file(kh, now) {
                return self.open_value(kh, raw, false);
            }
            let raw = old.get_in_file(&okh, now)?;
            return self.open_value(kh, raw, true);
        }
        let Some(mut pair) = old.lock_pair(&okh) else {
            return self
                .take_in_file(kh, now)
                .and_then(|r| self.open_value(kh, r, false));
        };
        let taken_new = self.take_in_file(kh, now);
        let mut buf = SlotBuf::new(old.geometry().slot_size as usize);
        let taken_old = old
            .find_locked(&mut pair, &okh, now, &mut buf)
            .map(|(gi, i)| {
                erase(pair.guard(gi), i);
                raw_value(buf.bytes())
            });
        drop(pair);
        match taken_new {
            Some(r) => self.open_value(kh, r, false),
            None => self.open_value(kh, taken_old?, true),
        }
    }

    /// A refreshing get (TLS 1.2) while a migration runs: a hit in the old file
    /// moves the entry here with its expiry extended (or, while another process
    /// still has the old file, extends it there).
    pub(crate) fn get_refreshed_migrating(
        &self,
        p: &Predecessor,
        kh: &KeyHash,
        now: u64,
        ttl: Duration,
        max_age: Duration,
    ) -> Option<(Vec<u8>, u64)> {
        let old = &p.store;
        let okh = old.key_hash_of(&kh.fingerprint);
        let Some(mut pair) = old.lock_pair(&okh) else {
            return self.get_refreshed_in_file(kh, now, ttl, max_age);
        };
        let mut buf = SlotBuf::new(old.geometry().slot_size as usize);
        let in_old = old.find_locked(&mut pair, &okh, now, &mut buf);
        if let Some(found) = self.get_refreshed_in_file(kh, now, ttl, max_age) {
            if let Some((gi, i)) = in_old {
                // A copy a crash mid-move left behind.
                erase(pair.guard(gi), i);
            }
            return Some(found);
        }
        let (gi, i) = in_old?;
        let s = buf.bytes();
        let g = pair.guard(gi);
        let born = born_of(s);
        if now.saturating_sub(u64::from(born)) > max_age.as_secs() {
            erase(g, i);
            self.bump(Counter::Expired);
            return None;
        }
        let Some(found) = self.open_value(kh, raw_value(s), true) else {
            erase(g, i);
            return None;
        };
        let expires =
            (now.saturating_add(ttl.as_secs()).min(u64::from(u32::MAX)) as u32).max(expires_of(s));
        if p.movable() {
            let moved = self.carry_over(kh, s, expires, now, Placement::Put);
            if matches!(moved, Some(Stored::Written | Stored::AlreadyThere)) {
                erase(g, i);
                return Some(found);
            }
        }
        rewrite_expiry(g, i, expires, born);
        Some(found)
    }

    /// Store the old file's intact entry `s` here under `kh` with expiry
    /// `expires`: its sealed value as it is when this store seals (same key,
    /// fingerprint and born, so it opens here), its plaintext sealed on the way
    /// when it was not, its plaintext when neither seals. `None` (counted) when
    /// it cannot be carried: too large for these slots, or sealed under a key
    /// this store does not have.
    fn carry_over(
        &self,
        kh: &KeyHash,
        s: &[u8],
        expires: u32,
        now: u64,
        placement: Placement,
    ) -> Option<Stored> {
        let value = &s[VALUE_OFFSET..VALUE_OFFSET + val_len(s)];
        let born = born_of(s);
        let mut out = SlotBuf::new(self.geometry().slot_size as usize);
        let (len, flags) = match (self.value_key(), is_sealed(s)) {
            (Some(_), true) | (None, false) if value.len() <= self.max_value_len() => {
                out.bytes_mut()[..value.len()].copy_from_slice(value);
                (value.len(), super::pending::carried_flags(s[15]))
            }
            (Some(k), false) if value.len() + SEAL_OVERHEAD <= self.max_value_len() => {
                let n = value.len() + SEAL_OVERHEAD;
                k.seal(&kh.fingerprint, born, value, &mut out.bytes_mut()[..n]);
                (n, SLOT_SEALED | super::pending::carried_flags(s[15]))
            }
            (None, true) => {
                self.bump(Counter::DecryptFailures);
                return None;
            }
            _ => {
                self.bump(Counter::TooLarge);
                return None;
            }
        };
        let entry = Entry {
            fingerprint: &kh.fingerprint,
            value: &out.bytes()[..len],
            expires,
            born,
            flags,
        };
        let stored = self.store_entry(kh, &entry, now, placement);
        if stored == Stored::Written {
            self.bump(Counter::Migrated);
        }
        Some(stored)
    }

    /// Do up to about `budget` entries' worth of background work: move entries
    /// out of the previous file of a migration (retiring it once empty), or seal
    /// in place the values put before sealing was turned on. The
    /// [`super::Flusher`] calls this until it returns `Idle`.
    pub fn migrate_some(&self, budget: usize) -> MigrationState {
        if let Some(p) = self.active_predecessor() {
            return self.migrate_step(p, budget);
        }
        if self.unsealed_ok.load(Ordering::Relaxed) && self.mapping().writable() {
            return self.seal_step(budget);
        }
        MigrationState::Idle
    }

    /// Run the background work of [`SessionStore::migrate_some`] to the end now
    /// (`warmtls-cache migrate`, and an open that must finish one migration
    /// before starting another). An error if another process still has the
    /// previous file open.
    pub fn finish_migration(&self) -> Result<MigrationReport, StoreError> {
        let started = Instant::now();
        let before = self.counters();
        if let Some(p) = self.active_predecessor() {
            p.movable
                .store(!others_hold(p.store.file()), Ordering::Relaxed);
        }
        loop {
            match self.migrate_some(1 << 16) {
                MigrationState::Idle => break,
                MigrationState::Moving | MigrationState::Done => {}
                MigrationState::WaitingForOtherProcesses => {
                    let prev = self
                        .migrating_from()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    return Err(StoreError::MigrationBusy {
                        path: self.path().to_path_buf(),
                        previous: prev,
                    });
                }
            }
        }
        let after = self.counters();
        Ok(MigrationReport {
            moved: after.migrated - before.migrated,
            dropped: after.migration_dropped - before.migration_dropped,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn migrate_step(&self, p: &Predecessor, budget: usize) -> MigrationState {
        let mut w = p.work.lock().unwrap_or_else(|e| e.into_inner());
        if !p.movable() {
            if Instant::now() >= w.next_check {
                w.next_check = Instant::now() + Duration::from_secs(1);
                p.movable
                    .store(!others_hold(p.store.file()), Ordering::Relaxed);
            }
            if !p.movable() {
                if !w.waiting_logged {
                    w.waiting_logged = true;
                    tracing::info!(previous = %p.store.path().display(),
                        "another process still has the previous cache file open: its sessions are read from there until it exits, then move here");
                }
                return MigrationState::WaitingForOtherProcesses;
            }
            w.started = Instant::now();
        }
        let old = &p.store;
        let now = self.now();
        let mut done = 0usize;
        loop {
            match &mut w.phase {
                Phase::Plan => {
                    w.phase = match plan(old) {
                        Some(entries) => Phase::Order { entries, next: 0 },
                        None => Phase::Sweep {
                            bucket: 0,
                            found: 0,
                        },
                    };
                }
                Phase::Order { entries, next } => {
                    while *next < entries.len() && done < budget {
                        let e = entries[*next];
                        *next += 1;
                        let (bucket, slot) = ((e >> 4) & ((1 << 28) - 1), (e & 15) as usize);
                        if let Some(mut g) = old.lock(bucket) {
                            if g.tag(slot) != 0 {
                                self.move_one(old, &mut g, slot, now);
                                done += 1;
                            }
                        }
                    }
                    if *next < entries.len() {
                        return MigrationState::Moving;
                    }
                    w.phase = Phase::Sweep {
                        bucket: 0,
                        found: 0,
                    };
                }
                Phase::Sweep { bucket, found } => {
                    let n = old.geometry().bucket_count;
                    while *bucket < n && done < budget {
                        if let Some(mut g) = old.lock(*bucket) {
                            let mut m = !slots_tagged(&g.tag_words(), 0);
                            while m != 0 {
                                let i = m.trailing_zeros() as usize;
                                m &= m - 1;
                                self.move_one(old, &mut g, i, now);
                                *found += 1;
                                done += 1;
                            }
                        }
                        *bucket += 1;
                    }
                    if *bucket < n {
                        return MigrationState::Moving;
                    }
                    if *found > 0 {
                        w.phase = Phase::Sweep {
                            bucket: 0,
                            found: 0,
                        };
                        return MigrationState::Moving;
                    }
                    let started = w.started;
                    drop(w);
                    return self.retire(p, started);
                }
            }
        }
    }

    /// Move slot `i` of the old file's locked bucket `g` here, then erase it
    /// there (in that order: a kill in between leaves a copy in each file, never
    /// none). Corrupt and expired entries are only erased.
    fn move_one(
        &self,
        old: &SessionStore,
        g: &mut super::map::BucketGuard<'_>,
        i: usize,
        now: u64,
    ) {
        let mut buf = SlotBuf::new(old.geometry().slot_size as usize);
        g.load_slot(i, buf.bytes_mut());
        let s = buf.bytes();
        if !slot_intact(s, g.bucket(), i, old.max_value_len()) {
            erase(g, i);
            old.bump(Counter::Corrupt);
            return;
        }
        if u64::from(expires_of(s)) <= now {
            erase(g, i);
            old.bump(Counter::Expired);
            return;
        }
        let kh = self.key_hash_of(&fingerprint_of(s));
        if self.carry_over(&kh, s, expires_of(s), now, Placement::Migrate) != Some(Stored::ReadOnly)
        {
            erase(g, i);
        }
    }

    /// Unlink the emptied previous file and release its blocks, unless another
    /// process has opened it meanwhile.
    fn retire(&self, p: &Predecessor, started: Instant) -> MigrationState {
        let _dir = (!p.dir_held.load(Ordering::Relaxed)).then(|| DirLock::acquire(self.path()));
        if others_hold(p.store.file()) {
            p.movable.store(false, Ordering::Relaxed);
            return MigrationState::WaitingForOtherProcesses;
        }
        let prev = p.store.path();
        if let Err(e) = std::fs::remove_file(prev) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(previous = %prev.display(), "cannot remove the emptied previous cache file: {e}");
            }
        }
        sync_dir(prev);
        // Its pages stay mapped until this process exits; give the disk back now.
        // Reads of a punched range see zeros (empty buckets), never a fault.
        let _ = nix::fcntl::fallocate(
            p.store.file(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            p.store.geometry().file_len() as i64,
        );
        p.retired.store(true, Ordering::Release);
        let c = self.counters();
        tracing::info!(cache = %self.path().display(), previous = %prev.display(),
            migrated = c.migrated, dropped = c.migration_dropped,
            seconds = started.elapsed().as_secs_f64(),
            "cache migration finished; the previous file is removed");
        MigrationState::Done
    }

    /// Seal in place, bucket by bucket, the unsealed values of a file this store
    /// just started sealing; mark the file sealed at the end.
    fn seal_step(&self, budget: usize) -> MigrationState {
        let geo = self.geometry();
        let start = self.seal_cursor.load(Ordering::Relaxed);
        let end = (start + (budget / SLOTS_PER_BUCKET).max(1) as u64).min(geo.bucket_count);
        let Some(key) = self.value_key() else {
            return MigrationState::Idle;
        };
        let mut buf = SlotBuf::new(geo.slot_size as usize);
        let mut out = SlotBuf::new(geo.slot_size as usize);
        for b in start..end {
            let Some(mut g) = self.lock(b) else {
                return MigrationState::Idle;
            };
            let mut m = !slots_tagged(&g.tag_words(), 0);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                g.load_slot(i, buf.bytes_mut());
                let s = buf.bytes();
                if !slot_intact(s, b, i, geo.max_value_len()) || is_sealed(s) {
                    continue;
                }
                let value = &s[VALUE_OFFSET..VALUE_OFFSET + val_len(s)];
                let n = value.len() + SEAL_OVERHEAD;
                if n > geo.max_value_len() {
                    erase(&mut g, i);
                    self.bump(Counter::TooLarge);
                    continue;
                }
                let fp = fingerprint_of(s);
                let mut sealed = [0u8; super::format::MAX_SLOT_SIZE as usize];
                key.seal(&fp, born_of(s), value, &mut sealed[..n]);
                out.bytes_mut().fill(0);
                super::slot::compose(
                    out.bytes_mut(),
                    &Entry {
                        fingerprint: &fp,
                        value: &sealed[..n],
                        expires: expires_of(s),
                        born: born_of(s),
                        // Same slot, same bucket deadline: a pending or
                        // restored ticket stays so.
                        flags: SLOT_SEALED | s[15],
                    },
                    b,
                    i,
                );
                let tag = g.tag(i);
                write_slot(&mut g, i, out.bytes(), tag);
            }
        }
        if end < geo.bucket_count {
            self.seal_cursor.store(end, Ordering::Relaxed);
            return MigrationState::Moving;
        }
        self.mark_sealed();
        self.unsealed_ok.store(false, Ordering::Relaxed);
        tracing::info!(cache = %self.path().display(), "every value in the cache file is sealed now");
        MigrationState::Done
    }
}

/// The live entries of `old`, youngest (latest expiry) first, packed as
/// expiry << 32 | bucket << 4 | slot; `None` for tables too large to pack
/// (those move in bucket order). Read lock-free: entries that change meanwhile
/// are caught by the sweep that follows.
fn plan(old: &SessionStore) -> Option<Vec<u64>> {
    let geo = old.geometry();
    if geo.bucket_count >= 1 << 28 {
        return None;
    }
    let map = old.mapping();
    let mut entries = Vec::new();
    for b in 0..geo.bucket_count {
        let mut m = !slots_tagged(&map.tag_words(&geo, b), 0);
        while m != 0 {
            let i = m.trailing_zeros() as u64;
            m &= m - 1;
            let expires = map.load_word(geo.slot_offset(b, i as usize)) as u32;
            entries.push(u64::from(expires) << 32 | b << 4 | i);
        }
    }
    entries.sort_unstable_by(|a, b| b.cmp(a));
    Some(entries)
}
