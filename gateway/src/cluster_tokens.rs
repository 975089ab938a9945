//! Operation tokens handed to trusted-cluster callers carry the caller namespace.
//!
//! A Temporal server cancels an operation with nothing but its token: no callback URL, so
//! nothing names the namespace it acts for. The gateway therefore wraps the handler's token
//! once, when the cluster first sees it (the 201 of the start, or the completion it relays),
//! as `ngt1.<namespace>.<token>.<mac>` (base64url parts, the MAC binding cluster, namespace
//! and token), and unwraps it on cancel. Wrapping is deterministic, so the start's answer and
//! the completion give the cluster the same token. Certificate callers get tokens unchanged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;

use crate::error::GatewayError;

const PREFIX: &str = "ngt1.";

/// Wraps `token` for `namespace` of `cluster`.
pub fn wrap(key: &hmac::Key, cluster: &str, namespace: &str, token: &str) -> String {
    let tag = hmac::sign(key, &signed(cluster, namespace, token));
    format!(
        "{PREFIX}{}.{}.{}",
        B64.encode(namespace),
        B64.encode(token),
        B64.encode(tag.as_ref())
    )
}

/// The namespace and handler token inside a token wrapped for `cluster`.
pub fn unwrap(
    key: &hmac::Key,
    cluster: &str,
    wrapped: &str,
) -> Result<(String, String), GatewayError> {
    let refused = || {
        GatewayError::unauthorized(format!(
            "the operation token was not issued by this gateway to cluster {cluster:?}"
        ))
    };
    let mut parts = wrapped.strip_prefix(PREFIX).ok_or_else(refused)?.split('.');
    let (Some(ns), Some(token), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let text = |part: &str| {
        B64.decode(part)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    };
    let (Some(namespace), Some(token), Ok(tag)) = (text(ns), text(token), B64.decode(tag)) else {
        return Err(refused());
    };
    hmac::verify(key, &signed(cluster, &namespace, &token), &tag).map_err(|_| refused())?;
    Ok((namespace, token))
}

/// What the MAC covers: lengths first, so no two triples sign the same bytes.
fn signed(cluster: &str, namespace: &str, token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(cluster.len() + namespace.len() + token.len() + 24);
    for part in [cluster, namespace, token] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn round_trip_and_determinism() {
        let k = key();
        let wrapped = wrap(&k, "east", "orders", "handler-token.with.dots");
        assert_eq!(
            wrapped,
            wrap(&k, "east", "orders", "handler-token.with.dots")
        );
        assert_eq!(
            unwrap(&k, "east", &wrapped).unwrap(),
            ("orders".into(), "handler-token.with.dots".into())
        );
    }

    #[test]
    fn refuses_other_clusters_forgeries_and_plain_tokens() {
        let k = key();
        let wrapped = wrap(&k, "east", "orders", "t");
        for (cluster, token) in [
            ("west", wrapped.clone()),
            ("east", "t".to_owned()),
            ("east", wrapped.replace("ngt1.", "ngt2.")),
            (
                "east",
                format!(
                    "ngt1.{}.dA.{}",
                    B64.encode("billing"),
                    wrapped.rsplit('.').next().unwrap()
                ),
            ),
            ("east", format!("{wrapped}.x")),
        ] {
            let e = unwrap(&k, cluster, &token).unwrap_err();
            assert_eq!(e.kind.status(), 403, "{token}");
            assert!(e.to_string().contains("not issued"), "{e}");
        }
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key");
        assert!(unwrap(&other, "east", &wrapped).is_err());
    }
}
