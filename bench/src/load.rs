//! A closed-loop HTTP/1.1 load generator: N keep-alive connections, each
//! sending the next request as soon as the last answer is read, for a fixed
//! time after a warm-up. Every request is timed; the answers' status is
//! checked, so a run that measured errors says so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
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
    fn of(mut nanos: Vec<u64>) -> Latency {
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

pub async fn run(spec: &LoadSpec) -> Result<LoadReport> {
    if spec.connections == 0 {
        bail!("a load run needs at least one connection");
    }
    let begun = Instant::now();
    let measure_from = begun + spec.warmup;
    let until = measure_from + spec.duration;
    let mut tasks = JoinSet::new();
    for index in 0..spec.connections {
        let authorization = if spec.authorization.is_empty() {
            None
        } else {
            Some(spec.authorization[index % spec.authorization.len()].clone())
        };
        let spec = spec.clone();
        tasks.spawn(async move { drive(&spec, authorization, measure_from, until).await });
    }
    let mut nanos = Vec::new();
    let (mut all, mut errors) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.context("a load connection panicked")??;
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
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(connection);
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
            tally.nanos.push(done.duration_since(sent).as_nanos() as u64);
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
