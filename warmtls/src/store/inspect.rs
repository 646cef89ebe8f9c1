//! Walking every slot of a cache file without blocking its writers: the basis of
//! `warmtls-cache stats/list/verify/purge`.
//!
//! Readers copy a bucket, then check its sequence number did not move; the
//! endpoint never waits for them. Nothing here exposes value bytes.
use super::format::{Counter, SLOTS_PER_BUCKET};
use super::slot::{
    born_of, expires_of, fingerprint_of, is_sealed, slot_intact, tag_of, val_len, SlotBuf,
};
use super::table::{erase, SessionStore};

/// What a slot holds, as seen by a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Never used or erased: no tag and every byte zero.
    Empty,
    /// Intact and unexpired: a lookup of its key would find it.
    Live,
    /// Intact but past its expiry: a miss, erased by the background sweep, a
    /// purge, a lookup of its key or a put that needs the slot.
    Expired,
    /// Corrupted: its checksum, tag or place does not verify. Lookups treat it
    /// as a miss.
    Corrupt,
    /// Left half-written by a writer that was killed inside its bucket (the
    /// bucket's lock word or sequence number still says so). Lookups treat it as
    /// a miss; the next writer to lock the bucket, or to open the file after the
    /// crash, clears it. Not damage: what a kill -9 mid-write is expected to leave.
    Torn,
}

/// One slot's metadata (never its secret bytes).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SlotInfo {
    /// Bucket index, `0..bucket_count`.
    pub bucket: u64,
    /// Slot index within the bucket, `0..SLOTS_PER_BUCKET`.
    pub index: usize,
    /// What the slot holds; the fields below are meaningful for `Live` and
    /// `Expired` slots only (zero for `Empty` ones).
    pub state: SlotState,
    /// First 8 bytes of the keyed key fingerprint, as an identifier.
    pub id: u64,
    /// Unix seconds of the lineage's full handshake.
    pub born: u64,
    /// Unix seconds when the entry expires.
    pub expires: u64,
    /// Bytes stored: with `sealed`, ciphertext and its 16-byte tag.
    pub value_len: usize,
    /// Whether the value is encrypted at rest (readable only with the key file).
    pub sealed: bool,
}

/// Totals of one scan.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ScanTotals {
    /// Slots inspected: every slot of the file except those of `busy_buckets`.
    pub slots: u64,
    /// Slots found [`SlotState::Empty`].
    pub empty: u64,
    /// Slots holding a resumable session ([`SlotState::Live`]).
    pub live: u64,
    /// Slots holding an expired entry not yet erased ([`SlotState::Expired`]).
    pub expired: u64,
    /// Slots that do not verify ([`SlotState::Corrupt`]); torn ones are in `torn`.
    pub corrupt: u64,
    /// Slots a killed writer left half-written (see [`SlotState::Torn`]).
    pub torn: u64,
    /// Live entries whose value is encrypted at rest.
    pub sealed: u64,
    /// Buckets a writer kept busy for the whole scan attempt (not inspected).
    pub busy_buckets: u64,
}

impl ScanTotals {
    fn add(&mut self, s: SlotState) {
        self.slots += 1;
        match s {
            SlotState::Empty => self.empty += 1,
            SlotState::Live => self.live += 1,
            SlotState::Expired => self.expired += 1,
            SlotState::Corrupt => self.corrupt += 1,
            SlotState::Torn => self.torn += 1,
        }
    }
}

/// How long a reader keeps retrying a bucket that writers keep changing (a writer
/// descheduled while holding the lock can keep it busy for a few milliseconds).
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

impl SessionStore {
    /// Visit every slot with a consistent snapshot of its bucket.
    pub fn scan(&self, visit: impl FnMut(&SlotInfo)) -> ScanTotals {
        self.scan_buckets(0..self.geometry().bucket_count, visit)
    }

    /// [`SessionStore::scan`] over the buckets in `range` only (clamped to the
    /// table): keys are hashed over the buckets, so any run of buckets is a fair
    /// sample of the table.
    pub fn scan_buckets(
        &self,
        range: std::ops::Range<u64>,
        mut visit: impl FnMut(&SlotInfo),
    ) -> ScanTotals {
        let geo = self.geometry();
        let now = self.now();
        let slot_size = geo.slot_size as usize;
        let max_value = geo.max_value_len();
        let map = self.mapping();
        let mut buf = vec![0u8; slot_size * SLOTS_PER_BUCKET];
        let mut totals = ScanTotals::default();
        for b in range.start..range.end.min(geo.bucket_count) {
            let mut read = None;
            let started = std::time::Instant::now();
            for attempt in 0u32.. {
                if attempt % 64 == 63 && started.elapsed() > READ_PATIENCE {
                    break;
                }
                let Some(seq) = map.read_begin_scan(&geo, b) else {
                    std::thread::yield_now();
                    continue;
                };
                let tags = map.tag_words(&geo, b);
                map.load_bytes(geo.slot_offset(b, 0), &mut buf);
                if map.read_validate_scan(&geo, b, seq) {
                    // An odd sequence number here is stale: its writer was killed.
                    read = Some((tags, seq.0 & 1 == 1));
                    break;
                }
            }
            let Some((tags, interrupted)) = read else {
                totals.busy_buckets += 1;
                continue;
            };
            for i in 0..SLOTS_PER_BUCKET {
                let tag = (tags[i / 4] >> (16 * (i % 4))) as u16;
                let s = &buf[i * slot_size..(i + 1) * slot_size];
                let mut info = self.classify(s, b, i, tag, now, max_value);
                if interrupted && info.state == SlotState::Corrupt {
                    info.state = SlotState::Torn;
                }
                totals.add(info.state);
                if info.state == SlotState::Live && info.sealed {
                    totals.sealed += 1;
                }
                visit(&info);
            }
        }
        totals
    }

    fn classify(
        &self,
        s: &[u8],
        bucket: u64,
        index: usize,
        tag: u16,
        now: u64,
        max_value: usize,
    ) -> SlotInfo {
        let fp = fingerprint_of(s);
        let state = if tag == 0 {
            if s.iter().all(|&b| b == 0) {
                SlotState::Empty
            } else {
                // Data without a tag: a put or an erase interrupted by a crash.
                SlotState::Corrupt
            }
        } else if slot_intact(s, bucket, index, max_value) && tag == tag_of(&fp) && {
            let (b1, b2) = self.buckets_of_fingerprint(&fp);
            bucket == b1 || bucket == b2
        } {
            if u64::from(expires_of(s)) <= now {
                SlotState::Expired
            } else {
                SlotState::Live
            }
        } else {
            SlotState::Corrupt
        };
        SlotInfo {
            bucket,
            index,
            state,
            id: u64::from_le_bytes(fp[..8].try_into().expect("8 bytes")),
            born: u64::from(born_of(s)),
            expires: u64::from(expires_of(s)),
            value_len: val_len(s).min(max_value),
            sealed: is_sealed(s),
        }
    }

    /// Erase expired and corrupt slots, and live ones too if `all`. Takes each
    /// bucket's lock, so it is safe while the endpoint runs. Returns the count.
    pub fn purge(&self, all: bool) -> Result<u64, super::StoreError> {
        let geo = self.geometry();
        let now = self.now();
        let max_value = geo.max_value_len();
        let mut buf = SlotBuf::new(geo.slot_size as usize);
        let mut n = 0;
        for b in 0..geo.bucket_count {
            let Some(mut g) = self.lock(b) else {
                return Err(super::StoreError::ReadOnly {
                    path: self.path().to_path_buf(),
                });
            };
            let mut here = 0;
            for i in 0..SLOTS_PER_BUCKET {
                let tag = g.tag(i);
                g.load_slot(i, buf.bytes_mut());
                let s = buf.bytes();
                if tag == 0 && s.iter().all(|&x| x == 0) {
                    continue;
                }
                let info = self.classify(s, b, i, tag, now, max_value);
                if all || info.state != SlotState::Live {
                    erase(&mut g, i);
                    here += 1;
                }
            }
            drop(g);
            self.bump_by(Counter::Purged, here);
            n += here;
        }
        self.flush()?;
        Ok(n)
    }
}
