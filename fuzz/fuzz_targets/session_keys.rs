//! The first-flight session-key parser (`conn::hello`): arbitrary bytes as the
//! records a client sends before the server speaks. Never a panic; whatever
//! keys come out are at most 32 bytes; and a ClientHello that parses gives the
//! same keys whether its records arrive whole or split into one-byte fragments.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmtls::conn::hello::{keys_of_first_flight, parse_client_hello, MAX_KEY_LEN};

fuzz_target!(|data: &[u8]| {
    // As records (the real path).
    let mut flight = data.to_vec();
    let from_records = keys_of_first_flight(&mut flight);
    if let Ok(keys) = from_records {
        for k in [keys.session_id, keys.psk].into_iter().flatten() {
            assert!(!k.as_bytes().is_empty() && k.as_bytes().len() <= MAX_KEY_LEN);
        }
    }
    // As a bare ClientHello body.
    if let Ok(keys) = parse_client_hello(data) {
        // The same body, as a handshake message in one-byte records.
        let mut msg = vec![1u8];
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(data);
        let mut records = Vec::with_capacity(msg.len() * 6);
        for b in &msg {
            records.extend_from_slice(&[22, 3, 1, 0, 1, *b]);
        }
        assert_eq!(keys_of_first_flight(&mut records), Ok(keys));
    }
});
