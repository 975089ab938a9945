//! Peer identity from the SPIFFE URI SAN of a (already verified) client certificate.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Longest accepted namespace/admin/metering name.
const MAX_NAME_LEN: usize = 255;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `spiffe://<td>/ns/<namespace>`
    Namespace(String),
    /// `spiffe://<td>/admin/<name>`
    Admin(String),
    /// `spiffe://<td>/metering/<name>`
    Metering(String),
    /// `spiffe://<td>/cluster/<name>`: a trusted Temporal cluster calling for its namespaces.
    Cluster(String),
}

impl Identity {
    /// The SPIFFE ID for this identity, e.g. `spiffe://td/ns/payments`.
    pub fn uri(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/{}/{}", self.segment(), self.name())
    }

    /// `"namespace"`, `"admin"` or `"metering"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Namespace(_) => "namespace",
            Identity::Admin(_) => "admin",
            Identity::Metering(_) => "metering",
            Identity::Cluster(_) => "cluster",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Identity::Namespace(n)
            | Identity::Admin(n)
            | Identity::Metering(n)
            | Identity::Cluster(n) => n,
        }
    }

    /// The URI path segment (`ns`, `admin`, `metering`); also the dev PKI file prefix.
    pub(crate) fn segment(&self) -> &'static str {
        match self {
            Identity::Namespace(_) => "ns",
            Identity::Admin(_) => "admin",
            Identity::Metering(_) => "metering",
            Identity::Cluster(_) => "cluster",
        }
    }

    /// Checks the name against the identity naming rule (see [`validate_name`]).
    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_name(self.name()).map_err(|reason| IdentityError::InvalidName {
            uri: None,
            kind: self.kind(),
            name: self.name().to_owned(),
            reason,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// A verified peer: its identity and the URI SAN it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub identity: Identity,
    pub uri: String,
}

/// Why a peer certificate does not yield an identity.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoClientCertificate,
    #[error("client certificate could not be parsed: {0}")]
    Unparseable(String),
    #[error(
        "client certificate has no URI SAN; expected one of spiffe://{trust_domain}/ns/<namespace>, \
         spiffe://{trust_domain}/admin/<name>, spiffe://{trust_domain}/metering/<name>"
    )]
    NoUriSan { trust_domain: String },
    #[error(
        "client certificate URI SAN(s) {} are not a recognised identity; expected \
         spiffe://{trust_domain}/ns/<namespace>, spiffe://{trust_domain}/admin/<name> \
         or spiffe://{trust_domain}/metering/<name>",
        .found.join(", ")
    )]
    Unrecognised {
        found: Vec<String>,
        trust_domain: String,
    },
    #[error(
        "client certificate has {} URI SANs ({}); a SPIFFE identity certificate has exactly one",
        .found.len(),
        .found.join(", ")
    )]
    SeveralUriSans { found: Vec<String> },
    #[error("URI SAN {uri} is in trust domain {found:?}, expected trust domain {expected:?}")]
    WrongTrustDomain {
        uri: String,
        expected: String,
        found: String,
    },
    #[error(
        "invalid {kind} name {name:?}{}: {reason}",
        .uri.as_ref().map(|u| format!(" in {u}")).unwrap_or_default()
    )]
    InvalidName {
        /// The URI the name came from, if any.
        uri: Option<String>,
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// Checks a namespace/admin/metering name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 255
/// characters. Returns the reason on failure. `%` is rejected outright because names
/// are compared verbatim, so percent-encoded aliases must not exist.
pub fn validate_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("name is empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} characters long, at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "name must start with an ASCII letter or digit, not {first:?}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(if c == '%' {
            "name contains '%' (percent-encoding is not accepted)".into()
        } else {
            format!("name contains {c:?}; allowed are A-Z a-z 0-9 . _ -")
        });
    }
    Ok(())
}

/// Checks a SPIFFE trust domain (non-empty, `[a-z0-9._-]`), e.g. for config validation.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), String> {
    if trust_domain.is_empty() {
        return Err("trust domain is empty".into());
    }
    match trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "trust domain {trust_domain:?} contains {c:?}; allowed are a-z 0-9 . _ -"
        )),
        None => Ok(()),
    }
}

/// Parses `spiffe://<trust_domain>/(ns|admin|metering|cluster)/<name>`.
pub fn parse_identity_uri(uri: &str, trust_domain: &str) -> Result<Identity, IdentityError> {
    let unrecognised = || IdentityError::Unrecognised {
        found: vec![uri.to_owned()],
        trust_domain: trust_domain.to_owned(),
    };
    let rest = uri.strip_prefix("spiffe://").ok_or_else(unrecognised)?;
    let (td, path) = rest.split_once('/').ok_or_else(unrecognised)?;
    let (segment, name) = path.split_once('/').ok_or_else(unrecognised)?;
    let (make, kind): (fn(String) -> Identity, _) = match segment {
        "ns" => (Identity::Namespace, "namespace"),
        "admin" => (Identity::Admin, "admin"),
        "metering" => (Identity::Metering, "metering"),
        "cluster" => (Identity::Cluster, "cluster"),
        _ => return Err(unrecognised()),
    };
    // Exact comparison: SPIFFE trust domains are lowercase by definition.
    if td != trust_domain {
        return Err(IdentityError::WrongTrustDomain {
            uri: uri.to_owned(),
            expected: trust_domain.to_owned(),
            found: td.to_owned(),
        });
    }
    // '/', '?' and '#' all fail the character rule, so extra segments, queries and
    // fragments are rejected here rather than silently dropped.
    validate_name(name).map_err(|reason| IdentityError::InvalidName {
        uri: Some(uri.to_owned()),
        kind,
        name: name.to_owned(),
        reason,
    })?;
    Ok(make(name.to_owned()))
}

/// Identity of a peer certificate: its one URI SAN (SPIFFE allows exactly one), a recognised
/// identity in `trust_domain`. The certificate must already have been verified (by the TLS
/// handshake).
pub fn peer_identity(
    cert: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<PeerIdentity, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if uris.is_empty() {
        return Err(IdentityError::NoUriSan {
            trust_domain: trust_domain.to_owned(),
        });
    }
    // Which of several would be the identity is ambiguous, and a certificate carrying a
    // second one could claim two namespaces: refused.
    if uris.len() > 1 {
        return Err(IdentityError::SeveralUriSans {
            found: uris.iter().map(|u| (*u).to_owned()).collect(),
        });
    }

    let uri = uris[0];
    let identity = parse_identity_uri(uri, trust_domain)?;
    Ok(PeerIdentity {
        identity,
        uri: uri.to_owned(),
    })
}

/// [`peer_identity`] for what `rustls` `peer_certificates()` returns: the leaf is
/// the first certificate; `None` or empty means the peer sent no certificate.
pub fn peer_identity_from_chain(
    chain: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<PeerIdentity, IdentityError> {
    match chain.and_then(|c| c.first()) {
        Some(leaf) => peer_identity(leaf, trust_domain),
        None => Err(IdentityError::NoClientCertificate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "example.org";

    #[test]
    fn parses_each_kind() {
        for (uri, want) in [
            (
                "spiffe://example.org/ns/payments",
                Identity::Namespace("payments".into()),
            ),
            (
                "spiffe://example.org/admin/ops-1",
                Identity::Admin("ops-1".into()),
            ),
            (
                "spiffe://example.org/metering/billing_v2.x",
                Identity::Metering("billing_v2.x".into()),
            ),
        ] {
            let got = parse_identity_uri(uri, TD).unwrap();
            assert_eq!(got, want);
            assert_eq!(got.uri(TD), uri);
        }
        let id = Identity::Namespace("payments".into());
        assert_eq!(id.to_string(), "namespace payments");
        assert_eq!(id.kind(), "namespace");
        assert_eq!(id.name(), "payments");
        assert_eq!(Identity::Admin("a".into()).to_string(), "admin a");
        assert_eq!(Identity::Metering("m".into()).kind(), "metering");
    }

    #[test]
    fn unrecognised_uris() {
        for uri in [
            "https://example.org/ns/payments",
            "spiffe://example.org",
            "spiffe://example.org/ns",
            "spiffe://example.org/workload/x",
            "SPIFFE://example.org/ns/x",
        ] {
            let err = parse_identity_uri(uri, TD).unwrap_err();
            assert_eq!(
                err,
                IdentityError::Unrecognised {
                    found: vec![uri.into()],
                    trust_domain: TD.into()
                },
                "{uri}"
            );
            let msg = err.to_string();
            assert!(msg.contains(uri), "{msg}");
            assert!(msg.contains("spiffe://example.org/ns/<namespace>"), "{msg}");
        }
    }

    #[test]
    fn wrong_trust_domain() {
        let err = parse_identity_uri("spiffe://other.org/ns/payments", TD).unwrap_err();
        assert!(
            matches!(&err, IdentityError::WrongTrustDomain { found, .. } if found == "other.org")
        );
        assert_eq!(
            err.to_string(),
            "URI SAN spiffe://other.org/ns/payments is in trust domain \"other.org\", \
             expected trust domain \"example.org\""
        );
    }

    #[test]
    fn invalid_names() {
        for (name, reason) in [
            ("", "empty"),
            ("-x", "must start"),
            (".x", "must start"),
            ("pay%20ments", "percent-encoding"),
            ("a/b", "'/'"),
            ("a?x=1", "'?'"),
            ("a#f", "'#'"),
            ("a b", "' '"),
            ("é", "must start"),
        ] {
            let uri = format!("spiffe://example.org/ns/{name}");
            let err = parse_identity_uri(&uri, TD).unwrap_err();
            assert!(
                matches!(
                    err,
                    IdentityError::InvalidName {
                        kind: "namespace",
                        ..
                    }
                ),
                "{name}"
            );
            let msg = err.to_string();
            assert!(msg.contains(reason) && msg.contains(&uri), "{name}: {msg}");
        }
        let long = "a".repeat(256);
        let err =
            parse_identity_uri(&format!("spiffe://example.org/admin/{long}"), TD).unwrap_err();
        assert!(err.to_string().contains("at most 255"), "{err}");
        assert!(
            parse_identity_uri(&format!("spiffe://example.org/admin/{}", &long[1..]), TD).is_ok()
        );

        let err = Identity::Metering("../x".into()).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid metering name \"../x\": name must start with an ASCII letter or digit, not '.'"
        );
    }

    #[test]
    fn other_errors_display() {
        assert_eq!(
            IdentityError::NoClientCertificate.to_string(),
            "no client certificate was presented"
        );
        assert_eq!(
            peer_identity_from_chain(None, TD),
            Err(IdentityError::NoClientCertificate)
        );
        assert_eq!(
            peer_identity_from_chain(Some(&[]), TD),
            Err(IdentityError::NoClientCertificate)
        );
        let err = peer_identity(&CertificateDer::from(vec![1, 2, 3]), TD).unwrap_err();
        assert!(matches!(err, IdentityError::Unparseable(_)));
        assert!(
            err.to_string()
                .starts_with("client certificate could not be parsed")
        );
    }

    #[test]
    fn trust_domain_rule() {
        assert!(validate_trust_domain("example.org").is_ok());
        assert!(validate_trust_domain("").is_err());
        assert!(validate_trust_domain("Example.org").is_err());
        assert!(validate_trust_domain("a/b").is_err());
    }
}
