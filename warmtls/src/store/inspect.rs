//! Walking every slot of a cache file without blocking its writers: the basis of
//! `warmtls-cache stats/list/verify/purge`.
//!
//! Readers copy a bucket, then check its sequence number did not move; the
//! endpoint never waits for them. Nothing here exposes value bytes.
use super::format::Counter;
use super::format::{SLOTS_PER_BUCKET, SLOT_META_SIZE, VALUE_OFFSET};
use super::table::{
    born_of, erase, expires_of, is_sealed, slot_intact, tag_of, val_len, SessionStore,
};

/// What a slot holds, as seen by a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Empty,
    Live,
    Expired,
    /// Torn by a crash or corrupted: its checksum, tag or place does not verify.
    /// Lookups treat it as a miss.
    Corrupt,
}

/// One slot's metadata (never its secret bytes).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SlotInfo {
    pub bucket: u64,
    pub index: usize,
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
    pub slots: u64,
    pub empty: u64,
    pub live: u64,
    pub expired: u64,
    pub corrupt: u64,
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
        let mut tags = [0u16; SLOTS_PER_BUCKET];
        let mut totals = ScanTotals::default();
        for b in range.start..range.end.min(geo.bucket_count) {
            let mut ok = false;
            let started = std::time::Instant::now();
            for attempt in 0u32.. {
                if attempt % 64 == 63 && started.elapsed() > READ_PATIENCE {
                    break;
                }
                let Some(seq) = map.read_begin_scan(&geo, b) else {
                    std::thread::yield_now();
                    continue;
                };
                let hoff = geo.bucket_header_offset(b);
                for (i, t) in tags.iter_mut().enumerate() {
                    *t = map
                        .atomic_u16(hoff + 8 + 2 * i)
                        .load(std::sync::atomic::Ordering::Relaxed);
                }
                map.read_volatile(geo.slot_offset(b, 0), &mut buf);
                if map.read_validate_scan(&geo, b, seq) {
                    ok = true;
                    break;
                }
            }
            if !ok {
                totals.busy_buckets += 1;
                continue;
            }
            for (i, tag) in tags.iter().enumerate() {
                let s = &buf[i * slot_size..(i + 1) * slot_size];
                let info = self.classify(s, b, i, *tag, now, max_value);
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
        let fp: [u8; 16] = s[SLOT_META_SIZE..VALUE_OFFSET]
            .try_into()
            .expect("16 bytes");
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
        let mut n = 0;
        for b in 0..geo.bucket_count {
            let Some(mut g) = self.lock(b) else {
                return Err(super::StoreError::ReadOnly {
                    path: self.path().to_path_buf(),
                });
            };
            let mut here = 0;
            for i in 0..SLOTS_PER_BUCKET {
                let s = g.slot(i);
                let tag = g.tag(i);
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
            self.bump_by(b, Counter::Purged, here);
            n += here;
        }
        self.flush()?;
        Ok(n)
    }
}
