//! The foundation benchmark: what key verification costs on `/v1/whoami`
//! with 10,000 connections in the store, side by side with an invalid key and
//! a trivial baseline server; the daemon's idle RSS; and its startup time
//! with 100,000 connections. Prints figures, targets, pass/fail and ratios.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::StatusCode;

use crate::baseline::Baseline;
use crate::cli::FoundationArgs;
use crate::daemon::{self, Daemon};
use crate::load::{self, LoadReport, LoadSpec};
use crate::report::{
    self, command_line, duration, megabytes, micros, micros_delta, micros_figure, rate, ratio,
    today, verdict,
};
use crate::store_cache::{self, CachedStore};
use crate::sysinfo::{self, CpuTicks, Machine};
use crate::verify_model::{self, ModelTimes};

const TARGET_VERIFY: Duration = Duration::from_micros(20);
const TARGET_RSS_BYTES: u64 = 20_000_000;
const TARGET_STARTUP: Duration = Duration::from_secs(1);
/// Well formed, so the daemon hashes it and looks it up, and misses.
const UNKNOWN_KEY: &str =
    "sk_live_0000000000000000000000000000000000000000000000000000000000000000";
const MODEL_BUDGET: Duration = Duration::from_secs(1);
const UNLOADED_WARMUP: Duration = Duration::from_millis(200);

/// One server under test, and what each round measured on it.
struct Target {
    label: &'static str,
    spec: LoadSpec,
    pid: u32,
    samples: Vec<Sample>,
}

/// One round on one target: requests per second, everything else in µs.
struct Sample {
    rps: f64,
    p50: f64,
    p99: f64,
    /// The server process's CPU time divided by the requests it answered.
    cpu: f64,
    unloaded_p50: f64,
    unloaded_p99: f64,
    /// Machine-wide shares of CPU time during the loaded run.
    steal: f64,
    idle: f64,
}

impl Target {
    fn new(label: &'static str, spec: LoadSpec, pid: u32) -> Target {
        Target {
            label,
            spec,
            pid,
            samples: Vec::new(),
        }
    }

    /// The median of one figure over the rounds.
    fn median(&self, figure: impl Fn(&Sample) -> f64) -> f64 {
        report::median_f64(self.samples.iter().map(figure))
    }

    fn range(&self, figure: impl Fn(&Sample) -> f64) -> (f64, f64) {
        self.samples
            .iter()
            .map(figure)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }
}

struct SideBySide {
    baseline: Target,
    valid: Target,
    invalid: Target,
    idle_rss: u64,
    rss_after_load: u64,
}

struct Startup {
    to_status: Vec<Duration>,
    to_ready: Vec<Duration>,
    stops: Vec<Duration>,
    rss_after_start: u64,
}

pub async fn run(args: FoundationArgs) -> Result<()> {
    let date = today();
    let machine = Machine::describe();
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build of the bench; run it with --release");
    }
    let binary = daemon::prepare_binary(&args.daemon)?;
    let out = &args.daemon.out;
    let scratch = out.join("scratch");
    let store = CachedStore::ensure(&binary, out, args.store_conns, args.daemon.repopulate).await?;
    let big = CachedStore::ensure(&binary, out, args.startup_conns, args.daemon.repopulate).await?;

    eprintln!("idle RSS with an empty store ...");
    let empty_rss = idle_rss_empty(&binary, &scratch, Duration::from_secs(args.idle)).await?;
    let side = side_by_side(&args, &binary, &store, &scratch).await?;
    eprintln!("verification model in isolation ...");
    let keys = store.keys(store.conns)?;
    let model = verify_model::time(&keys, args.connections, UNKNOWN_KEY, MODEL_BUDGET)
        .context("the cached store holds no keys")?;
    eprintln!("startup with {} connections ...", big.conns);
    let startup = measure_startup(&binary, &big, &scratch, args.startup_runs).await?;
    eprintln!("startup with an empty store ...");
    let empty_startup = measure_startup_empty(&binary, &scratch, args.startup_runs).await?;

    println!("# sidekey foundation benchmark");
    println!();
    println!("date:    {date}");
    println!("machine: {machine}");
    println!("command: {}", command_line());
    println!();
    print_load(&args, &side);
    print_targets(&args, &side, &startup, empty_rss, big.conns);
    print_supporting(
        &side,
        &model,
        &startup,
        &empty_startup,
        store.conns,
        big.conns,
    );
    Ok(())
}

async fn idle_rss_empty(binary: &Path, scratch: &Path, idle: Duration) -> Result<u64> {
    let data = store_cache::empty_data_dir(scratch)?;
    let mut daemon = Daemon::start(binary, data.path(), scratch).await?;
    daemon.wait_control().await?;
    tokio::time::sleep(idle).await;
    let rss = sysinfo::rss_bytes(daemon.pid())?;
    daemon.stop().await?;
    Ok(rss)
}

/// The same load against the baseline, a valid key and an unknown key, in
/// rounds of rotating order so that no target always runs first.
async fn side_by_side(
    args: &FoundationArgs,
    binary: &Path,
    store: &CachedStore,
    scratch: &Path,
) -> Result<SideBySide> {
    let data = store.working_copy(scratch)?;
    let mut daemon = Daemon::start(binary, data.path(), scratch)
        .await
        .with_context(|| store.stale_hint())?;
    let (_, conns) = daemon.wait_control().await?;
    if conns != store.conns as u64 {
        bail!(
            "the daemon counts {conns} connections, the cache should hold {}",
            store.conns
        );
    }
    eprintln!(
        "idle RSS with {conns} connections ({} s idle) ...",
        args.idle
    );
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let idle_rss = sysinfo::rss_bytes(daemon.pid())?;

    let baseline_server = Baseline::spawn().await?;
    // One key per load connection, as agents each have their own. The
    // baseline gets the same header, so every target reads the same bytes.
    let valid_keys: Vec<String> = store
        .keys(args.connections)?
        .into_iter()
        .map(|key| format!("Bearer {key}"))
        .collect();
    let spec = LoadSpec {
        addr: baseline_server.addr,
        path: "/v1/whoami".to_string(),
        authorization: valid_keys,
        expect: StatusCode::OK,
        connections: args.connections,
        threads: args
            .load_threads
            .unwrap_or_else(|| Machine::describe().cpus),
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
    };
    let proxy = daemon.proxy()?;
    let mut targets = [
        Target::new(
            "baseline (trivial hyper server)",
            spec.clone(),
            baseline_server.pid()?,
        ),
        Target::new(
            "whoami, valid key",
            LoadSpec {
                addr: proxy,
                ..spec.clone()
            },
            daemon.pid(),
        ),
        Target::new(
            "whoami, unknown key",
            LoadSpec {
                addr: proxy,
                authorization: vec![format!("Bearer {UNKNOWN_KEY}")],
                expect: StatusCode::UNAUTHORIZED,
                ..spec
            },
            daemon.pid(),
        ),
    ];
    let unloaded = Duration::from_secs(args.unloaded);
    let rounds = args.rounds.max(1);
    for round in 0..rounds {
        for offset in 0..targets.len() {
            let target = &mut targets[(round + offset) % 3];
            let sample = measure(target, unloaded).await?;
            eprintln!(
                "round {}/{rounds}: {:<32} {:>7} req/s, p50 {}, server CPU {}/req, unloaded p50 {}, CPU stolen {:.0}%, idle {:.0}%",
                round + 1,
                target.label,
                rate(sample.rps),
                micros_figure(sample.p50),
                micros_figure(sample.cpu),
                micros_figure(sample.unloaded_p50),
                sample.steal * 100.0,
                sample.idle * 100.0,
            );
            target.samples.push(sample);
        }
    }
    let rss_after_load = sysinfo::rss_bytes(daemon.pid())?;
    drop(baseline_server);
    daemon.stop().await?;
    let [baseline, valid, invalid] = targets;
    Ok(SideBySide {
        baseline,
        valid,
        invalid,
        idle_rss,
        rss_after_load,
    })
}

/// A loaded run with the server's CPU time around it, then an unloaded
/// (one connection) run for latency without queueing.
async fn measure(target: &Target, unloaded: Duration) -> Result<Sample> {
    let cpu_before = sysinfo::cpu_time(target.pid)?;
    let machine_before = CpuTicks::now()?;
    let loaded = load::run(&target.spec).await?;
    let cpu = sysinfo::cpu_time(target.pid)?.saturating_sub(cpu_before);
    let (steal, idle) = CpuTicks::now()?.shares_since(&machine_before);
    check_answers(target, &loaded)?;
    let single = LoadSpec {
        connections: 1,
        warmup: UNLOADED_WARMUP,
        duration: unloaded,
        ..target.spec.clone()
    };
    let single = load::run(&single).await?;
    check_answers(target, &single)?;
    Ok(Sample {
        rps: loaded.requests_per_sec(),
        p50: micros(loaded.latency.p50),
        p99: micros(loaded.latency.p99),
        cpu: micros(cpu) / loaded.all_requests as f64,
        unloaded_p50: micros(single.latency.p50),
        unloaded_p99: micros(single.latency.p99),
        steal,
        idle,
    })
}

fn check_answers(target: &Target, report: &LoadReport) -> Result<()> {
    if report.all_requests == 0 {
        bail!("{}: no request completed", target.label);
    }
    if report.errors > 0 {
        bail!(
            "{}: {} of {} answers were not {}; the figures would be wrong",
            target.label,
            report.errors,
            report.all_requests,
            target.spec.expect
        );
    }
    Ok(())
}

async fn measure_startup(
    binary: &Path,
    store: &CachedStore,
    scratch: &Path,
    runs: usize,
) -> Result<Startup> {
    let data = store.working_copy(scratch)?;
    time_starts(binary, data.path(), scratch, runs, Some(store.conns))
        .await
        .with_context(|| store.stale_hint())
}

async fn measure_startup_empty(binary: &Path, scratch: &Path, runs: usize) -> Result<Startup> {
    let data = store_cache::empty_data_dir(scratch)?;
    // The first start creates the master key and the database; time opens.
    Daemon::start(binary, data.path(), scratch)
        .await?
        .stop()
        .await?;
    time_starts(binary, data.path(), scratch, runs, Some(0)).await
}

/// Spawns the daemon `runs` times on `data_dir`, timing spawn → control
/// socket answers `/v1/status`, and spawn → ready lines.
async fn time_starts(
    binary: &Path,
    data_dir: &Path,
    scratch: &Path,
    runs: usize,
    expect_conns: Option<usize>,
) -> Result<Startup> {
    let mut startup = Startup {
        to_status: Vec::new(),
        to_ready: Vec::new(),
        stops: Vec::new(),
        rss_after_start: 0,
    };
    for _ in 0..runs.max(1) {
        let mut daemon = Daemon::spawn(binary, data_dir, scratch)?;
        let (to_status, conns) = daemon.wait_control().await?;
        let to_ready = daemon.wait_ready().await?;
        if let Some(expected) = expect_conns
            && conns != expected as u64
        {
            bail!("the daemon started with {conns} connections, not {expected}");
        }
        startup.rss_after_start = sysinfo::rss_bytes(daemon.pid())?;
        startup.to_status.push(to_status);
        startup.to_ready.push(to_ready);
        startup.stops.push(daemon.stop().await?);
    }
    Ok(startup)
}

fn print_load(args: &FoundationArgs, side: &SideBySide) {
    println!(
        "## GET /v1/whoami side by side: {} keep-alive connections, {} s measured after {} s warm-up; unloaded = 1 connection, {} s; median of {} rounds",
        args.connections,
        args.duration,
        args.warmup,
        args.unloaded,
        side.baseline.samples.len()
    );
    println!();
    let mut table = report::table(&[
        "target",
        "req/s",
        "req/s range",
        "req/s vs baseline",
        "p50",
        "p99",
        "p50 vs baseline",
        "server CPU / req",
        "unloaded p50",
        "unloaded p99",
    ]);
    let base = &side.baseline;
    for target in [&side.baseline, &side.valid, &side.invalid] {
        let (lo, hi) = target.range(|s| s.rps);
        table.add_row(vec![
            target.label.to_string(),
            rate(target.median(|s| s.rps)),
            format!("{}–{}", rate(lo), rate(hi)),
            ratio(target.median(|s| s.rps) / base.median(|s| s.rps)),
            micros_figure(target.median(|s| s.p50)),
            micros_figure(target.median(|s| s.p99)),
            ratio(target.median(|s| s.p50) / base.median(|s| s.p50)),
            micros_figure(target.median(|s| s.cpu)),
            micros_figure(target.median(|s| s.unloaded_p50)),
            micros_figure(target.median(|s| s.unloaded_p99)),
        ]);
    }
    println!("{table}");
    println!();
}

fn print_targets(
    args: &FoundationArgs,
    side: &SideBySide,
    startup: &Startup,
    empty_rss: u64,
    startup_conns: usize,
) {
    println!("## Targets");
    println!();
    let added_cpu = side.valid.median(|s| s.cpu) - side.baseline.median(|s| s.cpu);
    let startup_median = report::median(&startup.to_status);
    let mut table = report::table(&["measure", "figure", "target", "result"]);
    table.add_row(vec![
        "server-side time verification adds per request (server CPU / req, valid key − baseline)"
            .to_string(),
        micros_delta(added_cpu),
        format!("< {}", duration(TARGET_VERIFY)),
        verdict(added_cpu < micros(TARGET_VERIFY)).to_string(),
    ]);
    table.add_row(vec![
        format!(
            "idle RSS, {} connections ({} s idle)",
            args.store_conns, args.idle
        ),
        megabytes(side.idle_rss),
        format!("< {}", megabytes(TARGET_RSS_BYTES)),
        verdict(side.idle_rss < TARGET_RSS_BYTES).to_string(),
    ]);
    table.add_row(vec![
        format!("idle RSS, empty store ({} s idle)", args.idle),
        megabytes(empty_rss),
        format!("< {}", megabytes(TARGET_RSS_BYTES)),
        verdict(empty_rss < TARGET_RSS_BYTES).to_string(),
    ]);
    table.add_row(vec![
        format!(
            "startup, {startup_conns} connections: spawn → /v1/status answers (median of {})",
            startup.to_status.len()
        ),
        duration(startup_median),
        format!("< {}", duration(TARGET_STARTUP)),
        verdict(startup_median < TARGET_STARTUP).to_string(),
    ]);
    println!("{table}");
    println!();
}

fn print_supporting(
    side: &SideBySide,
    model: &ModelTimes,
    startup: &Startup,
    empty_startup: &Startup,
    store_conns: usize,
    startup_conns: usize,
) {
    println!("## Supporting figures");
    println!();
    let base = &side.baseline;
    let delta = |target: &Target, figure: fn(&Sample) -> f64| {
        micros_delta(target.median(figure) - base.median(figure))
    };
    let spread = |values: &[Duration]| {
        let min = values.iter().min().copied().unwrap_or_default();
        let max = values.iter().max().copied().unwrap_or_default();
        format!(
            "{} (min {}, max {})",
            duration(report::median(values)),
            duration(min),
            duration(max)
        )
    };
    let rows = [
        (
            "unloaded p50, valid key − baseline (1 connection)".to_string(),
            delta(&side.valid, |s| s.unloaded_p50),
        ),
        (
            "unloaded p50, unknown key − baseline (1 connection)".to_string(),
            delta(&side.invalid, |s| s.unloaded_p50),
        ),
        (
            "loaded p50, valid key − baseline".to_string(),
            delta(&side.valid, |s| s.p50),
        ),
        (
            "server CPU / req, unknown key − baseline".to_string(),
            delta(&side.invalid, |s| s.cpu),
        ),
        (
            format!("verification model in isolation, hit among {store_conns} (median)"),
            duration(model.hit),
        ),
        (
            format!("verification model in isolation, miss among {store_conns} (median)"),
            duration(model.miss),
        ),
        (
            format!("RSS after the load runs, {store_conns} connections"),
            megabytes(side.rss_after_load),
        ),
        (
            format!("RSS right after start, {startup_conns} connections"),
            megabytes(startup.rss_after_start),
        ),
        (
            format!("startup, {startup_conns} connections: spawn → ready lines on stdout"),
            spread(&startup.to_ready),
        ),
        (
            format!("startup, {startup_conns} connections: spawn → /v1/status answers"),
            spread(&startup.to_status),
        ),
        (
            format!("shutdown, {startup_conns} connections: SIGTERM → exit"),
            spread(&startup.stops),
        ),
        (
            "startup, empty store: spawn → /v1/status answers".to_string(),
            spread(&empty_startup.to_status),
        ),
    ];
    let mut table = report::table(&["measure", "figure"]);
    for (measure, figure) in rows {
        table.add_row(vec![measure, figure]);
    }
    println!("{table}");
}
