//! One attribution record: one JSON line in a segment.

use serde::{Deserialize, Serialize};

/// One Nexus start, cancel or completion that crossed the gateway (rejected ones included).
///
/// Field order is the on-disk order; `seq` comes first so readers can skip lines cheaply.
/// `None` fields are omitted; missing fields read back as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Record {
    /// Assigned by the log: strictly increasing, no gaps, across restarts.
    pub seq: u64,
    /// UUID v4, assigned by the log if empty.
    pub id: String,
    /// RFC 3339 UTC with ms precision, assigned by the log if empty.
    pub time: String,
    /// `start`, `cancel` or `completion`.
    pub kind: String,
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
    pub outcome: String,
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
        self.outcome.starts_with("rejected")
    }
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
            kind: "start".into(),
            caller_namespace: Some("orders".into()),
            outcome: "started".into(),
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
}
