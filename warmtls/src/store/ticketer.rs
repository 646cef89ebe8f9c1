//! TLS 1.3 tickets that live up to 7 days, kept in the store: a
//! `rustls::server::ProducesTickets` whose "encryption" stores the session under a
//! random 32-byte id and hands out only the id.
//!
//! Why: rustls gives stateful TLS 1.3 tickets (no ticketer) a fixed 24 h lifetime
//! and rustls clients drop them after it, so a TLS 1.3 device that sleeps longer
//! than a day does a full handshake. With a ticketer rustls sends the ticketer's
//! lifetime instead; RFC 8446 §4.6.1 allows up to 7 days. The state still stays in
//! the store, so a ticket is single use (`decrypt` takes the entry), erased when
//! used, subject to the lineage cap (`max_session_age`), and never leaves the
//! machine — there is no ticket key to rotate or leak.
//!
//! The price: rustls refuses 0-RTT whenever a ticketer is configured (RFC 8446
//! §8.1 as rustls implements it), even though these tickets are single use.
//!
//! TLS 1.2 must not change: rustls also hands TLS 1.2 sessions to the ticketer when
//! a client offers the SessionTicket extension, and then sends the ticketer's
//! lifetime as the hint, which rustls clients apply to the session. A TLS 1.2
//! session ID has no protocol lifetime, which is what lets a TLS 1.2 device sleep
//! for months; so `encrypt` declines TLS 1.2 sessions (rustls then sends an empty
//! ticket, RFC 5077 §3.3, and the client resumes by session ID) and the lifetime
//! reported for that empty ticket is 0, "unspecified".
use std::cell::Cell;
use std::time::Duration;

use super::adapter::SessionCache;

/// The longest ticket lifetime RFC 8446 §4.6.1 allows (and rustls clients accept).
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

/// Length of a ticket id: 256 random bits, unguessable.
pub const TICKET_ID_LEN: usize = 32;

thread_local! {
    /// The lifetime of the ticket the last `encrypt` on this thread produced.
    /// rustls calls `lifetime()` right after `encrypt()` on the same connection
    /// (server/tls13.rs and server/tls12.rs `emit_ticket`), on the same thread.
    static ISSUED_LIFETIME: Cell<Option<u32>> = const { Cell::new(None) };
}

/// `ProducesTickets` over the store: ticket = random id, state = store entry.
#[derive(Debug)]
pub struct StoreTicketer {
    cache: SessionCache,
    lifetime: Duration,
}

impl StoreTicketer {
    /// Tickets issued through `cache` (TLS 1.3 sessions only), living
    /// `MAX_TICKET_LIFETIME` or the cache's session lifetime, whichever is
    /// shorter, and never past the cache's lineage cap.
    pub fn new(cache: SessionCache) -> StoreTicketer {
        let lifetime = cache.lifetime().min(MAX_TICKET_LIFETIME);
        StoreTicketer {
            cache: cache.with_lifetime(lifetime),
            lifetime,
        }
    }

    fn lifetime_secs(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }
}

/// Whether `plain` (rustls' `ServerSessionValue` encoding) is a TLS 1.2
/// session. Unparseable input counts as not TLS 1.2.
fn is_tls12_session(plain: &[u8]) -> bool {
    super::adapter::session_version(plain) == Some(rustls::ProtocolVersion::TLSv1_2)
}

impl rustls::server::ProducesTickets for StoreTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ISSUED_LIFETIME
            .take()
            .unwrap_or_else(|| self.lifetime_secs())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use rustls::server::StoresServerSessions;
        if is_tls12_session(plain) {
            // Empty ticket, unspecified lifetime: the client keeps resuming by
            // session ID, which the session cache serves with no lifetime cap.
            ISSUED_LIFETIME.set(Some(0));
            return None;
        }
        let mut id = vec![0u8; TICKET_ID_LEN];
        getrandom::fill(&mut id).ok()?;
        if !self.cache.put(id.clone(), plain.to_vec()) {
            return None;
        }
        // Never promise more than the lineage cap leaves.
        let left = self.cache.lineage_left().min(self.lifetime);
        ISSUED_LIFETIME.set(Some(u32::try_from(left.as_secs()).unwrap_or(u32::MAX)));
        Some(id)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        use rustls::server::StoresServerSessions;
        if cipher.len() != TICKET_ID_LEN {
            return None;
        }
        // Single use: the entry is erased as it is read.
        self.cache.take(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionStore, StoreConfig};
    use rustls::server::ProducesTickets;
    use std::sync::Arc;

    fn ticketer(dir: &std::path::Path, lifetime: Duration) -> StoreTicketer {
        let store = Arc::new(
            SessionStore::open_or_create(&StoreConfig {
                path: dir.join("c"),
                capacity: 64,
                slot_size: 128,
            })
            .expect("store"),
        );
        StoreTicketer::new(SessionCache::new(store, lifetime))
    }

    #[test]
    fn a_ticket_is_a_random_id_good_for_one_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ticketer(dir.path(), Duration::from_secs(90 * 86_400));
        let plain = [0u8, 3, 4, 0x13, 0x01, 42, 42, 42];
        let a = t.encrypt(&plain).expect("ticket");
        assert_eq!(t.lifetime(), 7 * 86_400, "capped at RFC 8446's 7 days");
        let b = t.encrypt(&plain).expect("ticket");
        assert_eq!(a.len(), TICKET_ID_LEN);
        assert_ne!(a, b, "ids are random");
        assert!(
            !a.windows(plain.len()).any(|w| w == plain),
            "no state in the ticket"
        );
        assert_eq!(t.decrypt(&a).as_deref(), Some(&plain[..]));
        assert_eq!(t.decrypt(&a), None, "single use");
        assert_eq!(t.decrypt(&b[..16]), None);
        assert_eq!(t.decrypt(&[7u8; TICKET_ID_LEN]), None);
    }

    #[test]
    fn tls12_sessions_get_no_ticket_and_an_unspecified_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = ticketer(dir.path(), Duration::from_secs(86_400));
        assert_eq!(t.encrypt(&[0u8, 3, 3, 0xc0, 0x2b]), None);
        assert_eq!(t.lifetime(), 0);
        assert!(t.encrypt(&[0u8, 3, 4, 0x13, 0x01]).is_some());
        assert_eq!(
            t.lifetime(),
            86_400,
            "a shorter session_lifetime caps tickets"
        );
    }

    #[test]
    fn the_session_encoding_tells_tls12_from_tls13() {
        assert!(is_tls12_session(&[0, 3, 3, 0x13]));
        assert!(!is_tls12_session(&[0, 3, 4, 0x13]));
        let mut with_sni = vec![1, 9];
        with_sni.extend_from_slice(b"localhost");
        with_sni.extend_from_slice(&[3, 3]);
        assert!(is_tls12_session(&with_sni));
        with_sni.truncate(11);
        assert!(!is_tls12_session(&with_sni));
        assert!(!is_tls12_session(&[]));
        assert!(!is_tls12_session(&[7, 3, 3]));
    }
}
