//! The hub's TLS identity and the peer's pin on it. A peer trusts exactly
//! the certificate whose SHA-256 the invite carried: no CA is involved, and
//! any other certificate is refused.

use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::keys::Secret;
use crate::store::{HubIdentity, SyncTables};

pub struct Identity {
    pub server_config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the certificate, as invites carry it.
    pub fingerprint: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert_der)))
}

impl Identity {
    pub fn load_or_create(tables: &SyncTables<'_>) -> Result<Identity> {
        let stored = match tables.hub_identity()? {
            Some(stored) => stored,
            None => {
                let key = KeyPair::generate().context("generating the hub key")?;
                let mut params = CertificateParams::new(vec!["sidekey-hub".to_string()])
                    .context("hub certificate")?;
                params.not_after = time::OffsetDateTime::now_utc()
                    + std::time::Duration::from_secs(20 * 365 * 86_400);
                let cert = params
                    .self_signed(&key)
                    .context("self-signing the hub certificate")?;
                let stored = HubIdentity {
                    cert_der: cert.der().to_vec(),
                    key_der_hex: Secret::new(hex::encode(key.serialize_der())),
                };
                tables.put_hub_identity(&stored)?;
                stored
            }
        };
        let cert_der = stored.cert_der;
        let key_der = hex::decode(stored.key_der_hex.expose()).context("the hub key is not hex")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3")?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
            )
            .context("the hub TLS config")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Identity {
            server_config: Arc::new(config),
            fingerprint: fingerprint(&cert_der),
        })
    }
}

/// A TLS 1.3 client config that accepts only the pinned certificate.
pub fn pinned_client_config(pin: &str) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Pinned {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the hub's certificate does not match the fingerprint in the invite".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("sync speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
