//! The endpoint model, its JSON shape and the error type.

use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

/// A Nexus endpoint as stored and as returned by the admin API.
///
/// The JSON shape follows Temporal's operator API (`OperatorService` Nexus
/// endpoints), plus `allowedCallerNamespaces`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    /// Bumped on every update; writers must present the current one.
    #[serde(deserialize_with = "deserialize_version")]
    pub version: u64,
    /// RFC 3339 UTC, millisecond precision.
    pub created_time: String,
    /// RFC 3339 UTC, millisecond precision.
    pub last_modified_time: String,
    /// `/nexus/endpoints/{id}/services`, see [`url_prefix`].
    pub url_prefix: String,
    pub spec: EndpointSpec,
}

impl Endpoint {
    /// Whether a caller in `namespace` may use this endpoint. An empty list
    /// allows nobody: access must be granted explicitly.
    pub fn allows_caller(&self, namespace: &str) -> bool {
        self.spec
            .allowed_caller_namespaces
            .iter()
            .any(|allowed| allowed == namespace)
    }
}

/// The admin-supplied part of an endpoint. Unknown fields are refused: a typo such as
/// `allowedCallerNamespace` would otherwise create an endpoint that allows nobody.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub target: Target,
    #[serde(default)]
    pub allowed_caller_namespaces: Vec<String>,
}

/// Where requests to an endpoint go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Target {
    /// A worker polling `task_queue` in `namespace`.
    Worker {
        namespace: String,
        task_queue: String,
    },
    /// An HTTP(S) Nexus server.
    External { url: String },
}

impl Target {
    /// The namespace that handles the operations: a worker target's, or the one a Temporal
    /// frontend URL names (`.../namespaces/{ns}/task-queues/{tq}/nexus-services`).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace_and_queue().map(|(ns, _)| ns)
    }

    /// [`Target::namespace`] and the task queue.
    pub fn namespace_and_queue(&self) -> Option<(&str, &str)> {
        match self {
            Target::Worker {
                namespace,
                task_queue,
            } => Some((namespace, task_queue)),
            Target::External { url } => {
                // Searched by characters, not by the "://" substring: this runs on every
                // proxied call, and a substring search costs more to set up than the URL.
                let (_scheme, rest) = url.split_once(':')?;
                let path = rest.strip_prefix("//")?.split_once('/')?.1;
                let mut segments = path.trim_end_matches('/').rsplitn(5, '/');
                let mut next = || segments.next();
                match [next()?, next()?, next()?, next()?, next()?] {
                    ["nexus-services", tq, "task-queues", ns, rest]
                        if rest == "namespaces" || rest.ends_with("/namespaces") =>
                    {
                        Some((ns, tq))
                    }
                    _ => None,
                }
            }
        }
    }
}

/// The URL prefix under which the endpoint with `id` is served.
pub fn url_prefix(id: &str) -> String {
    format!("/nexus/endpoints/{id}/services")
}

/// Errors of the registry; each variant maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RegistryError {
    /// 400. The message names the field, the bad value and the rule.
    #[error("{0}")]
    Invalid(String),
    /// 404. Holds the id.
    #[error("endpoint {0:?} not found")]
    NotFound(String),
    /// 409. Holds the name.
    #[error("an endpoint named {0:?} already exists")]
    AlreadyExists(String),
    /// 409. The caller's version is stale (or ahead).
    #[error(
        "endpoint {id:?} version conflict: request has version {expected}, current version is {actual}"
    )]
    VersionConflict {
        id: String,
        expected: u64,
        actual: u64,
    },
    /// 404. Holds the cluster name.
    #[error("cluster {0:?} not found")]
    ClusterNotFound(String),
    /// 409. Holds the cluster name.
    #[error("a cluster named {0:?} already exists")]
    ClusterExists(String),
    /// 409. The caller's cluster version is stale (or ahead).
    #[error(
        "cluster {name:?} version conflict: request has version {expected}, current version is {actual}"
    )]
    ClusterVersionConflict {
        name: String,
        expected: u64,
        actual: u64,
    },
    /// 503: the store cannot be reached now; retry later.
    #[error("the registry store is unavailable: {0}")]
    Unavailable(String),
    /// 500.
    #[error("registry storage error: {0}")]
    Storage(String),
}

/// Deserializes a `u64` given as a JSON number or a decimal string, since
/// Temporal's protojson encodes int64 fields as strings. Usable with
/// `#[serde(deserialize_with = "nexus_registry::deserialize_version")]`.
pub fn deserialize_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct VersionVisitor;

    impl Visitor<'_> for VersionVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer or a decimal string")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            // str::parse would also take "+1"; protojson never sends that.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::invalid_value(Unexpected::Str(v), &self));
            }
            v.parse()
                .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
        }
    }

    deserializer.deserialize_any(VersionVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint() -> Endpoint {
        Endpoint {
            id: "abc".into(),
            version: 3,
            created_time: "2024-01-02T03:04:05.678Z".into(),
            last_modified_time: "2024-01-02T03:04:06.000Z".into(),
            url_prefix: url_prefix("abc"),
            spec: EndpointSpec {
                name: "my-endpoint".into(),
                description: String::new(),
                target: Target::Worker {
                    namespace: "ns".into(),
                    task_queue: "tq".into(),
                },
                allowed_caller_namespaces: vec!["caller".into()],
            },
        }
    }

    #[test]
    fn json_shape() {
        let value = serde_json::to_value(endpoint()).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "abc",
                "version": 3,
                "createdTime": "2024-01-02T03:04:05.678Z",
                "lastModifiedTime": "2024-01-02T03:04:06.000Z",
                "urlPrefix": "/nexus/endpoints/abc/services",
                "spec": {
                    "name": "my-endpoint",
                    "target": {"worker": {"namespace": "ns", "taskQueue": "tq"}},
                    "allowedCallerNamespaces": ["caller"]
                }
            })
        );
        let back: Endpoint = serde_json::from_value(value).unwrap();
        assert_eq!(back, endpoint());
    }

    #[test]
    fn external_target_and_description() {
        let spec: EndpointSpec = serde_json::from_value(json!({
            "name": "ext",
            "description": "hello",
            "target": {"external": {"url": "https://example.com"}}
        }))
        .unwrap();
        assert_eq!(
            spec.target,
            Target::External {
                url: "https://example.com".into()
            }
        );
        assert_eq!(spec.description, "hello");
        assert!(spec.allowed_caller_namespaces.is_empty());
        let out = serde_json::to_value(&spec).unwrap();
        assert_eq!(out["description"], "hello");
        assert_eq!(out["allowedCallerNamespaces"], json!([]));
    }

    #[test]
    fn version_accepts_number_or_decimal_string() {
        let mut value = serde_json::to_value(endpoint()).unwrap();
        value["version"] = json!("42");
        assert_eq!(
            serde_json::from_value::<Endpoint>(value.clone())
                .unwrap()
                .version,
            42
        );
        for bad in [
            json!("-1"),
            json!("+1"),
            json!(""),
            json!("1.5"),
            json!(-1),
            json!(1.5),
        ] {
            value["version"] = bad.clone();
            assert!(
                serde_json::from_value::<Endpoint>(value.clone()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn target_namespace_of_temporal_urls() {
        let external = |url: &str| Target::External { url: url.into() };
        assert_eq!(
            external("http://t:7243/namespaces/billing/task-queues/charges/nexus-services")
                .namespace_and_queue(),
            Some(("billing", "charges"))
        );
        assert_eq!(
            external("https://t/api/namespaces/billing/task-queues/q/nexus-services/").namespace(),
            Some("billing")
        );
        assert_eq!(
            external("https://t/a/b/namespaces/ns/task-queues/q/nexus-services").namespace(),
            Some("ns")
        );
        for url in [
            "https://h/nexus",
            "https://h/namespaces/b/task-queues/q",
            "https://h/task-queues/q/nexus-services",
            "https://h/xnamespaces/b/task-queues/q/nexus-services",
            "https://h",
            "h/namespaces/b/task-queues/q/nexus-services",
        ] {
            assert_eq!(external(url).namespace(), None, "{url}");
        }
    }

    #[test]
    fn allows_caller_is_explicit() {
        let mut e = endpoint();
        assert!(e.allows_caller("caller"));
        assert!(!e.allows_caller("other"));
        assert!(!e.allows_caller("Caller"));
        e.spec.allowed_caller_namespaces.clear();
        assert!(!e.allows_caller("caller"));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            RegistryError::NotFound("x".into()).to_string(),
            r#"endpoint "x" not found"#
        );
        assert_eq!(
            RegistryError::AlreadyExists("n".into()).to_string(),
            r#"an endpoint named "n" already exists"#
        );
        let msg = RegistryError::VersionConflict {
            id: "x".into(),
            expected: 1,
            actual: 2,
        }
        .to_string();
        assert!(
            msg.contains("version 1") && msg.contains("version is 2"),
            "{msg}"
        );
    }
}
