//! Arbitrary `name: value` lines as a header map through the timeout parser and the relay
//! filter: nothing may panic, and no hop-by-hop, credential or gateway-internal header may be
//! relayed.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nexus_gateway::nexus::{copy_relayed, parse_duration, request_timeout};

const NEVER_RELAYED: [&str; 10] = [
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
    "authorization",
    "nexus-caller-namespace",
];

/// Every parsed duration is below 10^12 ms.
const BOUND: Duration = Duration::from_millis(1_000_000_000_000);

fn check_duration(value: &str) {
    if let Some(d) = parse_duration(value) {
        assert!(
            d < BOUND,
            "parse_duration({value:?}) = {d:?}, past the 1e12 ms bound"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        map.append(name, value);
    }

    let timeout = request_timeout(&map);
    if let Ok(Some(d)) = timeout {
        assert!(d < BOUND, "request_timeout = {d:?}");
    }
    for value in map.values() {
        if let Ok(v) = value.to_str() {
            check_duration(v);
        }
    }
    // The raw input as one value too, so the duration grammar is fuzzed directly.
    if let Ok(v) = std::str::from_utf8(data) {
        check_duration(v);
    }

    let mut out = HeaderMap::new();
    copy_relayed(&map, &mut out);
    let listed: Vec<HeaderName> = map
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in out.keys() {
        let n = name.as_str();
        assert!(!NEVER_RELAYED.contains(&n), "{n} was relayed");
        assert!(!n.starts_with("nexus-task-"), "{n} was relayed");
        assert!(!n.starts_with("proxy-"), "{n} was relayed");
        assert!(
            !listed.contains(name),
            "{n} is listed in Connection but was relayed"
        );
        assert!(map.contains_key(name), "{n} appeared from nowhere");
    }
    // Whatever is relayed keeps all its values, in order.
    for name in out.keys() {
        let a: Vec<_> = map.get_all(name).iter().collect();
        let b: Vec<_> = out.get_all(name).iter().collect();
        assert_eq!(a, b, "values of {name} changed");
    }
});
