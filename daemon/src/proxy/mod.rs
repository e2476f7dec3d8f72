//! The proxy listener on 127.0.0.1:8787: the forward proxy (absolute-form
//! HTTP and CONNECT), the AgentKeys-compatible `/v1/proxy`, and `/v1/whoami`.
//! Never logs header values or query strings.

mod agentkeys;
mod auth;
mod body;
mod connect;
pub mod dial;
mod forward;
mod h1;
mod policy;
pub mod scrub;
mod scrub_body;
mod target;
pub mod tls;
mod upgraded;
pub mod upstream;
mod wire;

pub(crate) use upgraded::{relay_scrubbed_while_key_holds, relay_while_key_holds};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sidekey_api::Whoami;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::error::{ApiError, ErrorCode};
use crate::http_util::{ProxyBody, boxed, json};
use crate::keys::Secret;
use crate::live::Live;
use crate::registry::{KeyUse, Registry, Verified};
use crate::shutdown::{Tasks, serve_graceful};
use policy::Entry;
use target::Target;
use wire::smuggling::HeadGuard;
use wire::{MAX_HEADER_BYTES, READ_BUFFER_BYTES};

/// The proxy and exactly what it uses. Each proxy thread holds its own copy,
/// whose `tasks` drain on that thread's runtime.
#[derive(Clone)]
pub struct Proxy {
    pub registry: Arc<Registry>,
    pub audit: Arc<Audit>,
    pub upstream: Arc<upstream::Upstream>,
    pub authority: Arc<tls::Authority>,
    /// For `egress` and `intercept`, which SIGHUP may change.
    pub live: Arc<Live>,
    /// The listener's own address, whose endpoints are ours to serve.
    pub proxy_addr: SocketAddr,
    pub tasks: Tasks,
}

/// Serves the proxy on one thread per CPU, each a single-threaded runtime.
/// The first deals accepted connections out in turn; a connection, its
/// requests and the upstream connections they open then stay on one thread,
/// which spares a cross-thread wakeup at every hop. (One thread was the
/// bottleneck under load: it held the 64-connection p99 near 1 ms.)
pub fn start(listener: TcpListener, proxy: &Proxy) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let mut listener = Some(listener.into_std()?);
    for (i, accepted) in receivers.into_iter().enumerate() {
        // The first thread also accepts, for all of them.
        let acceptor = listener.take().map(|listener| (listener, senders.clone()));
        // The guard is held until this thread's tasks have drained.
        let (tasks, draining) = proxy.tasks.scoped();
        let daemon = Arc::new(Proxy {
            tasks: tasks.clone(),
            ..proxy.clone()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("sidekeyd-proxy-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tasks.spawn(sweep_idle_upstreams(tasks.token().clone()));
                    if let Some((listener, threads)) = acceptor {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tasks.spawn(accept(listener, threads, tasks.token().clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "the proxy cannot listen"),
                        }
                    }
                    serve(accepted, daemon).await;
                    // Bounded by the daemon's own drain, which gives up on
                    // this thread when its bound passes.
                    tasks.drain(Duration::MAX).await;
                });
                drop(draining);
            })?;
    }
    Ok(())
}

/// An accepted connection on its way to the thread that will serve it.
type Accepted = (std::net::TcpStream, SocketAddr);

/// Deals accepted connections out to the proxy threads in turn, so each
/// thread gets its share however the kernel wakes them.
async fn accept(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: CancellationToken,
) {
    for thread in threads.iter().cycle() {
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
        match stream.into_std() {
            Ok(stream) => {
                let _ = thread.send((stream, peer));
            }
            Err(e) => tracing::warn!(error = %e, "could not hand a proxy connection over"),
        }
    }
}

async fn serve(mut accepted: mpsc::UnboundedReceiver<Accepted>, daemon: Arc<Proxy>) {
    let tasks = daemon.tasks.clone();
    loop {
        let (stream, peer) = tokio::select! {
            () = tasks.cancelled() => break,
            next = accepted.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "a proxy thread could not take a connection");
                continue;
            }
        };
        let daemon = daemon.clone();
        let shutdown = tasks.token().clone();
        tasks.spawn(async move {
            let front = h1::Front::Plain {
                own: daemon.proxy_addr,
            };
            let stream = match h1::serve(&daemon, &front, stream).await {
                h1::Served::Ended => return,
                h1::Served::Handoff(stream) => stream,
            };
            // Boxed: only connections handed off pay for hyper's state.
            Box::pin(serve_full(stream, peer, daemon, shutdown)).await;
        });
    }
}

/// The full proxy on one connection: CONNECT, upgrades, our own endpoints,
/// and every error answer.
async fn serve_full<S>(stream: S, peer: SocketAddr, daemon: Arc<Proxy>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = HeadGuard::new(stream);
    let smuggling = stream.flag.clone();
    let service = service_fn(move |req| {
        let daemon = daemon.clone();
        let smuggling = smuggling.clone();
        async move {
            if let Some(refused) = refuse_smuggled(&smuggling) {
                return Ok::<_, Infallible>(refused);
            }
            // Boxed: hyper keeps a connection's request future
            // allocated while it idles, and this one is kilobytes.
            Ok(Box::pin(route(req, peer, daemon)).await)
        }
    });
    let conn = http1::Builder::new()
        .max_buf_size(READ_BUFFER_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let _ = serve_graceful!(conn, shutdown);
}

/// Closes this thread's idle upstream connections that have aged or been
/// closed by their upstream.
async fn sweep_idle_upstreams(shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(h1::SWEEP_EVERY) => h1::sweep_idle_upstreams(),
        }
    }
}

/// Request smuggling: a request whose head gave two framings is never
/// forwarded, and its connection is closed.
fn refuse_smuggled(flag: &AtomicBool) -> Option<Response<ProxyBody>> {
    if !flag.swap(false, Ordering::AcqRel) {
        return None;
    }
    let mut refused = boxed(
        ApiError::bad_request(
            "The request has both Content-Length and Transfer-Encoding; send only one.",
        )
        .to_response(),
    );
    refused
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(refused)
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    daemon: Arc<Proxy>,
) -> Response<ProxyBody> {
    if head_size(&req) > MAX_HEADER_BYTES {
        return boxed(
            ApiError::new(
                ErrorCode::HeaderTooLarge,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "The request headers are over 64 KiB; send smaller headers.",
            )
            .to_response(),
        );
    }
    // No CORS: a web page must never be able to drive the proxy.
    if req.headers().contains_key(header::ORIGIN)
        || req.method() == Method::OPTIONS && req.uri().authority().is_none()
    {
        return boxed(
            ApiError::permission_denied(
                "sidekey refuses requests from browsers; call it from your agent's HTTP client.",
            )
            .to_response(),
        );
    }
    if req.method() == Method::CONNECT {
        return match verify_proxy_key(&daemon, &req) {
            Ok((key, verified)) => connect::handle(daemon, req, key, verified).await,
            Err(e) => auth_failure(e),
        };
    }
    let own = req.uri().authority().is_none_or(|a| {
        is_own_address(
            &crate::hosts::normalize_host(a.host()),
            a.port_u16(),
            daemon.proxy_addr,
        )
    });
    match (own, req.uri().path()) {
        (true, "/v1/whoami") => boxed(whoami(&req, peer, &daemon)),
        (true, "/v1/proxy") => agentkeys::handle(daemon, req).await,
        (true, path) if req.uri().authority().is_none() => boxed(
            ApiError::not_found(format!(
                "sidekey serves no endpoint at {path}; to reach a remote API, set HTTP_PROXY and HTTPS_PROXY to this address (see: sidekeyctl env <conn>)."
            ))
            .to_response(),
        ),
        _ => forward_absolute(daemon, req).await,
    }
}

/// An absolute-form request: `GET http://host/path` through the forward proxy.
async fn forward_absolute(daemon: Arc<Proxy>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (key, verified) = match verify_proxy_key(&daemon, &req) {
        Ok(verified) => verified,
        Err(e) => return auth_failure(e),
    };
    let target = match Target::from_uri(req.uri()) {
        Ok(target) => target,
        Err(e) => return boxed(e.to_response()),
    };
    let entry = Entry::Forward {
        token_cred: verified.grant_cred.as_deref(),
    };
    forward::forward(
        daemon.clone(),
        verified.conn.clone(),
        key,
        target,
        req,
        entry,
    )
    .await
}

/// The forward proxy's key check, from `Proxy-Authorization`.
fn verify_proxy_key(
    daemon: &Proxy,
    req: &Request<Incoming>,
) -> Result<(Secret, Verified), ApiError> {
    // Engines disagree on which of two keys counts, so neither does.
    if req
        .headers()
        .get_all(header::PROXY_AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::bad_request(
            "The request has two Proxy-Authorization headers; send your key once.",
        ));
    }
    let key = auth::proxy_key(req.headers()).map(Secret::new);
    let verified =
        daemon
            .registry
            .verify(key.as_ref().map(Secret::expose), KeyUse::Proxy, "proxy")?;
    Ok((key.expect("verified keys were present"), verified))
}

/// 407 with `Proxy-Authenticate` when the key is missing or unusable, so
/// clients like git retry with it.
pub(crate) fn auth_failure(e: ApiError) -> Response<ProxyBody> {
    let proxy_status = e.status == StatusCode::UNAUTHORIZED;
    let e = if proxy_status {
        ApiError {
            status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ..e
        }
    } else {
        e
    };
    let mut response = boxed(e.to_response());
    if proxy_status {
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sidekey\""),
        );
    }
    response
}

/// Whether `claimed` (a Host header or :authority) names `host:port`.
pub(crate) fn authority_matches(claimed: &str, host: &str, port: u16, scheme: &str) -> bool {
    let Ok(authority) = claimed.parse::<http::uri::Authority>() else {
        return false;
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    crate::hosts::normalize_host(authority.host()) == host
        && authority.port_u16().unwrap_or(default_port) == port
}

/// httpx and requests send `http://127.0.0.1:8787/v1/proxy` through the
/// proxy in absolute form; those are ours to serve, not to forward.
fn is_own_address(host: &str, port: Option<u16>, own: SocketAddr) -> bool {
    let port_matches = port == Some(own.port());
    let host_matches = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip == own.ip() || (own.ip().is_loopback() && ip.is_loopback()));
    port_matches && host_matches
}

fn whoami(
    req: &Request<Incoming>,
    peer: SocketAddr,
    daemon: &Proxy,
) -> Response<crate::http_util::Body> {
    if req.method() != Method::GET {
        return ApiError::new(
            ErrorCode::MethodNotAllowed,
            StatusCode::METHOD_NOT_ALLOWED,
            "Use GET for /v1/whoami.",
        )
        .to_response();
    }
    let key = auth::bearer(req.headers()).or_else(|| auth::proxy_key(req.headers()));
    let used_by = format!("whoami from {}", peer.ip());
    match daemon
        .registry
        .verify(key.as_deref(), KeyUse::Whoami, &used_by)
    {
        Ok(verified) => {
            let conn = &verified.conn;
            json(
                StatusCode::OK,
                &Whoami {
                    id: conn.id.clone(),
                    name: conn.name.clone(),
                    kind: conn.kind,
                    expires_at: conn.expires_at,
                },
            )
        }
        Err(e) => e.to_response(),
    }
}

fn head_size<B>(req: &Request<B>) -> usize {
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    headers + uri_len(req.uri())
}

/// The length of the request target as sent, without formatting it.
fn uri_len(uri: &http::Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}
