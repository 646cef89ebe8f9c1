//! The system `openssl s_client` resumes through warmtls — TLS 1.2 session IDs and
//! TLS 1.3 tickets — and the sessions it saved still resume after warmtls is
//! stopped and started again on the same cache file.
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{tempdir, EchoBackend, Endpoint};

/// One `openssl s_client` exchange; returns its stdout.
fn s_client(ep: &Endpoint, version: &str, sess_in: Option<&Path>, sess_out: &Path) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &ep.addr.to_string()])
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ep.ca())
        .arg(version)
        .arg("-ign_eof")
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
        .expect("run openssl s_client (is openssl installed?)");
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("hello from backend"),
        "s_client {version} got no backend reply:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn reused(out: &str) -> bool {
    out.lines().any(|l| l.starts_with("Reused,"))
}

#[test]
fn openssl_s_client_resumes_tls12_and_tls13_also_after_restart() {
    let dir = tempdir();
    let sess = |name: &str| dir.path().join(name);
    let backend = EchoBackend::start_replying();
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    for v in ["-tls1_2", "-tls1_3"] {
        let first = s_client(&ep, v, None, &sess(&format!("{v}.0")));
        assert!(!reused(&first), "{v}: first connection is a full handshake");
        let second = s_client(
            &ep,
            v,
            Some(&sess(&format!("{v}.0"))),
            &sess(&format!("{v}.1")),
        );
        assert!(reused(&second), "{v}: second connection resumes:\n{second}");
    }
    // The resumed TLS 1.3 connection got a fresh ticket; use it once more now, and
    // see the cheap suite was chosen.
    let out = s_client(&ep, "-tls1_3", Some(&sess("-tls1_3.1")), &sess("-tls1_3.2"));
    assert!(reused(&out), "a ticket from a resumption resumes:\n{out}");
    assert!(
        out.contains("TLS_AES_128_GCM_SHA256"),
        "AES-128 preferred:\n{out}"
    );
    // Stop and start on the same cache file: the saved sessions still resume.
    // (A TLS 1.3 ticket is single use, so the restart uses the latest one issued;
    // a TLS 1.2 session ID is reusable and s_client saves nothing new on reuse.)
    assert_eq!(ep.stop(), 0);
    let ep = Endpoint::start(dir.path(), &backend.addr_arg(), &[]);
    let v12 = s_client(&ep, "-tls1_2", Some(&sess("-tls1_2.0")), &sess("-tls1_2.2"));
    assert!(
        reused(&v12),
        "TLS 1.2 session resumes after restart:\n{v12}"
    );
    let v13 = s_client(&ep, "-tls1_3", Some(&sess("-tls1_3.2")), &sess("-tls1_3.3"));
    assert!(reused(&v13), "TLS 1.3 ticket resumes after restart:\n{v13}");
    assert_eq!(ep.stop(), 0);
}
