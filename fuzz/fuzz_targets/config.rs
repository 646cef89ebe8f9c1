//! Parse and validate an arbitrary configuration file: an error or a config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = warmtls::config::Config::from_toml(text) {
            let _ = c.validate();
            let _ = c.backend_addr();
        }
    }
});
