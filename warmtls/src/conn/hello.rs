//! The session keys in a client's first flight — the TLS 1.2 session ID and the
//! first TLS 1.3 PSK identity — which rustls' public `ClientHello` view does
//! not show, so the shared session tier can be asked for them before rustls
//! looks in its store.
//!
//! Input is a copy of the raw records the client sent before the server spoke
//! (handshake fragments, maybe followed by early data), reassembled in place.
//! It is client-controlled: this module must never panic, index out of bounds
//! or allocate on it (`fuzz/fuzz_targets/hello.rs`). It only reads what it needs
//! and trusts nothing: a ClientHello it cannot follow gives no keys, and rustls,
//! which parses the same bytes for real, decides the handshake.

/// The longest key looked up in the tier: TLS 1.2 session IDs are at most 32
/// bytes (RFC 5246 §7.4.1.2) and the tickets warmtls issues are 32-byte ids, so
/// a longer PSK identity is not ours.
pub const MAX_KEY_LEN: usize = 32;

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_MODES: u16 = 45;
const TLS13: u16 = 0x0304;
/// psk_dhe_ke, the only mode rustls resumes with (RFC 8446 §4.2.9).
const PSK_DHE_KE: u8 = 1;

/// A session ID or ticket id, inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionKey {
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

impl SessionKey {
    /// `None` if empty or longer than [`MAX_KEY_LEN`].
    pub fn new(key: &[u8]) -> Option<SessionKey> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_KEY_LEN];
        bytes[..key.len()].copy_from_slice(key);
        Some(SessionKey {
            len: key.len() as u8,
            bytes,
        })
    }

    /// The key as rustls hands it to the store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({} bytes)", self.len)
    }
}

/// What a ClientHello offers to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HelloKeys {
    /// TLS 1.3 is among the versions offered: rustls will speak it, and the
    /// legacy session ID is then only middlebox camouflage, never a key.
    pub offers_tls13: bool,
    /// The legacy session ID, if any (and not too long).
    pub session_id: Option<SessionKey>,
    /// The first PSK identity, if a psk_dhe_ke resumption is offered (the only
    /// identity early data may use, and the one rustls clients send).
    pub psk: Option<SessionKey>,
    /// The early_data extension is present: 0-RTT data follows.
    pub early_data: bool,
}

impl HelloKeys {
    /// The key the store will be asked for, and whether it is a TLS 1.3
    /// ticket (taken, single use) rather than a TLS 1.2 session ID (read).
    pub fn resumption_key(&self) -> Option<(SessionKey, bool)> {
        if self.offers_tls13 {
            self.psk.map(|k| (k, true))
        } else {
            self.session_id.map(|k| (k, false))
        }
    }
}

/// Why no keys came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The bytes end before the ClientHello does.
    Incomplete,
    /// The first message is not a ClientHello in handshake records.
    NotClientHello,
    /// A length field points outside its container.
    Malformed,
}

/// Reassemble the handshake message carried by the records in `flight` (in
/// place: record headers are squeezed out; what follows the ClientHello is
/// dropped) and read its session keys.
pub fn keys_of_first_flight(flight: &mut Vec<u8>) -> Result<HelloKeys, HelloError> {
    let message_len = reassemble(flight)?;
    parse_client_hello(&flight[4..4 + message_len])
}

/// Move the handshake fragments of the leading handshake records together at
/// the start of `buf` until the first message is whole; returns its body length.
fn reassemble(buf: &mut Vec<u8>) -> Result<usize, HelloError> {
    let mut read = 0; // next record header
    let mut write = 0; // end of reassembled handshake bytes
    loop {
        if write >= 4 {
            if buf[0] != CLIENT_HELLO {
                return Err(HelloError::NotClientHello);
            }
            let len = u24(&buf[1..4]);
            if write >= 4 + len {
                buf.truncate(4 + len);
                return Ok(len);
            }
        }
        let header = buf.get(read..read + 5).ok_or(HelloError::Incomplete)?;
        if header[0] != HANDSHAKE {
            return Err(HelloError::NotClientHello);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let body = read + 5..read + 5 + len;
        if body.end > buf.len() {
            return Err(HelloError::Incomplete);
        }
        if len == 0 {
            return Err(HelloError::Malformed); // RFC 8446 §5.1: no empty handshake fragments
        }
        buf.copy_within(body.clone(), write);
        write += len;
        read = body.end;
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over a byte slice that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(HelloError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a 2-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Read the keys out of a ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
pub fn parse_client_hello(body: &[u8]) -> Result<HelloKeys, HelloError> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.vec8()?;
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut keys = HelloKeys {
        session_id: SessionKey::new(session_id),
        ..HelloKeys::default()
    };
    if r.is_empty() {
        return Ok(keys); // a TLS 1.2 ClientHello may carry no extensions
    }
    let mut exts = Reader(r.vec16()?);
    let mut psk = None;
    let mut psk_dhe = false;
    while !exts.is_empty() {
        let typ = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match typ {
            EXT_SUPPORTED_VERSIONS => {
                let mut versions = Reader(data.vec8()?);
                while !versions.is_empty() {
                    keys.offers_tls13 |= versions.u16()? == TLS13;
                }
            }
            EXT_PSK_MODES => psk_dhe = data.vec8()?.contains(&PSK_DHE_KE),
            EXT_EARLY_DATA => keys.early_data = true,
            EXT_PRE_SHARED_KEY => {
                let mut identities = Reader(data.vec16()?);
                let first = identities.vec16()?;
                psk = SessionKey::new(first);
            }
            _ => {}
        }
    }
    if psk_dhe {
        keys.psk = psk;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with the given parts.
    fn hello(session_id: &[u8], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend([7u8; 32]);
        b.push(session_id.len() as u8);
        b.extend(session_id);
        b.extend([0, 2, 0x13, 0x01, 1, 0]);
        let mut e = Vec::new();
        for (t, d) in exts {
            e.extend(t.to_be_bytes());
            e.extend((d.len() as u16).to_be_bytes());
            e.extend(d);
        }
        b.extend((e.len() as u16).to_be_bytes());
        b.extend(e);
        b
    }

    fn versions(v: &[u16]) -> Vec<u8> {
        let mut d = vec![(v.len() * 2) as u8];
        for x in v {
            d.extend(x.to_be_bytes());
        }
        d
    }

    fn psk(identities: &[&[u8]]) -> Vec<u8> {
        let mut ids = Vec::new();
        for id in identities {
            ids.extend((id.len() as u16).to_be_bytes());
            ids.extend(*id);
            ids.extend(0u32.to_be_bytes());
        }
        let mut d = (ids.len() as u16).to_be_bytes().to_vec();
        d.extend(ids);
        d.extend([0, 33, 32]);
        d.extend([0u8; 32]);
        d
    }

    /// `body` as a handshake message split into records of at most `frag` bytes.
    fn records(body: &[u8], frag: usize) -> Vec<u8> {
        let mut msg = vec![CLIENT_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        let mut out = Vec::new();
        for c in msg.chunks(frag) {
            out.extend([HANDSHAKE, 3, 1]);
            out.extend((c.len() as u16).to_be_bytes());
            out.extend(c);
        }
        out
    }

    #[test]
    fn a_tls13_resumption_gives_its_first_psk_identity() {
        let body = hello(
            &[9u8; 32],
            &[
                (EXT_SUPPORTED_VERSIONS, versions(&[0x0304, 0x0303])),
                (EXT_PSK_MODES, vec![1, PSK_DHE_KE]),
                (EXT_EARLY_DATA, vec![]),
                (EXT_PRE_SHARED_KEY, psk(&[&[5u8; 32], &[6u8; 32]])),
            ],
        );
        for frag in [1, 7, 100, 16384] {
            let mut flight = records(&body, frag);
            flight.extend([23, 3, 3, 0, 3, 1, 2, 3]); // early data after it
            let keys = keys_of_first_flight(&mut flight).unwrap();
            assert!(keys.offers_tls13 && keys.early_data, "fragments of {frag}");
            assert_eq!(keys.psk.unwrap().as_bytes(), &[5u8; 32]);
            assert_eq!(keys.resumption_key(), Some((keys.psk.unwrap(), true)));
        }
    }

    #[test]
    fn a_tls12_hello_gives_its_session_id_and_a_tls13_one_never_does() {
        let body = hello(&[4u8; 32], &[]);
        let keys = keys_of_first_flight(&mut records(&body, 50)).unwrap();
        assert!(!keys.offers_tls13);
        assert_eq!(
            keys.resumption_key(),
            Some((SessionKey::new(&[4u8; 32]).unwrap(), false))
        );
        // TLS 1.3 offered, no PSK: the session ID is camouflage.
        let body = hello(&[4u8; 32], &[(EXT_SUPPORTED_VERSIONS, versions(&[0x0304]))]);
        assert_eq!(
            keys_of_first_flight(&mut records(&body, 50))
                .unwrap()
                .resumption_key(),
            None
        );
    }

    #[test]
    fn a_psk_without_psk_dhe_ke_or_too_long_is_not_looked_up() {
        for (modes, id) in [(vec![1, 0], vec![5u8; 32]), (vec![1, 1], vec![5u8; 33])] {
            let body = hello(
                &[],
                &[
                    (EXT_SUPPORTED_VERSIONS, versions(&[0x0304])),
                    (EXT_PSK_MODES, modes),
                    (EXT_PRE_SHARED_KEY, psk(&[&id])),
                ],
            );
            let keys = keys_of_first_flight(&mut records(&body, 16384)).unwrap();
            assert_eq!(keys.resumption_key(), None);
        }
    }

    #[test]
    fn truncated_or_foreign_bytes_give_no_keys_and_no_panic() {
        let body = hello(&[1u8; 32], &[(EXT_PRE_SHARED_KEY, psk(&[&[5u8; 32]]))]);
        let whole = records(&body, 64);
        for cut in 0..whole.len() {
            let mut part = whole[..cut].to_vec();
            assert_eq!(
                keys_of_first_flight(&mut part),
                Err(HelloError::Incomplete),
                "cut at {cut}"
            );
        }
        let mut alert = vec![21, 3, 3, 0, 2, 2, 40];
        assert_eq!(
            keys_of_first_flight(&mut alert),
            Err(HelloError::NotClientHello)
        );
        // An extension length past its block.
        let mut bad = body.clone();
        let n = bad.len();
        bad[n - 1 - 70] = 0xff;
        let _ = keys_of_first_flight(&mut records(&bad, 64));
    }
}
