//! Session values sealed at rest, through the real `warmtls serve`: devices resume
//! across a restart with the same key; after a key rotation every device does one
//! clean full handshake and then resumes again; bad key files stop the endpoint
//! with a message that says what to do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// Run `warmtls ARGS`; (exit code, stdout, stderr).
fn warmtls(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warmtls");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keygen(path: &Path) -> (i32, String, String) {
    warmtls(&["keygen".as_ref(), path.as_os_str()])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_sessions_resume_after_a_restart_and_a_rotated_key_costs_one_full_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let keys = tempfile::tempdir().unwrap(); // apart from the cache's directory
    let (k1, k2) = (keys.path().join("k1"), keys.path().join("k2"));
    for k in [&k1, &k2] {
        let (code, _, err) = keygen(k);
        assert_eq!(code, 0, "{err}");
        let meta = std::fs::metadata(k).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_ne!(std::fs::read(&k1).unwrap(), std::fs::read(&k2).unwrap());
    // 192-byte slots: a sealed TLS 1.2 value with SNI "localhost" is 81 + 16
    // bytes, more than a 128-byte slot's 96 (see README, encryption at rest).
    let config = dir.path().join("warmtls.toml");
    std::fs::write(&config, "[cache]\nslot_size = 192\n").unwrap();
    let start = |key: &Path| {
        Server::start(
            &cache,
            &backend,
            &[
                "--config",
                config.to_str().unwrap(),
                "--cache-key",
                key.to_str().unwrap(),
            ],
        )
    };

    let mut server = start(&k1);
    let devices = mixed_devices(&server.cert_path(), 200);
    assert_eq!(round(&devices, &server.addr()), (200, 0), "prime");
    assert_eq!(round(&devices, &server.addr()), (0, 200), "all resume");
    assert!(server.stop());

    // The file holds 200 live sessions, all sealed: the server name rustls puts
    // in every value is nowhere in it, and the inspector works without the key.
    let bytes = std::fs::read(&cache).unwrap();
    assert!(
        !contains(&bytes, b"localhost"),
        "plaintext in the cache file"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .args(["stats", "--json"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["live"], 200);
    assert_eq!(st["sealed"], 200);
    let verify = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .arg("verify")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(verify.status.success());

    // Same key after a restart: every device resumes.
    let mut server = start(&k1);
    assert_eq!(round(&devices, &server.addr()), (0, 200), "same key");
    let st = server.stats();
    assert_eq!(st["store"]["decrypt_failures"], 0);
    assert!(server.stop());

    // Rotated key: each device's session is a counted miss, a full handshake
    // with no error, and the session it gets then resumes.
    let server = start(&k2);
    assert_eq!(round(&devices, &server.addr()), (200, 0), "rotated key");
    assert_eq!(round(&devices, &server.addr()), (0, 200), "new key resumes");
    let st = server.stats();
    assert_eq!(st["tls_errors"], 0);
    assert!(
        st["store"]["decrypt_failures"].as_u64().unwrap() >= 200,
        "{st}"
    );
}

#[test]
fn bad_key_files_stop_the_endpoint_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    let write = |name: &str, len: usize, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, vec![7u8; len]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let cases = [
        (dir.path().join("missing.key"), "warmtls keygen"),
        (write("short.key", 31, 0o600), "exactly 32 bytes, found 31"),
        (write("long.key", 33, 0o600), "exactly 32 bytes, found 33"),
        (write("empty.key", 0, 0o600), "exactly 32 bytes, found 0"),
        (write("open.key", 32, 0o644), "chmod 600"),
        (cache.clone(), "apart from the cache"),
    ];
    for (key, says) in &cases {
        let (code, _, err) = warmtls(&[
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
            "--cache-key".as_ref(),
            key.as_os_str(),
        ]);
        assert_ne!(code, 0, "{} accepted", key.display());
        assert!(err.contains(says), "{}: {err}", key.display());
        assert!(!cache.exists(), "the cache was opened despite a bad key");
    }
    // `check` catches it too, before anything is served.
    let config = dir.path().join("w.toml");
    let short = dir.path().join("short.key");
    std::fs::write(
        &config,
        format!("[cache]\nkey_file = {:?}\n", short.to_str().unwrap()),
    )
    .unwrap();
    let (code, _, err) = warmtls(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert_ne!(code, 0);
    assert!(err.contains("exactly 32 bytes"), "{err}");

    // keygen never overwrites a key (that would turn every session into a miss).
    let k = dir.path().join("k");
    assert_eq!(keygen(&k).0, 0);
    let before = std::fs::read(&k).unwrap();
    let (code, _, err) = keygen(&k);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&k).unwrap(), before);
}
