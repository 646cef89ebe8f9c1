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
    /// The new cache file (or a migration's new file) could not be written,
    /// sized or linked into place; nothing half-written is left behind.
    #[error("cannot create cache file {path} ({io}): {hint}")]
    Create {
        /// The cache path the file was meant to appear at.
        path: PathBuf,
        /// The OS error from creating, reserving space for, syncing or linking it.
        io: std::io::Error,
        /// What to do about `io` (directory permissions, read-only filesystem,
        /// free space needed in MiB, missing directory), chosen from its errno.
        hint: String,
    },

    /// An existing cache file (or its `.prev` file during a migration) could
    /// not be opened, stat'ed, read, locked, linked or removed.
    #[error("cannot open cache file {path}: {io}")]
    Open {
        /// The file the operation failed on (may be the `<path>.prev` file).
        path: PathBuf,
        /// The OS error (e.g. permission denied on the file or its directory).
        io: std::io::Error,
    },

    /// The cache file grants group or others some access; it is refused before
    /// it is mapped, for read-only opens too.
    #[error("cache file {path} is readable or writable by group/others (mode {mode:04o}); it holds TLS resumption secrets — run `chmod 600 {path}` (or delete it)")]
    Permissions {
        /// The cache file.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },

    /// Another user owns the cache file and it was opened for writing by a
    /// process that is not root (read-only opens do not check the owner).
    #[error("cache file {path} is owned by uid {owner}, but this process runs as uid {euid}; run `chown {euid} {path}` or run as its owner")]
    Owner {
        /// The cache file.
        path: PathBuf,
        /// The file's owner uid.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },

    /// The file's first eight bytes are not the cache magic: most likely the
    /// cache path names some other file, which is left untouched.
    #[error("{path} is not a warmtls cache file (found magic {found:02x?}, expected {expected:02x?}); check the path, or delete the file if it is a damaged cache")]
    BadMagic {
        /// The file that was opened.
        path: PathBuf,
        /// Its first eight bytes.
        found: [u8; 8],
        /// [`super::format::MAGIC`].
        expected: [u8; 8],
    },

    /// The file was written in another format version; this build neither
    /// reads nor converts it.
    #[error("cache file {path} has format version {found}; this build reads version {expected} — delete it to start a fresh cache (sessions in it will do one full handshake)")]
    Version {
        /// The cache file.
        path: PathBuf,
        /// The version in its header.
        found: u32,
        /// [`super::format::VERSION`].
        expected: u32,
    },

    /// The header has the right magic and version but fails its CRC-32, or
    /// describes a layout this build cannot use.
    #[error("cache file {path} has a damaged header ({what}); delete it to start a fresh cache")]
    BadHeader {
        /// The cache file.
        path: PathBuf,
        /// Which check failed: the checksum, or the layout fields as found.
        what: String,
    },

    /// The file is shorter than its header page, or its length differs from
    /// the one its geometry gives (e.g. an interrupted copy of the file).
    #[error("cache file {path} is truncated: {found} bytes, its header says {expected}; delete it to start a fresh cache")]
    Truncated {
        /// The cache file.
        path: PathBuf,
        /// Its length in bytes.
        found: u64,
        /// The length in bytes it must have (the header page size if the header
        /// itself is missing).
        expected: u64,
    },

    /// A migration cannot be finished now because another process still has
    /// its previous file open, so entries may not move out of it yet.
    #[error("cache file {path} is still being migrated from {previous} by another running warmtls process, and this one asks for yet another geometry; give it the same cache capacity and slot size as that process (it takes over the migration), or stop that process first")]
    MigrationBusy {
        /// The cache file (the migration's new file).
        path: PathBuf,
        /// The migration's previous file, `<path>.prev` (empty if already gone).
        previous: PathBuf,
    },

    /// An offline migration was asked for while another process holds a flock
    /// on the cache file or its `.prev` file.
    #[error("cache file {path} is open in another process (pid {pid}); `warmtls-cache migrate` works on a file nobody has open — stop that process, or change its configuration and restart it: the endpoint migrates the file by itself")]
    InUse {
        /// The cache file.
        path: PathBuf,
        /// One process holding it, from `/proc/locks`; 0 when unknown (no procfs,
        /// or a process in another pid namespace).
        pid: u32,
    },

    /// [`super::StoreConfig::validate`] refused the configured capacity or slot
    /// size, before any file was touched; the text names the value and its range.
    #[error("invalid cache geometry: {0}")]
    InvalidConfig(String),

    /// `mmap` of the whole file failed: e.g. `ENOMEM` under an address-space
    /// limit (`ulimit -v`), or a filesystem that cannot be mapped.
    #[error("cannot map cache file {path}: {io}")]
    Map {
        /// The cache file.
        path: PathBuf,
        /// The OS error from `mmap`.
        io: std::io::Error,
    },

    /// `msync` of the mapping failed, so recent writes may not have reached the
    /// disk; look for an I/O error of the device underneath (kernel log).
    #[error("cannot flush cache file {path}: {io}")]
    Flush {
        /// The cache file.
        path: PathBuf,
        /// The OS error from `msync`.
        io: std::io::Error,
    },

    /// A write (a purge) was asked of a store opened with
    /// [`super::Access::ReadOnly`]; reopen it read-write.
    #[error("cache file {path} is open read-only")]
    ReadOnly {
        /// The cache file.
        path: PathBuf,
    },

    /// The value key file could not be opened, read or (by `keygen`) written;
    /// the endpoint does not start without the key it is configured with.
    #[error("cannot read cache key file {path}: {io}; create one with `warmtls keygen {path}` or fix --cache-key / [cache] key_file")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The OS error (or the random source's, when generating).
        io: std::io::Error,
    },

    /// The key file is not a regular file of exactly
    /// [`super::VALUE_KEY_LEN`] bytes.
    #[error("cache key file {path} must hold exactly 32 bytes, found {found}; create a fresh one with `warmtls keygen FILE` (sessions sealed with the old key will do one full handshake)")]
    KeyFileSize {
        /// The key file.
        path: PathBuf,
        /// Its length in bytes, as `stat` reports it.
        found: u64,
    },

    /// The key file grants group or others some access; refused before it is read.
    #[error("cache key file {path} is readable or writable by group/others (mode {mode:04o}); it protects TLS resumption secrets — run `chmod 600 {path}`")]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },

    /// Another user owns the key file and this process is not root.
    #[error("cache key file {path} is owned by uid {owner}, but this process runs as uid {euid}; run `chown {euid} {path}` or run as its owner")]
    KeyFileOwner {
        /// The key file.
        path: PathBuf,
        /// The file's owner uid.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },

    /// `keygen` was pointed at a path that already exists; the old key is kept.
    #[error("cache key file {path} already exists; refusing to overwrite it (that would make every stored session a miss) — choose another path, or delete it first to rotate")]
    KeyFileExists {
        /// The existing file.
        path: PathBuf,
    },

    /// The configured key file resolves to the cache file (see
    /// [`super::check_key_apart`]); a key stored beside what it seals protects nothing.
    #[error("cache key file {path} is the cache file itself; keep the key apart from the cache (e.g. /etc/warmtls/cache.key)")]
    KeyFileIsCache {
        /// The key file path as configured.
        path: PathBuf,
    },
}
