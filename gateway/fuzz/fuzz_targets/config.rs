//! Arbitrary UTF-8 as a configuration file: `config_file::parse` must report problems, never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `[upstream] ca` makes `parse` read that file, unbounded. Keep the fuzzer away from special
/// files (`/dev/zero`, `/dev/stdin`, FIFOs) and big files: only missing paths and small regular
/// files are read. That is a limit of the harness, not of the parser under test.
fn reads_something_unsafe(text: &str) -> bool {
    let Ok(root) = text.parse::<toml::Table>() else {
        return false;
    };
    let Some(ca) = root
        .get("upstream")
        .and_then(|u| u.as_table())
        .and_then(|u| u.get("ca"))
        .and_then(|ca| ca.as_str())
    else {
        return false;
    };
    match std::fs::metadata(ca) {
        Ok(m) => !m.is_file() || m.len() > 1 << 20,
        Err(_) => false,
    }
}

fuzz_target!(|text: &str| {
    if reads_something_unsafe(text) {
        return;
    }
    let _ = nexus_gateway::config_file::parse(text);
});
