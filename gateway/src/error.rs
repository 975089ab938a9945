//! One classification for everything that can go wrong while serving a request.
//!
//! A [`GatewayError`] knows its Nexus handler-error type, and from that its HTTP status and
//! whether a retry may help. [`GatewayError::into_response`] is the one place errors become
//! Nexus failure responses.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// The handler-error types of Nexus RPC, with their statuses (NEXUS-PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorType {
    BadRequest,
    Unauthenticated,
    Unauthorized,
    NotFound,
    RequestTimeout,
    Conflict,
    ResourceExhausted,
    Internal,
    NotImplemented,
    Unavailable,
    UpstreamTimeout,
}

impl ErrorType {
    pub fn status(self) -> StatusCode {
        let code = match self {
            ErrorType::BadRequest => 400,
            ErrorType::Unauthenticated => 401,
            ErrorType::Unauthorized => 403,
            ErrorType::NotFound => 404,
            ErrorType::RequestTimeout => 408,
            ErrorType::Conflict => 409,
            ErrorType::ResourceExhausted => 429,
            ErrorType::Internal => 500,
            ErrorType::NotImplemented => 501,
            ErrorType::Unavailable => 503,
            ErrorType::UpstreamTimeout => 520,
        };
        StatusCode::from_u16(code).expect("valid status")
    }

    /// The wire name, as in `details.type` of a Nexus HandlerError.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadRequest => "BAD_REQUEST",
            ErrorType::Unauthenticated => "UNAUTHENTICATED",
            ErrorType::Unauthorized => "UNAUTHORIZED",
            ErrorType::NotFound => "NOT_FOUND",
            ErrorType::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorType::Conflict => "CONFLICT",
            ErrorType::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorType::Internal => "INTERNAL",
            ErrorType::NotImplemented => "NOT_IMPLEMENTED",
            ErrorType::Unavailable => "UNAVAILABLE",
            ErrorType::UpstreamTimeout => "UPSTREAM_TIMEOUT",
        }
    }

    pub const ALL: [ErrorType; 11] = [
        ErrorType::BadRequest,
        ErrorType::Unauthenticated,
        ErrorType::Unauthorized,
        ErrorType::NotFound,
        ErrorType::RequestTimeout,
        ErrorType::Conflict,
        ErrorType::ResourceExhausted,
        ErrorType::Internal,
        ErrorType::NotImplemented,
        ErrorType::Unavailable,
        ErrorType::UpstreamTimeout,
    ];

    /// The wire name in lower case, as attribution outcomes spell it (`upstream_timeout`).
    pub fn snake_name(self) -> &'static str {
        match self {
            ErrorType::BadRequest => "bad_request",
            ErrorType::Unauthenticated => "unauthenticated",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::NotFound => "not_found",
            ErrorType::RequestTimeout => "request_timeout",
            ErrorType::Conflict => "conflict",
            ErrorType::ResourceExhausted => "resource_exhausted",
            ErrorType::Internal => "internal",
            ErrorType::NotImplemented => "not_implemented",
            ErrorType::Unavailable => "unavailable",
            ErrorType::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Whether clients retry this type when the response says nothing else.
    pub fn retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorType::RequestTimeout
                | ErrorType::ResourceExhausted
                | ErrorType::Internal
                | ErrorType::Unavailable
                | ErrorType::UpstreamTimeout
        )
    }
}

/// An error the gateway itself answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", kind.as_str(), kind.status().as_u16())]
pub struct GatewayError {
    pub kind: ErrorType,
    pub message: String,
    /// Overrides the type's default retry behaviour when set.
    pub retryable: Option<bool>,
    /// Sent as `Retry-After` (whole seconds, at least 1) when set.
    pub retry_after: Option<Duration>,
    /// The destination is at fault (it timed out or could not be reached) rather than the
    /// request being refused by the gateway; attribution records it as such.
    pub upstream: bool,
}

impl GatewayError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            retryable: None,
            retry_after: None,
            upstream: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorType::BadRequest, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unauthenticated, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unavailable, message)
    }
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorType::UpstreamTimeout, message)
    }
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ResourceExhausted, message)
    }

    /// Marks the error as the destination's fault.
    pub fn from_upstream(mut self) -> Self {
        self.upstream = true;
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
            .unwrap_or_else(|| self.kind.retryable_by_default())
    }

    /// The Failure JSON of a typed HandlerError.
    pub fn failure_json(&self) -> Bytes {
        let failure = serde_json::json!({
            "message": self.message,
            "metadata": {"type": "nexus.HandlerError"},
            "details": {"type": self.kind.as_str(), "retryableOverride": self.is_retryable()},
        });
        Bytes::from(failure.to_string())
    }

    /// The Nexus failure response: a typed HandlerError body with the type's status.
    pub fn into_response(self) -> Response<Body> {
        let retryable = self.is_retryable();
        let mut response = Response::new(full(self.failure_json()));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if retryable != self.kind.retryable_by_default() {
            headers.insert(
                crate::headers::REQUEST_RETRYABLE,
                HeaderValue::from_static(if retryable { "true" } else { "false" }),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn failure_body_is_a_typed_handler_error() {
        let response = GatewayError::not_found("endpoint \"x\" not found").into_response();
        assert_eq!(response.status(), 404);
        assert!(response.headers().get("nexus-request-retryable").is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["message"], "endpoint \"x\" not found");
        assert_eq!(json["metadata"]["type"], "nexus.HandlerError");
        assert_eq!(json["details"]["type"], "NOT_FOUND");
        assert_eq!(json["details"]["retryableOverride"], false);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let response = GatewayError::resource_exhausted("full")
            .with_retry_after(Duration::from_millis(10))
            .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn override_sets_the_retryable_header() {
        let mut error = GatewayError::internal("boom");
        error.retryable = Some(false);
        let response = error.into_response();
        assert_eq!(response.headers()["nexus-request-retryable"], "false");
    }
}
