//! The sync benchmark: sidekey's hub and peer side by side with rsync,
//! unison and Syncthing, on the same trees in one run. Initial sync of many
//! small files (and, with `--large`, of one large file), the latency of one
//! small edit, RSS per indexed file and idle CPU. Prints figures, ratios,
//! targets and pass/fail. Loopback only; every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::DaemonOpts;
use crate::report::{self, command_line, duration, megabytes, ratio, today, verdict};
use crate::sync_sidekey::{Binaries, Pair, start_pair};
use crate::sync_tools::{self, SyncthingPair, syncthing_pair};
use crate::sync_util::{self, compare_trees, quantile, spawn_bounded, sync_all};
use crate::sysinfo::{CpuTicks, Machine, cpu_time, rss_bytes};

const TARGET_SMALL_VS_RSYNC: f64 = 1.5;
const TARGET_LARGE_MB_S: f64 = 300.0;
const TARGET_EDIT_P50: Duration = Duration::from_millis(300);
const TARGET_EDIT_P95: Duration = Duration::from_secs(1);
const TARGET_RSS_PER_FILE: f64 = 1024.0;
/// The tree size the issue sets the memory and idle-CPU targets at; smaller
/// trees are shown, but fixed costs weigh more per file there.
const TARGET_TREE_FILES: u64 = 100_000;
const TARGET_IDLE_CPU_PERCENT: f64 = 1.0;
/// What users quote on this machine.
const QUOTED_UNISON_EDIT: Duration = Duration::from_millis(6);
const QUOTED_RSYNC_SMALL: Duration = Duration::from_millis(600);

/// How long one edit may take to show up before it counts as lost.
const EDIT_LIMIT: Duration = Duration::from_secs(10);
/// The poll on the other side's copy of the edited file.
const EDIT_POLL: Duration = Duration::from_millis(1);
/// A bound on any one initial sync or scan.
const SYNC_LIMIT: Duration = Duration::from_secs(900);
/// A bound on one run of rsync or unison.
const RUN_LIMIT: Duration = Duration::from_secs(900);
/// The file every edit rewrites: one of the tree's small files.
const EDITED: &str = "d0000/f000000.bin";

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Files in the small-file tree (initial sync, edits, RSS, idle CPU).
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Bytes per small file.
    #[arg(long, default_value_t = 4096)]
    pub file_size: usize,
    /// Initial syncs of the small tree per tool; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also time the initial sync of one large file, with every tool.
    #[arg(long)]
    pub large: bool,
    /// The large file's size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub large_mib: u64,
    /// Single-file edits timed per tool and direction.
    #[arg(long, default_value_t = 50)]
    pub edits: usize,
    /// Pause between edits, so that each is carried on its own.
    #[arg(long, default_value_t = 200)]
    pub edit_gap_ms: u64,
    /// Seconds of idle CPU measured with the small tree watched.
    #[arg(long, default_value_t = 15)]
    pub idle_secs: u64,
    /// Also a big tree of this many files for sidekey alone: initial sync
    /// beside rsync, RSS per indexed file and idle CPU (0: skip).
    #[arg(long, default_value_t = 0)]
    pub big_files: usize,
    /// Seconds of idle CPU measured with the big tree watched.
    #[arg(long, default_value_t = 60)]
    pub big_idle_secs: u64,
    /// Everything the issue asks for: --large and --big-files 100000.
    #[arg(long)]
    pub full: bool,
    /// Run sidekey alone, without rsync, unison and Syncthing.
    #[arg(long)]
    pub only_sidekey: bool,
    /// Syncthing's fsWatcherDelayS (its default is 10; 1 is its smallest).
    #[arg(long, default_value_t = 1)]
    pub syncthing_watch_delay: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Rsync,
    Sidekey,
    Unison,
    Syncthing,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Rsync => "rsync -a (local, one way)",
            Tool::Sidekey => "sidekey (hub → peer, TLS loopback)",
            Tool::Unison => "unison -batch (two local roots)",
            Tool::Syncthing => "syncthing (two instances, loopback)",
        }
    }
}

/// The initial syncs of one tree by one tool.
struct Initial {
    tool: Tool,
    times: Vec<Duration>,
    /// `rsync` only: time of a `syncfs` right after, so that its figure can be
    /// read beside sidekey's, which makes its writes durable.
    syncfs: Vec<Duration>,
    /// A difference between the trees after a run, if any.
    wrong: Vec<String>,
}

impl Initial {
    fn new(tool: Tool) -> Initial {
        Initial {
            tool,
            times: Vec::new(),
            syncfs: Vec::new(),
            wrong: Vec::new(),
        }
    }

    fn median(&self) -> Duration {
        report::median(&self.times)
    }
}

/// One series of edits.
struct Edits {
    label: String,
    /// Sorted.
    samples: Vec<Duration>,
    lost: usize,
}

/// Memory and idle CPU of one tool's pair.
struct Footprint {
    label: String,
    files: u64,
    empty_rss: u64,
    synced_rss: u64,
    /// Other processes' RSS after the sync (the hub, Syncthing's A).
    other_rss: u64,
    idle_secs: u64,
    /// CPU time over the idle window: the receiving side, the sending side.
    idle_cpu: (Duration, Duration),
}

impl Footprint {
    fn per_file(&self) -> f64 {
        self.synced_rss.saturating_sub(self.empty_rss) as f64 / self.files.max(1) as f64
    }

    fn cpu_percent(&self) -> f64 {
        (self.idle_cpu.0 + self.idle_cpu.1).as_secs_f64() / self.idle_secs.max(1) as f64 * 100.0
    }
}

struct Results {
    small: Vec<Initial>,
    large: Vec<Initial>,
    edits: Vec<Edits>,
    footprints: Vec<Footprint>,
    big: Option<(Initial, Initial)>,
    problems: Vec<String>,
}

pub async fn run(args: SyncArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("the sync benchmark thread panicked")?
}

fn run_blocking(mut args: SyncArgs) -> Result<()> {
    if args.full {
        args.large = true;
        if args.big_files == 0 {
            args.big_files = 100_000;
        }
    }
    if args.rounds == 0 || args.files == 0 || args.edits == 0 {
        bail!("--rounds, --files and --edits must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build of the bench; run it with --release");
    }
    let started = Instant::now();
    let ticks = CpuTicks::now()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let date = today();
    let machine = Machine::describe();
    let bins = binaries(&args.daemon)?;
    let mut notes = Vec::new();
    let mut tools = vec![Tool::Sidekey];
    if !args.only_sidekey {
        notes.extend(sync_tools::ensure_installed(&[
            ("rsync", "rsync"),
            ("unison", "unison"),
            ("syncthing", "syncthing"),
        ]));
        for (tool, program) in [
            (Tool::Rsync, "rsync"),
            (Tool::Unison, "unison"),
            (Tool::Syncthing, "syncthing"),
        ] {
            if sync_tools::on_path(program) {
                tools.push(tool);
            } else {
                notes.push(format!("{program} is not installed, so it was not run"));
            }
        }
        // rsync first: every ratio is against it.
        tools.sort_by_key(|t| *t != Tool::Rsync);
    }
    let scratch_parent = args.daemon.out.join("scratch");
    std::fs::create_dir_all(&scratch_parent)?;
    let scratch = tempfile::Builder::new()
        .prefix("sync-")
        .tempdir_in(&scratch_parent)
        .context("creating the sync scratch dir")?;
    let root = scratch.path();

    let mut results = Results {
        small: tools.iter().map(|t| Initial::new(*t)).collect(),
        large: Vec::new(),
        edits: Vec::new(),
        footprints: Vec::new(),
        big: None,
        problems: Vec::new(),
    };

    eprintln!(
        "making the small tree: {} files of {} bytes",
        args.files, args.file_size
    );
    let small = root.join("tree-small");
    sync_util::make_small_tree(&small, args.files, args.file_size)?;
    for round in 0..args.rounds {
        let last = round + 1 == args.rounds;
        for (i, tool) in tools.iter().enumerate() {
            let work = root.join(format!("run-{round}-{i}"));
            let outcome = small_round(&args, &bins, *tool, &small, &work, last, &mut results);
            if let Err(e) = outcome {
                results
                    .problems
                    .push(format!("{} on the small tree failed: {e:#}", tool.label()));
            }
            remove(&work);
        }
    }

    if args.large {
        eprintln!("making the large tree: one file of {} MiB", args.large_mib);
        let large = root.join("tree-large");
        let size = args.large_mib << 20;
        sync_util::make_large_tree(&large, size)?;
        for (i, tool) in tools.iter().enumerate() {
            let work = root.join(format!("large-{i}"));
            let mut initial = Initial::new(*tool);
            if let Err(e) = initial_sync(&args, &bins, &mut initial, &large, &work, 1, None) {
                results
                    .problems
                    .push(format!("{} on the large file failed: {e:#}", tool.label()));
            }
            results.large.push(initial);
            remove(&work);
        }
        remove(&large);
    }

    if args.big_files > 0 {
        remove(&small);
        eprintln!("making the big tree: {} files", args.big_files);
        let big = root.join("tree-big");
        sync_util::make_small_tree(&big, args.big_files, args.file_size)?;
        match big_run(&args, &bins, &big, root, &tools, &mut results) {
            Ok(pair) => results.big = Some(pair),
            Err(e) => results
                .problems
                .push(format!("the big tree run failed: {e:#}")),
        }
    }

    let (_, idle_share) = CpuTicks::now()?.shares_since(&ticks);
    notes.push(format!(
        "machine-wide CPU idle over the whole run: {:.0}% (load average at the start: {}); \
         other work on the machine slows every tool",
        idle_share * 100.0,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let versions = tool_versions(&tools);
    print_report(
        &args,
        &results,
        &Header {
            date,
            machine,
            versions,
            notes,
            took: started.elapsed(),
        },
    );
    Ok(())
}

/// One tool's initial sync of the small tree; in the last round also its
/// edits, RSS and idle CPU on that same synced tree.
fn small_round(
    args: &SyncArgs,
    bins: &Binaries,
    tool: Tool,
    tree: &Path,
    work: &Path,
    last: bool,
    results: &mut Results,
) -> Result<()> {
    let index = results
        .small
        .iter()
        .position(|i| i.tool == tool)
        .context("no slot for the tool")?;
    // Taken out while the live phase writes to the rest of `results`.
    let mut slot = std::mem::replace(&mut results.small[index], Initial::new(tool));
    let mut after = |src: &Path, dst: &Path, live: Live| -> Result<()> {
        if last {
            live_phase(args, tool, src, dst, live, results)
        } else {
            Ok(())
        }
    };
    let outcome = initial_sync(
        args,
        bins,
        &mut slot,
        tree,
        work,
        args.files as u64,
        Some(&mut after),
    );
    results.small[index] = slot;
    outcome
}

/// What is still running after an initial sync, for the live phase.
enum Live<'a> {
    None,
    Sidekey(&'a Pair),
    Syncthing(&'a SyncthingPair),
}

type After<'a> = Option<&'a mut dyn FnMut(&Path, &Path, Live) -> Result<()>>;

/// Copies `tree` to a fresh source, times `tool`'s initial sync of it into
/// a fresh destination, checks the result, and hands the live pair to
/// `after` before stopping it.
fn initial_sync(
    args: &SyncArgs,
    bins: &Binaries,
    slot: &mut Initial,
    tree: &Path,
    work: &Path,
    files: u64,
    after: After,
) -> Result<()> {
    let src = work.join("src");
    let dst = work.join("dst");
    std::fs::create_dir_all(work)?;
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(tree).arg(&src);
    sync_util::run_bounded(cp, None, RUN_LIMIT)?;
    sync_all();
    eprintln!(
        "{}: initial sync of {} file(s) ...",
        slot.tool.label(),
        files
    );
    let ticks = CpuTicks::now()?;
    match slot.tool {
        Tool::Rsync => {
            std::fs::create_dir_all(&dst)?;
            let run =
                sync_util::run_bounded(sync_tools::rsync_command(&src, &dst), None, RUN_LIMIT)?;
            slot.syncfs.push(sync_util::syncfs_time(&dst)?);
            record(slot, run.elapsed, ticks, &src, &dst)?;
            if let Some(after) = after {
                after(&src, &dst, Live::None)?;
            }
        }
        Tool::Unison => {
            std::fs::create_dir_all(&dst)?;
            let state = work.join("unison-state");
            std::fs::create_dir_all(&state)?;
            let run = sync_util::run_bounded(
                sync_tools::unison_command(&src, &dst, &state),
                None,
                RUN_LIMIT,
            )?;
            record(slot, run.elapsed, ticks, &src, &dst)?;
            if let Some(after) = after {
                after(&src, &dst, Live::None)?;
            }
        }
        Tool::Sidekey => {
            let pair = start_pair(bins, &work.join("daemons"), &src, &dst, files, SYNC_LIMIT)?;
            record(slot, pair.initial, ticks, &src, &dst)?;
            eprintln!(
                "  the peer reports {} entries (files and directories), {} moved",
                pair.files,
                megabytes(pair.bytes_moved)
            );
            let outcome = match after {
                Some(after) => after(&src, &dst, Live::Sidekey(&pair)),
                None => Ok(()),
            };
            pair.stop()?;
            outcome?;
        }
        Tool::Syncthing => {
            std::fs::create_dir_all(&dst)?;
            let pair = syncthing_pair(
                work,
                &src,
                &dst,
                files,
                args.syncthing_watch_delay,
                SYNC_LIMIT,
            )?;
            record(slot, pair.initial, ticks, &src, &dst)?;
            let outcome = match after {
                Some(after) => after(&src, &dst, Live::Syncthing(&pair)),
                None => Ok(()),
            };
            pair.stop()?;
            outcome?;
        }
    }
    Ok(())
}

fn record(
    slot: &mut Initial,
    took: Duration,
    ticks: CpuTicks,
    src: &Path,
    dst: &Path,
) -> Result<()> {
    let (_, idle) = CpuTicks::now()?.shares_since(&ticks);
    eprintln!(
        "  {} (machine CPU idle {:.0}%, of which this run used part)",
        duration(took),
        idle * 100.0
    );
    slot.times.push(took);
    if let Some(difference) = compare_trees(src, dst)? {
        eprintln!("  the trees differ after the sync: {difference}");
        slot.wrong.push(difference);
    }
    Ok(())
}

/// Edits, RSS and idle CPU on a tree a tool has just synced.
fn live_phase(
    args: &SyncArgs,
    tool: Tool,
    src: &Path,
    dst: &Path,
    live: Live,
    results: &mut Results,
) -> Result<()> {
    let gap = Duration::from_millis(args.edit_gap_ms);
    match (tool, live) {
        (Tool::Rsync, _) => {
            // Every edit keeps the file's size, and several land within one
            // second: with its default quick check (size and whole-second
            // mtime) rsync skips those; this makes it compare nanoseconds.
            let carry = || {
                let mut command = sync_tools::rsync_command(src, dst);
                command.arg("--modify-window=-1");
                command
            };
            let edits = edit_series(src, dst, args.edits, gap, Some(&carry), 1)?;
            results.edits.push(Edits {
                label: "rsync -a --modify-window=-1, run right after the write".into(),
                ..edits
            });
        }
        (Tool::Unison, _) => {
            let state = src.parent().context("no work dir")?.join("unison-state");
            let carry = || sync_tools::unison_command(src, dst, &state);
            let edits = edit_series(src, dst, args.edits, gap, Some(&carry), 2)?;
            results.edits.push(Edits {
                label: "unison -batch, run right after the write".into(),
                ..edits
            });
        }
        (Tool::Sidekey, Live::Sidekey(pair)) => {
            let synced_rss = rss_bytes(pair.peer.pid())?;
            let hub_rss = rss_bytes(pair.hub.pid())?;
            let down = edit_series(src, dst, args.edits, gap, None, 3)?;
            results.edits.push(Edits {
                label: "sidekey, hub → peer (watcher, long-poll)".into(),
                ..down
            });
            let up = edit_series(dst, src, args.edits, gap, None, 4)?;
            results.edits.push(Edits {
                label: "sidekey, peer → hub (watcher, PUT)".into(),
                ..up
            });
            let idle_cpu = idle(&[pair.peer.pid(), pair.hub.pid()], args.idle_secs)?;
            results.footprints.push(Footprint {
                label: "sidekey peer".into(),
                files: args.files as u64,
                empty_rss: pair.empty_rss,
                synced_rss,
                other_rss: hub_rss,
                idle_secs: args.idle_secs,
                idle_cpu: (idle_cpu[0], idle_cpu[1]),
            });
            for warning in pair.peer.warnings().iter().chain(&pair.hub.warnings()) {
                results.problems.push(format!("sidekeyd logged: {warning}"));
            }
        }
        (Tool::Syncthing, Live::Syncthing(pair)) => {
            let synced_rss = rss_bytes(pair.b.pid())?;
            let a_rss = rss_bytes(pair.a.pid())?;
            let edits = edit_series(src, dst, args.edits, gap, None, 5)?;
            results.edits.push(Edits {
                label: format!(
                    "syncthing, fsWatcherDelayS={} (default 10)",
                    args.syncthing_watch_delay
                ),
                ..edits
            });
            let idle_cpu = idle(&[pair.b.pid(), pair.a.pid()], args.idle_secs)?;
            results.footprints.push(Footprint {
                label: "syncthing B".into(),
                files: args.files as u64,
                empty_rss: pair.b_empty_rss,
                synced_rss,
                other_rss: a_rss,
                idle_secs: args.idle_secs,
                idle_cpu: (idle_cpu[0], idle_cpu[1]),
            });
        }
        _ => bail!("no live pair for {}", tool.label()),
    }
    Ok(())
}

/// Rewrites one small file `count` times in `src` and times each until
/// `dst`'s copy holds the new bytes. `carry`, when given, is run after each
/// write (for tools that do not watch); otherwise the tool's own watcher
/// has to notice.
fn edit_series(
    src: &Path,
    dst: &Path,
    count: usize,
    gap: Duration,
    carry: Option<&dyn Fn() -> Command>,
    seed: u64,
) -> Result<Edits> {
    let source = src.join(EDITED);
    let target = dst.join(EDITED);
    let size = std::fs::metadata(&source)
        .with_context(|| format!("{} is missing", source.display()))?
        .len() as usize;
    let mut content = vec![0u8; size.max(64)];
    let mut samples = Vec::with_capacity(count);
    let mut lost = 0;
    eprintln!("  {count} edits of {} → {}", short(src), short(dst));
    for i in 0..count {
        sync_util::fill(&mut content, (seed << 32) + i as u64 + 1);
        let begun = Instant::now();
        std::fs::write(&source, &content)
            .with_context(|| format!("writing {}", source.display()))?;
        let running = match carry {
            Some(carry) => Some(spawn_bounded(carry(), None)?),
            None => None,
        };
        let seen = loop {
            if std::fs::read(&target).is_ok_and(|now| now == content) {
                break Some(begun.elapsed());
            }
            if begun.elapsed() > EDIT_LIMIT {
                break None;
            }
            std::thread::sleep(EDIT_POLL);
        };
        if let Some(running) = running {
            let done = running.finish(RUN_LIMIT)?;
            if !done.status.success() {
                bail!("the carrying run failed: {}", done.stderr.trim());
            }
        }
        match seen {
            Some(took) => samples.push(took),
            None => lost += 1,
        }
        std::thread::sleep(gap);
    }
    samples.sort_unstable();
    eprintln!(
        "  p50 {}, p95 {}, lost {lost}",
        duration(quantile(&samples, 0.5)),
        duration(quantile(&samples, 0.95))
    );
    Ok(Edits {
        label: String::new(),
        samples,
        lost,
    })
}

/// CPU time each process uses over `secs` of idling, after a 2 s settle.
fn idle(pids: &[u32], secs: u64) -> Result<Vec<Duration>> {
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("  idle CPU over {secs} s ...");
    let before: Vec<Duration> = pids.iter().map(|p| cpu_time(*p)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<Duration> = pids.iter().map(|p| cpu_time(*p)).collect::<Result<_>>()?;
    Ok(after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect())
}

/// sidekey alone on the big tree, with rsync beside it for scale: initial
/// sync, RSS per indexed file, idle CPU.
fn big_run(
    args: &SyncArgs,
    bins: &Binaries,
    tree: &Path,
    root: &Path,
    tools: &[Tool],
    results: &mut Results,
) -> Result<(Initial, Initial)> {
    let files = args.big_files as u64;
    let mut rsync = Initial::new(Tool::Rsync);
    if tools.contains(&Tool::Rsync) {
        let work = root.join("big-rsync");
        initial_sync(args, bins, &mut rsync, tree, &work, files, None)?;
        remove(&work);
    }
    let mut sidekey = Initial::new(Tool::Sidekey);
    let work = root.join("big-sidekey");
    let mut footprint = None;
    let mut after = |_: &Path, _: &Path, live: Live| -> Result<()> {
        let Live::Sidekey(pair) = live else {
            bail!("no sidekey pair");
        };
        let synced_rss = rss_bytes(pair.peer.pid())?;
        let hub_rss = rss_bytes(pair.hub.pid())?;
        let cpu = idle(&[pair.peer.pid(), pair.hub.pid()], args.big_idle_secs)?;
        footprint = Some(Footprint {
            label: "sidekey peer".into(),
            files,
            empty_rss: pair.empty_rss,
            synced_rss,
            other_rss: hub_rss,
            idle_secs: args.big_idle_secs,
            idle_cpu: (cpu[0], cpu[1]),
        });
        Ok(())
    };
    initial_sync(
        args,
        bins,
        &mut sidekey,
        tree,
        &work,
        files,
        Some(&mut after),
    )?;
    remove(&work);
    results.footprints.extend(footprint);
    Ok((rsync, sidekey))
}

fn binaries(opts: &DaemonOpts) -> Result<Binaries> {
    if !opts.no_build && opts.sidekeyd.is_none() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the bench crate has no parent directory")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building: cargo build --release --locked -p sidekeyctl");
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "sidekeyctl"])
            .current_dir(workspace)
            .status()
            .context("running cargo build for sidekeyctl")?;
        if !status.success() {
            bail!("cargo build --release -p sidekeyctl failed ({status})");
        }
    }
    let sidekeyd = crate::daemon::prepare_binary(opts)?;
    let sidekeyctl = sidekeyd.with_file_name("sidekeyctl");
    if !sidekeyctl.is_file() {
        bail!(
            "no sidekeyctl beside {}; build it with: cargo build --release -p sidekeyctl",
            sidekeyd.display()
        );
    }
    Ok(Binaries {
        sidekeyd,
        sidekeyctl,
    })
}

fn remove(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}

fn short(path: &Path) -> String {
    let parts: Vec<_> = path.iter().collect();
    let tail: PathBuf = parts[parts.len().saturating_sub(2)..].iter().collect();
    tail.display().to_string()
}

fn tool_versions(tools: &[Tool]) -> Vec<String> {
    let mut out = Vec::new();
    for tool in tools {
        match tool {
            Tool::Rsync => out.push(sync_tools::version("rsync", "--version")),
            Tool::Unison => out.push(sync_tools::version("unison", "-version")),
            Tool::Syncthing => out.push(sync_tools::version("syncthing", "--version")),
            Tool::Sidekey => {}
        }
    }
    out
}

struct Header {
    date: String,
    machine: Machine,
    versions: Vec<String>,
    notes: Vec<String>,
    took: Duration,
}

fn print_report(args: &SyncArgs, results: &Results, header: &Header) {
    println!("# sidekey sync benchmark");
    println!();
    println!("date:    {}", header.date);
    println!("machine: {}", header.machine);
    println!("command: {}", command_line());
    println!("took:    {}", duration(header.took));
    for version in &header.versions {
        println!("tool:    {version}");
    }
    for note in &header.notes {
        println!("note:    {note}");
    }
    if !args.only_sidekey
        && let Some(problem) = sync_tools::unison_watch_problem()
    {
        println!("note:    {problem}; unison is timed as one -batch run per edit instead");
    }
    println!();

    let rsync_small = results
        .small
        .iter()
        .find(|i| i.tool == Tool::Rsync && !i.times.is_empty())
        .map(Initial::median);
    let small_bytes = (args.files * args.file_size) as f64;
    println!(
        "## Initial sync: {} files of {} bytes (median of {})",
        args.files, args.file_size, args.rounds
    );
    println!();
    println!(
        "{}",
        initial_table(&results.small, rsync_small, small_bytes, args.files)
    );
    println!();
    if let Some(rsync) = results.small.iter().find(|i| i.tool == Tool::Rsync)
        && !rsync.syncfs.is_empty()
    {
        println!(
            "rsync does not fsync; a syncfs right after it took {} more (median).",
            duration(report::median(&rsync.syncfs))
        );
        println!();
    }

    let large_bytes = (args.large_mib << 20) as f64;
    if results.large.is_empty() {
        println!("## Initial sync: one large file: not run (pass --large)");
    } else {
        let rsync_large = results
            .large
            .iter()
            .find(|i| i.tool == Tool::Rsync && !i.times.is_empty())
            .map(Initial::median);
        println!("## Initial sync: one file of {} MiB", args.large_mib);
        println!();
        println!(
            "{}",
            initial_table(&results.large, rsync_large, large_bytes, 1)
        );
    }
    println!();

    println!(
        "## One small edit, write → equal bytes on the other side ({} edits each, {} ms apart, polled every 1 ms, on the synced {}-file tree)",
        args.edits, args.edit_gap_ms, args.files
    );
    println!();
    let mut table = report::table(&["how", "p50", "p95", "max", "lost (> 10 s)"]);
    for edits in &results.edits {
        table.add_row(vec![
            edits.label.clone(),
            duration(quantile(&edits.samples, 0.5)),
            duration(quantile(&edits.samples, 0.95)),
            duration(edits.samples.last().copied().unwrap_or_default()),
            edits.lost.to_string(),
        ]);
    }
    println!("{table}");
    println!();

    println!("## Memory and idle CPU after the initial sync");
    println!();
    let mut table = report::table(&[
        "process",
        "files",
        "RSS before",
        "RSS synced",
        "per file",
        "other side RSS",
        "idle CPU (receiver + sender)",
    ]);
    for f in &results.footprints {
        table.add_row(vec![
            f.label.clone(),
            f.files.to_string(),
            megabytes(f.empty_rss),
            megabytes(f.synced_rss),
            format!("{:.0} B", f.per_file()),
            megabytes(f.other_rss),
            format!(
                "{:.2}% over {} s ({} + {})",
                f.cpu_percent(),
                f.idle_secs,
                duration(f.idle_cpu.0),
                duration(f.idle_cpu.1)
            ),
        ]);
    }
    println!("{table}");
    println!();

    if let Some((rsync, sidekey)) = &results.big {
        println!("## Big tree: {} files", args.big_files);
        println!();
        let rsync_big = (!rsync.times.is_empty()).then(|| rsync.median());
        let bytes = (args.big_files * args.file_size) as f64;
        let rows = [rsync, sidekey].map(|i| Initial {
            tool: i.tool,
            times: i.times.clone(),
            syncfs: i.syncfs.clone(),
            wrong: i.wrong.clone(),
        });
        let rows: Vec<Initial> = rows.into_iter().filter(|i| !i.times.is_empty()).collect();
        println!("{}", initial_table(&rows, rsync_big, bytes, args.big_files));
        println!();
    }

    print_targets(args, results);

    if !results.problems.is_empty() {
        println!();
        println!("## Problems seen");
        println!();
        for problem in &results.problems {
            println!("* {problem}");
        }
    }
}

fn initial_table(
    rows: &[Initial],
    rsync: Option<Duration>,
    bytes: f64,
    files: usize,
) -> comfy_table::Table {
    let mut table = report::table(&[
        "tool",
        "median",
        "range",
        "vs rsync",
        "files/s",
        "MB/s",
        "trees equal",
    ]);
    for row in rows {
        if row.times.is_empty() {
            table.add_row(vec![
                row.tool.label().to_string(),
                "failed".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        let median = row.median();
        let min = row.times.iter().min().copied().unwrap_or_default();
        let max = row.times.iter().max().copied().unwrap_or_default();
        let secs = median.as_secs_f64().max(1e-9);
        table.add_row(vec![
            row.tool.label().to_string(),
            duration(median),
            format!("{}–{}", duration(min), duration(max)),
            rsync.map_or_else(String::new, |r| ratio(secs / r.as_secs_f64().max(1e-9))),
            format!("{:.0}", files as f64 / secs),
            format!("{:.0}", bytes / secs / 1e6),
            if row.wrong.is_empty() {
                "yes".into()
            } else {
                format!("NO: {}", row.wrong.join("; "))
            },
        ]);
    }
    table
}

fn print_targets(args: &SyncArgs, results: &Results) {
    println!("## Targets");
    println!();
    let mut table = report::table(&["measure", "figure", "target", "result"]);
    let find = |rows: &[Initial], tool: Tool| {
        rows.iter()
            .find(|i| i.tool == tool && !i.times.is_empty())
            .map(Initial::median)
    };
    let sidekey_small = find(&results.small, Tool::Sidekey);
    let rsync_small = find(&results.small, Tool::Rsync);
    if let (Some(s), Some(r)) = (sidekey_small, rsync_small) {
        let x = s.as_secs_f64() / r.as_secs_f64();
        table.add_row(vec![
            format!("initial sync, {} small files, vs rsync", args.files),
            format!("{} ({} vs {})", ratio(x), duration(s), duration(r)),
            format!("≤ {TARGET_SMALL_VS_RSYNC:.1}×"),
            verdict(x <= TARGET_SMALL_VS_RSYNC).into(),
        ]);
    }
    for other in [Tool::Unison, Tool::Syncthing] {
        if let (Some(s), Some(o)) = (sidekey_small, find(&results.small, other)) {
            table.add_row(vec![
                format!(
                    "initial sync, {} small files, vs {}",
                    args.files,
                    other.label()
                ),
                format!("{} vs {}", duration(s), duration(o)),
                "faster".into(),
                verdict(s < o).into(),
            ]);
        }
    }
    if let Some(s) = find(&results.large, Tool::Sidekey) {
        let rate = (args.large_mib << 20) as f64 / s.as_secs_f64() / 1e6;
        table.add_row(vec![
            format!("initial sync, one {} MiB file", args.large_mib),
            format!("{rate:.0} MB/s ({})", duration(s)),
            format!("≥ {TARGET_LARGE_MB_S:.0} MB/s"),
            verdict(rate >= TARGET_LARGE_MB_S).into(),
        ]);
    } else {
        table.add_row(vec![
            format!("initial sync, one {} MiB file", args.large_mib),
            "not run (--large)".into(),
            format!("≥ {TARGET_LARGE_MB_S:.0} MB/s"),
            "-".into(),
        ]);
    }
    for edits in results
        .edits
        .iter()
        .filter(|e| e.label.starts_with("sidekey"))
    {
        let p50 = quantile(&edits.samples, 0.5);
        let p95 = quantile(&edits.samples, 0.95);
        let whole = edits.lost == 0;
        table.add_row(vec![
            format!("edit propagation p50, {}", edits.label),
            duration(p50),
            format!("< {}", duration(TARGET_EDIT_P50)),
            verdict(whole && p50 < TARGET_EDIT_P50).into(),
        ]);
        table.add_row(vec![
            format!("edit propagation p95, {}", edits.label),
            format!("{}{}", duration(p95), lost_note(edits.lost)),
            format!("< {}", duration(TARGET_EDIT_P95)),
            verdict(whole && p95 < TARGET_EDIT_P95).into(),
        ]);
    }
    for f in results
        .footprints
        .iter()
        .filter(|f| f.label.starts_with("sidekey"))
    {
        let judged = f.files >= TARGET_TREE_FILES;
        let target = |text: String| {
            if judged {
                text
            } else {
                format!("({text} at {TARGET_TREE_FILES})")
            }
        };
        let result = |pass: bool| {
            if judged {
                verdict(pass).to_string()
            } else {
                "-".to_string()
            }
        };
        table.add_row(vec![
            format!("peer RSS per indexed file, {} files", f.files),
            format!("{:.0} B", f.per_file()),
            target(format!("< {TARGET_RSS_PER_FILE:.0} B")),
            result(f.per_file() < TARGET_RSS_PER_FILE),
        ]);
        table.add_row(vec![
            format!(
                "idle CPU, hub + peer, {} files watched, {} s",
                f.files, f.idle_secs
            ),
            format!("{:.2}% of one core", f.cpu_percent()),
            target(format!("< {TARGET_IDLE_CPU_PERCENT:.0}%")),
            result(f.cpu_percent() < TARGET_IDLE_CPU_PERCENT),
        ]);
    }
    println!("{table}");
    println!();

    let mut table = report::table(&["what users quote", "quoted", "measured here"]);
    let unison_edit = results
        .edits
        .iter()
        .find(|e| e.label.starts_with("unison"))
        .map(|e| {
            format!(
                "{} p50 (one -batch run per edit)",
                duration(quantile(&e.samples, 0.5))
            )
        });
    table.add_row(vec![
        "unison carrying one edit".to_string(),
        duration(QUOTED_UNISON_EDIT),
        unison_edit.unwrap_or_else(|| "not run".into()),
    ]);
    table.add_row(vec![
        format!("rsync copying {} small files", args.files),
        duration(QUOTED_RSYNC_SMALL),
        rsync_small.map_or_else(|| "not run".into(), duration),
    ]);
    println!("{table}");
}

fn lost_note(lost: usize) -> String {
    if lost == 0 {
        String::new()
    } else {
        format!(" ({lost} lost)")
    }
}
