//! What can go wrong opening or using a cache file, in words an operator can act on.
//!
//! Each message names the file, says the cause once (an OS error is part of the
//! message, not a separate `source()` that a chain printer would repeat) and
//! what to do. The store serves the endpoint, the benches and the inspector, so
//! messages name settings (the cache path, capacity), not one program's flags.
use std::path::PathBuf;

/// A cache file could not be created, opened or flushed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create cache file {path} ({io}): {hint}")]
    Create {
        path: PathBuf,
        io: std::io::Error,
        hint: String,
    },

    #[error("cannot open cache file {path}: {io}")]
    Open { path: PathBuf, io: std::io::Error },

    #[error("cache file {path} is readable or writable by group/others (mode {mode:04o}); it holds TLS resumption secrets — run `chmod 600 {path}` (or delete it)")]
    Permissions { path: PathBuf, mode: u32 },

    #[error("cache file {path} is owned by uid {owner}, but this process runs as uid {euid}; run `chown {euid} {path}` or run as its owner")]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    #[error("{path} is not a warmtls cache file (found magic {found:02x?}, expected {expected:02x?}); check the path, or delete the file if it is a damaged cache")]
    BadMagic {
        path: PathBuf,
        found: [u8; 8],
        expected: [u8; 8],
    },

    #[error("cache file {path} has format version {found}; this build reads version {expected} — delete it to start a fresh cache (sessions in it will do one full handshake)")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("cache file {path} has a damaged header ({what}); delete it to start a fresh cache")]
    BadHeader { path: PathBuf, what: String },

    #[error("cache file {path} is truncated: {found} bytes, its header says {expected}; delete it to start a fresh cache")]
    Truncated {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    #[error("cache file {path} is still being migrated from {previous} by another running warmtls process, and this one asks for yet another geometry; give it the same cache capacity and slot size as that process (it takes over the migration), or stop that process first")]
    MigrationBusy { path: PathBuf, previous: PathBuf },

    #[error("cache file {path} is open in another process (pid {pid}); `warmtls-cache migrate` works on a file nobody has open — stop that process, or change its configuration and restart it: the endpoint migrates the file by itself")]
    InUse { path: PathBuf, pid: u32 },

    #[error("invalid cache geometry: {0}")]
    InvalidConfig(String),

    #[error("cannot map cache file {path}: {io}")]
    Map { path: PathBuf, io: std::io::Error },

    #[error("cannot flush cache file {path}: {io}")]
    Flush { path: PathBuf, io: std::io::Error },

    #[error("cache file {path} is open read-only")]
    ReadOnly { path: PathBuf },

    #[error("cannot read cache key file {path}: {io}; create one with `warmtls keygen {path}` or fix --cache-key / [cache] key_file")]
    KeyFile { path: PathBuf, io: std::io::Error },

    #[error("cache key file {path} must hold exactly 32 bytes, found {found}; create a fresh one with `warmtls keygen FILE` (sessions sealed with the old key will do one full handshake)")]
    KeyFileSize { path: PathBuf, found: u64 },

    #[error("cache key file {path} is readable or writable by group/others (mode {mode:04o}); it protects TLS resumption secrets — run `chmod 600 {path}`")]
    KeyFilePermissions { path: PathBuf, mode: u32 },

    #[error("cache key file {path} is owned by uid {owner}, but this process runs as uid {euid}; run `chown {euid} {path}` or run as its owner")]
    KeyFileOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    #[error("cache key file {path} already exists; refusing to overwrite it (that would make every stored session a miss) — choose another path, or delete it first to rotate")]
    KeyFileExists { path: PathBuf },

    #[error("cache key file {path} is the cache file itself; keep the key apart from the cache (e.g. /etc/warmtls/cache.key)")]
    KeyFileIsCache { path: PathBuf },
}
