//! The upstream "API" the proxy benchmark sends everything to: a small hyper
//! server, plain HTTP/1.1 on one port and TLS (h2 or http/1.1 by ALPN) on
//! another, run as its own process (`sidekey-bench proxy-upstream`). It
//! answers 200 only when `Authorization` carries the bench's secret, so a
//! proxy that did not inject shows up as errors, never as fast answers.
//! Its certificate comes from a test CA made here with rcgen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The same size as the foundation baseline's answer.
const BODY: &str =
    r#"{"id":"c_0123456789abcdef","name":"bench-000000","kind":"agent","expires_at":null}"#;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// PEM certificate chain for the TLS port.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM private key for the TLS port.
    #[arg(long)]
    pub key: PathBuf,
    /// The only `Authorization` value answered with 200; anything else gets 401.
    #[arg(long, env = "SIDEKEY_BENCH_UPSTREAM_EXPECT")]
    pub expect: String,
}

/// A test CA, and a server certificate signed by it for `names`.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path, names: &[String]) -> Result<Certs> {
        let ca_key = rcgen::KeyPair::generate().context("generating the test CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sidekey bench upstream CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().context("generating the upstream key")?;
        let cert = rcgen::CertificateParams::new(names.to_vec())?.signed_by(&key, &issuer)?;
        let certs = Certs {
            ca: dir.join("upstream-ca.pem"),
            cert: dir.join("upstream.pem"),
            key: dir.join("upstream.key"),
        };
        std::fs::write(&certs.ca, ca_cert.pem()).context("writing the test CA")?;
        std::fs::write(&certs.cert, cert.pem()).context("writing the upstream certificate")?;
        std::fs::write(&certs.key, key.serialize_pem()).context("writing the upstream key")?;
        Ok(certs)
    }
}

/// Serves until killed. Prints `plain ADDR` and `tls ADDR` once bound.
pub async fn serve(args: UpstreamArgs) -> Result<()> {
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .context("reading the upstream certificate")?
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the upstream certificate")?;
    let key = PrivateKeyDer::from_pem_file(&args.key).context("reading the upstream key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let plain = TcpListener::bind("127.0.0.1:0").await?;
    let secure = TcpListener::bind("127.0.0.1:0").await?;
    println!("plain {}", plain.local_addr()?);
    println!("tls {}", secure.local_addr()?);
    let expect: Arc<str> = args.expect.into();
    let plain_task = tokio::spawn(accept_loop(plain, expect.clone(), None));
    let tls_task = tokio::spawn(accept_loop(secure, expect, Some(acceptor)));
    let _ = tokio::join!(plain_task, tls_task);
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    expect: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (expect, tls) = (expect.clone(), tls.clone());
        tokio::spawn(async move { serve_connection(stream, expect, tls).await });
    }
}

async fn serve_connection(
    stream: TcpStream,
    expect: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let injected = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expect.as_bytes());
        async move {
            let status = if injected {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            let response = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(BODY.as_bytes())));
            Ok::<_, Infallible>(response.unwrap_or_default())
        }
    });
    match tls {
        None => {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    }
}

/// The upstream as a child process; killed when dropped.
pub struct Upstream {
    child: Child,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

impl Upstream {
    pub async fn spawn(certs: &Certs, expect: &str) -> Result<Upstream> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(exe)
            .arg("proxy-upstream")
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .env("SIDEKEY_BENCH_UPSTREAM_EXPECT", expect)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the upstream server")?;
        let stdout = child.stdout.take().context("the upstream has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = async |prefix: &str| -> Result<SocketAddr> {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .context("the upstream did not start within 10 s")??
                .context("the upstream exited before it listened")?;
            line.strip_prefix(prefix)
                .and_then(|a| a.trim().parse().ok())
                .with_context(|| format!("the upstream printed {line:?}"))
        };
        let plain = addr("plain ").await?;
        let tls = addr("tls ").await?;
        Ok(Upstream { child, plain, tls })
    }

    pub fn pid(&self) -> Result<u32> {
        match self.child.id() {
            Some(pid) => Ok(pid),
            None => bail!("the upstream server has already exited"),
        }
    }
}
