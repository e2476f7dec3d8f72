//! What a name, a host list and a path prefix must look like.

use crate::error::ApiError;
use crate::hosts::Binding;

pub(super) const MAX_NAME_LEN: usize = 64;

pub(super) fn validate_name(name: &str, what: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(ApiError::bad_request(format!(
            "The {what} name '{name}' is not valid; use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit."
        )));
    }
    if name.starts_with("conn_") {
        return Err(ApiError::bad_request(format!(
            "The {what} name '{name}' starts with 'conn_', which is reserved for ids; pick another name."
        )));
    }
    Ok(())
}

pub(super) fn validate_hosts(hosts: &[String]) -> Result<Vec<String>, ApiError> {
    if hosts.is_empty() {
        return Err(ApiError::bad_request(
            "A credential needs at least one host to be bound to, like --host api.resend.com.",
        ));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let binding = Binding::parse(host)
            .map_err(|why| ApiError::bad_request(format!("Invalid binding {why}.")))?;
        let text = binding.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

pub(super) fn validate_path_prefix(prefix: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(prefix) = prefix else {
        return Ok(None);
    };
    let ok = prefix.starts_with('/')
        && !prefix.split('/').any(|seg| seg == ".." || seg == ".")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%');
    if !ok {
        return Err(ApiError::bad_request(format!(
            "The path prefix '{prefix}' is not valid; give an absolute path like /v1, without '..', '?', '#' or '%'."
        )));
    }
    Ok(Some(prefix.to_string()))
}
