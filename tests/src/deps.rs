//! The third-party clients the tests drive, installed by the tests
//! themselves: Python's requests and httpx (pinned, with every dependency,
//! in `python/requirements.txt`) and Node's undici (pinned in
//! `node/package.json`), under `<target>/test-deps/`. So `cargo test` needs
//! nothing run before it but a python3 with pip and a node with npm.
//!
//! Each install runs at most once per pin: a file lock serializes the test
//! binaries that cargo runs in parallel, and a copy of the pin written after
//! a successful install marks it done. Installs are bounded in time, and a
//! failed one names the command that does it by hand.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one `pip install` or `npm install` may take: a few seconds from
/// a warm cache, tens of seconds on a slow link.
const INSTALL_LIMIT: Duration = Duration::from_secs(180);

/// How long a test waits for another test binary's install to finish.
const LOCK_LIMIT: Duration = Duration::from_secs(2 * 180 + 60);

/// The file that records which pin an install holds, beside what it installed.
const STAMP: &str = ".sidekey-installed";

fn source_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// `<target>/test-deps`, beside the binaries cargo built.
fn deps_dir() -> PathBuf {
    let target = crate::bin_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .to_path_buf();
    target.join("test-deps")
}

/// The real interpreter behind `python3`: pyenv shims depend on `HOME`,
/// which tests replace, and the packages are built for this one.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs (install Python 3.11 or later)");
        assert!(out.status.success(), "python3 does not run");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The directory holding the pinned requests and httpx: put it on the
/// `PYTHONPATH` of every Python client a test runs.
pub fn python_path() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    installed(&DIR, || {
        let dir = deps_dir().join("python");
        let requirements = source_dir("python").join("requirements.txt");
        let pin = std::fs::read_to_string(&requirements).expect("tests/python/requirements.txt");
        let by_hand = format!(
            "{} -m pip install --no-deps --target {dir} -r {req} && cp {req} {dir}/{STAMP}",
            python().display(),
            dir = dir.display(),
            req = requirements.display(),
        );
        install_once(&dir, &pin, &by_hand, |tmp| {
            let mut cmd = Command::new(python());
            cmd.args(["-m", "pip", "install", "--no-deps", "--no-input", "--quiet"])
                .args(["--disable-pip-version-check", "--no-warn-script-location"])
                .args(["--timeout", "20", "--retries", "2", "--target"])
                .arg(tmp)
                .arg("-r")
                .arg(&requirements)
                .env("PIP_ROOT_USER_ACTION", "ignore");
            cmd
        })?;
        Ok(dir)
    })
}

/// A directory holding `proxy_fetch.mjs` beside a `node_modules` with the
/// pinned undici. Node resolves an ES module's imports from the module's own
/// directory (`NODE_PATH` applies only to `require`), so the script is run
/// from here, not from `tests/node`.
pub fn node_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    installed(&DIR, || {
        let dir = deps_dir().join("node");
        let src = source_dir("node");
        let pin =
            std::fs::read_to_string(src.join("package.json")).expect("tests/node/package.json");
        let by_hand = format!(
            "mkdir -p {dir} && cp {src}/package.json {dir}/ && npm install --prefix {dir} --no-package-lock && cp {src}/package.json {dir}/{STAMP}",
            dir = dir.display(),
            src = src.display(),
        );
        install_once(&dir, &pin, &by_hand, |tmp| {
            std::fs::write(tmp.join("package.json"), &pin).expect("write package.json");
            let mut cmd = Command::new("npm");
            cmd.args(["install", "--no-package-lock", "--no-audit", "--no-fund"])
                .args([
                    "--loglevel=error",
                    "--fetch-timeout=20000",
                    "--fetch-retries=2",
                ])
                .args([
                    "--fetch-retry-mintimeout=2000",
                    "--fetch-retry-maxtimeout=10000",
                ])
                .arg("--prefix")
                .arg(tmp);
            cmd
        })?;
        replace_if_changed(&src.join("proxy_fetch.mjs"), &dir.join("proxy_fetch.mjs"));
        Ok(dir)
    })
}

/// The directory `install` made once per test binary; a failure is kept
/// too, so every later test fails at once with the same message instead of
/// trying again.
fn installed(
    once: &'static OnceLock<Result<PathBuf, String>>,
    install: impl FnOnce() -> Result<PathBuf, String>,
) -> &'static Path {
    match once.get_or_init(install) {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

/// Installs into `dir` unless it already holds `pin`. `install` gets a
/// fresh sibling directory to fill; it becomes `dir` only once complete, so
/// a killed install never looks done.
fn install_once(
    dir: &Path,
    pin: &str,
    by_hand: &str,
    install: impl FnOnce(&Path) -> Command,
) -> Result<(), String> {
    let parent = dir.parent().expect("test-deps/<kind>");
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    let _lock = lock(&parent.join(".lock"));
    if std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|have| have == pin) {
        return Ok(());
    }
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
    let cmd = install(&tmp);
    let what = format!("{cmd:?}");
    match run_bounded(cmd, INSTALL_LIMIT) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "installing the tests' clients failed ({}): {what}\n{}{}\ninstall them by hand with:\n  {by_hand}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Err(e) => {
            return Err(format!(
                "installing the tests' clients failed: {what}: {e}\ninstall them by hand with:\n  {by_hand}"
            ));
        }
    }
    std::fs::write(tmp.join(STAMP), pin).expect("write the install stamp");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), dir.display()))
}

/// Holds an exclusive lock on `path` until dropped, waiting at most
/// [`LOCK_LIMIT`] for another test binary to release it.
fn lock(path: &Path) -> File {
    let file = File::create(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let deadline = Instant::now() + LOCK_LIMIT;
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => panic!(
                "another test held {} for over {LOCK_LIMIT:?}; is an install stuck?",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                panic!("cannot lock {}: {e}", path.display())
            }
        }
    }
}

/// Copies `from` over `to` unless they already match, by a rename, so a
/// client another test is starting never reads a half-written script.
fn replace_if_changed(from: &Path, to: &Path) {
    let content = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if std::fs::read(to).is_ok_and(|have| have == content) {
        return;
    }
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, &content).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
}

/// Runs `cmd` with no stdin; `Err` when it cannot start or outlives `limit`
/// (it is killed then).
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // Waits on a thread that also drains both pipes, so a chatty failure
    // cannot block on a full pipe.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| e.to_string()),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(format!("it did not finish within {limit:?}"))
        }
    }
}
