//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header read
//! from callers, who are hostile (anything malformed is treated as absent: a new trace, never
//! an error), and written for handlers and callers' callback receivers.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` sealed into a callback token: the 512 characters W3C asks every
/// participant to pass on. A longer one is not sealed (the completion goes without it).
pub const MAX_SEALED_TRACESTATE: usize = 512;

/// `{version}-{trace id}-{parent id}-{flags}`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const LEN: usize = 55;

/// A valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The caller's span: the parent of the gateway's.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller records this trace (and so asks that it be recorded).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header value, version 00.
    pub fn to_header(&self) -> HeaderValue {
        let mut text = [0u8; LEN];
        text[..3].copy_from_slice(b"00-");
        write_hex(&mut text[3..35], self.trace_id.to_be_bytes().as_slice());
        text[35] = b'-';
        write_hex(&mut text[36..52], self.span_id.to_be_bytes().as_slice());
        text[52] = b'-';
        write_hex(&mut text[53..55], &[self.flags]);
        HeaderValue::from_bytes(&text).expect("hex digits and dashes")
    }

    /// The header value as text, for sealing.
    pub fn to_text(&self) -> String {
        String::from_utf8(self.to_header().as_bytes().to_vec()).expect("ASCII")
    }
}

/// The caller's `traceparent`, if there is exactly one and it is valid.
pub fn caller_traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse(value.as_bytes())
}

/// Parses a `traceparent` value. `None` for anything but lower-case hex fields in their places,
/// version `ff`, a version-00 value of another length, or an all-zero trace or parent id. A
/// later version is read by its first four fields, as the specification asks.
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    if value.len() < LEN {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != LEN) {
        return None;
    }
    if value.len() > LEN && value[LEN] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        flags,
    })
}

/// The `tracestate` to seal with an operation: the caller's header values joined as W3C
/// combines them, if printable ASCII and at most [`MAX_SEALED_TRACESTATE`] long.
pub fn tracestate_to_seal(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let text = value.to_str().ok()?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
        if joined.len() > MAX_SEALED_TRACESTATE {
            return None;
        }
    }
    (!joined.is_empty()).then_some(joined)
}

/// Lower-case hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_a_valid_traceparent() {
        let parsed = parse(VALID.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id, 0x00f067aa0ba902b7);
        assert!(parsed.sampled());
        assert_eq!(parsed.to_header(), VALID);
        assert_eq!(parsed.to_text(), VALID);
        let unsampled = parse(VALID.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!unsampled.sampled());
        // A later version: its first four fields, whatever follows a dash.
        let future = format!("{}-what-comes-next", VALID.replacen("00", "cc", 1));
        assert_eq!(parse(future.as_bytes()).unwrap().trace_id, parsed.trace_id);
    }

    #[test]
    fn anything_malformed_is_absent() {
        let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let zero_parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        let too_long = format!("{VALID}-00");
        let later_without_dash = format!("{}x", VALID.replacen("00", "cc", 1));
        for bad in [
            "",
            "00",
            &VALID[..54],
            &too_long,
            &later_without_dash,
            &VALID.replacen("00", "ff", 1),
            &VALID.to_uppercase(),
            &VALID.replace('4', "g"),
            &VALID.replace('-', "_"),
            &VALID.replacen("4bf9", "4bf ", 1),
            &VALID.replacen("4bf9", "+bf9", 1),
            &zero_trace,
            &zero_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0ζ",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
        // Two traceparent headers: which one holds is unknown, so neither does.
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(caller_traceparent(&headers).is_some());
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(caller_traceparent(&headers), None);
        // Not even ASCII.
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_bytes(&[0xff; 55]).unwrap());
        assert_eq!(caller_traceparent(&headers), None);
    }

    #[test]
    fn tracestate_is_sealed_only_within_its_bound() {
        let mut headers = HeaderMap::new();
        assert_eq!(tracestate_to_seal(&headers), None);
        headers.append(TRACESTATE, HeaderValue::from_static("a=1"));
        headers.append(TRACESTATE, HeaderValue::from_static("b=2"));
        assert_eq!(tracestate_to_seal(&headers).as_deref(), Some("a=1,b=2"));
        let long = format!("v={}", "x".repeat(MAX_SEALED_TRACESTATE));
        headers.insert(TRACESTATE, HeaderValue::from_str(&long).unwrap());
        assert_eq!(tracestate_to_seal(&headers), None);
        headers.insert(TRACESTATE, HeaderValue::from_bytes(b"v=\xff").unwrap());
        assert_eq!(tracestate_to_seal(&headers), None);
    }
}
