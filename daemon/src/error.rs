//! The `{error, message, status}` shape every route answers with, and its
//! codes. A message says what to do next and never carries a secret.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sidekey_api::ErrorBody;
pub use sidekey_api::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

pub const INVALID_KEY_MESSAGE: &str = "The provided access key is invalid or has been revoked.";

impl ApiError {
    pub fn new(code: ErrorCode, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn token_missing() -> ApiError {
        ApiError::new(
            ErrorCode::TokenMissing,
            StatusCode::UNAUTHORIZED,
            "No access key was sent; send your sk_live_ key as 'Authorization: Bearer <key>'.",
        )
    }

    /// The exact body DESIGN.md fixes for every unusable key.
    pub fn invalid_access_key() -> ApiError {
        ApiError::new(
            ErrorCode::InvalidAccessKey,
            StatusCode::UNAUTHORIZED,
            INVALID_KEY_MESSAGE,
        )
    }

    pub fn key_expired() -> ApiError {
        ApiError::new(
            ErrorCode::KeyExpired,
            StatusCode::UNAUTHORIZED,
            "This key has expired; ask the daemon's owner for a new connection (sidekeyctl conn create).",
        )
    }

    pub fn connection_disabled() -> ApiError {
        ApiError::new(
            ErrorCode::ConnectionDisabled,
            StatusCode::FORBIDDEN,
            "This connection is disabled; re-enable it with: sidekeyctl conn enable <id>.",
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                ErrorCode::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "This connection is over its rate limit; retry after {retry_after_secs} s."
                ),
            )
        }
    }

    pub fn permission_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::PermissionDenied, StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Conflict, StatusCode::CONFLICT, message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, StatusCode::BAD_REQUEST, message)
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is over the {limit}-byte limit; send a smaller body."),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code,
            message: self.message.clone(),
            status: self.status.as_u16(),
        }
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let json = serde_json::to_vec(&self.body()).expect("ErrorBody serializes");
        let mut response = Response::new(Full::new(Bytes::from(json)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "store operation failed");
        ApiError::internal(format!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_key_body_is_exactly_the_documented_one() {
        let json = serde_json::to_string(&ApiError::invalid_access_key().body()).unwrap();
        assert_eq!(
            json,
            r#"{"error":"invalid_access_key","message":"The provided access key is invalid or has been revoked.","status":401}"#
        );
    }
}
