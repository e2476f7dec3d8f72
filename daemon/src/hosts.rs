//! Host patterns that bind a credential to the hosts it may be sent to:
//! exact names, IP literals, and `*.example.com` wildcards one label deep.

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
            if !base.contains('.') {
                return Err(format!(
                    "'{text}': a wildcard must sit under a registrable name, like *.github.com"
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
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
