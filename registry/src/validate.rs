//! Spec validation, following Temporal's rules for Nexus endpoints.
//!
//! Hand-written checks rather than regexes: the rules are tiny and this keeps
//! the dependency tree small.

use std::fmt::Display;

use crate::model::{EndpointSpec, RegistryError, Target};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_NAMESPACE_CHARS: usize = 255;
pub const MAX_TASK_QUEUE_CHARS: usize = 1000;
pub const MAX_URL_CHARS: usize = 4096;
pub const MAX_DESCRIPTION_BYTES: usize = 20_000;
pub const MAX_ALLOWED_CALLERS: usize = 1000;

const NAME_PATTERN: &str = "^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$";
const NAMESPACE_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";
/// Bad values are quoted in messages; long ones are cut to keep errors readable.
const MAX_QUOTED_CHARS: usize = 64;

impl EndpointSpec {
    /// Checks every field; the error names the first bad field, its value and
    /// the rule it breaks.
    pub fn validate(&self) -> Result<(), RegistryError> {
        check_name(&self.name)?;
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(invalid(
                "endpoint description",
                &self.description,
                format_args!(
                    "must be at most {MAX_DESCRIPTION_BYTES} bytes (got {})",
                    self.description.len()
                ),
            ));
        }
        match &self.target {
            Target::Worker {
                namespace,
                task_queue,
            } => {
                if let Some(rule) = namespace_rule(namespace) {
                    return Err(invalid("worker target namespace", namespace, rule));
                }
                let chars = task_queue.chars().count();
                if chars == 0 {
                    return Err(invalid(
                        "worker target taskQueue",
                        task_queue,
                        "must not be empty",
                    ));
                }
                if chars > MAX_TASK_QUEUE_CHARS {
                    return Err(invalid(
                        "worker target taskQueue",
                        task_queue,
                        format_args!(
                            "must be at most {MAX_TASK_QUEUE_CHARS} characters (got {chars})"
                        ),
                    ));
                }
            }
            Target::External { url } => {
                if has_userinfo(url) {
                    // Not quoted: the value holds a secret, and errors are logged and shown.
                    return Err(RegistryError::Invalid(
                        "external target url is invalid: must not carry credentials \
                         (user:password@); the gateway authenticates to targets with its \
                         client certificate"
                            .into(),
                    ));
                }
                if let Some(rule) = url_rule(url) {
                    return Err(invalid("external target url", url, rule));
                }
            }
        }
        let callers = &self.allowed_caller_namespaces;
        if callers.len() > MAX_ALLOWED_CALLERS {
            return Err(RegistryError::Invalid(format!(
                "allowedCallerNamespaces is invalid: must have at most {MAX_ALLOWED_CALLERS} entries (got {})",
                callers.len()
            )));
        }
        for (i, ns) in callers.iter().enumerate() {
            if let Some(rule) = caller_rule(ns) {
                return Err(invalid(
                    format_args!("allowedCallerNamespaces[{i}]"),
                    ns,
                    rule,
                ));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(invalid("endpoint name", name, "must not be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(invalid(
            "endpoint name",
            name,
            format_args!("must be at most {MAX_NAME_CHARS} characters (got {chars})"),
        ));
    }
    let bytes = name.as_bytes();
    let ok = bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(invalid(
            "endpoint name",
            name,
            format_args!("must match {NAME_PATTERN}"),
        ));
    }
    Ok(())
}

/// The rule an allowed caller breaks, if any: a namespace of a certificate caller, or
/// `namespace@cluster` for a namespace of a trusted Temporal cluster.
fn caller_rule(caller: &str) -> Option<String> {
    match caller.split_once('@') {
        None => namespace_rule(caller),
        Some((ns, cluster)) => namespace_rule(ns)
            .or_else(|| namespace_rule(cluster))
            .map(|rule| format!("{rule} (a cluster caller is namespace@cluster)")),
    }
}

/// The rule a namespace name breaks, if any.
pub(crate) fn namespace_rule(ns: &str) -> Option<String> {
    let chars = ns.chars().count();
    if chars == 0 {
        return Some("must not be empty".into());
    }
    if chars > MAX_NAMESPACE_CHARS {
        return Some(format!(
            "must be at most {MAX_NAMESPACE_CHARS} characters (got {chars})"
        ));
    }
    let bytes = ns.as_bytes();
    let ok = bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| format!("must match {NAMESPACE_PATTERN}"))
}

/// The rule an external target URL breaks, if any.
fn url_rule(url: &str) -> Option<String> {
    let chars = url.chars().count();
    if chars == 0 {
        return Some("must not be empty".into());
    }
    if chars > MAX_URL_CHARS {
        return Some(format!(
            "must be at most {MAX_URL_CHARS} characters (got {chars})"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must not contain whitespace or control characters".into());
    }
    let Some(rest) = strip_prefix_ignore_case(url, "http://")
        .or_else(|| strip_prefix_ignore_case(url, "https://"))
    else {
        return Some("must start with http:// or https://".into());
    };
    if url.contains('?') {
        return Some("must not have a query (?...): operations are appended to its path".into());
    }
    if url.contains('#') {
        return Some("must not have a fragment (#...)".into());
    }
    let host_port = rest.split('/').next().unwrap_or_default();
    // IPv6 literals carry colons, so the port starts after the closing bracket.
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, after)) if after.is_empty() || after.starts_with(':') => {
                (host, after.strip_prefix(':'))
            }
            _ => return Some("must have a valid host".into()),
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Some("must have a non-empty host".into());
    }
    let bad_port = port.is_some_and(|p| {
        !p.is_empty() && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
    });
    if bad_port {
        return Some("must have a numeric port of at most 65535".into());
    }
    None
}

/// Whether the URL's authority carries `user[:password]@`.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn invalid(field: impl Display, value: &str, rule: impl Display) -> RegistryError {
    let quoted = match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}", format!("{}…", &value[..cut])),
        None => format!("{value:?}"),
    };
    RegistryError::Invalid(format!("{field} {quoted} is invalid: {rule}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str) -> EndpointSpec {
        EndpointSpec {
            name: name.into(),
            description: String::new(),
            target: Target::Worker {
                namespace: "target-ns".into(),
                task_queue: "tq".into(),
            },
            allowed_caller_namespaces: vec!["caller.ns_1".into()],
        }
    }

    fn external(url: &str) -> EndpointSpec {
        EndpointSpec {
            target: Target::External { url: url.into() },
            ..worker("ext")
        }
    }

    fn message(spec: &EndpointSpec) -> String {
        match spec.validate() {
            Err(RegistryError::Invalid(msg)) => msg,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_specs_pass() {
        for name in ["ab", "a1", "my-endpoint", "A-b-C-9"] {
            worker(name).validate().unwrap();
        }
        worker(&"a".repeat(200)).validate().unwrap();
        for url in [
            "http://h",
            "https://example.com:8443/base",
            "HTTPS://example.com",
            "http://[::1]:7243",
            "http://host:",
        ] {
            external(url).validate().unwrap();
        }
        let mut spec = worker("ok");
        spec.allowed_caller_namespaces.clear();
        spec.validate().unwrap();
    }

    #[test]
    fn target_urls_carry_no_credentials_query_or_fragment() {
        let m = message(&external("https://user:s3cret@example.com/x"));
        assert!(m.contains("must not carry credentials"), "{m}");
        assert!(!m.contains("s3cret"), "{m}");
        assert_eq!(
            message(&external("https://example.com/x?y=1")),
            r#"external target url "https://example.com/x?y=1" is invalid: must not have a query (?...): operations are appended to its path"#
        );
        assert_eq!(
            message(&external("https://example.com/x#f")),
            r#"external target url "https://example.com/x#f" is invalid: must not have a fragment (#...)"#
        );
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            message(&worker("1x")),
            r#"endpoint name "1x" is invalid: must match ^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$"#
        );
        for bad in ["a", "a-", "-a", "a_b", "a b", "añb"] {
            assert!(message(&worker(bad)).contains("must match"), "{bad}");
        }
        assert_eq!(
            message(&worker("")),
            r#"endpoint name "" is invalid: must not be empty"#
        );
        let msg = message(&worker(&"a".repeat(201)));
        assert!(
            msg.ends_with("must be at most 200 characters (got 201)"),
            "{msg}"
        );
        // The value is quoted but cut short.
        assert!(msg.contains(&format!("\"{}…\"", "a".repeat(64))), "{msg}");
    }

    #[test]
    fn description_limit() {
        let mut spec = worker("ok");
        spec.description = "d".repeat(20_000);
        spec.validate().unwrap();
        spec.description.push('d');
        let msg = message(&spec);
        assert!(msg.starts_with("endpoint description \"ddd"), "{msg}");
        assert!(
            msg.ends_with("must be at most 20000 bytes (got 20001)"),
            "{msg}"
        );
    }

    #[test]
    fn worker_target_rules() {
        let with = |namespace: &str, task_queue: &str| EndpointSpec {
            target: Target::Worker {
                namespace: namespace.into(),
                task_queue: task_queue.into(),
            },
            ..worker("ok")
        };
        assert_eq!(
            message(&with("", "tq")),
            r#"worker target namespace "" is invalid: must not be empty"#
        );
        assert_eq!(
            message(&with("bad ns", "tq")),
            r#"worker target namespace "bad ns" is invalid: must match ^[A-Za-z0-9][A-Za-z0-9._-]*$"#
        );
        assert!(message(&with(".ns", "tq")).contains("must match"));
        assert!(
            message(&with(&"n".repeat(256), "tq")).ends_with("at most 255 characters (got 256)")
        );
        with(&"n".repeat(255), "tq").validate().unwrap();
        assert_eq!(
            message(&with("ns", "")),
            r#"worker target taskQueue "" is invalid: must not be empty"#
        );
        with("ns", &"q".repeat(1000)).validate().unwrap();
        assert!(
            message(&with("ns", &"q".repeat(1001)))
                .ends_with("must be at most 1000 characters (got 1001)")
        );
    }

    #[test]
    fn external_target_rules() {
        assert_eq!(
            message(&external("")),
            r#"external target url "" is invalid: must not be empty"#
        );
        assert_eq!(
            message(&external("ftp://h")),
            r#"external target url "ftp://h" is invalid: must start with http:// or https://"#
        );
        for no_host in ["http://", "https:///path", "http://:80"] {
            assert!(
                message(&external(no_host)).ends_with("must have a non-empty host"),
                "{no_host}"
            );
        }
        assert!(
            message(&external("http://a b"))
                .ends_with("must not contain whitespace or control characters")
        );
        assert!(message(&external("http://h:port")).ends_with("numeric port of at most 65535"));
        assert!(message(&external("http://[::1")).ends_with("must have a valid host"));
        let long = format!("https://h/{}", "p".repeat(4096 - 10));
        external(&long).validate().unwrap();
        assert!(
            message(&external(&format!("{long}p")))
                .ends_with("must be at most 4096 characters (got 4097)")
        );
    }

    #[test]
    fn allowed_caller_rules() {
        let mut spec = worker("ok");
        spec.allowed_caller_namespaces = vec!["good".into(), "bad/ns".into()];
        assert_eq!(
            message(&spec),
            r#"allowedCallerNamespaces[1] "bad/ns" is invalid: must match ^[A-Za-z0-9][A-Za-z0-9._-]*$"#
        );
        spec.allowed_caller_namespaces = vec![String::new()];
        assert_eq!(
            message(&spec),
            r#"allowedCallerNamespaces[0] "" is invalid: must not be empty"#
        );
        spec.allowed_caller_namespaces = (0..1000).map(|i| format!("ns{i}")).collect();
        spec.validate().unwrap();
        spec.allowed_caller_namespaces.push("one-more".into());
        assert_eq!(
            message(&spec),
            "allowedCallerNamespaces is invalid: must have at most 1000 entries (got 1001)"
        );
    }
}
