//! `warmtls-bench hold`: what an open but idle connection costs the server.
//!
//! Opens N connections to an endpoint and holds them, either bare (TCP
//! connected, nothing sent: a device that connected and went quiet) or after
//! the ClientHello (a handshake left half-way: the server has answered with its
//! flight and waits for the device's Finished). Reports the server's resident
//! memory before and while they are held, per connection. Any TLS server works.
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use rustls::pki_types::ServerName;

use warmtls_bench::fleet::probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// TCP connected, nothing sent.
    Tcp,
    /// ClientHello sent, the server's flight left unread, no Finished.
    Hello,
}

#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// The endpoint (IP:PORT).
    #[arg(long)]
    target: SocketAddr,
    /// The server's pid, to read its resident memory.
    #[arg(long)]
    server_pid: u32,
    /// Connections to hold.
    #[arg(long, default_value_t = 6_000)]
    connections: usize,
    /// How far each connection gets before it goes quiet.
    #[arg(long, value_enum, default_value_t = Stage::Hello)]
    stage: Stage,
    /// How long to wait after the last connection before reading the memory.
    #[arg(long, value_parser = warmtls::config::parse_duration, default_value = "2s")]
    settle: Duration,
}

/// A ClientHello from a rustls client (TLS 1.3 and 1.2 offered, X25519).
fn client_hello() -> anyhow::Result<Vec<u8>> {
    #[derive(Debug)]
    struct AcceptAny;
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost")?)?;
    let mut hello = Vec::new();
    c.write_tls(&mut hello)?;
    Ok(hello)
}

pub fn main(a: HoldArgs) -> anyhow::Result<()> {
    let want = a.connections as u64 + 64;
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if soft < want {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            want.min(hard),
            hard,
        )
        .context("raising the open-file limit")?;
    }
    let hello = client_hello()?;
    let before = probe::rss_bytes(a.server_pid).context("reading the server's RSS")?;
    let mut held = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let mut s = TcpStream::connect_timeout(&a.target, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        if a.stage == Stage::Hello {
            s.write_all(&hello)?;
        }
        held.push(s);
    }
    std::thread::sleep(a.settle);
    let during = probe::rss_bytes(a.server_pid).context("reading the server's RSS")?;
    if during < before {
        bail!("the server's RSS fell while connections were held ({before} -> {during})");
    }
    let per = (during - before) as f64 / a.connections as f64;
    println!(
        "{} connections held ({:?}): server RSS {:.1} MB -> {:.1} MB, {:.0} bytes per connection",
        a.connections,
        a.stage,
        before as f64 / 1e6,
        during as f64 / 1e6,
        per
    );
    drop(held);
    Ok(())
}
