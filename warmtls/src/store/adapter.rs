//! rustls' server session storage over the [`SessionStore`].
//!
//! rustls calls `put` after a full TLS 1.2 handshake and for every TLS 1.3 ticket
//! it issues (stateful tickets: no ticketer is configured), `get` to resume a
//! TLS 1.2 session ID, and `take` for each TLS 1.3 ticket a client offers — single
//! use, which is what makes 0-RTT replay-safe.
//!
//! Lineage (RFC 8446 §4.6.1): a chain of resumptions that began with one full
//! handshake stays resumable only until `max_session_age`, while each resumption
//! refreshes `session_lifetime`. rustls gives the store no connection context, so
//! the connection driver lends it for the duration of each call into rustls
//! ([`SessionCache::ticket_scope`]): `take`/`get` record the lineage start of the
//! session being resumed, and the `put` of the ticket issued later in the same
//! connection inherits it.
//!
//! A TLS 1.3 ticket taken inside a connection's scope is not erased but marked
//! pending (pending.rs): the connection settles it — erased once the device has
//! its replacement, restored (1-RTT only) if the connection failed first. The
//! adapter leaves the ticket it took in the scope ([`TicketScope::taken`]);
//! rustls calls `take` synchronously on the thread driving the connection, so
//! the connection finds it there as soon as the call into rustls returns. A take
//! outside any scope (tools, tests of the adapter alone) erases as before.
//!
//! A value handed back to rustls that its decoder will reject (another session
//! encoding: a rustls upgrade changed it) would be a silent full handshake; it is
//! counted as `undecodable` first (encoding.rs), and handed back all the same.
//!
//! With a second level shared by several hosts ([`SessionMirror`], the Redis
//! tier) every session rustls puts here is also handed to it, a TLS 1.3 ticket
//! taken from here is also removed there, and a TLS 1.2 session read here is
//! written there again with a fresh expiry — never waiting for it. What the connection
//! already settled with the tier before rustls looked (the tier removed the
//! ticket itself, or refreshed the session while fetching it) is not repeated
//! ([`SessionCache::tier_scope`]). Sessions fetched from the tier come in
//! through [`SessionCache::adopt`], which writes this store only.
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use super::pending::{TakeRules, Taken, TicketState};
use super::table::SessionStore;

/// Default for how many times a TLS 1.3 ticket whose connection failed is
/// restored (`ticket_restores`).
pub const DEFAULT_TICKET_RESTORES: u8 = 2;

/// How long past the handshake timeout a taken ticket stays pending: the store's
/// clock counts whole seconds and the worker's timer wheel is coarse, so the
/// connection settles its ticket well before another take could see it as
/// abandoned.
pub const PENDING_MARGIN: Duration = Duration::from_secs(5);

/// What a connection lends the store for the duration of each call into its
/// rustls state (see [`SessionCache::ticket_scope`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TicketScope {
    /// Start of the session lineage being resumed (`None`: a full handshake).
    pub lineage: Option<u64>,
    /// The TLS 1.3 ticket this connection took and must settle.
    pub taken: Option<Taken>,
    /// The connection's configuration accepts early data: a ticket taken for it
    /// must never have been used before (a restored one misses instead).
    pub early_data: bool,
    /// The connection will settle the ticket it takes (its driver can reach the
    /// store); if not, a take erases, as strict single use.
    pub settles: bool,
}

/// Default cap on a chain of resumptions since its full handshake.
pub const DEFAULT_MAX_SESSION_AGE: Duration = Duration::from_secs(90 * 86_400);

/// How long a stateful TLS 1.3 ticket is kept: rustls announces stateful tickets
/// with a fixed 24-hour `ticket_lifetime` and clients do not offer them after
/// that, so keeping one for the whole `session_lifetime` (months, for TLS 1.2
/// devices' sake) would only fill the table with orphans. One hour of slack for
/// clocks.
pub const STATEFUL_TLS13_TICKET_TTL: Duration = Duration::from_secs(25 * 3600);

/// The protocol version of a session as rustls encodes it for the store
/// (`ServerSessionValue`: an SNI flag, the SNI if flagged, then the version);
/// `None` if the bytes do not parse that far.
pub(crate) fn session_version(value: &[u8]) -> Option<rustls::ProtocolVersion> {
    let at = match value.first()? {
        0 => 1,
        1 => 2 + usize::from(*value.get(1)?),
        _ => return None,
    };
    let v = value.get(at..at + 2)?;
    Some(rustls::ProtocolVersion::from(u16::from_be_bytes([
        v[0], v[1],
    ])))
}

thread_local! {
    /// Lineage start (unix seconds) of the connection being driven on this thread.
    static LINEAGE: Cell<Option<u64>> = const { Cell::new(None) };
    /// The session key the connection being driven has already settled with the
    /// shared tier (length, bytes; length 0: none).
    static TIER_SETTLED: Cell<(u8, [u8; SETTLED_KEY_MAX])> = const { Cell::new((0, [0; SETTLED_KEY_MAX])) };
    /// The ticket taken for the connection being driven on this thread.
    static TAKEN: Cell<Option<Taken>> = const { Cell::new(None) };
    /// 0: no connection is being driven (a take erases); 1: one is; 2: one is
    /// and its configuration accepts early data.
    static SCOPE: Cell<u8> = const { Cell::new(0) };
}

/// Longest session key [`SessionCache::tier_scope`] remembers (TLS 1.2 session
/// IDs and warmtls' ticket ids are 32 bytes).
const SETTLED_KEY_MAX: usize = 32;

/// A second level behind the store, shared by several hosts: told about what
/// rustls does here, it must never block (queue, and drop what does not fit).
pub trait SessionMirror: std::fmt::Debug + Send + Sync {
    /// rustls stored `value` under `key`, for `ttl`, of lineage `born`.
    fn put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration, born: u64);
    /// rustls took (redeemed) the TLS 1.3 ticket `key` from this host's store.
    fn taken(&self, key: &[u8]);
    /// rustls resumed the TLS 1.2 session `key` (`value`, of lineage `born`)
    /// from this host's store, which now keeps it for `ttl` more.
    fn read(&self, key: &[u8], value: &[u8], ttl: Duration, born: u64);
}

/// `rustls::server::StoresServerSessions` backed by the persistent store.
#[derive(Debug, Clone)]
pub struct SessionCache {
    store: Arc<SessionStore>,
    lifetime: Duration,
    max_age: Duration,
    /// Cap on the lifetime of TLS 1.3 sessions put here (stateful tickets).
    tls13_ttl: Option<Duration>,
    /// The shared tier, if several hosts share sessions.
    mirror: Option<Arc<dyn SessionMirror>>,
    /// How many times a ticket whose connection failed is restored (0: a take
    /// erases, strict single use).
    restores: u8,
    /// How long a taken ticket stays pending.
    pending_window: Duration,
}

impl SessionCache {
    /// Sessions put through this cache stay resumable for `lifetime` unless used,
    /// and chains of resumptions for [`DEFAULT_MAX_SESSION_AGE`].
    pub fn new(store: Arc<SessionStore>, lifetime: Duration) -> SessionCache {
        SessionCache {
            store,
            lifetime,
            max_age: DEFAULT_MAX_SESSION_AGE,
            tls13_ttl: None,
            mirror: None,
            restores: DEFAULT_TICKET_RESTORES,
            pending_window: Duration::from_secs(10) + PENDING_MARGIN,
        }
    }

    /// Mirror what rustls does here into a shared second level.
    pub fn with_mirror(mut self, mirror: Arc<dyn SessionMirror>) -> SessionCache {
        self.mirror = Some(mirror);
        self
    }

    /// The same cache without its mirror (what the tier itself writes through).
    pub fn without_mirror(mut self) -> SessionCache {
        self.mirror = None;
        self
    }

    /// How long a session put now would be kept (TLS 1.3 tickets are capped
    /// when this cache holds stateful tickets).
    pub fn ttl_for(&self, value: &[u8]) -> Duration {
        match self.tls13_ttl {
            Some(cap) if session_version(value) == Some(rustls::ProtocolVersion::TLSv1_3) => {
                self.lifetime.min(cap)
            }
            _ => self.lifetime,
        }
    }

    /// Store a session fetched from the shared tier in this host's store only,
    /// with its lineage start, for as long as a put would keep it.
    pub fn adopt(&self, key: &[u8], value: &[u8], born: u64) -> bool {
        self.store
            .put_with_born(key, value, self.ttl_for(value), born)
    }

    /// Whether this host's store holds a live session under `key` (a probe:
    /// nothing copied, nothing counted).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.store.contains(key)
    }

    /// Run `f` (rustls looking up a resumption) knowing that the connection
    /// has already settled `key` with the shared tier: a take or read of that
    /// key in `f` is not mirrored again.
    pub fn tier_scope<R>(settled: Option<&[u8]>, f: impl FnOnce() -> R) -> R {
        let mut mark = (0u8, [0u8; SETTLED_KEY_MAX]);
        if let Some(k) = settled.filter(|k| k.len() <= SETTLED_KEY_MAX) {
            mark.0 = k.len() as u8;
            mark.1[..k.len()].copy_from_slice(k);
        }
        let outer = TIER_SETTLED.replace(mark);
        let r = f();
        TIER_SETTLED.set(outer);
        r
    }

    /// The mirror, unless the connection already settled `key` with it.
    fn mirror_for(&self, key: &[u8]) -> Option<&Arc<dyn SessionMirror>> {
        let mirror = self.mirror.as_ref()?;
        let (len, bytes) = TIER_SETTLED.get();
        let settled = len > 0 && &bytes[..usize::from(len)] == key;
        (!settled).then_some(mirror)
    }

    /// Keep TLS 1.3 sessions (rustls' stateful tickets) only
    /// `STATEFUL_TLS13_TICKET_TTL` (25 hours), whatever the session lifetime: for the
    /// cache rustls puts stateful tickets in, not for a ticketer's.
    pub fn with_stateful_ticket_cap(mut self) -> SessionCache {
        self.tls13_ttl = Some(STATEFUL_TLS13_TICKET_TTL);
        self
    }

    /// Cap chains of resumptions at `max_age` since their full handshake.
    pub fn with_max_session_age(mut self, max_age: Duration) -> SessionCache {
        self.max_age = max_age;
        self
    }

    /// Restore a TLS 1.3 ticket whose connection failed up to `restores` times
    /// (0: a take erases it); a taken ticket stays pending for the connection's
    /// `handshake_timeout` (and [`PENDING_MARGIN`]).
    pub fn with_ticket_restores(
        mut self,
        restores: u8,
        handshake_timeout: Duration,
    ) -> SessionCache {
        self.restores = restores;
        self.pending_window = handshake_timeout + PENDING_MARGIN;
        self
    }

    /// How many times a ticket is restored.
    pub fn ticket_restores(&self) -> u8 {
        self.restores
    }

    /// Settle the ticket a connection took: erase it once the device has its
    /// replacement (`delivered`), else restore it (see pending.rs).
    pub fn settle(&self, taken: &Taken, delivered: bool) {
        self.store.settle_ticket(taken, delivered, self.restores);
    }

    /// The lifecycle of the ticket `key`, without taking it.
    pub fn ticket_state(&self, key: &[u8]) -> Option<TicketState> {
        self.store.ticket_state(key)
    }

    /// How long an unused session stays resumable.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The same cache with another session lifetime.
    pub fn with_lifetime(mut self, lifetime: Duration) -> SessionCache {
        self.lifetime = lifetime;
        self
    }

    /// What the lineage cap leaves of the connection being driven on this thread
    /// (all of `max_session_age` for a full handshake).
    pub fn lineage_left(&self) -> Duration {
        let now = self.store.now();
        let born = LINEAGE.get().unwrap_or(now);
        self.max_age
            .saturating_sub(Duration::from_secs(now.saturating_sub(born)))
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }

    /// Run `f` (a call into one connection's rustls state) with that connection's
    /// lineage and ticket, and keep what the store learned about them. Start
    /// with the default.
    pub fn ticket_scope<R>(scope: &mut TicketScope, f: impl FnOnce() -> R) -> R {
        let outer_lineage = LINEAGE.replace(scope.lineage);
        let outer_taken = TAKEN.replace(scope.taken);
        let outer_scope = SCOPE.replace(match (scope.settles, scope.early_data) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        });
        let r = f();
        scope.lineage = LINEAGE.replace(outer_lineage);
        scope.taken = TAKEN.replace(outer_taken);
        SCOPE.set(outer_scope);
        r
    }

    /// Count a value rustls is about to be handed but will not decode.
    fn check_encoding(&self, value: &[u8]) {
        if !super::encoding::readable(value) {
            self.store.count_undecodable(value);
        }
    }

    fn too_old(&self, born: u64) -> bool {
        self.store.now().saturating_sub(born) > self.max_age.as_secs()
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let born = LINEAGE.get().unwrap_or_else(|| self.store.now());
        let ttl = self.ttl_for(&value);
        let stored = self.store.put_with_born(&key, &value, ttl, born);
        if let Some(m) = &self.mirror {
            // Even if the local put failed (too large for a slot): the tier
            // has room, and another host may be able to hold it.
            m.put(key, value, ttl, born);
        }
        stored
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (v, born) = self.store.get_refreshed(key, self.lifetime, self.max_age)?;
        LINEAGE.set(Some(born));
        self.check_encoding(&v);
        if let Some(m) = self.mirror_for(key) {
            m.read(key, &v, self.lifetime, born);
        }
        Some(v)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let scope = SCOPE.get();
        let rules = TakeRules {
            window: self.pending_window,
            // No connection to settle it: erase, as single use requires.
            max_restores: if scope == 0 { 0 } else { self.restores },
            fresh_only: scope == 2,
        };
        let (v, born, taken) = self.store.take_ticket(key, &rules)?;
        if let Some(m) = self.mirror_for(key) {
            m.taken(key);
        }
        if self.too_old(born) {
            if let Some(t) = taken {
                self.store.settle_ticket(&t, true, self.restores);
            }
            return None; // erased: the chain has reached max_session_age
        }
        if let Some(t) = taken {
            if let Some(passed_over) = TAKEN.replace(Some(t)) {
                // rustls went on to another identity of the same ClientHello:
                // the one it took before is not used by this connection.
                self.store.settle_ticket(&passed_over, false, self.restores);
            }
        }
        LINEAGE.set(Some(born));
        self.check_encoding(&v);
        Some(v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ManualClock, StoreConfig};
    use rustls::server::StoresServerSessions;

    #[test]
    fn the_version_is_read_past_an_optional_sni() {
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(session_version(&[0, 3, 4, 0xaa]), Some(TLSv1_3));
        assert_eq!(
            session_version(&[1, 3, b'a', b'b', b'c', 3, 3]),
            Some(TLSv1_2)
        );
        assert_eq!(session_version(&[1, 9, b'a']), None);
        assert_eq!(session_version(&[7, 3, 3]), None);
        assert_eq!(session_version(&[]), None);
    }

    #[test]
    fn stateful_tls13_tickets_expire_after_a_day_and_tls12_sessions_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let store = Arc::new(
            SessionStore::open_or_create_with_clock(
                &StoreConfig {
                    path: dir.path().join("c.cache"),
                    capacity: 100,
                    slot_size: 128,
                },
                clock.clone(),
            )
            .unwrap(),
        );
        let cache =
            SessionCache::new(store, Duration::from_secs(90 * 86_400)).with_stateful_ticket_cap();
        let tls13 = vec![0, 3, 4, 1, 2, 3];
        let tls12 = vec![0, 3, 3, 1, 2, 3];
        assert!(cache.put(b"ticket".to_vec(), tls13.clone()));
        assert!(cache.put(b"session-id".to_vec(), tls12.clone()));
        clock.advance(24 * 3600);
        assert_eq!(cache.store().get(b"ticket"), Some(tls13));
        clock.advance(2 * 3600);
        assert_eq!(
            cache.take(b"ticket"),
            None,
            "a day-old stateful ticket is gone"
        );
        clock.advance(60 * 86_400);
        assert_eq!(
            cache.get(b"session-id"),
            Some(tls12),
            "TLS 1.2 lives its 90 days"
        );
    }
}
