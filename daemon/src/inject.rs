//! The five credential types: how each secret must look, and how it is
//! written into a request. Injection overwrites whatever the agent sent in
//! that slot. Error messages describe the shape, never the value.

use base64::Engine;
use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use sidekey_api::CredType;

use crate::keys::Secret;

/// Writes the credential into the request's headers or URL.
pub fn apply(cred_type: CredType, secret: &Secret, headers: &mut HeaderMap, uri: &mut Uri) {
    for (name, value) in header_fields(cred_type, secret) {
        headers.insert(name, value);
    }
    if cred_type == CredType::QueryParam {
        *uri = with_query_params(uri, secret.expose());
    }
}

/// The header fields a credential sets; none for a query parameter.
pub fn header_fields(cred_type: CredType, secret: &Secret) -> Vec<(HeaderName, HeaderValue)> {
    let value = secret.expose();
    let field = |name: HeaderName, text: &str| {
        let mut v = HeaderValue::from_str(text).ok()?;
        v.set_sensitive(true);
        Some((name, v))
    };
    match cred_type {
        CredType::ApiKey => field(AUTHORIZATION, &format!("Bearer {value}"))
            .into_iter()
            .collect(),
        CredType::BasicAuth => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            field(AUTHORIZATION, &format!("Basic {encoded}"))
                .into_iter()
                .collect()
        }
        CredType::Cookie => field(COOKIE, value).into_iter().collect(),
        // Reserved names are skipped too, for records made before they were
        // refused at add time.
        CredType::CustomHeader => header_lines(value)
            .filter(|(name, _)| !crate::http_util::is_reserved_field(name))
            .filter_map(|(name, v)| field(HeaderName::from_bytes(name.as_bytes()).ok()?, v))
            .collect(),
        CredType::QueryParam => Vec::new(),
    }
}

/// The parts of a secret that must never travel to a host it is not bound to.
pub fn needles(cred_type: CredType, secret: &Secret) -> Vec<String> {
    let value = secret.expose();
    let mut out: Vec<String> = match cred_type {
        CredType::ApiKey => vec![value.to_string()],
        CredType::BasicAuth => {
            let password = value.split_once(':').map(|(_, p)| p).unwrap_or(value);
            vec![
                password.to_string(),
                base64::engine::general_purpose::STANDARD.encode(value),
            ]
        }
        CredType::Cookie => value
            .split(';')
            .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.trim().to_string()))
            .collect(),
        CredType::CustomHeader => header_lines(value).map(|(_, v)| v.to_string()).collect(),
        CredType::QueryParam => value
            .split('&')
            .filter_map(|p| p.split_once('=').map(|(_, v)| v.to_string()))
            .collect(),
    };
    // Short values would match innocent text; they carry little secret anyway.
    out.retain(|n| n.len() >= 8);
    let mut all: Vec<String> = Vec::new();
    for part in out {
        for needle in std::iter::once(part.clone()).chain(encodings(part.as_bytes())) {
            if needle.len() >= 8 && !all.iter().any(|n| n.eq_ignore_ascii_case(&needle)) {
                all.push(needle);
            }
        }
    }
    all
}

/// The forms a value takes when an agent (or a prompt-injected one) encodes
/// it to slip it past an exact match: percent-encoding, base64 (standard and
/// URL-safe, at each of the 3 alignments it can have inside a longer base64
/// text) and hex. Matching is ASCII case-insensitive, which covers upper-case
/// hex and `%2f` against `%2F`.
fn encodings(value: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = vec![percent_encoded(value), hex::encode(value)];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for lead in 0..3usize {
            let mut shifted = vec![0u8; lead];
            shifted.extend_from_slice(value);
            let text = engine.encode(&shifted);
            // The first characters mix in the bytes before the value (none,
            // 2 or 3 of them), and the last one the bytes after it.
            let skip = [0, 2, 3][lead];
            let cut = usize::from(shifted.len() % 3 != 0);
            if let Some(core) = text.get(skip..text.len().saturating_sub(cut)) {
                out.push(core.to_string());
            }
        }
    }
    out
}

/// Every byte outside RFC 3986's unreserved set as `%XX`.
fn percent_encoded(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header_lines(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, v)| (name.trim(), v.trim()))
        .filter(|(name, _)| !name.is_empty())
}

fn with_query_params(uri: &Uri, params: &str) -> Uri {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = with_query(path_and_query, params).parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// `path_and_query` with the credential's parameters: any same-named ones
/// the agent sent are replaced, then ours are appended.
pub fn with_query(path_and_query: &str, params: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let names: Vec<&str> = params
        .split('&')
        .filter_map(|p| p.split_once('=').map(|(n, _)| n))
        .collect();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !names.contains(&p.split('=').next().unwrap_or("")))
        .collect();
    let mut query = kept.join("&");
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(params);
    format!("{path}?{query}")
}

/// Checks that a secret has the shape its type needs.
pub fn validate_secret(cred_type: CredType, secret: &Secret) -> Result<(), String> {
    let value = secret.expose();
    if value.is_empty() {
        return Err("The secret is empty; pipe it on stdin or type it at the prompt.".into());
    }
    if value.len() > 16 * 1024 {
        return Err("The secret is over 16 KiB; a credential must fit in a request header.".into());
    }
    let printable_line =
        |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    match cred_type {
        CredType::ApiKey => {
            if !printable_line(value) || value.contains(' ') {
                return Err(
                    "An api-key secret must be one line of printable characters without spaces."
                        .into(),
                );
            }
        }
        CredType::BasicAuth => {
            if !printable_line(value) || !value.contains(':') {
                return Err("A basic-auth secret must be 'user:password' on one line.".into());
            }
        }
        CredType::Cookie => {
            let ok = printable_line(value)
                && value
                    .split(';')
                    .map(str::trim)
                    .all(|pair| pair.split_once('=').is_some_and(|(name, _)| is_token(name)));
            if !ok {
                return Err(
                    "A cookie secret must be 'name=value' pairs joined by '; ', like 'a=b; c=d'."
                        .into(),
                );
            }
        }
        CredType::CustomHeader => {
            let ok = value.lines().filter(|l| !l.trim().is_empty()).all(|line| {
                line.split_once(':')
                    .is_some_and(|(name, v)| is_token(name.trim()) && printable_line(v.trim()))
            }) && value.lines().any(|l| !l.trim().is_empty());
            if !ok {
                return Err(
                    "A custom-header secret must be one or more 'Name: value' lines.".into(),
                );
            }
            if let Some((name, _)) =
                header_lines(value).find(|(name, _)| crate::http_util::is_reserved_field(name))
            {
                return Err(format!(
                    "A custom-header credential cannot set {name}: framing (Content-Length, Transfer-Encoding, Expect), hop-by-hop (Connection, Keep-Alive, TE, Trailer, Upgrade), Host, Proxy-* and pseudo-header fields are the proxy's own. Any other header name is allowed, like X-Api-Key or Authorization."
                ));
            }
        }
        CredType::QueryParam => {
            let ok = value.split('&').all(|pair| {
                pair.split_once('=').is_some_and(|(name, v)| {
                    !name.is_empty()
                        && !v.is_empty()
                        && printable_line(pair)
                        && !pair.contains([' ', '#'])
                })
            });
            if !ok {
                return Err(
                    "A query-param secret must be 'name=value' (several joined by '&').".into(),
                );
            }
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110): what header and cookie names may contain.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(t: CredType, v: &str) -> bool {
        validate_secret(t, &Secret::new(v.into())).is_ok()
    }

    #[test]
    fn shapes_are_checked_per_type() {
        assert!(check(CredType::ApiKey, "sk-abc123"));
        assert!(!check(CredType::ApiKey, "two words"));
        assert!(!check(CredType::ApiKey, "line\nbreak"));
        assert!(check(CredType::BasicAuth, "user:pa:ss"));
        assert!(!check(CredType::BasicAuth, "nocolon"));
        assert!(check(CredType::Cookie, "a=b; c=d"));
        assert!(!check(CredType::Cookie, "a b"));
        assert!(check(CredType::CustomHeader, "X-Api-Key: abc\nX-Team: 7\n"));
        assert!(!check(CredType::CustomHeader, "no colon here"));
        assert!(check(CredType::QueryParam, "api_key=abc&sig=def"));
        assert!(!check(CredType::QueryParam, "api_key"));
        assert!(!check(CredType::ApiKey, ""));
    }

    fn injected(
        t: CredType,
        secret: &str,
        headers: &[(&str, &str)],
        uri: &str,
    ) -> (HeaderMap, Uri) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut uri: Uri = uri.parse().unwrap();
        apply(t, &Secret::new(secret.into()), &mut map, &mut uri);
        (map, uri)
    }

    #[test]
    fn each_type_injects_and_overwrites_what_the_agent_sent() {
        let (h, _) = injected(
            CredType::ApiKey,
            "sk-real",
            &[("authorization", "Bearer placeholder")],
            "https://a/x",
        );
        assert_eq!(h["authorization"], "Bearer sk-real");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        let (h, _) = injected(CredType::BasicAuth, "u:p", &[], "https://a/x");
        assert_eq!(h["authorization"], "Basic dTpw");
        let (h, _) = injected(
            CredType::Cookie,
            "a=b; c=d",
            &[("cookie", "mine=1")],
            "https://a/x",
        );
        assert_eq!(h["cookie"], "a=b; c=d");
        let (h, _) = injected(
            CredType::CustomHeader,
            "X-Api-Key: k1\nX-Team: t",
            &[("x-api-key", "fake")],
            "https://a/x",
        );
        assert_eq!(h["x-api-key"], "k1");
        assert_eq!(h["x-team"], "t");
        let (_, u) = injected(
            CredType::QueryParam,
            "key=real",
            &[],
            "https://a/x?key=fake&q=1",
        );
        assert_eq!(u.to_string(), "https://a/x?q=1&key=real");
    }

    #[test]
    fn needles_cover_the_secret_parts() {
        let n = needles(
            CredType::BasicAuth,
            &Secret::new("alice:longpassword".into()),
        );
        assert!(n.contains(&"longpassword".to_string()));
        let cookie = needles(
            CredType::Cookie,
            &Secret::new("s=shortv; t=averylongvalue".into()),
        );
        assert_eq!(cookie[0], "averylongvalue");
        assert!(!cookie.iter().any(|n| n.contains("shortv")));
    }

    #[test]
    fn needles_cover_the_common_encodings() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let secret = "sk/live+key=with?odd&bytes~1";
        let n = needles(CredType::ApiKey, &Secret::new(secret.into()));
        let found = |text: &str| {
            n.iter().any(|needle| {
                text.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
            })
        };
        assert!(found(secret));
        assert!(found("q=sk%2Flive%2Bkey%3Dwith%3Fodd%26bytes~1&x"));
        assert!(found(&hex::encode_upper(secret)));
        for lead in ["", "a", "ab", "abc"] {
            for trail in ["", "z", "zz"] {
                let wrapped = format!("{lead}{secret}{trail}");
                assert!(found(&STANDARD.encode(&wrapped)), "{lead:?} {trail:?}");
                assert!(found(&URL_SAFE.encode(&wrapped)), "{lead:?} {trail:?}");
            }
        }
        assert!(!found("sk/live+key"), "a part of the secret is not it");
        let basic = needles(
            CredType::BasicAuth,
            &Secret::new("alice:longpassword".into()),
        );
        let wrapped = STANDARD.encode("Basic stuff alice:longpassword");
        assert!(basic.iter().any(|n| wrapped.contains(n.as_str())));
        assert!(basic.contains(&STANDARD.encode("alice:longpassword")));
        let query = needles(CredType::QueryParam, &Secret::new("key=abc/def+ghi".into()));
        assert!(query.contains(&"abc%2Fdef%2Bghi".to_string()));
        assert!(
            needles(CredType::ApiKey, &Secret::new("short".into())).is_empty(),
            "tiny values have no needles, nor their encodings"
        );
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let err = validate_secret(CredType::BasicAuth, &Secret::new("hunter2hunter2".into()))
            .unwrap_err();
        assert!(!err.contains("hunter2"));
    }
}
