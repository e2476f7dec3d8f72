//! A closed-loop HTTP/1.1 load generator: N keep-alive connections, each
//! sending the next request as soon as the last answer is read, for a fixed
//! time after a warm-up. Every request is timed; the answers' status is
//! checked, so a run that measured errors says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: String,
    /// `Authorization` values, one per connection, cycled; none sends no header.
    pub authorization: Vec<String>,
    pub expect: StatusCode,
    pub connections: usize,
    /// Generator threads, each with its own runtime.
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one run measured. Latencies are of measured requests only.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Requests completed inside the measured window.
    pub requests: u64,
    /// Requests completed in the whole run, warm-up included.
    pub all_requests: u64,
    /// Answers with another status than expected, or transport errors.
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Latency,
}

impl LoadReport {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of per-request times in nanoseconds.
    pub fn of(mut nanos: Vec<u64>) -> Latency {
        if nanos.is_empty() {
            return Latency::default();
        }
        nanos.sort_unstable();
        let at = |q: f64| {
            let rank = ((nanos.len() as f64 * q).ceil() as usize).clamp(1, nanos.len());
            Duration::from_nanos(nanos[rank - 1])
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// What one connection saw.
#[derive(Default)]
struct ConnTally {
    nanos: Vec<u64>,
    all: u64,
    errors: u64,
}

/// Runs the load on `spec.threads` threads, each with its own single-thread
/// runtime and a fixed share of the connections, as wrk does. One
/// work-stealing runtime for the generator left its throughput bimodal from
/// run to run on two cores, depending on how its tasks landed on workers.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport> {
    let spec = Arc::new(spec.clone());
    tokio::task::spawn_blocking(move || run_threads(&spec))
        .await
        .context("the load generator panicked")?
}

fn run_threads(spec: &Arc<LoadSpec>) -> Result<LoadReport> {
    if spec.connections == 0 {
        bail!("a load run needs at least one connection");
    }
    let threads = spec.threads.clamp(1, spec.connections);
    let measure_from = Instant::now() + spec.warmup;
    let until = measure_from + spec.duration;
    let tallies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let spec = spec.clone();
                scope.spawn(move || run_thread(spec, thread, threads, measure_from, until))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            })
            .collect::<Result<Vec<Vec<ConnTally>>>>()
    })?;
    let mut nanos = Vec::new();
    let (mut all, mut errors) = (0, 0);
    for tally in tallies.into_iter().flatten() {
        nanos.extend(tally.nanos);
        all += tally.all;
        errors += tally.errors;
    }
    Ok(LoadReport {
        requests: nanos.len() as u64,
        all_requests: all,
        errors,
        elapsed: spec.duration,
        latency: Latency::of(nanos),
    })
}

/// One generator thread: connections `thread`, `thread + threads`, ...
fn run_thread(
    spec: Arc<LoadSpec>,
    thread: usize,
    threads: usize,
    measure_from: Instant,
    until: Instant,
) -> Result<Vec<ConnTally>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a load thread's runtime")?;
    runtime.block_on(async move {
        let mut tasks = JoinSet::new();
        for index in (thread..spec.connections).step_by(threads) {
            let authorization = (!spec.authorization.is_empty())
                .then(|| spec.authorization[index % spec.authorization.len()].clone());
            let spec = spec.clone();
            tasks.spawn(async move { drive(&spec, authorization, measure_from, until).await });
        }
        let mut tallies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            tallies.push(joined.context("a load connection panicked")??);
        }
        Ok(tallies)
    })
}

async fn drive(
    spec: &LoadSpec,
    authorization: Option<String>,
    measure_from: Instant,
    until: Instant,
) -> Result<ConnTally> {
    let stream = TcpStream::connect(spec.addr)
        .await
        .with_context(|| format!("connecting to {}", spec.addr))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    // The connection is polled in this same task, not spawned: a spawned
    // connection task can land on another worker, and then every request
    // costs cross-thread wake-ups that swamp what is being measured.
    let requests = send_until(sender, spec, authorization, measure_from, until);
    let (tally, _) = tokio::join!(requests, connection);
    tally
}

/// Sends requests one after another until `until`; dropping the sender at
/// the end lets the connection close.
async fn send_until(
    mut sender: SendRequest<Empty<Bytes>>,
    spec: &LoadSpec,
    authorization: Option<String>,
    measure_from: Instant,
    until: Instant,
) -> Result<ConnTally> {
    let host = spec.addr.to_string();
    let mut tally = ConnTally::default();
    loop {
        let mut request = Request::get(spec.path.as_str()).header(header::HOST, host.as_str());
        if let Some(value) = &authorization {
            request = request.header(header::AUTHORIZATION, value.as_str());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .context("building a request")?;
        sender
            .ready()
            .await
            .context("the server closed a keep-alive connection")?;
        let sent = Instant::now();
        let response = sender
            .send_request(request)
            .await
            .context("the server closed a keep-alive connection")?;
        let status = response.status();
        let body = response.into_body().collect().await;
        let done = Instant::now();
        if done >= until {
            break;
        }
        tally.all += 1;
        if body.is_err() || status != spec.expect {
            tally.errors += 1;
        }
        if sent >= measure_from {
            tally
                .nanos
                .push(done.duration_since(sent).as_nanos() as u64);
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let latency = Latency::of((1..=100).collect());
        assert_eq!(latency.p50, Duration::from_nanos(50));
        assert_eq!(latency.p99, Duration::from_nanos(99));
        assert_eq!(Latency::of(vec![7]).p50, Duration::from_nanos(7));
    }
}
