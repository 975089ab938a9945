//! How things ended, decided in one place:
//!
//! - whether a destination is down ([`classify`]): it drives every circuit breaker (proxied
//!   starts and cancels, callback deliveries) and whether a delivery is retried;
//! - the attribution outcome of an answer ([`target_outcome`], [`error_outcome`]);
//! - the Nexus error a registry error becomes.
//!
//! Whether a destination is down:
//!
//! | What happened | Outcome | Breaker | Completion delivery |
//! |---|---|---|---|
//! | 2xx | success | counts as healthy | delivered |
//! | 408, 429, 5xx except 501, 520 | destination down | counts toward opening | retried with backoff |
//! | transport error, no answer in time | destination down | counts toward opening | retried with backoff |
//! | any other status (400-407, 409-428, 424, 501, ...) | operation failed | counts as healthy | failed, kept for an operator |
//! | the caller's fault (body too large, caller's body unreadable or too slow) | none | not counted | — |
//!
//! 408, 429 and the retryable 5xx are the statuses a Nexus handler uses for "not now"
//! (REQUEST_TIMEOUT, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, UPSTREAM_TIMEOUT); 501
//! NOT_IMPLEMENTED is a permanent answer about the operation, not about the destination's health.

use http::{Response, StatusCode};
use nexus_outbound_queue::Outcome;

use crate::attribution::{Kind, Outcome as Attributed};
use crate::body::Body;
use crate::error::GatewayError;
use crate::headers;

/// How an answer from a destination counts.
pub fn classify(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Success,
        408 | 429 => Outcome::DestinationDown,
        501 => Outcome::OperationFailed,
        500..=599 => Outcome::DestinationDown,
        _ => Outcome::OperationFailed,
    }
}

/// The outcome of an answer that came from the target.
pub fn target_outcome(kind: Kind, response: &Response<Body>) -> Attributed {
    let state = response
        .headers()
        .get(headers::OPERATION_STATE)
        .and_then(|v| v.to_str().ok());
    match (kind, response.status().as_u16(), state) {
        (Kind::Cancel, 202, _) => Attributed::CancelRequested,
        (_, 200, _) => Attributed::Succeeded,
        (_, 201, _) => Attributed::Started,
        (_, 424, Some("canceled")) => Attributed::Canceled,
        (_, 424, _) => Attributed::Failed,
        _ => Attributed::HandlerError,
    }
}

/// The outcome of an answer the gateway gave itself: refused, or the destination's fault.
pub fn error_outcome(error: &GatewayError) -> Attributed {
    if error.upstream {
        Attributed::Destination(error.kind)
    } else {
        Attributed::Rejected(error.kind)
    }
}

impl From<nexus_registry::RegistryError> for GatewayError {
    fn from(error: nexus_registry::RegistryError) -> Self {
        use nexus_registry::RegistryError as E;
        let message = error.to_string();
        match error {
            E::Invalid(_) => GatewayError::bad_request(message),
            E::NotFound(_) | E::ClusterNotFound(_) => GatewayError::not_found(message),
            E::AlreadyExists(_)
            | E::VersionConflict { .. }
            | E::ClusterExists(_)
            | E::ClusterVersionConflict { .. } => GatewayError::conflict(message),
            E::Storage(_) => GatewayError::internal(message),
            E::Unavailable(_) => GatewayError::unavailable(message)
                .with_retry_after(std::time::Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_outcomes() {
        let answer = |status: u16, state: Option<&str>| {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(s) = state {
                r.headers_mut()
                    .insert(headers::OPERATION_STATE, s.parse().unwrap());
            }
            r
        };
        for (kind, status, state, expected) in [
            (Kind::Start, 200, None, "succeeded"),
            (Kind::Start, 201, None, "started"),
            (Kind::Start, 424, Some("failed"), "failed"),
            (Kind::Start, 424, Some("canceled"), "canceled"),
            (Kind::Start, 424, None, "failed"),
            (Kind::Cancel, 202, None, "cancel_requested"),
            (Kind::Start, 400, None, "handler_error"),
            (Kind::Start, 503, None, "handler_error"),
        ] {
            assert_eq!(
                target_outcome(kind, &answer(status, state)).as_str(),
                expected,
                "{kind:?} {status}"
            );
        }
        let refused = GatewayError::unauthorized("no");
        assert_eq!(error_outcome(&refused).as_str(), "rejected:unauthorized");
        let down = GatewayError::upstream_timeout("slow").from_upstream();
        assert_eq!(error_outcome(&down).as_str(), "upstream_timeout");
    }

    #[test]
    fn the_table() {
        let cases = [
            (200, Outcome::Success),
            (201, Outcome::Success),
            (202, Outcome::Success),
            (204, Outcome::Success),
            (400, Outcome::OperationFailed),
            (403, Outcome::OperationFailed),
            (404, Outcome::OperationFailed),
            (408, Outcome::DestinationDown),
            (409, Outcome::OperationFailed),
            (424, Outcome::OperationFailed),
            (429, Outcome::DestinationDown),
            (500, Outcome::DestinationDown),
            (501, Outcome::OperationFailed),
            (502, Outcome::DestinationDown),
            (503, Outcome::DestinationDown),
            (504, Outcome::DestinationDown),
            (520, Outcome::DestinationDown),
            (302, Outcome::OperationFailed),
        ];
        for (status, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify(status), expected, "{status}");
        }
    }
}
