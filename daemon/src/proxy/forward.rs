//! Forwarding one request upstream on the hyper path: the policy's
//! decision, injection, audit, then streaming both ways. Absolute-form HTTP,
//! intercepted requests the forwarder leaves, and `/v1/proxy` end here.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{Audited, Counted};
use super::policy::{self, Ask, Decision, Entry, Settings};
use super::scrub_body::{Masked, Scanned, encoded_answer, is_encoded, mask_headers};
use super::target::Target;
use super::upstream::{Failure, classify};
use super::wire::headers::{is_upgrade, strip_hop_by_hop};
use crate::audit::{Outcome, Pending};
use crate::error::{ApiError, ErrorCode};
use crate::http_util::{ProxyBody, boxed};
use crate::keys::Secret;
use crate::proxy::{Proxy, relay_scrubbed_while_key_holds, relay_while_key_holds};
use crate::registry::{LiveConn, LiveCred};

/// How long to wait for the upstream's response head.
pub(crate) const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn forward(
    daemon: Arc<Proxy>,
    conn: Arc<LiveConn>,
    key: Secret,
    target: Target,
    req: Request<Incoming>,
    entry: Entry<'_>,
) -> Response<ProxyBody> {
    let uri = req.uri();
    // The target too: for `/v1/proxy` it came in a header that is gone now.
    let head = [
        uri.authority().map(|a| a.as_str()),
        uri.path_and_query().map(|p| p.as_str()),
        Some(target.host.as_str()),
        Some(target.path_and_query.as_str()),
    ];
    let texts: Vec<&[u8]> = head
        .into_iter()
        .flatten()
        .map(str::as_bytes)
        .chain(req.headers().values().map(HeaderValue::as_bytes))
        .collect();
    let ask = Ask {
        method: req.method().as_str(),
        conn_id: &conn.id,
        conn_name: &conn.name,
        target: &target,
        entry,
        texts: texts.iter().copied(),
    };
    match policy::decide(&*daemon.registry, Settings::of(&daemon.live), ask) {
        Ok(Decision { cred }) => send(daemon, conn, key, target, req, cred).await,
        Err(e) => {
            tracing::info!(conn = %conn.id, host = %target.host, error = %e.code, "the proxy policy refused a request");
            boxed(e.to_response())
        }
    }
}

async fn send(
    daemon: Arc<Proxy>,
    conn: Arc<LiveConn>,
    key: Secret,
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
        // A compressed response, or compressed WebSocket frames, would hide
        // an echoed secret from the scrub.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if let Ok(host) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, host);
    }
    parts.version = http::Version::HTTP_11;
    parts.uri = uri;

    let pending = daemon.audit.record(&policy::opening(
        (&conn.id, &conn.name),
        cred.as_deref(),
        parts.method.as_str(),
        &target,
        &authority,
    ));
    if let Err(e) = daemon.audit.begin(&pending).await {
        tracing::error!(error = %e, "cannot write the audit record; refusing the request");
        return boxed(audit_unavailable().to_response());
    }

    let up = Arc::new(AtomicU64::new(0));
    let mut body = Counted::new(body.map_err(Into::into).boxed(), up.clone()).boxed();
    // Other credentials' secrets must not leave in the body either.
    let mut leaked = None;
    if !hyper::body::Body::is_end_stream(&body) {
        let creds = daemon.registry.unbound_creds(&target.place());
        if !creds.is_empty() {
            let scanned = Scanned::new(body, creds);
            leaked = Some(scanned.leaked.clone());
            body = scanned.boxed();
        }
    }
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
            let error = match leaked.as_ref().and_then(|l| l.get()) {
                Some(name) => leak_refused(name, &target.host),
                None => upstream_failure(&e, &target),
            };
            return refused(&daemon, pending, error);
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
    if cred.is_some()
        && is_encoded(response.headers())
        && !hyper::body::Body::is_end_stream(response.body())
    {
        return refused(&daemon, pending, encoded_answer(&target.host));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let registry = daemon.registry.clone();
        let scrub_cred = cred.clone();
        daemon.tasks.spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                match scrub_cred {
                    Some(cred) => {
                        relay_scrubbed_while_key_holds(&registry, &key, cred, client, upstream)
                            .await;
                    }
                    None => {
                        relay_while_key_holds(&registry, &key, &mut client, &mut upstream).await;
                    }
                }
            }
        });
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    let scrub = cred.map(|cred| {
        let head = mask_headers(&cred, response.headers_mut());
        Box::new(Masked::new(cred, head))
    });
    let (parts, body) = response.into_parts();
    let body = Audited::new(
        body.map_err(Into::into).boxed(),
        up,
        daemon.clone(),
        pending,
        status.as_u16(),
        scrub,
    );
    Response::from_parts(parts, body.boxed())
}

/// Records the request as refused with `error`, and answers with it.
fn refused(daemon: &Proxy, pending: Pending, error: ApiError) -> Response<ProxyBody> {
    daemon.audit.finish(
        pending,
        Some(error.status.as_u16()),
        (0, 0),
        Outcome::of_error(error.code),
    );
    boxed(error.to_response())
}

/// The answer to an upload cut for carrying another credential's secret.
pub(crate) fn leak_refused(cred: &str, host: &str) -> ApiError {
    ApiError::permission_denied(format!(
        "The request body carries the secret of credential '{cred}' toward {host}, a host it is not bound to; sidekey stopped it there and sent nothing more."
    ))
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
