//! CONNECT: hosts bound to a granted credential (or every host, with
//! `intercept = "all"`) are intercepted with a leaf from the local CA;
//! others are tunnelled untouched, or refused with `egress = "deny"`.
//! Plain HTTP inside a tunnel (undici sends CONNECT even for http://,
//! port 80 or not) is told from TLS by its first byte.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::forward::{forward, upstream_failure};
use super::h1::{self, Front, Served};
use super::policy::{self, Connect, Entry, Settings};
use super::target::Target;
use super::wire::rewind::Rewind;
use super::wire::smuggling::HeadGuard;
use super::{auth_failure, authority_matches, refuse_smuggled, relay_while_key_holds};
use crate::error::ApiError;
use crate::hosts::normalize_host;
use crate::http_util::{ProxyBody, boxed, empty_body};
use crate::keys::Secret;
use crate::proxy::Proxy;
use crate::registry::{KeyUse, Verified};
use crate::shutdown::serve_graceful;

pub async fn handle(
    daemon: Arc<Proxy>,
    mut req: Request<Incoming>,
    key: Secret,
    verified: Verified,
) -> Response<ProxyBody> {
    let conn = &verified.conn;
    let Some(authority) = req.uri().authority().cloned() else {
        return boxed(
            ApiError::bad_request("CONNECT needs host:port, like CONNECT api.example.com:443.")
                .to_response(),
        );
    };
    let host = normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or(443);
    let settings = Settings::of(&daemon.live);
    let tunnel = match policy::decide_connect(
        &*daemon.registry,
        settings,
        &conn.id,
        verified.grant_cred.as_deref(),
        &Target::new("https", &host, Some(port), "/"),
    ) {
        Ok(tunnel) => tunnel,
        Err(e) => return boxed(e.to_response()),
    };

    if tunnel == Connect::Untouched {
        // Connect first, so that a closed port is a 502 rather than a dead tunnel.
        let upstream = match connect(&daemon, &host, port).await {
            Ok(stream) => stream,
            Err(e) => return boxed(e.to_response()),
        };
        tracing::debug!(conn = %conn.id, %host, port, "tunnelling without interception");
        let upgrade = hyper::upgrade::on(&mut req);
        let (registry, key) = (daemon.registry.clone(), key.clone());
        daemon.tasks.spawn(async move {
            if let Ok(client) = upgrade.await {
                let mut client = TokioIo::new(client);
                let mut upstream = upstream;
                relay_while_key_holds(&registry, &key, &mut client, &mut upstream).await;
            }
        });
        return ok_response();
    }

    // Probe the upstream, so that a closed port is a 502 now rather than
    // a tunnel whose every request fails.
    if let Err(e) = connect(&daemon, &host, port).await {
        return boxed(e.to_response());
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            intercept_tunnel(daemon, key, host, port, upgraded).await;
        }
    });
    ok_response()
}

/// Serves an intercepted tunnel for as long as the agent keeps it open.
/// Each phase's future is boxed on its own, so an idle tunnel holds only the
/// connection it serves, not the handshake it once did.
async fn intercept_tunnel(
    daemon: Arc<Proxy>,
    key: Secret,
    host: String,
    port: u16,
    upgraded: hyper::upgrade::Upgraded,
) {
    // undici tunnels http:// too: a TLS ClientHello starts with 0x16,
    // anything else is plain HTTP inside the tunnel.
    let mut io = TokioIo::new(upgraded);
    let mut first = [0u8; 1];
    let Ok(1) = tokio::io::AsyncReadExt::read(&mut io, &mut first).await else {
        return;
    };
    let io = Rewind::new(first.to_vec(), io);
    let tunnel = Tunnel {
        daemon,
        key,
        host,
        port,
    };
    if first[0] != 0x16 {
        let serving = Box::pin(tunnel.serve("http", io, false));
        serving.await;
        return;
    }
    let tls_config = match tunnel.daemon.authority.server_config(&tunnel.host) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, host = %tunnel.host, "cannot mint a leaf certificate");
            return;
        }
    };
    // Each box is bound before it is awaited, and the TLS stream (kilobytes
    // of state) lives only inside the block that boxes it: whatever is still
    // in scope at an await is kept in this future's own state.
    let serving = {
        let accepting = Box::pin(tokio_rustls::TlsAcceptor::from(tls_config).accept(io));
        let tls = match accepting.await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, host = %tunnel.host, "the agent's TLS handshake failed");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        // The stream is boxed too: a future keeps a slot for each place a
        // value passes through, and a TLS stream is over a kilobyte.
        Box::pin(tunnel.serve("https", Box::new(tls), h2))
    };
    serving.await;
}

/// The agent and target of an intercepted tunnel.
struct Tunnel {
    daemon: Arc<Proxy>,
    key: Secret,
    host: String,
    port: u16,
}

impl Tunnel {
    /// Serves the requests inside the tunnel, h2 when TLS agreed on it and
    /// http/1.1 otherwise. The agent's key is checked again on every request,
    /// so a rotation or a disable takes effect inside tunnels already open.
    async fn serve<I>(self, scheme: &'static str, io: I, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Tunnel {
            daemon,
            key,
            host,
            port,
        } = self;
        // http/1.1 goes to the forwarder first, and to hyper only for what
        // the forwarder leaves. Told apart by ALPN rather than by sniffing
        // the first bytes, which would double hyper's read buffer.
        let io = if h2 {
            Handoff::H2(io)
        } else {
            let front = Front::Tunnel {
                key: key.clone(),
                scheme,
                host: host.clone(),
                port,
            };
            match h1::serve(&daemon, &front, io).await {
                Served::Ended => return,
                Served::Handoff(rest) => Handoff::H1(rest),
            }
        };
        // Boxed: only tunnels handed off pay for hyper's state.
        Box::pin(serve_full(daemon, key, host, port, scheme, io)).await;
    }
}

/// What an intercepted tunnel hands to hyper.
enum Handoff<I> {
    H2(I),
    H1(Rewind<I>),
}

/// hyper on an intercepted tunnel. The agent's key is checked again on
/// every request, so a rotation or a disable takes effect inside tunnels
/// already open.
async fn serve_full<I>(
    daemon: Arc<Proxy>,
    key: Secret,
    host: String,
    port: u16,
    scheme: &'static str,
    io: Handoff<I>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = daemon.tasks.token().clone();
    let smuggling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = smuggling.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (daemon, key, host) = (daemon.clone(), key.clone(), host.clone());
        let smuggled = refuse_smuggled(&flag);
        async move {
            if let Some(refused) = smuggled {
                return Ok(refused);
            }
            // Boxed for the reason given in `proxy::serve_full`.
            Ok::<_, std::convert::Infallible>(
                Box::pin(inner_request(daemon, &key, &host, port, scheme, req)).await,
            )
        }
    });
    let served = match io {
        // h2's frames are binary, and h2 has no framing to smuggle.
        Handoff::H2(io) => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service);
            serve_graceful!(conn, stop)
        }
        Handoff::H1(io) => {
            let guarded = HeadGuard::with_flag(io, smuggling);
            let conn = http1::Builder::new()
                .max_buf_size(super::wire::READ_BUFFER_BYTES)
                .serve_connection(TokioIo::new(guarded), service)
                .with_upgrades();
            serve_graceful!(conn, stop)
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "intercepted connection ended");
    }
}

async fn inner_request(
    daemon: Arc<Proxy>,
    key: &Secret,
    host: &str,
    port: u16,
    scheme: &'static str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let verified = match daemon
        .registry
        .verify(Some(key.expose()), KeyUse::Proxy, "proxy")
    {
        Ok(verified) => verified,
        Err(e) => return auth_failure(e),
    };
    // The Host (or :authority) inside the tunnel must name the CONNECT target.
    let claimed = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    if !claimed
        .as_deref()
        .is_some_and(|c| authority_matches(c, host, port, scheme))
    {
        return boxed(
            ApiError::permission_denied(format!(
                "The Host header names another host than this tunnel's target {host}; open a tunnel to that host instead."
            ))
            .to_response(),
        );
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let target = Target::new(scheme, host, Some(port), &path);
    let entry = Entry::Forward {
        token_cred: verified.grant_cred.as_deref(),
    };
    forward(
        daemon.clone(),
        verified.conn.clone(),
        key.clone(),
        target,
        req,
        entry,
    )
    .await
}

async fn connect(daemon: &Proxy, host: &str, port: u16) -> Result<TcpStream, ApiError> {
    daemon
        .upstream
        .dialer
        .dial(host, port)
        .await
        .map_err(|e| upstream_failure(&e, &Target::new("https", host, Some(port), "/")))
}

fn ok_response() -> Response<ProxyBody> {
    Response::new(empty_body())
}
