//! A real `openssl s_client` resumes through warmtls, TLS 1.2 and 1.3, also after
//! warmtls is stopped and started again on the same cache file.

use std::path::Path;

use crate::support::*;

/// One s_client connection writing its session to `sess_out` (resuming the one
/// in `sess_in`, if any), sending a GET; returns its combined output.
fn s_client_session(addr: &str, version: &str, sess_in: Option<&Path>, sess_out: &Path) -> String {
    let mut args = vec![version.as_ref(), "-sess_out".as_ref(), sess_out.as_os_str()];
    if let Some(p) = sess_in {
        args.extend(["-sess_in".as_ref(), p.as_os_str()]);
    }
    s_client::<&std::ffi::OsStr>(addr, &args, b"GET / HTTP/1.0\r\n\r\n")
}

fn resumes(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, served) = responder();
    let cache = dir.path().join("c.cache");
    let s1 = dir.path().join("s1");
    let s2 = dir.path().join("s2");
    let s3 = dir.path().join("s3");
    let mut server = Server::start(&cache, &backend, &[]);
    let out = s_client_session(&server.addr(), version, None, &s1);
    assert!(
        out.contains("New,") && out.contains("hello"),
        "first connection is a full handshake:\n{out}"
    );
    let out = s_client_session(&server.addr(), version, Some(&s1), &s2);
    assert!(
        out.contains("Reused,") && out.contains("hello"),
        "second connection resumes:\n{out}"
    );
    if version == "-tls1_3" {
        assert!(
            out.contains("TLS_AES_128_GCM_SHA256"),
            "the cheapest suite is preferred:\n{out}"
        );
    }
    assert!(server.stop(), "clean exit on SIGTERM");

    let server = Server::start(&cache, &backend, &[]);
    // TLS 1.3 tickets are single use: resume with the one the second connection
    // received. A TLS 1.2 session ID is reusable (s_client writes no new file).
    let latest = if s2.exists() { &s2 } else { &s1 };
    let out = s_client_session(&server.addr(), version, Some(latest), &s3);
    assert!(
        out.contains("Reused,") && out.contains("hello"),
        "resumes after the restart:\n{out}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 3);
    let st = server.stats();
    assert_eq!(st["resumed_handshakes"], 1);
}

#[test]
fn openssl_resumes_tls13_across_a_restart() {
    resumes("-tls1_3");
}

#[test]
fn openssl_resumes_tls12_across_a_restart() {
    resumes("-tls1_2");
}
