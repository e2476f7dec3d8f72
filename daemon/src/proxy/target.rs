//! Where a request may go: link-local and cloud-metadata addresses are never
//! targets, whether named directly or reached through DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;

use crate::error::ApiError;
use crate::hosts::{Place, Scheme, normalize_host};

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: &'static str,
    /// Normalized: lowercase, no trailing dot, canonical IP literals.
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
}

impl Target {
    pub fn new(
        scheme: &'static str,
        host: &str,
        port: Option<u16>,
        path_and_query: &str,
    ) -> Target {
        let default_port = if scheme == "https" { 443 } else { 80 };
        Target {
            scheme,
            host: normalize_host(host),
            port: port.unwrap_or(default_port),
            path_and_query: if path_and_query.is_empty() {
                "/".into()
            } else {
                path_and_query.to_string()
            },
        }
    }

    pub fn from_uri(uri: &Uri) -> Result<Target, ApiError> {
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ => {
                return Err(ApiError::bad_request(
                    "Only http:// and https:// targets are supported; fix the target URL.",
                ));
            }
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| {
            ApiError::bad_request(
                "The target URL has no host; send a full URL like https://api.example.com/v1.",
            )
        })?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Ok(Target::new(scheme, host, uri.port_u16(), path))
    }

    /// `host[:port]`, the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let mut authority = String::with_capacity(self.host.len() + 8);
        let ipv6 = self.host.contains(':');
        if ipv6 {
            authority.push('[');
        }
        authority.push_str(&self.host);
        if ipv6 {
            authority.push(']');
        }
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if self.port != default_port {
            authority.push(':');
            authority.push_str(itoa::Buffer::new().format(self.port));
        }
        authority
    }

    /// Where it goes, as credential bindings see it.
    pub fn place(&self) -> Place<'_> {
        Place {
            scheme: if self.scheme == "https" {
                Scheme::Https
            } else {
                Scheme::Http
            },
            host: &self.host,
            port: self.port,
        }
    }

    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("/")
    }

    /// `authority` is [`Target::authority`], which the caller needs too.
    pub fn uri(&self, authority: &str) -> Result<Uri, ApiError> {
        format!("{}://{authority}{}", self.scheme, self.path_and_query)
            .parse()
            .map_err(|_| {
                ApiError::bad_request("The target URL is not valid; check its path and query.")
            })
    }
}

/// A request path as a server that normalizes it would read it: `%2e` is a
/// dot, and dot segments are removed (RFC 3986, 5.2.4). Path-prefix bindings
/// are checked on this, so `/v1/../admin` and `/v1/%2e%2e/admin` are
/// `/admin`, never under `/v1`.
pub struct NormalPath<'a> {
    pub path: std::borrow::Cow<'a, str>,
    /// The raw path holds what servers read differently (`%2f`, `%5c`, `\`,
    /// `;` parameters): under a prefix, no credential is sent with it.
    pub ambiguous: bool,
}

impl NormalPath<'_> {
    pub fn of(raw: &str) -> NormalPath<'_> {
        let raw = raw.split(['?', '#']).next().unwrap_or("/");
        // Most paths hold nothing to decode or remove: they are borrowed, so
        // the proxy's hot path allocates nothing here.
        if raw.starts_with('/') && !raw.contains(['%', '\\', ';']) && !raw.contains("/.") {
            return NormalPath {
                path: std::borrow::Cow::Borrowed(raw),
                ambiguous: false,
            };
        }
        let lowered = raw.to_ascii_lowercase();
        let ambiguous =
            lowered.contains("%2f") || lowered.contains("%5c") || raw.contains(['\\', ';']);
        let decoded = raw.replace("%2e", ".").replace("%2E", ".");
        let mut segments: Vec<&str> = Vec::new();
        let mut parts = decoded.split('/').skip(1).peekable();
        while let Some(segment) = parts.next() {
            let last = parts.peek().is_none();
            match segment {
                "." if last => segments.push(""),
                "." => {}
                ".." => {
                    segments.pop();
                    if last {
                        segments.push("");
                    }
                }
                _ => segments.push(segment),
            }
        }
        NormalPath {
            path: std::borrow::Cow::Owned(format!("/{}", segments.join("/"))),
            ambiguous,
        }
    }
}

/// Names that resolve to cloud metadata services.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

pub fn forbidden_name(host: &str) -> bool {
    METADATA_NAMES.contains(&host) || host.parse::<IpAddr>().is_ok_and(forbidden_ip)
}

pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            // fe80::/10 link-local, and AWS's IPv6 metadata address.
            None => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    // 169.254.0.0/16 holds 169.254.169.254; 100.100.100.200 is Alibaba's metadata service.
    ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_as_a_normalizing_server_reads_them() {
        for (raw, normal, ambiguous) in [
            ("/v1/emails", "/v1/emails", false),
            ("/v1/../admin", "/admin", false),
            ("/v1/%2e%2e/admin", "/admin", false),
            ("/v1/%2E%2e/admin?x=/v1", "/admin", false),
            ("/v1/./../admin", "/admin", false),
            ("/v1/./x/", "/v1/x/", false),
            ("/v1/x/..", "/v1/", false),
            ("/../../etc", "/etc", false),
            ("/v1/..%2fadmin", "/v1/..%2fadmin", true),
            ("/v1/..;/admin", "/v1/..;/admin", true),
            ("/v1/%5c..%5cadmin", "/v1/%5c..%5cadmin", true),
            ("/", "/", false),
            ("/v1/a.b/c", "/v1/a.b/c", false),
            ("/v1/.hidden", "/v1/.hidden", false),
        ] {
            let got = NormalPath::of(raw);
            assert_eq!((&*got.path, got.ambiguous), (normal, ambiguous), "{raw}");
        }
    }

    #[test]
    fn authorities_name_the_port_only_when_it_is_not_the_default() {
        let authority = |scheme, host, port| Target::new(scheme, host, port, "/").authority();
        assert_eq!(authority("https", "API.x.test.", Some(443)), "api.x.test");
        assert_eq!(authority("http", "h", Some(0)), "h:0");
        assert_eq!(authority("http", "h", Some(65535)), "h:65535");
        assert_eq!(authority("https", "h", Some(80)), "h:80");
        assert_eq!(authority("http", "[::1]", Some(8080)), "[::1]:8080");
        assert_eq!(authority("http", "[::1]", None), "[::1]");
    }

    #[test]
    fn metadata_and_link_local_are_refused() {
        for host in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "metadata.google.internal",
        ] {
            assert!(forbidden_name(host), "{host}");
        }
        for host in ["127.0.0.1", "10.0.0.1", "api.openai.com", "::1"] {
            assert!(!forbidden_name(host), "{host}");
        }
    }
}
