//! Clients for the proxy benchmark. The same closed-loop scheme as `load`
//! (keep-alive connections, one thread per CPU with its own single-thread
//! runtime, the connection polled in the task that sends on it), but each
//! connection is opened by a [`Dial`]: plain TCP, TLS straight to the
//! upstream, or `CONNECT` through a proxy and then TLS. Also times
//! handshakes, and holds many idle keep-alive connections open.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::load::{Latency, LoadReport};

/// Longest a CONNECT answer's head may be.
const MAX_CONNECT_HEAD: usize = 8 * 1024;
/// Per connection attempt: a proxy that hangs fails the run, not the bench.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Pin<Box<dyn Io>>;

/// How a connection reaches the server that answers its requests.
#[derive(Clone)]
pub enum Dial {
    /// TCP to the address: the upstream itself, or a proxy taking
    /// absolute-form or origin-form requests.
    Plain,
    /// TLS straight to the upstream.
    Tls(Tls),
    /// `CONNECT authority` to the proxy, then TLS inside the tunnel.
    ConnectTls {
        authority: String,
        proxy_authorization: Option<String>,
        tls: Tls,
    },
}

#[derive(Clone)]
pub struct Tls {
    pub server_name: ServerName<'static>,
    pub config: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Trusts only the PEM certificates in `roots`, offers http/1.1 only,
    /// and never resumes a session, so every handshake is a full one.
    pub fn new(roots: &std::path::Path, server_name: &str) -> Result<Tls> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut store = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(roots)
            .with_context(|| format!("reading {}", roots.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", roots.display()))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            bail!("{} holds no usable certificate", roots.display());
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Tls {
            server_name: ServerName::try_from(server_name.to_string())
                .with_context(|| format!("{server_name} is not a TLS server name"))?,
            config: Arc::new(config),
        })
    }
}

/// One load run against one target.
#[derive(Clone)]
pub struct Spec {
    pub label: String,
    /// Where the TCP connections go.
    pub addr: SocketAddr,
    pub dial: Dial,
    /// Absolute form for a forward proxy, origin form otherwise.
    pub uri: String,
    pub host: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub method: Method,
    /// The request body: empty (none is sent) but for the upload run. A
    /// `Bytes`, so each request shares it rather than copying it.
    pub body: Bytes,
    pub connections: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Opens one connection as `dial` says, ready for HTTP/1.1.
pub async fn dial(addr: SocketAddr, dial: &Dial) -> Result<BoxIo> {
    let opened = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok::<BoxIo, anyhow::Error>(match dial {
            Dial::Plain => Box::pin(stream),
            Dial::Tls(tls) => Box::pin(handshake(stream, tls).await?),
            Dial::ConnectTls {
                authority,
                proxy_authorization,
                tls,
            } => {
                let stream =
                    connect_tunnel(stream, authority, proxy_authorization.as_deref()).await?;
                Box::pin(handshake(stream, tls).await?)
            }
        })
    };
    tokio::time::timeout(DIAL_TIMEOUT, opened)
        .await
        .with_context(|| format!("opening a connection to {addr} took over {DIAL_TIMEOUT:?}"))?
}

async fn handshake<S: Io + 'static>(
    stream: S,
    tls: &Tls,
) -> Result<tokio_rustls::client::TlsStream<S>> {
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), stream)
        .await
        .with_context(|| format!("TLS handshake with {:?}", tls.server_name))
}

/// Sends `CONNECT` and reads the answer's head. The proxy sends nothing
/// after it until the client speaks, so reading in chunks takes no tunnel
/// bytes.
async fn connect_tunnel(
    mut stream: TcpStream,
    authority: &str,
    proxy_authorization: Option<&str>,
) -> Result<TcpStream> {
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(value) = proxy_authorization {
        head.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        if answer.len() > MAX_CONNECT_HEAD {
            bail!("the CONNECT answer's head is over {MAX_CONNECT_HEAD} bytes");
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the proxy closed the connection after CONNECT {authority}");
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("CONNECT {authority} answered {status:?}");
    }
    Ok(stream)
}

/// TCP connect + CONNECT + TLS handshake, timed.
pub async fn time_dial(addr: SocketAddr, how: &Dial) -> Result<Duration> {
    let begun = Instant::now();
    let io = dial(addr, how).await?;
    let took = begun.elapsed();
    drop(io);
    Ok(took)
}

/// The TLS version, cipher suite and key exchange group a dial agrees on,
/// so that the report shows every HTTPS target doing the same crypto.
pub async fn negotiated(addr: SocketAddr, how: &Dial) -> Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let tls = match how {
        Dial::Plain => return Ok("plain TCP".to_string()),
        Dial::Tls(tls) => handshake(stream, tls).await?,
        Dial::ConnectTls {
            authority,
            proxy_authorization,
            tls,
        } => {
            let stream = connect_tunnel(stream, authority, proxy_authorization.as_deref()).await?;
            handshake(stream, tls).await?
        }
    };
    let conn = tls.get_ref().1;
    Ok(format!(
        "{:?} {:?} {:?}",
        conn.protocol_version().context("no TLS version")?,
        conn.negotiated_cipher_suite()
            .context("no cipher suite")?
            .suite(),
        conn.negotiated_key_exchange_group()
            .context("no key exchange")?
            .name(),
    ))
}

/// What a run measured, and the CPU time each group of processes used
/// inside the measured window only.
pub struct Report {
    pub load: LoadReport,
    pub window_cpu: Vec<Duration>,
    /// Body bytes of the measured requests, both ways.
    pub body_bytes: u64,
}

/// Runs the load, as [`crate::load::run`] does, except that the warm-up
/// starts once every connection is open: a proxy whose handshakes are slow
/// (mitmproxy takes tens of ms each) would otherwise spend the warm-up, and
/// part of the measured window, on handshakes.
pub async fn run(spec: &Spec, cpu_groups: Vec<Vec<u32>>) -> Result<Report> {
    let spec = Arc::new(spec.clone());
    tokio::task::spawn_blocking(move || run_threads(&spec, &cpu_groups))
        .await
        .context("the load generator panicked")?
}

/// The run's shared clock: starts when the last connection is open.
struct Clock {
    barrier: tokio::sync::Barrier,
    start: OnceLock<Instant>,
    warmup: Duration,
    duration: Duration,
}

impl Clock {
    /// Waits for every connection, then returns (measure from, until).
    async fn start(&self) -> Result<(Instant, Instant)> {
        tokio::time::timeout(DIAL_TIMEOUT * 2, self.barrier.wait())
            .await
            .context("another load connection failed to open")?;
        let start = *self.start.get_or_init(Instant::now);
        Ok((start + self.warmup, start + self.warmup + self.duration))
    }

    /// Blocks until the clock started, or gives up after the dial bound.
    fn wait_started(&self) -> Option<Instant> {
        let give_up = Instant::now() + DIAL_TIMEOUT * 3;
        while Instant::now() < give_up {
            if let Some(start) = self.start.get() {
                return Some(*start);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

fn cpu_of(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|&pid| crate::sysinfo::cpu_time(pid)).sum()
}

/// Samples each group's CPU time at the start and end of the measured window.
fn sample_window(clock: &Clock, groups: &[Vec<u32>]) -> Result<Vec<Duration>> {
    let Some(start) = clock.wait_started() else {
        return Ok(vec![Duration::ZERO; groups.len()]);
    };
    let measure_from = start + clock.warmup;
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let before = groups
        .iter()
        .map(|g| cpu_of(g))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep((measure_from + clock.duration).saturating_duration_since(Instant::now()));
    groups
        .iter()
        .zip(before)
        .map(|(g, before)| Ok(cpu_of(g)?.saturating_sub(before)))
        .collect()
}

#[derive(Default)]
struct Tally {
    nanos: Vec<u64>,
    /// Body bytes of the measured requests, both ways.
    bytes: u64,
    all: u64,
    errors: u64,
    first_error: Option<String>,
}

fn run_threads(spec: &Arc<Spec>, cpu_groups: &[Vec<u32>]) -> Result<Report> {
    if spec.connections == 0 {
        bail!("a load run needs at least one connection");
    }
    let threads = spec.threads.clamp(1, spec.connections);
    let clock = Arc::new(Clock {
        barrier: tokio::sync::Barrier::new(spec.connections),
        start: OnceLock::new(),
        warmup: spec.warmup,
        duration: spec.duration,
    });
    let (tallies, window_cpu) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_window(&clock, cpu_groups));
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (spec, clock) = (spec.clone(), clock.clone());
                scope.spawn(move || run_thread(spec, thread, threads, clock))
            })
            .collect();
        let tallies = workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            })
            .collect::<Result<Vec<Vec<Tally>>>>();
        let window_cpu = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the CPU sampler panicked"));
        (tallies, window_cpu)
    });
    let (tallies, window_cpu) = (tallies?, window_cpu??);
    let mut nanos = Vec::new();
    let (mut all, mut errors, mut body_bytes) = (0, 0, 0);
    let mut first_error = None;
    for tally in tallies.into_iter().flatten() {
        nanos.extend(tally.nanos);
        body_bytes += tally.bytes;
        all += tally.all;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    if errors > 0 {
        bail!(
            "{}: {errors} of {all} answers were not 200 (first: {}); the figures would be wrong",
            spec.label,
            first_error.unwrap_or_default()
        );
    }
    if all == 0 {
        bail!("{}: no request completed", spec.label);
    }
    Ok(Report {
        load: LoadReport {
            requests: nanos.len() as u64,
            all_requests: all,
            errors,
            elapsed: spec.duration,
            latency: Latency::of(nanos),
        },
        window_cpu,
        body_bytes,
    })
}

fn run_thread(
    spec: Arc<Spec>,
    thread: usize,
    threads: usize,
    clock: Arc<Clock>,
) -> Result<Vec<Tally>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a load thread's runtime")?;
    runtime.block_on(async move {
        let mut tasks = JoinSet::new();
        for _ in (thread..spec.connections).step_by(threads) {
            let (spec, clock) = (spec.clone(), clock.clone());
            tasks.spawn(async move { drive(&spec, &clock).await });
        }
        let mut tallies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            tallies.push(joined.context("a load connection panicked")??);
        }
        Ok(tallies)
    })
}

async fn drive(spec: &Spec, clock: &Clock) -> Result<Tally> {
    let io = dial(spec.addr, &spec.dial)
        .await
        .with_context(|| spec.label.clone())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake")?;
    let mut connection = Box::pin(connection);
    // Keep the connection polled while the others open.
    let (measure_from, until) = tokio::select! {
        times = clock.start() => times?,
        ended = &mut connection => bail!("{}: the connection ended before the run: {ended:?}", spec.label),
    };
    let requests = send_until(sender, spec, measure_from, until);
    let (tally, _) = tokio::join!(requests, connection);
    tally
}

/// An empty `Full` is sent as no body at all, as `Empty` was: a GET goes
/// out with no `Content-Length`, byte for byte the request of earlier runs.
pub fn request(spec: &Spec) -> Result<Request<Full<Bytes>>> {
    let mut request = Request::builder()
        .method(spec.method.clone())
        .uri(spec.uri.as_str())
        .header(hyper::header::HOST, &spec.host);
    for (name, value) in &spec.headers {
        request = request.header(name, value);
    }
    request
        .body(Full::new(spec.body.clone()))
        .context("building a request")
}

/// Reads an answer's body to its end, keeping only its length and, for an
/// error's report, its first bytes.
async fn drain(mut body: Incoming, keep: usize) -> Result<(u64, Vec<u8>), hyper::Error> {
    let (mut len, mut kept) = (0, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            let room = keep.saturating_sub(kept.len()).min(data.len());
            kept.extend_from_slice(&data[..room]);
        }
    }
    Ok((len, kept))
}

/// One request on a fresh connection: its status and whole body, to check
/// what a target answers before it is timed.
pub async fn fetch(spec: &Spec) -> Result<(StatusCode, Bytes)> {
    let io = dial(spec.addr, &spec.dial)
        .await
        .with_context(|| spec.label.clone())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake")?;
    let exchange = async move {
        let response = sender.send_request(request(spec)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        Ok::<_, anyhow::Error>((status, body))
    };
    let (answer, _) =
        tokio::time::timeout(DIAL_TIMEOUT, async { tokio::join!(exchange, connection) })
            .await
            .with_context(|| format!("{}: no answer within {DIAL_TIMEOUT:?}", spec.label))?;
    answer.with_context(|| spec.label.clone())
}

async fn send_until(
    mut sender: SendRequest<Full<Bytes>>,
    spec: &Spec,
    measure_from: Instant,
    until: Instant,
) -> Result<Tally> {
    let mut tally = Tally::default();
    loop {
        let request = request(spec)?;
        sender
            .ready()
            .await
            .with_context(|| format!("{}: the server closed a connection", spec.label))?;
        let sent = Instant::now();
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{}: the server closed a connection", spec.label))?;
        let status = response.status();
        // Counted as it streams, never gathered: a 1 MiB answer costs the
        // client no copy.
        let body = drain(response.into_body(), 300).await;
        let done = Instant::now();
        if done >= until {
            break;
        }
        tally.all += 1;
        if body.is_err() || status != StatusCode::OK {
            tally.errors += 1;
            if tally.first_error.is_none() {
                tally.first_error = Some(match &body {
                    Ok((_, start)) => format!("{status}: {}", String::from_utf8_lossy(start)),
                    Err(e) => format!("{status}, body failed: {e}"),
                });
            }
        }
        if sent >= measure_from {
            tally
                .nanos
                .push(done.duration_since(sent).as_nanos() as u64);
            let down = body.as_ref().map_or(0, |(len, _)| *len);
            tally.bytes += down + spec.body.len() as u64;
        }
    }
    Ok(tally)
}

/// Idle keep-alive connections, each having completed one request; they
/// close when this is dropped.
pub struct IdleConns {
    release: watch::Sender<bool>,
    tasks: JoinSet<()>,
    live: Arc<AtomicUsize>,
    pub open: usize,
    pub took: Duration,
}

impl IdleConns {
    /// Opens `count` connections, at most `parallel` handshakes at a time;
    /// each sends one request, checks the 200, then sits idle.
    pub async fn open(spec: &Spec, count: usize, parallel: usize) -> Result<IdleConns> {
        let begun = Instant::now();
        let (release, released) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(parallel.max(1));
        let mut tasks = JoinSet::new();
        let live = Arc::new(AtomicUsize::new(0));
        for _ in 0..count {
            let live = live.clone();
            let (spec, gate, ready, mut released) = (
                spec.clone(),
                gate.clone(),
                ready_tx.clone(),
                released.clone(),
            );
            tasks.spawn(async move {
                let Ok(_permit) = gate.acquire().await else {
                    return;
                };
                let opened = async {
                    let io = dial(spec.addr, &spec.dial).await?;
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
                    let first = async {
                        let response = sender.send_request(request(&spec)?).await?;
                        let status = response.status();
                        response.into_body().collect().await?;
                        if status != StatusCode::OK {
                            bail!("{}: an idle connection's request got {status}", spec.label);
                        }
                        Ok(())
                    };
                    let mut connection = Box::pin(connection);
                    tokio::select! {
                        done = first => done?,
                        ended = &mut connection => bail!("the connection ended early: {ended:?}"),
                    }
                    Ok::<_, anyhow::Error>((sender, connection))
                };
                let opened = tokio::time::timeout(DIAL_TIMEOUT, opened)
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "{}: no answer within {DIAL_TIMEOUT:?}",
                            spec.label
                        ))
                    });
                drop(_permit);
                match opened {
                    Ok((sender, connection)) => {
                        live.fetch_add(1, Ordering::Relaxed);
                        let _ = ready.send(Ok(())).await;
                        drop(ready);
                        // Hold the connection open, polling it so that a close
                        // by the server is noticed, until released.
                        tokio::select! {
                            _ = connection => {}
                            _ = released.wait_for(|r| *r) => {}
                        }
                        live.fetch_sub(1, Ordering::Relaxed);
                        drop(sender);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                    }
                }
            });
        }
        drop(ready_tx);
        let mut open = 0;
        while open < count {
            // Every task reports once, each within DIAL_TIMEOUT of its turn.
            let Some(result) = ready_rx.recv().await else {
                bail!(
                    "{}: only {open} of {count} connections reported",
                    spec.label
                );
            };
            if let Err(e) = result {
                let _ = release.send(true);
                return Err(e.context(format!("opening idle connection {}", open + 1)));
            }
            open += 1;
        }
        Ok(IdleConns {
            release,
            tasks,
            live,
            open,
            took: begun.elapsed(),
        })
    }

    /// How many are still open (the server has closed none of the others).
    pub fn still_open(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub async fn close(mut self) {
        let _ = self.release.send(true);
        let deadline = Duration::from_secs(30);
        let _ = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}
