//! What a session looks like in the shared tier: its key name and its value.
//!
//! Every host must derive the same name for the same session, so nothing here
//! depends on the host (the local store's keyed fingerprint uses a per-file
//! seed, which is why it cannot be reused). With a cache key (the same key file
//! on every host) the name is a keyed hash of rustls' session key and the value
//! is sealed (AES-256-GCM-SIV, random nonce, bound to the name and lineage
//! time), so a tier operator without the key sees neither the session IDs a
//! device sends nor any secret, and a value moved to another name does not
//! open. Without a key the name is the raw session ID or ticket id (both travel
//! in the clear in every ClientHello anyway) and the value is rustls' own
//! encoding: whoever can read the tier can read resumption secrets.
//!
//! Value layout: `[format][born: u64 LE]` then, for format 1, rustls' value;
//! for format 2, a 12-byte nonce and the sealed value (16-byte tag).
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV, NONCE_LEN};
use aws_lc_rs::{hkdf, hmac};

/// Length of a keyed name's hash part: 128 bits, like the local store's fingerprint.
const NAME_HASH_LEN: usize = 16;
const PLAIN: u8 = 1;
const SEALED: u8 = 2;
const HEADER: usize = 1 + 8;
/// Bytes a sealed tier value adds to rustls' value.
pub const SEALED_OVERHEAD: usize = HEADER + NONCE_LEN + 16;

/// Why a value read from the tier was not used (each one is a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a warmtls tier value")]
    Malformed,
    #[error("sealed under another key, or altered")]
    WrongKey,
    #[error("sealed, and this host has no cache key")]
    SealedWithoutKey,
    #[error("not sealed, and this host seals")]
    PlainWithKey,
}

/// Derives names and seals values; the same on every host given the same
/// prefix and cache key.
pub struct TierKeys {
    prefix: Vec<u8>,
    keyed: Option<Keyed>,
}

struct Keyed {
    name_key: hmac::Key,
    seal_key: LessSafeKey,
}

impl std::fmt::Debug for TierKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierKeys")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("sealed", &self.keyed.is_some())
            .finish()
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TierKeys {
    /// Names under `prefix`; keyed and sealed with keys derived from
    /// `cache_key` (the 32 bytes of the `--cache-key` file) when given.
    pub fn new(prefix: &str, cache_key: Option<&[u8; 32]>) -> TierKeys {
        let keyed = cache_key.map(|k| {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"warmtls session tier v1").extract(k);
            let mut name = [0u8; 32];
            let mut seal = [0u8; 32];
            prk.expand(&[b"key names"], Len(32))
                .and_then(|okm| okm.fill(&mut name))
                .expect("HKDF-SHA256 gives 32 bytes");
            prk.expand(&[b"value sealing"], Len(32))
                .and_then(|okm| okm.fill(&mut seal))
                .expect("HKDF-SHA256 gives 32 bytes");
            let keyed = Keyed {
                name_key: hmac::Key::new(hmac::HMAC_SHA256, &name),
                seal_key: LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM_SIV, &seal).expect("a 32-byte key"),
                ),
            };
            name.fill(0);
            seal.fill(0);
            keyed
        });
        TierKeys {
            prefix: prefix.as_bytes().to_vec(),
            keyed,
        }
    }

    /// Whether values are sealed.
    pub fn seals(&self) -> bool {
        self.keyed.is_some()
    }

    /// The tier's name for rustls' session key `session_key`.
    pub fn name(&self, session_key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 32);
        out.extend_from_slice(&self.prefix);
        match &self.keyed {
            Some(k) => {
                let tag = hmac::sign(&k.name_key, session_key);
                out.extend_from_slice(&tag.as_ref()[..NAME_HASH_LEN]);
            }
            None => out.extend_from_slice(session_key),
        }
        out
    }

    /// The bytes stored under `name` for rustls' `value` of lineage `born`.
    pub fn seal(&self, name: &[u8], value: &[u8], born: u64) -> Vec<u8> {
        let Some(k) = &self.keyed else {
            let mut out = Vec::with_capacity(HEADER + value.len());
            out.push(PLAIN);
            out.extend_from_slice(&born.to_le_bytes());
            out.extend_from_slice(value);
            return out;
        };
        let mut nonce = [0u8; NONCE_LEN];
        // A failing system RNG leaves the nonce zero: GCM-SIV then reveals only
        // whether two (name, born, value) triples are equal, never the key stream.
        let _ = getrandom::fill(&mut nonce);
        let mut out = Vec::with_capacity(value.len() + SEALED_OVERHEAD);
        out.push(SEALED);
        out.extend_from_slice(&born.to_le_bytes());
        out.extend_from_slice(&nonce);
        let mut body = value.to_vec();
        k.seal_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, born)),
                &mut body,
            )
            .expect("GCM-SIV seals any session value");
        out.extend_from_slice(&body);
        out
    }

    /// rustls' value and its lineage start, from what the tier holds under `name`.
    pub fn open(&self, name: &[u8], stored: &[u8]) -> Result<(Vec<u8>, u64), OpenError> {
        if stored.len() < HEADER {
            return Err(OpenError::Malformed);
        }
        let born = u64::from_le_bytes(stored[1..HEADER].try_into().expect("8 bytes"));
        let body = &stored[HEADER..];
        match (stored[0], &self.keyed) {
            (PLAIN, None) => Ok((body.to_vec(), born)),
            (PLAIN, Some(_)) => Err(OpenError::PlainWithKey),
            (SEALED, None) => Err(OpenError::SealedWithoutKey),
            (SEALED, Some(k)) => {
                if body.len() < NONCE_LEN + 16 {
                    return Err(OpenError::Malformed);
                }
                let (nonce, sealed) = body.split_at(NONCE_LEN);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
                let mut buf = sealed.to_vec();
                let n = k
                    .seal_key
                    .open_in_place(nonce, Aad::from(aad(name, born)), &mut buf)
                    .map_err(|_| OpenError::WrongKey)?
                    .len();
                buf.truncate(n);
                Ok((buf, born))
            }
            _ => Err(OpenError::Malformed),
        }
    }
}

/// Associated data of a sealed value: its name and lineage time, so neither can
/// be changed without the value failing to open.
fn aad(name: &[u8], born: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(name.len() + 8);
    a.extend_from_slice(name);
    a.extend_from_slice(&born.to_le_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_same_on_every_host_and_keyed_names_hide_the_id() {
        let a = TierKeys::new("fleet:", Some(&[7u8; 32]));
        let b = TierKeys::new("fleet:", Some(&[7u8; 32]));
        let id = [0xabu8; 32];
        assert_eq!(a.name(&id), b.name(&id));
        assert_eq!(a.name(&id).len(), 6 + NAME_HASH_LEN);
        assert!(!a.name(&id).windows(8).any(|w| w == &id[..8]));
        let other_key = TierKeys::new("fleet:", Some(&[8u8; 32]));
        assert_ne!(a.name(&id), other_key.name(&id));
        let plain = TierKeys::new("fleet:", None);
        assert_eq!(&plain.name(&id)[6..], &id[..]);
    }

    #[test]
    fn sealed_values_open_only_under_their_name_born_and_key() {
        let k = TierKeys::new("p:", Some(&[1u8; 32]));
        let name = k.name(b"session");
        let v = k.seal(&name, b"rustls value", 1_700_000_000);
        assert!(
            !v.windows(6).any(|w| w == b"rustls"),
            "no plaintext in the tier"
        );
        assert_eq!(
            k.open(&name, &v).unwrap(),
            (b"rustls value".to_vec(), 1_700_000_000)
        );
        assert_eq!(
            k.open(&k.name(b"other"), &v),
            Err(OpenError::WrongKey),
            "moved to another name"
        );
        let mut later = v.clone();
        later[1] ^= 1;
        assert_eq!(
            k.open(&name, &later),
            Err(OpenError::WrongKey),
            "another lineage"
        );
        let rotated = TierKeys::new("p:", Some(&[2u8; 32]));
        assert_eq!(rotated.open(&name, &v), Err(OpenError::WrongKey));
        let plain = TierKeys::new("p:", None);
        assert_eq!(plain.open(&name, &v), Err(OpenError::SealedWithoutKey));
        let pv = plain.seal(&name, b"x", 5);
        assert_eq!(plain.open(&name, &pv).unwrap(), (b"x".to_vec(), 5));
        assert_eq!(k.open(&name, &pv), Err(OpenError::PlainWithKey));
        assert_eq!(k.open(&name, &[9, 9]), Err(OpenError::Malformed));
    }
}
