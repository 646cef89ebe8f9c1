//! The mapping: the only code in the store that touches raw memory.
//!
//! It owns the `MAP_SHARED` mapping of the cache file and hands out exactly three
//! kinds of access, all of them atomic: aligned atomics for the header words
//! (locks, sequence numbers, flags, counters), relaxed 8-byte loads with which
//! readers copy tags and slots, and a [`BucketGuard`] through which the holder of
//! a bucket's lock word stores into that bucket's tags and slots, again with
//! relaxed 8-byte atomic stores. No `&[u8]` or `&mut [u8]` over mapped bytes ever
//! leaves this module: a lock-free reader may copy a slot while its writer
//! rewrites it, and in Rust's memory model that is only defined when both sides
//! are atomic. The bucket's sequence number (a seqlock: odd while written, with
//! the fences that protocol needs) tells the reader whether its copy is whole.
//! It never interprets slot contents; `table.rs` does.
//!
//! The lock protocol is shared with every other process that maps the file (other
//! endpoint instances, `warmtls-cache purge`): lock word = owner pid, taken by
//! CAS; a lock whose owner process no longer exists is stolen (the slot it was
//! writing reads as torn through its checksum, never as a session, and the thief
//! is told so it can clear it).
#![allow(unsafe_code)]

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use super::format::{
    Geometry, BUCKET_HEADER_SIZE, BUCKET_PENDING_DEADLINE, SLOTS_PER_BUCKET, TAG_WORDS,
};

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

    #[inline]
    fn check(&self, off: usize, len: usize, align: usize) {
        assert!(off.is_multiple_of(align), "misaligned access at {off}");
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= self.raw.len()),
            "access past end"
        );
    }

    #[inline]
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked above); the mapping lives as
        // long as `self`; all concurrent access to this word, in this and other
        // processes, is atomic.
        unsafe { AtomicU32::from_ptr(self.raw.as_mut_ptr().add(off).cast()) }
    }

    #[inline]
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as for `atomic_u32`, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.raw.as_mut_ptr().add(off).cast()) }
    }

    /// `n` consecutive 8-byte words at `off`, as atomics. Private: readers get
    /// copies ([`Mapping::load_bytes`]), writers go through a [`BucketGuard`].
    #[inline]
    fn words(&self, off: usize, n: usize) -> &[AtomicU64] {
        self.check(off, n * 8, 8);
        // SAFETY: in bounds and 8-aligned (checked above); `AtomicU64` has the
        // size and alignment of `u64`; the mapping lives as long as `self`; every
        // access to slot and tag words, here and in other processes, is an
        // aligned 8-byte atomic access, so sharing them as atomics is sound.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(off).cast::<AtomicU64>(), n) }
    }

    /// Copy `out.len()` bytes at `off` with relaxed 8-byte atomic loads. For
    /// readers that do not hold the bucket lock and validate their copy with the
    /// bucket's sequence number and the slot checksum afterwards (a racing writer
    /// may change the bytes). `off` and `out.len()` must be multiples of 8.
    #[inline]
    pub(crate) fn load_bytes(&self, off: usize, out: &mut [u8]) {
        assert!(out.len().is_multiple_of(8));
        let words = self.words(off, out.len() / 8);
        for (w, chunk) in words.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
    }

    /// One 8-byte word at `off`, relaxed (as [`Mapping::load_bytes`]).
    #[inline]
    pub(crate) fn load_word(&self, off: usize) -> u64 {
        self.atomic_u64(off).load(Ordering::Relaxed)
    }

    /// The tag words of `bucket`: slot `i`'s 16-bit tag is bits `16 * (i % 4)..`
    /// of word `i / 4`; 0 marks an empty slot.
    #[inline]
    pub(crate) fn tag_words(&self, geo: &Geometry, bucket: u64) -> [u64; TAG_WORDS] {
        let w = self.words(geo.bucket_header_offset(bucket) + 8, TAG_WORDS);
        std::array::from_fn(|i| w[i].load(Ordering::Relaxed))
    }

    /// Ask the CPU to start fetching the cache line at `off` (for writing), so
    /// that the misses of several lines overlap instead of queueing.
    #[inline]
    pub(crate) fn prefetch_for_write(&self, off: usize) {
        if off >= self.raw.len() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults and has no effect on
        // memory; `off` is inside the mapping; SSE is part of the x86_64 baseline.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            _mm_prefetch::<_MM_HINT_ET0>(self.raw.as_ptr().add(off).cast());
        }
    }

    pub(crate) fn flush(&self) -> std::io::Result<()> {
        if self.writable {
            self.raw.flush()
        } else {
            Ok(())
        }
    }

    /// Lock bucket `bucket` for writing, waiting for it; `None` on a read-only
    /// mapping.
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
        let lock = self.atomic_u32(geo.bucket_header_offset(bucket));
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
        Some(self.guard(geo, bucket, stolen))
    }

    /// Lock `bucket` only if nobody holds it now. For a writer that already holds
    /// other buckets' locks and must not wait out of lock order (displacement).
    pub(crate) fn try_lock_bucket(
        &self,
        geo: &Geometry,
        bucket: u64,
        owner: u32,
    ) -> Option<BucketGuard<'_>> {
        if !self.writable {
            return None;
        }
        assert!(bucket < geo.bucket_count);
        self.atomic_u32(geo.bucket_header_offset(bucket))
            .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(self.guard(geo, bucket, false))
    }

    fn guard(&self, geo: &Geometry, bucket: u64, stolen: bool) -> BucketGuard<'_> {
        let header = geo.bucket_header_offset(bucket);
        let seq = self.atomic_u32(header + 4);
        // Make the sequence number odd while we write. If we stole the lock from a
        // writer that died mid-write it is already odd. The release fence keeps
        // every store we make to the bucket after this one, for readers that
        // acquire-load the sequence number.
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        BucketGuard {
            map: self,
            bucket,
            header,
            slots: geo.slot_offset(bucket, 0),
            slot_words: geo.slot_size as usize / 8,
            odd,
            stolen,
        }
    }

    /// Clear every bucket lock and make every sequence number even. Only called
    /// while this process holds the file's exclusive flock, i.e. no other process
    /// has it mapped: locks left by a crashed process are dead. Returns the
    /// buckets a writer was inside when it died (their slots may be torn).
    pub(crate) fn reset_locks(&self, geo: &Geometry) -> Vec<u64> {
        let mut interrupted = Vec::new();
        for b in 0..geo.bucket_count {
            let off = geo.bucket_header_offset(b);
            let held = self.atomic_u32(off).swap(0, Ordering::AcqRel) != 0;
            let seq = self.atomic_u32(off + 4);
            let s = seq.load(Ordering::Relaxed);
            if s & 1 == 1 {
                seq.store(s.wrapping_add(1), Ordering::Release);
            }
            if held || s & 1 == 1 {
                interrupted.push(b);
            }
        }
        interrupted
    }

    /// Start an optimistic read of a bucket: the sequence number to validate
    /// against, or `None` if a writer is active right now.
    #[inline]
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
    /// The acquire fence orders every relaxed load of the copy before this
    /// re-read of the sequence number.
    #[inline]
    pub(crate) fn read_validate(&self, geo: &Geometry, bucket: u64, seq: u32) -> bool {
        fence(Ordering::Acquire);
        self.atomic_u32(geo.bucket_header_offset(bucket) + 4)
            .load(Ordering::Relaxed)
            == seq
    }
}

pub(crate) fn process_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Exclusive write access to one bucket while its lock word is held. Reads
/// through it are atomic too: lock-free readers only read, but another process
/// that does not follow the protocol could write, and plain reads of such bytes
/// would be undefined.
pub(crate) struct BucketGuard<'a> {
    map: &'a Mapping,
    bucket: u64,
    header: usize,
    slots: usize,
    slot_words: usize,
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

    /// Until when (unix seconds) this bucket's pending slots are in use.
    pub(crate) fn pending_deadline(&self) -> u32 {
        self.map
            .atomic_u32(self.header + BUCKET_PENDING_DEADLINE)
            .load(Ordering::Relaxed)
    }

    /// Push this bucket's pending deadline out to at least `until` (never back:
    /// other pending slots of the bucket keep theirs).
    pub(crate) fn raise_pending_deadline(&mut self, until: u32) {
        let d = self.map.atomic_u32(self.header + BUCKET_PENDING_DEADLINE);
        if d.load(Ordering::Relaxed) < until {
            d.store(until, Ordering::Relaxed);
        }
    }

    #[inline]
    fn tag_word(&self, slot: usize) -> &AtomicU64 {
        assert!(slot < SLOTS_PER_BUCKET);
        &self.map.words(self.header + 8, TAG_WORDS)[slot / 4]
    }

    /// All tags of this bucket (see [`Mapping::tag_words`]).
    #[inline]
    pub(crate) fn tag_words(&self) -> [u64; TAG_WORDS] {
        let w = self.map.words(self.header + 8, TAG_WORDS);
        std::array::from_fn(|i| w[i].load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn tag(&self, slot: usize) -> u16 {
        (self.tag_word(slot).load(Ordering::Relaxed) >> (16 * (slot % 4))) as u16
    }

    /// Set slot `slot`'s tag. Release: a tag made nonzero is stored after the
    /// slot bytes it announces, in program order, which is also the order a
    /// killed process leaves them in.
    #[inline]
    pub(crate) fn set_tag(&mut self, slot: usize, tag: u16) {
        let word = self.tag_word(slot);
        let shift = 16 * (slot % 4);
        // Only the lock holder stores tag words, so load + store cannot lose an
        // update.
        let old = word.load(Ordering::Relaxed);
        let new = (old & !(0xffff << shift)) | (u64::from(tag) << shift);
        word.store(new, Ordering::Release);
        // Keep the slot stores that follow a cleared tag after it.
        fence(Ordering::Release);
    }

    #[inline]
    fn slot_atomics(&self, slot: usize) -> &[AtomicU64] {
        assert!(slot < SLOTS_PER_BUCKET);
        self.map
            .words(self.slots + slot * self.slot_words * 8, self.slot_words)
    }

    /// Copy slot `slot`'s bytes into `out` (exactly one slot long).
    #[inline]
    pub(crate) fn load_slot(&self, slot: usize, out: &mut [u8]) {
        let words = self.slot_atomics(slot);
        assert_eq!(out.len(), words.len() * 8);
        for (w, chunk) in words.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
    }

    /// Word `word` (8 bytes, little-endian) of slot `slot`.
    #[inline]
    pub(crate) fn slot_word(&self, slot: usize, word: usize) -> u64 {
        self.slot_atomics(slot)[word].load(Ordering::Relaxed)
    }

    /// Store `bytes` (exactly one slot long) into slot `slot`.
    #[inline]
    pub(crate) fn store_slot(&mut self, slot: usize, bytes: &[u8]) {
        let words = self.slot_atomics(slot);
        assert_eq!(bytes.len(), words.len() * 8);
        for (w, chunk) in words.iter().zip(bytes.chunks_exact(8)) {
            let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            w.store(v, Ordering::Relaxed);
        }
    }

    /// Store one word of slot `slot`: an aligned 8-byte store, which a crash
    /// cannot tear.
    #[inline]
    pub(crate) fn store_slot_word(&mut self, slot: usize, word: usize, value: u64) {
        self.slot_atomics(slot)[word].store(value, Ordering::Relaxed);
    }

    /// Zero every byte of slot `slot`.
    #[inline]
    pub(crate) fn zero_slot(&mut self, slot: usize) {
        for w in self.slot_atomics(slot) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for BucketGuard<'_> {
    fn drop(&mut self) {
        // Release: every store made under the lock is visible before the even
        // sequence number and the free lock word.
        self.map
            .atomic_u32(self.header + 4)
            .store(self.odd.wrapping_add(1), Ordering::Release);
        self.map.atomic_u32(self.header).store(0, Ordering::Release);
    }
}

const _: () = assert!(BUCKET_HEADER_SIZE >= 8 + 8 * TAG_WORDS);
const _: () = assert!(BUCKET_PENDING_DEADLINE >= 8 + 8 * TAG_WORDS);
const _: () = assert!(BUCKET_PENDING_DEADLINE + 4 <= BUCKET_HEADER_SIZE);
const _: () = assert!(TAG_WORDS * 4 == SLOTS_PER_BUCKET);
