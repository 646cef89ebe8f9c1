//! Encryption at rest of session values: AES-256-GCM-SIV under a key kept in its
//! own file, apart from the cache.
//!
//! A slot has no room for a random nonce next to rustls' 55–104-byte values, so
//! the nonce is derived from the slot's key fingerprint and lineage time. GCM-SIV
//! is built for that: a repeated nonce reveals only that two identical
//! (value, fingerprint, born) triples were sealed, never the key stream. The
//! fingerprint and born time are the associated data, so a sealed value moved to
//! another key's slot, or given another lineage, does not open. A value that does
//! not open (the key was rotated, or the bytes were altered) is a miss, never an
//! error: the device does one full handshake.
//!
//! This module must never write the key anywhere but the key file it creates.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV, NONCE_LEN};

use super::error::StoreError;
use super::format::FINGERPRINT_LEN;
use super::NotPrivate;

/// Bytes of a value key file.
pub const VALUE_KEY_LEN: usize = 32;
/// Bytes a sealed value takes beyond its plaintext (the GCM-SIV tag).
pub const SEAL_OVERHEAD: usize = 16;

/// The key that seals session values at rest.
pub struct ValueKey {
    aead: LessSafeKey,
}

impl std::fmt::Debug for ValueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueKey(..)")
    }
}

impl ValueKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; VALUE_KEY_LEN]) -> ValueKey {
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, bytes).expect("a 32-byte AES-256 key");
        ValueKey {
            aead: LessSafeKey::new(unbound),
        }
    }

    /// Read the key file at `path`: exactly 32 bytes, mode 0600 (no group/other
    /// access), owned by this user (or read by root), like the cache file.
    pub fn load(path: &Path) -> Result<ValueKey, StoreError> {
        let err = |source| StoreError::KeyFile {
            path: path.to_path_buf(),
            io: source,
        };
        let mut file = File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(StoreError::KeyFileSize {
                path: path.to_path_buf(),
                found: meta.len(),
            });
        }
        super::check_private(&meta, true).map_err(|e| match e {
            NotPrivate::Mode(mode) => StoreError::KeyFilePermissions {
                path: path.to_path_buf(),
                mode,
            },
            NotPrivate::Owner { owner, euid } => StoreError::KeyFileOwner {
                path: path.to_path_buf(),
                owner,
                euid,
            },
        })?;
        let mut buf = Vec::with_capacity(VALUE_KEY_LEN + 1);
        (&mut file)
            .take(VALUE_KEY_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(err)?;
        let Ok(mut bytes) = <[u8; VALUE_KEY_LEN]>::try_from(buf.as_slice()) else {
            buf.fill(0);
            return Err(StoreError::KeyFileSize {
                path: path.to_path_buf(),
                found: meta.len(),
            });
        };
        buf.fill(0);
        let key = ValueKey::from_bytes(&bytes);
        bytes.fill(0);
        Ok(key)
    }

    /// Create a new key file at `path` holding 32 random bytes, mode 0600. Never
    /// overwrites: an existing file is an error (rotating is choosing a new file,
    /// or deleting the old one first).
    pub fn generate(path: &Path) -> Result<(), StoreError> {
        let err = |source| StoreError::KeyFile {
            path: path.to_path_buf(),
            io: source,
        };
        let mut bytes = [0u8; VALUE_KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::KeyFileExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    err(source)
                }
            })?;
        let written = file.write_all(&bytes).and_then(|_| file.sync_all());
        bytes.fill(0);
        if let Err(source) = written {
            let _ = std::fs::remove_file(path);
            return Err(err(source));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Seal `value` for the entry with fingerprint `fp` and lineage start `born`
    /// into `out` (ciphertext, then tag). `out` must hold `value.len() + SEAL_OVERHEAD`.
    pub(crate) fn seal(&self, fp: &[u8; FINGERPRINT_LEN], born: u32, value: &[u8], out: &mut [u8]) {
        let n = value.len();
        debug_assert_eq!(out.len(), n + SEAL_OVERHEAD);
        out[..n].copy_from_slice(value);
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce(fp, born), Aad::from(aad(fp, born)), &mut out[..n])
            .expect("GCM-SIV sealing of a slot-sized value cannot fail");
        out[n..].copy_from_slice(tag.as_ref());
    }

    /// Open a sealed value in place; `None` if it was sealed under another key,
    /// for another entry, or altered. On success the plaintext is `sealed[..len - 16]`.
    pub(crate) fn open<'a>(
        &self,
        fp: &[u8; FINGERPRINT_LEN],
        born: u32,
        sealed: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        self.aead
            .open_in_place(nonce(fp, born), Aad::from(aad(fp, born)), sealed)
            .ok()
    }
}

/// The nonce of an entry: 8 bytes of its fingerprint and its lineage time. Unique
/// per key and lineage in practice; GCM-SIV tolerates a repeat (see module docs).
fn nonce(fp: &[u8; FINGERPRINT_LEN], born: u32) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&fp[..8]);
    n[8..].copy_from_slice(&born.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Associated data: what the value belongs to (format version, fingerprint, born).
fn aad(fp: &[u8; FINGERPRINT_LEN], born: u32) -> [u8; 1 + FINGERPRINT_LEN + 4] {
    let mut a = [0u8; 1 + FINGERPRINT_LEN + 4];
    a[0] = super::format::VERSION as u8;
    a[1..1 + FINGERPRINT_LEN].copy_from_slice(fp);
    a[1 + FINGERPRINT_LEN..].copy_from_slice(&born.to_le_bytes());
    a
}

/// Refuse a key file that is the cache file itself: the key must live apart.
pub fn check_key_apart(key_file: &Path, cache: &Path) -> Result<(), StoreError> {
    let same = match (
        std::fs::canonicalize(key_file),
        std::fs::canonicalize(cache),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => key_file == cache,
    };
    if same {
        return Err(StoreError::KeyFileIsCache {
            path: PathBuf::from(key_file),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_only_for_its_key_fingerprint_and_born() {
        let k = ValueKey::from_bytes(&[7; 32]);
        let other = ValueKey::from_bytes(&[8; 32]);
        let fp = [1u8; 16];
        let value = b"a session secret of some length".to_vec();
        let mut sealed = vec![0u8; value.len() + SEAL_OVERHEAD];
        k.seal(&fp, 100, &value, &mut sealed);
        assert!(!sealed.windows(8).any(|w| value.windows(8).any(|v| v == w)));
        let open = |key: &ValueKey, fp: &[u8; 16], born: u32, flip: Option<usize>| {
            let mut s = sealed.clone();
            if let Some(i) = flip {
                s[i] ^= 1;
            }
            key.open(fp, born, &mut s).map(|p| p.to_vec())
        };
        assert_eq!(open(&k, &fp, 100, None), Some(value.clone()));
        assert_eq!(open(&other, &fp, 100, None), None);
        assert_eq!(open(&k, &[2u8; 16], 100, None), None);
        assert_eq!(open(&k, &fp, 101, None), None);
        for i in [0, value.len() - 1, value.len(), sealed.len() - 1] {
            assert_eq!(open(&k, &fp, 100, Some(i)), None, "flipped byte {i}");
        }
    }
}
