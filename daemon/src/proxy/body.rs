//! Body wrappers that count bytes as they stream, and complete the audit
//! record when the response ends (or is dropped part-way).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::audit::Outcome;
use crate::audit::Pending;
use crate::http_util::{BoxError, ProxyBody};
use crate::proxy::Proxy;
use crate::proxy::scrub_body::{Masked, mask_headers};

/// Counts the bytes an agent uploads.
pub struct Counted {
    inner: ProxyBody,
    count: Arc<AtomicU64>,
}

impl Counted {
    pub fn new(inner: ProxyBody, count: Arc<AtomicU64>) -> Counted {
        Counted { inner, count }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            match frame.data_ref() {
                Some(data) => {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                None => drop_reserved_trailers(frame),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way back to the agent; finishes the audit record.
pub struct Audited {
    inner: ProxyBody,
    down: u64,
    up: Arc<AtomicU64>,
    finish: Option<(Arc<Proxy>, Pending, u16)>,
    /// The response scrub, when a credential was injected into the request.
    scrub: Option<Box<Masked>>,
    /// The trailers (or the end, `None`) that wait behind the bytes the
    /// scrub held.
    after: Option<Option<Frame<Bytes>>>,
    /// The inner body has ended; nothing more comes from it.
    ended: bool,
}

impl Audited {
    pub fn new(
        inner: ProxyBody,
        up: Arc<AtomicU64>,
        daemon: Arc<Proxy>,
        pending: Pending,
        status: u16,
        scrub: Option<Box<Masked>>,
    ) -> Audited {
        let mut audited = Audited {
            inner,
            down: 0,
            up,
            finish: Some((daemon, pending, status)),
            scrub,
            after: None,
            ended: false,
        };
        if audited.inner.is_end_stream() {
            audited.complete(Outcome::Ok);
        }
        audited
    }

    fn complete(&mut self, outcome: Outcome) {
        if let Some((daemon, mut pending, status)) = self.finish.take() {
            if self.scrub.as_ref().is_some_and(|scrub| scrub.scrubbed) {
                pending.mark_scrubbed();
            }
            let bytes = (self.up.load(Ordering::Relaxed), self.down);
            daemon.audit.finish(pending, Some(status), bytes, outcome);
        }
    }
}

/// Drops the fields a trailer may not carry (framing, hop-by-hop, `Host`,
/// `Proxy-*`), whichever way the body goes.
pub fn drop_reserved_trailers(frame: &mut Frame<Bytes>) {
    if let Some(trailers) = frame.trailers_mut() {
        let reserved: Vec<_> = (trailers.keys())
            .filter(|name| crate::http_util::is_reserved_field(name.as_str()))
            .cloned()
            .collect();
        for name in reserved {
            trailers.remove(name);
        }
    }
}

impl Body for Audited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.scrub.is_some() {
            return self.poll_scrubbed(cx);
        }
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                match frame.data_ref() {
                    Some(data) => self.down += data.len() as u64,
                    None => drop_reserved_trailers(frame),
                }
                // hyper stops polling once a body says it has ended.
                if self.inner.is_end_stream() {
                    self.complete(Outcome::Ok);
                }
            }
            Poll::Ready(Some(Err(_))) => self.complete(Outcome::UpstreamError),
            Poll::Ready(None) => self.complete(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.scrub {
            None => self.inner.is_end_stream(),
            Some(scrub) => {
                self.after.is_none()
                    && scrub.held() == 0
                    && (self.ended || self.inner.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Audited {
    /// Frames through the scrub: what it holds goes out before the end or
    /// the trailers, which wait in `after` for the next poll.
    fn poll_scrubbed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(after) = self.after.take() {
            return Poll::Ready(after.map(Ok));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let scrub = self.scrub.as_mut().expect("scrubbed bodies have a scrub");
        loop {
            let after = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let last = self.inner.is_end_stream();
                        let Some(out) = scrub.frame(data, last) else {
                            continue;
                        };
                        self.down += out.len() as u64;
                        if last {
                            self.ended = true;
                            self.complete(Outcome::Ok);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(mut trailers) => {
                        drop_reserved_trailers(&mut trailers);
                        if let Some(fields) = trailers.trailers_mut() {
                            scrub.scrubbed |= mask_headers(scrub.cred(), fields);
                        }
                        Some(trailers)
                    }
                },
                Poll::Ready(None) => None,
                Poll::Ready(Some(Err(e))) => {
                    self.complete(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            };
            // The end, or trailers: what is held goes first.
            self.ended = true;
            let held = scrub.flush();
            if let Some(held) = &held {
                self.down += held.len() as u64;
            }
            self.complete(Outcome::Ok);
            return match held {
                Some(held) => {
                    self.after = Some(after);
                    Poll::Ready(Some(Ok(Frame::data(held))))
                }
                None => Poll::Ready(after.map(Ok)),
            };
        }
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            Outcome::Ok
        } else {
            Outcome::ClientAborted
        };
        self.complete(outcome);
    }
}
