//! The closed sets that cross the API: error codes and audit outcomes. Each
//! is an enum, so the compiler finds every place that makes or reads one.

use serde::{Deserialize, Serialize};

/// The `error` field of every error body (DESIGN.md's table, plus the few
/// protocol-level answers the proxy and the sync server give).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    TokenMissing,
    InvalidAccessKey,
    KeyExpired,
    ConnectionDisabled,
    PermissionDenied,
    NotFound,
    Conflict,
    RateLimited,
    BadRequest,
    PayloadTooLarge,
    HeaderTooLarge,
    MethodNotAllowed,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamTls,
    /// The upstream compressed an answer that had to be scrubbed.
    UpstreamEncoding,
    AuditUnavailable,
    ShareHalted,
    Internal,
    /// A code this build does not know, from a newer daemon.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "token_missing",
            ErrorCode::InvalidAccessKey => "invalid_access_key",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::ConnectionDisabled => "connection_disabled",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamTls => "upstream_tls",
            ErrorCode::UpstreamEncoding => "upstream_encoding",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::ShareHalted => "share_halted",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a proxied request ended, as its audit record says.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written before the request goes upstream; replaced when it ends.
    Started,
    Ok,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTls,
    /// The agent went away before the response was whole.
    ClientAborted,
    /// The request was malformed on the wire.
    BadRequest,
    #[serde(other)]
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamTls => "upstream_tls",
            Outcome::ClientAborted => "client_aborted",
            Outcome::BadRequest => "bad_request",
            Outcome::Unknown => "unknown",
        }
    }

    /// The outcome of a request answered with this error.
    pub fn of_error(code: ErrorCode) -> Outcome {
        match code {
            ErrorCode::UpstreamTimeout => Outcome::UpstreamTimeout,
            ErrorCode::UpstreamTls => Outcome::UpstreamTls,
            ErrorCode::BadRequest => Outcome::BadRequest,
            _ => Outcome::UpstreamError,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_forms() {
        for code in [
            ErrorCode::InvalidAccessKey,
            ErrorCode::UpstreamTls,
            ErrorCode::ShareHalted,
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
        for outcome in [
            Outcome::Started,
            Outcome::UpstreamError,
            Outcome::ClientAborted,
        ] {
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{outcome}\"")
            );
        }
    }

    #[test]
    fn unknown_names_from_a_newer_daemon_still_parse() {
        let code: ErrorCode = serde_json::from_str("\"brand_new\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
        let outcome: Outcome = serde_json::from_str("\"brand_new\"").unwrap();
        assert_eq!(outcome, Outcome::Unknown);
    }
}
