//! `GET /v1/audit[?conn=X][&limit=N][&follow=1]`: the newest records as a
//! JSON array, or with `follow` as NDJSON that stays open and streams each
//! record as its request completes.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{broadcast, mpsc};

use super::Control;
use crate::audit::AuditRecord;
use crate::error::ApiError;
use crate::http_util::{ChannelBody, ProxyBody, json, query_pairs};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 10_000;

pub fn respond(
    req: &Request<Incoming>,
    control: &Arc<Control>,
) -> Result<Response<ProxyBody>, ApiError> {
    let mut follow = false;
    let mut conn = None;
    let mut limit = DEFAULT_LIMIT;
    for pair in query_pairs(req.uri()) {
        match pair {
            ("follow", v) => follow = v != "0",
            ("conn", v) => conn = Some(v.to_string()),
            ("limit", v) => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}."
                        ))
                    })?;
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "Unknown audit parameter '{other}'; use conn, limit and follow."
                )));
            }
        }
    }
    let conn_id = match &conn {
        Some(reference) => Some(control.registry.conn(reference)?.id),
        None => None,
    };
    let matches = move |r: &AuditRecord| conn_id.as_ref().is_none_or(|id| &r.conn_id == id);
    let retention = control.live.get().audit_retention.as_secs();
    let newest = control
        .audit
        .tail(limit, retention, &matches)
        .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))?;
    if !follow {
        return Ok(json(StatusCode::OK, &newest).map(|b| b.map_err(|never| match never {}).boxed()));
    }

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut feed = control.audit.subscribe();
    let shutdown = control.tasks.clone();
    control.tasks.spawn(async move {
        for record in newest {
            if tx.send(line(&record)).await.is_err() {
                return;
            }
        }
        loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                received = feed.recv() => match received {
                    Ok(record) => record,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an audit follower fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if matches(&record) && tx.send(line(&record)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody::new(rx).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

fn line(record: &AuditRecord) -> Bytes {
    let mut bytes = serde_json::to_vec(record).expect("records serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}
