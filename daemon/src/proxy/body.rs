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
use crate::proxy::scrub_body::Masked;

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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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
    /// The end of the body, behind the bytes the scrub held.
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
            ended: false,
        };
        if audited.inner.is_end_stream() {
            audited.complete(Outcome::Ok);
        }
        audited
    }

    fn complete(&mut self, outcome: Outcome) {
        if let Some((daemon, pending, status)) = self.finish.take() {
            if let Some(scrub) = &self.scrub {
                scrub.warn_if_scrubbed();
            }
            let bytes = (self.up.load(Ordering::Relaxed), self.down);
            daemon.audit.finish(pending, Some(status), bytes, outcome);
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.down += data.len() as u64;
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Audited {
    /// Frames through the scrub: what it holds goes out before the end or
    /// the trailers.
    fn poll_scrubbed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let scrub = self.scrub.as_mut().expect("scrubbed bodies have a scrub");
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            let frame = match polled {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    if let Some(held) = scrub.flush() {
                        self.ended = true;
                        self.down += held.len() as u64;
                        self.complete(Outcome::Ok);
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    self.complete(Outcome::Ok);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.complete(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            };
            let last = self.inner.is_end_stream();
            let out = match frame.into_data() {
                Ok(data) => match scrub.frame(data, last) {
                    Some(out) => Frame::data(out),
                    None => continue,
                },
                // Trailers end the body; a secret cannot straddle them.
                Err(trailers) => {
                    if let Some(held) = scrub.flush() {
                        self.down += held.len() as u64;
                    }
                    trailers
                }
            };
            if let Some(data) = out.data_ref() {
                self.down += data.len() as u64;
            }
            if last {
                self.complete(Outcome::Ok);
            }
            return Poll::Ready(Some(Ok(out)));
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
