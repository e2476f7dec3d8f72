//! Connections to the real hosts: pooled, TLS always verified (system roots,
//! webpki roots and `upstream_ca_file`), and DNS answers that land on a
//! forbidden address are dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::target::forbidden_ip;
use crate::http_util::ProxyBody;

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

pub struct Upstream {
    /// h2 or http/1.1 by ALPN.
    pub any: Client<Connector, ProxyBody>,
    /// http/1.1 only, for upgrades (WebSocket).
    pub http1: Client<Connector, ProxyBody>,
    /// TLS for the forwarder's own http/1.1 connections.
    pub tls_http1: Arc<rustls::ClientConfig>,
}

impl Upstream {
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<Upstream> {
        let roots = Arc::new(root_store(extra_ca)?);
        let tls_config = || -> Result<rustls::ClientConfig> {
            Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots.clone())
            .with_no_client_auth())
        };
        let build = |http2: bool| -> Result<Client<Connector, ProxyBody>> {
            let tls = tls_config()?;
            let mut http = HttpConnector::new_with_resolver(GuardedResolver);
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http();
            let connector = if http2 {
                builder.enable_all_versions().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            };
            Ok(Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(connector))
        };
        let mut tls_http1 = tls_config()?;
        tls_http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Upstream {
            any: build(true)?,
            http1: build(false)?,
            tls_http1: Arc::new(tls_http1),
        })
    }
}

fn root_store(extra_ca: Option<&std::path::Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading upstream_ca_file {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "upstream_ca_file {} holds a certificate that does not parse",
                    path.display()
                )
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        anyhow::ensure!(
            added > 0,
            "upstream_ca_file {} holds no usable certificate",
            path.display()
        );
    }
    Ok(roots)
}

/// Resolves with the system resolver, then drops forbidden addresses, so a
/// name cannot smuggle a request to a metadata service.
#[derive(Clone)]
pub struct GuardedResolver;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move { resolve(name.as_str(), 0).await.map(Vec::into_iter) })
    }
}

pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await?
        .filter(|a| !forbidden_ip(a.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{host} resolves only to link-local or metadata addresses"),
        ));
    }
    Ok(addrs)
}

/// What went wrong reaching upstream, for the error code.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Tls,
    Timeout,
    Forbidden,
    Unreachable,
}

pub fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls;
        }
        // An io::Error's source() skips the error it wraps; step into it instead.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.kind() {
                std::io::ErrorKind::TimedOut => return Failure::Timeout,
                std::io::ErrorKind::PermissionDenied => return Failure::Forbidden,
                _ => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
            },
            None => e.source(),
        };
    }
    Failure::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(classify(&nested), Failure::Tls);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&refused), Failure::Unreachable);
        assert_eq!(
            classify(&std::io::Error::new(std::io::ErrorKind::TimedOut, "slow")),
            Failure::Timeout
        );
    }
}
