//! Read arbitrary bytes as a client's first flight (`HelloFeatures::parse`,
//! which the endpoint runs on every ClientHello when ticket rules are
//! configured): never a panic, and what it reports is within its bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmtls::tls::hello_rule::HelloFeatures;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = HelloFeatures::parse(data) {
        assert!(f.extensions().len() <= 32);
        // A record header, a handshake header, version, random and the
        // three length bytes of the empty session ID, suites and compression.
        assert!(data.len() >= 5 + 4 + 2 + 32 + 1 + 2 + 1);
    }
});
