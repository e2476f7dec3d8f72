//! One exchange on the forwarder: the request upstream, the response back,
//! both bodies passed on as they stream, and the audit record around them.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{error_response, read_arrived, read_body, read_small, recycle, send, send_pair};
use super::plan::Plan;
use super::pool::{self, Stream};
use super::response::{self, ResponseHead};
use super::scrubbed::{self, Mode, Raw, Relayed, Stop};
use crate::audit::Pending;
use crate::error::ApiError;
use crate::proxy::Proxy;
use crate::proxy::forward::{
    RESPONSE_HEAD_TIMEOUT, audit_unavailable, leak_refused, response_timeout, upstream_failure,
};
use crate::proxy::target::Target;
use crate::proxy::wire::framing::{Framing, Malformed};
use crate::registry::LiveCred;

pub enum Outcome {
    KeepAlive,
    Close,
}

/// What stopped a body on its way.
enum Relay {
    Read,
    Write(io::Error),
    Malformed,
    /// The upload carried this credential's secret toward a host it is not bound to.
    Leaked(Arc<LiveCred>),
}

impl From<Relayed> for Relay {
    fn from(relayed: Relayed) -> Relay {
        match relayed {
            Relayed::Read => Relay::Read,
            Relayed::Write(e) => Relay::Write(e),
            Relayed::Stop(Stop::Malformed) => Relay::Malformed,
            Relayed::Stop(Stop::Leaked(cred)) => Relay::Leaked(cred),
        }
    }
}

pub async fn run<A>(daemon: &Proxy, agent: &mut A, buf: &mut Vec<u8>, plan: Plan) -> Outcome
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let Plan {
        target,
        record: pending,
        head,
        mut body,
        head_len,
        head_only,
        close,
        scrub,
    } = plan;
    buf.drain(..head_len);
    if let Err(e) = daemon.audit.begin(&pending).await {
        tracing::error!(error = %e, "cannot write the audit record; refusing the request");
        let _ = send(agent, &error_response(&audit_unavailable())).await;
        return Outcome::Close;
    }
    // Other credentials' secrets must not leave in the body either.
    let mut scan = (body != Framing::Empty)
        .then(|| daemon.registry.unbound_creds(&target.place()))
        .filter(|creds| !creds.is_empty())
        .map(|creds| Raw::new(Mode::Detect(creds)));
    // Whatever of the body has arrived (and may go) goes out with the head.
    if body != Framing::Empty && read_arrived(agent, buf).is_err() {
        return aborted(daemon, pending, None, (0, 0));
    }
    let advanced = match &mut scan {
        None => body.advance(buf).map_err(Stop::from),
        Some(raw) => raw.take(&mut body, buf),
    };
    let (taken, whole) = match advanced {
        Ok(advanced) => advanced,
        Err(Stop::Malformed) => {
            return fail(daemon, agent, pending, (0, 0), broken_chunks()).await;
        }
        Err(Stop::Leaked(cred)) => {
            let error = leak_refused(&cred.name, &target.host);
            return fail(daemon, agent, pending, (0, 0), error).await;
        }
    };
    let mut up = taken as u64;

    // A pooled connection the upstream closed meanwhile gets the request
    // again on a new one, if the request is whole in hand.
    let mut pooled_ok = true;
    let (mut upstream, mut incoming, mut answer) = loop {
        let pooled = if pooled_ok {
            pool::checkout(&target, whole)
        } else {
            None
        };
        let retry = pooled.is_some() && whole;
        let mut upstream = match pooled {
            Some(stream) => stream,
            // Boxed: a TLS handshake's state is kilobytes, and keep-alive
            // makes new connections rare.
            None => match Box::pin(pool::connect(&daemon.upstream, &target)).await {
                Ok(stream) => stream,
                Err(e) => {
                    let error = upstream_failure(&e, &target);
                    return fail(daemon, agent, pending, (up, 0), error).await;
                }
            },
        };
        if let Err(e) = send_pair(&mut upstream, &head, &buf[..taken]).await {
            if retry {
                pooled_ok = false;
                continue;
            }
            let error = upstream_failure(&e, &target);
            return fail(daemon, agent, pending, (up, 0), error).await;
        }
        if !whole {
            // No retry from here on: the body goes as it comes.
            buf.drain(..taken);
            if let Some(raw) = &mut scan {
                raw.sent(taken);
            }
            let relayed = match &mut scan {
                None => relay(agent, &mut upstream, buf, &mut body).await,
                Some(raw) => scrubbed::relay(agent, &mut upstream, buf, &mut body, raw)
                    .await
                    .map_err(Relay::from),
            };
            match relayed {
                Ok(moved) => up += moved,
                // The upstream connection is dropped, never pooled: it holds
                // a request cut short.
                Err(Relay::Leaked(cred)) => {
                    let error = leak_refused(&cred.name, &target.host);
                    return fail(daemon, agent, pending, (up, 0), error).await;
                }
                Err(Relay::Read) => return aborted(daemon, pending, None, (up, 0)),
                Err(Relay::Write(e)) => {
                    let error = upstream_failure(&e, &target);
                    return fail(daemon, agent, pending, (up, 0), error).await;
                }
                Err(Relay::Malformed) => {
                    return fail(daemon, agent, pending, (up, 0), broken_chunks()).await;
                }
            }
        }
        let mut incoming = Vec::new();
        match next_head(&mut upstream, &mut incoming, head_only, close).await {
            Ok(answer) => break (upstream, incoming, answer),
            Err(Some(_)) if retry && incoming.is_empty() => pooled_ok = false,
            Err(e) => {
                return fail(daemon, agent, pending, (up, 0), head_failure(e, &target)).await;
            }
        }
    };
    recycle(head);
    if whole {
        buf.drain(..taken);
    }

    // Heads are scrubbed too: an upstream may echo Authorization, or the
    // query in a Link.
    let mut scrubbed_head = false;
    let mut mask_head = |head: &mut Vec<u8>| {
        if let Some(cred) = &scrub
            && cred.matcher.found_in(head)
        {
            cred.matcher.mask_in(head);
            scrubbed_head = true;
        }
    };
    mask_head(&mut answer.head);
    // 1xx answers pass on as they come; the real one follows.
    while answer.interim {
        incoming.drain(..answer.len);
        if send(agent, &answer.head).await.is_err() {
            return aborted(daemon, pending, None, (up, 0));
        }
        answer = match next_head(&mut upstream, &mut incoming, head_only, close).await {
            Ok(answer) => answer,
            Err(e) => {
                return fail(daemon, agent, pending, (up, 0), head_failure(e, &target)).await;
            }
        };
        mask_head(&mut answer.head);
    }
    if scrub.is_some() && answer.encoded {
        return fail(daemon, agent, pending, (up, 0), encoded_answer(&target)).await;
    }
    let status = Some(answer.status);
    incoming.drain(..answer.len);
    let mut framing = answer.body;
    // What has arrived of the body goes out with the head, in one write.
    if framing != Framing::Empty
        && let Err(e) = read_arrived(&mut upstream, &mut incoming)
    {
        let error = upstream_failure(&e, &target);
        return fail(daemon, agent, pending, (up, 0), error).await;
    }
    let mut raw = scrub
        .as_ref()
        .filter(|_| framing != Framing::Empty)
        .map(|cred| Raw::new(Mode::Mask(cred.clone())));
    let advanced = match &mut raw {
        None => framing.advance(&incoming).map_err(Stop::from),
        Some(raw) => raw.take(&mut framing, &mut incoming),
    };
    let Ok((taken, whole)) = advanced else {
        return fail(daemon, agent, pending, (up, 0), malformed_answer(&target)).await;
    };
    let mut down = taken as u64;
    if send_pair(agent, &answer.head, &incoming[..taken])
        .await
        .is_err()
    {
        return aborted(daemon, pending, status, (up, down));
    }
    incoming.drain(..taken);
    if let Some(raw) = &mut raw {
        raw.sent(taken);
    }
    recycle(answer.head);
    if !whole {
        let relayed = match &mut raw {
            None => relay(&mut upstream, agent, &mut incoming, &mut framing).await,
            Some(raw) => scrubbed::relay(&mut upstream, agent, &mut incoming, &mut framing, raw)
                .await
                .map_err(Relay::from),
        };
        match relayed {
            Ok(moved) => down += moved,
            Err(Relay::Write(_)) => return aborted(daemon, pending, status, (up, down)),
            Err(Relay::Read | Relay::Malformed | Relay::Leaked(_)) => {
                daemon.audit.finish(
                    pending,
                    status,
                    (up, down),
                    sidekey_api::Outcome::UpstreamError,
                );
                return Outcome::Close;
            }
        }
    }
    let mut pending = pending;
    if scrubbed_head || raw.as_ref().is_some_and(|raw| raw.masked > 0) {
        pending.mark_scrubbed();
    }
    daemon
        .audit
        .finish(pending, status, (up, down), sidekey_api::Outcome::Ok);
    if answer.reusable && incoming.is_empty() {
        pool::checkin(&target, upstream);
    }
    recycle(incoming);
    if answer.close {
        Outcome::Close
    } else {
        Outcome::KeepAlive
    }
}

/// The next response head, within [`RESPONSE_HEAD_TIMEOUT`]; the error is
/// `None` when the upstream took too long.
async fn next_head(
    upstream: &mut Stream,
    incoming: &mut Vec<u8>,
    head_only: bool,
    close: bool,
) -> Result<ResponseHead, Option<io::Error>> {
    let read = read_head(upstream, incoming, head_only, close);
    match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, read).await {
        Ok(read) => read.map_err(Some),
        Err(_) => Err(None),
    }
}

fn head_failure(e: Option<io::Error>, target: &Target) -> ApiError {
    match e {
        Some(e) => upstream_failure(&e, target),
        None => response_timeout(target),
    }
}

/// Reads until `incoming` begins with a whole response head.
async fn read_head(
    upstream: &mut Stream,
    incoming: &mut Vec<u8>,
    head_only: bool,
    close: bool,
) -> io::Result<ResponseHead> {
    loop {
        if !incoming.is_empty() {
            match response::parse(incoming, head_only, close) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(Malformed) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the upstream's response head is malformed",
                    ));
                }
            }
        }
        if read_small(upstream, incoming).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Moves one body from `from` to `to`, starting with what `buf` holds, and
/// leaves in `buf` whatever follows it.
async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    buf: &mut Vec<u8>,
    framing: &mut Framing,
) -> Result<u64, Relay>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut moved = 0;
    loop {
        if buf.is_empty() {
            let read = read_body(from, buf).await.map_err(|_| Relay::Read)?;
            if read == 0 {
                return match framing {
                    Framing::UntilClose => Ok(moved),
                    _ => Err(Relay::Read),
                };
            }
            read_arrived(from, buf).map_err(|_| Relay::Read)?;
        }
        let (take, whole) = framing.advance(buf).map_err(|Malformed| Relay::Malformed)?;
        send(to, &buf[..take]).await.map_err(Relay::Write)?;
        buf.drain(..take);
        moved += take as u64;
        if whole {
            return Ok(moved);
        }
    }
}

/// Answers with `error`, completes the record, and closes the connection.
async fn fail<A>(
    daemon: &Proxy,
    agent: &mut A,
    pending: Pending,
    bytes: (u64, u64),
    error: ApiError,
) -> Outcome
where
    A: AsyncWrite + Unpin,
{
    let outcome = sidekey_api::Outcome::of_error(error.code);
    daemon
        .audit
        .finish(pending, Some(error.status.as_u16()), bytes, outcome);
    let _ = send(agent, &error_response(&error)).await;
    Outcome::Close
}

fn aborted(daemon: &Proxy, pending: Pending, status: Option<u16>, bytes: (u64, u64)) -> Outcome {
    daemon
        .audit
        .finish(pending, status, bytes, sidekey_api::Outcome::ClientAborted);
    Outcome::Close
}

fn broken_chunks() -> ApiError {
    ApiError::bad_request(
        "The request body's chunked framing is broken; send a valid chunked body or a Content-Length.",
    )
}

fn encoded_answer(target: &Target) -> ApiError {
    crate::proxy::scrub_body::encoded_answer(&target.host)
}

fn malformed_answer(target: &Target) -> ApiError {
    upstream_failure(
        &io::Error::new(io::ErrorKind::InvalidData, "malformed response body"),
        target,
    )
}
