//! The PROXY protocol v2 header (haproxy.org/download/2.9/doc/proxy-protocol.txt)
//! that tells the backend who the device is and how its TLS went, sent once,
//! before any plaintext, when `proxy_protocol` is on.
//!
//! Besides the addresses it carries: the SNI (`PP2_TYPE_AUTHORITY`), the TLS
//! version and cipher suite (`PP2_TYPE_SSL`), and one warmtls byte
//! (`PP2_TYPE_WARMTLS`, from the range the spec reserves for applications):
//! whether the session was resumed, and whether the request arrived as 0-RTT
//! early data, which the device's Finished does not cover and an attacker could
//! have replayed to a server without single-use tickets (warmtls refuses such
//! replays; the flag lets a backend be stricter for non-idempotent requests).
use std::net::SocketAddr;

use rustls::{HandshakeKind, ServerConnection};

/// The v2 signature every header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const AF_UNSPEC: u8 = 0x00;
const TCP_IPV4: u8 = 0x11;
const TCP_IPV6: u8 = 0x21;
/// The SNI the client asked for.
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// TLS details, with sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_TYPE_SSL` sub-TLV: the TLS version, e.g. "TLSv1.3".
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_TYPE_SSL` sub-TLV: the cipher suite's name.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `PP2_TYPE_SSL`'s client field: the connection was made over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// warmtls' own TLV (0xE0 is the first of the application-specific types).
pub const PP2_TYPE_WARMTLS: u8 = 0xE0;
/// Flag in `PP2_TYPE_WARMTLS`: the TLS session was resumed.
pub const FLAG_RESUMED: u8 = 0x01;
/// Flag in `PP2_TYPE_WARMTLS`: the request arrived as 0-RTT early data.
pub const FLAG_EARLY_DATA: u8 = 0x02;

/// What the header says about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo<'a> {
    /// The device's address, and ours as it connected to (`None` when the
    /// socket could not tell, e.g. already reset).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The server name the device asked for.
    pub sni: Option<&'a str>,
    /// "TLSv1.2" or "TLSv1.3".
    pub tls_version: Option<&'static str>,
    /// The negotiated cipher suite's IANA name.
    pub cipher: Option<&'static str>,
    /// The session was resumed (0-RTT included).
    pub resumed: bool,
    /// The first bytes arrived as 0-RTT early data.
    pub early_data: bool,
}

impl<'a> ProxyInfo<'a> {
    /// What a connection's TLS state says (called when the backend connect
    /// starts: the handshake is done, or a 0-RTT one is far enough along that
    /// the version, suite and resumption are decided).
    pub fn of(
        tls: &'a ServerConnection,
        addresses: Option<(SocketAddr, SocketAddr)>,
        early_data: bool,
    ) -> ProxyInfo<'a> {
        ProxyInfo {
            addresses,
            sni: tls.server_name(),
            tls_version: tls.protocol_version().and_then(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
                rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
                _ => None,
            }),
            cipher: tls
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str()),
            // A 0-RTT connection is resumed by definition, before rustls says so.
            resumed: early_data || tls.handshake_kind() == Some(HandshakeKind::Resumed),
            early_data,
        }
    }

    /// Append the header to `out` (no allocation beyond `out`'s own growth).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SIGNATURE);
        out.push(VERSION_PROXY);
        let family_at = out.len();
        out.push(AF_UNSPEC);
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let body_at = out.len();
        let family = match self.addresses {
            Some((SocketAddr::V4(src), SocketAddr::V4(dst))) => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
                TCP_IPV4
            }
            Some((SocketAddr::V6(src), SocketAddr::V6(dst))) => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
                TCP_IPV6
            }
            // Unknown or mixed families: the receiver ignores the addresses.
            _ => AF_UNSPEC,
        };
        out[family_at] = family;
        if let Some(sni) = self.sni {
            tlv(out, PP2_TYPE_AUTHORITY, sni.as_bytes());
        }
        // PP2_TYPE_SSL: client flags, "verify" (zero only when a client
        // certificate was verified; there is none), then sub-TLVs.
        out.push(PP2_TYPE_SSL);
        let ssl_len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let ssl_at = out.len();
        out.push(PP2_CLIENT_SSL);
        out.extend_from_slice(&1u32.to_be_bytes());
        if let Some(v) = self.tls_version {
            tlv(out, PP2_SUBTYPE_SSL_VERSION, v.as_bytes());
        }
        if let Some(c) = self.cipher {
            tlv(out, PP2_SUBTYPE_SSL_CIPHER, c.as_bytes());
        }
        patch_len(out, ssl_len_at, ssl_at);
        let flags = if self.resumed { FLAG_RESUMED } else { 0 }
            | if self.early_data { FLAG_EARLY_DATA } else { 0 };
        tlv(out, PP2_TYPE_WARMTLS, &[flags]);
        // Bounded: SNI ≤ 255 bytes (rustls' limit on a DNS name), the rest fixed.
        patch_len(out, len_at, body_at);
    }

    /// The header bytes on their own.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out);
        out
    }
}

/// Write the length of `out[from..]` as a big-endian u16 at `at`.
fn patch_len(out: &mut [u8], at: usize, from: usize) {
    let len = (out.len() - from) as u16;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let info = ProxyInfo {
            addresses: Some((
                "10.1.2.3:40000".parse().unwrap(),
                "192.0.2.1:443".parse().unwrap(),
            )),
            sni: Some("localhost"),
            tls_version: Some("TLSv1.3"),
            cipher: Some("TLS13_AES_128_GCM_SHA256"),
            resumed: true,
            early_data: true,
        };
        let h = info.encode();
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[192, 0, 2, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 443);
        assert_eq!(&h[28..31], &[PP2_TYPE_AUTHORITY, 0, 9]);
        assert_eq!(&h[31..40], b"localhost");
        assert_eq!(&h[h.len() - 4..], &[PP2_TYPE_WARMTLS, 0, 1, 0x03]);
    }

    #[test]
    fn unknown_addresses_are_af_unspec() {
        let info = ProxyInfo {
            addresses: None,
            sni: None,
            tls_version: None,
            cipher: None,
            resumed: false,
            early_data: false,
        };
        let h = info.encode();
        assert_eq!(h[13], 0x00);
        // SSL TLV (client + verify) and the warmtls flags.
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 3 + 5 + 4);
    }
}
