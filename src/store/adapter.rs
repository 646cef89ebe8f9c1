//! rustls' server session storage over the [`SessionStore`].
//!
//! rustls calls `put` after a full TLS 1.2 handshake and for every TLS 1.3 ticket
//! it issues (stateful tickets: no ticketer is configured), `get` to resume a
//! TLS 1.2 session ID, and `take` for each TLS 1.3 ticket a client offers — single
//! use, which is what makes 0-RTT replay-safe.
use std::sync::Arc;
use std::time::Duration;

use super::table::SessionStore;

/// `rustls::server::StoresServerSessions` backed by the persistent store.
#[derive(Debug, Clone)]
pub struct SessionCache {
    store: Arc<SessionStore>,
    lifetime: Duration,
}

impl SessionCache {
    /// Sessions put through this cache stay resumable for `lifetime` unless used.
    pub fn new(store: Arc<SessionStore>, lifetime: Duration) -> SessionCache {
        SessionCache { store, lifetime }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.store.put(&key, &value, self.lifetime)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}
