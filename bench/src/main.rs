//! sidekey-bench: one command per benchmark family. `main` only parses the
//! command line and hands over to the module that owns the benchmark.
//!
//! # Layout
//! - `cli`          the command line: one subcommand per benchmark
//! - `foundation`   key verification, idle RSS and startup, with targets
//! - `load`         the keep-alive HTTP/1.1 load generator and its statistics
//! - `baseline`     a trivial hyper server to compare the daemon against
//! - `daemon`       spawns and stops a real `sidekeyd` on a private data dir
//! - `control`      a minimal client for the control socket
//! - `store_cache`  populated data dirs, built once and cached under `bench/out/`
//! - `verify_model` a model of key verification, timed in isolation
//! - `sysinfo`      `/proc` readers: RSS, CPU time, machine description
//! - `report`       tables and formatting
//! - `proxy`        the proxy side by side with direct, nginx, nginx-tls, mitmproxy
//! - `proxy_load`   plain, TLS and CONNECT+TLS clients: load, handshakes, idle
//! - `proxy_bodies` big answers and an upload, sidekey beside nginx
//! - `proxy_sse`    per-event latency of a server-sent event stream
//! - `proxy_upstream` the upstream API (plain and TLS) and its test CA
//! - `proxy_nginx`  nginx injecting the header, plain or TLS on both legs
//! - `proxy_mitm`   mitmdump with a header addon, in a venv under `bench/out/`
//! - `sync`         sync side by side with rsync, unison and Syncthing
//! - `sync_sidekey` a hub and a peer sidekeyd, set up through sidekeyctl
//! - `sync_tools`   rsync, unison and Syncthing, headless on loopback
//! - `sync_util`    trees, bounded child runs, a tiny HTTP client

#![forbid(unsafe_code)]

mod baseline;
mod cli;
mod control;
mod daemon;
mod foundation;
mod load;
mod proxy;
mod proxy_bodies;
mod proxy_load;
mod proxy_mitm;
mod proxy_nginx;
mod proxy_sse;
mod proxy_upstream;
mod report;
mod store_cache;
mod sync;
mod sync_sidekey;
mod sync_tools;
mod sync_util;
mod sysinfo;
mod verify_model;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sidekey-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Foundation(args) => foundation::run(args).await,
            Command::Sync(args) => sync::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::ProxyUpstream(args) => proxy_upstream::serve(args).await,
            Command::BaselineServer { listen } => baseline::serve(listen).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekey-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
