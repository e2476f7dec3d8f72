//! The command line. Each benchmark family is a subcommand (`foundation`
//! today; `proxy` and `sync` later), so one binary runs them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sidekey-bench",
    about = "sidekey benchmarks: figures, targets and pass/fail"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Key verification through /v1/whoami, idle RSS and startup time.
    Foundation(FoundationArgs),
    /// Sync side by side with rsync, unison and Syncthing: initial sync,
    /// edit propagation, RSS per indexed file and idle CPU.
    Sync(crate::sync::SyncArgs),
    /// The proxy side by side with direct, nginx and mitmproxy: throughput,
    /// latency, CONNECT handshakes and RSS with 10,000 idle connections.
    Proxy(crate::proxy::ProxyArgs),
    /// Internal: the proxy bench's upstream, plain and TLS, as its own process.
    #[command(hide = true)]
    ProxyUpstream(crate::proxy_upstream::UpstreamArgs),
    /// Internal: the trivial baseline server, run as its own process so that
    /// it gets a runtime of its own, as the daemon does.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Options shared by every benchmark that runs the real daemon.
#[derive(Debug, Args)]
pub struct DaemonOpts {
    /// The sidekeyd binary. Default: `sidekeyd` beside this binary, built
    /// first with `cargo build --release -p sidekeyd`.
    #[arg(long)]
    pub sidekeyd: Option<PathBuf>,
    /// Do not run `cargo build` for sidekeyd first.
    #[arg(long)]
    pub no_build: bool,
    /// Where populated data dirs are cached, and scratch dirs live.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out"))]
    pub out: PathBuf,
    /// Throw away the cached data dirs and populate them again.
    #[arg(long)]
    pub repopulate: bool,
}

#[derive(Debug, Args)]
pub struct FoundationArgs {
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Load generator threads (default: one per CPU).
    #[arg(long)]
    pub load_threads: Option<usize>,
    /// Rounds of [baseline, valid key, unknown key] runs, in rotating order;
    /// each figure is the median over the rounds. Two cores shared by the
    /// load generator and the server make single runs noisy.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Measured seconds per load run (after the warm-up).
    #[arg(long, default_value_t = 2)]
    pub duration: u64,
    /// Warm-up seconds per load run, not measured.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Seconds of the single-connection (unloaded) latency run per target.
    #[arg(long, default_value_t = 1)]
    pub unloaded: u64,
    /// Connections in the store for the verification and RSS runs.
    #[arg(long, default_value_t = 10_000)]
    pub store_conns: usize,
    /// Connections in the store for the startup runs.
    #[arg(long, default_value_t = 100_000)]
    pub startup_conns: usize,
    /// Startup runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub startup_runs: usize,
    /// Seconds the daemon sits idle before its RSS is read.
    #[arg(long, default_value_t = 3)]
    pub idle: u64,
}
