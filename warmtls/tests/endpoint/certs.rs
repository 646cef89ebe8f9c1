//! Certificates: with an ECDSA and an RSA certificate configured, each client
//! gets the one its signature_algorithms allow; a P-256-only client (many
//! embedded stacks) is served by default; SIGHUP swaps in a new certificate
//! for new connections.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn rsa_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("rsa.cert.pem");
    let key = dir.join("rsa.key.pem");
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req made an RSA certificate");
    (cert, key)
}

#[test]
fn each_client_gets_the_certificate_its_signature_algorithms_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let (ec_cert, ec_key) = ecdsa_cert(dir.path(), "ec");
    let (rsa_cert, rsa_key) = rsa_cert(dir.path());
    let config = dir.path().join("warmtls.toml");
    std::fs::write(
        &config,
        format!(
            "[[certs]]\ncert = {ec_cert:?}\nkey = {ec_key:?}\n\n[[certs]]\ncert = {rsa_cert:?}\nkey = {rsa_key:?}\n"
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &["--config", config.to_str().unwrap()],
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let rsa = s_client(
            &server.addr(),
            &[version, "-sigalgs", "rsa_pss_rsae_sha256:RSA+SHA256"],
            GET,
        );
        assert!(
            rsa.contains("Server public key is 2048 bit") && rsa.contains("hello"),
            "{version} RSA-only client gets the RSA certificate:\n{rsa}"
        );
        let ec = s_client(
            &server.addr(),
            &[version, "-sigalgs", "ecdsa_secp256r1_sha256"],
            GET,
        );
        assert!(
            ec.contains("Server public key is 256 bit") && ec.contains("hello"),
            "{version} ECDSA client gets the ECDSA certificate:\n{ec}"
        );
    }
    // A P-256-only client: X25519 is preferred but not required.
    let p256 = s_client(&server.addr(), &["-tls1_3", "-groups", "P-256"], GET);
    assert!(
        p256.contains("hello") && p256.contains("Server Temp Key: ECDH, prime256v1"),
        "{p256}"
    );
    let x = s_client(&server.addr(), &["-tls1_3"], GET);
    assert!(x.contains("Server Temp Key: X25519"), "{x}");
}

#[test]
fn sighup_swaps_in_a_new_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let (cert, key) = ecdsa_cert(dir.path(), "live");
    let (new_cert, new_key) = ecdsa_cert(dir.path(), "next");
    let server = Server::start(
        &dir.path().join("c.cache"),
        &backend,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let trusts_new = device(&new_cert, &rustls::version::TLS13);
    assert!(
        request(&trusts_new, &server.addr(), GET).is_err(),
        "the new certificate is not served yet"
    );
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || request(
            &trusts_new,
            &server.addr(),
            GET
        )
        .is_ok_and(|(_, body)| body.ends_with(b"hello"))),
        "the new certificate is served after SIGHUP"
    );
}
