//! The session store: a hash table in a memory-mapped, file-backed cache that every
//! core and every process opening the file share.
//!
//! Opening it is an `mmap` and a header check — no load phase — so a restarted
//! endpoint resumes its devices' sessions at once. The file format is in
//! [`mod@format`], the only raw-memory code in `map` (private), the table logic in
//! [`SessionStore`], rustls' side in [`SessionCache`] (and [`StoreTicketer`] for
//! 7-day TLS 1.3 tickets), background flush and sweep in [`Flusher`], the
//! non-blocking walk the inspector uses in [`inspect`], and optional encryption
//! at rest of the values in [`ValueKey`], and which rustls session encoding the
//! file's values are in, in [`encoding`].
//!
//! The store must never return a value it cannot verify (per-slot checksums), never
//! leave a secret behind in a slot it gives up (take, expiry and eviction zero the
//! bytes), and never let a client-chosen key aim at one bucket (keyed hash).
#![deny(missing_docs)]

mod adapter;
mod clock;
pub mod encoding;
mod error;
mod flusher;
pub mod format;
pub mod inspect;
mod map;
mod migrate;
mod pending;
mod seal;
mod slot;
mod table;
mod ticketer;

pub use adapter::{
    SessionCache, SessionMirror, TicketScope, DEFAULT_MAX_SESSION_AGE, DEFAULT_TICKET_RESTORES,
    PENDING_MARGIN, STATEFUL_TLS13_TICKET_TTL,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use encoding::{EncodingStatus, Generation, Layout};
pub use error::StoreError;
pub use flusher::Flusher;
pub use format::Geometry;
pub use inspect::{ScanTotals, SlotInfo, SlotState};
pub use migrate::{open_elsewhere, previous_file_of, MigrationReport, MigrationState};
pub use pending::{TakeRules, Taken, TicketState};
pub use seal::{check_key_apart, ValueKey, SEAL_OVERHEAD, VALUE_KEY_LEN};
pub use table::{Access, Counters, SessionStore, StoreConfig, DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE};
pub use ticketer::{StoreTicketer, MAX_TICKET_LIFETIME, TICKET_ID_LEN};

/// Why a file that holds secrets (the cache, the value key) is not private enough.
pub(crate) enum NotPrivate {
    /// Group or others have some access: the file's permission bits.
    Mode(u32),
    /// Another user owns it: the owner and our effective uid.
    Owner { owner: u32, euid: u32 },
}

/// The one check for the cache file and the value key file: no access for group
/// or others, and (when `must_own`, unless we are root) owned by this user.
pub(crate) fn check_private(meta: &std::fs::Metadata, must_own: bool) -> Result<(), NotPrivate> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(NotPrivate::Mode(mode));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if must_own && euid != 0 && meta.uid() != euid {
        return Err(NotPrivate::Owner {
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}
