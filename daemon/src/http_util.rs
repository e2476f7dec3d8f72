//! Small helpers shared by the control API, the proxy's own endpoints and
//! the sync listener: JSON responses, bounded body reading, bearer keys.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::ApiError;

/// Hop-by-hop fields, dropped from requests and responses alike. A body's
/// framing fields are not here: the forwarder passes a body on in the
/// framing it came in, and hyper frames its own.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// One of the fields every hop drops.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Fields a custom-header credential may never set, and a trailer may never
/// carry: the body's framing, hop-by-hop fields, the target's `Host`, the
/// proxy's own `Proxy-*` fields and h2 pseudo-headers. One of them could
/// reframe a message (a `Content-Length: 5` cut a body and left the rest on
/// a pooled upstream connection) or send it elsewhere.
pub fn is_reserved_field(name: &str) -> bool {
    let is = |reserved: &str| name.eq_ignore_ascii_case(reserved);
    is_hop_by_hop(name)
        || ["host", "content-length", "transfer-encoding", "expect"]
            .into_iter()
            .any(is)
        || name.starts_with(':')
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

pub type Body = Full<Bytes>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy streams both ways.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Turns a small fixed response into the proxy's streaming body type.
pub fn boxed(response: Response<Body>) -> Response<ProxyBody> {
    response.map(|body| body.map_err(|never| match never {}).boxed())
}

pub fn empty_body() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The key from `Authorization: Bearer <key>`: the proxy's own endpoints
/// and the sync listener both take keys this way.
pub fn bearer(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    strip_scheme(value, "bearer").map(str::to_string)
}

/// The credentials of an auth header value, if it uses `scheme` (any case).
pub fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("API types serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads a JSON body of at most `limit` bytes. Parse errors name the field
/// or position, never a value, since a value may be a secret.
pub async fn read_json<T: DeserializeOwned>(body: Incoming, limit: usize) -> Result<T, ApiError> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::payload_too_large(limit));
        }
        Err(_) => {
            return Err(ApiError::bad_request(
                "The request body could not be read; send it again.",
            ));
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "This route needs a JSON body; send one with Content-Type: application/json.",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(describe_json_error(&e)))
}

fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let safe = ["unknown field", "missing field", "unknown variant"];
    if safe.iter().any(|p| text.starts_with(p)) {
        let detail = text.split(" at line").next().unwrap_or(&text);
        return format!(
            "The JSON body does not fit this route: {detail}. Fix the field and send it again."
        );
    }
    format!(
        "The body is not valid JSON for this route (line {}, column {}); check its syntax and field types.",
        e.line(),
        e.column()
    )
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A body fed by a channel: each message is one chunk; it ends when the
/// sender is dropped.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody { rx }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// A request's query as `(name, value)` pairs; a bare name has an empty value.
pub fn query_pairs(uri: &http::Uri) -> impl Iterator<Item = (&str, &str)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}
