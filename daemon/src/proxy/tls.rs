//! The local CA that TLS interception runs on: one per install, its key
//! sealed in the store. Leaf certificates are minted per host on first use
//! and cached; a repeat CONNECT costs a map lookup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::keys::Secret;
use crate::store::Store;

/// Past this many hosts the leaf cache starts over, bounding its memory.
const MAX_CACHED_LEAVES: usize = 4096;

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    pub ca_path: PathBuf,
    pub bundle_path: PathBuf,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Authority {
    /// Loads this install's CA, creating it on first start, and writes
    /// `ca.pem` and `ca-bundle.pem` (the system roots plus this CA).
    pub fn load_or_create(store: &Store, data_dir: &Path) -> Result<Authority> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key) = match store.ca()? {
            Some(existing) => existing,
            None => {
                let (cert_pem, key_pem) = generate_ca()?;
                store.put_ca(&cert_pem, &key_pem)?;
                (cert_pem, key_pem)
            }
        };
        let key_pair =
            KeyPair::from_pem(key.expose()).context("the stored CA key does not parse")?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
            .context("the stored CA certificate does not parse")?;
        let ca_der = pem_to_der(&cert_pem)?;

        let ca_path = data_dir.join("ca.pem");
        write_public(&ca_path, cert_pem.as_bytes())?;
        let bundle_path = data_dir.join("ca-bundle.pem");
        write_public(&bundle_path, system_bundle(&cert_pem).as_bytes())?;
        Ok(Authority {
            issuer,
            ca_der,
            ca_path,
            bundle_path,
            leaves: Mutex::new(HashMap::new()),
            provider,
        })
    }

    /// A TLS server config presenting a leaf for `host`, offering h2 and http/1.1.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>> {
        if let Some(config) = self
            .leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
        {
            return Ok(config.clone());
        }
        let config = Arc::new(self.mint(host)?);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), config.clone());
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig> {
        let key = KeyPair::generate().context("generating a leaf key")?;
        let mut params =
            CertificateParams::new(vec![host.to_string()]).context("a leaf for this host")?;
        params.distinguished_name.push(DnType::CommonName, host);
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(86_400);
        params.not_after = now + std::time::Duration::from_secs(30 * 86_400);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .context("signing a leaf")?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key_der)
            .context("a TLS config for the leaf")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn generate_ca() -> Result<(String, Secret)> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sidekey local CA ({host})"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sidekey");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now;
    params.not_after = now + std::time::Duration::from_secs(10 * 365 * 86_400);
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    Ok((cert.pem(), Secret::new(key.serialize_pem())))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).context("the CA certificate PEM does not parse")
}

/// The system roots as PEM, then this CA: what agents' TLS stacks should trust.
fn system_bundle(ca_pem: &str) -> String {
    let mut bundle = String::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        bundle.push_str(&der_to_pem(&cert));
    }
    bundle.push_str(ca_pem);
    bundle
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
