//! Bindings: where a credential may be sent. A binding names a scheme, a
//! host pattern (an exact name, an IP literal, or a `*.example.com` wildcard
//! one label deep) and a port. A bare `api.example.com` is https on 443
//! only: cleartext needs `http://`, another port must be named, and `:*`
//! allows any port (local development).

use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.github.com` is stored as `github.com` and matches `api.github.com`,
    /// never `github.com` itself nor `a.b.github.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lowered = text.trim().to_ascii_lowercase();
        let host = lowered.strip_suffix('.').unwrap_or(&lowered);
        let bracketless = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bracketless.parse::<IpAddr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        if let Some(base) = host.strip_prefix("*.") {
            validate_name(base).map_err(|why| format!("'{text}': {why}"))?;
            // Under a public suffix (`*.github.io`, `*.herokuapp.com`), every
            // tenant would get the secret.
            if !base.contains('.') || psl::suffix_str(base) == Some(base) {
                return Err(format!(
                    "'{text}': {base} is a public suffix, whose names belong to anyone; a wildcard must sit under a registrable name, like *.github.com"
                ));
            }
            return Ok(HostPattern::Wildcard(base.to_string()));
        }
        if host.contains('*') {
            return Err(format!(
                "'{text}': '*' may only be the whole first label, one level deep, like *.github.com"
            ));
        }
        validate_name(host).map_err(|why| format!("'{text}': {why}"))?;
        Ok(HostPattern::Exact(host.to_string()))
    }

    /// `host` must already be normalized with [`normalize_host`].
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(base) => host
                .strip_suffix(base.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn of(name: &str) -> Option<Scheme> {
        match name {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where a request goes, as bindings see it. `host` is normalized.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub scheme: Scheme,
    pub host: &'a str,
    pub port: u16,
}

/// One `[scheme://]host[:port]` a credential is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub scheme: Scheme,
    pub host: HostPattern,
    /// `None` for `:*`, any port.
    pub port: Option<u16>,
}

impl Binding {
    pub fn parse(text: &str) -> Result<Binding, String> {
        let trimmed = text.trim();
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((name, rest)) => (
                Scheme::of(&name.to_ascii_lowercase()).ok_or_else(|| {
                    format!("'{text}': a binding's scheme is http:// or https://")
                })?,
                rest,
            ),
            None => (Scheme::Https, trimmed),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "'{text}': a binding is [scheme://]host[:port]; bind a path with --path-prefix"
            ));
        }
        let (host, port) = split_port(rest);
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(digits) => Some(
                digits
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("'{text}': the port must be 1 to 65535, or *"))?,
            ),
        };
        let host = HostPattern::parse(host).map_err(|why| why.replacen(host, text, 1))?;
        Ok(Binding { scheme, host, port })
    }

    pub fn matches(&self, place: &Place) -> bool {
        self.scheme == place.scheme && self.matches_host_port(place.host, place.port)
    }

    /// Either scheme: what a `CONNECT host:port` may turn out to carry.
    pub fn matches_host_port(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.host.matches(host)
    }

    /// How specific a matching binding is; the most specific one wins. An
    /// exact host beats a wildcard, and a named port beats `:*`.
    pub fn specificity(&self) -> (bool, bool) {
        (
            matches!(self.host, HostPattern::Exact(_)),
            self.port.is_some(),
        )
    }
}

/// `host[:port]`, brackets kept on an IPv6 literal.
fn split_port(rest: &str) -> (&str, Option<&str>) {
    let after_host = match rest.strip_prefix('[') {
        Some(inner) => inner.find(']').map_or(rest.len(), |end| end + 2),
        None => rest.find(':').unwrap_or(rest.len()),
    };
    match rest[after_host..].strip_prefix(':') {
        Some(port) => (&rest[..after_host], Some(port)),
        None => (rest, None),
    }
}

impl std::fmt::Display for Binding {
    /// The canonical form: the scheme only when it is not https, the port
    /// only when it is not the scheme's default.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scheme == Scheme::Http {
            f.write_str("http://")?;
        }
        match &self.host {
            HostPattern::Exact(name) if name.contains(':') => write!(f, "[{name}]")?,
            host => write!(f, "{host}")?,
        }
        match self.port {
            None => f.write_str(":*"),
            Some(port) if port == self.scheme.default_port() => Ok(()),
            Some(port) => write!(f, ":{port}"),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(base) => write!(f, "*.{base}"),
        }
    }
}

/// Lowercases, drops one trailing dot and IPv6 brackets, and canonicalizes IP
/// literals, so that `API.Example.com.` and `api.example.com` are one host.
/// IPv4 is read as the WHATWG URL standard reads it (and as the C
/// resolver's `inet_aton` does): `2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376` and `169.254.43518` are all `169.254.169.254`, so
/// no spelling of an address slips past the checks made on it.
pub fn normalize_host(host: &str) -> String {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let bracketless = trimmed.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bracketless.parse::<IpAddr>() {
        return ip.to_string();
    }
    match whatwg_ipv4(trimmed) {
        Some(ip) => ip.to_string(),
        None => trimmed.to_ascii_lowercase(),
    }
}

/// The WHATWG URL standard's IPv4 parser: one to four dot-separated parts,
/// each decimal, octal (a leading `0`) or hex (`0x`); the last part fills
/// the bytes the others leave. `None` for a host that is not an address.
fn whatwg_ipv4(host: &str) -> Option<Ipv4Addr> {
    // Only a host whose last label is a number can be an address: names
    // leave here, before any parsing.
    let last_label = host.rsplit('.').next()?;
    if !last_label.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut numbers = [0u64; 4];
    let mut count = 0;
    for part in host.split('.') {
        *numbers.get_mut(count)? = ipv4_number(part)?;
        count += 1;
    }
    let (last, init) = numbers[..count].split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 256u64.pow(5 - count as u32) {
        return None;
    }
    let mut address = *last;
    for (i, &n) in init.iter().enumerate() {
        address += n << (8 * (3 - i));
    }
    u32::try_from(address).ok().map(Ipv4Addr::from)
}

fn ipv4_number(part: &str) -> Option<u64> {
    let (digits, radix) = match part.get(..2) {
        Some("0x" | "0X") => (&part[2..], 16),
        _ if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
        _ => (part, 10),
    };
    if part.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must be 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label of a host name must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a host name may hold only letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a host label may not start or end with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, host: &str) -> bool {
        HostPattern::parse(pattern)
            .unwrap()
            .matches(&normalize_host(host))
    }

    #[test]
    fn exact_names_match_case_and_trailing_dot_insensitively() {
        assert!(matches("api.resend.com", "API.Resend.com."));
        assert!(!matches("api.resend.com", "api.resend.com.evil.com"));
        assert!(!matches("api.resend.com", "xapi.resend.com"));
    }

    #[test]
    fn wildcards_go_one_label_deep() {
        assert!(matches("*.github.com", "api.github.com"));
        assert!(!matches("*.github.com", "github.com"));
        assert!(!matches("*.github.com", "a.b.github.com"));
        assert!(!matches("*.github.com", "evilgithub.com"));
    }

    #[test]
    fn ip_literals_are_canonical() {
        assert!(matches("127.0.0.1", "127.0.0.1"));
        assert!(matches("[::1]", "::1"));
        assert!(matches("0:0::1", "[::1]"));
    }

    #[test]
    fn every_spelling_of_an_ipv4_address_is_that_address() {
        for spelling in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
            "0xa9.0xfe.0xa9.0xfe",
            "169.254.169.254.",
        ] {
            assert_eq!(normalize_host(spelling), "169.254.169.254", "{spelling}");
        }
        assert_eq!(normalize_host("0"), "0.0.0.0");
        assert_eq!(normalize_host("0x"), "0.0.0.0");
        assert_eq!(normalize_host("127.1"), "127.0.0.1");
        for name in [
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "08.1.1.1",
            "0xg.1.1.1",
            "4294967296",
            "api.example.com",
            "1.2.3.com",
            "a1",
        ] {
            assert!(whatwg_ipv4(name).is_none(), "{name}");
        }
    }

    fn place(scheme: Scheme, host: &str, port: u16) -> Place<'_> {
        Place { scheme, host, port }
    }

    #[test]
    fn bindings_name_scheme_host_and_port() {
        use Scheme::{Http, Https};
        let cases: &[(&str, Scheme, &str, u16, bool)] = &[
            ("api.example.com", Https, "api.example.com", 443, true),
            ("api.example.com", Http, "api.example.com", 80, false),
            ("api.example.com", Https, "api.example.com", 8443, false),
            ("api.example.com", Http, "api.example.com", 8080, false),
            ("http://api.example.com", Http, "api.example.com", 80, true),
            (
                "http://api.example.com",
                Https,
                "api.example.com",
                443,
                false,
            ),
            (
                "https://api.example.com:8443",
                Https,
                "api.example.com",
                8443,
                true,
            ),
            ("api.example.com:8443", Https, "api.example.com", 443, false),
            ("http://localhost:*", Http, "localhost", 5173, true),
            ("http://localhost:*", Https, "localhost", 5173, false),
            ("127.0.0.1:*", Https, "127.0.0.1", 9000, true),
            ("http://[::1]:8080", Http, "::1", 8080, true),
            ("*.github.com", Https, "api.github.com", 443, true),
            (
                "HTTPS://API.Example.com:443",
                Https,
                "api.example.com",
                443,
                true,
            ),
        ];
        for (text, scheme, host, port, want) in cases {
            let binding = Binding::parse(text).unwrap();
            assert_eq!(
                binding.matches(&place(*scheme, host, *port)),
                *want,
                "{text} ~ {scheme:?}://{host}:{port}"
            );
        }
    }

    #[test]
    fn bindings_print_in_their_canonical_form() {
        for (text, canonical) in [
            ("api.example.com", "api.example.com"),
            ("https://api.example.com:443", "api.example.com"),
            ("http://api.example.com:80", "http://api.example.com"),
            ("http://h:*", "http://h:*"),
            ("h:8443", "h:8443"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("*.Github.com", "*.github.com"),
        ] {
            assert_eq!(
                Binding::parse(text).unwrap().to_string(),
                canonical,
                "{text}"
            );
        }
        for bad in [
            "ftp://h",
            "h:0",
            "h:99999",
            "h:x",
            "https://h/v1",
            "user@h",
            "http://",
            "h:",
        ] {
            assert!(Binding::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn invalid_patterns_say_why() {
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "**.a.com",
            "a b.com",
            "-a.com",
            "a..com",
            "*.*.a.com",
            "*.github.io",
            "*.herokuapp.com",
            "*.co.uk",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
