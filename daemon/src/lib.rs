//! sidekeyd: keeps secrets away from AI agents and keeps their workspaces in sync.
//!
//! # Layout
//! Components are plain structs holding exactly the parts they use, composed
//! here; none takes the whole daemon (see docs/architecture.md).
//! - `config`    the effective configuration: file, `SIDEKEY_*` env, flags
//! - `live`      the config in force now, which SIGHUP swaps
//! - `error`     the `{error, message, status}` shape; codes are `api::ErrorCode`
//! - `keys`      key minting, parsing, hashing, display; the `Secret` type
//! - `store`     the only code that knows sled; seals every secret at rest
//! - `registry`  connections, credentials and grants; the key-verification index
//! - `ratelimit` per-connection token buckets
//! - `hosts`     host patterns that bind credentials to hosts
//! - `inject`    the credential types and the shape of their secrets
//! - `control`   the Unix-socket API and its routes
//! - `proxy`     the injecting proxy: one pure policy, the forwarder, the hyper
//!   path, CONNECT interception, /v1/proxy; `proxy::wire` holds the wire rules once;
//!   `proxy::scrub` the streaming matcher that masks responses and scans uploads
//! - `audit`     one record per proxied request, and its retention
//! - `sync`      two-way folder sync: shares on a hub, sessions on peers
//! - `shutdown`  the one task tree: every task is spawned there and drained at exit
//! - `fsutil`    private directories and the data-dir lock
//! - `logging`   tracing setup
//! - `guard`     keeping other processes out of the daemon's memory
//! - `memory`    keeping glibc's heap from holding on to freed memory
//! - `service`   life under a service manager: readiness, reload, `--daemonize`

mod audit;
pub mod config;
mod control;
mod error;
mod fsutil;
pub mod guard;
mod hosts;
mod http_util;
mod inject;
mod keys;
mod live;
pub mod logging;
pub mod memory;
mod proxy;
mod ratelimit;
mod registry;
pub mod service;
pub mod shutdown;
mod store;
mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Args, Config};
/// The streaming secret matcher, public for its fuzz target (`fuzz/`).
pub use proxy::scrub;
use registry::Registry;
use store::Store;

/// The daemon's state, shared by every listener.
pub struct Daemon {
    /// The config as it was at start: addresses and paths, which need a restart.
    config: Config,
    /// The config in force now; SIGHUP swaps it. Read it with [`Daemon::live_config`].
    live: Arc<live::Live>,
    registry: Arc<Registry>,
    authority: Arc<proxy::tls::Authority>,
    upstream: Arc<proxy::upstream::Upstream>,
    audit: Arc<audit::Audit>,
    sync: Arc<sync::SyncEngine>,
    /// Every task's tree; its token is cancelled at shutdown.
    tasks: shutdown::Tasks,
    started: Instant,
    proxy_addr: SocketAddr,
    master_key_path: std::path::PathBuf,
    _lock: fsutil::DataDirLock,
}

/// Every socket the daemon serves, bound before [`run`] so that a bind error
/// is reported before anything starts.
pub struct Listeners {
    proxy: TcpListener,
    control: interprocess::local_socket::tokio::Listener,
    /// Only when `sync_listen` is set.
    sync: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let proxy = TcpListener::bind(config.proxy_listen).await.with_context(|| {
            format!(
                "cannot listen on {} for the proxy; is another sidekeyd running? Set proxy_listen to another address",
                config.proxy_listen
            )
        })?;
        if !config.proxy_listen.ip().is_loopback() {
            tracing::warn!(addr = %config.proxy_listen, "the proxy listens beyond loopback, as the config asks");
        }
        let control = control::bind(&config.socket_path).await?;
        let sync = match config.sync_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for sync; is another sidekeyd running? Set sync_listen to another address")
            })?),
            None => None,
        };
        Ok(Listeners {
            proxy,
            control,
            sync,
        })
    }

    pub fn sync_addr(&self) -> Option<SocketAddr> {
        self.sync.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .expect("a bound listener has an address")
    }
}

impl Daemon {
    /// Locks the data dir, finds the master key and opens the store.
    pub fn open(config: Config) -> Result<Daemon> {
        fsutil::create_private_dir(&config.data_dir)?;
        let lock = fsutil::DataDirLock::acquire(&config.data_dir)?;
        let master = store::master_key::load_or_create(&config.data_dir)?;
        let store = Store::open(&config.data_dir, &master)?;
        let registry = Arc::new(Registry::load(store).map_err(|e| anyhow::anyhow!(e.message))?);
        registry.set_default_rate(config.default_rate());
        let authority = Arc::new(proxy::tls::Authority::load_or_create(
            registry.store(),
            &config.data_dir,
        )?);
        let upstream = Arc::new(proxy::upstream::Upstream::new(
            config.upstream_ca_file.as_deref(),
            proxy::dial::Dialer::new(config.upstream_proxy.clone(), &config.upstream_no_proxy),
        )?);
        let sync = sync::SyncEngine::new(
            registry.clone(),
            config.sync_listen,
            config.data_dir.clone(),
        )?;
        let audit = Arc::new(
            audit::Audit::open(&config.data_dir, config.audit_retention.as_secs()).with_context(
                || {
                    format!(
                        "cannot open the audit log in {}; check that the data dir is writable",
                        config.data_dir.join("audit").display()
                    )
                },
            )?,
        );
        Ok(Daemon {
            authority,
            upstream,
            audit,
            sync: Arc::new(sync),
            tasks: shutdown::Tasks::default(),
            live: Arc::new(live::Live::new(config.clone())),
            config,
            registry,
            started: Instant::now(),
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            master_key_path: master.path,
            _lock: lock,
        })
    }

    /// The reloadable settings in force now (egress, audit_retention,
    /// default_rate, log_level).
    pub fn live_config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// What a config reload changes.
    pub fn reloadable(&self) -> service::Reloadable {
        service::Reloadable {
            live: self.live.clone(),
            registry: self.registry.clone(),
        }
    }

    /// The daemon's task tree, for tasks started from outside the library.
    pub fn tasks(&self) -> &shutdown::Tasks {
        &self.tasks
    }

    /// The lines printed at start: where everything lives.
    pub fn describe(&self) -> String {
        let (conns, creds, _) = self.registry.counts();
        format!(
            "sidekeyd {} ready\n  data dir:   {}\n  store:      {} ({conns} connections, {creds} credentials)\n  master key: {}\n  control:    {}\n  proxy:      http://{}\n",
            env!("CARGO_PKG_VERSION"),
            self.config.data_dir.display(),
            self.registry.store().path().display(),
            self.master_key_path.display(),
            self.config.socket_path.display(),
            self.proxy_addr,
        ) + &match &self.config.upstream_proxy {
            Some(via) => format!("  upstream:   through {via}\n"),
            None => String::new(),
        } + &match self.sync.listen() {
            Some(addr) => format!(
                "  sync:       {addr} ({})\n",
                self.sync.identity().fingerprint
            ),
            None => String::new(),
        }
    }
}

/// Serves until `shutdown` is cancelled, then drains (bounded) and flushes.
/// `on_ready` runs once every listener is serving.
pub async fn run(
    mut daemon: Daemon,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Arc<Daemon>),
) -> Result<()> {
    daemon.proxy_addr = listeners.proxy_addr();
    let tasks = shutdown::Tasks::new(shutdown.clone());
    Arc::get_mut(&mut daemon.sync)
        .expect("nothing holds the sync engine before run")
        .attach(listeners.sync_addr(), tasks.clone());
    daemon.tasks = tasks.clone();
    let daemon = Arc::new(daemon);
    proxy::start(
        listeners.proxy,
        &proxy::Proxy {
            registry: daemon.registry.clone(),
            audit: daemon.audit.clone(),
            upstream: daemon.upstream.clone(),
            authority: daemon.authority.clone(),
            live: daemon.live.clone(),
            proxy_addr: daemon.proxy_addr,
            tasks: tasks.clone(),
        },
    )?;
    tasks.spawn(control::serve(
        listeners.control,
        Arc::new(control::Control {
            registry: daemon.registry.clone(),
            sync: daemon.sync.clone(),
            audit: daemon.audit.clone(),
            live: daemon.live.clone(),
            tasks: tasks.clone(),
            about: control::About {
                started: daemon.started,
                data_dir: daemon.config.data_dir.clone(),
                socket: daemon.config.socket_path.clone(),
                proxy_listen: daemon.proxy_addr,
                upstream_proxy: daemon.config.upstream_proxy.as_ref().map(|p| p.to_string()),
                ca_path: daemon.authority.ca_path.clone(),
                ca_bundle: daemon.authority.bundle_path.clone(),
            },
        }),
    ));
    tasks.spawn(flush_last_used(
        daemon.registry.clone(),
        daemon.config.last_used_flush,
        shutdown.clone(),
    ));
    tasks.spawn(prune_audit(
        daemon.audit.clone(),
        daemon.live.clone(),
        shutdown.clone(),
    ));
    let (audit, stop) = (daemon.audit.clone(), shutdown.clone());
    tasks.spawn(async move { audit.write_held_lines(&stop).await });
    if let Some(listener) = listeners.sync {
        tasks.spawn(sync::hub::server::serve(
            listener,
            daemon.sync.clone(),
            tasks.clone(),
        ));
    }
    daemon.sync.start();
    on_ready(&daemon);

    shutdown.cancelled().await;
    let drain = daemon.config.shutdown_timeout;
    if !tasks.drain(drain).await {
        tracing::warn!(
            timeout_secs = drain.as_secs(),
            "shutdown drain timed out; closing the rest"
        );
    }
    daemon.audit.flush();
    daemon
        .registry
        .flush_last_used()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    daemon.registry.store().flush().await?;
    let _ = std::fs::remove_file(&daemon.config.socket_path);
    tracing::info!("sidekeyd stopped");
    Ok(())
}

/// Writes `last_used` in batches, never once per request.
async fn flush_last_used(registry: Arc<Registry>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(e) = registry.flush_last_used().await {
                    tracing::warn!(error = %e.message, "writing last_used failed; will retry");
                }
                // sled cleans its log in the background for a while after it
                // opens a store, and requests come in bursts: give back what
                // either freed once it is done.
                memory::release_freed_soon();
            }
        }
    }
}

/// Drops audit records past `audit_retention`: at start, then every half
/// retention period (at least every second, at most every minute).
async fn prune_audit(audit: Arc<audit::Audit>, live: Arc<live::Live>, shutdown: CancellationToken) {
    loop {
        let retention = live.get().audit_retention.as_secs();
        let every = std::time::Duration::from_secs((retention / 2).clamp(1, 60));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {
                match audit.prune(retention) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(segments = n, "pruned old audit records"),
                    Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
                }
            }
        }
    }
}
