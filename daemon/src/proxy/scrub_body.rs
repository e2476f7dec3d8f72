//! The hyper path's bodies and heads under the scrub: responses masked frame
//! by frame, uploads scanned for the secrets of credentials not bound to
//! their host and cut before a whole one leaves. A frame with nothing to
//! mask and no tail to hold goes on as the same `Bytes`, uncopied. Never
//! logs the bytes it matched.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::scrub::Stream;
use crate::error::{ApiError, ErrorCode};
use crate::http_util::{BoxError, ProxyBody};
use crate::registry::LiveCred;

/// Whether a response's body is in a coding the scrub cannot read. sidekey
/// asks for `identity` whenever it injects a secret, so only an upstream that
/// ignores the ask sends one.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    let coded = |value: &HeaderValue, allowed: &[&[u8]]| {
        (value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|coding| !allowed.iter().any(|a| coding.eq_ignore_ascii_case(a)))
    };
    let content = headers.get_all(http::header::CONTENT_ENCODING);
    let transfer = headers.get_all(http::header::TRANSFER_ENCODING);
    content.iter().any(|v| coded(v, &[b"identity"]))
        || transfer
            .iter()
            .any(|v| coded(v, &[b"identity", b"chunked"]))
}

/// The answer when the upstream compressed a body that had to be scrubbed:
/// passing it on unread could hand the agent an echoed secret.
pub fn encoded_answer(host: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamEncoding,
        StatusCode::BAD_GATEWAY,
        format!(
            "{host} sent a compressed answer though sidekey asked for identity; sidekey cannot check a compressed body for the injected secret, so it passed nothing on. Configure the upstream to honour Accept-Encoding: identity."
        ),
    )
}

/// Masks a response's header values that carry the secret; says whether any did.
pub fn mask_headers(cred: &LiveCred, headers: &mut HeaderMap) -> bool {
    let mut masked = false;
    for value in headers.values_mut() {
        if cred.matcher.found_in(value.as_bytes()) {
            let mut bytes = value.as_bytes().to_vec();
            cred.matcher.mask_in(&mut bytes);
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                *value = v;
                masked = true;
            }
        }
    }
    masked
}

/// A response body's scrub: the injected credential's needles.
pub struct Masked {
    cred: Arc<LiveCred>,
    stream: Stream,
    /// Whether a mask was applied, head included, for the audit record.
    pub scrubbed: bool,
}

impl Masked {
    pub fn new(cred: Arc<LiveCred>, head: bool) -> Masked {
        Masked {
            cred,
            stream: Stream::default(),
            scrubbed: head,
        }
    }

    /// What of `data` may go now, masked; `None` when all of it waits.
    pub fn frame(&mut self, data: Bytes, last: bool) -> Option<Bytes> {
        let step = self
            .stream
            .mask(std::slice::from_ref(&self.cred), &data, last);
        if step.before == 0 && step.masks().is_empty() && step.release == data.len() {
            drop(step);
            return Some(data);
        }
        self.scrubbed |= !step.masks().is_empty();
        if step.release == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(step.release);
        step.write_released(&mut out);
        Some(Bytes::from(out))
    }

    pub fn cred(&self) -> &LiveCred {
        &self.cred
    }

    pub fn held(&self) -> usize {
        self.stream.held()
    }

    /// What is still held, at the end of the body.
    pub fn flush(&mut self) -> Option<Bytes> {
        if self.stream.held() == 0 {
            return None;
        }
        self.frame(Bytes::new(), true)
    }
}

/// The error an upload that carried another credential's secret ends with.
#[derive(Debug)]
pub struct Leaked;

impl std::fmt::Display for Leaked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the request body carried a credential's secret toward a host it is not bound to",
        )
    }
}

impl std::error::Error for Leaked {}

/// An upload scanned for the secrets of credentials not bound to its host.
/// On a match it fails, so the upstream request is aborted (hyper never
/// pools a connection whose request body failed), and names the credential
/// in `leaked` for the answer.
pub struct Scanned {
    inner: ProxyBody,
    creds: Vec<Arc<LiveCred>>,
    stream: Stream,
    pub leaked: Arc<OnceLock<String>>,
    /// Trailers, or the end, that wait behind the held bytes.
    after: Option<Option<Frame<Bytes>>>,
}

impl Scanned {
    pub fn new(inner: ProxyBody, creds: Vec<Arc<LiveCred>>) -> Scanned {
        Scanned {
            inner,
            creds,
            stream: Stream::default(),
            leaked: Arc::new(OnceLock::new()),
            after: None,
        }
    }

    fn scan(&mut self, data: Bytes, last: bool) -> Result<Option<Bytes>, BoxError> {
        let step = match self.stream.detect(&self.creds, &data, last) {
            Ok(step) => step,
            Err(hit) => {
                let _ = self.leaked.set(self.creds[hit.set].name.clone());
                return Err(Box::new(Leaked));
            }
        };
        if step.before == 0 && step.release == data.len() {
            drop(step);
            return Ok(Some(data));
        }
        if step.release == 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::copy_from_slice(&step.text()[..step.release])))
    }
}

impl Body for Scanned {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(after) = this.after.take() {
            return Poll::Ready(after.map(Ok));
        }
        loop {
            // The end, or trailers: what is held goes first.
            let after = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match this.scan(data, this.inner.is_end_stream()) {
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    },
                    Err(trailers) => Some(trailers),
                },
                Poll::Ready(None) => None,
                other => return other,
            };
            return match this.scan(Bytes::new(), true) {
                Ok(Some(held)) if !held.is_empty() => {
                    this.after = Some(after);
                    Poll::Ready(Some(Ok(Frame::data(held))))
                }
                Ok(_) => Poll::Ready(after.map(Ok)),
                Err(e) => Poll::Ready(Some(Err(e))),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.after.is_none() && self.stream.held() == 0 && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
