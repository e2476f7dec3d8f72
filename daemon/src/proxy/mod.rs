//! The proxy listener on 127.0.0.1:8787. It serves sidekey's own endpoints
//! (`/v1/whoami`) and checks agents' keys. Never logs header values.

mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sidekey_api::Whoami;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Daemon;
use crate::error::ApiError;
use crate::http_util::{Body, json};

/// Request heads over this size get 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's read buffer: a hard memory bound a little above the 431 limit,
/// which is checked exactly in [`route`].
const READ_BUFFER_BYTES: usize = 2 * MAX_HEADER_BYTES;
/// A client that has not sent its whole header block by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let daemon = daemon.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let daemon = daemon.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, &daemon)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(READ_BUFFER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn handle(req: Request<Incoming>, peer: SocketAddr, daemon: &Daemon) -> Response<Body> {
    match route(&req, peer, daemon) {
        Ok(response) => response,
        Err(e) => e.to_response(),
    }
}

fn route(
    req: &Request<Incoming>,
    peer: SocketAddr,
    daemon: &Daemon,
) -> Result<Response<Body>, ApiError> {
    if head_size(req) > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            "header_too_large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "The request headers are over 64 KiB; send smaller headers.",
        ));
    }
    // No CORS: a web page must never be able to drive the proxy.
    if req.headers().contains_key(header::ORIGIN) {
        return Err(ApiError::permission_denied(
            "sidekey refuses requests from browsers; call it from your agent's HTTP client.",
        ));
    }
    match req.uri().path() {
        "/v1/whoami" => whoami(req, peer, daemon),
        path => Err(ApiError::not_found(format!(
            "sidekey serves no endpoint at {path}; to reach a remote API, set HTTP_PROXY and HTTPS_PROXY to this address (see: sidekeyctl env <conn>)."
        ))),
    }
}

fn whoami(
    req: &Request<Incoming>,
    peer: SocketAddr,
    daemon: &Daemon,
) -> Result<Response<Body>, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::new(
            "method_not_allowed",
            StatusCode::METHOD_NOT_ALLOWED,
            "Use GET for /v1/whoami.",
        ));
    }
    let key = auth::bearer(req.headers()).or_else(|| auth::proxy_key(req.headers()));
    let used_by = format!("whoami from {}", peer.ip());
    let verified = daemon.registry.verify(key.as_deref(), &used_by)?;
    let conn = &verified.conn;
    Ok(json(
        StatusCode::OK,
        &Whoami {
            id: conn.id.clone(),
            name: conn.name.clone(),
            kind: conn.kind,
            expires_at: conn.expires_at,
        },
    ))
}

fn head_size<B>(req: &Request<B>) -> usize {
    let headers: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    headers + req.uri().to_string().len()
}
