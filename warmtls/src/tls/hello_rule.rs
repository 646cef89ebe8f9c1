//! Which prebuilt `ServerConfig` a connection gets, decided from its ClientHello.
//!
//! rustls puts a 32-byte `ticket_nonce` in every TLS 1.3 NewSessionTicket.
//! wolfSSL keeps ticket nonces in an 8-byte buffer unless it was built with
//! `--enable-ticket-nonce-malloc` (or `TLS13_TICKET_NONCE_STATIC_SZ` ≥ 32), and
//! fails the whole connection with INVALID_PARAMETER (-425) when such a ticket
//! arrives — after the handshake, before the response. Until rustls can send a
//! shorter nonce (docs/upstream/), a client whose ClientHello matches a
//! [`TicketRule`] gets no TLS 1.3 ticket: TLS 1.2 when it offers it (session-ID
//! resumption, the cheapest reconnect), else TLS 1.3 without tickets (it
//! connects every time, and never resumes).
//!
//! rustls' own `ClientHello` view has the cipher suites but neither the
//! extension order nor `supported_versions`, and wolfSSL's TLS 1.3-only and
//! any-version hellos are identical in that view; so [`HelloFeatures`] reads
//! those from the ClientHello bytes, which rustls' `Acceptor` has already
//! checked. This module only decides: it never builds a configuration and
//! never fails a connection (a hello it cannot read gets the default).
use rustls::server::ClientHello;
use rustls::CipherSuite;

use crate::config::{RuleServes, TicketRule};

/// Extension types kept from a ClientHello, in the order sent; the rest are
/// dropped (rules only look at the first few).
const MAX_EXTENSIONS: usize = 32;
/// A ClientHello longer than this is not read (it gets the default config).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_MAX_FRAGMENT_LENGTH: u16 = 1;
const EXT_RECORD_SIZE_LIMIT: u16 = 28;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
/// Longest first PSK identity kept: our tickets are 32-byte store keys.
pub const MAX_PSK_IDENTITY: usize = 64;
/// psk_key_exchange_modes kept (there are two defined).
const MAX_PSK_MODES: usize = 4;
const TLS12: u16 = 0x0303;
const TLS13: u16 = 0x0304;

/// What a ClientHello says beyond rustls' `ClientHello` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloFeatures {
    extensions: [u16; MAX_EXTENSIONS],
    extension_count: usize,
    psk_modes: [u8; MAX_PSK_MODES],
    psk_mode_count: usize,
    /// TLS 1.2 is among the versions offered (`supported_versions`, or the
    /// legacy version when that extension is absent).
    pub offers_tls12: bool,
    pub offers_tls13: bool,
    /// RFC 6066 `max_fragment_length`, in bytes, if requested.
    pub max_fragment_length: Option<u16>,
    /// RFC 8449 `record_size_limit`, if sent.
    pub record_size_limit: Option<u16>,
    /// The client sent early data (the `early_data` extension).
    pub offers_early_data: bool,
    /// The first `pre_shared_key` identity (the only one early data can be
    /// accepted on, RFC 8446 §4.2.10): for our stateful tickets, the store key.
    psk_identity: [u8; MAX_PSK_IDENTITY],
    /// Its length; 0 when absent or longer than [`MAX_PSK_IDENTITY`].
    psk_identity_len: usize,
}

impl HelloFeatures {
    /// Read a client's first bytes on the connection (TLS records carrying the
    /// ClientHello, possibly split over several). `None` if they are not a
    /// complete, well-formed ClientHello of at most [`MAX_HELLO_BYTES`].
    pub fn parse(first_flight: &[u8]) -> Option<HelloFeatures> {
        // The handshake message: in the first record (no copy), else gathered
        // from as many records as it spans.
        let mut r = Reader(first_flight);
        if r.u8()? != HANDSHAKE {
            return None;
        }
        r.take(2)?;
        let len = usize::from(r.u16()?);
        let first = r.take(len).unwrap_or(r.0);
        if let [_, a, b, c, ..] = first[..] {
            let need = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if first.len() >= need {
                return Self::parse_message(&first[..need]);
            }
        }
        let mut message = Vec::new();
        let mut rest = first_flight;
        loop {
            let mut r = Reader(rest);
            if r.u8()? != HANDSHAKE {
                return None;
            }
            r.take(2)?;
            let len = usize::from(r.u16()?);
            message.extend_from_slice(r.take(len)?);
            rest = r.0;
            if message.len() > MAX_HELLO_BYTES + 4 {
                return None;
            }
            if let [_, a, b, c, ..] = message[..] {
                let need = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
                if message.len() >= need {
                    return Self::parse_message(&message[..need]);
                }
            }
        }
    }

    fn parse_message(message: &[u8]) -> Option<HelloFeatures> {
        let mut r = Reader(message);
        if r.u8()? != CLIENT_HELLO {
            return None;
        }
        r.take(3)?;
        let legacy_version = r.u16()?;
        r.take(32)?;
        let session_id = usize::from(r.u8()?);
        r.take(session_id)?;
        let suites = usize::from(r.u16()?);
        r.take(suites)?;
        let compression = usize::from(r.u8()?);
        r.take(compression)?;
        let mut f = HelloFeatures {
            extensions: [0; MAX_EXTENSIONS],
            extension_count: 0,
            psk_modes: [0; MAX_PSK_MODES],
            psk_mode_count: 0,
            offers_tls12: legacy_version >= TLS12,
            offers_tls13: false,
            max_fragment_length: None,
            record_size_limit: None,
            offers_early_data: false,
            psk_identity: [0; MAX_PSK_IDENTITY],
            psk_identity_len: 0,
        };
        if r.0.is_empty() {
            return Some(f); // no extensions at all
        }
        let len = usize::from(r.u16()?);
        let mut exts = Reader(r.take(len)?);
        while !exts.0.is_empty() {
            let typ = exts.u16()?;
            let len = usize::from(exts.u16()?);
            let mut data = Reader(exts.take(len)?);
            if f.extension_count < MAX_EXTENSIONS {
                f.extensions[f.extension_count] = typ;
                f.extension_count += 1;
            }
            match typ {
                EXT_SUPPORTED_VERSIONS => {
                    let n = usize::from(data.u8()?);
                    let mut list = Reader(data.take(n)?);
                    f.offers_tls12 = false;
                    while let Some(v) = list.u16() {
                        f.offers_tls12 |= v == TLS12;
                        f.offers_tls13 |= v == TLS13;
                    }
                }
                EXT_MAX_FRAGMENT_LENGTH => {
                    f.max_fragment_length = match data.u8()? {
                        code @ 1..=4 => Some(256 << code),
                        _ => None,
                    }
                }
                EXT_RECORD_SIZE_LIMIT => f.record_size_limit = Some(data.u16()?),
                EXT_EARLY_DATA => f.offers_early_data = true,
                EXT_PRE_SHARED_KEY => {
                    // identities<7..2^16-1>: identity<1..2^16-1>, obfuscated_ticket_age u32.
                    let n = usize::from(data.u16()?);
                    let mut ids = Reader(data.take(n)?);
                    let len = usize::from(ids.u16()?);
                    let id = ids.take(len)?;
                    if (1..=MAX_PSK_IDENTITY).contains(&len) {
                        f.psk_identity[..len].copy_from_slice(id);
                        f.psk_identity_len = len;
                    }
                }
                EXT_PSK_KEY_EXCHANGE_MODES => {
                    let n = usize::from(data.u8()?);
                    // The extension may come twice (rustls refuses such a hello
                    // only later, in its handshake): keep the first modes that fit.
                    let room = MAX_PSK_MODES - f.psk_mode_count;
                    for &mode in data.take(n)?.iter().take(room) {
                        f.psk_modes[f.psk_mode_count] = mode;
                        f.psk_mode_count += 1;
                    }
                }
                _ => {}
            }
        }
        Some(f)
    }

    /// The extension types, in the order the client sent them.
    pub fn extensions(&self) -> &[u16] {
        &self.extensions[..self.extension_count]
    }

    /// The psk_key_exchange_modes offered, in order (0 psk_ke, 1 psk_dhe_ke).
    pub fn psk_modes(&self) -> &[u8] {
        &self.psk_modes[..self.psk_mode_count]
    }

    /// The first `pre_shared_key` identity offered, if any (and short enough
    /// to be one of our tickets).
    pub fn first_psk_identity(&self) -> Option<&[u8]> {
        (self.psk_identity_len > 0).then(|| &self.psk_identity[..self.psk_identity_len])
    }

    /// Does `rule` describe this ClientHello?
    pub fn matches(&self, rule: &TicketRule) -> bool {
        self.extensions().starts_with(&rule.extensions_start)
            && rule
                .psk_modes
                .as_ref()
                .is_none_or(|m| self.psk_modes() == m.as_slice())
    }
}

/// A bounds-checked reader over bytes: every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Which configuration a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketPolicy {
    /// The configured behaviour (TLS 1.3 preferred, `tickets_per_handshake` tickets).
    Default,
    /// TLS 1.2 only: no TLS 1.3 ticket can be sent; resumes by session ID.
    Tls12,
    /// TLS 1.3 (or 1.2) with no TLS 1.3 ticket: connects, never resumes TLS 1.3.
    NoTls13Tickets,
}

/// The rules, and what the server can do that they depend on.
#[derive(Debug, Clone, Default)]
pub struct HelloRules {
    pub rules: Vec<TicketRule>,
    /// The TLS 1.2 cipher suites the server offers; empty: never [`TicketPolicy::Tls12`].
    pub tls12_suites: Vec<CipherSuite>,
}

impl HelloRules {
    /// No rule: every connection gets the default, and the ClientHello need not be read.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The configuration for a client, from its ClientHello: the first matching
/// rule decides; no match (or a hello [`HelloFeatures`] could not read) gets
/// [`TicketPolicy::Default`].
pub fn ticket_policy(
    hello: &ClientHello<'_>,
    features: Option<&HelloFeatures>,
    rules: &HelloRules,
) -> TicketPolicy {
    let Some(f) = features else {
        return TicketPolicy::Default;
    };
    let Some(rule) = rules.rules.iter().find(|r| f.matches(r)) else {
        return TicketPolicy::Default;
    };
    if !f.offers_tls13 {
        return TicketPolicy::Default; // no TLS 1.3, no TLS 1.3 ticket to withhold
    }
    let tls12_possible = f.offers_tls12
        && hello
            .cipher_suites()
            .iter()
            .any(|s| rules.tls12_suites.contains(s));
    match rule.serves {
        RuleServes::Tls12OrNoTickets if tls12_possible => TicketPolicy::Tls12,
        RuleServes::Tls12OrNoTickets | RuleServes::NoTls13Tickets => TicketPolicy::NoTls13Tickets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::Acceptor;

    /// Every ClientHello the interop matrix captured from the real libraries
    /// (`WARMTLS_CAPTURE_HELLOS`, see tests/endpoint/interop.rs).
    fn fixtures() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello");
        let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let name = p.file_stem().unwrap().to_str().unwrap().to_string();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        all.sort();
        assert!(all.len() > 20, "fixtures in {}", dir.display());
        all
    }

    fn rules() -> HelloRules {
        HelloRules {
            rules: vec![TicketRule::wolfssl_default()],
            tls12_suites: rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS12)
                .map(|s| s.suite())
                .collect(),
        }
    }

    /// The policy for a captured first flight, through rustls' `Acceptor` as
    /// the endpoint does it.
    fn policy_of(flight: &[u8], rules: &HelloRules) -> TicketPolicy {
        let mut acceptor = Acceptor::default();
        let mut rd = flight;
        while !rd.is_empty() && acceptor.read_tls(&mut rd).unwrap() > 0 {}
        let accepted = acceptor
            .accept()
            .map_err(|(e, _)| e)
            .unwrap()
            .expect("a complete ClientHello");
        ticket_policy(
            &accepted.client_hello(),
            HelloFeatures::parse(flight).as_ref(),
            rules,
        )
    }

    /// What each wolfSSL capture must get; every other stack's gets the default.
    fn wolfssl_expects(name: &str) -> TicketPolicy {
        use TicketPolicy::*;
        match name {
            // wolfSSLv23_client_method: TLS 1.3 and 1.2 offered.
            "wolfssl-any" | "wolfssl-any-no-rule" | "wolfssl-any-no-rule-reconnect" => Tls12,
            // Resuming its TLS 1.2 session it offers TLS 1.2 alone.
            "wolfssl-any-reconnect" => Default,
            // wolfTLSv1_2_client_method: no TLS 1.3, no ticket to withhold.
            n if n.starts_with("wolfssl-tls12") => Default,
            // wolfTLSv1_3_client_method, full or resuming (a ticket from a
            // server with 8-byte nonces), any options.
            n if n.starts_with("wolfssl-tls13") => NoTls13Tickets,
            n => panic!("no expectation for {n}"),
        }
    }

    #[test]
    fn the_default_rule_matches_wolfssl_and_no_other_captured_stack() {
        let rules = rules();
        for (name, flight) in fixtures() {
            let want = if name.starts_with("wolfssl-") {
                wolfssl_expects(&name)
            } else {
                TicketPolicy::Default
            };
            assert_eq!(policy_of(&flight, &rules), want, "{name}");
        }
    }

    /// rustls shuffles its ClientHello extensions (so do browsers): some of
    /// its hellos start with psk_key_exchange_modes, like wolfSSL's, and the
    /// default rule must still never match one (it would cost a resumption).
    #[test]
    fn shuffled_rustls_hellos_never_match_the_default_rule() {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        roots.add(cert.cert.der().clone()).unwrap();
        let cfg = std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let (mut first_is_45, rules) = (0, rules());
        for _ in 0..500 {
            let mut c = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap())
                .unwrap();
            let mut hello = Vec::new();
            c.write_tls(&mut hello).unwrap();
            let f = HelloFeatures::parse(&hello).unwrap();
            first_is_45 += usize::from(f.extensions()[0] == 45);
            assert_eq!(policy_of(&hello, &rules), TicketPolicy::Default, "{f:?}");
        }
        assert!(
            first_is_45 > 0,
            "some shuffled hellos start as wolfSSL's do"
        );
    }

    #[test]
    fn a_matched_client_gets_tls12_only_when_we_have_a_tls12_suite_in_common() {
        let flight = fixtures()
            .into_iter()
            .find(|(n, _)| n == "wolfssl-any")
            .unwrap()
            .1;
        let mut rules = rules();
        assert_eq!(policy_of(&flight, &rules), TicketPolicy::Tls12);
        rules.tls12_suites.clear(); // e.g. cipher_suites lists TLS 1.3 suites only
        assert_eq!(policy_of(&flight, &rules), TicketPolicy::NoTls13Tickets);
        rules.rules[0].serves = RuleServes::NoTls13Tickets;
        assert_eq!(policy_of(&flight, &rules), TicketPolicy::NoTls13Tickets);
        rules.rules.clear();
        assert_eq!(policy_of(&flight, &rules), TicketPolicy::Default);
    }

    #[test]
    fn features_are_read_from_the_captures() {
        let all = fixtures();
        let get = |n: &str| {
            let f = &all.iter().find(|(name, _)| name == n).unwrap().1;
            HelloFeatures::parse(f).expect(n)
        };
        let wolf = get("wolfssl-tls13-small");
        assert_eq!(wolf.extensions()[0], 45);
        assert!(wolf.offers_tls13 && !wolf.offers_tls12);
        assert_eq!(wolf.max_fragment_length, Some(4096));
        let wolf = get("wolfssl-any");
        assert!(wolf.offers_tls13 && wolf.offers_tls12);
        let wolf = get("wolfssl-any-reconnect"); // no supported_versions: TLS 1.2
        assert!(!wolf.offers_tls13 && wolf.offers_tls12);
        assert_eq!(get("mbedtls-tls12-small").max_fragment_length, Some(4096));
        // GnuTLS asks by RFC 8449 (4096 + the TLS 1.3 content type byte).
        let gnutls = get("gnutls-tls13-small");
        assert_eq!(gnutls.record_size_limit, Some(4097));
        assert_eq!(gnutls.max_fragment_length, None);
    }

    /// The same ClientHello cut into records of every size from 1 byte up reads the same.
    #[test]
    fn a_hello_split_over_records_reads_the_same() {
        let flight = fixtures()
            .into_iter()
            .find(|(n, _)| n == "wolfssl-tls13")
            .unwrap()
            .1;
        let whole = HelloFeatures::parse(&flight).unwrap();
        let len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
        let body = &flight[5..5 + len];
        for size in [1, 2, 3, 4, 5, 100, len - 1] {
            let mut split = Vec::new();
            for piece in body.chunks(size) {
                split.extend_from_slice(&[HANDSHAKE, 3, 3]);
                split.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                split.extend_from_slice(piece);
            }
            assert_eq!(
                HelloFeatures::parse(&split).as_ref(),
                Some(&whole),
                "{size}"
            );
        }
    }

    #[test]
    fn truncated_or_foreign_bytes_read_as_nothing() {
        let flight = fixtures()
            .into_iter()
            .find(|(n, _)| n == "gnutls-tls13")
            .unwrap()
            .1;
        let len = 5 + usize::from(u16::from_be_bytes([flight[3], flight[4]]));
        for cut in 0..len {
            assert_eq!(HelloFeatures::parse(&flight[..cut]), None, "cut at {cut}");
        }
        let mut not_handshake = flight.clone();
        not_handshake[0] = 23;
        assert_eq!(HelloFeatures::parse(&not_handshake), None);
        let mut not_hello = flight.clone();
        not_hello[5] = 2;
        assert_eq!(HelloFeatures::parse(&not_hello), None);
        // An extension whose length runs past the list.
        let mut bad = flight[..len].to_vec();
        let last = bad.len() - 1;
        bad[last - 2] = 0xff;
        let _ = HelloFeatures::parse(&bad); // no panic, whatever it reads
                                            // A declared message longer than we read.
        let mut huge = vec![HANDSHAKE, 3, 3, 0, 4, CLIENT_HELLO, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0; 16]);
        assert_eq!(HelloFeatures::parse(&huge), None);
    }

    /// Found by the `hello` fuzz target: a ClientHello that carries
    /// psk_key_exchange_modes twice (3 + 3 modes) once overflowed the fixed
    /// array of modes. rustls' Acceptor accepts such a hello (it refuses
    /// duplicates later, in its handshake), so it reaches this parser.
    #[test]
    fn a_repeated_psk_modes_extension_keeps_what_fits() {
        let hex: String = [
            "16030100ee010000ea03031937728d21d812421ae38d85b7cbff096d25e285c1",
            "08812abb23d966d3b740f12065b79277cef73f3ba7354e40b668ff6c4e3e8d47",
            "feea82c1dbafde07ec7d9721000813021303130100ff010000990000000e000c",
            "0000096c6f63616c686f730d001e001c040305030603080708080809080a080b",
            "080408050806040105010601002b0003020304002d0002010100330026002400",
            "1d00206aa077d7011ef8a3c3cc4a097972cd856cbd9e88f6210f9308922b0003",
            "020304002d002c16030100160301fc010003038e72de231216ee010000030319",
            "3616160301fcff0100210f930892c1f2d391d66a",
        ]
        .concat();
        let flight: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        if let Some(f) = HelloFeatures::parse(&flight) {
            assert!(f.psk_modes().len() <= MAX_PSK_MODES);
        }
        // The same built by hand: a minimal hello with the extension three times.
        let mut exts = Vec::new();
        for _ in 0..3 {
            exts.extend_from_slice(&[0x00, 0x2d, 0x00, 0x04, 0x03, 0x01, 0x00, 0x01]);
        }
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hello.extend_from_slice(&exts);
        let mut msg = vec![CLIENT_HELLO, 0];
        msg.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        msg.extend_from_slice(&hello);
        let mut record = vec![HANDSHAKE, 3, 1];
        record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        record.extend_from_slice(&msg);
        let f = HelloFeatures::parse(&record).expect("a well-formed hello");
        assert_eq!(f.psk_modes(), &[1, 0, 1, 1]);
        assert_eq!(f.extensions(), &[0x2d, 0x2d, 0x2d]);
        // Not reachable through the endpoint with today's rustls: its Acceptor
        // refuses the repeated extension before this parser runs.
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut record.as_slice()).unwrap();
        let refused = acceptor.accept().err().map(|(e, _)| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("Duplicate")),
            "{refused:?}"
        );
    }
}
