//! The control API: HTTP/1.1 and JSON on a Unix socket with mode 0600 in a
//! 0700 directory. Only the daemon's own uid and root may talk to it.

mod audit;
mod routes;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::StreamCommon;
use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;

use crate::audit::Audit;
use crate::error::ApiError;
use crate::live::Live;
use crate::registry::Registry;
use crate::shutdown::{Tasks, serve_graceful};
use crate::sync::SyncEngine;

/// Binds the socket, replacing a stale one left by a crash.
pub async fn bind(path: &Path) -> Result<Listener> {
    let dir = path
        .parent()
        .context("the socket path has no parent directory")?;
    crate::fsutil::create_private_dir(dir)?;
    if path.exists() {
        let name = path.to_fs_name::<GenericFilePath>()?;
        if Stream::connect(name).await.is_ok() {
            bail!(
                "another sidekeyd is already listening on {}; stop it, or give this one another socket_path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))
}

/// The control API and exactly what it uses.
pub struct Control {
    pub registry: Arc<Registry>,
    pub sync: Arc<SyncEngine>,
    pub audit: Arc<Audit>,
    /// For `audit_retention`, which SIGHUP may change.
    pub live: Arc<Live>,
    pub tasks: Tasks,
    /// What `/v1/status` reports that no component owns.
    pub about: About,
}

/// Where the daemon's parts live, fixed at start.
pub struct About {
    pub started: std::time::Instant,
    pub data_dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    pub proxy_listen: std::net::SocketAddr,
    pub upstream_proxy: Option<String>,
    pub ca_path: std::path::PathBuf,
    pub ca_bundle: std::path::PathBuf,
}

pub async fn serve(listener: Listener, control: Arc<Control>) {
    let tasks = control.tasks.clone();
    let own_uid = rustix::process::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            () = tasks.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
        };
        let peer_uid = stream.peer_creds().ok().and_then(|c| c.euid());
        let allowed = matches!(peer_uid, Some(uid) if uid == own_uid || uid == 0);
        if !allowed {
            tracing::warn!(peer_uid, "refused a control connection from another user");
        }
        let control = control.clone();
        let shutdown = tasks.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move {
                    if !allowed {
                        return Ok::<_, std::convert::Infallible>(crate::http_util::boxed(
                            ApiError::permission_denied(format!(
                                "This socket belongs to uid {own_uid}; run sidekeyctl as that user (or root)."
                            ))
                            .to_response(),
                        ));
                    }
                    Ok(routes::handle(req, &control).await)
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = serve_graceful!(conn, shutdown.token());
        });
    }
}
