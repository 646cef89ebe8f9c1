//! One slot's bytes, as a local copy: what they mean (format.rs has the layout),
//! how they are checked, and how a bucket's tag words are searched.
//!
//! Everything here works on copies taken with atomic loads (map.rs); nothing here
//! touches the mapping.
use super::format::{FINGERPRINT_LEN, SLOTS_PER_BUCKET, SLOT_LIVE, SLOT_SEALED, VALUE_OFFSET};

/// Slots up to this size are copied onto the stack; larger ones (a rare
/// configuration) onto the heap.
const INLINE_SLOT: usize = 256;

/// A local copy of one slot.
pub(crate) struct SlotBuf {
    inline: [u8; INLINE_SLOT],
    heap: Vec<u8>,
    len: usize,
}

impl SlotBuf {
    /// A zeroed buffer for a slot of `len` bytes.
    pub(crate) fn new(len: usize) -> SlotBuf {
        SlotBuf {
            inline: [0; INLINE_SLOT],
            heap: if len > INLINE_SLOT {
                vec![0; len]
            } else {
                Vec::new()
            },
            len,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len > INLINE_SLOT {
            &self.heap
        } else {
            &self.inline[..self.len]
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len > INLINE_SLOT {
            &mut self.heap
        } else {
            &mut self.inline[..self.len]
        }
    }
}

/// A value copied out of its slot, still sealed if `sealed`.
#[derive(Debug)]
pub(crate) struct RawValue {
    pub(crate) bytes: Vec<u8>,
    pub(crate) born: u64,
    pub(crate) sealed: bool,
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

pub(crate) fn fingerprint_of(s: &[u8]) -> [u8; FINGERPRINT_LEN] {
    s[16..VALUE_OFFSET].try_into().expect("16 bytes")
}

/// A copy of an intact slot's value bytes (sealed or not) and lineage start.
pub(crate) fn raw_value(s: &[u8]) -> RawValue {
    RawValue {
        bytes: s[VALUE_OFFSET..VALUE_OFFSET + val_len(s)].to_vec(),
        born: u64::from(born_of(s)),
        sealed: is_sealed(s),
    }
}

/// Bytes the checksum covers before the value: bucket (8), slot index (1),
/// born (4), bytes 12..32 (20).
const CRC_PREFIX: usize = 8 + 1 + 4 + 20;

/// The checksum of slot `idx` of `bucket`: binds the bytes to their place, so a
/// slot copied or shifted elsewhere by a torn write does not verify.
///
/// The expiry (bytes 0..4) is not covered: it is the one field rewritten in
/// place (a resumed TLS 1.2 session's lifetime is extended), and one aligned
/// 8-byte store of word 0 cannot be torn by a crash, whereas expiry + checksum
/// could. The input is gathered into one buffer so the CRC runs over it in one
/// pass; the value is the same as feeding the pieces one by one.
pub(crate) fn slot_crc(s: &[u8], bucket: u64, idx: usize, max_value_len: usize) -> u32 {
    let n = val_len(s).min(max_value_len);
    let mut buf = [0u8; CRC_PREFIX + INLINE_SLOT - VALUE_OFFSET];
    if n > buf.len() - CRC_PREFIX {
        let mut h = crc_hasher();
        h.update(&bucket.to_le_bytes());
        h.update(&[idx as u8]);
        h.update(&s[4..8]);
        h.update(&s[12..VALUE_OFFSET]);
        h.update(&s[VALUE_OFFSET..VALUE_OFFSET + n]);
        return h.finalize();
    }
    buf[..8].copy_from_slice(&bucket.to_le_bytes());
    buf[8] = idx as u8;
    buf[9..13].copy_from_slice(&s[4..8]);
    buf[13..CRC_PREFIX].copy_from_slice(&s[12..VALUE_OFFSET]);
    buf[CRC_PREFIX..CRC_PREFIX + n].copy_from_slice(&s[VALUE_OFFSET..VALUE_OFFSET + n]);
    let mut h = crc_hasher();
    h.update(&buf[..CRC_PREFIX + n]);
    h.finalize()
}

/// A fresh CRC-32 hasher. `crc32fast::Hasher::new` detects the CPU's features on
/// every call (≈ 40 instructions, measured); a clone of one made once does not.
fn crc_hasher() -> crc32fast::Hasher {
    static PROTOTYPE: std::sync::LazyLock<crc32fast::Hasher> =
        std::sync::LazyLock::new(crc32fast::Hasher::new);
    PROTOTYPE.clone()
}

/// Whether a slot's bytes are a complete, uncorrupted live entry for its place.
pub(crate) fn slot_intact(s: &[u8], bucket: u64, idx: usize, max_value_len: usize) -> bool {
    s[14] == SLOT_LIVE
        && val_len(s) <= max_value_len
        && slot_crc(s, bucket, idx, max_value_len) == u32_at(s, 8)
}

/// What a new entry's slot holds.
pub(crate) struct Entry<'a> {
    pub(crate) fingerprint: &'a [u8; FINGERPRINT_LEN],
    pub(crate) value: &'a [u8],
    pub(crate) expires: u32,
    pub(crate) born: u32,
    pub(crate) flags: u8,
}

/// Fill `s` (a zeroed slot-sized buffer) with `e` for slot `idx` of `bucket`,
/// checksum included. Whatever is left after the value stays zero: no stale
/// secret bytes.
pub(crate) fn compose(s: &mut [u8], e: &Entry<'_>, bucket: u64, idx: usize) {
    let max = s.len() - VALUE_OFFSET;
    debug_assert!(e.value.len() <= max);
    s[0..4].copy_from_slice(&e.expires.to_le_bytes());
    s[4..8].copy_from_slice(&e.born.to_le_bytes());
    s[12..14].copy_from_slice(&(e.value.len() as u16).to_le_bytes());
    s[14] = SLOT_LIVE;
    s[15] = e.flags;
    s[16..VALUE_OFFSET].copy_from_slice(e.fingerprint);
    s[VALUE_OFFSET..VALUE_OFFSET + e.value.len()].copy_from_slice(e.value);
    reseal_place(s, bucket, idx);
}

/// Recompute the checksum of an intact slot's bytes for a new place (a
/// displacement or a migration moves them).
pub(crate) fn reseal_place(s: &mut [u8], bucket: u64, idx: usize) {
    let max = s.len() - VALUE_OFFSET;
    let crc = slot_crc(s, bucket, idx, max);
    s[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// A 16-bit tag for a fingerprint; never 0, which marks an empty slot.
pub(crate) fn tag_of(fp: &[u8; FINGERPRINT_LEN]) -> u16 {
    match u16::from_le_bytes([fp[14], fp[15]]) {
        0 => 1,
        t => t,
    }
}

/// Bit `i` set for each slot `i` whose tag is `tag`, from a bucket's tag words
/// (four 16-bit lanes per word, compared all at once).
pub(crate) fn slots_tagged(words: &[u64; SLOTS_PER_BUCKET / 4], tag: u16) -> u16 {
    const LOW: u64 = 0x7fff_7fff_7fff_7fff;
    const HIGH: u64 = 0x8000_8000_8000_8000;
    let pattern = u64::from(tag) * 0x0001_0001_0001_0001;
    let mut mask = 0u16;
    for (k, w) in words.iter().enumerate() {
        let x = w ^ pattern;
        // Bit 15 of a lane is set iff the lane is nonzero; no carry crosses lanes
        // (0x7fff + 0x7fff < 0x10000).
        let zero = !(((x & LOW) + LOW) | x) & HIGH;
        // Gather bits 15, 31, 47, 63 into bits 45..49 with one multiply: the
        // products of the four bits land on distinct positions, so nothing carries.
        let bits = ((zero >> 15).wrapping_mul(1 | 1 << 15 | 1 << 30 | 1 << 45) >> 45) & 0xf;
        mask |= (bits as u16) << (4 * k);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lanes_are_found_exactly() {
        let mut tags = [0u16; 16];
        for (i, t) in tags.iter_mut().enumerate() {
            *t = (i as u16).wrapping_mul(0x1357) | 1;
        }
        tags[3] = 0x8000;
        tags[9] = 0x8000;
        tags[12] = 0;
        tags[15] = 0xffff;
        let words: [u64; 4] = std::array::from_fn(|k| {
            (0..4).fold(0u64, |w, l| w | (u64::from(tags[4 * k + l]) << (16 * l)))
        });
        for probe in [0u16, 1, 0x8000, 0xffff, 0x7fff, tags[5], tags[0]] {
            let want = (0..16)
                .filter(|&i| tags[i] == probe)
                .fold(0u16, |m, i| m | 1 << i);
            assert_eq!(slots_tagged(&words, probe), want, "tag {probe:#x}");
        }
    }

    #[test]
    fn tag_lanes_match_a_lane_by_lane_search_on_random_buckets() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            // Few distinct tags, so equal and zero lanes are common.
            let tags: [u16; 16] =
                std::array::from_fn(|_| [0, 1, 0x8000, 0xffff, 7][(next() % 5) as usize]);
            let words: [u64; 4] = std::array::from_fn(|k| {
                (0..4).fold(0u64, |w, l| w | (u64::from(tags[4 * k + l]) << (16 * l)))
            });
            for probe in [0u16, 1, 0x8000, 0xffff, 7, 2] {
                let want = (0..16)
                    .filter(|&i| tags[i] == probe)
                    .fold(0u16, |m, i| m | 1 << i);
                assert_eq!(slots_tagged(&words, probe), want);
            }
        }
    }

    #[test]
    fn one_pass_crc_equals_the_crc_of_the_pieces() {
        for len in [0usize, 1, 55, 96, 224, 300] {
            let mut s = vec![0u8; VALUE_OFFSET + len.max(224)];
            for (i, b) in s.iter_mut().enumerate() {
                *b = (i * 7 + 3) as u8;
            }
            s[12..14].copy_from_slice(&(len as u16).to_le_bytes());
            let max = s.len() - VALUE_OFFSET;
            let mut h = crc32fast::Hasher::new();
            h.update(&77u64.to_le_bytes());
            h.update(&[5u8]);
            h.update(&s[4..8]);
            h.update(&s[12..VALUE_OFFSET]);
            h.update(&s[VALUE_OFFSET..VALUE_OFFSET + len]);
            assert_eq!(slot_crc(&s, 77, 5, max), h.finalize(), "len {len}");
        }
    }
}
