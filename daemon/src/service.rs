//! Life under a service manager: systemd readiness (`READY=1`, `RELOADING=1`,
//! `STOPPING=1`), config reload on SIGHUP, and `--daemonize`, whose parent
//! waits for the detached daemon to report ready or its startup error.
//!
//! [`daemonize()`] forks, so it must run before any thread or runtime exists.
//! [`init_master_key`] prepares a service's key before it first starts.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use sd_notify::NotifyState;

use crate::config::{Args, Config};
use crate::fsutil;
use crate::live::Live;
use crate::logging::LogHandle;
use crate::registry::Registry;
use crate::store::master_key;

/// Tells systemd (when `NOTIFY_SOCKET` is set) that every listener is bound
/// and the store is open.
pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd the daemon has begun its bounded drain.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Re-reads the config (file, then the same env and flags as at start) and
/// applies what can change while running. An invalid config changes nothing.
/// What a reload changes, and nothing else of the daemon.
#[derive(Clone)]
pub struct Reloadable {
    pub(crate) live: Arc<Live>,
    pub(crate) registry: Arc<Registry>,
}

pub fn reload(daemon: &Reloadable, args: &Args, logs: &LogHandle) {
    let mut reloading = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        reloading.push(now);
    }
    notify(&reloading);
    match Config::load(args) {
        Err(e) => tracing::error!("config reload refused, the old config stays in force: {e:#}"),
        Ok(new) => {
            if let Err(e) = apply(daemon, new, logs) {
                tracing::error!("config reload refused, the old config stays in force: {e:#}");
            }
        }
    }
    notify_ready();
}

fn apply(daemon: &Reloadable, new: Config, logs: &LogHandle) -> Result<()> {
    let old = daemon.live.get();
    let (next, restart) = old.reloaded(new);
    logs.set_level(&next.log_level)?;
    daemon.registry.set_default_rate(next.default_rate());
    for key in restart {
        tracing::warn!("{key} changed in the config; restart sidekeyd to apply it");
    }
    tracing::info!(
        log_level = %next.log_level,
        egress = ?next.egress,
        audit_retention = %crate::config::render_duration(next.audit_retention),
        default_rate = next.default_rate.as_deref().unwrap_or("none"),
        "config reloaded"
    );
    daemon.live.set(next);
    Ok(())
}

/// `sidekeyd --init-master-key`: creates the key at `--master-key-file`, else
/// where [`crate::Daemon::open`] would look for it, and returns where.
pub fn init_master_key(args: &Args) -> Result<PathBuf> {
    // An explicit path needs no config: `sidekeyctl service install` runs
    // this before the service's environment exists.
    let path = match &args.master_key_file {
        Some(path) => path.clone(),
        None => {
            let config = Config::load(args)?;
            let (path, in_data_dir) = master_key::locate(&config.data_dir);
            if in_data_dir {
                // As the daemon's first start would: the data dir is its own.
                fsutil::create_private_dir(&config.data_dir)?;
            }
            path
        }
    };
    master_key::init(&path)?;
    Ok(path)
}

/// Which side of the fork this process is on.
pub enum Detached {
    /// The original process: it waits for the daemon, then exits.
    Parent(Waiter),
    /// The detached daemon: it reports ready, or its error, through this.
    Daemon(Reporter),
}

/// Where `--daemonize` puts the pid file and the log when no flag says.
pub fn daemon_paths(args: &Args, config: &Config) -> (PathBuf, PathBuf) {
    let pid_file = args.pid_file.clone().unwrap_or_else(|| {
        config
            .socket_path
            .parent()
            .unwrap_or(&config.data_dir)
            .join("sidekeyd.pid")
    });
    let log_file = args
        .log_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("sidekeyd.log"));
    (pid_file, log_file)
}

/// Forks the daemon off the terminal. The parent gets a [`Waiter`], the
/// daemon a [`Reporter`]; the two share a pipe that the daemon writes once.
pub fn daemonize(args: &Args, config: &Config) -> Result<Detached> {
    let (pid_file, log_file) = daemon_paths(args, config);
    let pid_file = std::path::absolute(&pid_file)?;
    let log_file = std::path::absolute(&log_file)?;
    for file in [&pid_file, &log_file] {
        if let Some(dir) = file.parent()
            && !dir.exists()
        {
            fsutil::create_private_dir(dir)?;
        }
    }
    check_pid_file(&pid_file)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let (reader, writer) = std::io::pipe().context("cannot create the readiness pipe")?;
    let outcome = daemonize::Daemonize::new()
        .pid_file(&pid_file)
        .umask(0o077)
        .stdout(log.try_clone()?)
        .stderr(log)
        .execute();
    match outcome {
        daemonize::Outcome::Parent(Err(e)) => Err(anyhow!("cannot detach: {e}")),
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(writer);
            Ok(Detached::Parent(Waiter {
                reader,
                pid_file,
                log_file,
            }))
        }
        daemonize::Outcome::Child(result) => {
            drop(reader);
            let reporter = Reporter {
                writer: Mutex::new(Some(writer)),
                pid_file: pid_file.clone(),
            };
            if let Err(e) = result {
                let e = anyhow!(
                    "cannot detach with the pid file {}: {e}; is another sidekeyd using it?",
                    pid_file.display()
                );
                reporter.failed(&e);
                return Err(e);
            }
            Ok(Detached::Daemon(reporter))
        }
    }
}

/// Refuses early, with the holder's pid, when a live daemon holds the pid file.
fn check_pid_file(path: &Path) -> Result<()> {
    let Ok(mut file) = File::open(path) else {
        return Ok(());
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
        return Ok(());
    }
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    bail!(
        "another sidekeyd (pid {}) holds the pid file {}; stop it first (kill {0}), or choose another --pid-file",
        pid.trim(),
        path.display()
    )
}

const READY: &str = "READY";
const ERROR: &str = "ERROR";

/// The parent's end: blocks until the daemon is ready or has failed.
pub struct Waiter {
    reader: std::io::PipeReader,
    pid_file: PathBuf,
    log_file: PathBuf,
}

impl Waiter {
    /// Returns the daemon's start-up banner, or its error.
    pub fn wait(mut self) -> Result<String> {
        let mut message = String::new();
        self.reader
            .read_to_string(&mut message)
            .context("cannot read the daemon's readiness report")?;
        parse_report(&message, &self.pid_file, &self.log_file)
    }
}

fn parse_report(message: &str, pid_file: &Path, log_file: &Path) -> Result<String> {
    let (status, rest) = message.split_once('\n').unwrap_or((message, ""));
    match status.split_once(' ') {
        Some((READY, pid)) => Ok(format!(
            "{rest}  pid:        {pid}\n  pid file:   {}\n  log:        {}\n",
            pid_file.display(),
            log_file.display()
        )),
        _ if status == ERROR => Err(anyhow!("{}", rest.trim_end())),
        _ => Err(anyhow!(
            "the daemon exited before it was ready; see its log at {}",
            log_file.display()
        )),
    }
}

/// The daemon's end: reports once, ready or failed.
pub struct Reporter {
    writer: Mutex<Option<std::io::PipeWriter>>,
    pid_file: PathBuf,
}

impl Reporter {
    pub fn ready(&self, banner: &str) {
        self.send(&format!("{READY} {}\n{banner}", std::process::id()));
    }

    pub fn failed(&self, error: &anyhow::Error) {
        self.send(&format!("{ERROR}\n{error:#}\n"));
    }

    /// The report goes out once; closing the pipe lets the parent exit.
    fn send(&self, message: &str) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut writer) = writer {
            let _ = writer.write_all(message.as_bytes());
        }
    }

    /// A clean exit leaves no stale pid file behind.
    pub fn remove_pid_file(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_report_carries_the_banner_and_where_things_are() {
        let out = parse_report(
            "READY 42\nsidekeyd ready\n  proxy:      http://127.0.0.1:1\n",
            Path::new("/run/p.pid"),
            Path::new("/var/l.log"),
        )
        .unwrap();
        assert!(out.starts_with("sidekeyd ready\n  proxy:      http://127.0.0.1:1\n"));
        assert!(out.contains("  pid:        42\n"));
        assert!(out.contains("/run/p.pid") && out.contains("/var/l.log"));
    }

    #[test]
    fn error_report_is_the_daemons_error() {
        let err = parse_report(
            "ERROR\nanother sidekeyd is already running\n",
            Path::new("p"),
            Path::new("l"),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "another sidekeyd is already running");
    }

    #[test]
    fn silence_points_at_the_log() {
        let err = parse_report("", Path::new("p"), Path::new("/x/sidekeyd.log")).unwrap_err();
        assert!(err.to_string().contains("/x/sidekeyd.log"), "{err}");
    }
}
