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
}

impl Audited {
    pub fn new(
        inner: ProxyBody,
        up: Arc<AtomicU64>,
        daemon: Arc<Proxy>,
        pending: Pending,
        status: u16,
    ) -> Audited {
        let mut audited = Audited {
            inner,
            down: 0,
            up,
            finish: Some((daemon, pending, status)),
        };
        if audited.inner.is_end_stream() {
            audited.complete(Outcome::Ok);
        }
        audited
    }

    fn complete(&mut self, outcome: Outcome) {
        if let Some((daemon, pending, status)) = self.finish.take() {
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
