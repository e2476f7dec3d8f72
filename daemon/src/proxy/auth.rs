//! Finds the access key an agent presented: `Authorization: Bearer`, or
//! `Proxy-Authorization` as Bearer or Basic (the key is the password).

use base64::Engine;
use http::{HeaderMap, header};

pub use crate::http_util::bearer;
use crate::http_util::strip_scheme;

/// The key from `Proxy-Authorization`, which every client sends for
/// `HTTP_PROXY=http://agent:<key>@host:port`.
pub fn proxy_key(headers: &HeaderMap) -> Option<String> {
    proxy_key_from(headers.get(header::PROXY_AUTHORIZATION)?.as_bytes())
}

/// The key from a raw `Proxy-Authorization` value.
pub fn proxy_key_from(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    if let Some(token) = strip_scheme(value, "bearer") {
        return Some(token.to_string());
    }
    let encoded = strip_scheme(value, "basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_come_from_bearer_or_basic() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk_live_x"),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("sk_live_x"));
        // base64("agent:sk_live_y")
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic YWdlbnQ6c2tfbGl2ZV95"),
        );
        assert_eq!(proxy_key(&headers).as_deref(), Some("sk_live_y"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("bearer sk_live_z"),
        );
        assert_eq!(proxy_key(&headers).as_deref(), Some("sk_live_z"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic !!!"),
        );
        assert_eq!(proxy_key(&headers), None);
    }
}
