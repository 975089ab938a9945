//! What an answer or a completion means to the caller, classified once: the exit code and
//! both printouts follow from the [`Outcome`].

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::headers;

/// A result body and its content type.
#[derive(Debug)]
pub struct Payload {
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Payload {
    pub fn from_parts(headers: &HeaderMap, body: Bytes) -> Payload {
        Payload {
            content_type: text_header(headers, &header::CONTENT_TYPE),
            body,
        }
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// An error answer that is not an operation failure: a Nexus HandlerError from the handler
/// or the gateway.
#[derive(Debug)]
pub struct HandlerError {
    pub status: StatusCode,
    /// `details.type` of a typed HandlerError, e.g. `NOT_FOUND`.
    pub kind: Option<String>,
    pub message: String,
    /// From `Nexus-Request-Retryable`, else `details.retryableOverride`.
    pub retryable: Option<bool>,
}

#[derive(Debug)]
pub enum Outcome {
    Succeeded(Payload),
    /// Started asynchronously; the completion goes to the callback URL.
    Running,
    /// The operation failed; a Nexus Failure.
    Failed(Value),
    /// The operation was canceled; a Nexus Failure.
    Canceled(Value),
    CancelAccepted,
    HandlerError(HandlerError),
}

/// Exit codes of `call`, documented in its `--help` and the README.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CANCELED: u8 = 2;
pub const EXIT_HANDLER_ERROR: u8 = 3;
pub const EXIT_TRANSPORT: u8 = 4;
/// EX_USAGE of sysexits.h; clap's own 2 would read as "canceled".
pub const EXIT_USAGE: u8 = 64;

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Succeeded(_) | Outcome::Running | Outcome::CancelAccepted => 0,
            Outcome::Failed(_) => EXIT_FAILED,
            Outcome::Canceled(_) => EXIT_CANCELED,
            Outcome::HandlerError(_) => EXIT_HANDLER_ERROR,
        }
    }

    /// The operation state, when the answer tells one.
    pub fn state(&self) -> Option<&'static str> {
        match self {
            Outcome::Succeeded(_) => Some("succeeded"),
            Outcome::Running => Some("running"),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Canceled(_) => Some("canceled"),
            Outcome::CancelAccepted | Outcome::HandlerError(_) => None,
        }
    }
}

/// The answer to a start: 200 result, 201 started (with its token), 424 failed or canceled;
/// anything else is a handler error.
pub fn start(status: StatusCode, headers: &HeaderMap, body: Bytes) -> (Outcome, Option<String>) {
    match status.as_u16() {
        200 => (Outcome::Succeeded(Payload::from_parts(headers, body)), None),
        201 => {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            // Older handlers send the token as "id" only; the header carries it too.
            let token = ["token", "id"]
                .iter()
                .find_map(|k| json[k].as_str())
                .map(str::to_owned)
                .or_else(|| text_header(headers, &headers::OPERATION_TOKEN))
                .filter(|t| !t.is_empty());
            match (token, json["state"].as_str()) {
                (Some(token), Some("running") | None) => (Outcome::Running, Some(token)),
                (token, state) => {
                    let message = format!(
                        "the handler answered 201 without a running operation and its token \
                         (state {state:?}, token {token:?}): {}",
                        body_text(&body)
                    );
                    (protocol_error(status, message), token)
                }
            }
        }
        424 => match text_header(headers, &headers::OPERATION_STATE).as_deref() {
            Some("failed") => (Outcome::Failed(failure(&body)), None),
            Some("canceled") => (Outcome::Canceled(failure(&body)), None),
            _ => (
                Outcome::HandlerError(handler_error(status, headers, &body)),
                None,
            ),
        },
        _ => (
            Outcome::HandlerError(handler_error(status, headers, &body)),
            None,
        ),
    }
}

/// The answer to a cancel: exactly 202, as Nexus clients require.
pub fn cancel(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Outcome {
    match status {
        StatusCode::ACCEPTED => Outcome::CancelAccepted,
        s if s.is_success() => protocol_error(
            s,
            format!("a cancel must be answered 202 Accepted, not {s}"),
        ),
        s => Outcome::HandlerError(handler_error(s, headers, &body)),
    }
}

/// A completion delivered to the callback URL: `Nexus-Operation-State` and the result or
/// failure. Returns the outcome and the operation token, or why the request is no completion.
pub fn completion(headers: &HeaderMap, body: Bytes) -> Result<(Outcome, Option<String>), String> {
    let token = text_header(headers, &headers::OPERATION_TOKEN)
        .or_else(|| text_header(headers, &headers::OPERATION_ID));
    let outcome = match text_header(headers, &headers::OPERATION_STATE).as_deref() {
        Some("succeeded") => Outcome::Succeeded(Payload::from_parts(headers, body)),
        Some("failed") => Outcome::Failed(failure(&body)),
        Some("canceled") => Outcome::Canceled(failure(&body)),
        Some(other) => {
            return Err(format!(
                "Nexus-Operation-State {other:?} is not succeeded, failed or canceled"
            ));
        }
        None => return Err("a completion needs a Nexus-Operation-State header".into()),
    };
    Ok((outcome, token))
}

/// A Nexus Failure body; a body that is not one becomes `{"message": <its text>}`.
fn failure(body: &Bytes) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({ "message": body_text(body) }),
    }
}

fn handler_error(status: StatusCode, headers: &HeaderMap, body: &Bytes) -> HandlerError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = json["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body_text(body));
    let retryable = match text_header(headers, &headers::REQUEST_RETRYABLE).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => json["details"]["retryableOverride"].as_bool(),
    };
    HandlerError {
        status,
        kind: json["details"]["type"].as_str().map(str::to_owned),
        message,
        retryable,
    }
}

/// An answer that breaks the Nexus protocol: reported like a handler error.
fn protocol_error(status: StatusCode, message: String) -> Outcome {
    Outcome::HandlerError(HandlerError {
        status,
        kind: None,
        message,
        retryable: None,
    })
}

/// A body as text for a message: its UTF-8, or a summary.
pub fn body_text(body: &Bytes) -> String {
    match std::str::from_utf8(body) {
        Ok("") => "(empty body)".into(),
        Ok(text) => text.trim_end().to_owned(),
        Err(_) => format!("({} bytes, not UTF-8)", body.len()),
    }
}

fn text_header(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn starts_are_told_apart() {
        let none = HeaderMap::new();
        let (ok, _) = start(StatusCode::OK, &none, Bytes::from_static(b"{}"));
        assert_eq!(ok.exit_code(), 0);

        let (running, token) = start(
            StatusCode::CREATED,
            &none,
            Bytes::from_static(br#"{"token":"t-1","state":"running"}"#),
        );
        assert_eq!(running.state(), Some("running"));
        assert_eq!(token.as_deref(), Some("t-1"));

        let (by_header, token) = start(
            StatusCode::CREATED,
            &headers(&[("nexus-operation-token", "t-2")]),
            Bytes::new(),
        );
        assert_eq!(by_header.state(), Some("running"));
        assert_eq!(token.as_deref(), Some("t-2"));

        let (no_token, _) = start(StatusCode::CREATED, &none, Bytes::from_static(b"{}"));
        assert_eq!(no_token.exit_code(), EXIT_HANDLER_ERROR);

        let dependency = StatusCode::from_u16(424).unwrap();
        let failed = headers(&[("nexus-operation-state", "failed")]);
        let (f, _) = start(dependency, &failed, Bytes::from_static(b"not json"));
        assert_eq!(f.exit_code(), EXIT_FAILED);
        let Outcome::Failed(body) = f else { panic!() };
        assert_eq!(body["message"], "not json");
        let canceled = headers(&[("nexus-operation-state", "canceled")]);
        assert_eq!(
            start(dependency, &canceled, Bytes::new()).0.exit_code(),
            EXIT_CANCELED
        );
        // 424 without the state header is no operation failure.
        assert_eq!(
            start(dependency, &none, Bytes::new()).0.exit_code(),
            EXIT_HANDLER_ERROR
        );
    }

    #[test]
    fn handler_errors_keep_type_message_and_retry() {
        let body = Bytes::from_static(
            br#"{"message":"no endpoint","metadata":{"type":"nexus.HandlerError"},"details":{"type":"NOT_FOUND","retryableOverride":false}}"#,
        );
        let (outcome, _) = start(StatusCode::NOT_FOUND, &HeaderMap::new(), body);
        let Outcome::HandlerError(e) = outcome else {
            panic!()
        };
        assert_eq!(e.kind.as_deref(), Some("NOT_FOUND"));
        assert_eq!(e.message, "no endpoint");
        assert_eq!(e.retryable, Some(false));

        let retry = headers(&[("nexus-request-retryable", "true")]);
        let (outcome, _) = start(
            StatusCode::SERVICE_UNAVAILABLE,
            &retry,
            Bytes::from_static(b"down"),
        );
        let Outcome::HandlerError(e) = outcome else {
            panic!()
        };
        assert_eq!(
            (e.kind, e.message, e.retryable),
            (None, "down".into(), Some(true))
        );
    }

    #[test]
    fn a_cancel_is_accepted_only_with_202() {
        let none = HeaderMap::new();
        assert!(matches!(
            cancel(StatusCode::ACCEPTED, &none, Bytes::new()),
            Outcome::CancelAccepted
        ));
        assert_eq!(
            cancel(StatusCode::OK, &none, Bytes::new()).exit_code(),
            EXIT_HANDLER_ERROR
        );
    }

    #[test]
    fn completions_need_a_known_state() {
        let ok = headers(&[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-id", "t-9"),
        ]);
        let (outcome, token) = completion(&ok, Bytes::from_static(b"1")).unwrap();
        assert_eq!(outcome.state(), Some("succeeded"));
        assert_eq!(token.as_deref(), Some("t-9"));
        let odd = headers(&[("nexus-operation-state", "running")]);
        assert!(
            completion(&odd, Bytes::new())
                .unwrap_err()
                .contains("running")
        );
        assert!(completion(&HeaderMap::new(), Bytes::new()).is_err());
    }
}
