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

#![forbid(unsafe_code)]

mod baseline;
mod cli;
mod control;
mod daemon;
mod foundation;
mod load;
mod report;
mod store_cache;
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
