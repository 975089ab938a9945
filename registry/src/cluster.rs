//! Trusted Temporal clusters: callers that vouch for their own namespaces.
//!
//! A stock Temporal server calls an external Nexus endpoint without a client certificate and
//! puts the caller namespace in the callback URL it builds from its
//! `nexusoperation.callback.endpoint.template`. A registered [`Cluster`] holds that template,
//! so the namespace can be read back from the URL, and the secrets (stored as SHA-256
//! digests) that it presents in the endpoint URL its admin registers in Temporal.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::{RegistryError, deserialize_version};

/// The placeholder for the caller namespace in a callback URL template.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";
/// Temporal's own spelling of the placeholder, accepted for copy and paste.
const TEMPORAL_PLACEHOLDER: &str = "{{.NamespaceName}}";
/// Temporal's limit on callback URLs.
pub const MAX_TEMPLATE_CHARS: usize = 1000;
const MAX_CLUSTER_NAME_CHARS: usize = 200;
const MAX_SECRETS: usize = 8;

/// A trusted Temporal cluster as stored and as the admin API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    #[serde(deserialize_with = "deserialize_version")]
    pub version: u64,
    pub created_time: String,
    pub last_modified_time: String,
    pub spec: ClusterSpec,
    /// Secrets it may present in endpoint URLs; empty for a cluster that authenticates with
    /// its certificate (`spiffe://<td>/cluster/<name>`) only.
    #[serde(default)]
    pub secrets: Vec<ClusterSecret>,
}

/// The admin-supplied part of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// The cluster's `nexusoperation.callback.endpoint.template`, with `{namespace}` (or
    /// Temporal's `{{.NamespaceName}}`) where the caller namespace goes.
    pub callback_url_template: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// One secret of a cluster. Only its digest is kept; the secret itself is shown once, when
/// it is issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSecret {
    /// Names the secret in listings and logs: the first 8 hex digits of its digest.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub created_time: String,
    /// When a rotated-out secret stops working (RFC 3339); `None` while it is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_time: Option<String>,
}

impl ClusterSecret {
    /// Whether it still opens the door at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        match &self.expires_time {
            None => true,
            Some(t) => humantime::parse_rfc3339(t).is_ok_and(|expires| now < expires),
        }
    }
}

/// A newly issued secret: the value to hand to the cluster's admin, and what is stored.
#[derive(Debug, Clone)]
pub struct IssuedSecret {
    pub secret: String,
    pub stored: ClusterSecret,
}

/// A new random secret: 256 bits, hex, so it is one safe URL path segment.
pub fn issue_secret(now: &str) -> Result<IssuedSecret, RegistryError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RegistryError::Storage("the system random generator failed".into()))?;
    let secret = format!("ngs_{}", hex(&bytes));
    let digest = secret_digest(&secret);
    Ok(IssuedSecret {
        stored: ClusterSecret {
            id: hex(&digest[..4]),
            sha256: hex(&digest),
            created_time: now.to_owned(),
            expires_time: None,
        },
        secret,
    })
}

/// SHA-256 of a presented secret, the key secrets are looked up by.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().try_into().expect("32 bytes")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterSpec {
    /// Checks the spec and normalises the placeholder to `{namespace}`.
    pub fn validate(&mut self) -> Result<(), RegistryError> {
        let invalid = |rule: &str| {
            RegistryError::Invalid(format!(
                "callbackUrlTemplate {:?} is invalid: {rule}",
                self.callback_url_template
            ))
        };
        let template = self
            .callback_url_template
            .replace(TEMPORAL_PLACEHOLDER, NAMESPACE_PLACEHOLDER);
        if template.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(invalid(&format!(
                "must be at most {MAX_TEMPLATE_CHARS} characters"
            )));
        }
        if template
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("must not contain whitespace or control characters"));
        }
        let Some(rest) = template
            .strip_prefix("https://")
            .or_else(|| template.strip_prefix("http://"))
        else {
            return Err(invalid("must start with http:// or https://"));
        };
        if template.matches(NAMESPACE_PLACEHOLDER).count() != 1 {
            return Err(invalid(
                "must contain {namespace} (or {{.NamespaceName}}) exactly once",
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains(['@', '{']) {
            return Err(invalid(
                "must name a host without credentials, and {namespace} must be in the path",
            ));
        }
        if !path.contains(NAMESPACE_PLACEHOLDER) || path.contains(['?', '#']) {
            return Err(invalid(
                "{namespace} must be in the path, and the template has no query or fragment",
            ));
        }
        if template.contains("{{") {
            return Err(invalid("the only placeholder is {namespace}"));
        }
        if self.description.len() > crate::MAX_DESCRIPTION_BYTES {
            return Err(RegistryError::Invalid(format!(
                "description is invalid: must be at most {} bytes",
                crate::MAX_DESCRIPTION_BYTES
            )));
        }
        self.callback_url_template = template;
        Ok(())
    }
}

impl Cluster {
    /// The caller namespace a callback URL names, read against this cluster's template.
    /// `Err` says why the URL does not match.
    pub fn namespace_in_callback<'u>(&self, url: &'u str) -> Result<&'u str, String> {
        let template = &self.spec.callback_url_template;
        let (before, after) = template
            .split_once(NAMESPACE_PLACEHOLDER)
            .unwrap_or((template, ""));
        let namespace = url
            .strip_prefix(before)
            .and_then(|rest| rest.strip_suffix(after))
            .ok_or_else(|| format!("the callback URL does not match cluster {:?}'s callback URL template {template:?}", self.name))?;
        if let Some(rule) = crate::validate::namespace_rule(namespace) {
            return Err(format!(
                "the namespace {namespace:?} in the callback URL is invalid: {rule}"
            ));
        }
        Ok(namespace)
    }

    /// The secret with digest `digest`, if it is one of this cluster's and still valid.
    pub fn secret(&self, digest: &[u8; 32], now: SystemTime) -> Option<&ClusterSecret> {
        let wanted = hex(digest);
        self.secrets
            .iter()
            .find(|s| s.sha256 == wanted && s.valid_at(now))
    }
}

/// Checks a cluster name: the identity name rule (it appears in `spiffe://<td>/cluster/<name>`
/// and after the `@` of qualified namespaces).
pub fn validate_cluster_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME_CHARS
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "cluster name {name:?} is invalid: must match ^[a-zA-Z0-9][a-zA-Z0-9._-]*$, \
             at most {MAX_CLUSTER_NAME_CHARS} characters"
        )))
    }
}

/// Keeps the current secret list within bounds after a rotation: expired secrets go first.
pub(crate) fn prune_secrets(secrets: &mut Vec<ClusterSecret>, now: SystemTime) {
    secrets.retain(|s| s.valid_at(now));
    while secrets.len() > MAX_SECRETS {
        secrets.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(template: &str) -> Cluster {
        let mut spec = ClusterSpec {
            callback_url_template: template.into(),
            description: String::new(),
        };
        spec.validate().unwrap();
        Cluster {
            name: "east".into(),
            version: 1,
            created_time: String::new(),
            last_modified_time: String::new(),
            spec,
            secrets: vec![],
        }
    }

    #[test]
    fn reads_the_namespace_from_a_callback_url() {
        let c = cluster("https://temporal-east:7243/namespaces/{{.NamespaceName}}/nexus/callback");
        assert_eq!(
            c.spec.callback_url_template,
            "https://temporal-east:7243/namespaces/{namespace}/nexus/callback"
        );
        assert_eq!(
            c.namespace_in_callback("https://temporal-east:7243/namespaces/orders/nexus/callback"),
            Ok("orders")
        );
        for url in [
            "https://temporal-west:7243/namespaces/orders/nexus/callback",
            "https://temporal-east:7243/namespaces/orders/nexus/callback?x=1",
            "https://temporal-east:7243/namespaces/orders/other",
            "http://temporal-east:7243/namespaces/orders/nexus/callback",
        ] {
            let e = c.namespace_in_callback(url).unwrap_err();
            assert!(e.contains("does not match"), "{url}: {e}");
        }
        for url in [
            "https://temporal-east:7243/namespaces/a/b/nexus/callback",
            "https://temporal-east:7243/namespaces//nexus/callback",
            "https://temporal-east:7243/namespaces/or%64ers/nexus/callback",
            "https://temporal-east:7243/namespaces/x@y/nexus/callback",
        ] {
            let e = c.namespace_in_callback(url).unwrap_err();
            assert!(e.contains("is invalid"), "{url}: {e}");
        }
    }

    #[test]
    fn template_rules() {
        for (template, rule) in [
            ("ftp://h/namespaces/{namespace}", "must start with"),
            ("https://h/namespaces/x", "exactly once"),
            ("https://h/{namespace}/{namespace}", "exactly once"),
            ("https://{namespace}.h/cb", "in the path"),
            ("https://u:p@h/{namespace}", "credentials"),
            ("https://h/cb?ns={namespace}", "no query"),
            ("https://h/{namespace}/{{.NamespaceID}}", "only placeholder"),
            ("https://h/ {namespace}", "whitespace"),
        ] {
            let mut spec = ClusterSpec {
                callback_url_template: template.into(),
                description: String::new(),
            };
            let e = spec.validate().unwrap_err().to_string();
            assert!(
                e.contains(rule) && e.contains("callbackUrlTemplate"),
                "{template}: {e}"
            );
        }
    }

    #[test]
    fn secrets_are_found_by_digest_until_they_expire() {
        let issued = issue_secret("2026-01-01T00:00:00.000Z").unwrap();
        assert!(issued.secret.starts_with("ngs_") && issued.secret.len() == 68);
        assert!(!issued.stored.sha256.contains(&issued.secret[4..]));
        let mut c = cluster("https://h/{namespace}");
        c.secrets.push(issued.stored.clone());
        let now = SystemTime::now();
        let digest = secret_digest(&issued.secret);
        assert_eq!(c.secret(&digest, now).unwrap().id, issued.stored.id);
        assert!(c.secret(&secret_digest("ngs_other"), now).is_none());
        c.secrets[0].expires_time = Some("2020-01-01T00:00:00.000Z".into());
        assert!(c.secret(&digest, now).is_none());
        prune_secrets(&mut c.secrets, now);
        assert!(c.secrets.is_empty());
    }

    #[test]
    fn cluster_names() {
        assert!(validate_cluster_name("east-1.prod").is_ok());
        for bad in ["", "-x", "a@b", "a/b", "é"] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
