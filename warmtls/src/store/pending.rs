//! A TLS 1.3 ticket's life through the connection that redeems it.
//!
//! A stateful ticket is single use: rustls `take`s it. Erasing it at that
//! moment costs a device on a lossy link its session whenever the connection
//! dies before the replacement ticket reaches it (the radio drops after the
//! ClientHello, the server's flight is lost, the device browns out): its next
//! reconnect is a full handshake. So a take made for a connection marks the
//! entry *pending* instead ([`SessionStore::take_ticket`]): another take misses
//! while it is pending, so single use holds. The connection then settles it
//! ([`SessionStore::settle_ticket`]): erased once the device has its
//! replacement, *restored* if the connection failed first — resumable again
//! (1-RTT), with its restore count raised. A restored ticket never has early
//! data accepted again (the connection checks [`TicketState`] before it picks
//! its configuration, and a take that must be fresh misses on it), so 0-RTT
//! stays strictly single use.
//!
//! Crash safety with no recovery pass: the pending mark and the restore count
//! are flag bits of the slot, written with its checksum in one aligned 8-byte
//! store; the deadline is a u32 in the bucket header (the latest of its pending
//! slots', raised and never lowered). A process killed with tickets pending
//! leaves them marked; once their bucket's deadline passes, the next take
//! treats such a ticket as restored (count + 1, no 0-RTT). So after a kill -9
//! pending tickets are *restored*, not erased: their connections provably did
//! not complete in a process that no longer exists, and the device that held
//! the ticket still holds it. Bounds: a ticket is restored at most the
//! configured number of times (`ticket_restores`, at most
//! [`MAX_SLOT_RESTORES`]), its expiry does not move, and the lineage cap
//! (`max_session_age`) is checked at every take.
use std::time::Duration;

use super::format::{
    Counter, FINGERPRINT_LEN, MAX_SLOT_RESTORES, SLOT_PENDING, SLOT_RESTORES_MASK,
    SLOT_RESTORES_SHIFT, SLOT_SEALED,
};
use super::map::BucketGuard;
use super::slot::{raw_value, reseal_place, slot_intact, SlotBuf};
use super::table::{erase, KeyHash, Probe, SessionStore};

/// How [`SessionStore::take_ticket`] treats a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeRules {
    /// How long a taken ticket stays pending (the handshake timeout and a
    /// margin for the coarse clocks): the longest a connection may take to
    /// settle it.
    pub window: Duration,
    /// How many times a ticket may be restored; 0: a take erases (strict single
    /// use, nothing to settle).
    pub max_restores: u8,
    /// The connection may accept early data on this ticket: a ticket already
    /// restored misses rather than resume with 0-RTT.
    pub fresh_only: bool,
}

/// A ticket a connection has taken and must settle: which entry, and how many
/// times it had been restored when taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    fingerprint: [u8; FINGERPRINT_LEN],
    restores: u8,
}

impl Taken {
    /// Restored before this take: early data is never accepted on it.
    pub fn was_restored(&self) -> bool {
        self.restores > 0
    }
}

/// A stored ticket's lifecycle, as seen without taking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TicketState {
    /// Taken by a connection that has not settled it yet (or whose process died).
    pub pending: bool,
    /// Times it was restored.
    pub restores: u8,
}

impl TicketState {
    /// Whether early data may be accepted on this ticket: never taken before.
    pub fn fresh(&self) -> bool {
        !self.pending && self.restores == 0
    }
}

fn restores_of(flags: u8) -> u8 {
    (flags & SLOT_RESTORES_MASK) >> SLOT_RESTORES_SHIFT
}

/// Rewrite slot `i`'s flags (and so its checksum) in one aligned 8-byte store,
/// which a crash cannot tear. `s` is a verified copy of the slot.
fn set_flags(g: &mut BucketGuard<'_>, i: usize, s: &[u8], flags: u8) {
    let mut copy = SlotBuf::new(s.len());
    let c = copy.bytes_mut();
    c.copy_from_slice(s);
    c[15] = flags;
    reseal_place(c, g.bucket(), i);
    let word1 = u64::from_le_bytes(c[8..16].try_into().expect("8 bytes"));
    g.store_slot_word(i, 1, word1);
}

/// The flags a ticket entry carries into another file (a migration): a pending
/// mark becomes a restore, since the deadline stays behind with the old bucket.
pub(crate) fn carried_flags(flags: u8) -> u8 {
    let mut restores = restores_of(flags);
    if flags & SLOT_PENDING != 0 {
        restores = (restores + 1).min(MAX_SLOT_RESTORES);
    }
    (flags & SLOT_SEALED) | restores << SLOT_RESTORES_SHIFT
}

enum Outcome {
    Taken(super::slot::RawValue, Taken),
    Miss,
}

impl SessionStore {
    /// Take a TLS 1.3 ticket for a connection that will settle it: its value
    /// and lineage start, and — unless `rules.max_restores` is 0, which erases
    /// as [`SessionStore::take`] does — the handle to settle it with. Misses
    /// (counted) when the ticket is pending for another connection, when it was
    /// restored and `rules.fresh_only`, or when a dead connection's pending
    /// ticket has no restore left (then it is erased).
    pub fn take_ticket(
        &self,
        key: &[u8],
        rules: &TakeRules,
    ) -> Option<(Vec<u8>, u64, Option<Taken>)> {
        if rules.max_restores == 0 {
            return self.take_with_born(key).map(|(v, born)| (v, born, None));
        }
        let kh = self.key_hash(key);
        let now = self.now();
        let window =
            u32::try_from(now.saturating_add(rules.window.as_secs()).max(1)).unwrap_or(u32::MAX);
        let max = rules.max_restores.min(MAX_SLOT_RESTORES);
        let in_file = self.with_locked_entry(&kh, now, |g, i, s| {
            let flags = s[15];
            let mut restores = restores_of(flags);
            if flags & SLOT_PENDING != 0 {
                if now < u64::from(g.pending_deadline()) {
                    return Outcome::Miss; // its connection is still running
                }
                // Its connection did not settle it in time: its process
                // died. Restored, as it would have been.
                restores += 1;
                if restores > max {
                    erase(g, i);
                    return Outcome::Miss;
                }
            }
            if rules.fresh_only && restores > 0 {
                return Outcome::Miss;
            }
            let sealed = flags & SLOT_SEALED;
            set_flags(
                g,
                i,
                s,
                sealed | SLOT_PENDING | restores << SLOT_RESTORES_SHIFT,
            );
            g.raise_pending_deadline(window);
            Outcome::Taken(
                raw_value(s),
                Taken {
                    fingerprint: kh.fingerprint,
                    restores,
                },
            )
        });
        let counted_here = in_file.is_some() || self.active_predecessor().is_none();
        let found = match in_file {
            Some(Outcome::Taken(raw, taken)) => self
                .open_value(&kh, raw, false)
                .map(|(v, born)| (v, born, Some(taken))),
            Some(Outcome::Miss) => None,
            None if self.active_predecessor().is_some() => {
                // Not moved yet from the previous file of a migration: taken
                // from there as before (erased), its restores respected.
                if rules.fresh_only && !self.ticket_state(key).is_some_and(|t| t.fresh()) {
                    None
                } else {
                    self.take_with_born(key).map(|(v, born)| (v, born, None))
                }
            }
            None => None,
        };
        if counted_here {
            self.count_lookup(found.is_some());
            if found.is_some() {
                self.bump(Counter::Takes);
            }
        }
        found
    }

    /// Settle a ticket `taken` by a connection: erase it once the device has
    /// its replacement (`delivered`), else restore it — resumable again (1-RTT
    /// only) unless it has been restored `max_restores` times already, then
    /// erased. A ticket no longer pending is left alone on restore (a
    /// migration carried it, already restored).
    pub fn settle_ticket(&self, taken: &Taken, delivered: bool, max_restores: u8) {
        let kh: KeyHash = self.key_hash_of(&taken.fingerprint);
        let now = self.now();
        let max = max_restores.min(MAX_SLOT_RESTORES);
        self.with_locked_entry(&kh, now, |g, i, s| {
            let flags = s[15];
            if delivered {
                erase(g, i);
                return;
            }
            if flags & SLOT_PENDING == 0 {
                return;
            }
            let restores = restores_of(flags).max(taken.restores) + 1;
            if restores > max {
                erase(g, i);
            } else {
                set_flags(
                    g,
                    i,
                    s,
                    (flags & SLOT_SEALED) | restores << SLOT_RESTORES_SHIFT,
                );
            }
        });
    }

    /// The lifecycle of the ticket stored under `key`, without taking it
    /// (lock-free unless writers keep its buckets busy); `None` if absent. A
    /// pending ticket whose deadline has passed reads as pending: either way it
    /// is not fresh.
    pub fn ticket_state(&self, key: &[u8]) -> Option<TicketState> {
        let kh = self.key_hash(key);
        let now = self.now();
        let of = |flags: u8| TicketState {
            pending: flags & SLOT_PENDING != 0,
            restores: restores_of(flags),
        };
        let mut buf = self.slot_buf();
        let here = match self.probe(&kh, Some(&mut buf)) {
            Probe::Absent => None,
            Probe::Found { bucket, slot } => {
                let s = buf.bytes();
                if slot_intact(s, bucket, slot, self.max_value_len())
                    && u64::from(super::slot::expires_of(s)) > now
                {
                    Some(of(s[15]))
                } else {
                    None
                }
            }
            Probe::Busy => self.with_locked_entry(&kh, now, |_, _, s| of(s[15])),
        };
        here.or_else(|| {
            let p = self.active_predecessor()?;
            p.store.ticket_state(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ManualClock, StoreConfig};
    use std::sync::Arc;

    fn store(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> SessionStore {
        SessionStore::open_or_create_with_clock(
            &StoreConfig {
                path: dir.path().join("c.cache"),
                capacity: 1000,
                slot_size: 128,
            },
            clock,
        )
        .unwrap()
    }

    const RULES: TakeRules = TakeRules {
        window: Duration::from_secs(15),
        max_restores: 2,
        fresh_only: false,
    };

    #[test]
    fn carried_flags_turn_pending_into_a_restore() {
        assert_eq!(carried_flags(SLOT_SEALED), SLOT_SEALED);
        assert_eq!(carried_flags(SLOT_PENDING), 1 << SLOT_RESTORES_SHIFT);
        assert_eq!(
            carried_flags(SLOT_PENDING | SLOT_SEALED | 3 << SLOT_RESTORES_SHIFT),
            SLOT_SEALED | 3 << SLOT_RESTORES_SHIFT
        );
    }

    #[test]
    fn a_settled_restore_keeps_the_checksum_valid() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let s = store(&dir, clock);
        assert!(s.put(b"t", b"value", Duration::from_secs(3600)));
        let (_, _, t) = s.take_ticket(b"t", &RULES).unwrap();
        s.settle_ticket(&t.unwrap(), false, 2);
        assert_eq!(s.get(b"t").as_deref(), Some(&b"value"[..]));
        assert_eq!(s.counters().corrupt, 0);
    }
}
