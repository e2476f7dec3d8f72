//! Spawns a real `sidekeyd` on a given data dir, with its own HOME, XDG dirs
//! and socket in a scratch dir, so no user config or running daemon is
//! touched. The child is killed if the handle is dropped without `stop`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::cli::DaemonOpts;
use crate::control::Control;

/// How long a start may take before the bench gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take to end the daemon before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the release `sidekeyd`, building it first unless told not to.
pub fn prepare_binary(opts: &DaemonOpts) -> Result<PathBuf> {
    if let Some(path) = &opts.sidekeyd {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    // target/<profile>/sidekey-bench -> target/release/sidekeyd; this also
    // follows CARGO_TARGET_DIR, since cargo put this binary there.
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("this binary does not live in a cargo target dir; pass --sidekeyd")?;
    let binary = target_dir.join("release").join("sidekeyd");
    if !opts.no_build {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the bench crate has no parent directory")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building: cargo build --release --locked -p sidekeyd");
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "sidekeyd"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(workspace)
            .status()
            .context("running cargo build for sidekeyd")?;
        if !status.success() {
            bail!("cargo build --release -p sidekeyd failed ({status})");
        }
    }
    if !binary.is_file() {
        bail!(
            "no sidekeyd at {}; build it with: cargo build --release -p sidekeyd",
            binary.display()
        );
    }
    Ok(binary)
}

/// What the daemon printed once it was ready.
struct Ready {
    proxy: SocketAddr,
    at: Instant,
}

/// A running `sidekeyd`.
pub struct Daemon {
    child: Child,
    pid: u32,
    spawned_at: Instant,
    socket: PathBuf,
    ready: Option<oneshot::Receiver<Result<Ready>>>,
    proxy: Option<SocketAddr>,
    ready_after: Option<Duration>,
    scratch: TempDir,
}

impl Daemon {
    /// Spawns the daemon and returns at once; see [`Daemon::wait_ready`] and
    /// [`Daemon::wait_control`].
    pub fn spawn(binary: &Path, data_dir: &Path, scratch_parent: &Path) -> Result<Daemon> {
        std::fs::create_dir_all(scratch_parent)
            .with_context(|| format!("creating {}", scratch_parent.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix("daemon-")
            .tempdir_in(scratch_parent)
            .context("creating a scratch dir for the daemon")?;
        let dir = scratch.path();
        let socket = dir.join("run").join("sidekeyd.sock");
        let stderr = std::fs::File::create(dir.join("stderr.log"))
            .context("creating the daemon's stderr log")?;

        let mut command = Command::new(binary);
        command
            .arg("--proxy-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--socket-path")
            .arg(&socket)
            .env("HOME", dir.join("home"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data-home"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SIDEKEY_") {
                command.env_remove(name);
            }
        }
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = child.id().context("the daemon exited at once")?;
        let stdout = child.stdout.take().context("the daemon has no stdout")?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(read_stdout(stdout, tx));
        Ok(Daemon {
            child,
            pid,
            spawned_at,
            socket,
            ready: Some(rx),
            proxy: None,
            ready_after: None,
            scratch,
        })
    }

    /// Spawns the daemon and waits for its ready lines.
    pub async fn start(binary: &Path, data_dir: &Path, scratch_parent: &Path) -> Result<Daemon> {
        let mut daemon = Daemon::spawn(binary, data_dir, scratch_parent)?;
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The proxy's address, known once [`Daemon::wait_ready`] returned.
    pub fn proxy(&self) -> Result<SocketAddr> {
        self.proxy
            .context("the daemon's proxy address is not known before it is ready")
    }

    /// Waits until the daemon printed its `proxy:` and `control:` lines, and
    /// returns how long after the spawn that was.
    pub async fn wait_ready(&mut self) -> Result<Duration> {
        if let Some(after) = self.ready_after {
            return Ok(after);
        }
        let rx = self
            .ready
            .take()
            .context("the daemon's stdout is no longer read")?;
        let ready = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(ready)) => ready?,
            // stdout closed before the ready lines: the daemon is exiting.
            Ok(Err(_)) => {
                let status = tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("still running")));
                bail!(
                    "sidekeyd closed its stdout before it was ready ({}){}",
                    describe_exit(status),
                    self.log_tail()
                );
            }
            Err(_) => bail!(
                "sidekeyd was not ready after {START_TIMEOUT:?}{}",
                self.log_tail()
            ),
        };
        let after = ready.at.duration_since(self.spawned_at);
        self.proxy = Some(ready.proxy);
        self.ready_after = Some(after);
        Ok(after)
    }

    /// Polls the control socket until `GET /v1/status` answers, and returns
    /// how long after the spawn that was, and the store's connection count.
    pub async fn wait_control(&mut self) -> Result<(Duration, u64)> {
        let deadline = self.spawned_at + START_TIMEOUT;
        loop {
            if let Ok(mut control) = Control::connect(&self.socket).await
                && let Ok(conns) = control.status_conns().await
            {
                return Ok((self.spawned_at.elapsed(), conns));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "sidekeyd exited before its control socket answered ({}){}",
                    describe_exit(Ok(status)),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the control socket did not answer within {START_TIMEOUT:?}{}",
                    self.log_tail()
                );
            }
            // Short enough not to blur a sub-second start, long enough not to
            // steal a core from the daemon while it loads.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// SIGTERM, then waits for the exit (the daemon flushes its store);
    /// kills it if that takes too long. Returns how long the stop took.
    pub async fn stop(mut self) -> Result<Duration> {
        let begun = Instant::now();
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("the daemon's pid is not valid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to sidekeyd")?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(begun.elapsed()),
            Ok(status) => bail!(
                "sidekeyd did not stop cleanly ({}){}",
                describe_exit(status),
                self.log_tail()
            ),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("sidekeyd did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }

    /// The end of the daemon's stderr, to explain a failure.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.scratch.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log ends with:\n{tail}")
        }
    }
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Reads the ready lines, then keeps draining stdout so that the daemon can
/// never block on a full pipe.
async fn read_stdout(stdout: ChildStdout, ready: oneshot::Sender<Result<Ready>>) {
    let mut lines = BufReader::new(stdout).lines();
    let mut ready = Some(ready);
    let mut proxy = None;
    let mut control = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = line.trim().strip_prefix("proxy:") {
            let addr = addr.trim();
            proxy = Some(
                addr.strip_prefix("http://")
                    .unwrap_or(addr)
                    .parse::<SocketAddr>()
                    .with_context(|| {
                        format!("the daemon printed an unreadable proxy address {addr:?}")
                    }),
            );
        } else if line.trim().starts_with("control:") {
            control = true;
        }
        if control && let Some(proxy) = proxy.take() {
            let at = Instant::now();
            if let Some(tx) = ready.take() {
                let _ = tx.send(proxy.map(|proxy| Ready { proxy, at }));
            }
        }
    }
}
