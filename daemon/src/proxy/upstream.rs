//! Connections to the real hosts: pooled, opened by the [`Dialer`], and TLS
//! always verified (system roots, webpki roots and `upstream_ca_file`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

use super::dial::{Dialer, ProxyRefusal};
use super::wire::{POOL_IDLE_FOR, POOL_IDLE_PER_HOST};
use crate::http_util::ProxyBody;

type Connector = HttpsConnector<DialConnector>;

pub struct Upstream {
    /// h2 or http/1.1 by ALPN.
    pub any: Client<Connector, ProxyBody>,
    /// http/1.1 only, for upgrades (WebSocket).
    pub http1: Client<Connector, ProxyBody>,
    /// TLS for the forwarder's own http/1.1 connections.
    pub tls_http1: Arc<rustls::ClientConfig>,
    /// Opens every upstream connection, pooled or tunnelled.
    pub dialer: Dialer,
}

impl Upstream {
    pub fn new(extra_ca: Option<&std::path::Path>, dialer: Dialer) -> Result<Upstream> {
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
            let http = DialConnector(dialer.clone());
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http();
            let connector = if http2 {
                builder.enable_all_versions().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            };
            Ok(Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_FOR)
                .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
                .build(connector))
        };
        let mut tls_http1 = tls_config()?;
        tls_http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Upstream {
            any: build(true)?,
            http1: build(false)?,
            tls_http1: Arc::new(tls_http1),
            dialer,
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

/// hyper's connector: every connection it opens comes from the [`Dialer`].
#[derive(Clone)]
pub struct DialConnector(Dialer);

impl tower_service::Service<Uri> for DialConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            dialer.dial(host, port).await.map(TokioIo::new)
        })
    }
}

/// What went wrong reaching upstream, for the error code.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Tls,
    Timeout,
    Forbidden,
    Unreachable,
    /// The upstream proxy opened no tunnel; says why.
    Proxy(String),
}

pub fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls;
        }
        if let Some(refusal) = e.downcast_ref::<ProxyRefusal>() {
            return Failure::Proxy(refusal.0.clone());
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
        let refusal = std::io::Error::other(ProxyRefusal("the proxy said 403".into()));
        assert_eq!(
            classify(&std::io::Error::other(refusal)),
            Failure::Proxy("the proxy said 403".into())
        );
    }
}
