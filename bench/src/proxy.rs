//! The proxy benchmark: sidekey side by side with going direct and with the
//! tools people would otherwise use. Plain HTTP against nginx injecting the
//! same header, HTTPS interception against mitmproxy with a header addon and
//! against nginx terminating and re-encrypting TLS (the fair anchor), the
//! same against nginx with big answers and an upload (`proxy_bodies`), the
//! latency each server-sent event gains through sidekey (`proxy_sse`), the
//! cost of a first CONNECT to a new host (leaf minting) and of a repeat one,
//! and the daemon's RSS while it holds 10,000 idle proxied connections.
//! Everything runs on loopback; every loop is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use sidekey_api::{CredCreate, CredType, GrantCreate};
use tempfile::TempDir;
use tokio::net::{TcpStream, UnixStream};

use crate::cli::DaemonOpts;
use crate::control::Control;
use crate::daemon::{self, Daemon};
use crate::proxy_bodies::{self, Bodies, Contender};
use crate::proxy_load::{self, Dial, IdleConns, Spec, Tls};
use crate::proxy_mitm::{self, Mitm};
use crate::proxy_nginx::{self, Nginx, TlsFront};
use crate::proxy_sse::{self, Sse};
use crate::proxy_upstream::{Certs, Upstream};
use crate::report::{
    self, command_line, duration, megabytes, micros, micros_figure, rate, ratio, today, verdict,
};
use crate::store_cache;
use crate::sysinfo::{self, CpuTicks, Machine};

/// The upstream's name; the tests use it too, and add it to /etc/hosts.
const HOST: &str = "api.sidekey.test";
/// Names for "a host never seen before": `h01.bench.sidekey.test`, ...
const NEW_HOST_DOMAIN: &str = "bench.sidekey.test";
/// What the upstream must receive; a dummy, never a real secret.
const SECRET: &str = "sk-bench-5f0c2a9e8d7b6a5f4e3d2c1b0a998877";
/// A second credential's, bound to another host: uploads toward the bench
/// host are scanned for it. Also a dummy.
const OTHER_SECRET: &str = "sk-other-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
const OTHER_HOST: &str = "other.sidekey.test";
/// The default request's path; the other parts' requests replace it.
pub const PATH: &str = "/v1/models";
/// Bounds on the `sse` part's streams; the upstream holds to the same.
const MAX_SSE_GAP_US: u64 = 1_000_000;
const MAX_SSE_EVENTS: usize = 1_000_000;
const UNLOADED_WARMUP: Duration = Duration::from_millis(200);
/// File descriptors the bench asks for: 10,000 idle connections need one
/// each in the bench and in the daemon, which inherits this limit.
const WANT_NOFILE: u64 = 65_536;

const TARGET_ADDED_P99: Duration = Duration::from_millis(1);
const TARGET_HTTPS_VS_MITM: f64 = 10.0;
const TARGET_REPEAT_CONNECT: Duration = Duration::from_millis(1);
const TARGET_IDLE_RSS: u64 = 150_000_000;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Concurrent keep-alive connections of each loaded run.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Load generator threads (default: one per CPU).
    #[arg(long)]
    pub load_threads: Option<usize>,
    /// Rounds over the targets, in rotating order; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured seconds per loaded run (after the warm-up).
    #[arg(long, default_value_t = 2)]
    pub duration: u64,
    /// Warm-up seconds per loaded run, not measured.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Seconds of the single-connection (unloaded) run per target.
    #[arg(long, default_value_t = 1)]
    pub unloaded: u64,
    /// Distinct new host names for the first-CONNECT timing.
    #[arg(long, default_value_t = 20)]
    pub new_hosts: usize,
    /// Repeat CONNECTs timed per new host.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Idle keep-alive connections held open for the RSS figure.
    #[arg(long, default_value_t = 10_000)]
    pub idle_conns: usize,
    /// Connections opened at once while building up the idle ones.
    #[arg(long, default_value_t = 128)]
    pub idle_parallel: usize,
    /// Seconds the idle connections sit before the daemon's RSS is read.
    #[arg(long, default_value_t = 3)]
    pub idle: u64,
    /// Which parts to run, comma-separated: plain, https, bodies, sse,
    /// handshakes, idle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,https,bodies,sse,handshakes,idle"
    )]
    pub parts: Vec<Part>,
    /// Answer sizes of the `bodies` part, comma-separated, in bytes or with
    /// k (KiB) or m (MiB); 0 is the default run's small JSON answer.
    #[arg(long, value_delimiter = ',', default_value = "0,64k,1m", value_parser = proxy_bodies::parse_size)]
    pub bodies: Vec<usize>,
    /// Request body of the `bodies` part's upload (POST, plain HTTP), which
    /// sidekey scans for the other credential's secret; 0 leaves it out.
    #[arg(long, default_value = "64k", value_parser = proxy_bodies::parse_size)]
    pub upload: usize,
    /// Events per stream of the `sse` part.
    #[arg(long, default_value_t = 2000)]
    pub sse_events: usize,
    /// Microseconds between the `sse` part's events (0: as fast as they go).
    #[arg(long, default_value_t = 2000)]
    pub sse_gap_us: u64,
    /// Skip nginx (the plain-HTTP comparison and the TLS-terminating one).
    #[arg(long)]
    pub no_nginx: bool,
    /// Skip mitmproxy (the HTTPS comparison).
    #[arg(long)]
    pub no_mitmproxy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Plain,
    Https,
    Bodies,
    Sse,
    Handshakes,
    Idle,
}

/// A comparison tool that could not be run, and why.
type Tool<T> = std::result::Result<T, String>;

/// One target of a side-by-side run.
struct Target {
    label: &'static str,
    spec: Spec,
    /// Whose CPU time is the proxy's: empty for direct.
    proxy_pids: Vec<u32>,
    samples: Vec<Sample>,
}

/// One round on one target. Latencies and CPU in µs.
struct Sample {
    rps: f64,
    p50: f64,
    p99: f64,
    unloaded_p50: f64,
    unloaded_p99: f64,
    proxy_cpu: f64,
    upstream_cpu: f64,
}

impl Target {
    fn new(label: &'static str, spec: Spec, proxy_pids: Vec<u32>) -> Target {
        Target {
            label,
            spec: Spec {
                label: label.to_string(),
                ..spec
            },
            proxy_pids,
            samples: Vec::new(),
        }
    }

    fn median(&self, figure: impl Fn(&Sample) -> f64) -> f64 {
        report::median_f64(self.samples.iter().map(figure))
    }
}

/// A sidekeyd with an upstream-trusting config, one agent connection and
/// two api-key credentials granted to it: one bound to the bench hosts, one
/// to another host.
struct Sidekey {
    daemon: Daemon,
    key: String,
    /// The daemon's CA, which agents trust.
    ca: PathBuf,
    _data: TempDir,
    _wrapper: TempDir,
}

pub async fn run(args: ProxyArgs) -> Result<()> {
    let date = today();
    let machine = Machine::describe();
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build of the bench; run it with --release");
    }
    let nofile = raise_nofile_limit()?;
    let wants = |part: Part| args.parts.contains(&part);
    if args.sse_gap_us > MAX_SSE_GAP_US {
        bail!("--sse-gap-us is at most {MAX_SSE_GAP_US}");
    }
    if args.sse_events > MAX_SSE_EVENTS {
        bail!("--sse-events is at most {MAX_SSE_EVENTS}");
    }
    let new_hosts: Vec<String> = (1..=args.new_hosts)
        .map(|i| format!("h{i:02}.{NEW_HOST_DOMAIN}"))
        .collect();
    ensure_hosts(&new_hosts)?;
    let binary = daemon::prepare_binary(&args.daemon)?;
    let scratch = args.daemon.out.join("scratch");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let work = tempfile::Builder::new()
        .prefix("proxy-")
        .tempdir_in(&scratch)
        .context("creating the proxy bench's scratch dir")?;
    let certs = Certs::generate(
        work.path(),
        &[HOST.to_string(), format!("*.{NEW_HOST_DOMAIN}")],
    )?;
    let authorization = format!("Bearer {SECRET}");
    let blob = if wants(Part::Bodies) {
        args.bodies.iter().copied().max().unwrap_or(0)
    } else {
        0
    };
    let upstream = Upstream::spawn(&certs, &authorization, blob).await?;
    let threads = args
        .load_threads
        .unwrap_or_else(|| Machine::describe().cpus);

    let nginx_binary: Tool<PathBuf> = if args.no_nginx {
        Err("skipped with --no-nginx".into())
    } else {
        proxy_nginx::ensure_installed()
            .await
            .map_err(|e| format!("{e:#}"))
    };
    let nginx: Tool<Nginx> = match &nginx_binary {
        Ok(binary) => Nginx::start(binary, &scratch, upstream.plain, HOST, &authorization, None)
            .await
            .map_err(|e| format!("{e:#}")),
        Err(why) => Err(why.clone()),
    };
    if let Err(why) = &nginx {
        eprintln!("nginx will be left out: {why}");
    }
    // nginx's own test CA and leaf for the host, as sidekey mints its own.
    let front_dir = work.path().join("nginx-front");
    std::fs::create_dir_all(&front_dir).context("creating nginx's certificate dir")?;
    let front = Certs::generate(&front_dir, &[HOST.to_string()]);
    let nginx_tls: Tool<Nginx> = match (&nginx_binary, &front) {
        (Ok(binary), Ok(front)) => {
            let tls = TlsFront {
                cert: &front.cert,
                ca: &front.ca,
                key: &front.key,
                upstream_ca: &certs.ca,
            };
            Nginx::start(
                binary,
                &scratch,
                upstream.tls,
                HOST,
                &authorization,
                Some(tls),
            )
            .await
            .map_err(|e| format!("{e:#}"))
        }
        (Err(why), _) => Err(why.clone()),
        (_, Err(e)) => Err(format!("{e:#}")),
    };
    if let Err(why) = &nginx_tls {
        eprintln!("nginx-tls will be left out: {why}");
    }
    let mitm: Tool<Mitm> = if args.no_mitmproxy {
        Err("skipped with --no-mitmproxy".into())
    } else {
        match proxy_mitm::ensure_installed(&args.daemon.out).await {
            Ok(mitmdump) => Mitm::start(&mitmdump, &scratch, &certs.ca, &authorization)
                .await
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    if let Err(why) = &mitm {
        eprintln!("mitmproxy will be left out: {why}");
    }
    let nginx_skipped = nginx.as_ref().err().cloned();
    let nginx_tls_skipped = nginx_tls.as_ref().err().cloned();
    let mitm_skipped = mitm.as_ref().err().cloned();

    let sidekey = Sidekey::start(&binary, &scratch, &certs.ca).await?;
    let proxy = sidekey.daemon.proxy()?;
    let base = Spec {
        label: String::new(),
        addr: upstream.plain,
        dial: Dial::Plain,
        uri: PATH.to_string(),
        host: format!("{HOST}:{}", upstream.plain.port()),
        headers: Vec::new(),
        method: Method::GET,
        body: Bytes::new(),
        connections: args.connections,
        threads,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
    };
    let proxy_auth = format!("Bearer {}", sidekey.key);
    let upstream_pid = upstream.pid()?;

    // Plain HTTP: the client sends the same request line to each; only
    // direct carries the secret itself, the proxies add it.
    let mut plain = vec![
        Target::new(
            "direct to the upstream",
            Spec {
                headers: vec![header_pair(header::AUTHORIZATION, &authorization)?],
                ..base.clone()
            },
            Vec::new(),
        ),
        Target::new(
            "sidekey (absolute-form, injects)",
            Spec {
                addr: proxy,
                uri: format!("http://{HOST}:{}{PATH}", upstream.plain.port()),
                headers: vec![header_pair(header::PROXY_AUTHORIZATION, &proxy_auth)?],
                ..base.clone()
            },
            vec![sidekey.daemon.pid()],
        ),
    ];
    if let Ok(nginx) = &nginx {
        plain.push(Target::new(
            "nginx (reverse proxy, injects)",
            Spec {
                addr: nginx.addr,
                headers: vec![header_pair(header::PROXY_AUTHORIZATION, &proxy_auth)?],
                ..base.clone()
            },
            nginx.pids(),
        ));
    }

    let tls_port = upstream.tls.port();
    let tls_authority = format!("{HOST}:{tls_port}");
    let mut https = vec![
        Target::new(
            "direct TLS to the upstream",
            Spec {
                addr: upstream.tls,
                dial: Dial::Tls(Tls::new(&certs.ca, HOST)?),
                host: tls_authority.clone(),
                headers: vec![header_pair(header::AUTHORIZATION, &authorization)?],
                ..base.clone()
            },
            Vec::new(),
        ),
        Target::new(
            "sidekey (CONNECT, intercepts)",
            Spec {
                addr: proxy,
                dial: Dial::ConnectTls {
                    authority: tls_authority.clone(),
                    proxy_authorization: Some(proxy_auth.clone()),
                    tls: Tls::new(&sidekey.ca, HOST)?,
                },
                host: tls_authority.clone(),
                ..base.clone()
            },
            vec![sidekey.daemon.pid()],
        ),
    ];
    if let Ok(mitm) = &mitm {
        https.push(Target::new(
            "mitmproxy (CONNECT, addon injects)",
            Spec {
                addr: mitm.addr,
                dial: Dial::ConnectTls {
                    authority: tls_authority.clone(),
                    proxy_authorization: None,
                    tls: Tls::new(&mitm.ca, HOST)?,
                },
                host: tls_authority.clone(),
                ..base.clone()
            },
            vec![mitm.pid()?],
        ));
    }
    if let (Ok(nginx), Ok(front)) = (&nginx_tls, &front) {
        // TLS straight to nginx, with the same client config as against
        // sidekey: TLS 1.3 as rustls offers it, no resumption, and each of
        // the keep-alive connections kept for the whole run.
        https.push(Target::new(
            "nginx-tls (terminates TLS, injects)",
            Spec {
                addr: nginx.addr,
                dial: Dial::Tls(Tls::new(&front.ca, HOST)?),
                host: tls_authority.clone(),
                ..base.clone()
            },
            nginx.pids(),
        ));
    }

    let mut negotiated = Vec::new();
    if wants(Part::Https) {
        for target in &https {
            let agreed = proxy_load::negotiated(target.spec.addr, &target.spec.dial).await;
            negotiated.push(format!("{}: {}", rival_name(target), agreed?));
        }
    }
    if wants(Part::Plain) {
        eprintln!("plain HTTP, {} connections ...", args.connections);
        side_by_side(&args, &mut plain, upstream_pid).await?;
    }
    if wants(Part::Https) {
        eprintln!("HTTPS interception, {} connections ...", args.connections);
        let outcome = side_by_side(&args, &mut https, upstream_pid).await;
        if let (Err(_), Ok(mitm)) = (&outcome, &mitm) {
            eprintln!("mitmdump's log ends with:\n{}", mitm.log_tail());
        }
        outcome?;
    }
    let bodies = if wants(Part::Bodies) {
        eprintln!("body sizes, {} connections ...", args.connections);
        Some(run_bodies(&args, &plain, &https, upstream_pid).await?)
    } else {
        None
    };
    let sse = if wants(Part::Sse) {
        eprintln!("server-sent events, {} per stream ...", args.sse_events);
        let routes =
            [("plain HTTP", &plain), ("HTTPS", &https)].map(|(name, targets)| proxy_sse::Route {
                name,
                direct: targets[0].spec.clone(),
                sidekey: targets[1].spec.clone(),
            });
        let gap = Duration::from_micros(args.sse_gap_us);
        Some(proxy_sse::run(&routes, args.sse_events, gap, args.rounds).await?)
    } else {
        None
    };
    let handshakes = if wants(Part::Handshakes) {
        eprintln!(
            "CONNECT + TLS handshakes to {} new hosts ...",
            new_hosts.len()
        );
        let timed = time_handshakes(
            &args,
            &new_hosts,
            &upstream,
            &certs.ca,
            &sidekey,
            mitm.as_ref().ok(),
        )
        .await?;
        Some(timed)
    } else {
        None
    };
    let rss_after_load = sysinfo::rss_bytes(sidekey.daemon.pid())?;
    sidekey.daemon.stop().await?;
    for nginx in [nginx, nginx_tls].into_iter().flatten() {
        nginx.stop().await;
    }
    drop(mitm);

    let mut idle = Vec::new();
    if wants(Part::Idle) {
        for tls in [false, true] {
            eprintln!(
                "{} idle keep-alive connections, {} ...",
                args.idle_conns,
                if tls { "HTTPS" } else { "plain HTTP" }
            );
            idle.push(idle_rss(&args, &binary, &scratch, &certs.ca, &upstream, tls).await?);
        }
    }
    drop(upstream);

    println!("# sidekey proxy benchmark");
    println!();
    println!("date:    {date}");
    println!("machine: {machine}");
    println!("command: {}", command_line());
    println!(
        "load:    {} keep-alive connections, {} load threads, {} s measured after {} s warm-up, median of {} rounds; unloaded = 1 connection for {} s; RLIMIT_NOFILE {nofile}",
        args.connections, threads, args.duration, args.warmup, args.rounds, args.unloaded
    );
    println!();
    let ran = |targets: &[Target]| targets.iter().all(|t| !t.samples.is_empty());
    if ran(&plain) {
        println!("## Plain HTTP side by side");
        println!();
        print_side(&plain);
        println!();
    }
    if ran(&https) {
        println!("## HTTPS interception side by side");
        println!();
        print_side(&https);
        println!();
        println!("TLS the load client agreed on: {}", negotiated.join("; "));
        println!();
    }
    if let Some(bodies) = &bodies {
        println!(
            "## Body sizes side by side ({} keep-alive connections, loaded runs only)",
            args.connections
        );
        println!();
        bodies.print();
        println!();
    }
    if let Some(sse) = &sse {
        sse.print();
        println!();
    }
    if let Some(handshakes) = &handshakes {
        print_handshakes(handshakes);
        println!();
    }
    let idle: Vec<&IdleRss> = idle.iter().collect();
    if !idle.is_empty() {
        print_idle(&idle);
        println!();
    }
    println!(
        "sidekeyd's RSS after the runs above (the idle ones use fresh daemons): {}",
        megabytes(rss_after_load)
    );
    println!();
    print_targets(
        ran(&plain).then_some(&plain[..]),
        ran(&https).then_some(&https[..]),
        handshakes.as_ref(),
        sse.as_ref(),
        &idle,
    );
    for (tool, skipped) in [
        ("nginx", &nginx_skipped),
        ("nginx-tls", &nginx_tls_skipped),
        ("mitmproxy", &mitm_skipped),
    ] {
        if let Some(why) = skipped {
            println!();
            println!("{tool} left out: {why}");
        }
    }
    Ok(())
}

/// The `bodies` part, on the plain and HTTPS targets already set up:
/// sidekey, and nginx or nginx-tls when they run.
async fn run_bodies(
    args: &ProxyArgs,
    plain: &[Target],
    https: &[Target],
    upstream_pid: u32,
) -> Result<Bodies> {
    let contender = |label, target: &Target| Contender {
        label,
        spec: target.spec.clone(),
        pids: target.proxy_pids.clone(),
    };
    let routes = [
        proxy_bodies::Route {
            name: "plain HTTP",
            direct: plain[0].spec.clone(),
            sidekey: contender("sidekey", &plain[1]),
            nginx: find_rival(plain, "nginx").map(|t| contender("nginx", t)),
        },
        proxy_bodies::Route {
            name: "HTTPS",
            direct: https[0].spec.clone(),
            sidekey: contender("sidekey", &https[1]),
            nginx: find_rival(https, "nginx-tls").map(|t| contender("nginx-tls", t)),
        },
    ];
    proxy_bodies::run(
        &routes,
        &args.bodies,
        args.upload,
        args.rounds,
        upstream_pid,
    )
    .await
}

fn header_pair(name: HeaderName, value: &str) -> Result<(HeaderName, HeaderValue)> {
    Ok((name, HeaderValue::from_str(value)?))
}

impl Sidekey {
    async fn start(binary: &Path, scratch: &Path, upstream_ca: &Path) -> Result<Sidekey> {
        let data = store_cache::empty_data_dir(scratch)?;
        let wrapper = tempfile::Builder::new()
            .prefix("sidekeyd-wrapper-")
            .tempdir_in(scratch)?;
        let launcher = write_launcher(wrapper.path(), binary, upstream_ca)?;
        let mut daemon = Daemon::start(&launcher, data.path(), scratch).await?;
        daemon.wait_control().await?;
        let mut control = Control::connect(daemon.socket()).await?;
        let key = control.create_agent("bench-agent").await?;
        let cred = CredCreate {
            name: "bench-api".to_string(),
            cred_type: CredType::ApiKey,
            // The upstreams listen on ephemeral ports, over both schemes.
            hosts: vec![
                format!("http://{HOST}:*"),
                format!("{HOST}:*"),
                format!("*.{NEW_HOST_DOMAIN}:*"),
            ],
            path_prefix: None,
            secret: SECRET.to_string(),
        };
        post(daemon.socket(), "/v1/creds", serde_json::to_vec(&cred)?).await?;
        let other = CredCreate {
            name: "bench-other".to_string(),
            cred_type: CredType::ApiKey,
            hosts: vec![format!("http://{OTHER_HOST}:*"), format!("{OTHER_HOST}:*")],
            path_prefix: None,
            secret: OTHER_SECRET.to_string(),
        };
        post(daemon.socket(), "/v1/creds", serde_json::to_vec(&other)?).await?;
        for cred in ["bench-api", "bench-other"] {
            let grant = GrantCreate {
                conn: "bench-agent".to_string(),
                cred: cred.to_string(),
                regenerate: false,
            };
            post(daemon.socket(), "/v1/grants", serde_json::to_vec(&grant)?).await?;
        }
        Ok(Sidekey {
            ca: data.path().join("ca.pem"),
            daemon,
            key,
            _data: data,
            _wrapper: wrapper,
        })
    }
}

/// `Daemon::spawn` passes the flags every bench needs; this one also needs
/// `--upstream-ca-file`. A two-line `exec` script adds it without touching
/// the shared spawner, and the pid stays the daemon's own.
fn write_launcher(dir: &Path, binary: &Path, upstream_ca: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let script = format!(
        "#!/bin/sh\nexec {} --upstream-ca-file {} \"$@\"\n",
        quote(binary),
        quote(upstream_ca)
    );
    let path = dir.join("sidekeyd");
    std::fs::write(&path, script).context("writing the sidekeyd launcher")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// One POST on the control socket; the routes the shared client lacks.
async fn post(socket: &Path, path: &str, body: Vec<u8>) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, "sidekeyd")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

/// Rounds over the targets in rotating order; each round runs every target
/// loaded, then unloaded.
async fn side_by_side(args: &ProxyArgs, targets: &mut [Target], upstream_pid: u32) -> Result<()> {
    let unloaded = Duration::from_secs(args.unloaded);
    let rounds = args.rounds.max(1);
    let count = targets.len();
    for round in 0..rounds {
        for offset in 0..count {
            let target = &mut targets[(round + offset) % count];
            let machine_before = CpuTicks::now()?;
            let sample = measure(target, upstream_pid, unloaded).await?;
            let (steal, idle) = CpuTicks::now()?.shares_since(&machine_before);
            eprintln!(
                "round {}/{rounds}: {:<36} {:>7} req/s, p50 {}, p99 {}, proxy CPU {}/req, unloaded p99 {}, CPU stolen {:.0}%, idle {:.0}%",
                round + 1,
                target.label,
                rate(sample.rps),
                micros_figure(sample.p50),
                micros_figure(sample.p99),
                micros_figure(sample.proxy_cpu),
                micros_figure(sample.unloaded_p99),
                steal * 100.0,
                idle * 100.0,
            );
            target.samples.push(sample);
        }
    }
    Ok(())
}

async fn measure(target: &Target, upstream_pid: u32, unloaded: Duration) -> Result<Sample> {
    let groups = vec![target.proxy_pids.clone(), vec![upstream_pid]];
    let loaded = proxy_load::run(&target.spec, groups).await?;
    let single = proxy_load::run(
        &Spec {
            connections: 1,
            warmup: UNLOADED_WARMUP,
            duration: unloaded,
            ..target.spec.clone()
        },
        Vec::new(),
    )
    .await?;
    let per_request = |cpu: Duration| micros(cpu) / loaded.load.requests.max(1) as f64;
    Ok(Sample {
        rps: loaded.load.requests_per_sec(),
        p50: micros(loaded.load.latency.p50),
        p99: micros(loaded.load.latency.p99),
        unloaded_p50: micros(single.load.latency.p50),
        unloaded_p99: micros(single.load.latency.p99),
        proxy_cpu: per_request(loaded.window_cpu[0]),
        upstream_cpu: per_request(loaded.window_cpu[1]),
    })
}

/// Handshake times (TCP connect + CONNECT + TLS), in µs.
struct Handshakes {
    direct: Vec<Duration>,
    sidekey_first: Vec<Duration>,
    sidekey_repeat: Vec<Duration>,
    mitm: Option<(Vec<Duration>, Vec<Duration>)>,
}

/// For each never-seen host: the first CONNECT (sidekey mints a leaf), then
/// repeats (a cached leaf). Direct TLS handshakes to the same names are
/// interleaved, so all three see the same machine state.
async fn time_handshakes(
    args: &ProxyArgs,
    hosts: &[String],
    upstream: &Upstream,
    upstream_ca: &Path,
    sidekey: &Sidekey,
    mitm: Option<&Mitm>,
) -> Result<Handshakes> {
    let port = upstream.tls.port();
    let proxy = sidekey.daemon.proxy()?;
    let proxy_auth = format!("Bearer {}", sidekey.key);
    let mut out = Handshakes {
        direct: Vec::new(),
        sidekey_first: Vec::new(),
        sidekey_repeat: Vec::new(),
        mitm: mitm.map(|_| (Vec::new(), Vec::new())),
    };
    // One untimed handshake each, so that no first-ever cost (lazy
    // initialisation, page faults) lands on the first host.
    let warm = Dial::ConnectTls {
        authority: format!("{HOST}:{port}"),
        proxy_authorization: Some(proxy_auth.clone()),
        tls: Tls::new(&sidekey.ca, HOST)?,
    };
    proxy_load::time_dial(proxy, &warm).await?;
    proxy_load::time_dial(upstream.tls, &Dial::Tls(Tls::new(upstream_ca, HOST)?)).await?;
    for host in hosts {
        let direct = Dial::Tls(Tls::new(upstream_ca, host)?);
        let through_sidekey = Dial::ConnectTls {
            authority: format!("{host}:{port}"),
            proxy_authorization: Some(proxy_auth.clone()),
            tls: Tls::new(&sidekey.ca, host)?,
        };
        out.sidekey_first
            .push(proxy_load::time_dial(proxy, &through_sidekey).await?);
        for _ in 0..args.repeats {
            out.direct
                .push(proxy_load::time_dial(upstream.tls, &direct).await?);
            out.sidekey_repeat
                .push(proxy_load::time_dial(proxy, &through_sidekey).await?);
        }
        if let (Some(mitm), Some((first, repeat))) = (mitm, out.mitm.as_mut()) {
            let through_mitm = Dial::ConnectTls {
                authority: format!("{host}:{port}"),
                proxy_authorization: None,
                tls: Tls::new(&mitm.ca, host)?,
            };
            first.push(proxy_load::time_dial(mitm.addr, &through_mitm).await?);
            for _ in 0..args.repeats {
                repeat.push(proxy_load::time_dial(mitm.addr, &through_mitm).await?);
            }
        }
    }
    Ok(out)
}

/// The daemon's memory while it holds many idle proxied connections.
struct IdleRss {
    label: &'static str,
    wanted: usize,
    opened: usize,
    still_open: usize,
    daemon_fds: usize,
    rss_before: u64,
    rss_idle: u64,
    build_up: Duration,
}

/// A fresh daemon (so that the load runs' audit records and caches do not
/// count), `idle_conns` connections that each complete one request, then
/// `idle` seconds of nothing.
async fn idle_rss(
    args: &ProxyArgs,
    binary: &Path,
    scratch: &Path,
    upstream_ca: &Path,
    upstream: &Upstream,
    tls: bool,
) -> Result<IdleRss> {
    let sidekey = Sidekey::start(binary, scratch, upstream_ca).await?;
    let proxy = sidekey.daemon.proxy()?;
    let proxy_auth = format!("Bearer {}", sidekey.key);
    let spec = if tls {
        let authority = format!("{HOST}:{}", upstream.tls.port());
        Spec {
            label: "idle HTTPS".into(),
            addr: proxy,
            dial: Dial::ConnectTls {
                authority: authority.clone(),
                proxy_authorization: Some(proxy_auth),
                tls: Tls::new(&sidekey.ca, HOST)?,
            },
            uri: PATH.to_string(),
            host: authority,
            headers: Vec::new(),
            method: Method::GET,
            body: Bytes::new(),
            connections: 1,
            threads: 1,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
        }
    } else {
        Spec {
            label: "idle plain HTTP".into(),
            addr: proxy,
            dial: Dial::Plain,
            uri: format!("http://{HOST}:{}{PATH}", upstream.plain.port()),
            host: format!("{HOST}:{}", upstream.plain.port()),
            headers: vec![header_pair(header::PROXY_AUTHORIZATION, &proxy_auth)?],
            method: Method::GET,
            body: Bytes::new(),
            connections: 1,
            threads: 1,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
        }
    };
    let pid = sidekey.daemon.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = sysinfo::rss_bytes(pid)?;
    let conns = IdleConns::open(&spec, args.idle_conns, args.idle_parallel).await?;
    let opened = conns.open;
    let build_up = conns.took;
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let rss_idle = sysinfo::rss_bytes(pid)?;
    let daemon_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    let still_open = conns.still_open();
    conns.close().await;
    sidekey.daemon.stop().await?;
    Ok(IdleRss {
        label: if tls {
            "HTTPS (CONNECT, intercepted TLS)"
        } else {
            "plain HTTP (absolute-form)"
        },
        wanted: args.idle_conns,
        opened,
        still_open,
        daemon_fds,
        rss_before,
        rss_idle,
        build_up,
    })
}

fn print_side(targets: &[Target]) {
    let direct = &targets[0];
    let direct_rps = direct.median(|s| s.rps);
    let direct_p99 = direct.median(|s| s.p99);
    let direct_unloaded_p99 = direct.median(|s| s.unloaded_p99);
    let mut table = report::table(&[
        "target",
        "req/s",
        "vs direct",
        "p50",
        "p99",
        "p99 − direct",
        "unloaded p50",
        "unloaded p99",
        "unloaded p99 − direct",
        "proxy CPU / req",
        "upstream CPU / req",
    ]);
    for target in targets {
        let is_direct = std::ptr::eq(target, direct);
        let dash = || "—".to_string();
        table.add_row(vec![
            target.label.to_string(),
            rate(target.median(|s| s.rps)),
            ratio(target.median(|s| s.rps) / direct_rps),
            micros_figure(target.median(|s| s.p50)),
            micros_figure(target.median(|s| s.p99)),
            if is_direct {
                dash()
            } else {
                signed_micros(target.median(|s| s.p99) - direct_p99)
            },
            micros_figure(target.median(|s| s.unloaded_p50)),
            micros_figure(target.median(|s| s.unloaded_p99)),
            if is_direct {
                dash()
            } else {
                signed_micros(target.median(|s| s.unloaded_p99) - direct_unloaded_p99)
            },
            if is_direct {
                dash()
            } else {
                micros_figure(target.median(|s| s.proxy_cpu))
            },
            micros_figure(target.median(|s| s.upstream_cpu)),
        ]);
    }
    println!("{table}");
    let sidekey = &targets[1];
    for other in &targets[2..] {
        let rival = rival_name(other);
        println!();
        println!(
            "sidekey vs {rival}: {} the requests/s, {} the proxy CPU per request",
            ratio(sidekey.median(|s| s.rps) / other.median(|s| s.rps)),
            ratio(sidekey.median(|s| s.proxy_cpu) / other.median(|s| s.proxy_cpu)),
        );
    }
}

fn print_handshakes(h: &Handshakes) {
    println!("## CONNECT + TLS handshake (client side: TCP connect to handshake done)");
    println!();
    let direct = report::median(&h.direct);
    let mut table = report::table(&[
        "path",
        "first CONNECT to a new host (median)",
        "repeat CONNECT (median)",
        "repeat p90",
        "repeat − direct",
        "samples (first / repeat)",
    ]);
    table.add_row(vec![
        "direct TLS to the upstream (no proxy)".to_string(),
        "—".to_string(),
        duration(direct),
        duration(p90(&h.direct)),
        "—".to_string(),
        format!("— / {}", h.direct.len()),
    ]);
    let mut row = |label: &str, first: &[Duration], repeat: &[Duration]| {
        table.add_row(vec![
            label.to_string(),
            duration(report::median(first)),
            duration(report::median(repeat)),
            duration(p90(repeat)),
            signed_duration(report::median(repeat), direct),
            format!("{} / {}", first.len(), repeat.len()),
        ]);
    };
    row("sidekey", &h.sidekey_first, &h.sidekey_repeat);
    if let Some((first, repeat)) = &h.mitm {
        row("mitmproxy", first, repeat);
    }
    println!("{table}");
    println!();
    println!(
        "sidekey, first − repeat (leaf minting and its first use): {}",
        signed_duration(
            report::median(&h.sidekey_first),
            report::median(&h.sidekey_repeat)
        )
    );
}

fn print_idle(idle: &[&IdleRss]) {
    println!("## sidekeyd holding idle keep-alive connections");
    println!();
    let mut table = report::table(&[
        "connections",
        "held (opened / still open)",
        "daemon fds",
        "RSS before",
        "RSS while idle",
        "per connection",
        "build-up",
    ]);
    for i in idle {
        table.add_row(vec![
            i.label.to_string(),
            format!("{} / {}", i.opened, i.still_open),
            i.daemon_fds.to_string(),
            megabytes(i.rss_before),
            megabytes(i.rss_idle),
            format!(
                "{:.1} KB",
                i.rss_idle.saturating_sub(i.rss_before) as f64 / i.opened.max(1) as f64 / 1e3
            ),
            duration(i.build_up),
        ]);
    }
    println!("{table}");
}

fn print_targets(
    plain: Option<&[Target]>,
    https: Option<&[Target]>,
    handshakes: Option<&Handshakes>,
    sse: Option<&Sse>,
    idle: &[&IdleRss],
) {
    println!("## Targets");
    println!();
    let mut table = report::table(&["measure", "figure", "target", "result"]);
    let rps = |t: &Target| t.median(|s| s.rps);
    if let Some(plain) = plain {
        if let Some(nginx) = find_rival(plain, "nginx") {
            let r = rps(&plain[1]) / rps(nginx);
            table.add_row(vec![
                "plain HTTP req/s, sidekey ÷ nginx".to_string(),
                ratio(r),
                "≥ 1.00×".to_string(),
                verdict(r >= 1.0).to_string(),
            ]);
        }
        for (label, figure) in [
            (
                "plain HTTP added p99, 1 connection (sidekey − direct)",
                plain[1].median(|s| s.unloaded_p99) - plain[0].median(|s| s.unloaded_p99),
            ),
            (
                "plain HTTP added p99, 64 connections (sidekey − direct)",
                plain[1].median(|s| s.p99) - plain[0].median(|s| s.p99),
            ),
        ] {
            table.add_row(vec![
                label.to_string(),
                signed_micros(figure),
                format!("< {}", duration(TARGET_ADDED_P99)),
                verdict(figure < micros(TARGET_ADDED_P99)).to_string(),
            ]);
        }
    }
    if let Some(mitm) =
        https.and_then(|https| find_rival(https, "mitmproxy").map(|m| (&https[1], m)))
    {
        let r = rps(mitm.0) / rps(mitm.1);
        table.add_row(vec![
            "HTTPS req/s, sidekey ÷ mitmproxy".to_string(),
            ratio(r),
            format!("≥ {}", ratio(TARGET_HTTPS_VS_MITM)),
            verdict(r >= TARGET_HTTPS_VS_MITM).to_string(),
        ]);
    }
    if let Some(h) = handshakes {
        let direct = report::median(&h.direct);
        let repeat = report::median(&h.sidekey_repeat);
        table.add_row(vec![
            "added handshake time, repeat CONNECT (sidekey − direct TLS)".to_string(),
            signed_duration(repeat, direct),
            format!("< {}", duration(TARGET_REPEAT_CONNECT)),
            verdict(repeat.saturating_sub(direct) < TARGET_REPEAT_CONNECT).to_string(),
        ]);
    }
    for row in sse.map(Sse::target_rows).unwrap_or_default() {
        table.add_row(row);
    }
    for i in idle {
        table.add_row(vec![
            format!(
                "sidekeyd RSS, {} idle {} connections ({} still open)",
                i.opened,
                i.label.split(' ').next().unwrap_or_default(),
                i.still_open
            ),
            megabytes(i.rss_idle),
            format!("< {}", megabytes(TARGET_IDLE_RSS)),
            verdict(i.rss_idle < TARGET_IDLE_RSS && i.still_open == i.wanted).to_string(),
        ]);
    }
    println!("{table}");
}

/// A rival's name is its label's first word: `nginx`, `nginx-tls`, `mitmproxy`.
fn rival_name(target: &Target) -> &str {
    target.label.split(' ').next().unwrap_or_default()
}

fn find_rival<'a>(targets: &'a [Target], name: &str) -> Option<&'a Target> {
    targets.get(2..)?.iter().find(|t| rival_name(t) == name)
}

fn p90(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1],
    }
}

/// Raises the soft RLIMIT_NOFILE (and the hard one, as root) so that the
/// bench and the daemon it spawns can hold the idle connections.
fn raise_nofile_limit() -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < WANT_NOFILE {
        let raised = Rlimit {
            current: Some(WANT_NOFILE),
            maximum: Some(WANT_NOFILE),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(WANT_NOFILE);
        }
    }
    let soft = WANT_NOFILE.min(hard);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    )
    .context("raising RLIMIT_NOFILE")?;
    Ok(soft)
}

/// Maps the bench's host names to 127.0.0.1 in /etc/hosts, adding only the
/// missing ones (the tests add `api.sidekey.test` the same way).
fn ensure_hosts(new_hosts: &[String]) -> Result<()> {
    let hosts = std::fs::read_to_string("/etc/hosts").context("reading /etc/hosts")?;
    let known: std::collections::HashSet<&str> = hosts
        .lines()
        .filter(|line| line.split_whitespace().next() == Some("127.0.0.1"))
        .flat_map(|line| line.split_whitespace().skip(1))
        .collect();
    let missing: Vec<&str> = std::iter::once(HOST)
        .chain(new_hosts.iter().map(String::as_str))
        .filter(|h| !known.contains(h))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("adding to /etc/hosts: 127.0.0.1 {}", missing.join(" "));
    let mut line = format!("127.0.0.1 {}\n", missing.join(" "));
    if !hosts.ends_with('\n') && !hosts.is_empty() {
        line.insert(0, '\n');
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .context("/etc/hosts is not writable; run the bench as root, or add the names yourself")
}

/// A port that was free a moment ago, for tools that take a port number.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `addr` accepts a connection, failing early if `child` exits.
pub async fn wait_listening(
    addr: SocketAddr,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<()> {
    let begun = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("it exited ({status}) before listening on {addr}");
        }
        if begun.elapsed() > timeout {
            bail!("nothing listened on {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signed_micros(us: f64) -> String {
    let sign = if us < 0.0 { "−" } else { "+" };
    format!("{sign}{}", micros_figure(us.abs()))
}

fn signed_duration(a: Duration, b: Duration) -> String {
    signed_micros(micros(a) - micros(b))
}
