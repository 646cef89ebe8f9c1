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
    #[arg(long, required_unless_present = "rustls_alone")]
    target: Option<SocketAddr>,
    /// The server's pid, to read its resident memory.
    #[arg(long, required_unless_present = "rustls_alone")]
    server_pid: Option<u32>,
    /// Measure rustls alone instead, in this process: N server connections
    /// (warmtls' rustls configuration, made from the ClientHello through an
    /// `Acceptor`, as the endpoint does) fed a ClientHello and kept, with their
    /// flight written out — what rustls itself holds per half-open handshake.
    #[arg(long)]
    rustls_alone: bool,
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

/// rustls' own memory per half-open handshake, in this process.
fn rustls_alone(a: &HoldArgs, hello: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = warmtls::config::Config::default();
    cfg.cache.path = dir.path().join("hold.cache");
    cfg.cache.capacity = 10_000;
    let store = Arc::new(warmtls::store::SessionStore::open_or_create(
        &warmtls::store::StoreConfig {
            path: cfg.cache.path.clone(),
            capacity: cfg.cache.capacity,
            slot_size: cfg.cache.slot_size,
        },
    )?);
    let resolver = Arc::new(warmtls::tls::CertResolver::new(warmtls::tls::load_certs(
        &cfg,
    )?));
    let server = warmtls::tls::server_config(&cfg, resolver, store, cfg.session_lifetime)?;
    let mut sink = Vec::with_capacity(64 * 1024);
    let mut make = || -> anyhow::Result<rustls::ServerConnection> {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd = hello;
        acceptor.read_tls(&mut rd)?;
        let accepted = acceptor
            .accept()
            .map_err(|(e, _)| e)?
            .context("a whole ClientHello")?;
        let mut conn = accepted
            .into_connection(server.clone())
            .map_err(|(e, _)| e)?;
        conn.process_new_packets()?;
        while conn.wants_write() {
            sink.clear();
            conn.write_tls(&mut sink)?;
        }
        Ok(conn)
    };
    drop(make()?); // one-time set-up out of the figure
    let before = probe::own_rss_bytes().context("reading this process's RSS")?;
    let mut held = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        held.push(make()?);
    }
    let during = probe::own_rss_bytes().context("reading this process's RSS")?;
    println!(
        "{} rustls server connections held after the ClientHello (rustls alone): RSS {:.1} MB -> {:.1} MB, {:.0} bytes per connection",
        a.connections,
        before as f64 / 1e6,
        during as f64 / 1e6,
        during.saturating_sub(before) as f64 / a.connections as f64
    );
    drop(held);
    Ok(())
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
    if a.rustls_alone {
        return rustls_alone(&a, &hello);
    }
    let (Some(target), Some(server_pid)) = (a.target, a.server_pid) else {
        bail!("--target and --server-pid are needed");
    };
    let before = probe::rss_bytes(server_pid).context("reading the server's RSS")?;
    let mut held = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        if a.stage == Stage::Hello {
            s.write_all(&hello)?;
        }
        held.push(s);
    }
    std::thread::sleep(a.settle);
    let during = probe::rss_bytes(server_pid).context("reading the server's RSS")?;
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
