//! Helpers for tests that drive the real `sidekeyd` and `sidekeyctl`
//! binaries: a private home per test, a daemon that is killed on drop (and
//! whose log is printed when the test fails), and a plain HTTP client.

pub mod agent;
pub mod deps;
pub mod disk;
pub mod http;
pub mod netns;
pub mod sync;
pub mod upstream;
pub mod websocket;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where cargo put the binaries: the test executable lives in `<target>/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    for bin in ["sidekeyd", "sidekeyctl"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing; build it with: cargo build --workspace",
            dir.join(bin).display()
        );
    }
    dir.to_path_buf()
}

pub fn sidekeyd_bin() -> PathBuf {
    bin_dir().join("sidekeyd")
}

pub fn sidekeyctl_bin() -> PathBuf {
    bin_dir().join("sidekeyctl")
}

/// A private `HOME` with its own XDG dirs, so tests never share state.
pub struct Home {
    dir: tempfile::TempDir,
    logs: std::sync::atomic::AtomicU32,
}

impl Default for Home {
    fn default() -> Self {
        Home::new()
    }
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-")
            .tempdir()
            .expect("temp dir");
        for sub in ["run", "config", "data", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Home {
            dir,
            logs: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data").join("sidekey")
    }

    pub fn socket(&self) -> PathBuf {
        self.path()
            .join("run")
            .join("sidekey")
            .join("sidekeyd.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.path()
            .join("config")
            .join("sidekey")
            .join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        let path = self.config_file();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The environment every child gets: nothing from the outer home.
    pub fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.path().to_path_buf()),
            ("XDG_RUNTIME_DIR", self.path().join("run")),
            ("XDG_CONFIG_HOME", self.path().join("config")),
            ("XDG_DATA_HOME", self.path().join("data")),
        ]
    }

    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in self.envs() {
            cmd.env(key, value);
        }
        cmd
    }

    /// Starts the daemon on an ephemeral port with trace logging.
    pub fn start(&self) -> Daemon {
        self.start_with(&[], &[])
            .unwrap_or_else(|e| panic!("sidekeyd did not start: {e}"))
    }

    /// Starts the daemon; `Err` holds its stderr if it exits before ready.
    pub fn start_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Result<Daemon, String> {
        self.start_wrapped(&[], args, envs)
    }

    /// [`Home::start_with`], with the daemon run under `wrap`: a command and
    /// its arguments that end by exec'ing the rest of their argv, so the
    /// child's pid is the daemon's. An empty `wrap` runs it directly.
    pub fn start_wrapped(
        &self,
        wrap: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        let n = self.logs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let log_path = self.path().join("logs").join(format!("sidekeyd-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = match wrap.split_first() {
            Some((program, wrap_args)) => {
                let mut cmd = self.command(Path::new(program));
                cmd.args(wrap_args).arg(sidekeyd_bin());
                cmd
            }
            None => self.command(&sidekeyd_bin()),
        };
        cmd.env("RUST_LOG", "trace");
        if !args.iter().any(|a| a.starts_with("--proxy-listen")) {
            cmd.args(["--proxy-listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot spawn sidekeyd: {e}"))?;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut proxy = None;
        let mut control = None;
        while Instant::now() < deadline && (proxy.is_none() || control.is_none()) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("proxy:") {
                        proxy = addr
                            .trim()
                            .strip_prefix("http://")
                            .and_then(|a| a.parse().ok());
                    }
                    if let Some(path) = line.trim().strip_prefix("control:") {
                        control = Some(PathBuf::from(path.trim()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                        return Err(format!("exited with {status}: {log}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut child, Duration::from_secs(5));
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!("exited with {status:?}: {log}"));
                }
            }
        }
        let (Some(proxy), Some(socket)) = (proxy, control) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no ready lines within 20 s".into());
        };
        Ok(Daemon {
            child: Some(child),
            proxy,
            socket,
            log_path,
            home_envs: self.envs(),
        })
    }

    /// Runs sidekeyctl with no stdin.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        self.ctl_stdin(args, None)
    }

    /// Runs sidekeyctl, piping `stdin` to it.
    pub fn ctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ctl {
        let mut cmd = self.command(&sidekeyctl_bin());
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn sidekeyctl");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().expect("sidekeyctl output");
        Ctl {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every log file the daemons of this home wrote.
    pub fn all_logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.path().join("logs"))
            .unwrap()
            .flatten()
        {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }

    /// How many connections `sidekeyctl conn ls` lists.
    pub fn conn_count(&self) -> usize {
        self.ctl(&["conn", "ls", "--json"])
            .success()
            .json()
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Creates a connection and returns `(id, key)`.
    pub fn create_conn(&self, name: &str, kind: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["conn", "create", "--name", name, "--kind", kind, "--json"];
        args.extend_from_slice(extra);
        let out = self.ctl(&args).success();
        let v = out.json();
        (
            v["conn"]["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }
}

/// A finished sidekeyctl run.
#[derive(Debug)]
pub struct Ctl {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn success(self) -> Ctl {
        assert!(
            self.status.success(),
            "sidekeyctl failed ({}): {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn failure(self) -> Ctl {
        assert!(
            !self.status.success(),
            "sidekeyctl should have failed: {}{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A running sidekeyd, killed on drop. Its log is printed if the test panics.
pub struct Daemon {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    home_envs: Vec<(&'static str, PathBuf)>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn stop_with(mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        let mut child = self.child.take().unwrap();
        wait_bounded(&mut child, Duration::from_secs(20)).expect("sidekeyd exits after a signal")
    }

    pub fn stop(self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Waits up to `limit` for the daemon to exit by itself (after a signal
    /// sent with [`Daemon::signal`], say); `None` if it is still running,
    /// in which case it is killed on drop as usual.
    pub fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn envs(&self) -> &[(&'static str, PathBuf)] {
        &self.home_envs
    }

    /// The command prefix that runs a program in this daemon's network
    /// namespace (see [`agent::Setup::in_own_netns`]).
    pub fn netns_enter(&self) -> Vec<String> {
        netns::enter(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- sidekeyd log ({}) ---\n{}",
                    self.log_path.display(),
                    self.log()
                );
            }
        }
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Polls `check` until it holds, failing the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

/// Every file under `dir`, as (path, bytes).
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub const INVALID_KEY_BODY: &str = r#"{"error":"invalid_access_key","message":"The provided access key is invalid or has been revoked.","status":401}"#;

/// Runs `cmd` (its stdin as the caller set it), failing the test if it
/// outlives `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("child output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
