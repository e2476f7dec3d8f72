//! Reads one request head and decides whether the forwarder takes it. It
//! takes the common case: a request it can pass on as it came, with hygiene
//! and the credential applied to the head. Everything else (CONNECT,
//! upgrades, `Expect`, our own endpoints, HTTP/1.0, and every request that
//! is answered with an error) is left to the full proxy, which answers it
//! exactly as it always has.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::net::SocketAddr;

use http::header::HeaderName;

use super::known::{self, KnownKey, Presented};
use crate::audit::Pending;
use crate::keys::Secret;
use crate::proxy::Proxy;
use crate::proxy::policy::{self, Ask, Decision, Entry, Settings};
use crate::proxy::target::Target;
use crate::proxy::wire::framing::Framing;
use crate::proxy::wire::{MAX_FIELDS, MAX_HEADER_BYTES, content_length, is_hop_by_hop, push_field};
use crate::proxy::{authority_matches, is_own_address};
use crate::registry::{LiveCred, Verified};
use std::sync::Arc;

/// Where requests on a connection come from.
pub enum Front {
    /// The forward proxy: absolute-form requests.
    Plain { own: SocketAddr },
    /// An intercepted tunnel to one target, for one agent key.
    Tunnel {
        key: Secret,
        scheme: &'static str,
        host: String,
        port: u16,
    },
}

/// A request the forwarder takes.
pub struct Plan {
    pub target: Target,
    pub record: Pending,
    /// The head to send upstream.
    pub head: Vec<u8>,
    pub body: Framing,
    /// Bytes of the agent's head.
    pub head_len: usize,
    /// A HEAD request, whose response has no body.
    pub head_only: bool,
    /// The agent asked to close after this exchange.
    pub close: bool,
    /// The credential injected, whose secret the response is scrubbed of.
    pub scrub: Option<Arc<LiveCred>>,
}

pub enum Parsed {
    /// The head is not whole yet.
    Partial,
    Take(Plan),
    /// For the full proxy, from this request on.
    Leave,
}

pub fn plan(daemon: &Proxy, front: &Front, known: &mut Option<KnownKey>, buf: &[u8]) -> Parsed {
    // Uninitialized: setting a hundred fields up front costs more than parsing.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEADER_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEADER_BYTES => return Parsed::Partial,
        _ => return Parsed::Leave,
    };
    let (Some(method), Some(request_target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Leave;
    };
    if matches!(method, "CONNECT" | "OPTIONS") {
        return Parsed::Leave;
    }
    let Some(scan) = Scan::of(req.headers) else {
        return Parsed::Leave;
    };
    let Some((target, presented)) = target_and_key(front, request_target, &scan) else {
        return Parsed::Leave;
    };
    let Some(lookup) = known::look_up(daemon, known, presented) else {
        return Parsed::Leave;
    };
    let values = req.headers.iter().map(|field| field.value);
    let ask = Ask {
        method,
        conn_id: &lookup.conn().id,
        conn_name: &lookup.conn().name,
        target: &target,
        entry: Entry::Forward {
            token_cred: lookup.grant_cred(),
        },
        texts: std::iter::once(request_target.as_bytes()).chain(values),
    };
    // A refusal is answered by the full proxy, which asks the same policy.
    let Ok(Decision { cred }) = policy::decide(&*daemon.registry, Settings::of(&daemon.live), ask)
    else {
        return Parsed::Leave;
    };
    // Last, so a request left to the full proxy is admitted only there: one
    // rate token and one use for each request.
    let Ok(Verified { conn, .. }) = daemon.registry.admit(lookup, "proxy") else {
        return Parsed::Leave;
    };
    let authority = target.authority();
    let head = upstream_head(
        method,
        &target,
        &authority,
        cred.as_deref(),
        req.headers,
        &scan,
    );
    let record = daemon.audit.record(&policy::opening(
        (&conn.id, &conn.name),
        cred.as_deref(),
        method,
        &target,
        &authority,
    ));
    Parsed::Take(Plan {
        target,
        record,
        head,
        body: scan.framing(),
        head_len,
        head_only: method == "HEAD",
        close: scan.close,
        scrub: cred,
    })
}

/// What the fields of a request head say about it.
#[derive(Default)]
struct Scan<'a> {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    /// Fields the `Connection` field names, dropped as hop-by-hop.
    named: Vec<&'a str>,
    host: Option<&'a [u8]>,
    proxy_authorization: Option<&'a [u8]>,
}

impl<'a> Scan<'a> {
    /// `None` for a request the forwarder leaves to the full proxy.
    fn of(fields: &[httparse::Header<'a>]) -> Option<Scan<'a>> {
        let mut scan = Scan::default();
        for field in fields {
            let name = field.name;
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
            if is("content-length") {
                let length = content_length(field.value)?;
                if scan.length.is_some_and(|seen| seen != length) {
                    return None;
                }
                scan.length = Some(length);
            } else if is("transfer-encoding") {
                let chunked = field.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                if scan.chunked || !chunked {
                    return None;
                }
                scan.chunked = true;
            } else if is("connection") {
                for token in std::str::from_utf8(field.value).ok()?.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        scan.close = true;
                    } else if token.eq_ignore_ascii_case("upgrade") {
                        return None;
                    } else if !token.is_empty() && !is_hop_by_hop(token) {
                        scan.named.push(token);
                    }
                }
            } else if is("origin") || is("upgrade") || is("expect") {
                return None;
            } else if is("host") {
                scan.host = Some(field.value);
            } else if is("proxy-authorization") {
                // Two keys: the full proxy refuses the request.
                if scan.proxy_authorization.is_some() {
                    return None;
                }
                scan.proxy_authorization = Some(field.value);
            }
        }
        // Two framings: the full proxy refuses the request as smuggling.
        if scan.chunked && scan.length.is_some() {
            return None;
        }
        Some(scan)
    }

    fn framing(&self) -> Framing {
        match (self.chunked, self.length) {
            (true, _) => Framing::chunked(),
            (false, Some(length)) if length > 0 => Framing::Length(length),
            _ => Framing::Empty,
        }
    }

    fn is_hop_by_hop(&self, name: &str) -> bool {
        is_hop_by_hop(name)
            || self
                .named
                .iter()
                .any(|named| name.eq_ignore_ascii_case(named))
    }
}

/// The request's target, and the key that must verify for it.
fn target_and_key<'a>(
    front: &'a Front,
    request_target: &str,
    scan: &Scan<'a>,
) -> Option<(Target, Presented<'a>)> {
    match front {
        Front::Plain { own } => {
            let (host, port, path) = split_absolute(request_target)?;
            let target = Target::new("http", host, port, path);
            if is_own_address(&target.host, port, *own) {
                return None;
            }
            Some((target, Presented::Header(scan.proxy_authorization?)))
        }
        Front::Tunnel {
            key,
            scheme,
            host,
            port,
        } => {
            if !request_target.starts_with('/') {
                return None;
            }
            let claimed = std::str::from_utf8(scan.host?).ok()?;
            if !authority_matches(claimed, host, *port, scheme) {
                return None;
            }
            Some((
                Target::new(scheme, host, Some(*port), request_target),
                Presented::Tunnel(key),
            ))
        }
    }
}

/// `http://host[:port]/path` split without building a `Uri`. `None` for
/// whatever the full proxy should judge: userinfo, a bad port, no host, a
/// query with no path.
fn split_absolute(request_target: &str) -> Option<(&str, Option<u16>, &str)> {
    let rest = request_target.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') || !(path.is_empty() || path.starts_with('/')) {
        return None;
    }
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => (
            &authority[..colon],
            Some(authority[colon + 1..].parse().ok()?),
        ),
        _ => (authority, None),
    };
    (!host.is_empty()).then_some((host, port, path))
}

/// The head sent upstream: origin-form, the real target's `Host`, no
/// hop-by-hop fields, and the credential in place of whatever the agent sent
/// in its slot.
fn upstream_head(
    method: &str,
    target: &Target,
    authority: &str,
    cred: Option<&LiveCred>,
    fields: &[httparse::Header],
    scan: &Scan,
) -> Vec<u8> {
    let injected: &[(HeaderName, http::HeaderValue)] = cred.map_or(&[], |c| &c.fields);
    let query_cred = cred.filter(|c| c.cred_type == sidekey_api::CredType::QueryParam);
    let path = match query_cred {
        Some(c) => Cow::Owned(crate::inject::with_query(
            &target.path_and_query,
            c.secret.expose(),
        )),
        None => Cow::Borrowed(target.path_and_query.as_str()),
    };
    let mut head = super::io::buffer(512);
    for part in [method, " ", &path, " HTTP/1.1\r\nHost: ", authority, "\r\n"] {
        head.extend_from_slice(part.as_bytes());
    }
    for field in fields {
        let replaced = injected
            .iter()
            .any(|(name, _)| field.name.eq_ignore_ascii_case(name.as_str()));
        // A compressed response would hide an echoed secret from the scrub.
        let encoding = cred.is_some() && field.name.eq_ignore_ascii_case("accept-encoding");
        if replaced
            || encoding
            || field.name.eq_ignore_ascii_case("host")
            || scan.is_hop_by_hop(field.name)
        {
            continue;
        }
        push_field(&mut head, field.name.as_bytes(), field.value);
    }
    for (name, value) in injected {
        push_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if cred.is_some() {
        push_field(&mut head, b"Accept-Encoding", b"identity");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_split_into_host_port_and_path() {
        assert_eq!(
            split_absolute("http://api.x.test:8080/v1?q=1"),
            Some(("api.x.test", Some(8080), "/v1?q=1"))
        );
        assert_eq!(
            split_absolute("http://[::1]:81/"),
            Some(("[::1]", Some(81), "/"))
        );
        assert_eq!(split_absolute("http://[::1]"), Some(("[::1]", None, "")));
        assert_eq!(split_absolute("http://h"), Some(("h", None, "")));
        for left in [
            "https://h/",
            "http://user:pw@h/",
            "http://h:99999/",
            "http://h?q",
            "http:///path",
            "/origin",
        ] {
            assert_eq!(split_absolute(left), None, "{left}");
        }
    }
}
