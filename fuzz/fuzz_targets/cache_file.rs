//! Open an arbitrary cache file and read every slot: never a panic, never a value
//! whose checksum does not hold.
#![no_main]
use std::os::unix::fs::PermissionsExt;

use libfuzzer_sys::fuzz_target;
use warmtls::store::{format, Access, SessionStore, StoreConfig};

/// A valid, empty file of one bucket (made once: creating a store syncs to disk).
fn template() -> &'static [u8] {
    static T: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("t"),
            capacity: 14,
            slot_size: 128,
        };
        drop(SessionStore::open_or_create(&cfg).unwrap());
        std::fs::read(&cfg.path).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    // Half the inputs are whole files; the other half keep a valid header so the
    // fuzzer reaches the bucket and slot parsing.
    let bytes = if data.first().is_some_and(|b| b & 1 == 0) {
        data[1..].to_vec()
    } else {
        let mut file = template().to_vec();
        let body = &data[data.len().min(1)..];
        let start = format::HEADER_SIZE;
        let n = body.len().min(file.len() - start);
        file[start..start + n].copy_from_slice(&body[..n]);
        file
    };
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Ok(s) = SessionStore::open_existing(&path, Access::ReadOnly) {
        s.scan(|_| {});
        for k in 0u8..32 {
            let _ = s.get(&[k; 32]);
        }
    }
});
