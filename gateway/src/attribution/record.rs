//! One attribution record: one JSON line in a segment.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ErrorType;

/// What a record is about.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Start,
    Cancel,
    Completion,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Cancel => "cancel",
            Kind::Completion => "completion",
        }
    }
}

/// How a start, cancel or completion ended; written as the strings of the log format.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    Started,
    Failed,
    Canceled,
    CancelRequested,
    /// The target answered with a handler error.
    HandlerError,
    /// A completion taken for delivery.
    Accepted,
    /// A completion for a token already accepted.
    Duplicate,
    /// The destination's fault: `upstream_timeout`, `unavailable`, …
    Destination(ErrorType),
    /// The gateway refused: `rejected:<type>`.
    Rejected(ErrorType),
    /// Anything else read back from a log (never written by this version), or nothing yet.
    Other(String),
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::Other(String::new())
    }
}

impl Outcome {
    pub fn as_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Started => "started",
            Outcome::Failed => "failed",
            Outcome::Canceled => "canceled",
            Outcome::CancelRequested => "cancel_requested",
            Outcome::HandlerError => "handler_error",
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Destination(kind) => kind.snake_name(),
            Outcome::Rejected(kind) => {
                return Cow::Owned(format!("rejected:{}", kind.snake_name()));
            }
            Outcome::Other(text) => text,
        })
    }

    fn parse(text: &str) -> Outcome {
        let fixed = [
            Outcome::Succeeded,
            Outcome::Started,
            Outcome::Failed,
            Outcome::Canceled,
            Outcome::CancelRequested,
            Outcome::HandlerError,
            Outcome::Accepted,
            Outcome::Duplicate,
        ];
        if let Some(known) = fixed.into_iter().find(|o| o.as_str() == text) {
            return known;
        }
        let by_name = |name: &str| ErrorType::ALL.into_iter().find(|t| t.snake_name() == name);
        match text.strip_prefix("rejected:") {
            Some(name) => by_name(name).map(Outcome::Rejected),
            None => by_name(text).map(Outcome::Destination),
        }
        .unwrap_or_else(|| Outcome::Other(text.to_owned()))
    }

    /// Whether the gateway refused the call.
    pub fn is_rejected(&self) -> bool {
        match self {
            Outcome::Rejected(_) => true,
            Outcome::Other(text) => text.starts_with("rejected"),
            _ => false,
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Ok(Outcome::parse(&text))
    }
}

/// One Nexus start, cancel or completion that crossed the gateway (rejected ones included).
///
/// Field order is the on-disk order; `seq` comes first so readers can skip lines cheaply.
/// `None` fields are omitted; missing fields read back as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Record {
    /// Assigned by the log: strictly increasing, no gaps, across restarts.
    pub seq: u64,
    /// The replica that wrote it, when several share a store: `(replica, seq)` is unique.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// UUID v4, assigned by the log if empty.
    pub id: String,
    /// RFC 3339 UTC with ms precision, assigned by the log if empty.
    pub time: String,
    /// `start`, `cancel` or `completion`.
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_token: Option<String>,
    /// `succeeded`, `started`, `failed`, `canceled`, `cancel_requested`, `handler_error`,
    /// `upstream_timeout`, … or `rejected:<reason>`.
    pub outcome: Outcome,
    /// HTTP status answered to the caller.
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    /// Actions charged to `caller_namespace`: 1 per start/cancel that reached the target, 0 for
    /// rejected ones and completions.
    pub billable: u32,
}

impl Record {
    /// Whether the gateway refused the call (outcome `rejected` or `rejected:<reason>`).
    pub fn is_rejected(&self) -> bool {
        self.outcome.is_rejected()
    }
}

impl Record {
    /// Appends this record as one JSON object, byte for byte what `serde_json` writes for it
    /// (the tests hold the two together). Written by hand because it runs once per call on
    /// the request path, where serde's generic path cost about 12,000 instructions a record
    /// (BENCHMARKS.md, round 7).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        number(out, self.seq);
        optional(out, "replica", &self.replica);
        field(out, "id", &self.id);
        field(out, "time", &self.time);
        field(out, "kind", self.kind.as_str());
        optional(out, "caller_namespace", &self.caller_namespace);
        optional(out, "caller_identity", &self.caller_identity);
        optional(out, "endpoint", &self.endpoint);
        optional(out, "endpoint_id", &self.endpoint_id);
        optional(out, "target_namespace", &self.target_namespace);
        optional(out, "task_queue", &self.task_queue);
        optional(out, "target_url", &self.target_url);
        optional(out, "service", &self.service);
        optional(out, "operation", &self.operation);
        optional(out, "request_id", &self.request_id);
        optional(out, "operation_token", &self.operation_token);
        field(out, "outcome", &self.outcome.as_str());
        for (name, value) in [
            ("status", u64::from(self.status)),
            ("request_bytes", self.request_bytes),
            ("response_bytes", self.response_bytes),
            ("latency_us", self.latency_us),
            ("billable", u64::from(self.billable)),
        ] {
            out.push(b',');
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            number(out, value);
        }
        out.push(b'}');
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn optional(out: &mut Vec<u8>, name: &str, value: &Option<String>) {
    if let Some(value) = value {
        field(out, name, value);
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    string(out, value);
}

/// A JSON string; names, ids and URLs almost never need escaping, so they are copied whole.
fn string(out: &mut Vec<u8>, value: &str) {
    if needs_escaping(value.as_bytes()) {
        // Cannot fail: a string written to a Vec.
        let _ = serde_json::to_writer(&mut *out, value);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// Whether JSON must escape any byte of `bytes` (a control character, `"` or `\\`), eight
/// bytes at a time: a byte-wise scan cost more than the rest of the record.
fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte below 0x20: subtracting 0x20 borrows into its high bit (bytes >= 0x80 are
        // excluded by `!x`).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The seq of a line as this log writes it (`{"seq":N,...`), without parsing the rest.
pub(super) fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !matches!(rest.get(digits), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let r = Record {
            seq: 7,
            id: "a".into(),
            time: "2026-11-23T01:02:03.004Z".into(),
            kind: Kind::Start,
            caller_namespace: Some("orders".into()),
            outcome: Outcome::Started,
            status: 201,
            billable: 1,
            ..Default::default()
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with(r#"{"seq":7,"id":"a","#), "{line}");
        assert!(line.contains(r#""caller_namespace":"orders""#));
        assert!(
            !line.contains("endpoint"),
            "None fields are omitted: {line}"
        );
        assert_eq!(line_seq(line.as_bytes()), Some(7));
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        assert_eq!(line_seq(br#"{"seq":12"#), None, "torn after the digits");
        assert_eq!(line_seq(br#"{"id":"x","seq":1}"#), None);
    }

    #[test]
    fn the_hand_written_json_is_what_serde_writes() {
        let full = Record {
            seq: u64::MAX,
            replica: Some("r-0a".into()),
            id: "5e0f".into(),
            time: "2026-11-23T01:02:03.004Z".into(),
            kind: Kind::Cancel,
            caller_namespace: Some("orders@east".into()),
            caller_identity: Some("spiffe://td/ns/orders".into()),
            endpoint: Some("quote \" back \\ slash".into()),
            endpoint_id: Some("e-1".into()),
            target_namespace: Some("tab\tnew\nline\u{1}".into()),
            task_queue: Some("q".into()),
            target_url: Some("https://h:1/a?b=c&d=é".into()),
            service: Some("".into()),
            operation: Some("op/ü".into()),
            request_id: Some("r".into()),
            operation_token: Some("t".into()),
            outcome: Outcome::Rejected(ErrorType::ResourceExhausted),
            status: 429,
            request_bytes: 1,
            response_bytes: 0,
            latency_us: 123_456,
            billable: u32::MAX,
        };
        for record in [full, Record::default()] {
            let mut mine = Vec::new();
            record.write_json(&mut mine);
            let serde = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn escaping_is_found_at_every_position() {
        let plain = "spiffe://td/ns/orders-é~";
        assert!(!needs_escaping(plain.as_bytes()));
        for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..=plain.len() {
                if !plain.is_char_boundary(at) {
                    continue;
                }
                let text = format!("{}{bad}{}", &plain[..at], &plain[at..]);
                assert!(needs_escaping(text.as_bytes()), "{text:?}");
            }
        }
        assert!(!needs_escaping(" !#~\u{7f}\u{80}ÿ€".as_bytes()));
    }

    #[test]
    fn outcomes_are_written_as_the_log_format_strings() {
        for (outcome, text) in [
            (Outcome::Succeeded, "succeeded"),
            (Outcome::CancelRequested, "cancel_requested"),
            (Outcome::HandlerError, "handler_error"),
            (Outcome::Duplicate, "duplicate"),
            (
                Outcome::Destination(ErrorType::UpstreamTimeout),
                "upstream_timeout",
            ),
            (Outcome::Destination(ErrorType::Unavailable), "unavailable"),
            (
                Outcome::Rejected(ErrorType::ResourceExhausted),
                "rejected:resource_exhausted",
            ),
            (
                Outcome::Rejected(ErrorType::BadRequest),
                "rejected:bad_request",
            ),
            (Outcome::Other("rejected:legacy".into()), "rejected:legacy"),
        ] {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
        }
        assert!(Outcome::Other("rejected:legacy".into()).is_rejected());
        assert!(!Outcome::Destination(ErrorType::Unavailable).is_rejected());
        assert_eq!(
            serde_json::to_string(&Kind::Completion).unwrap(),
            "\"completion\""
        );
    }
}
