//! mitmproxy doing sidekey's HTTPS job: `mitmdump` with a small addon that
//! sets `Authorization` on every request, intercepting CONNECT tunnels with
//! leaves from its own CA. It lives in a venv under `bench/out/` (pip, once),
//! so the system Python's packages are never touched: mitmproxy pins old
//! versions of h11 and cryptography that other tools here need newer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::proxy::{free_port, wait_listening};

const PIP_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets the credential on every request, as sidekey's injection does.
const ADDON: &str = r#"import os

AUTHORIZATION = os.environ["SIDEKEY_BENCH_AUTHORIZATION"]


def request(flow):
    flow.request.headers["Authorization"] = AUTHORIZATION
"#;

/// `bench/out/mitmproxy-venv/bin/mitmdump`, creating the venv and
/// installing mitmproxy into it when missing; `Err` says why there is none.
pub async fn ensure_installed(out: &Path) -> Result<PathBuf> {
    let venv = out.join("mitmproxy-venv");
    let mitmdump = venv.join("bin").join("mitmdump");
    if mitmdump.is_file() {
        return Ok(mitmdump);
    }
    eprintln!(
        "mitmproxy is not installed; running: python3 -m venv {0} && {0}/bin/pip install mitmproxy",
        venv.display()
    );
    let install = async {
        run_quiet(Command::new("python3").arg("-m").arg("venv").arg(&venv)).await?;
        run_quiet(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "mitmproxy",
        ]))
        .await
    };
    tokio::time::timeout(PIP_TIMEOUT, install)
        .await
        .context("pip install mitmproxy took over 5 minutes")??;
    if !mitmdump.is_file() {
        bail!(
            "pip installed mitmproxy, but there is no {}",
            mitmdump.display()
        );
    }
    Ok(mitmdump)
}

async fn run_quiet(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(())
}

/// A running mitmdump; killed when dropped.
pub struct Mitm {
    child: Child,
    pub addr: SocketAddr,
    /// mitmproxy's CA, which clients must trust.
    pub ca: PathBuf,
    dir: TempDir,
}

impl Mitm {
    pub async fn start(
        mitmdump: &Path,
        scratch: &Path,
        upstream_ca: &Path,
        authorization: &str,
    ) -> Result<Mitm> {
        let dir = tempfile::Builder::new()
            .prefix("mitmproxy-")
            .tempdir_in(scratch)
            .context("creating mitmproxy's dir")?;
        let addon = dir.path().join("inject.py");
        std::fs::write(&addon, ADDON).context("writing the mitmproxy addon")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("mitmdump.log"))?;
        let mut child = Command::new(mitmdump)
            .args(["--listen-host", "127.0.0.1", "--listen-port"])
            .arg(port.to_string())
            .arg("--set")
            .arg(format!("confdir={}", dir.path().join("conf").display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream_ca.display()
            ))
            .args(["--set", "termlog_verbosity=warn", "--set", "flow_detail=0"])
            .arg("-s")
            .arg(&addon)
            .env("SIDEKEY_BENCH_AUTHORIZATION", authorization)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", mitmdump.display()))?;
        let ca = dir.path().join("conf").join("mitmproxy-ca-cert.pem");
        let begun = Instant::now();
        let started = async {
            wait_listening(addr, &mut child, START_TIMEOUT).await?;
            while !ca.is_file() {
                if begun.elapsed() > START_TIMEOUT {
                    bail!("mitmproxy wrote no CA at {}", ca.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        };
        if let Err(e) = started.await {
            let log = std::fs::read_to_string(dir.path().join("mitmdump.log")).unwrap_or_default();
            bail!("mitmdump did not start: {e:#}\n{log}");
        }
        Ok(Mitm {
            child,
            addr,
            ca,
            dir,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("mitmdump has already exited")
    }

    /// The end of mitmdump's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("mitmdump.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}
