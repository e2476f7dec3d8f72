//! sidekey's side of the sync benchmark: a hub `sidekeyd` serving a share and
//! a peer `sidekeyd` syncing a folder with it, real processes on loopback,
//! set up as a user would with `sidekeyctl`. Each daemon gets its own HOME,
//! XDG dirs, data dir and socket, and an environment with nothing else in it,
//! so no user config or running daemon is touched. Dropped daemons are
//! killed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sync_util::{run_bounded, stop_child, unix_json, wait_for};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the bench asks for the session's state while it waits: often
/// enough to time a sub-second sync, rarely enough to cost the daemon
/// nothing to speak of (one control request each).
const STATUS_POLL: Duration = Duration::from_millis(5);

pub struct Binaries {
    pub sidekeyd: PathBuf,
    pub sidekeyctl: PathBuf,
}

/// One running `sidekeyd`.
pub struct Node {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    ctl: PathBuf,
}

impl Node {
    /// Starts a daemon whose HOME and data live under `dir`; a hub also
    /// serves sync on a loopback port. Returns once its ready lines are out.
    pub fn start(bins: &Binaries, dir: &Path, hub: bool) -> Result<Node> {
        for sub in ["home", "config", "data", "run"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let socket = dir.join("run").join("sidekeyd.sock");
        let log = dir.join("sidekeyd.log");
        let mut command = Command::new(&bins.sidekeyd);
        env(&mut command, dir);
        command
            .args(["--proxy-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data").join("sidekey"))
            .arg("--socket-path")
            .arg(&socket);
        if hub {
            command.args(["--sync-listen", "127.0.0.1:0"]);
        }
        let stderr = std::fs::File::create(&log).context("creating the daemon log")?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", bins.sidekeyd.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        // Keeps draining after the ready lines, so the daemon never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let node = Node {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
            ctl: bins.sidekeyctl.clone(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut control, mut sync) = (false, !hub);
        while !(control && sync) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    control |= line.starts_with("control:");
                    sync |= line.starts_with("sync:");
                }
                Err(_) => bail!(
                    "sidekeyd was not ready within {START_TIMEOUT:?}{}",
                    node.log_tail()
                ),
            }
        }
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `sidekeyctl` against this daemon and returns its stdout.
    pub fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut command = Command::new(&self.ctl);
        env(&mut command, &self.dir);
        command.arg("--socket").arg(&self.socket).args(args);
        let finished = run_bounded(command, stdin.map(str::as_bytes), CTL_TIMEOUT)
            .with_context(|| format!("sidekeyctl {}", args.join(" ")))?;
        Ok(finished.stdout)
    }

    /// `GET` on the control API.
    pub fn get(&self, path: &str) -> Result<Value> {
        unix_json(&self.socket, "GET", path)
    }

    /// SIGTERM, and a bounded wait for the exit; SIGKILL after that.
    pub fn stop(mut self) -> Result<()> {
        stop_child(&mut self.child, "sidekeyd")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log ends with:\n{tail}")
        }
    }

    /// Log lines at WARN or ERROR, for the report.
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private environment: nothing from the user's but PATH.
fn env(command: &mut Command, dir: &Path) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_RUNTIME_DIR", dir.join("run"));
}

/// A hub sharing `tree` and a peer that finished its initial sync of it.
pub struct Pair {
    pub hub: Node,
    pub peer: Node,
    /// The peer's VmRSS before the session was added, after 2 s idle.
    pub empty_rss: u64,
    /// From `sidekeyctl sync add` until the session reported its initial
    /// sync done and went back to watching.
    pub initial: Duration,
    pub bytes_moved: u64,
    pub files: u64,
}

impl Pair {
    pub fn stop(self) -> Result<()> {
        let peer = self.peer.stop();
        let hub = self.hub.stop();
        peer.and(hub)
    }
}

/// Starts a hub on `tree` (already filled with `files` files), waits for its
/// scan, starts a peer, and times the peer's initial sync into `folder`.
pub fn start_pair(
    bins: &Binaries,
    scratch: &Path,
    tree: &Path,
    folder: &Path,
    files: u64,
    limit: Duration,
) -> Result<Pair> {
    let hub = Node::start(bins, &scratch.join("hub"), true)?;
    let tree_arg = tree.to_str().context("the tree path is not UTF-8")?;
    hub.ctl(&["share", "add", tree_arg, "--name", "work"], None)?;
    wait_for(
        "the hub indexes its share",
        limit,
        Duration::from_millis(20),
        || {
            let share = hub.get("/v1/shares/work")?;
            Ok((share["files"].as_u64() >= Some(files)).then_some(()))
        },
    )
    .with_context(|| hub.log_tail())?;
    let peer = Node::start(bins, &scratch.join("peer"), false)?;
    std::thread::sleep(Duration::from_secs(2));
    let empty_rss = crate::sysinfo::rss_bytes(peer.pid())?;
    let invite = hub.ctl(&["share", "invite", "work"], None)?;

    let folder_arg = folder.to_str().context("the folder path is not UTF-8")?;
    let begun = Instant::now();
    let created = peer.ctl(
        &["sync", "add", folder_arg, "--no-wait", "--json"],
        Some(invite.trim()),
    )?;
    let session: Value = serde_json::from_str(&created).context("sync add --json")?;
    let session = session["id"]
        .as_str()
        .context("sync add answered without an id")?
        .to_string();
    let path = format!("/v1/sessions/{session}");
    let status = wait_for("the peer's initial sync", limit, STATUS_POLL, || {
        let s = peer.get(&path)?;
        match s["state"].as_str() {
            Some("halted" | "auth_failed" | "error") => {
                bail!("the session stopped: {s}")
            }
            Some("watching") if s["initial_sync_done"] == true => Ok(Some(s)),
            _ => Ok(None),
        }
    })
    .with_context(|| peer.log_tail())?;
    let initial = begun.elapsed();
    Ok(Pair {
        hub,
        peer,
        empty_rss,
        initial,
        bytes_moved: status["bytes_moved"].as_u64().unwrap_or(0),
        files: status["files"].as_u64().unwrap_or(0),
    })
}
