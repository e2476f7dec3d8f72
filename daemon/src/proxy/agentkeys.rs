//! `/v1/proxy`, compatible with the hosted AgentKeys proxy: the target comes
//! in `X-Target-Url`, the key in `Authorization: Bearer` (a `pxr_` grant
//! token or an `sk_live_` key), the credential optionally in `X-Credential-Name`.

use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::auth;
use super::forward::forward;
use super::policy::Entry;
use super::target::Target;
use crate::error::ApiError;
use crate::http_util::{ProxyBody, boxed};
use crate::keys::Secret;
use crate::proxy::Proxy;
use crate::registry::{KeyUse, Verified};

const TARGET_URL: HeaderName = HeaderName::from_static("x-target-url");
const CREDENTIAL_NAME: HeaderName = HeaderName::from_static("x-credential-name");
const TARGET_METHOD: HeaderName = HeaderName::from_static("x-target-method");

pub async fn handle(daemon: Arc<Proxy>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let (key, verified, target, named) = match prepare(&daemon, &mut req) {
        Ok(prepared) => prepared,
        Err(e) => return boxed(e.to_response()),
    };
    let entry = Entry::AgentKeys {
        token_cred: verified.grant_cred.as_deref(),
        named: named.as_deref(),
    };
    forward(
        daemon.clone(),
        verified.conn.clone(),
        key,
        target,
        req,
        entry,
    )
    .await
}

/// The key, the target and the named credential, with the headers that
/// carried them taken out of the request.
type Prepared = (Secret, Verified, Target, Option<String>);

fn prepare(daemon: &Proxy, req: &mut Request<Incoming>) -> Result<Prepared, ApiError> {
    let key = auth::bearer(req.headers());
    let verified = daemon
        .registry
        .verify(key.as_deref(), KeyUse::Proxy, "/v1/proxy")?;
    let headers = req.headers();
    let url = headers
        .get(&TARGET_URL)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("X-Target-Url is required: the full URL to call, like https://api.resend.com/emails."))?;
    let uri: http::Uri = url.parse().map_err(|_| {
        ApiError::bad_request(
            "X-Target-Url is not a valid URL; send a full URL like https://api.resend.com/emails.",
        )
    })?;
    let target = Target::from_uri(&uri)?;
    let wanted = headers
        .get(&CREDENTIAL_NAME)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = match headers.get(&TARGET_METHOD) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "X-Target-Method is not an HTTP method; use GET, POST, ...",
                    )
                })?,
        ),
        None => None,
    };

    let headers = req.headers_mut();
    for name in [
        TARGET_URL,
        CREDENTIAL_NAME,
        TARGET_METHOD,
        header::AUTHORIZATION,
        header::HOST,
    ] {
        headers.remove(name);
    }
    if let Some(method) = method {
        *req.method_mut() = method;
    }
    Ok((
        Secret::new(key.unwrap_or_default()),
        verified,
        target,
        wanted,
    ))
}
