//! Sealed callback tokens. For an async start the gateway hands the handler
//! `<public_url>/nexus/callbacks/<token>` instead of the caller's callback URL; the token
//! carries the caller's URL and callback headers, encrypted and authenticated (ChaCha20-Poly1305)
//! with a key kept in the data directory, so the handler never sees the caller's secrets and
//! cannot forge or alter a destination.
//!
//! A token seals the [`CallbackClaims`] themselves or, when they would make the URL longer than
//! handlers accept (Temporal's limit is 1,000 characters; a Temporal caller's callback token
//! alone is a few hundred), a [`NoteRef`]: the id of a note in the completion spool that holds
//! them ([`Sealed`]).
//!
//! Token: base64url(key id: u32 BE ‖ nonce: 12 bytes ‖ ciphertext ‖ tag), the plaintext JSON.
//! Fields are added as optional, left out when empty, so a token sealed before a field existed
//! opens as it did, and one sealed without it is what it was (a gateway that does not know a
//! field ignores it). The key file
//! `callback-keys` holds lines `<id> <64 hex digits>`; the last line seals, all lines open, so a
//! key can be rotated by appending a line.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// What a callback token carries; short field names keep the URL short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackClaims {
    #[serde(rename = "u")]
    pub url: String,
    /// The caller's `Nexus-Callback-*` headers, prefix stripped.
    #[serde(rename = "h", default)]
    pub headers: Vec<(String, String)>,
    #[serde(rename = "c")]
    pub caller_namespace: String,
    /// Set for worker targets: only this namespace may complete.
    #[serde(rename = "t", default)]
    pub target_namespace: Option<String>,
    #[serde(rename = "e")]
    pub endpoint: String,
    #[serde(rename = "i")]
    pub endpoint_id: String,
    #[serde(rename = "s")]
    pub service: String,
    #[serde(rename = "o")]
    pub operation: String,
    #[serde(rename = "r", default)]
    pub request_id: Option<String>,
    /// Unix ms of the start request.
    #[serde(rename = "b")]
    pub start_ms: u64,
    /// Unix ms after which the token is refused.
    #[serde(rename = "x")]
    pub expires_ms: u64,
    /// The operation's trace, when its start was traced: the gateway's server span as a
    /// `traceparent`, so its completion continues the trace.
    #[serde(rename = "tp", default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The caller's `tracestate` that came with it (at most 512 characters).
    #[serde(rename = "ts", default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The id of a spool note holding the claims, for callbacks too long to seal in the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteRef {
    #[serde(rename = "n")]
    pub id: u64,
    #[serde(rename = "x")]
    pub expires_ms: u64,
}

/// What a token opens to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sealed {
    Claims(Box<CallbackClaims>),
    Note(NoteRef),
}

impl Sealed {
    fn expires_ms(&self) -> u64 {
        match self {
            Sealed::Claims(claims) => claims.expires_ms,
            Sealed::Note(note) => note.expires_ms,
        }
    }
}

pub struct CallbackKeys {
    keys: Vec<(u32, LessSafeKey)>,
    /// Derived from the first key: signs operation tokens of cluster callers.
    token_key: ring::hmac::Key,
    /// Derived from the first key: signs tasks one replica forwards to another.
    forward_key: ring::hmac::Key,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("callback key file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("callback keys in the shared store: {message}")]
    Shared { message: String },
}

impl CallbackKeys {
    /// Loads the key file in `data_dir`, creating it with a fresh key if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<CallbackKeys, KeyError> {
        let path = data_dir.join("callback-keys");
        let fail = |message: String| KeyError::File {
            path: path.clone(),
            message,
        };
        if !path.exists() {
            let text = Self::generate().map_err(|_| fail("no randomness".into()))?;
            write_private(&path, text.as_bytes()).map_err(|e| fail(e.to_string()))?;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(fail)
    }

    /// A fresh key file's text: one key, id 1.
    pub fn generate() -> Result<String, ring::error::Unspecified> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret)?;
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("1 {hex}\n"))
    }

    /// Keys from the text of a key file (`<id> <64 hex digits>` lines; the last seals).
    pub fn parse(text: &str) -> Result<CallbackKeys, String> {
        let mut keys = Vec::new();
        let mut token_key = None;
        let mut forward_key = None;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = || format!("line {}: expected `<id> <64 hex digits>`", n + 1);
            let (id, hex) = line.trim().split_once(' ').ok_or_else(bad)?;
            let id: u32 = id.parse().map_err(|_| bad())?;
            let secret = decode_hex(hex.trim())
                .filter(|s| s.len() == 32)
                .ok_or_else(bad)?;
            let key = UnboundKey::new(&CHACHA20_POLY1305, &secret).map_err(|_| bad())?;
            keys.push((id, LessSafeKey::new(key)));
            // The first key stays when keys are added, so wrapped tokens stay valid.
            let derive = |label: &[u8]| {
                let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                let derived = ring::hmac::sign(&root, label);
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
            };
            token_key.get_or_insert_with(|| derive(b"nexus-gateway cluster operation tokens v1"));
            forward_key.get_or_insert_with(|| derive(b"nexus-gateway forwarded tasks v1"));
        }
        let (Some(token_key), Some(forward_key)) = (token_key, forward_key) else {
            return Err("no keys".into());
        };
        Ok(CallbackKeys {
            keys,
            token_key,
            forward_key,
            rng: SystemRandom::new(),
        })
    }

    /// The key that signs operation tokens handed to cluster callers.
    pub fn token_key(&self) -> &ring::hmac::Key {
        &self.token_key
    }

    /// The key that signs tasks replicas forward to each other (shared with the store).
    pub fn forward_key(&self) -> &ring::hmac::Key {
        &self.forward_key
    }

    /// Seals [`CallbackClaims`] or a [`NoteRef`].
    pub fn seal<T: Serialize>(&self, value: &T) -> Result<String, GatewayError> {
        let (id, key) = self.keys.last().expect("at least one key");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| GatewayError::internal("no randomness for a callback token"))?;
        let mut data =
            serde_json::to_vec(value).map_err(|e| GatewayError::internal(e.to_string()))?;
        let aad = id.to_be_bytes();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| GatewayError::internal("cannot seal a callback token"))?;
        let mut token = Vec::with_capacity(4 + NONCE_LEN + data.len());
        token.extend_from_slice(&aad);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// Opens a token; any tampering, unknown key or bad encoding is a 404 (an attacker learns
    /// nothing about which check failed), an expired token a 404 saying so.
    pub fn open(&self, token: &str, now_ms: u64) -> Result<Sealed, GatewayError> {
        let invalid = || GatewayError::not_found("callback token is not valid for this gateway");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if raw.len() < 4 + NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(invalid());
        }
        let id = u32::from_be_bytes(raw[..4].try_into().expect("4 bytes"));
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or_else(invalid)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&raw[4..4 + NONCE_LEN]).map_err(|_| invalid())?;
        let mut data = raw[4 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(id.to_be_bytes()), &mut data)
            .map_err(|_| invalid())?;
        let sealed: Sealed = serde_json::from_slice(plain).map_err(|_| invalid())?;
        if now_ms > sealed.expires_ms() {
            return Err(GatewayError::not_found(format!(
                "callback token expired at {}",
                humantime_ms(sealed.expires_ms())
            )));
        }
        Ok(sealed)
    }
}

pub fn humantime_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    httpdate::fmt_http_date(t)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> CallbackClaims {
        CallbackClaims {
            url: "https://caller.example/cb?x=1".into(),
            headers: vec![("Temporal-Callback-Token".into(), "secret".into())],
            caller_namespace: "orders".into(),
            target_namespace: Some("billing".into()),
            endpoint: "payments".into(),
            endpoint_id: "id-1".into(),
            service: "svc".into(),
            operation: "op".into(),
            request_id: Some("r1".into()),
            start_ms: 1_000,
            expires_ms: 10_000,
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn tokens_without_a_trace_are_as_before_and_old_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys = CallbackKeys::load_or_create(dir.path()).unwrap();
        // Sealed before tokens could carry a trace: the same fields, nothing more.
        let old = serde_json::json!({
            "u": "https://caller.example/cb?x=1",
            "h": [["Temporal-Callback-Token", "secret"]],
            "c": "orders", "t": "billing", "e": "payments", "i": "id-1",
            "s": "svc", "o": "op", "r": "r1", "b": 1_000, "x": 10_000
        });
        let token = keys.seal(&old).unwrap();
        assert_eq!(
            keys.open(&token, 5_000).unwrap(),
            Sealed::Claims(Box::new(claims()))
        );
        // Untraced claims serialize to exactly those fields: the URL is no longer than before.
        assert_eq!(serde_json::to_value(claims()).unwrap(), old);
        let traced = CallbackClaims {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=1".into()),
            ..claims()
        };
        let token = keys.seal(&traced).unwrap();
        assert_eq!(
            keys.open(&token, 5_000).unwrap(),
            Sealed::Claims(Box::new(traced))
        );
    }

    #[test]
    fn seals_and_opens_and_refuses_tampering_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let keys = CallbackKeys::load_or_create(dir.path()).unwrap();
        let token = keys.seal(&claims()).unwrap();
        assert!(!token.contains("secret"));
        assert_eq!(
            keys.open(&token, 5_000).unwrap(),
            Sealed::Claims(Box::new(claims()))
        );
        let note = NoteRef {
            id: 7,
            expires_ms: 10_000,
        };
        let short = keys.seal(&note).unwrap();
        assert_eq!(keys.open(&short, 5_000).unwrap(), Sealed::Note(note));
        assert!(short.len() < 100, "{short}");
        // Flip one character in the ciphertext.
        let mut tampered: Vec<char> = token.chars().collect();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        let e = keys.open(&tampered, 5_000).unwrap_err();
        assert_eq!(
            (e.kind.status().as_u16(), e.message.as_str()),
            (404, "callback token is not valid for this gateway")
        );
        assert_eq!(
            keys.open("not base64!", 5_000).unwrap_err().kind.status(),
            404
        );
        let e = keys.open(&token, 10_001).unwrap_err();
        assert!(
            e.message.starts_with("callback token expired at"),
            "{}",
            e.message
        );
        // A reload reads the same key; another gateway's key does not open it.
        assert_eq!(
            CallbackKeys::load_or_create(dir.path())
                .unwrap()
                .open(&token, 0)
                .unwrap(),
            Sealed::Claims(Box::new(claims()))
        );
        let other = tempfile::tempdir().unwrap();
        assert!(
            CallbackKeys::load_or_create(other.path())
                .unwrap()
                .open(&token, 0)
                .is_err()
        );
    }

    #[test]
    fn appended_key_seals_and_old_one_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let old = CallbackKeys::load_or_create(dir.path())
            .unwrap()
            .seal(&claims())
            .unwrap();
        let path = dir.path().join("callback-keys");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!("2 {}\n", "ab".repeat(32)));
        std::fs::write(&path, text).unwrap();
        let keys = CallbackKeys::load_or_create(dir.path()).unwrap();
        let new = keys.seal(&claims()).unwrap();
        assert_eq!(
            &URL_SAFE_NO_PAD.decode(&new).unwrap()[..4],
            &2u32.to_be_bytes()
        );
        assert!(keys.open(&old, 0).is_ok() && keys.open(&new, 0).is_ok());
    }
}
