//! Nexus RPC over HTTP: header names, the path grammar below an endpoint prefix, timeouts and
//! the rules for which headers cross the gateway. See NEXUS-PROTOCOL.md.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::GatewayError;

pub use crate::headers;

/// Limits from Temporal's Nexus implementation.
pub const MAX_NAME_LEN: usize = 1000;
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a POST below an endpoint prefix asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationKind {
    Start,
    /// `token` is set for the legacy `/{service}/{operation}/{token}/cancel` form.
    Cancel {
        path_token: Option<String>,
    },
}

impl OperationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OperationKind::Start => "start",
            OperationKind::Cancel { .. } => "cancel",
        }
    }
}

/// A parsed `/nexus/endpoints/{endpoint}/services/{service}/{operation}[...]` request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationPath {
    /// Endpoint id or name, percent-decoded.
    pub endpoint: String,
    pub service: String,
    pub operation: String,
    pub kind: OperationKind,
    /// The raw path (and query) below `/services`, as the handler would see it below its prefix.
    pub below_prefix: String,
}

pub const ENDPOINTS_PREFIX: &str = "/nexus/endpoints/";

/// Parses the raw path of a Nexus request. Splits on `/` first, then percent-decodes each
/// segment, so `%2F` inside a name never splits it.
pub fn parse_operation_path(
    path: &str,
    query: Option<&str>,
) -> Result<OperationPath, GatewayError> {
    let rest = path
        .strip_prefix(ENDPOINTS_PREFIX)
        .ok_or_else(|| GatewayError::not_found(format!("no route for path {path:?}")))?;
    // At most six segments route (endpoint, `services`, service, operation, token,
    // `cancel`); a seventh is kept only to refuse the path below.
    let mut split = [""; 7];
    let mut count = 0;
    for (slot, segment) in split.iter_mut().zip(rest.split('/')) {
        *slot = segment;
        count += 1;
    }
    let segments = &split[..count];
    if count < 4 || segments[1] != "services" {
        return Err(GatewayError::not_found(format!(
            "no route for path {path:?}: expected /nexus/endpoints/{{endpoint}}/services/{{service}}/{{operation}}"
        )));
    }
    let endpoint = decode_segment(segments[0], "endpoint")?;
    let service = decode_segment(segments[2], "service")?;
    let operation = decode_segment(segments[3], "operation")?;
    let kind = match &segments[4..] {
        [] => OperationKind::Start,
        ["cancel"] => OperationKind::Cancel { path_token: None },
        [token, "cancel"] => OperationKind::Cancel {
            path_token: Some(decode_segment(token, "operation token")?),
        },
        _ => {
            return Err(GatewayError::not_found(format!(
                "no route for path {path:?}: expected .../{{service}}/{{operation}} or .../{{operation}}/cancel"
            )));
        }
    };
    let prefix_len = ENDPOINTS_PREFIX.len() + segments[0].len() + "/services".len();
    let mut below_prefix = path[prefix_len..].to_string();
    if let Some(query) = query {
        below_prefix.push('?');
        below_prefix.push_str(query);
    }
    Ok(OperationPath {
        endpoint,
        service,
        operation,
        kind,
        below_prefix,
    })
}

/// Strict percent-decoding of one path segment: every `%` must start a valid escape and the
/// result must be UTF-8.
pub fn decode_segment(segment: &str, what: &str) -> Result<String, GatewayError> {
    if segment.is_empty() {
        return Err(GatewayError::bad_request(format!("{what} name is empty")));
    }
    let bytes = segment.as_bytes();
    // The common case, a plain name: nothing to decode, and no byte to check further.
    if bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'%') {
        if segment.len() > MAX_NAME_LEN {
            return Err(GatewayError::bad_request(format!(
                "{what} name is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        return Ok(segment.to_owned());
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let valid = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !valid {
                return Err(GatewayError::bad_request(format!(
                    "malformed percent-encoding in {what} {segment:?}"
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| {
            GatewayError::bad_request(format!("{what} {segment:?} is not UTF-8 when decoded"))
        })?;
    if decoded.chars().any(char::is_control) {
        return Err(GatewayError::bad_request(format!(
            "{what} {segment:?} contains a control character"
        )));
    }
    if decoded.len() > MAX_NAME_LEN {
        return Err(GatewayError::bad_request(format!(
            "{what} name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(decoded.into_owned())
}

/// Parses a Nexus duration (`Request-Timeout`, `Operation-Timeout`): `^\d+(\.\d+)?(ms|s|m)$`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let (number, unit_ms) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    let millis: f64 = number.parse().ok()?;
    let millis = millis * unit_ms;
    // Below 10^12 ms: a value that rounds up to the bound ("999999999999.99999999ms") is out too.
    if !millis.is_finite() || millis >= 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(millis / 1_000.0))
}

/// The caller's `Request-Timeout`, if any; a value that does not parse is a 400.
pub fn request_timeout(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get(headers::REQUEST_TIMEOUT) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse_duration)
        .map(Some)
        .ok_or_else(|| {
            GatewayError::bad_request(format!(
                "invalid Request-Timeout header {:?}: expected a duration like 500ms, 2.5s or 1m",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// A remaining time as a header value, formatted as [`format_timeout`] does; the text becomes
/// the value without a copy.
pub fn timeout_header(d: Duration) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(format_timeout(d)))
        .expect("digits and \"ms\"")
}

/// Formats a remaining time the way Temporal's callers send it: whole milliseconds.
pub fn format_timeout(d: Duration) -> String {
    // Not `format!`: this runs on every proxied request.
    // As u64: formatting a u128 divides in software, ten times the cost.
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut text = String::with_capacity(22);
    text.push_str(itoa::Buffer::new().format(millis));
    text.push_str("ms");
    text
}

/// Whether a header from one side may be relayed to the other. Drops hop-by-hop headers
/// (and those a `Connection` header names), the length (the gateway frames bodies itself),
/// `Host`, `Expect` (the gateway answers it itself), credentials (`Authorization`, `Cookie`,
/// `Proxy-*`), the caller-namespace header (only the gateway sets it) and the
/// gateway-internal `Nexus-Task-*` headers.
pub fn is_relayed(name: &HeaderName, connection_listed: &[HeaderName]) -> bool {
    let n = name.as_str();
    !(is_framing_or_hop(n)
        || matches!(
            n,
            "authorization" | "cookie" | "request-timeout" | "nexus-caller-namespace"
        )
        || n.starts_with(headers::TASK_PREFIX)
        || connection_listed.contains(name))
}

/// Headers that belong to one hop or frame one message (lower case): never carried across
/// the gateway, whichever way.
pub fn is_framing_or_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
    ) || name.starts_with("proxy-")
}

/// Copies the headers that may cross the gateway from `from` to `to`.
pub fn copy_relayed(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = connection_listed(from);
    for (name, value) in from {
        if is_relayed(name, &listed) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Leaves in `headers` only those that may cross the gateway: `copy_relayed` in place, for
/// a map passed on whole, which spares a second map and hashing each header into it.
pub fn keep_relayed(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    // Each name is judged once; those to drop are gathered, then removed, a few at a time.
    let mut dropped: [Option<HeaderName>; 8] = Default::default();
    loop {
        let mut count = 0;
        for name in headers.keys().filter(|n| !is_relayed(n, &listed)) {
            dropped[count] = Some(name.clone());
            count += 1;
            if count == dropped.len() {
                break;
            }
        }
        for name in dropped[..count].iter_mut().filter_map(Option::take) {
            headers.remove(name);
        }
        if count < dropped.len() {
            return;
        }
    }
}

/// The headers a `Connection` header names: hop-by-hop, so not relayed.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_and_cancel_paths() {
        let p = parse_operation_path(
            "/nexus/endpoints/payments/services/billing/charge",
            Some("callback=http%3A%2F%2Fx"),
        )
        .unwrap();
        assert_eq!(p.endpoint, "payments");
        assert_eq!(
            (p.service.as_str(), p.operation.as_str()),
            ("billing", "charge")
        );
        assert_eq!(p.kind, OperationKind::Start);
        assert_eq!(p.below_prefix, "/billing/charge?callback=http%3A%2F%2Fx");

        let p = parse_operation_path("/nexus/endpoints/e/services/s/o/cancel", None).unwrap();
        assert_eq!(p.kind, OperationKind::Cancel { path_token: None });
        assert_eq!(p.below_prefix, "/s/o/cancel");

        let p =
            parse_operation_path("/nexus/endpoints/e/services/s/o/tok%2F1/cancel", None).unwrap();
        assert_eq!(
            p.kind,
            OperationKind::Cancel {
                path_token: Some("tok/1".into())
            }
        );
    }

    #[test]
    fn splits_before_decoding() {
        let p = parse_operation_path("/nexus/endpoints/e/services/a%2Fb/op%20x", None).unwrap();
        assert_eq!(p.service, "a/b");
        assert_eq!(p.operation, "op x");
        assert_eq!(p.below_prefix, "/a%2Fb/op%20x");
    }

    #[test]
    fn rejects_malformed_paths() {
        let e = parse_operation_path("/nexus/endpoints/e/services/s%zz/o", None).unwrap_err();
        assert_eq!(e.kind.status(), 400);
        assert!(
            e.message.contains("malformed percent-encoding"),
            "{}",
            e.message
        );
        let e = parse_operation_path("/nexus/endpoints/e/services/s/%FF", None).unwrap_err();
        assert_eq!(e.kind.status(), 400);
        let e = parse_operation_path("/nexus/endpoints/e/services/s", None).unwrap_err();
        assert_eq!(e.kind.status(), 404);
        let e = parse_operation_path("/nexus/endpoints/e/other/s/o", None).unwrap_err();
        assert_eq!(e.kind.status(), 404);
        let e = parse_operation_path("/nexus/endpoints/e/services/s/o/t/result", None).unwrap_err();
        assert_eq!(e.kind.status(), 404);
        let e = parse_operation_path("/nexus/endpoints/e/services//o", None).unwrap_err();
        assert_eq!(e.kind.status(), 400);
        for bad in ["s%00", "s%0A", "s%7F", "s%C2%85"] {
            let path = format!("/nexus/endpoints/e/services/{bad}/o");
            let e = parse_operation_path(&path, None).unwrap_err();
            assert_eq!(
                (e.kind.status().as_u16(), e.message),
                (400, format!("service {bad:?} contains a control character"))
            );
        }
    }

    #[test]
    fn plain_and_encoded_names_meet_the_same_limits() {
        // A plain name and its encoded spelling decode alike, up to the same length.
        let long = "n".repeat(MAX_NAME_LEN);
        for name in [long.clone(), long.replace('n', "%6E")] {
            let path = format!("/nexus/endpoints/e/services/{name}/o");
            assert_eq!(parse_operation_path(&path, None).unwrap().service, long);
            let path = format!("/nexus/endpoints/e/services/{name}n/o");
            let e = parse_operation_path(&path, None).unwrap_err();
            assert_eq!(
                (e.kind.status().as_u16(), e.message.as_str()),
                (400, "service name is longer than 1000 bytes")
            );
        }
        // Raw bytes outside printable ASCII take the checked path: UTF-8, no control character.
        let p = parse_operation_path("/nexus/endpoints/e/services/caf\u{e9}/o", None).unwrap();
        assert_eq!(p.service, "caf\u{e9}");
        let e = parse_operation_path("/nexus/endpoints/e/services/s\u{85}/o", None).unwrap_err();
        assert_eq!(e.kind.status(), 400);
        // Seven segments or more never route, however the rest looks.
        for extra in ["t/cancel/x", "t/u/v/w/cancel"] {
            let path = format!("/nexus/endpoints/e/services/s/o/{extra}");
            let e = parse_operation_path(&path, None).unwrap_err();
            assert_eq!(e.kind.status(), 404, "{path}");
        }
    }

    #[test]
    fn timeouts_are_sent_in_whole_milliseconds() {
        for (d, text) in [
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(9_998), "9998ms"),
            (Duration::from_secs(3_600), "3600000ms"),
            (Duration::MAX, "18446744073709551615ms"),
        ] {
            assert_eq!(format_timeout(d), text);
            assert_eq!(timeout_header(d), text);
        }
    }

    #[test]
    fn durations_follow_the_grammar() {
        assert_eq!(parse_duration("9998ms"), Some(Duration::from_millis(9998)));
        assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        for bad in ["", "10", "1.s", ".5s", "-1s", "1h", "1 s", "abcms", "1e3ms"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    /// Found by `cargo fuzz run headers`: durations are bounded below 10^12 ms, the bound
    /// itself (and what rounds up to it) included.
    #[test]
    fn durations_stay_below_the_bound() {
        let bound = Duration::from_millis(1_000_000_000_000);
        for bad in [
            "01000000000s",
            "1000000000000ms",
            "999999999999.99999999ms",
            "16666666.6666666666667m",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let d = parse_duration("999999999999ms").unwrap();
        assert!(d < bound, "{d:?}");
    }

    #[test]
    fn drops_hop_by_hop_and_internal_headers() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-private"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("content-type", "application/json"),
            ("nexus-caller-namespace", "forged"),
            ("nexus-task-token", "forged"),
            ("nexus-link", "<a>; type=\"x\""),
            ("authorization", "secret"),
            ("proxy-authorization", "secret"),
            ("cookie", "session=secret"),
            ("expect", "100-continue"),
        ] {
            from.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        from.append("nexus-link", "<b>; type=\"y\"".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_relayed(&from, &mut to);
        let names: Vec<_> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "nexus-link"]);

        // In place, the same headers are left, each name's values in their order.
        let mut kept = from.clone();
        keep_relayed(&mut kept);
        let mut names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "nexus-link"]);
        assert_eq!(kept.len(), 3);
        let links: Vec<_> = kept.get_all("nexus-link").iter().collect();
        assert_eq!(links, ["<a>; type=\"x\"", "<b>; type=\"y\""]);

        // More to drop than are gathered at once.
        let mut many = HeaderMap::new();
        for i in 0..20 {
            let name = HeaderName::try_from(format!("proxy-x{i}")).unwrap();
            many.append(name, "1".parse().unwrap());
        }
        many.append("content-type", "application/json".parse().unwrap());
        keep_relayed(&mut many);
        let names: Vec<_> = many.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }
}
