//! How `call` prints what happened: aligned lines for people, one JSON object for scripts.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::outcome::{Outcome, Payload};

/// Everything a call learned: the answer to the start (or cancel) and, with `--wait`, the
/// completion.
pub struct Report {
    pub status: StatusCode,
    pub token: Option<String>,
    pub answer: Outcome,
    pub took: Duration,
    pub callback_url: Option<String>,
    /// The completion and how long after the start was sent it arrived.
    pub completion: Option<(Outcome, Duration)>,
    /// A hint for a refusal the caller can do something about.
    pub hint: Option<String>,
}

impl Report {
    /// The outcome the exit code follows: the completion's, else the answer's.
    pub fn last(&self) -> &Outcome {
        self.completion.as_ref().map_or(&self.answer, |(o, _)| o)
    }

    /// The lines about the answer to the start or cancel.
    pub fn human_answer(&self) -> String {
        let mut out = String::new();
        outcome_lines(&mut out, &self.answer, self.token.as_deref());
        line(
            &mut out,
            "took",
            &format!("{} ({})", duration(self.took), self.status),
        );
        if let Outcome::Succeeded(payload) = &self.answer {
            payload_lines(&mut out, payload);
        }
        if let Some(hint) = &self.hint {
            line(&mut out, "hint", hint);
        }
        out
    }

    /// The lines about the completion, if one came.
    pub fn human_completion(&self) -> String {
        let mut out = String::new();
        if let Some((outcome, after)) = &self.completion {
            outcome_lines(&mut out, outcome, None);
            line(
                &mut out,
                "completed",
                &format!("{} after the start", duration(*after)),
            );
            if let Outcome::Succeeded(payload) = outcome {
                payload_lines(&mut out, payload);
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut out = Map::new();
        let last = self.last();
        out.insert(
            "state".into(),
            last.state().map_or(Value::Null, Value::from),
        );
        out.insert("status".into(), self.status.as_u16().into());
        if let Some(token) = &self.token {
            out.insert("token".into(), token.as_str().into());
        }
        match last {
            Outcome::Succeeded(payload) => payload_json(&mut out, payload),
            Outcome::Failed(failure) | Outcome::Canceled(failure) => {
                out.insert("failure".into(), failure.clone());
            }
            Outcome::CancelAccepted => {
                out.insert("cancel".into(), "accepted".into());
            }
            Outcome::HandlerError(e) => {
                out.insert(
                    "error".into(),
                    json!({"type": e.kind, "message": e.message, "retryable": e.retryable}),
                );
            }
            Outcome::Running => {}
        }
        if let Some(hint) = &self.hint {
            out.insert("hint".into(), hint.as_str().into());
        }
        if let Some(url) = &self.callback_url {
            out.insert("callbackUrl".into(), url.as_str().into());
        }
        let mut timings = json!({ "startMs": millis(self.took) });
        if let Some((_, after)) = &self.completion {
            timings["completionMs"] = millis(*after).into();
        }
        out.insert("timings".into(), timings);
        Value::Object(out)
    }
}

fn outcome_lines(out: &mut String, outcome: &Outcome, token: Option<&str>) {
    if let Some(state) = outcome.state() {
        line(out, "state", state);
    }
    match outcome {
        Outcome::CancelAccepted => line(out, "cancel", "accepted"),
        Outcome::Failed(failure) | Outcome::Canceled(failure) => {
            let message = failure["message"].as_str().unwrap_or("(no message)");
            line(out, "failure", message);
            for key in ["metadata", "details", "cause"] {
                if let Some(value) = failure.get(key) {
                    line(out, key, &value.to_string());
                }
            }
        }
        Outcome::HandlerError(e) => {
            let mut what = e.status.to_string();
            if let Some(kind) = &e.kind {
                what = format!("{what}, {kind}");
            }
            match e.retryable {
                Some(true) => what.push_str(", retryable"),
                Some(false) => what.push_str(", not retryable"),
                None => {}
            }
            line(out, "error", &what);
            line(out, "message", &e.message);
        }
        Outcome::Succeeded(_) | Outcome::Running => {}
    }
    if let Some(token) = token {
        line(out, "token", token);
    }
}

/// The result: JSON pretty-printed, text as is, anything else summarised.
fn payload_lines(out: &mut String, payload: &Payload) {
    let kind = payload.content_type.as_deref().unwrap_or("no content type");
    if payload.body.is_empty() {
        line(out, "result", &format!("empty ({kind})"));
        return;
    }
    let text = match (payload.json(), std::str::from_utf8(&payload.body)) {
        (Some(json), _) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        (None, Ok(text)) => text.trim_end_matches('\n').to_owned(),
        (None, Err(_)) => {
            let summary = format!(
                "{kind}, {} bytes, not UTF-8 (--json prints it as base64)",
                payload.body.len()
            );
            line(out, "result", &summary);
            return;
        }
    };
    line(out, "result", kind);
    out.push_str(&text);
    out.push('\n');
}

fn payload_json(out: &mut Map<String, Value>, payload: &Payload) {
    if let Some(ct) = &payload.content_type {
        out.insert("contentType".into(), ct.as_str().into());
    }
    let result = if payload.body.is_empty() {
        Value::Null
    } else if let Some(json) = payload.json() {
        json
    } else if let Ok(text) = std::str::from_utf8(&payload.body) {
        text.into()
    } else {
        out.insert("resultBase64".into(), STANDARD.encode(&payload.body).into());
        Value::Null
    };
    out.insert("result".into(), result);
}

fn line(out: &mut String, label: &str, value: &str) {
    out.push_str(&format!("{:<10} {value}\n", format!("{label}:")));
}

/// `12.3 ms` below a second, `1.23 s` above.
pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// Milliseconds with microsecond precision, for scripts.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn report(answer: Outcome) -> Report {
        Report {
            status: StatusCode::OK,
            token: None,
            answer,
            took: Duration::from_micros(12_345),
            callback_url: None,
            completion: None,
            hint: None,
        }
    }

    fn payload(ct: Option<&str>, body: &'static [u8]) -> Outcome {
        Outcome::Succeeded(Payload {
            content_type: ct.map(str::to_owned),
            body: Bytes::from_static(body),
        })
    }

    #[test]
    fn json_results_are_pretty_and_binary_is_summarised() {
        let text = report(payload(Some("application/json"), br#"{"a":1}"#)).human_answer();
        assert!(text.starts_with("state:     succeeded\n"), "{text}");
        assert!(text.contains("took:      12.3 ms (200 OK)\n"), "{text}");
        assert!(text.ends_with("{\n  \"a\": 1\n}\n"), "{text}");

        let binary = report(payload(None, &[0xff, 0xfe])).human_answer();
        assert!(binary.contains("2 bytes, not UTF-8"), "{binary}");
        let json = report(payload(None, &[0xff, 0xfe])).json();
        assert_eq!(json["resultBase64"], "//4=");
        assert_eq!(json["result"], Value::Null);
        assert_eq!(json["timings"]["startMs"], 12.345);
    }

    #[test]
    fn a_completion_decides_the_state() {
        let mut r = report(Outcome::Running);
        r.token = Some("t".into());
        r.completion = Some((
            Outcome::Failed(json!({"message": "no"})),
            Duration::from_millis(1500),
        ));
        let json = r.json();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["failure"]["message"], "no");
        assert_eq!(json["token"], "t");
        assert_eq!(r.last().exit_code(), 1);
        assert!(r.human_completion().contains("1.50 s after the start"));
    }
}
