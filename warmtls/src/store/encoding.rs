//! Which encoding of rustls sessions a cache file holds, and whether this build
//! can read it.
//!
//! The store keeps rustls' own encoding of each session (`ServerSessionValue`)
//! for days to months, across many upgrades of the endpoint. rustls treats that
//! encoding as private, and a value its decoder rejects is only a missed
//! resumption, never an error: a rustls upgrade that changed the bytes would
//! quietly turn every stored session into a full handshake. This module makes
//! that loud. The file header records the generation of encoding its values are
//! in (format.rs, bytes 160..176); the endpoint compares it with its own at
//! start-up ([`check_at_startup`]) and says what to do when they differ; and
//! every value read through the rustls adapter that this build cannot decode is
//! counted (`undecodable`), so a collapsing resumption rate has a named cause.
//! The golden sessions in `warmtls/tests/golden/` pin this build's generation to
//! real handshakes.
//!
//! Detection only: nothing here changes or drops a value. A reader for a
//! previous generation (converting on read, see README "Upgrading warmtls")
//! would live here.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::format::{hdr, Counter};
use super::table::SessionStore;

/// A generation of the session encoding: the byte layout of the values a cache
/// file holds. Numbered by warmtls, not by rustls: a new number is taken the day
/// a rustls upgrade changes the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub u32);

impl Generation {
    /// Not recorded: the file predates the marker. Every warmtls that wrote such
    /// a file linked rustls 0.23, so its values are [`Generation::RUSTLS_0_23`].
    pub const UNRECORDED: Generation = Generation(0);
    /// rustls 0.23's `ServerSessionValue` encoding, byte for byte the same in
    /// every 0.23.x release (0.23.11 only made reading stricter).
    pub const RUSTLS_0_23: Generation = Generation(1);
    /// The generation this build writes.
    pub const THIS_BUILD: Generation = Generation::RUSTLS_0_23;

    /// Whether this build's rustls decodes values of this generation.
    pub fn readable(self) -> bool {
        self == Generation::UNRECORDED || self == Generation::RUSTLS_0_23
    }

    /// A name for logs and the inspector.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "unrecorded (rustls 0.23)",
            1 => "rustls-0.23",
            _ => "unknown to this build",
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {} ({})", self.0, self.name())
    }
}

/// The layout of one stored value, judged from its bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// rustls 0.21–0.23 (generation 1), big-endian: SNI flag (0/1) and u8-length
    /// name, version, suite, u8-length secret, EMS flag, client chain flag (and
    /// u24-length chain), ALPN flag (and u8-length protocol), u16-length
    /// application data, u64 creation time, u32 ticket age offset, nothing after.
    Rustls023,
    /// Protocol version first (0x0303 or 0x0304): how rustls' development line
    /// after 0.23 (0.24.0-dev) encodes sessions.
    VersionFirst,
    /// Neither: damaged, or an encoding this build knows nothing about.
    Unknown,
}

/// The layout this build's rustls writes and reads ([`Generation::THIS_BUILD`]).
pub const THIS_BUILD_LAYOUT: Layout = Layout::Rustls023;

impl Layout {
    /// Classify a (plaintext) stored value.
    pub fn of(value: &[u8]) -> Layout {
        if parses_as_rustls_023(value).is_some() {
            Layout::Rustls023
        } else if matches!(value, [3, 3 | 4, ..]) {
            Layout::VersionFirst
        } else {
            Layout::Unknown
        }
    }

    /// A name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Rustls023 => "rustls 0.23",
            Layout::VersionFirst => "version first, as rustls after 0.23 writes",
            Layout::Unknown => "unknown",
        }
    }
}

/// Whether this build's rustls decodes `value`, a plaintext value from the store.
pub fn readable(value: &[u8]) -> bool {
    Layout::of(value) == THIS_BUILD_LAYOUT
}

/// A big-endian reader that never panics: `None` past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    /// A u8-length-prefixed field.
    fn vec_u8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n.into())
    }
    /// A one-byte presence flag: only 0 and 1 are what rustls writes.
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// rustls 0.23.46 `ServerSessionValue::read` (msgs/persist.rs), as strict as
/// its writer: flags are 0 or 1, the version is TLS 1.2 or 1.3, nothing trails.
fn parses_as_rustls_023(value: &[u8]) -> Option<()> {
    let mut r = Cursor(value);
    if r.flag()? {
        rustls::pki_types::DnsName::try_from(r.vec_u8()?).ok()?;
    }
    if !matches!(r.u16()?, 0x0303 | 0x0304) {
        return None;
    }
    r.u16()?; // cipher suite
    r.vec_u8()?; // master secret (TLS 1.2) or resumption PSK (TLS 1.3)
    r.flag()?; // extended master secret
    if r.flag()? {
        // Client certificate chain: u24 length, then u24-length certificates.
        // rustls refuses chains over 64 KiB since 0.23.11.
        let total = r.u24()?;
        if total > 0x1_0000 {
            return None;
        }
        let mut chain = Cursor(r.take(total)?);
        while !chain.0.is_empty() {
            let n = chain.u24()?;
            chain.take(n)?;
        }
    }
    if r.flag()? {
        r.vec_u8()?; // ALPN protocol
    }
    let n = r.u16()?;
    r.take(n.into())?; // application data
    r.take(8 + 4)?; // creation time, ticket age offset
    r.0.is_empty().then_some(())
}

/// The session encoding a cache file records, next to this build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EncodingStatus {
    /// Generation of the values the file's last writer stored (0: not recorded).
    pub generation: u32,
    /// [`Generation::name`] of `generation`, for logs and the inspector.
    pub generation_name: &'static str,
    /// Whether this build decodes `generation`.
    pub readable: bool,
    /// The generation before the last change: values stored before `since` are in it.
    pub previous: u32,
    /// [`Generation::name`] of `previous`.
    pub previous_name: &'static str,
    /// Whether this build decodes `previous`; if not, values stored before
    /// `since` cannot be resumed (each one counted as `undecodable`).
    pub previous_readable: bool,
    /// Unix seconds of the last change of `generation` (0: never recorded).
    pub since: u64,
    /// The generation this build writes.
    pub this_build: u32,
    /// [`Generation::name`] of `this_build`.
    pub this_build_name: &'static str,
}

impl SessionStore {
    /// The session encoding recorded in the file, and whether this build reads it.
    pub fn encoding_status(&self) -> EncodingStatus {
        let map = self.mapping();
        let g = Generation(map.atomic_u32(hdr::ENCODING).load(Ordering::Acquire));
        let p = Generation(
            map.atomic_u32(hdr::PREVIOUS_ENCODING)
                .load(Ordering::Acquire),
        );
        EncodingStatus {
            generation: g.0,
            generation_name: g.name(),
            readable: g.readable(),
            previous: p.0,
            previous_name: p.name(),
            previous_readable: p.readable(),
            since: map.atomic_u64(hdr::ENCODING_SINCE).load(Ordering::Acquire),
            this_build: Generation::THIS_BUILD.0,
            this_build_name: Generation::THIS_BUILD.name(),
        }
    }

    /// Record that values are stored in generation `g` from now on; the one
    /// found before becomes `previous`. Nothing happens if `g` is already
    /// recorded, or the file is open read-only.
    pub fn record_encoding(&self, g: Generation) {
        let map = self.mapping();
        if !map.writable() {
            return;
        }
        let found = map.atomic_u32(hdr::ENCODING).load(Ordering::Acquire);
        if found == g.0 {
            return;
        }
        map.atomic_u32(hdr::PREVIOUS_ENCODING)
            .store(found, Ordering::Relaxed);
        map.atomic_u64(hdr::ENCODING_SINCE)
            .store(self.now(), Ordering::Relaxed);
        map.atomic_u32(hdr::ENCODING).store(g.0, Ordering::Release);
    }

    /// Count a value found in the store that this build's rustls cannot decode,
    /// and say so in the log (once per process: a fleet's worth of them would
    /// flood it; the counter has the number).
    pub(crate) fn count_undecodable(&self, value: &[u8]) {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        self.bump(Counter::Undecodable);
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path().display(),
                "a session stored in the cache is not in this build's session encoding ({}; its bytes look like: {}), so rustls cannot resume it and the device does a full handshake. Every such session is counted as store.undecodable in the stats; `warmtls-cache stats` shows which encoding the file records. See README, \"Upgrading warmtls\"",
                Generation::THIS_BUILD,
                Layout::of(value).name()
            );
        }
    }
}

/// Compare the session encoding recorded in the file with this build's, say
/// loudly if this build cannot read what the file holds, and record this build's
/// generation (the values it stores from now on). `horizon` is how long a stored
/// session may stay resumable (the session lifetime): for that long after a
/// change of generation, the file may still hold values of the previous one.
/// Returns what was found, before recording.
pub fn check_at_startup(store: &SessionStore, horizon: Duration) -> EncodingStatus {
    let found = store.encoding_status();
    let path = store.path().display();
    let this = Generation::THIS_BUILD;
    let (g, p) = (Generation(found.generation), Generation(found.previous));
    if !found.readable {
        tracing::warn!(
            "SESSION ENCODING MISMATCH: cache file {path} records {g} for its sessions (since unix time {}); this build writes and reads {this}. Its rustls cannot decode those sessions: every device holding one does a full handshake (counted as store.undecodable). If you are rolling back a warmtls upgrade, that is the expected cost of sessions stored by the newer build; otherwise stop and run the build that wrote the file, or follow README \"Upgrading warmtls\". New sessions are stored in {this}",
            found.since
        );
    } else if found.generation == Generation::UNRECORDED.0 {
        tracing::info!(
            "cache file {path} predates the session-encoding marker; its sessions are in rustls 0.23's encoding, which this build reads; recording {this}"
        );
    } else if !found.previous_readable
        && store.now() < found.since.saturating_add(horizon.as_secs())
    {
        tracing::warn!(
            "cache file {path} changed session encoding at unix time {} from {p} to {g}: sessions stored before then cannot be decoded by this build and cost one full handshake each (counted as store.undecodable) until they expire, by unix time {}",
            found.since,
            found.since.saturating_add(horizon.as_secs())
        );
    }
    store.record_encoding(this);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.3 value as rustls 0.23 writes it: no SNI, TLS13_AES_128_GCM_SHA256,
    /// 32-byte PSK, no EMS, no client chain, no ALPN, no application data.
    fn tls13_value() -> Vec<u8> {
        let mut v = vec![0, 3, 4, 0x13, 0x01, 32];
        v.extend_from_slice(&[0xAB; 32]);
        v.extend_from_slice(&[0, 0, 0, 0, 0]);
        v.extend_from_slice(&1_800_000_000u64.to_be_bytes());
        v.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        v
    }

    #[test]
    fn a_rustls_023_value_is_readable_and_every_cut_or_extension_is_not() {
        let v = tls13_value();
        assert_eq!(
            v.len(),
            55,
            "the size README gives for TLS 1.3 SHA-256 values"
        );
        assert_eq!(Layout::of(&v), Layout::Rustls023);
        for n in 0..v.len() {
            assert!(!readable(&v[..n]), "cut to {n} bytes");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(!readable(&longer), "rustls rejects trailing bytes");
    }

    #[test]
    fn sni_and_flags_are_checked_like_rustls_checks_them() {
        let mut with_sni = vec![1, 9];
        with_sni.extend_from_slice(b"localhost");
        with_sni.extend_from_slice(&tls13_value()[1..]);
        assert!(readable(&with_sni));
        let mut bad_name = with_sni.clone();
        bad_name[2] = b' ';
        assert!(!readable(&bad_name), "not a DNS name");
        let mut bad_flag = tls13_value();
        bad_flag[0] = 2;
        assert!(!readable(&bad_flag));
        let mut bad_version = tls13_value();
        bad_version[2] = 2;
        assert!(!readable(&bad_version));
    }

    #[test]
    fn a_version_first_value_is_named_as_such() {
        let mut v = vec![3, 4];
        v.extend_from_slice(&1_800_000_000u64.to_be_bytes());
        v.extend_from_slice(&[0, 0x13, 0x01, 0, 0, 0, 0, 32]);
        v.extend_from_slice(&[0xAB; 32]);
        v.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(Layout::of(&v), Layout::VersionFirst);
        assert!(!readable(&v));
        assert_eq!(Layout::of(&[]), Layout::Unknown);
        assert_eq!(Layout::of(&[7, 7, 7]), Layout::Unknown);
    }

    #[test]
    fn generations_this_build_reads() {
        assert!(Generation::UNRECORDED.readable());
        assert!(Generation::THIS_BUILD.readable());
        assert!(!Generation(2).readable());
        assert_eq!(
            Generation(2).to_string(),
            "generation 2 (unknown to this build)"
        );
    }
}
