//! A real `openssl s_client` resumes through warmtls, TLS 1.2 and 1.3, also after
//! warmtls is stopped and started again on the same cache file.
mod endpoint_support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use endpoint_support::*;

/// Run s_client once; returns its combined output.
fn s_client(addr: &str, version: &str, sess_in: Option<&Path>, sess_out: &Path) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        version,
        "-servername",
        "localhost",
        "-ign_eof",
    ])
    .arg("-sess_out")
    .arg(sess_out);
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (install openssl)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn resumes(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, served) = responder();
    let cache = dir.path().join("c.cache");
    let s1 = dir.path().join("s1");
    let s2 = dir.path().join("s2");
    let s3 = dir.path().join("s3");
    let mut server = Server::start(&cache, &backend, &[]);
    let out = s_client(&server.addr(), version, None, &s1);
    assert!(
        out.contains("New,") && out.contains("hello"),
        "first connection is a full handshake:\n{out}"
    );
    let out = s_client(&server.addr(), version, Some(&s1), &s2);
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
    let out = s_client(&server.addr(), version, Some(latest), &s3);
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
