//! Forwarding one request upstream: target checks, credential choice,
//! injection, audit, then streaming both ways. Every path into the proxy
//! (absolute-form HTTP, intercepted CONNECT, `/v1/proxy`) ends here.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{Audited, Counted};
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::target::forbidden_name;
use super::upstream::{Failure, classify};
use crate::audit::Opening;
use crate::audit::Outcome;
use crate::config::Egress;
use crate::error::{ApiError, ErrorCode};
use crate::hosts::normalize_host;
use crate::http_util::{ProxyBody, boxed};
use crate::proxy::Proxy;
use crate::registry::{LiveConn, LiveCred};

/// How long to wait for the upstream's response head.
pub(crate) const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: &'static str,
    /// Normalized: lowercase, no trailing dot, canonical IP literals.
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
}

impl Target {
    pub fn new(
        scheme: &'static str,
        host: &str,
        port: Option<u16>,
        path_and_query: &str,
    ) -> Target {
        let default_port = if scheme == "https" { 443 } else { 80 };
        Target {
            scheme,
            host: normalize_host(host),
            port: port.unwrap_or(default_port),
            path_and_query: if path_and_query.is_empty() {
                "/".into()
            } else {
                path_and_query.to_string()
            },
        }
    }

    pub fn from_uri(uri: &Uri) -> Result<Target, ApiError> {
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ => {
                return Err(ApiError::bad_request(
                    "Only http:// and https:// targets are supported; fix the target URL.",
                ));
            }
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| {
            ApiError::bad_request(
                "The target URL has no host; send a full URL like https://api.example.com/v1.",
            )
        })?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Ok(Target::new(scheme, host, uri.port_u16(), path))
    }

    /// `host[:port]`, the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let mut authority = String::with_capacity(self.host.len() + 8);
        let ipv6 = self.host.contains(':');
        if ipv6 {
            authority.push('[');
        }
        authority.push_str(&self.host);
        if ipv6 {
            authority.push(']');
        }
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if self.port != default_port {
            authority.push(':');
            authority.push_str(itoa(self.port, &mut [0; 5]));
        }
        authority
    }

    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("/")
    }

    /// `authority` is [`Target::authority`], which the caller needs too.
    fn uri(&self, authority: &str) -> Result<Uri, ApiError> {
        format!("{}://{authority}{}", self.scheme, self.path_and_query)
            .parse()
            .map_err(|_| {
                ApiError::bad_request("The target URL is not valid; check its path and query.")
            })
    }
}

/// `n` in decimal, without the formatting machinery.
fn itoa(mut n: u16, digits: &mut [u8; 5]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or_default()
}

/// Which credential a request may carry.
pub enum Choice {
    /// The forward proxy: a granted credential bound to the target, if any.
    Bound,
    /// `/v1/proxy`: exactly this credential, which must be bound to the target.
    Exactly(Arc<LiveCred>),
}

pub async fn forward(
    daemon: Arc<Proxy>,
    conn: Arc<LiveConn>,
    target: Target,
    mut req: Request<Incoming>,
    choice: Choice,
) -> Response<ProxyBody> {
    match prepare(&daemon, &conn, &target, &mut req, choice) {
        Ok(cred) => send(daemon, conn, target, req, cred).await,
        Err(e) => boxed(e.to_response()),
    }
}

/// Checks the target and picks the credential, before anything is sent.
fn prepare(
    daemon: &Proxy,
    conn: &LiveConn,
    target: &Target,
    req: &mut Request<Incoming>,
    choice: Choice,
) -> Result<Option<Arc<LiveCred>>, ApiError> {
    if forbidden_name(&target.host) {
        return Err(ApiError::permission_denied(format!(
            "{} is a link-local or cloud-metadata address; sidekey never sends requests there.",
            target.host
        )));
    }
    let cred = match choice {
        Choice::Exactly(cred) => {
            if !cred.binds(&target.host, target.path()) {
                return Err(ApiError::permission_denied(format!(
                    "The credential '{}' is not bound to {}{}; bind it with --host (and --path-prefix), or pick another credential.",
                    cred.name,
                    target.host,
                    target.path()
                )));
            }
            Some(cred)
        }
        Choice::Bound => {
            let cred = daemon
                .registry
                .cred_for(&conn.id, &target.host, target.path());
            if cred.is_none() && daemon.live_config().egress == Egress::Deny {
                return Err(ApiError::permission_denied(format!(
                    "egress is \"deny\" and no credential granted to this connection is bound to {}; grant one with: sidekeyctl grant",
                    target.host
                )));
            }
            cred
        }
    };
    // A secret's value may only ever travel to its own hosts.
    let uri = req.uri();
    let mut texts: Vec<&[u8]> = [
        uri.authority().map(|a| a.as_str()),
        uri.path_and_query().map(|p| p.as_str()),
    ]
    .into_iter()
    .flatten()
    .map(str::as_bytes)
    .collect();
    texts.extend(req.headers().values().map(HeaderValue::as_bytes));
    if let Some(leaked) = daemon
        .registry
        .leaked_secret(texts.iter().copied(), &target.host)
    {
        tracing::warn!(conn = %conn.id, cred = %leaked, host = %target.host, "refused a request carrying a credential's secret to another host");
        return Err(ApiError::permission_denied(format!(
            "This request carries the secret of credential '{leaked}' toward {}, a host it is not bound to; it was not sent.",
            target.host
        )));
    }
    Ok(cred)
}

async fn send(
    daemon: Arc<Proxy>,
    conn: Arc<LiveConn>,
    target: Target,
    mut req: Request<Incoming>,
    cred: Option<Arc<LiveCred>>,
) -> Response<ProxyBody> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = target.authority();
    let mut uri = match target.uri(&authority) {
        Ok(uri) => uri,
        Err(e) => return boxed(e.to_response()),
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::HOST);
    if let Some(cred) = &cred {
        crate::inject::apply(cred.cred_type, &cred.secret, &mut parts.headers, &mut uri);
    }
    if let Ok(host) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, host);
    }
    parts.version = http::Version::HTTP_11;
    parts.uri = uri;

    let pending = daemon.audit.record(&Opening {
        conn_id: &conn.id,
        conn: &conn.name,
        cred: cred.as_ref().map(|c| c.name.as_str()),
        method: parts.method.as_str(),
        scheme: target.scheme,
        authority: &authority,
        path: &target.path_and_query,
    });
    if let Err(e) = daemon.audit.begin(&pending).await {
        tracing::error!(error = %e, "cannot write the audit record; refusing the request");
        return boxed(audit_unavailable().to_response());
    }

    let up = Arc::new(AtomicU64::new(0));
    let body = Counted::new(body.map_err(Into::into).boxed(), up.clone()).boxed();
    let outgoing = Request::from_parts(parts, body);
    let client = if upgrade {
        &daemon.upstream.http1
    } else {
        &daemon.upstream.any
    };
    let response = match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, client.request(outgoing)).await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let error = upstream_failure(&e, &target);
            daemon.audit.finish(
                pending,
                Some(error.status.as_u16()),
                (0, 0),
                Outcome::UpstreamError,
            );
            return boxed(error.to_response());
        }
        Err(_) => {
            daemon
                .audit
                .finish(pending, Some(504), (0, 0), Outcome::UpstreamTimeout);
            return boxed(response_timeout(&target).to_response());
        }
    };

    let mut response = response;
    let status = response.status();
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        daemon.tasks.spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    let (parts, body) = response.into_parts();
    let body = Audited::new(
        body.map_err(Into::into).boxed(),
        up,
        daemon.clone(),
        pending,
        status.as_u16(),
    );
    Response::from_parts(parts, body.boxed())
}

pub(crate) fn audit_unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::AuditUnavailable,
        StatusCode::SERVICE_UNAVAILABLE,
        "The request could not be audited, so it was not sent; check the data dir's free space.",
    )
}

pub(crate) fn response_timeout(target: &Target) -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamTimeout,
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "{} did not answer within {} s; try again later.",
            target.host,
            RESPONSE_HEAD_TIMEOUT.as_secs()
        ),
    )
}

pub(crate) fn upstream_failure(e: &(dyn std::error::Error + 'static), target: &Target) -> ApiError {
    tracing::debug!(error = ?e, host = %target.host, "upstream request failed");
    match classify(e) {
        Failure::Tls => ApiError::new(
            ErrorCode::UpstreamTls,
            StatusCode::BAD_GATEWAY,
            format!(
                "The TLS certificate of {} did not verify, so nothing was sent; if it is a private CA, add it with upstream_ca_file.",
                target.host
            ),
        ),
        Failure::Timeout => ApiError::new(
            ErrorCode::UpstreamTimeout,
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "Connecting to {} timed out; check that it is up.",
                target.host
            ),
        ),
        Failure::Forbidden => ApiError::permission_denied(format!(
            "{} resolves to a link-local or cloud-metadata address; sidekey never sends requests there.",
            target.host
        )),
        Failure::Unreachable => ApiError::new(
            ErrorCode::UpstreamUnreachable,
            StatusCode::BAD_GATEWAY,
            format!(
                "Could not reach {}:{}; check the host name and that it is up.",
                target.host, target.port
            ),
        ),
        Failure::Proxy(why) => {
            ApiError::new(ErrorCode::UpstreamUnreachable, StatusCode::BAD_GATEWAY, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_name_the_port_only_when_it_is_not_the_default() {
        let authority = |scheme, host, port| Target::new(scheme, host, port, "/").authority();
        assert_eq!(authority("https", "API.x.test.", Some(443)), "api.x.test");
        assert_eq!(authority("http", "h", Some(0)), "h:0");
        assert_eq!(authority("http", "h", Some(65535)), "h:65535");
        assert_eq!(authority("https", "h", Some(80)), "h:80");
        assert_eq!(authority("http", "[::1]", Some(8080)), "[::1]:8080");
        assert_eq!(authority("http", "[::1]", None), "[::1]");
    }
}
