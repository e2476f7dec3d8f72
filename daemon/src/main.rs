#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use sidekeyd::logging::LogHandle;
use sidekeyd::service::{self, Detached, Reporter};
use sidekeyd::{Args, Config, Daemon, Listeners};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    sidekeyd::memory::limit_arenas();
    if let Err(e) = sidekeyd::guard::keep_memory_private() {
        eprintln!("sidekeyd: cannot keep other processes out of its memory: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekeyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(mut args: Args) -> Result<()> {
    if args.init_master_key {
        let path = service::init_master_key(&args)?;
        println!(
            "created the master key {} (32 random bytes, mode 0600); back it up: without it the store cannot be read",
            path.display()
        );
        return Ok(());
    }
    // A reload re-reads this path after --daemonize has moved to /.
    if let Some(path) = &args.config {
        args.config = Some(std::path::absolute(path)?);
    }
    let config = Config::load(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    // Forking is only sound while this process has one thread: before the
    // runtime, before logging.
    let reporter = if args.daemonize {
        match service::daemonize(&args, &config)? {
            Detached::Parent(waiter) => {
                print!("{}", waiter.wait()?);
                return Ok(());
            }
            Detached::Daemon(reporter) => Some(reporter),
        }
    } else {
        None
    };
    let logs = sidekeyd::logging::init(&config);
    let result = serve(&args, config, logs, reporter.as_ref());
    if let Some(reporter) = &reporter {
        if let Err(e) = &result {
            reporter.failed(e);
        }
        reporter.remove_pid_file();
    }
    result
}

fn serve(args: &Args, config: Config, logs: LogHandle, reporter: Option<&Reporter>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Installed first: SIGHUP's default action would kill a daemon that
        // is still opening its store.
        let signals = Signals::install()?;
        // The data-dir lock comes first, so a second daemon is told so
        // before it touches the socket or the port.
        let daemon = Daemon::open(config.clone())?;
        sidekeyd::memory::release_freed();
        let listeners = Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        let args = args.clone();
        sidekeyd::run(daemon, listeners, shutdown.clone(), move |daemon| {
            let banner = daemon.describe();
            print!("{banner}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            if let Some(reporter) = reporter {
                reporter.ready(&banner);
            }
            service::notify_ready();
            daemon
                .tasks()
                .spawn(signals.watch(daemon.reloadable(), args, logs, shutdown));
        })
        .await
    })
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        let install =
            |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// SIGHUP reloads the config; SIGTERM and SIGINT start the bounded drain.
    async fn watch(
        mut self,
        daemon: service::Reloadable,
        args: Args,
        logs: LogHandle,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    service::reload(&daemon, &args, &logs);
                }
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    break;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    break;
                }
                () = shutdown.cancelled() => return,
            }
        }
        service::notify_stopping();
        shutdown.cancel();
    }
}
