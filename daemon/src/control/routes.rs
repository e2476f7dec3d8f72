//! The control routes under `/v1/`. Each answers JSON, errors in the one
//! DESIGN.md shape.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sidekey_api::{
    ConnCreate, CredCreate, CredHosts, CredSecret, GrantCreate, InviteCreate, KeyRegenerate,
    SessionCreate, SessionKey, ShareCreate, Status,
};

use std::sync::Arc;

use super::Control;
use crate::error::ApiError;
use crate::http_util::{Body, ProxyBody, boxed, json, read_json};
use crate::keys::Secret;

/// Bodies are small JSON documents; a credential secret is capped at 16 KiB.
const BODY_LIMIT: usize = 64 * 1024;

pub async fn handle(req: Request<Incoming>, control: &Arc<Control>) -> Response<ProxyBody> {
    if req.method() == Method::GET && req.uri().path() == "/v1/audit" && !is_from_browser(&req) {
        return super::audit::respond(&req, control).unwrap_or_else(|e| boxed(e.to_response()));
    }
    match route(req, control).await {
        Ok(response) => boxed(response),
        Err(e) => boxed(e.to_response()),
    }
}

fn is_from_browser(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::ORIGIN) || req.headers().contains_key(header::REFERER)
}

async fn route(req: Request<Incoming>, control: &Arc<Control>) -> Result<Response<Body>, ApiError> {
    // A browser has no business here: refuse anything a web page could send.
    if is_from_browser(&req) {
        return Err(ApiError::permission_denied(
            "The control API refuses requests from browsers; use sidekeyctl.",
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let registry = &control.registry;
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => ok(&status(control)),

        (&Method::GET, ["v1", "conns"]) => ok(&registry.list_conns()?),
        (&Method::POST, ["v1", "conns"]) => {
            let req: ConnCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(StatusCode::CREATED, &registry.create_conn(req).await?))
        }
        (&Method::GET, ["v1", "conns", id]) => ok(&registry.conn(id)?),
        (&Method::DELETE, ["v1", "conns", id]) => ok(&registry.remove_conn(id).await?),
        (&Method::GET, ["v1", "conns", id, "key"]) => ok(&registry.reveal_key(id)?),
        (&Method::POST, ["v1", "conns", id, "key"]) => {
            let id = id.to_string();
            let body: KeyRegenerate = read_json(req.into_body(), BODY_LIMIT).await?;
            ok(&registry.rotate_key(&id, body.grace_secs).await?)
        }
        (&Method::POST, ["v1", "conns", id, "disable"]) => {
            ok(&registry.set_disabled(id, true).await?)
        }
        (&Method::POST, ["v1", "conns", id, "enable"]) => {
            ok(&registry.set_disabled(id, false).await?)
        }

        (&Method::GET, ["v1", "creds"]) => ok(&registry.list_creds()),
        (&Method::POST, ["v1", "creds"]) => {
            let req: CredCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(StatusCode::CREATED, &registry.add_cred(req).await?))
        }
        (&Method::GET, ["v1", "creds", name]) => ok(&registry.cred(name)?),
        (&Method::PUT, ["v1", "creds", name, "secret"]) => {
            let name = name.to_string();
            let body: CredSecret = read_json(req.into_body(), BODY_LIMIT).await?;
            ok(&registry
                .set_cred_secret(&name, Secret::new(body.secret))
                .await?)
        }
        (&Method::PUT, ["v1", "creds", name, "hosts"]) => {
            let name = name.to_string();
            let body: CredHosts = read_json(req.into_body(), BODY_LIMIT).await?;
            ok(&registry.set_cred_hosts(&name, &body.hosts).await?)
        }
        (&Method::DELETE, ["v1", "creds", name]) => ok(&registry.remove_cred(name).await?),

        (&Method::POST, ["v1", "grants"]) => {
            let body: GrantCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(
                StatusCode::CREATED,
                &registry
                    .grant(&body.conn, &body.cred, body.regenerate)
                    .await?,
            ))
        }
        (&Method::DELETE, ["v1", "grants", conn, cred]) => {
            registry.revoke_grant(conn, cred).await?;
            Ok(crate::http_util::empty(StatusCode::NO_CONTENT))
        }

        (&Method::GET, ["v1", "shares"]) => ok(&control.sync.shares()),
        (&Method::POST, ["v1", "shares"]) => {
            let body: ShareCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(
                StatusCode::CREATED,
                &control.sync.add_share(&body.name, &body.path)?,
            ))
        }
        (&Method::GET, ["v1", "shares", name]) => ok(&control.sync.share_view(name)?),
        (&Method::DELETE, ["v1", "shares", name]) => {
            control.sync.remove_share(name).await?;
            Ok(crate::http_util::empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["v1", "shares", name, "invite"]) => {
            let name = name.to_string();
            let body: InviteCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(
                StatusCode::CREATED,
                &control.sync.invite(&name, body).await?,
            ))
        }

        (&Method::GET, ["v1", "sessions"]) => ok(&control.sync.sessions()),
        (&Method::POST, ["v1", "sessions"]) => {
            let body: SessionCreate = read_json(req.into_body(), BODY_LIMIT).await?;
            Ok(json(
                StatusCode::CREATED,
                &control.sync.add_session(&body.folder, &body.invite).await?,
            ))
        }
        (&Method::GET, ["v1", "sessions", id]) => ok(&control.sync.session_view(id)?),
        (&Method::DELETE, ["v1", "sessions", id]) => {
            control.sync.remove_session(id).await?;
            Ok(crate::http_util::empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["v1", "sessions", id, "pause"]) => {
            ok(&control.sync.set_paused(id, true).await?)
        }
        (&Method::POST, ["v1", "sessions", id, "resume"]) => {
            ok(&control.sync.set_paused(id, false).await?)
        }
        (&Method::POST, ["v1", "sessions", id, "rotate-key"]) => {
            ok(&control.sync.rotate_session_key(id).await?)
        }
        (&Method::PUT, ["v1", "sessions", id, "key"]) => {
            let id = id.to_string();
            let body: SessionKey = read_json(req.into_body(), BODY_LIMIT).await?;
            ok(&control
                .sync
                .set_session_key(&id, Secret::new(body.key))
                .await?)
        }

        _ => Err(ApiError::not_found(format!(
            "There is no control route {method} {path}; check that sidekeyctl and sidekeyd are the same version."
        ))),
    }
}

fn status(control: &Control) -> Status {
    let (conns, creds, grants) = control.registry.counts();
    let store = control.registry.store();
    let about = &control.about;
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: about.started.elapsed().as_secs(),
        data_dir: about.data_dir.display().to_string(),
        socket: about.socket.display().to_string(),
        proxy_listen: about.proxy_listen.to_string(),
        upstream_proxy: about.upstream_proxy.clone(),
        conns,
        creds,
        grants,
        schema_version: store.schema_version(),
        ca_path: about.ca_path.display().to_string(),
        ca_bundle: about.ca_bundle.display().to_string(),
        store_writes: store.writes(),
    }
}

fn ok<T: serde::Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    Ok(json(StatusCode::OK, value))
}
