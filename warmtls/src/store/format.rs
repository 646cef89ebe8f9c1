//! The cache file format: where every byte lives.
//!
//! The file *is* the table; there is no serialization step. Layout:
//!
//! ```text
//! offset 0            header page (HEADER_SIZE bytes)
//!                       0..64   static header: magic, version, geometry, seed (little-endian)
//!                      64..68   CRC-32 of bytes 0..64
//!                     128..     live flags (atomic)
//!                     160..176  session encoding of the values (see below)
//!                    1024..     counter stripes (atomic u64s)
//! buckets_offset      bucket_count × BucketHeader (64 bytes, one cache line: lock u32,
//!                       seq u32, 16 × u16 tags read and written as four u64 words,
//!                       pending deadline u32 at 40)
//! slots_offset        bucket_count × SLOTS_PER_BUCKET × slot_size
//! ```
//!
//! An entry lives in one of two candidate buckets derived from its fingerprint
//! (see table.rs `buckets_of_fingerprint`); a put into two full buckets first
//! moves a resident entry to *its* other bucket (cuckoo displacement) before it
//! evicts anyone. Every access to tags and slot bytes is an aligned 8-byte atomic
//! (map.rs), so the slot layout below is also a layout of little-endian words:
//! word 0 = expires | born << 32, word 1 = crc | val_len << 32 | state << 48 |
//! flags << 56, words 2–3 = fingerprint, words 4.. = value.
//!
//! Growing, shrinking or re-shaping a file never rewrites it in place: the new
//! geometry goes into a new file at the configured path, created with the old
//! file's seed, and the old file is kept beside it as `<path>.prev` until every
//! live entry has moved (migrate.rs). Nothing in either file's layout records the
//! pair: the name and the shared seed do.
//!
//! A slot:
//!
//! ```text
//!  0  expires   u32  unix seconds; the slot is dead at or after this time
//!  4  born      u32  unix seconds of the full handshake that started this session's lineage
//!  8  crc       u32  CRC-32 over (bucket, slot index, bytes 4..8, 12..16, fingerprint, value);
//!                     not the expiry, which is rewritten in place (see table.rs `slot_crc`)
//! 12  val_len   u16
//! 14  state     u8   SLOT_LIVE when in use
//! 15  flags     u8   SLOT_SEALED: the value is AES-256-GCM-SIV ciphertext + tag (seal.rs);
//!                     SLOT_PENDING: a TLS 1.3 ticket taken by a connection still running;
//!                     bits 2–3: times the ticket was restored (a restored one gets no 0-RTT)
//! 16  fingerprint [u8; 16]  keyed SipHash-1-3-128 of the session key
//! 32  value     [u8; slot_size - 32]
//! ```
//!
//! The values are rustls' own encoding of a session, which rustls does not
//! promise to keep. Bytes 160..176 of the header page say which encoding the
//! file's values are in (a "session encoding generation", store/encoding.rs):
//!
//! ```text
//! 160  encoding           u32  generation of the values the last writer stored; 0 = not
//!                              recorded (a file from before this field: rustls 0.23's)
//! 164  previous_encoding  u32  the generation before the last change (0 = none)
//! 168  encoding_since     u64  unix seconds when `encoding` was last written with a new value
//! ```
//!
//! They were zero (spare) in every file written before, so older files read as
//! generation 0 and need no new format version.
//!
//! The raw session key is not stored: its keyed 128-bit fingerprint identifies the
//! entry (a collision needs ~2^64 keys), which saves 16 bytes per slot and keeps
//! session IDs out of the file. Atomics are native-endian; the build refuses
//! big-endian targets so the file stays little-endian throughout.

#[cfg(target_endian = "big")]
compile_error!("the warmtls cache file format assumes a little-endian host");

/// First eight bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"WARMTLS\x01";
/// Format version; bump on any layout change.
pub const VERSION: u32 = 2;
/// Size of the header page.
pub const HEADER_SIZE: usize = 4096;
/// Slots in one bucket. With two candidate buckets per key, 16-slot buckets
/// keep 100% of a table filled to capacity; 8-slot ones lost 0.3% (measured).
pub const SLOTS_PER_BUCKET: usize = 16;
/// The 16 tags of a bucket, as 8-byte words.
pub const TAG_WORDS: usize = SLOTS_PER_BUCKET / 4;
/// Bytes of one bucket header: lock u32, seq u32, 16 × u16 tags, padding to a cache line.
pub const BUCKET_HEADER_SIZE: usize = 64;
/// Bytes of slot metadata before the fingerprint.
pub const SLOT_META_SIZE: usize = 16;
/// Length of the stored key fingerprint.
pub const FINGERPRINT_LEN: usize = 16;
/// Offset of the value inside a slot.
pub const VALUE_OFFSET: usize = SLOT_META_SIZE + FINGERPRINT_LEN;
/// Smallest slot size accepted, in bytes (32 of metadata and fingerprint, 96 of value).
pub const MIN_SLOT_SIZE: u32 = 128;
/// Largest slot size accepted, in bytes (one 4 KiB page).
pub const MAX_SLOT_SIZE: u32 = 4096;
/// Entries the table is sized for, as a fraction of its slots (32 of 33, 97%).
/// Two-choice placement alone lost 0.6% of live sessions per round of TLS 1.3
/// churn even at 86% (the old 7/8 sizing, at capacity × 1.02); with one step of
/// cuckoo displacement a table kept 95% full of live sessions under that churn
/// loses none (bench/RESULTS.md). Files keep the slot count they were created
/// with: this only sizes new ones.
pub const LOAD_NUM: u64 = 32;
/// The other half of the load factor: a new file gets `capacity × LOAD_DEN /
/// LOAD_NUM` slots, rounded up to whole buckets.
pub const LOAD_DEN: u64 = 33;

/// Slot state byte of a live entry.
pub const SLOT_LIVE: u8 = 1;
/// Slot flag (byte 15): the value is sealed (encrypted at rest). Covered by the checksum.
pub const SLOT_SEALED: u8 = 1;
/// Slot flag: a TLS 1.3 ticket taken by a connection that has not finished yet
/// (see table.rs `take_ticket`): another take misses until the connection
/// settles it or its bucket's pending deadline passes.
pub const SLOT_PENDING: u8 = 2;
/// Slot flags, bits 2–3: how many times a ticket was restored after a
/// connection that took it failed (0–3). A restored ticket never carries 0-RTT.
pub const SLOT_RESTORES_SHIFT: u8 = 2;
/// Slot flags: the bits of the restore count (see [`SLOT_RESTORES_SHIFT`]).
pub const SLOT_RESTORES_MASK: u8 = 0b1100;
/// The most restores a slot can count.
pub const MAX_SLOT_RESTORES: u8 = 3;
/// Offset in a bucket header of the bucket's pending deadline (u32 unix
/// seconds): a pending slot of the bucket is in use until then. Spare (zero)
/// in files written before tickets could be pending, which reads as "passed".
pub const BUCKET_PENDING_DEADLINE: usize = 40;

/// Byte offsets inside the header page.
pub mod hdr {
    /// 8 bytes: [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// u32: format version ([`super::VERSION`]); any other is refused.
    pub const VERSION: usize = 8;
    /// u32: size of the header page as written ([`super::HEADER_SIZE`]); checked on open.
    pub const HEADER_SIZE: usize = 12;
    /// u32: bytes per slot, fixed at creation.
    pub const SLOT_SIZE: usize = 16;
    /// u32: slots per bucket as written ([`super::SLOTS_PER_BUCKET`]); checked on open.
    pub const SLOTS_PER_BUCKET: usize = 20;
    /// u64: number of buckets, fixed at creation (1 to 2^40 accepted).
    pub const BUCKET_COUNT: usize = 24;
    /// u64: sessions the file was sized for; a store configured for another
    /// capacity migrates to a new file.
    pub const CAPACITY: usize = 32;
    /// u64: unix seconds when the file was created.
    pub const CREATED_AT: usize = 40;
    /// 16 bytes: the key of the fingerprint hash (SipHash-1-3-128): random per
    /// file, copied only into a migration's new file.
    pub const SEED: usize = 48;
    /// Length of the static header, the bytes the CRC covers.
    pub const STATIC_LEN: usize = 64;
    /// u32: CRC-32 of bytes `0..STATIC_LEN`; a mismatch refuses the file.
    pub const CRC: usize = 64;
    /// Atomic u32: [`super::FLAG_OPEN`] while a writer has the file open.
    pub const FLAGS: usize = 128;
    /// Atomic u64: unix seconds of the last clean close.
    pub const LAST_CLEAN_CLOSE: usize = 136;
    /// Atomic u64: number of times the file was opened for writing.
    pub const OPEN_COUNT: usize = 144;
    /// Atomic u32: session encoding generation of the stored values (0: not recorded).
    pub const ENCODING: usize = 160;
    /// Atomic u32: the generation `ENCODING` held before its last change (0: none).
    pub const PREVIOUS_ENCODING: usize = 164;
    /// Atomic u64: unix seconds of the last change of `ENCODING`.
    pub const ENCODING_SINCE: usize = 168;
    /// Start of the counter stripes: [`super::COUNTER_STRIPES`] ×
    /// [`super::COUNTER_STRIPE_SIZE`] bytes of atomic u64s (bytes 1024..3072).
    pub const COUNTERS: usize = 1024;
}

// The session-encoding fields sit in bytes that were spare (always zero) in
// every earlier file: after the live header fields, before the counters.
const _: () =
    assert!(hdr::ENCODING >= hdr::OPEN_COUNT + 8 && hdr::ENCODING_SINCE + 8 <= hdr::COUNTERS);

/// Header flag: set while a writer has the file open; cleared at a clean close.
pub const FLAG_OPEN: u32 = 1;
/// Header flag: every value in the file is sealed (encrypted at rest). Set when a
/// sealing store creates the file or has sealed what an unsealing one left; a
/// store that seals serves unsealed values only while it is clear (seal.rs).
pub const FLAG_SEALED: u32 = 2;

/// Counter stripes (each on its own 128-byte line pair), picked by bucket index,
/// so cores hitting different buckets don't bounce one cache line.
pub const COUNTER_STRIPES: usize = 16;
/// Bytes of one stripe: two 64-byte cache lines, room for 16 u64 counters
/// (counter `c` at byte `c × 8`).
pub const COUNTER_STRIPE_SIZE: usize = 128;

/// The counters kept in the file, in stripe order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// A lookup (get, take, refreshing get) that returned a value.
    Hits = 0,
    /// A lookup that returned nothing: absent, expired, too old, corrupt, or not
    /// openable with this store's key.
    Misses,
    /// A value stored (new key or overwrite).
    Puts,
    /// A value removed and returned by `take` (also counted in `Hits`).
    Takes,
    /// A live entry overwritten by a put: both candidate buckets were full and
    /// no resident could move to its other bucket.
    Evictions,
    /// An expired (or too old) entry erased or its slot reused.
    Expired,
    /// A slot that did not verify (checksum, tag, bucket) or that a killed writer
    /// left half-written, erased.
    Corrupt,
    /// A value too large for a slot: refused by a put, or dropped when it no
    /// longer fits (a migration to smaller slots, sealing in place).
    TooLarge,
    /// A bucket lock taken over from a process that died holding it.
    LockSteals,
    /// An entry erased by a purge (`warmtls-cache purge`).
    Purged,
    /// A sealed value that did not open with this store's key (rotated or
    /// altered), or a value whose sealed-ness differs from this store's setting.
    DecryptFailures,
    /// A value found (and counted in `Hits`) that this build's rustls cannot
    /// decode: written in another session encoding (store/encoding.rs).
    Undecodable,
    /// A resident entry moved to its other candidate bucket to make room.
    Displacements,
    /// An entry moved here from the previous file of a migration.
    Migrated,
    /// An entry of the previous file not moved here: the new table was full of
    /// younger sessions (a shrink).
    MigrationDropped,
}

impl Counter {
    /// Every counter, in stripe order.
    pub const ALL: [Counter; 15] = [
        Counter::Hits,
        Counter::Misses,
        Counter::Puts,
        Counter::Takes,
        Counter::Evictions,
        Counter::Expired,
        Counter::Corrupt,
        Counter::TooLarge,
        Counter::LockSteals,
        Counter::Purged,
        Counter::DecryptFailures,
        Counter::Undecodable,
        Counter::Displacements,
        Counter::Migrated,
        Counter::MigrationDropped,
    ];
}

// Every counter has its 8 bytes inside each stripe.
const _: () = assert!(Counter::ALL.len() * 8 <= COUNTER_STRIPE_SIZE);

/// The shape of a table: everything needed to find a byte in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per slot: 32 of metadata and fingerprint, the rest for the value.
    pub slot_size: u32,
    /// Buckets of [`SLOTS_PER_BUCKET`] slots; the keyed hash picks two per key.
    pub bucket_count: u64,
    /// Sessions the file was sized for (slots × 32/33).
    pub capacity: u64,
}

impl Geometry {
    /// Geometry for `capacity` sessions of up to `slot_size` bytes each.
    pub fn for_capacity(capacity: u64, slot_size: u32) -> Geometry {
        let slots = (capacity.max(1) * LOAD_DEN).div_ceil(LOAD_NUM);
        let bucket_count = slots.div_ceil(SLOTS_PER_BUCKET as u64);
        Geometry {
            slot_size,
            bucket_count,
            capacity: capacity.max(1),
        }
    }

    /// Slots in the table: `bucket_count` × [`SLOTS_PER_BUCKET`].
    pub fn slot_count(&self) -> u64 {
        self.bucket_count * SLOTS_PER_BUCKET as u64
    }

    /// Largest value a slot holds.
    pub fn max_value_len(&self) -> usize {
        self.slot_size as usize - VALUE_OFFSET
    }

    /// Byte offset of the first bucket header: right after the header page.
    pub fn buckets_offset(&self) -> usize {
        HEADER_SIZE
    }

    /// Byte offset of the first slot: after the bucket headers, rounded up to a 4 KiB page.
    pub fn slots_offset(&self) -> usize {
        let end = HEADER_SIZE + self.bucket_count as usize * BUCKET_HEADER_SIZE;
        end.div_ceil(4096) * 4096
    }

    /// Length of the file in bytes; a file of any other length is refused as truncated.
    pub fn file_len(&self) -> u64 {
        self.slots_offset() as u64 + self.slot_count() * self.slot_size as u64
    }

    /// Byte offset of `bucket`'s 64-byte header (lock, sequence number, tags).
    pub fn bucket_header_offset(&self, bucket: u64) -> usize {
        self.buckets_offset() + bucket as usize * BUCKET_HEADER_SIZE
    }

    /// Byte offset of slot `slot` of `bucket`; a bucket's slots are contiguous.
    pub fn slot_offset(&self, bucket: u64, slot: usize) -> usize {
        self.slots_offset() + (bucket as usize * SLOTS_PER_BUCKET + slot) * self.slot_size as usize
    }

    /// Whether `slot_size` is one this build accepts (a multiple of 64 in range).
    pub fn slot_size_is_valid(slot_size: u32) -> bool {
        (MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) && slot_size.is_multiple_of(64)
    }
}

/// The static part of the header page, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticHeader {
    /// Format version ([`VERSION`] in every header that decodes).
    pub version: u32,
    /// The table's shape, fixed when the file was created.
    pub geometry: Geometry,
    /// Unix seconds when the file was created.
    pub created_at: u64,
    /// Key of the fingerprint hash: random per file, shared only with a
    /// migration's new file. Secret: it keeps clients from aiming keys at one bucket.
    pub seed: [u8; 16],
}

impl StaticHeader {
    /// Encode into the first `hdr::STATIC_LEN + 4` bytes of the header page.
    pub fn encode(&self) -> [u8; 68] {
        let mut b = [0u8; 68];
        b[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&MAGIC);
        b[hdr::VERSION..hdr::VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        b[hdr::HEADER_SIZE..hdr::HEADER_SIZE + 4]
            .copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[hdr::SLOT_SIZE..hdr::SLOT_SIZE + 4]
            .copy_from_slice(&self.geometry.slot_size.to_le_bytes());
        b[hdr::SLOTS_PER_BUCKET..hdr::SLOTS_PER_BUCKET + 4]
            .copy_from_slice(&(SLOTS_PER_BUCKET as u32).to_le_bytes());
        b[hdr::BUCKET_COUNT..hdr::BUCKET_COUNT + 8]
            .copy_from_slice(&self.geometry.bucket_count.to_le_bytes());
        b[hdr::CAPACITY..hdr::CAPACITY + 8].copy_from_slice(&self.geometry.capacity.to_le_bytes());
        b[hdr::CREATED_AT..hdr::CREATED_AT + 8].copy_from_slice(&self.created_at.to_le_bytes());
        b[hdr::SEED..hdr::SEED + 16].copy_from_slice(&self.seed);
        let crc = crc32fast::hash(&b[..hdr::STATIC_LEN]);
        b[hdr::CRC..hdr::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check the header bytes. Errors say which check failed.
    pub fn decode(b: &[u8]) -> Result<StaticHeader, HeaderProblem> {
        if b.len() < 68 {
            return Err(HeaderProblem::Short);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if b[..8] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&b[..8]);
            return Err(HeaderProblem::Magic(found));
        }
        let version = u32_at(hdr::VERSION);
        if version != VERSION {
            return Err(HeaderProblem::Version(version));
        }
        if crc32fast::hash(&b[..hdr::STATIC_LEN]) != u32_at(hdr::CRC) {
            return Err(HeaderProblem::Checksum);
        }
        let header_size = u32_at(hdr::HEADER_SIZE);
        let spb = u32_at(hdr::SLOTS_PER_BUCKET);
        let slot_size = u32_at(hdr::SLOT_SIZE);
        let bucket_count = u64_at(hdr::BUCKET_COUNT);
        if header_size as usize != HEADER_SIZE
            || spb as usize != SLOTS_PER_BUCKET
            || !Geometry::slot_size_is_valid(slot_size)
            || bucket_count == 0
            || bucket_count > (1 << 40)
        {
            return Err(HeaderProblem::Layout {
                header_size,
                slots_per_bucket: spb,
                slot_size,
                bucket_count,
            });
        }
        let mut seed = [0u8; 16];
        seed.copy_from_slice(&b[hdr::SEED..hdr::SEED + 16]);
        Ok(StaticHeader {
            version,
            geometry: Geometry {
                slot_size,
                bucket_count,
                capacity: u64_at(hdr::CAPACITY),
            },
            created_at: u64_at(hdr::CREATED_AT),
            seed,
        })
    }
}

/// Why a header page was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer than the 68 bytes of static header and CRC.
    Short,
    /// The first eight bytes (given) are not [`MAGIC`]: not a cache file.
    Magic([u8; 8]),
    /// A format version (given) other than [`VERSION`].
    Version(u32),
    /// The CRC-32 of the static header does not match the stored one.
    Checksum,
    /// The checksum matches but the layout is not one this build accepts.
    Layout {
        /// Header page size recorded; must be [`HEADER_SIZE`].
        header_size: u32,
        /// Slots per bucket recorded; must be [`SLOTS_PER_BUCKET`].
        slots_per_bucket: u32,
        /// Slot size recorded; must pass [`Geometry::slot_size_is_valid`].
        slot_size: u32,
        /// Bucket count recorded; must be 1 to 2^40.
        bucket_count: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_million_sessions_fit_in_140_bytes_each() {
        let g = Geometry::for_capacity(1_000_000, 128);
        assert!(g.slot_count() >= 1_000_000 * LOAD_DEN / LOAD_NUM);
        let per_session = g.file_len() as f64 / 1_000_000.0;
        assert!(per_session <= 140.0, "{per_session} bytes per session");
    }

    #[test]
    fn header_roundtrips_and_detects_damage() {
        let h = StaticHeader {
            version: VERSION,
            geometry: Geometry::for_capacity(1000, 192),
            created_at: 1_700_000_000,
            seed: [7; 16],
        };
        let mut b = h.encode();
        assert_eq!(StaticHeader::decode(&b), Ok(h));
        b[30] ^= 1;
        assert_eq!(StaticHeader::decode(&b), Err(HeaderProblem::Checksum));
        b[0] = b'X';
        assert!(matches!(
            StaticHeader::decode(&b),
            Err(HeaderProblem::Magic(_))
        ));
    }

    #[test]
    fn slots_never_overlap_bucket_headers() {
        for cap in [1u64, 7, 8, 1000, 123_457] {
            let g = Geometry::for_capacity(cap, 128);
            assert!(g.slots_offset() >= g.bucket_header_offset(g.bucket_count));
            assert_eq!(g.slots_offset() % 4096, 0);
        }
    }
}
