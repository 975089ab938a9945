//! The one table that says whether a destination is down. It drives every circuit breaker
//! (proxied starts and cancels, callback deliveries) and whether a delivery is retried.
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

use http::StatusCode;
use nexus_outbound_queue::Outcome;

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

#[cfg(test)]
mod tests {
    use super::*;

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
