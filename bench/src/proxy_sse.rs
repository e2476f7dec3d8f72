//! Server-sent events: how long each event takes from the upstream to the
//! client, through sidekey and going direct, over plain HTTP and HTTPS. The
//! upstream answers one request with `text/event-stream` and paces its
//! events, each stamped with the wall-clock time it was handed to hyper;
//! the client stamps the read that completes it. Both run on this host, so
//! the difference is the event's way through; through sidekey minus direct
//! is what the proxy adds to each event, the scrub's held-back bytes
//! included: an event whose tail waited for the next one would show as a
//! whole gap.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::header;
use hyper_util::rt::TokioIo;

use crate::load::Latency;
use crate::proxy::PATH;
use crate::proxy_load::{self, Spec};
use crate::proxy_upstream::wall_clock_ns;
use crate::report::{self, duration, micros, verdict};

/// The target: what sidekey adds to each event, at the median.
const TARGET_ADDED: Duration = Duration::from_micros(100);
/// Longest a partial event may grow: a stream that never ends one fails.
const MAX_EVENT: usize = 64 * 1024;
/// Longest wait for the next piece of the stream.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One way to the upstream: going direct and through sidekey.
pub struct Route {
    pub name: &'static str,
    pub direct: Spec,
    pub sidekey: Spec,
}

pub struct Sse {
    events: usize,
    gap: Duration,
    rounds: usize,
    routes: Vec<Measured>,
}

struct Measured {
    name: &'static str,
    /// Per-event latencies in ns, over every round: direct, then sidekey.
    nanos: [Vec<u64>; 2],
    /// Events whose stamp was after their read: a clock step, not a latency.
    backwards: usize,
}

/// `rounds` streams of `events` events per target, the targets in rotating
/// order.
pub async fn run(routes: &[Route], events: usize, gap: Duration, rounds: usize) -> Result<Sse> {
    let rounds = rounds.max(1);
    let mut measured: Vec<Measured> = routes
        .iter()
        .map(|r| Measured {
            name: r.name,
            nanos: [Vec::new(), Vec::new()],
            backwards: 0,
        })
        .collect();
    let targets: Vec<(usize, usize, Spec)> = routes
        .iter()
        .enumerate()
        .flat_map(|(at, route)| {
            [(at, 0, &route.direct), (at, 1, &route.sidekey)]
                .map(|(at, which, spec)| (at, which, spec.clone()))
        })
        .collect();
    let path = format!("/v1/events?n={events}&gap_us={}", gap.as_micros());
    for round in 0..rounds {
        for offset in 0..targets.len() {
            let (at, which, spec) = &targets[(round + offset) % targets.len()];
            let Some(base) = spec.uri.strip_suffix(PATH) else {
                bail!("{}: {} does not end with {PATH}", spec.label, spec.uri);
            };
            let spec = Spec {
                uri: format!("{base}{path}"),
                ..spec.clone()
            };
            let (nanos, backwards) = stream(&spec, events, gap).await?;
            let latency = Latency::of(nanos.clone());
            eprintln!(
                "round {}/{rounds}: SSE {:<10} {:<8} {} events, median {}, p99 {}",
                round + 1,
                measured[*at].name,
                if *which == 0 { "direct" } else { "sidekey" },
                nanos.len(),
                duration(latency.p50),
                duration(latency.p99),
            );
            measured[*at].nanos[*which].extend(nanos);
            measured[*at].backwards += backwards;
        }
    }
    Ok(Sse {
        events,
        gap,
        rounds,
        routes: measured,
    })
}

/// Reads one stream of `events` events: each one's latency in ns (the
/// first left out, as it shares its write with the answer's head), and how
/// many read as sent after they arrived.
async fn stream(spec: &Spec, events: usize, gap: Duration) -> Result<(Vec<u64>, usize)> {
    let io = proxy_load::dial(spec.addr, &spec.dial)
        .await
        .with_context(|| spec.label.clone())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake")?;
    let read = async move {
        let response = sender.send_request(proxy_load::request(spec)?).await?;
        let status = response.status();
        let kind = response.headers().get(header::CONTENT_TYPE).cloned();
        if status != StatusCode::OK {
            bail!("{}: the event stream answered {status}", spec.label);
        }
        if kind.as_ref().is_none_or(|k| k != "text/event-stream") {
            bail!("{}: the event stream came as {kind:?}", spec.label);
        }
        let mut body = response.into_body();
        let (mut nanos, mut backwards) = (Vec::with_capacity(events), 0);
        let mut pending = Vec::new();
        let mut next = 0;
        while next < events {
            let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
                .await
                .with_context(|| {
                    format!(
                        "{}: event {next} of {events} did not come within {READ_TIMEOUT:?}",
                        spec.label
                    )
                })?;
            let read_at = wall_clock_ns();
            let Some(frame) = frame else {
                bail!(
                    "{}: the stream ended after {next} of {events} events",
                    spec.label
                );
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let (seq, sent) = parse_event(&pending[..end])
                    .with_context(|| format!("{}: event {next} is malformed", spec.label))?;
                if seq != next {
                    bail!("{}: event {seq} came where {next} was due", spec.label);
                }
                if seq > 0 {
                    match read_at.checked_sub(sent) {
                        Some(took) => nanos.push(took),
                        None => backwards += 1,
                    }
                }
                next += 1;
                pending.drain(..end + 2);
            }
            if pending.len() > MAX_EVENT {
                bail!(
                    "{}: {} bytes and no end of event",
                    spec.label,
                    pending.len()
                );
            }
        }
        Ok((nanos, backwards))
    };
    // The connection is polled in this task, as the load client does, so an
    // event costs no wake-up of another thread.
    let whole = gap * events as u32 + Duration::from_secs(30);
    let (read, _) = tokio::time::timeout(whole, async { tokio::join!(read, connection) })
        .await
        .with_context(|| format!("{}: the stream took over {whole:?}", spec.label))?;
    read
}

/// `data: {"seq":N,"sent_ns":T,...}` to (N, T).
fn parse_event(event: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(event).ok()?.strip_prefix("data: ")?;
    let field = |name: &str| -> Option<u64> {
        let from = text.find(name)? + name.len();
        let digits = &text[from..];
        let end = digits.find(|c: char| !c.is_ascii_digit())?;
        digits[..end].parse().ok()
    };
    Some((field("\"seq\":")? as usize, field("\"sent_ns\":")?))
}

impl Measured {
    fn latency(&self, which: usize) -> Latency {
        Latency::of(self.nanos[which].clone())
    }

    /// Sidekey's median minus direct's, in µs.
    fn added_median(&self) -> f64 {
        micros(self.latency(1).p50) - micros(self.latency(0).p50)
    }
}

impl Sse {
    pub fn print(&self) {
        println!(
            "## Server-sent events: upstream hands an event to hyper → client reads it ({} events {} apart per stream, {} rounds)",
            self.events,
            duration(self.gap),
            self.rounds
        );
        println!();
        let mut table = report::table(&[
            "route",
            "target",
            "events",
            "median",
            "p99",
            "added median (sidekey − direct)",
            "added p99",
        ]);
        for route in &self.routes {
            let direct = route.latency(0);
            for (which, label) in [(0, "direct"), (1, "sidekey")] {
                let latency = route.latency(which);
                let added = |figure: fn(&Latency) -> Duration| {
                    if which == 0 {
                        "—".to_string()
                    } else {
                        signed(micros(figure(&latency)) - micros(figure(&direct)))
                    }
                };
                table.add_row(vec![
                    route.name.to_string(),
                    label.to_string(),
                    route.nanos[which].len().to_string(),
                    duration(latency.p50),
                    duration(latency.p99),
                    added(|l| l.p50),
                    added(|l| l.p99),
                ]);
            }
        }
        println!("{table}");
        for route in self.routes.iter().filter(|r| r.backwards > 0) {
            println!();
            println!(
                "{}: {} events read as sent after they arrived (the wall clock stepped); left out",
                route.name, route.backwards
            );
        }
    }

    /// Rows for the targets table: measure, figure, target, result.
    pub fn target_rows(&self) -> Vec<Vec<String>> {
        self.routes
            .iter()
            .map(|route| {
                let added = route.added_median();
                vec![
                    format!(
                        "SSE added latency per event, {} (median, sidekey − direct)",
                        route.name
                    ),
                    signed(added),
                    format!("< {}", duration(TARGET_ADDED)),
                    verdict(added < micros(TARGET_ADDED)).to_string(),
                ]
            })
            .collect()
    }
}

fn signed(us: f64) -> String {
    let sign = if us < 0.0 { "−" } else { "+" };
    format!(
        "{sign}{}",
        duration(Duration::from_secs_f64(us.abs() / 1e6))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let event = br#"data: {"seq":12,"sent_ns":1700000000123456789,"delta":"lorem"}"#;
        assert_eq!(parse_event(event), Some((12, 1_700_000_000_123_456_789)));
        assert_eq!(parse_event(b"data: {}"), None);
        assert_eq!(parse_event(b"event: x"), None);
    }
}
