//! The baseline: a trivial hyper HTTP/1.1 server that answers every request
//! with 200 and a small JSON body shaped like `/v1/whoami`'s. It runs as its
//! own process (`sidekey-bench baseline-server`), with the same connection
//! settings as the daemon's proxy listener, so that the difference between
//! the two is the daemon's own work per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// As long as a whoami answer for a bench connection, give or take a byte.
const BODY: &str =
    r#"{"id":"c_0123456789abcdef","name":"bench-000000","kind":"agent","expires_at":null}"#;
/// The daemon's proxy listener uses these; so does the baseline.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BUF: usize = 64 * 1024;

/// Serves until killed. Prints `listening on ADDR` once bound.
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("baseline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                let response = Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())));
                Ok::<_, Infallible>(response.unwrap_or_default())
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The baseline server as a child process; killed when dropped.
pub struct Baseline {
    child: Child,
    pub addr: SocketAddr,
}

impl Baseline {
    pub async fn spawn() -> Result<Baseline> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(exe)
            .arg("baseline-server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the baseline server")?;
        let stdout = child
            .stdout
            .take()
            .context("the baseline server has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the baseline server did not start within 10 s")??
            .context("the baseline server exited before it listened")?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .with_context(|| format!("the baseline server printed {line:?}"))?;
        Ok(Baseline { child, addr })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .context("the baseline server has already exited")
    }
}
