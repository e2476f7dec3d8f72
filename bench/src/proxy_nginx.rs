//! nginx doing sidekey's job: a reverse proxy that sets `Authorization` on
//! every request to the upstream. Plain HTTP on both sides, or (the fair
//! HTTPS anchor) TLS terminated with a test CA's leaf for the host, as
//! sidekey's interception presents one, and re-encrypted to the upstream
//! over a verified, pooled TLS connection. It runs in the foreground from a
//! config generated in a temp dir, on 127.0.0.1 and a free port, never as
//! the system service. Installed with apt when missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::proxy::{free_port, wait_listening};

const WORKERS: usize = 2;
/// Idle connections nginx keeps to the upstream, per worker.
const UPSTREAM_KEEPALIVE: usize = 128;
const APT_TIMEOUT: Duration = Duration::from_secs(300);

/// Finds nginx, or installs it with apt; `Err` says why there is none.
pub async fn ensure_installed() -> Result<PathBuf> {
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("nginx is not installed; running: apt-get install -y nginx-light");
    let install = async {
        let mut attempt = install("nginx-light").await;
        if attempt.is_err() {
            // The package lists may be stale or absent (a fresh container).
            let _ = Command::new("apt-get")
                .args(["update", "-q"])
                .stdout(Stdio::null())
                .status()
                .await;
            attempt = install("nginx-light").await;
        }
        if attempt.is_err() {
            attempt = install("nginx").await;
        }
        attempt
    };
    tokio::time::timeout(APT_TIMEOUT, install)
        .await
        .context("apt-get install nginx took over 5 minutes")??;
    find().context("apt-get installed nginx, but no nginx binary is on PATH or in /usr/sbin")
}

fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|path| path.is_file())
}

async fn install(package: &str) -> Result<()> {
    // RUNLEVEL=1 keeps the package's postinst from starting the service.
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("RUNLEVEL", "1")
        .stdout(Stdio::null())
        .status()
        .await
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install -y {package} failed ({status})");
    }
    Ok(())
}

/// What nginx needs to speak TLS on both sides.
pub struct TlsFront<'a> {
    /// The leaf nginx presents for the host, and the CA that issued it:
    /// sent as a chain, as sidekey sends its leaf and CA.
    pub cert: &'a Path,
    pub ca: &'a Path,
    pub key: &'a Path,
    /// What nginx trusts for the upstream's certificate.
    pub upstream_ca: &'a Path,
}

/// A running nginx; stopped when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    /// Starts nginx proxying to `upstream` with `Host: host` and
    /// `Authorization: authorization` set on every request; with `tls`, it
    /// listens with TLS and `upstream` is the upstream's TLS port.
    pub async fn start(
        binary: &Path,
        scratch: &Path,
        upstream: SocketAddr,
        host: &str,
        authorization: &str,
        tls: Option<TlsFront<'_>>,
    ) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir_in(scratch)
            .context("creating nginx's dir")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Some(tls) = &tls {
            let chain = std::fs::read_to_string(tls.cert)? + &std::fs::read_to_string(tls.ca)?;
            std::fs::write(dir.path().join("chain.pem"), chain).context("writing nginx's chain")?;
        }
        let conf = config(dir.path(), addr, upstream, host, authorization, tls);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        if let Err(e) = wait_listening(addr, &mut child, Duration::from_secs(10)).await {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            bail!("nginx did not start: {e:#}\n{log}");
        }
        Ok(Nginx {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The master and its workers: the CPU time of all of them counts.
    pub fn pids(&self) -> Vec<u32> {
        let Some(master) = self.child.id() else {
            return Vec::new();
        };
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    /// SIGQUIT is nginx's graceful stop; the master waits for its workers.
    pub async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        }
        let begun = Instant::now();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "nginx did not stop within {:?}; killing it",
                begun.elapsed()
            );
            let _ = self.child.kill().await;
        }
    }
}

fn config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    host: &str,
    authorization: &str,
    tls: Option<TlsFront<'_>>,
) -> String {
    let (scheme, ssl, tls_lines) = match tls {
        None => ("http", "", String::new()),
        // The client leg: sessions are neither cached nor ticketed, and
        // the load client resumes none, so every handshake is a full one,
        // as against sidekey. The upstream leg is verified against the
        // test CA by name, and a new pooled connection may resume a
        // session, as one of sidekey's pooled client may.
        Some(tls) => (
            "https",
            " ssl",
            format!(
                r#"
        # nginx 1.22 (Debian 12) leaves TLS 1.3 out by default; rustls,
        # on both ends of sidekey, offers 1.2 and 1.3 and agrees on 1.3.
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {dir}/chain.pem;
        ssl_certificate_key {key};
        ssl_session_cache off;
        ssl_session_tickets off;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {upstream_ca};
        proxy_ssl_server_name on;
        proxy_ssl_name {host};
        proxy_ssl_session_reuse on;"#,
                dir = dir.display(),
                key = tls.key.display(),
                upstream_ca = tls.upstream_ca.display(),
            ),
        ),
    };
    let dir = dir.display();
    format!(
        r#"# Generated by sidekey-bench proxy.
daemon off;
master_process on;
worker_processes {WORKERS};
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    # For the body-size runs: answers buffered in memory in 64 KiB pieces
    # (sidekey reads in 64 KiB too) and never spilled to a temp file, and a
    # 64 KiB upload kept in memory; none of it touches a small answer, which
    # fits the default 4 KiB head buffer.
    proxy_buffers 8 64k;
    proxy_busy_buffers_size 128k;
    proxy_max_temp_file_size 0;
    client_body_buffer_size 128k;
    client_max_body_size 16m;
    upstream api {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen}{ssl};{tls_lines}
        location / {{
            proxy_pass {scheme}://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {host};
            proxy_set_header Authorization "{authorization}";
            proxy_set_header Proxy-Authorization "";
        }}
    }}
}}
"#
    )
}
