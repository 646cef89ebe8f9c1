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
//! ([`SessionCache::lineage_scope`]): `take`/`get` record the lineage start of the
//! session being resumed, and the `put` of the ticket issued later in the same
//! connection inherits it.
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use super::table::SessionStore;

/// Default cap on a chain of resumptions since its full handshake.
pub const DEFAULT_MAX_SESSION_AGE: Duration = Duration::from_secs(90 * 86_400);

thread_local! {
    /// Lineage start (unix seconds) of the connection being driven on this thread.
    static LINEAGE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// `rustls::server::StoresServerSessions` backed by the persistent store.
#[derive(Debug, Clone)]
pub struct SessionCache {
    store: Arc<SessionStore>,
    lifetime: Duration,
    max_age: Duration,
}

impl SessionCache {
    /// Sessions put through this cache stay resumable for `lifetime` unless used,
    /// and chains of resumptions for [`DEFAULT_MAX_SESSION_AGE`].
    pub fn new(store: Arc<SessionStore>, lifetime: Duration) -> SessionCache {
        SessionCache {
            store,
            lifetime,
            max_age: DEFAULT_MAX_SESSION_AGE,
        }
    }

    /// Cap chains of resumptions at `max_age` since their full handshake.
    pub fn with_max_session_age(mut self, max_age: Duration) -> SessionCache {
        self.max_age = max_age;
        self
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
    /// lineage, and keep what the store learned about it. Start with `None`.
    pub fn lineage_scope<R>(lineage: &mut Option<u64>, f: impl FnOnce() -> R) -> R {
        let outer = LINEAGE.replace(*lineage);
        let r = f();
        *lineage = LINEAGE.replace(outer);
        r
    }

    fn too_old(&self, born: u64) -> bool {
        self.store.now().saturating_sub(born) > self.max_age.as_secs()
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let born = LINEAGE.get().unwrap_or_else(|| self.store.now());
        self.store.put_with_born(&key, &value, self.lifetime, born)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (v, born) = self.store.get_refreshed(key, self.lifetime, self.max_age)?;
        LINEAGE.set(Some(born));
        Some(v)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (v, born) = self.store.take_with_born(key)?;
        if self.too_old(born) {
            return None; // taken and erased: the chain has reached max_session_age
        }
        LINEAGE.set(Some(born));
        Some(v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}
