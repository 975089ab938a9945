//! Arbitrary bytes as a request path (and query after the first `?`) through the Nexus path
//! parser: it must never panic, and a parsed path must satisfy the router's invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_gateway::nexus::{MAX_NAME_LEN, decode_segment, parse_operation_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };

    for segment in path.split('/') {
        if let Ok(decoded) = decode_segment(segment, "segment") {
            assert!(!decoded.is_empty(), "decoded {segment:?} to an empty name");
            assert!(
                decoded.len() <= MAX_NAME_LEN,
                "decoded {segment:?} past the limit"
            );
        }
    }

    if let Ok(p) = parse_operation_path(path, query) {
        assert!(
            p.below_prefix.starts_with('/'),
            "below_prefix {:?} of {path:?} does not start with '/'",
            p.below_prefix
        );
        for (what, name) in [
            ("endpoint", &p.endpoint),
            ("service", &p.service),
            ("operation", &p.operation),
        ] {
            assert!(!name.is_empty(), "empty {what} from {path:?}");
            assert!(name.len() <= MAX_NAME_LEN, "{what} of {path:?} is too long");
        }
        // What the handler sees below its prefix is the raw service/operation suffix of the
        // request path, plus the query.
        assert!(path.ends_with(p.below_prefix.split('?').next().unwrap()));
        if let Some(q) = query {
            assert!(p.below_prefix.ends_with(q));
        }
    }
});
