//! Body sizes: sidekey beside nginx with big answers and with an upload,
//! where the response scrub and the upload leak scan work on every byte.
//! Each size runs over plain HTTP (sidekey's forward proxy against nginx
//! injecting) and HTTPS (sidekey's interception against nginx-tls); the
//! upload is a plain-HTTP POST toward a host the bench's second credential
//! is not bound to, so its body is scanned for that credential's secret.
//! Size 0 is the default run's request, `GET /v1/models` and its 83-byte
//! answer, so its row reads against earlier runs.

use anyhow::{Result, bail};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};

use crate::proxy::PATH;
use crate::proxy_load::{self, Spec};
use crate::proxy_upstream::{self, BODY, MAX_BLOB};
use crate::report::{self, micros, micros_figure, rate, ratio};
use crate::sysinfo::CpuTicks;

/// A proxy in the comparison: its load spec and the processes whose CPU
/// time is its own.
pub struct Contender {
    pub label: &'static str,
    pub spec: Spec,
    pub pids: Vec<u32>,
}

/// One way to the upstream: going direct (only to check the bodies), then
/// sidekey, then nginx when it runs.
pub struct Route {
    pub name: &'static str,
    pub direct: Spec,
    pub sidekey: Contender,
    pub nginx: Option<Contender>,
}

pub struct Bodies {
    runs: Vec<Run>,
}

/// One body size on one route: the contenders measured side by side.
struct Run {
    route: &'static str,
    what: String,
    sides: Vec<Contender>,
    samples: Vec<Vec<Sample>>,
}

/// One loaded run of one contender. Latencies and CPU in µs.
struct Sample {
    rps: f64,
    mbps: f64,
    p50: f64,
    p99: f64,
    proxy_cpu: f64,
    upstream_cpu: f64,
}

/// `0`, `65536`, `64k`, `64KiB`, `1m`, `1MiB`: binary units.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let unit = match unit {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        _ => return Err(format!("{text:?}: the unit is k or m (KiB, MiB)")),
    };
    let size = digits
        .parse::<usize>()
        .map_err(|_| format!("{text:?} is not a size"))?
        .saturating_mul(unit);
    if size > MAX_BLOB {
        return Err(format!(
            "{text:?} is over the {} limit",
            size_label(MAX_BLOB)
        ));
    }
    Ok(size)
}

fn size_label(size: usize) -> String {
    match size {
        0 => format!("{} B (the default run's)", BODY.len()),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The same spec with the default path replaced: absolute-form URIs keep
/// their scheme and authority.
fn with_path(spec: &Spec, path: &str) -> Result<Spec> {
    let Some(base) = spec.uri.strip_suffix(PATH) else {
        bail!("{}: {} does not end with {PATH}", spec.label, spec.uri);
    };
    Ok(Spec {
        uri: format!("{base}{path}"),
        ..spec.clone()
    })
}

/// What one run sends: a GET of `size` bytes (0: the default request), or
/// with `upload`, a POST of `size` bytes.
fn shaped(spec: &Spec, size: usize, upload: bool) -> Result<Spec> {
    if upload {
        let mut spec = with_path(spec, &format!("/v1/upload?bytes={size}"))?;
        spec.method = Method::POST;
        spec.body = proxy_upstream::sample_text(size);
        spec.headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        ));
        return Ok(spec);
    }
    match size {
        0 => Ok(spec.clone()),
        n => with_path(spec, &format!("/v1/bytes/{n}")),
    }
}

/// Checks every target's answer once, then measures `rounds` rounds, the
/// contenders of each run in rotating order.
pub async fn run(
    routes: &[Route],
    sizes: &[usize],
    upload: usize,
    rounds: usize,
    upstream_pid: u32,
) -> Result<Bodies> {
    let mut runs = Vec::new();
    let mut shapes: Vec<(usize, bool)> = sizes.iter().map(|&s| (s, false)).collect();
    if upload > 0 {
        shapes.push((upload, true));
    }
    for &(size, upload) in &shapes {
        // The upload runs over plain HTTP only: the scan is the same inside
        // a tunnel, and TLS would only add its own cost.
        for route in routes.iter().take(if upload { 1 } else { routes.len() }) {
            let mut sides = Vec::new();
            for contender in std::iter::once(&route.sidekey).chain(&route.nginx) {
                let spec = shaped(&contender.spec, size, upload)?;
                sides.push(Contender {
                    label: contender.label,
                    spec: Spec {
                        label: format!("{} {}", contender.label, spec.uri),
                        ..spec
                    },
                    pids: contender.pids.clone(),
                });
            }
            let direct = shaped(&route.direct, size, upload)?;
            check_bodies(&direct, &sides).await?;
            let what = if upload { "POST" } else { "GET" };
            runs.push(Run {
                route: route.name,
                what: format!("{what} {}", size_label(size)),
                samples: sides.iter().map(|_| Vec::new()).collect(),
                sides,
            });
        }
    }
    let rounds = rounds.max(1);
    for round in 0..rounds {
        for run in &mut runs {
            let count = run.sides.len();
            for offset in 0..count {
                let at = (round + offset) % count;
                let side = &run.sides[at];
                let machine_before = CpuTicks::now()?;
                let sample = measure(side, upstream_pid).await?;
                let (steal, idle) = CpuTicks::now()?.shares_since(&machine_before);
                eprintln!(
                    "round {}/{rounds}: {} {}, {:<9} {:>7} req/s, {:>7.1} MB/s, p99 {}, proxy CPU {}/req, CPU stolen {:.0}%, idle {:.0}%",
                    round + 1,
                    run.route,
                    run.what,
                    side.label,
                    rate(sample.rps),
                    sample.mbps,
                    micros_figure(sample.p99),
                    micros_figure(sample.proxy_cpu),
                    steal * 100.0,
                    idle * 100.0,
                );
                run.samples[at].push(sample);
            }
        }
    }
    Ok(Bodies { runs })
}

/// Each contender must answer 200 with the upstream's own bytes: a scrub
/// that masked something, or a proxy that cut a body, fails the run here
/// rather than being timed.
async fn check_bodies(direct: &Spec, sides: &[Contender]) -> Result<()> {
    let (status, expected) = proxy_load::fetch(direct).await?;
    if status != StatusCode::OK {
        bail!(
            "{}: the upstream answered {status} going direct",
            direct.uri
        );
    }
    for side in sides {
        let (status, body) = proxy_load::fetch(&side.spec).await?;
        if status != StatusCode::OK {
            let start = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            bail!("{}: answered {status}: {start}", side.spec.label);
        }
        if body != expected {
            let differ = body
                .iter()
                .zip(&expected[..])
                .filter(|(a, b)| a != b)
                .count();
            bail!(
                "{}: the body is not the upstream's ({} bytes, {differ} of them differing, against {})",
                side.spec.label,
                body.len(),
                expected.len()
            );
        }
    }
    Ok(())
}

async fn measure(side: &Contender, upstream_pid: u32) -> Result<Sample> {
    let groups = vec![side.pids.clone(), vec![upstream_pid]];
    let loaded = proxy_load::run(&side.spec, groups).await?;
    let per_request = |cpu| micros(cpu) / loaded.load.requests.max(1) as f64;
    Ok(Sample {
        rps: loaded.load.requests_per_sec(),
        mbps: loaded.body_bytes as f64 / side.spec.duration.as_secs_f64() / 1e6,
        p50: micros(loaded.load.latency.p50),
        p99: micros(loaded.load.latency.p99),
        proxy_cpu: per_request(loaded.window_cpu[0]),
        upstream_cpu: per_request(loaded.window_cpu[1]),
    })
}

impl Run {
    fn median(&self, side: usize, figure: impl Fn(&Sample) -> f64) -> f64 {
        report::median_f64(self.samples[side].iter().map(figure))
    }
}

impl Bodies {
    pub fn print(&self) {
        let mut table = report::table(&[
            "route",
            "request",
            "target",
            "req/s",
            "MB/s (bodies)",
            "p50",
            "p99",
            "proxy CPU / req",
            "upstream CPU / req",
        ]);
        for run in &self.runs {
            for (at, side) in run.sides.iter().enumerate() {
                table.add_row(vec![
                    run.route.to_string(),
                    run.what.clone(),
                    side.label.to_string(),
                    rate(run.median(at, |s| s.rps)),
                    format!("{:.1}", run.median(at, |s| s.mbps)),
                    micros_figure(run.median(at, |s| s.p50)),
                    micros_figure(run.median(at, |s| s.p99)),
                    micros_figure(run.median(at, |s| s.proxy_cpu)),
                    micros_figure(run.median(at, |s| s.upstream_cpu)),
                ]);
            }
        }
        println!("{table}");
        println!();
        let mut table = report::table(&[
            "route",
            "request",
            "sidekey ÷ nginx, req/s",
            "sidekey ÷ nginx, proxy CPU / req",
        ]);
        let mut any = false;
        for run in self.runs.iter().filter(|run| run.sides.len() > 1) {
            any = true;
            let of =
                |figure: fn(&Sample) -> f64| ratio(run.median(0, figure) / run.median(1, figure));
            table.add_row(vec![
                run.route.to_string(),
                run.what.clone(),
                of(|s| s.rps),
                of(|s| s.proxy_cpu),
            ]);
        }
        if any {
            println!("{table}");
        } else {
            println!("(no nginx to compare with)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64k"), Ok(65_536));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1g").is_err());
        assert!(parse_size("17m").is_err());
        assert!(parse_size("k").is_err());
    }

    #[test]
    fn sizes_read_back() {
        assert_eq!(size_label(65_536), "64 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
