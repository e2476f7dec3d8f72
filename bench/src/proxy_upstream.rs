//! The upstream "API" the proxy benchmark sends everything to: a small hyper
//! server, plain HTTP/1.1 on one port and TLS (h2 or http/1.1 by ALPN) on
//! another, run as its own process (`sidekey-bench proxy-upstream`). It
//! answers 200 only when `Authorization` carries the bench's secret, so a
//! proxy that did not inject shows up as errors, never as fast answers.
//! Its certificate comes from a test CA made here with rcgen.
//!
//! Besides the small JSON answer it serves what the body and streaming runs
//! need, none of it echoing the secret (a normal API would not):
//! - `GET /v1/bytes/N`: the first N bytes of one body built at start-up, so
//!   a big answer costs a reference count, not an allocation;
//! - `POST /v1/upload?bytes=N`: reads the body, 200 only if N bytes came;
//! - `GET /v1/events?n=N&gap_us=G`: `text/event-stream`, N small events G µs
//!   apart, each stamped with the wall-clock time it was handed to hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The same size as the foundation baseline's answer.
pub const BODY: &str =
    r#"{"id":"c_0123456789abcdef","name":"bench-000000","kind":"agent","expires_at":null}"#;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest prebuilt body, and so the largest `--bodies` size.
pub const MAX_BLOB: usize = 16 << 20;
/// Bounds on one event stream, whatever the query asks.
const MAX_EVENTS: usize = 1_000_000;
const MAX_GAP: Duration = Duration::from_secs(1);

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
    /// Bytes of the body `GET /v1/bytes/N` serves a prefix of.
    #[arg(long, default_value_t = 0)]
    pub blob: usize,
}

/// What every connection answers from: built once, shared.
struct Answers {
    expect: Box<str>,
    blob: Bytes,
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
    let blob = sample_text(args.blob.min(MAX_BLOB));
    let secret = args.expect.rsplit(' ').next().unwrap_or_default();
    if !secret.is_empty() && blob.windows(secret.len()).any(|w| w == secret.as_bytes()) {
        bail!("the prebuilt body contains the secret");
    }
    let answers = Arc::new(Answers {
        expect: args.expect.into(),
        blob,
    });
    let plain_task = tokio::spawn(accept_loop(plain, answers.clone(), None));
    let tls_task = tokio::spawn(accept_loop(secure, answers, Some(acceptor)));
    let _ = tokio::join!(plain_task, tls_task);
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    answers: Arc<Answers>,
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
        let (answers, tls) = (answers.clone(), tls.clone());
        tokio::spawn(async move { serve_connection(stream, answers, tls).await });
    }
}

async fn serve_connection(
    stream: TcpStream,
    answers: Arc<Answers>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let answers = answers.clone();
        async move { Ok::<_, Infallible>(answer(&answers, req).await) }
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

type Answer = Response<Either<Full<Bytes>, Events>>;

async fn answer(answers: &Answers, req: Request<Incoming>) -> Answer {
    let injected = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == answers.expect.as_bytes());
    if !injected {
        return small(StatusCode::UNAUTHORIZED);
    }
    let path = req.uri().path();
    let query = |name: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    if req.method() == Method::POST && path == "/v1/upload" {
        let want = query("bytes");
        return match drain(req.into_body()).await {
            Some(got) if Some(got) == want => small(StatusCode::OK),
            _ => small(StatusCode::BAD_REQUEST),
        };
    }
    if path == "/v1/events" {
        let n = query("n").unwrap_or(1) as usize;
        let gap = Duration::from_micros(query("gap_us").unwrap_or(0));
        return respond(
            "text/event-stream",
            Either::Right(events(n.min(MAX_EVENTS), gap.min(MAX_GAP))),
        );
    }
    if let Some(n) = path.strip_prefix("/v1/bytes/") {
        return match n.parse::<usize>() {
            Ok(n) if n <= answers.blob.len() => respond(
                "application/x-ndjson",
                Either::Left(Full::new(answers.blob.slice(..n))),
            ),
            _ => small(StatusCode::NOT_FOUND),
        };
    }
    small(StatusCode::OK)
}

/// The small JSON answer every other request gets.
fn small(status: StatusCode) -> Answer {
    let mut response = respond(
        "application/json",
        Either::Left(Full::new(Bytes::from_static(BODY.as_bytes()))),
    );
    *response.status_mut() = status;
    response
}

fn respond(content_type: &'static str, body: Either<Full<Bytes>, Events>) -> Answer {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Reads a request body to its end without keeping it; its length, or
/// `None` when it broke.
async fn drain(mut body: Incoming) -> Option<u64> {
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            got += data.len() as u64;
        }
    }
    Some(got)
}

/// An event stream fed by a task: one chunk per event, as an API that
/// streams tokens writes them.
pub struct Events(mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

/// `n` events, the i-th due `i × gap` after the first. A capacity of one
/// means an event is stamped just before hyper takes it, never while it
/// waits behind another.
fn events(n: usize, gap: Duration) -> Events {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for seq in 0..n {
            if !gap.is_zero() {
                tokio::time::sleep_until(start + gap * seq as u32).await;
            }
            let event = format!(
                "data: {{\"seq\":{seq},\"sent_ns\":{},\"delta\":\"lorem ipsum dolor\"}}\n\n",
                wall_clock_ns()
            );
            if tx.send(Bytes::from(event)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Events(rx)
}

/// Nanoseconds on the wall clock, which the bench and this process share
/// (std's monotonic `Instant` cannot cross a process). A step in the clock
/// during a stream would show as one outlier.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `len` bytes of newline-delimited JSON made of plain words: text like an
/// API's answer, which holds no secret and no encoding of one.
pub fn sample_text(len: usize) -> Bytes {
    const WORDS: &[&str] = &[
        "the", "model", "returns", "tokens", "as", "a", "stream", "of", "text", "and", "each",
        "object", "has", "fields", "with", "values", "list", "data", "result", "query",
    ];
    let mut out = Vec::with_capacity(len + 256);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!(r#"{{"id":"item_{line:08}","text":""#).as_bytes());
        for i in 0..12 {
            // xorshift64: varied, reproducible, no allocation.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize].as_bytes());
        }
        out.extend_from_slice(b"\"}\n");
        line += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The upstream as a child process; killed when dropped.
pub struct Upstream {
    child: Child,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

impl Upstream {
    /// `blob` is the largest body `GET /v1/bytes/N` will be asked for.
    pub async fn spawn(certs: &Certs, expect: &str, blob: usize) -> Result<Upstream> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(exe)
            .arg("proxy-upstream")
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--blob")
            .arg(blob.to_string())
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
