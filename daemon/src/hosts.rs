//! Host patterns that bind a credential to the hosts it may be sent to:
//! exact names, IP literals, and `*.example.com` wildcards one label deep.

use std::net::IpAddr;

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
pub fn normalize_host(host: &str) -> String {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let bracketless = trimmed.trim_start_matches('[').trim_end_matches(']');
    match bracketless.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => trimmed.to_ascii_lowercase(),
    }
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
