//! The mapping: the only code in the store that touches raw memory.
//!
//! It owns the `MAP_SHARED` mapping of the cache file and hands out exactly three
//! kinds of access: atomics at aligned offsets (locks, sequence numbers, tags,
//! counters), volatile copies for optimistic readers, and a [`BucketGuard`] that
//! grants exclusive write access to one bucket's slots while it holds that
//! bucket's lock word. It never interprets slot contents; `table.rs` does.
//!
//! The lock protocol is shared with every other process that maps the file (other
//! endpoint instances, `warmtls-cache purge`): lock word = owner pid, taken by
//! CAS; a lock whose owner process no longer exists is stolen (the slot it was
//! writing reads as corrupt through its checksum, never as a session).
#![allow(unsafe_code)]

use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use super::format::{Geometry, BUCKET_HEADER_SIZE, SLOTS_PER_BUCKET};

/// A shared mapping of a whole cache file.
#[derive(Debug)]
pub(crate) struct Mapping {
    raw: MmapRaw,
    writable: bool,
}

impl Mapping {
    pub(crate) fn new(raw: MmapRaw, writable: bool) -> Mapping {
        // The header page and every offset we hand out are 4-byte or 8-byte
        // aligned relative to the start of the mapping, which is page aligned.
        assert_eq!(raw.as_ptr() as usize % 4096, 0);
        Mapping { raw, writable }
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    fn check(&self, off: usize, len: usize, align: usize) {
        assert!(off.is_multiple_of(align), "misaligned access at {off}");
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= self.raw.len()),
            "access past end"
        );
    }

    pub(crate) fn atomic_u16(&self, off: usize) -> &AtomicU16 {
        self.check(off, 2, 2);
        // SAFETY: in bounds and 2-aligned (checked above); the mapping lives as long
        // as `self`; all concurrent access to this word, in this and other
        // processes, is atomic.
        unsafe { AtomicU16::from_ptr(self.raw.as_mut_ptr().add(off).cast()) }
    }

    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as for `atomic_u16`, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.raw.as_mut_ptr().add(off).cast()) }
    }

    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as for `atomic_u16`, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.raw.as_mut_ptr().add(off).cast()) }
    }

    /// Copy bytes out with volatile reads. Used by readers that don't hold the
    /// bucket lock and validate what they read with the bucket's sequence number
    /// and the slot checksum afterwards (a racing writer may change the bytes).
    pub(crate) fn read_volatile(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len(), 1);
        let base = self.raw.as_ptr();
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); a volatile byte read of mapped
            // memory cannot tear and is never elided; the value may be stale,
            // which the caller detects with the sequence number and checksum.
            *b = unsafe { std::ptr::read_volatile(base.add(off + i)) };
        }
    }

    /// As [`Mapping::read_volatile`], eight bytes at a time: `off` and
    /// `out.len()` must be multiples of 8 (slots are 64-byte aligned).
    pub(crate) fn read_volatile_words(&self, off: usize, out: &mut [u8]) {
        assert!(out.len().is_multiple_of(8));
        self.check(off, out.len(), 8);
        let base = self.raw.as_ptr();
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: in bounds and 8-aligned (checked above); as in
            // `read_volatile`, a stale or torn word is caught by the caller's
            // sequence-number and checksum checks.
            let w = unsafe { std::ptr::read_volatile(base.add(off + 8 * i).cast::<u64>()) };
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
    }

    pub(crate) fn flush(&self) -> std::io::Result<()> {
        if self.writable {
            self.raw.flush()
        } else {
            Ok(())
        }
    }

    /// Lock bucket `bucket` for writing; `None` on a read-only mapping.
    pub(crate) fn lock_bucket(
        &self,
        geo: &Geometry,
        bucket: u64,
        owner: u32,
    ) -> Option<BucketGuard<'_>> {
        if !self.writable {
            return None;
        }
        assert!(bucket < geo.bucket_count);
        let off = geo.bucket_header_offset(bucket);
        let lock = self.atomic_u32(off);
        let seq = self.atomic_u32(off + 4);
        let mut spins = 0u32;
        let mut stolen = false;
        let mut waiting_since: Option<std::time::Instant> = None;
        loop {
            match lock.compare_exchange_weak(0, owner, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(current) => {
                    spins = spins.wrapping_add(1);
                    if spins < 128 {
                        std::hint::spin_loop();
                        continue;
                    }
                    std::thread::yield_now();
                    if !spins.is_multiple_of(1024) || current == 0 {
                        continue;
                    }
                    // A bucket operation takes well under a microsecond. A lock
                    // whose owner is gone, or that has been held for a second (a
                    // stopped process, or a lock word damaged on disk), is taken
                    // over: liveness matters more here than a stuck writer, whose
                    // slot at worst fails its checksum.
                    let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                    let dead = current != owner && !process_alive(current);
                    if (dead || since.elapsed() > std::time::Duration::from_secs(1))
                        && lock
                            .compare_exchange(current, owner, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        stolen = true;
                        break;
                    }
                }
            }
        }
        // Make the sequence number odd while we write. If we stole the lock from a
        // writer that died mid-write it is already odd.
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        Some(BucketGuard {
            map: self,
            geo: *geo,
            bucket,
            odd,
            stolen,
        })
    }

    /// Clear every bucket lock and make every sequence number even. Only called
    /// while this process holds the file's exclusive flock, i.e. no other process
    /// has it mapped: locks left by a crashed process are dead.
    pub(crate) fn reset_locks(&self, geo: &Geometry) -> u64 {
        let mut cleared = 0;
        for b in 0..geo.bucket_count {
            let off = geo.bucket_header_offset(b);
            if self.atomic_u32(off).swap(0, Ordering::AcqRel) != 0 {
                cleared += 1;
            }
            let seq = self.atomic_u32(off + 4);
            let s = seq.load(Ordering::Relaxed);
            if s & 1 == 1 {
                seq.store(s.wrapping_add(1), Ordering::Release);
            }
        }
        cleared
    }

    /// Start an optimistic read of a bucket: the sequence number to validate
    /// against, or `None` if a writer is active right now.
    pub(crate) fn read_begin(&self, geo: &Geometry, bucket: u64) -> Option<u32> {
        let s = self
            .atomic_u32(geo.bucket_header_offset(bucket) + 4)
            .load(Ordering::Acquire);
        (s & 1 == 0).then_some(s)
    }

    /// As [`Mapping::read_begin`], for scans that must not wait on a bucket
    /// whose sequence number was left odd by a crashed writer (or damaged on
    /// disk): an odd number with no live lock holder is stale, and the bucket
    /// can be read as it is. Returns the sequence number and the lock word, to
    /// pass to [`Mapping::read_validate_scan`].
    pub(crate) fn read_begin_scan(&self, geo: &Geometry, bucket: u64) -> Option<(u32, u32)> {
        let off = geo.bucket_header_offset(bucket);
        let lock = self.atomic_u32(off).load(Ordering::Acquire);
        let seq = self.atomic_u32(off + 4).load(Ordering::Acquire);
        let stale = seq & 1 == 1 && (lock == 0 || !process_alive(lock));
        (seq & 1 == 0 || stale).then_some((seq, lock))
    }

    /// Whether nothing was written to `bucket` since `read_begin_scan`. A writer
    /// takes the lock before touching a bucket and bumps the sequence number when
    /// done, so an unchanged pair of both words means no write overlapped the
    /// read, even when the sequence number was stale-odd (a writer keeps an odd
    /// number as it is while it writes, but its lock word shows).
    pub(crate) fn read_validate_scan(&self, geo: &Geometry, bucket: u64, at: (u32, u32)) -> bool {
        fence(Ordering::Acquire);
        let off = geo.bucket_header_offset(bucket);
        self.atomic_u32(off + 4).load(Ordering::Relaxed) == at.0
            && (at.0 & 1 == 0 || self.atomic_u32(off).load(Ordering::Relaxed) == at.1)
    }

    /// Whether nothing was written to `bucket` since `read_begin` returned `seq`.
    pub(crate) fn read_validate(&self, geo: &Geometry, bucket: u64, seq: u32) -> bool {
        fence(Ordering::Acquire);
        self.atomic_u32(geo.bucket_header_offset(bucket) + 4)
            .load(Ordering::Relaxed)
            == seq
    }
}

fn process_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Exclusive write access to one bucket while its lock word is held.
pub(crate) struct BucketGuard<'a> {
    map: &'a Mapping,
    geo: Geometry,
    bucket: u64,
    odd: u32,
    stolen: bool,
}

impl BucketGuard<'_> {
    pub(crate) fn bucket(&self) -> u64 {
        self.bucket
    }

    /// Whether the lock was taken over from a dead process.
    pub(crate) fn was_stolen(&self) -> bool {
        self.stolen
    }

    fn tag_offset(&self, slot: usize) -> usize {
        assert!(slot < SLOTS_PER_BUCKET);
        self.geo.bucket_header_offset(self.bucket) + 8 + 2 * slot
    }

    pub(crate) fn tag(&self, slot: usize) -> u16 {
        self.map
            .atomic_u16(self.tag_offset(slot))
            .load(Ordering::Relaxed)
    }

    pub(crate) fn set_tag(&mut self, slot: usize, tag: u16) {
        self.map
            .atomic_u16(self.tag_offset(slot))
            .store(tag, Ordering::Relaxed)
    }

    fn slot_range(&self, slot: usize) -> (usize, usize) {
        assert!(slot < SLOTS_PER_BUCKET);
        let off = self.geo.slot_offset(self.bucket, slot);
        let len = self.geo.slot_size as usize;
        self.map.check(off, len, 64);
        (off, len)
    }

    /// The bytes of one slot of this bucket.
    pub(crate) fn slot(&self, slot: usize) -> &[u8] {
        let (off, len) = self.slot_range(slot);
        // SAFETY: in bounds (checked); we hold the bucket lock, so no other writer
        // that follows the protocol changes these bytes while the borrow lives;
        // optimistic readers only read them.
        unsafe { std::slice::from_raw_parts(self.map.raw.as_ptr().add(off), len) }
    }

    /// The bytes of one slot of this bucket, writable.
    pub(crate) fn slot_mut(&mut self, slot: usize) -> &mut [u8] {
        let (off, len) = self.slot_range(slot);
        // SAFETY: in bounds (checked); the mapping is writable (checked when the
        // guard was made); holding the bucket lock makes us the only writer, and
        // `&mut self` makes this the only live borrow of the slot in this process.
        unsafe { std::slice::from_raw_parts_mut(self.map.raw.as_mut_ptr().add(off), len) }
    }
}

impl Drop for BucketGuard<'_> {
    fn drop(&mut self) {
        let off = self.geo.bucket_header_offset(self.bucket);
        self.map
            .atomic_u32(off + 4)
            .store(self.odd.wrapping_add(1), Ordering::Release);
        self.map.atomic_u32(off).store(0, Ordering::Release);
    }
}

const _: () = assert!(BUCKET_HEADER_SIZE >= 8 + 2 * SLOTS_PER_BUCKET);
