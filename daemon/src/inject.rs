//! The five credential types: how each secret must look, and how it is
//! written into a request. Error messages describe the shape, never the value.

use sidekey_api::CredType;

use crate::keys::Secret;

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

    #[test]
    fn errors_never_echo_the_secret() {
        let err = validate_secret(CredType::BasicAuth, &Secret::new("hunter2hunter2".into()))
            .unwrap_err();
        assert!(!err.contains("hunter2"));
    }
}
