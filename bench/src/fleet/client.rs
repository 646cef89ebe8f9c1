//! The devices' rustls client configurations: one per protocol version, all
//! sharing the fleet's [`DeviceTable`] as their session store.
//!
//! Devices are low-bandwidth: X25519 is the only key exchange offered in TLS 1.3
//! (no post-quantum share inflating the ClientHello). TLS 1.2 devices also list
//! P-256: in TLS 1.2 the client's group list also says which ECDSA certificate
//! curves it accepts, and OpenSSL servers (nginx, HAProxy) refuse a P-256
//! certificate to a client that lists X25519 alone. X25519 still comes first.
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::devices::DeviceTable;
use super::FleetError;

/// How the devices check the server's certificate.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Trust the certificates in this PEM file (the server's own self-signed
    /// certificate, or its CA).
    Ca(std::path::PathBuf),
    /// Accept any certificate, but still check the handshake signatures, so the
    /// client does the same work as a verifying one minus the chain walk.
    Insecure,
}

/// Which TLS versions the fleet speaks (`--tls 1.2|1.3|mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMix {
    /// Every device speaks TLS 1.2 only.
    #[value(name = "1.2")]
    Tls12,
    /// Every device speaks TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
    /// Even devices TLS 1.3, odd devices TLS 1.2.
    Mix,
}

/// Its command-line name, also in reports.
impl std::fmt::Display for TlsMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

impl serde::Serialize for TlsMix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the devices put in their ClientHello (`--hello standard|uncompressed|lean`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HelloProfile {
    /// What a stock rustls client offers (with the groups above): every
    /// cipher suite and signature scheme it has, SNI, RFC 8879 certificate
    /// compression (brotli, zlib), a TLS 1.2 session ticket request.
    #[default]
    Standard,
    /// Standard without offering certificate compression.
    Uncompressed,
    /// The fewest bytes a device can send and still verify the server: one
    /// cipher suite per version (AES-128-GCM/SHA-256), X25519 only, one
    /// signature scheme (ECDSA P-256/SHA-256), no SNI, no certificate
    /// compression offer (it costs every resumed ClientHello bytes and only
    /// pays off on the rare full handshake), TLS 1.2 session IDs only (no
    /// ticket extension). Needs a server with an ECDSA P-256 certificate that
    /// serves it without SNI, such as warmtls.
    Lean,
}

/// The two configurations a fleet may use, indexed by protocol version.
#[derive(Debug, Clone)]
pub struct DeviceConfigs {
    tls12: Arc<ClientConfig>,
    tls13: Arc<ClientConfig>,
    mix: TlsMix,
}

impl DeviceConfigs {
    /// Build the configs; `early_data` enables TLS 1.3 0-RTT.
    pub fn new(
        mix: TlsMix,
        verify: &Verify,
        table: Arc<DeviceTable>,
        early_data: bool,
        hello: HelloProfile,
    ) -> Result<DeviceConfigs, FleetError> {
        let time = Arc::new(rustls::time_provider::DefaultTimeProvider);
        DeviceConfigs::with_time(mix, verify, table, early_data, hello, time)
    }

    /// As [`DeviceConfigs::new`], with the devices' clock from `time` (a
    /// simulation that moves the server's clock by days moves the devices' too).
    pub fn with_time(
        mix: TlsMix,
        verify: &Verify,
        table: Arc<DeviceTable>,
        early_data: bool,
        hello: HelloProfile,
        time: Arc<dyn rustls::time_provider::TimeProvider>,
    ) -> Result<DeviceConfigs, FleetError> {
        let lean = hello == HelloProfile::Lean;
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        if lean {
            use aws_lc_rs::cipher_suite::*;
            provider.cipher_suites = vec![
                TLS13_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ];
            provider.signature_verification_algorithms =
                lean_signatures(provider.signature_verification_algorithms);
        }
        let provider = Arc::new(provider);
        let mut provider12 = (*provider).clone();
        if !lean {
            provider12.kx_groups =
                vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];
        }
        let provider12 = Arc::new(provider12);
        // One verifier for both configs: rustls only resumes a session under the
        // verifier that accepted it.
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Ca(path) => {
                let roots = Arc::new(load_roots(path)?);
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| FleetError::Ca {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?
            }
            Verify::Insecure => Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
        };
        let build = |version: &'static rustls::SupportedProtocolVersion,
                     provider: &Arc<rustls::crypto::CryptoProvider>| {
            let mut cfg = ClientConfig::builder_with_details(provider.clone(), time.clone())
                .with_protocol_versions(&[version])
                .map_err(FleetError::Tls)?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            cfg.resumption = Resumption::store(table.clone());
            cfg.enable_early_data = early_data;
            if hello != HelloProfile::Standard {
                cfg.cert_decompressors = Vec::new();
            }
            if lean {
                cfg.enable_sni = false;
                cfg.resumption = cfg
                    .resumption
                    .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
            }
            Ok::<_, FleetError>(Arc::new(cfg))
        };
        Ok(DeviceConfigs {
            tls12: build(&rustls::version::TLS12, &provider12)?,
            tls13: build(&rustls::version::TLS13, &provider)?,
            mix,
        })
    }

    /// The config device `device` always uses.
    pub fn for_device(&self, device: u32) -> &Arc<ClientConfig> {
        match self.mix {
            TlsMix::Tls12 => &self.tls12,
            TlsMix::Tls13 => &self.tls13,
            TlsMix::Mix if device % 2 == 0 => &self.tls13,
            TlsMix::Mix => &self.tls12,
        }
    }
}

/// The lean profile's signature algorithms: certificate chains may still be
/// signed with anything webpki checks (`all`), but the handshake signature is
/// only offered, so only accepted, as ECDSA P-256/SHA-256 (`mapping`), which
/// makes the ClientHello's signature_algorithms list one entry long.
fn lean_signatures(algs: WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
    let p256 = algs
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP256_SHA256);
    WebPkiSupportedAlgorithms {
        all: algs.all,
        mapping: p256.map_or(algs.mapping, std::slice::from_ref),
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, FleetError> {
    let err = |reason: String| FleetError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: any certificate chain, but real signature checks.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
