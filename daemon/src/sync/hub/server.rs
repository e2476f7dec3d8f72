//! The hub's side of the wire: a TLS 1.3 + h2 listener (off unless
//! `sync_listen` is set) serving shares to peers that present a `cli_` key
//! scoped to the share. It decides nothing itself: a push lands only where
//! `plan::accepts` says, and through the same landing as a peer's fetch.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::error::{ApiError, ErrorCode};
use crate::http_util::{ChannelBody, ProxyBody, boxed, json, query_pairs, read_json};
use crate::registry::{KeyUse, LiveConn};
use crate::shutdown::{Tasks, serve_graceful};
use crate::sync::SyncEngine;
use crate::sync::hub::share::Share;
use crate::sync::plan;
use crate::sync::replica::apply::{self, Arriving, Landed};
use crate::sync::replica::beneath::{self, At};
use crate::sync::replica::{fsops, paths};
use crate::sync::wire::frames::{FrameReader, FrameWriter};
use crate::sync::wire::model::{
    FetchRequest, Hello, Kind, PushHead, PushResult, RotatedKey, Synced,
};

/// Entries per page of the change feed.
const FETCH_LIMIT: usize = 20_000;
const LONG_POLL_MAX: Duration = Duration::from_secs(30);

pub async fn serve(listener: TcpListener, engine: Arc<SyncEngine>, tasks: Tasks) {
    let acceptor = tokio_rustls::TlsAcceptor::from(engine.identity().server_config.clone());
    loop {
        let stream = tokio::select! {
            () = tasks.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sync accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (engine, acceptor, shutdown) = (engine.clone(), acceptor.clone(), tasks.clone());
        tasks.spawn(async move {
            let Ok(tls) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
                .map_err(|_| ())
                .and_then(|r| r.map_err(|_| ()))
            else {
                return;
            };
            let fetchers = shutdown.clone();
            let service = service_fn(move |req| {
                let (engine, fetchers) = (engine.clone(), fetchers.clone());
                async move {
                    Ok::<_, Infallible>(
                        route(req, &engine, &fetchers)
                            .await
                            .unwrap_or_else(|e| boxed(e.to_response())),
                    )
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
            // Pushes of large files need more than h2's default 64 KiB window.
            builder
                .http2()
                .initial_stream_window_size(4 * 1024 * 1024)
                .initial_connection_window_size(8 * 1024 * 1024)
                .max_frame_size(1024 * 1024);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            // A push or fetch in flight finishes; long polls answer at once.
            let _ = serve_graceful!(conn, shutdown.token());
        });
    }
}

async fn route(
    req: Request<Incoming>,
    engine: &SyncEngine,
    tasks: &Tasks,
) -> Result<Response<ProxyBody>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["v1", "shares", share_name, action] = segments.as_slice() else {
        return Err(ApiError::not_found(format!(
            "No sync route {path}; are both daemons the same version?"
        )));
    };
    let key = crate::http_util::bearer(req.headers());
    let verified = engine
        .registry()
        .verify(key.as_deref(), KeyUse::Sync, "sync")?;
    let conn = verified.conn;
    if conn.share.as_deref() != Some(*share_name) {
        return Err(ApiError::permission_denied(format!(
            "This key does not open the share '{share_name}'; ask the hub's owner for an invite to it."
        )));
    }
    let share = engine.share(share_name)?;
    match (req.method().clone(), *action) {
        (Method::GET, "hello") => Ok(boxed(json(
            StatusCode::OK,
            &Hello {
                share: share.record.name.clone(),
                replica: share.record.replica.clone(),
                read_only: conn.read_only,
            },
        ))),
        (Method::GET, "changes") => changes(&req, &share, tasks).await,
        (Method::POST, "fetch") => fetch(req, share, tasks).await,
        (Method::POST, "push") => {
            if conn.read_only {
                return Err(ApiError::permission_denied(
                    "This key is read-only: it may pull from the share but never push to it.",
                ));
            }
            push(req, &share).await
        }
        (Method::POST, "rotate-key") => rotate(engine, &conn).await,
        _ => Err(ApiError::not_found(format!(
            "No sync route {} {path}.",
            req.method()
        ))),
    }
}

async fn changes(
    req: &Request<Incoming>,
    share: &Arc<Share>,
    tasks: &Tasks,
) -> Result<Response<ProxyBody>, ApiError> {
    let mut since = 0u64;
    let mut wait = Duration::ZERO;
    for pair in query_pairs(req.uri()) {
        match pair {
            ("since", v) => {
                since = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("since must be a number."))?
            }
            ("wait", v) => {
                wait = Duration::from_secs(
                    v.parse()
                        .map_err(|_| ApiError::bad_request("wait must be seconds."))?,
                )
                .min(LONG_POLL_MAX)
            }
            _ => {}
        }
    }
    if let Some(why) = share.halted() {
        return Err(ApiError::new(
            ErrorCode::ShareHalted,
            StatusCode::SERVICE_UNAVAILABLE,
            why,
        ));
    }
    if share.journal.last_version() <= since && !wait.is_zero() {
        // At shutdown a long poll answers with what it has, so the drain
        // does not wait out its 30 s.
        tokio::select! {
            () = share.journal.wait_past(since, wait) => {}
            () = tasks.cancelled() => {}
        }
    }
    let changes = share.journal.changes_since(since, FETCH_LIMIT)?;
    Ok(boxed(json(StatusCode::OK, &changes)))
}

/// Streams the current content of each asked-for path, each led by its entry.
async fn fetch(
    req: Request<Incoming>,
    share: Arc<Share>,
    tasks: &Tasks,
) -> Result<Response<ProxyBody>, ApiError> {
    let request: FetchRequest = read_json(req.into_body(), 16 * 1024 * 1024).await?;
    for path in &request.paths {
        paths::check(path)
            .map_err(|why| ApiError::bad_request(format!("Path {path:?} is refused: {why}.")))?;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tasks.spawn(async move {
        let writer = FrameWriter::new(tx);
        for path in request.paths {
            let entry = match share.journal.entry_of(&path) {
                Ok(Some(entry)) => entry,
                _ => continue,
            };
            if writer.head(&entry).await.is_err() {
                return;
            }
            if entry.kind == Kind::File {
                // A file that changed since it was journaled fails the
                // peer's hash check and is fetched again after the next scan.
                if let Err(e) = writer.file(&share.root, Path::new(&path), entry.size).await {
                    tracing::debug!(error = %e, %path, "a fetch stopped mid-file");
                    return;
                }
            }
        }
    });
    Ok(Response::new(ChannelBody::new(rx).boxed()))
}

/// Applies a batch of pushed changes. Each lands only if the hub's version
/// still equals the change's base; otherwise the peer gets the current entry.
async fn push(req: Request<Incoming>, share: &Share) -> Result<Response<ProxyBody>, ApiError> {
    if let Some(why) = share.halted() {
        return Err(ApiError::new(
            ErrorCode::ShareHalted,
            StatusCode::SERVICE_UNAVAILABLE,
            why,
        ));
    }
    let _guard = share.lock.lock().await;
    let mut reader = FrameReader::new(req.into_body());
    let mut results = Vec::new();
    let mut staged: Vec<(PushHead, fsops::Staged)> = Vec::new();
    if let Err(e) = read_pushes(&mut reader, share, &mut results, &mut staged).await {
        // Files already received in this batch are dropped; the peer retries.
        for (_, file) in staged {
            file.discard();
        }
        return Err(e);
    }
    apply::land(
        &share.root,
        false,
        staged,
        |head: &PushHead| {
            let current = share.refresh(&head.path)?;
            Ok::<_, ApiError>(plan::accepts(current.as_ref(), head.base))
        },
        |head, landed| {
            results.push(match landed {
                Landed::Placed(stat) => {
                    let (mtime_ns, inode) = stat.map_or((0, 0), |s| (s.mtime_ns, s.inode));
                    let version = share.journal.record(
                        &head.path,
                        Synced {
                            kind: Kind::File,
                            sha256: head.sha256,
                            size: head.size,
                            exec: head.exec,
                            version: 0,
                            mtime_ns,
                            inode,
                        },
                    )?;
                    PushResult::Accepted {
                        path: head.path,
                        version,
                    }
                }
                Landed::Changed => conflict(share, head.path)?,
                Landed::Failed(e) => PushResult::Refused {
                    path: head.path,
                    message: format!("could not put it in place durably: {e}"),
                },
            });
            Ok(())
        },
    )?;
    share.journal.flush().await?;
    Ok(boxed(json(StatusCode::OK, &results)))
}

/// The hub moved on from a push's base: the peer gets what it has now.
fn conflict(share: &Share, path: String) -> Result<PushResult, ApiError> {
    // A path the journal never held was pushed on a base it never had.
    let current = share
        .journal
        .entry_of(&path)?
        .unwrap_or_else(|| Synced::deleted(0).entry(&path));
    Ok(PushResult::Conflict { path, current })
}

/// Reads every change of a push batch, applying directories and deletes at
/// once and staging files. A broken stream is an error for the whole batch.
async fn read_pushes(
    reader: &mut FrameReader,
    share: &Share,
    results: &mut Vec<PushResult>,
    staged: &mut Vec<(PushHead, fsops::Staged)>,
) -> Result<(), ApiError> {
    let bad = |e: std::io::Error| {
        ApiError::bad_request(format!(
            "The push stream is broken: {e}; it will be retried."
        ))
    };
    while let Some(head) = reader.head::<PushHead>().await.map_err(bad)? {
        let size = if head.kind == Kind::File {
            head.size
        } else {
            0
        };
        let relative = match paths::check(&head.path) {
            Ok(relative) => relative,
            Err(why) => {
                reader.skip(size).await.map_err(bad)?;
                results.push(PushResult::Refused {
                    path: head.path.clone(),
                    message: format!("path refused: {why}"),
                });
                continue;
            }
        };
        // The hub's own edit there is journaled first, so the push meets it.
        let current = share.refresh(&head.path)?;
        if !plan::accepts(current.as_ref(), head.base) {
            reader.skip(size).await.map_err(bad)?;
            results.push(conflict(share, head.path)?);
            continue;
        }
        match head.kind {
            Kind::File => {
                let file = Arriving {
                    relative: &relative,
                    size: head.size,
                    sha256: head.sha256,
                    exec: head.exec,
                };
                match apply::receive(reader, &share.root, file, false)
                    .await
                    .map_err(bad)?
                {
                    Ok(file) => staged.push((head, file)),
                    Err(e) => results.push(PushResult::Refused {
                        path: head.path.clone(),
                        message: e.to_string(),
                    }),
                }
            }
            Kind::Dir => results.push(apply_dir(share, &relative, &head)?),
            Kind::Deleted => results.push(apply_delete(share, &relative, &head)?),
        }
    }
    Ok(())
}

fn apply_dir(
    share: &Share,
    relative: &std::path::Path,
    head: &PushHead,
) -> Result<PushResult, ApiError> {
    // The base matched, so a file in the way is the one the peer replaced.
    let in_the_way = beneath::stat(&share.root, relative);
    if matches!(in_the_way, Ok(At::Entry(ref s)) if s.kind == Kind::File)
        && let Err(e) = beneath::remove(&share.root, relative)
    {
        return Ok(PushResult::Refused {
            path: head.path.clone(),
            message: e.to_string(),
        });
    }
    if let Err(e) = fsops::make_dir(&share.root, relative) {
        return Ok(PushResult::Refused {
            path: head.path.clone(),
            message: e.to_string(),
        });
    }
    let inode = match beneath::stat(&share.root, relative) {
        Ok(At::Entry(stat)) => stat.inode,
        _ => 0,
    };
    let version = share.journal.record(
        &head.path,
        Synced {
            kind: Kind::Dir,
            sha256: None,
            size: 0,
            exec: false,
            version: 0,
            mtime_ns: 0,
            inode,
        },
    )?;
    Ok(PushResult::Accepted {
        path: head.path.clone(),
        version,
    })
}

fn apply_delete(
    share: &Share,
    relative: &std::path::Path,
    head: &PushHead,
) -> Result<PushResult, ApiError> {
    if let Err(e) = beneath::remove(&share.root, relative) {
        // A directory that still holds files: an edit beats a delete.
        let current = share.refresh(&head.path)?;
        return Ok(match current {
            Some(current) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                PushResult::Conflict {
                    path: head.path.clone(),
                    current,
                }
            }
            _ => PushResult::Refused {
                path: head.path.clone(),
                message: e.to_string(),
            },
        });
    }
    let version = share.journal.record(&head.path, Synced::deleted(0))?;
    Ok(PushResult::Accepted {
        path: head.path.clone(),
        version,
    })
}

/// The holder of a `cli_` key rotates it over its own session; the old key
/// keeps working for a minute so a lost answer cannot lock the peer out.
async fn rotate(engine: &SyncEngine, conn: &LiveConn) -> Result<Response<ProxyBody>, ApiError> {
    let rotated = engine.registry().rotate_key(&conn.id, Some(60)).await?;
    Ok(boxed(json(
        StatusCode::OK,
        &RotatedKey { key: rotated.key },
    )))
}

pub fn share_path(path: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(
            "Give the folder as an absolute path.",
        ));
    }
    Ok(path)
}
