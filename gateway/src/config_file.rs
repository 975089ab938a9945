//! The TOML configuration file of `nexus-gateway serve --config FILE`. Every setting is
//! optional and defaults as documented in [`EXAMPLE`]; a bad file is refused with every problem
//! listed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::callback_policy::AllowedCallback;

use nexus_outbound_queue::LaneSettings;

use crate::config::Config;

/// A complete configuration file with every default; `nexus-gateway config example` prints it.
pub const EXAMPLE: &str = include_str!("config_example.toml");

/// A parsed configuration file: a [`Config`] without the loaded TLS material.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub config: Config,
    pub tls: Option<nexus_certs::TlsFiles>,
}

/// Placeholder until the TLS files are loaded (they may come from flags instead).
fn no_tls() -> nexus_certs::TlsMaterial {
    nexus_certs::TlsMaterial {
        ca: Vec::new(),
        chain: Vec::new(),
        key: nexus_certs::PrivateKeyDer::Pkcs8(Vec::new().into()),
    }
}

/// Reads values of one table, recording every problem instead of stopping at the first.
struct Reader<'a> {
    problems: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn section<'t>(
        &mut self,
        root: &'t toml::Table,
        name: &str,
        known: &[&str],
    ) -> Option<&'t toml::Table> {
        let value = root.get(name)?;
        let Some(table) = value.as_table() else {
            self.problems.push(format!("[{name}] must be a table"));
            return None;
        };
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.problems.push(format!(
                    "[{name}] has unknown setting {key:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        Some(table)
    }

    fn parse<T>(
        &mut self,
        table: Option<&toml::Table>,
        section: &str,
        key: &str,
        into: &mut T,
        parse: impl Fn(&toml::Value) -> Result<T, String>,
    ) {
        let Some(value) = table.and_then(|t| t.get(key)) else {
            return;
        };
        match parse(value) {
            Ok(v) => *into = v,
            Err(why) => self.problems.push(format!("[{section}] {key}: {why}")),
        }
    }
}

fn string(v: &toml::Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {}", v.type_str()))
}

fn duration(v: &toml::Value) -> Result<Duration, String> {
    let s = string(v)?;
    humantime::parse_duration(&s)
        .map_err(|e| format!("{s:?} is not a duration like \"30s\" or \"5m\" ({e})"))
}

/// `[{ host = "*.example.com", allow_insecure = false }, ...]`
fn allowed_callbacks(v: &toml::Value) -> Result<Vec<AllowedCallback>, String> {
    let shape = "expected a list like [{ host = \"*.example.com\", allow_insecure = false }]";
    let list = v.as_array().ok_or(shape)?;
    list.iter()
        .map(|entry| {
            let table = entry.as_table().ok_or(shape)?;
            if let Some(unknown) = table
                .keys()
                .find(|k| !matches!(k.as_str(), "host" | "allow_insecure"))
            {
                return Err(format!(
                    "unknown key {unknown:?} in an entry (host, allow_insecure)"
                ));
            }
            let host = table
                .get("host")
                .and_then(|h| h.as_str())
                .ok_or("every entry needs host = \"pattern[:port]\"")?;
            let insecure = match table.get("allow_insecure") {
                None => false,
                Some(b) => b.as_bool().ok_or("allow_insecure must be true or false")?,
            };
            AllowedCallback::parse(host, insecure).map_err(|e| e.to_string())
        })
        .collect()
}

/// A duration where zero makes no sense (a timeout, an interval, an expiry).
fn nonzero_duration(v: &toml::Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn positive(v: &toml::Value) -> Result<usize, String> {
    match v.as_integer() {
        Some(n) if n > 0 => Ok(n as usize),
        Some(n) => Err(format!("must be positive, got {n}")),
        None => Err(format!("expected an integer, got {}", v.type_str())),
    }
}

fn non_negative(v: &toml::Value) -> Result<u32, String> {
    match v.as_integer() {
        Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(n as u32),
        Some(n) => Err(format!("must be between 0 and {}, got {n}", u32::MAX)),
        None => Err(format!("expected an integer, got {}", v.type_str())),
    }
}

fn address(v: &toml::Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like \"127.0.0.1:7443\""))
}

fn lane(reader: &mut Reader, table: Option<&toml::Table>, section: &str, into: &mut LaneSettings) {
    reader.parse(table, section, "buffer", &mut into.buffer, |v| {
        non_negative(v).map(|n| n as usize)
    });
    reader.parse(
        table,
        section,
        "concurrency",
        &mut into.concurrency,
        positive,
    );
    reader.parse(
        table,
        section,
        "rate_per_second",
        &mut into.rate_per_second,
        non_negative,
    );
    reader.parse(
        table,
        section,
        "breaker_failure_threshold",
        &mut into.breaker.failure_threshold,
        non_negative,
    );
    reader.parse(
        table,
        section,
        "breaker_open_for",
        &mut into.breaker.open_for,
        nonzero_duration,
    );
}

const LANE_KEYS: [&str; 5] = [
    "buffer",
    "concurrency",
    "rate_per_second",
    "breaker_failure_threshold",
    "breaker_open_for",
];

fn inbound(r: &mut Reader, root: &toml::Table, into: &mut crate::inbound::InboundSettings) {
    let keys = [
        "per_caller_rate",
        "per_caller_burst",
        "per_endpoint_rate",
        "per_endpoint_burst",
        "per_caller_endpoint_rate",
        "per_caller_endpoint_burst",
        "max_concurrent_per_caller",
        "push_back",
        "callers",
        "endpoints",
    ];
    let t = r.section(root, "inbound", &keys);
    r.parse(
        t,
        "inbound",
        "per_caller_rate",
        &mut into.per_caller.per_second,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "per_caller_burst",
        &mut into.per_caller.burst,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "per_endpoint_rate",
        &mut into.per_endpoint.per_second,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "per_endpoint_burst",
        &mut into.per_endpoint.burst,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "per_caller_endpoint_rate",
        &mut into.per_caller_endpoint.per_second,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "per_caller_endpoint_burst",
        &mut into.per_caller_endpoint.burst,
        non_negative,
    );
    r.parse(
        t,
        "inbound",
        "max_concurrent_per_caller",
        &mut into.max_concurrent_per_caller,
        positive,
    );
    r.parse(t, "inbound", "push_back", &mut into.push_back, duration);
    for (group, is_callers) in [("callers", true), ("endpoints", false)] {
        let Some(value) = t.and_then(|t| t.get(group)) else {
            continue;
        };
        let Some(table) = value.as_table() else {
            r.problems
                .push(format!("[inbound] {group} must be a table of tables"));
            continue;
        };
        for (name, value) in table {
            let section = format!("inbound.{group}.{name:?}");
            let Some(o) = value.as_table() else {
                r.problems.push(format!("[{section}] must be a table"));
                continue;
            };
            let known: &[&str] = if is_callers {
                &["rate", "burst", "max_concurrent"]
            } else {
                &["rate", "burst"]
            };
            for k in o.keys().filter(|k| !known.contains(&k.as_str())) {
                r.problems
                    .push(format!("[{section}] has unknown setting {k:?}"));
            }
            let mut rate = if is_callers {
                into.per_caller
            } else {
                into.per_endpoint
            };
            r.parse(
                Some(o),
                &section,
                "rate",
                &mut rate.per_second,
                non_negative,
            );
            r.parse(Some(o), &section, "burst", &mut rate.burst, non_negative);
            if is_callers {
                into.caller_overrides.insert(name.clone(), rate);
                if o.contains_key("max_concurrent") {
                    let mut max = into.max_concurrent_per_caller;
                    r.parse(Some(o), &section, "max_concurrent", &mut max, positive);
                    into.concurrent_overrides.insert(name.clone(), max);
                }
            } else {
                into.endpoint_overrides.insert(name.clone(), rate);
            }
        }
    }
}

/// Parses a configuration file's text. On failure, returns every problem found.
pub fn parse(text: &str) -> Result<FileConfig, Vec<String>> {
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let mut r = Reader {
        problems: &mut problems,
    };
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            r.problems.push(format!("unknown section [{key}]"));
        }
    }
    let mut config = Config::new(no_tls(), PathBuf::from("data"));
    server(&mut r, &root, &mut config);
    let tls = tls(&mut r, &root, &mut config);
    limits(&mut r, &root, &mut config);
    matching(&mut r, &root, &mut config);
    inbound(&mut r, &root, &mut config.inbound);
    let upstream_ca = upstream(&mut r, &root, &mut config);
    outbound(&mut r, &root, &mut config);
    callbacks(&mut r, &root, &mut config);
    attribution(&mut r, &root, &mut config);
    store(&mut r, &root, &mut config);
    console(&mut r, &root, &mut config);
    tracing(&mut r, &root, &mut config.tracing);
    if let Some(path) = upstream_ca {
        match nexus_certs::load_certs(&path) {
            Ok(certs) => config.upstream.ca = Some(certs),
            Err(e) => problems.push(format!("[upstream] ca: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(FileConfig { config, tls })
    } else {
        Err(problems)
    }
}

const SECTIONS: [&str; 12] = [
    "server",
    "tls",
    "limits",
    "matching",
    "inbound",
    "upstream",
    "outbound",
    "callbacks",
    "attribution",
    "store",
    "console",
    "tracing",
];

/// `[server]`: addresses, data directory, public URL, trust domain, grace.
fn server(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let s = r.section(
        root,
        "server",
        &[
            "listen",
            "ops_listen",
            "data_dir",
            "public_url",
            "trust_domain",
            "shutdown_grace",
        ],
    );
    r.parse(s, "server", "listen", &mut config.listen, address);
    r.parse(s, "server", "ops_listen", &mut config.ops_listen, address);
    r.parse(s, "server", "data_dir", &mut config.data_dir, |v| {
        string(v).map(PathBuf::from)
    });
    r.parse(s, "server", "public_url", &mut config.public_url, |v| {
        let url = string(v)?;
        if url.is_empty() {
            return Ok(None);
        }
        match url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => Ok(Some(url)),
            _ => Err(format!("{url:?} is not an https:// URL")),
        }
    });
    r.parse(s, "server", "trust_domain", &mut config.trust_domain, |v| {
        let td = string(v)?;
        nexus_certs::validate_trust_domain(&td).map(|()| td)
    });
    r.parse(
        s,
        "server",
        "shutdown_grace",
        &mut config.shutdown_grace,
        duration,
    );
}

/// `[store]`: the shared PostgreSQL store of replicas; empty `url` is the embedded store.
fn store(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let t = r.section(root, "store", &["url", "ca", "resync_interval", "lease"]);
    r.parse(
        t,
        "store",
        "lease",
        &mut config.store.lease,
        nonzero_duration,
    );
    r.parse(t, "store", "url", &mut config.store.url, |v| {
        let url = string(v)?;
        if url.is_empty() {
            return Ok(None);
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("expected a postgres:// URL (or empty for the embedded store)".into());
        }
        Ok(Some(url))
    });
    r.parse(t, "store", "ca", &mut config.store.ca, |v| {
        let path = string(v)?;
        Ok((!path.is_empty()).then(|| PathBuf::from(path)))
    });
    r.parse(
        t,
        "store",
        "resync_interval",
        &mut config.store.resync_interval,
        nonzero_duration,
    );
}

/// `[tls]`: the certificate files, all three or none.
fn tls(r: &mut Reader, root: &toml::Table, config: &mut Config) -> Option<nexus_certs::TlsFiles> {
    let t = r.section(
        root,
        "tls",
        &["ca", "cert", "key", "reload_interval", "client_certificate"],
    );
    r.parse(
        t,
        "tls",
        "client_certificate",
        &mut config.client_auth,
        client_auth,
    );
    let (mut ca, mut cert, mut key) = (String::new(), String::new(), String::new());
    r.parse(t, "tls", "ca", &mut ca, string);
    r.parse(t, "tls", "cert", &mut cert, string);
    r.parse(t, "tls", "key", &mut key, string);
    r.parse(
        t,
        "tls",
        "reload_interval",
        &mut config.tls_reload_interval,
        nonzero_duration,
    );
    match (ca.is_empty(), cert.is_empty(), key.is_empty()) {
        (true, true, true) => None,
        (false, false, false) => Some(nexus_certs::TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }),
        _ => {
            r.problems
                .push("[tls] ca, cert and key go together: set all three".into());
            None
        }
    }
}

fn client_auth(v: &toml::Value) -> Result<nexus_certs::ClientAuth, String> {
    match string(v)?.as_str() {
        "optional" => Ok(nexus_certs::ClientAuth::Optional),
        "required" => Ok(nexus_certs::ClientAuth::Required),
        other => Err(format!("{other:?}: expected optional or required")),
    }
}

/// `[limits]`: input sizes and read timeouts.
fn limits(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let l = r.section(
        root,
        "limits",
        &[
            "max_body_bytes",
            "handshake_timeout",
            "header_read_timeout",
            "body_read_timeout",
            "max_headers",
            "max_header_bytes",
        ],
    );
    let limits = &mut config.limits;
    r.parse(
        l,
        "limits",
        "max_body_bytes",
        &mut limits.max_body_bytes,
        positive,
    );
    r.parse(
        l,
        "limits",
        "handshake_timeout",
        &mut limits.handshake_timeout,
        nonzero_duration,
    );
    r.parse(
        l,
        "limits",
        "header_read_timeout",
        &mut limits.header_read_timeout,
        nonzero_duration,
    );
    r.parse(
        l,
        "limits",
        "body_read_timeout",
        &mut limits.body_read_timeout,
        nonzero_duration,
    );
    r.parse(
        l,
        "limits",
        "max_headers",
        &mut limits.max_headers,
        positive,
    );
    r.parse(
        l,
        "limits",
        "max_header_bytes",
        &mut limits.max_header_bytes,
        positive,
    );
}

/// `[matching]`: task queue waits.
fn matching(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let m = r.section(
        root,
        "matching",
        &[
            "max_waiting_tasks",
            "deadline_buffer",
            "default_request_timeout",
            "max_poll",
        ],
    );
    let matching = &mut config.matching;
    r.parse(
        m,
        "matching",
        "max_waiting_tasks",
        &mut matching.max_waiting_tasks,
        positive,
    );
    r.parse(
        m,
        "matching",
        "deadline_buffer",
        &mut matching.deadline_buffer,
        duration,
    );
    r.parse(
        m,
        "matching",
        "default_request_timeout",
        &mut matching.default_request_timeout,
        nonzero_duration,
    );
    r.parse(
        m,
        "matching",
        "max_poll",
        &mut matching.max_poll,
        nonzero_duration,
    );
}

/// `[upstream]`: how external targets are reached; the path of the upstream CA, if set.
fn upstream(r: &mut Reader, root: &toml::Table, config: &mut Config) -> Option<PathBuf> {
    let u = r.section(root, "upstream", &["ca", "plain_http"]);
    let mut upstream_ca = String::new();
    r.parse(u, "upstream", "ca", &mut upstream_ca, string);
    r.parse(
        u,
        "upstream",
        "plain_http",
        &mut config.upstream.plain_http,
        |v| string(v)?.parse(),
    );
    (!upstream_ca.is_empty()).then(|| PathBuf::from(upstream_ca))
}

/// `[outbound]`: lane defaults and per-destination overrides.
fn outbound(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let mut keys: Vec<&str> = LANE_KEYS.to_vec();
    keys.extend(["idle_timeout", "destinations"]);
    let o = r.section(root, "outbound", &keys);
    lane(r, o, "outbound", &mut config.outbound.defaults);
    r.parse(
        o,
        "outbound",
        "idle_timeout",
        &mut config.outbound.idle_timeout,
        nonzero_duration,
    );
    let mut per_destination = HashMap::new();
    if let Some(destinations) = o.and_then(|o| o.get("destinations")) {
        match destinations.as_table() {
            Some(table) => {
                for (host, value) in table {
                    let section = format!("outbound.destinations.{host:?}");
                    let mut settings = config.outbound.defaults.clone();
                    match value.as_table() {
                        Some(t) => {
                            for k in t.keys().filter(|k| !LANE_KEYS.contains(&k.as_str())) {
                                r.problems
                                    .push(format!("[{section}] has unknown setting {k:?}"));
                            }
                            lane(r, Some(t), &section, &mut settings);
                        }
                        None => r.problems.push(format!("[{section}] must be a table")),
                    }
                    per_destination.insert(host.clone(), settings);
                }
            }
            None => r
                .problems
                .push("[outbound] destinations must be a table of host:port tables".into()),
        }
    }
    config.outbound.per_destination = per_destination;
}

/// `[callbacks]`: expiry, delivery attempts and allowed addresses.
fn callbacks(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let c = r.section(
        root,
        "callbacks",
        &[
            "expiry",
            "attempt_timeout",
            "backoff_initial",
            "backoff_max",
            "allowed",
        ],
    );
    let callbacks = &mut config.callbacks;
    r.parse(
        c,
        "callbacks",
        "allowed",
        &mut callbacks.allowed,
        allowed_callbacks,
    );
    r.parse(
        c,
        "callbacks",
        "expiry",
        &mut callbacks.expiry,
        nonzero_duration,
    );
    r.parse(
        c,
        "callbacks",
        "attempt_timeout",
        &mut callbacks.attempt_timeout,
        nonzero_duration,
    );
    r.parse(
        c,
        "callbacks",
        "backoff_initial",
        &mut callbacks.backoff.initial,
        nonzero_duration,
    );
    r.parse(
        c,
        "callbacks",
        "backoff_max",
        &mut callbacks.backoff.max,
        nonzero_duration,
    );
}

fn boolean(v: &toml::Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, got {}", v.type_str()))
}

/// `[console]`: whether the operator console is served, and may change things from the ops port.
fn console(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let c = r.section(root, "console", &["enabled", "writable"]);
    r.parse(
        c,
        "console",
        "enabled",
        &mut config.console.enabled,
        boolean,
    );
    r.parse(
        c,
        "console",
        "writable",
        &mut config.console.writable,
        boolean,
    );
}

/// `[tracing]`: where spans are exported, and how many requests are traced.
fn tracing(r: &mut Reader, root: &toml::Table, into: &mut crate::config::TracingSettings) {
    let t = r.section(
        root,
        "tracing",
        &[
            "otlp_endpoint",
            "sampling_ratio",
            "service_name",
            "export_interval",
        ],
    );
    r.parse(
        t,
        "tracing",
        "otlp_endpoint",
        &mut into.otlp_endpoint,
        |v| {
            let url = string(v)?;
            if url.is_empty() {
                return Ok(None);
            }
            crate::config::otlp_traces_url(&url).map(Some)
        },
    );
    r.parse(
        t,
        "tracing",
        "sampling_ratio",
        &mut into.sampling_ratio,
        |v| {
            let ratio = match v {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(n) => *n as f64,
                other => return Err(format!("expected a number, got {}", other.type_str())),
            };
            if (0.0..=1.0).contains(&ratio) {
                Ok(ratio)
            } else {
                Err(format!("must be between 0.0 and 1.0, got {ratio}"))
            }
        },
    );
    r.parse(t, "tracing", "service_name", &mut into.service_name, |v| {
        let name = string(v)?;
        if name.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(name)
    });
    r.parse(
        t,
        "tracing",
        "export_interval",
        &mut into.export_interval,
        nonzero_duration,
    );
}

/// `[attribution]`: the log's durability, segments and retention.
fn attribution(r: &mut Reader, root: &toml::Table, config: &mut Config) {
    let a = r.section(
        root,
        "attribution",
        &[
            "enabled",
            "durability",
            "fsync_interval",
            "segment_max_bytes",
            "segment_max_age",
            "retention_max_age",
            "retention_max_bytes",
        ],
    );
    let attribution = &mut config.attribution;
    r.parse(
        a,
        "attribution",
        "enabled",
        &mut config.attribution_enabled,
        |v| {
            v.as_bool()
                .ok_or_else(|| format!("expected true or false, got {}", v.type_str()))
        },
    );
    r.parse(
        a,
        "attribution",
        "durability",
        &mut attribution.durability,
        |v| string(v)?.parse(),
    );
    r.parse(
        a,
        "attribution",
        "fsync_interval",
        &mut attribution.fsync_interval,
        nonzero_duration,
    );
    r.parse(
        a,
        "attribution",
        "segment_max_bytes",
        &mut attribution.segment_max_bytes,
        |v| positive(v).map(|n| n as u64),
    );
    r.parse(
        a,
        "attribution",
        "segment_max_age",
        &mut attribution.segment_max_age,
        nonzero_duration,
    );
    r.parse(
        a,
        "attribution",
        "retention_max_age",
        &mut attribution.retention_max_age,
        |v| nonzero_duration(v).map(Some),
    );
    r.parse(
        a,
        "attribution",
        "retention_max_bytes",
        &mut attribution.retention_max_bytes,
        |v| positive(v).map(|n| Some(n as u64)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_to_the_defaults() {
        let parsed = parse(EXAMPLE).unwrap().config;
        let defaults = Config::new(no_tls(), PathBuf::from("data"));
        assert_eq!(
            format!("{:?}", parsed.limits),
            format!("{:?}", defaults.limits)
        );
        assert_eq!(
            format!("{:?}", parsed.matching),
            format!("{:?}", defaults.matching)
        );
        assert_eq!(
            format!("{:?}", parsed.outbound.defaults),
            format!("{:?}", defaults.outbound.defaults)
        );
        assert_eq!(parsed.outbound.idle_timeout, defaults.outbound.idle_timeout);
        assert_eq!(
            format!("{:?}", parsed.callbacks),
            format!("{:?}", defaults.callbacks)
        );
        assert_eq!(
            (parsed.listen, parsed.ops_listen),
            (defaults.listen, defaults.ops_listen)
        );
        assert_eq!(parsed.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(parsed.tls_reload_interval, defaults.tls_reload_interval);
        assert_eq!(parsed.trust_domain, defaults.trust_domain);
        assert_eq!(parsed.upstream.plain_http, defaults.upstream.plain_http);
        assert_eq!(
            format!("{:?}", parsed.inbound),
            format!("{:?}", defaults.inbound)
        );
        assert_eq!(
            format!("{:?}", parsed.attribution),
            format!("{:?}", defaults.attribution)
        );
        assert_eq!(parsed.attribution_enabled, defaults.attribution_enabled);
        assert_eq!(parsed.console, defaults.console);
        assert_eq!(parsed.tracing, defaults.tracing);
    }

    #[test]
    fn the_tracing_section_parses() {
        let parsed = parse(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsampling_ratio = 1\nservice_name = \"gw-east\"\nexport_interval = \"200ms\"\n",
        )
        .unwrap()
        .config
        .tracing;
        assert_eq!(
            parsed.otlp_endpoint.unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(parsed.sampling_ratio, 1.0);
        assert_eq!(parsed.service_name, "gw-east");
        assert_eq!(parsed.export_interval, Duration::from_millis(200));
        // A path is the collector's own: used as it is.
        let parsed =
            parse("[tracing]\notlp_endpoint = \"https://otel.example:443/custom/traces\"\n")
                .unwrap()
                .config
                .tracing;
        assert_eq!(
            parsed.otlp_endpoint.unwrap().to_string(),
            "https://otel.example:443/custom/traces"
        );
    }

    #[test]
    fn the_console_section_parses() {
        let parsed = parse("[console]\nwritable = true\n").unwrap().config;
        assert!(parsed.console.enabled && parsed.console.writable);
        let problems = parse("[console]\nwritable = \"yes\"\nopen = true\n").unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p == "[console] writable: expected true or false, got string"),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("\"open\"")),
            "{problems:?}"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let text = r#"
            [server]
            listen = "nowhere"
            shutdown_grace = "soon"
            colour = "blue"
            [limits]
            max_body_bytes = -1
            [tls]
            ca = "ca.pem"
            [outbound.destinations."h:443"]
            concurrency = 0
            [extras]
        "#;
        let problems = parse(text).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "[server] listen",
            "[server] shutdown_grace",
            "colour",
            "[limits] max_body_bytes",
            "[tls] ca, cert and key go together",
            "concurrency: must be positive",
            "unknown section [extras]",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn zero_durations_that_make_no_sense_are_refused() {
        let text = r#"
            [server]
            shutdown_grace = "0s"
            [tls]
            reload_interval = "0s"
            [limits]
            handshake_timeout = "0s"
            header_read_timeout = "0s"
            body_read_timeout = "0s"
            [matching]
            default_request_timeout = "0s"
            max_poll = "0s"
            deadline_buffer = "0s"
            [outbound]
            idle_timeout = "0s"
            breaker_open_for = "0s"
            [callbacks]
            expiry = "0s"
            attempt_timeout = "0s"
            backoff_initial = "0s"
            backoff_max = "0s"
            [attribution]
            fsync_interval = "0s"
            segment_max_age = "0s"
            retention_max_age = "0s"
            [inbound]
            push_back = "0s"
            [tracing]
            export_interval = "0s"
        "#;
        let problems = parse(text).unwrap_err();
        let refused: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.strip_suffix(": must be longer than zero"))
            .collect();
        assert_eq!(
            refused,
            [
                "[tls] reload_interval",
                "[limits] handshake_timeout",
                "[limits] header_read_timeout",
                "[limits] body_read_timeout",
                "[matching] default_request_timeout",
                "[matching] max_poll",
                "[outbound] breaker_open_for",
                "[outbound] idle_timeout",
                "[callbacks] expiry",
                "[callbacks] attempt_timeout",
                "[callbacks] backoff_initial",
                "[callbacks] backoff_max",
                "[attribution] fsync_interval",
                "[attribution] segment_max_age",
                "[attribution] retention_max_age",
                "[tracing] export_interval",
            ],
            "{problems:#?}"
        );
        // Zero grace (stop at once), no deadline buffer and no push-back stay meaningful.
        assert_eq!(problems.len(), refused.len(), "{problems:#?}");
    }

    #[test]
    fn overrides_apply_per_destination() {
        let parsed = parse("[outbound]\nconcurrency = 50\n[outbound.destinations.\"slow.internal:443\"]\nconcurrency = 5\n").unwrap();
        let lanes = &parsed.config.outbound;
        assert_eq!(lanes.defaults.concurrency, 50);
        assert_eq!(lanes.per_destination["slow.internal:443"].concurrency, 5);
        assert_eq!(lanes.per_destination["slow.internal:443"].buffer, 100);
    }

    #[test]
    fn inbound_overrides_parse() {
        let parsed = parse("[inbound.callers.\"batch\"]\nrate = 5\nmax_concurrent = 2\n[inbound.endpoints.\"hot\"]\nburst = 9\n").unwrap();
        let inbound = &parsed.config.inbound;
        assert_eq!(inbound.caller_overrides["batch"].per_second, 5);
        assert_eq!(inbound.concurrent_overrides["batch"], 2);
        assert_eq!(inbound.endpoint_overrides["hot"].burst, 9);
        assert_eq!(inbound.endpoint_overrides["hot"].per_second, 2000);
    }

    #[test]
    fn toml_syntax_errors_are_reported() {
        let problems = parse("[server\nlisten=").unwrap_err();
        assert_eq!(problems.len(), 1);
    }
}
