//! Refused TLS handshakes: counted by reason for `/metrics`, and logged at info at most once
//! per peer address per minute, so an operator sees a misconfigured client without a flood
//! of lines from a scanner.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::{CertificateError, Error as TlsError};
use tracing::info;

/// How often one peer address is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Peer addresses remembered for rate-limiting the log; past it the memory starts over.
const MAX_REMEMBERED: usize = 10_000;

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoClientCertificate,
    UntrustedCertificate,
    ExpiredCertificate,
    InvalidCertificate,
    /// Not TLS, an unsupported version or cipher, a malformed message.
    Protocol,
    /// The peer closed or reset the connection during the handshake.
    ConnectionClosed,
    Timeout,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoClientCertificate,
        Reason::UntrustedCertificate,
        Reason::ExpiredCertificate,
        Reason::InvalidCertificate,
        Reason::Protocol,
        Reason::ConnectionClosed,
        Reason::Timeout,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoClientCertificate => "no_client_certificate",
            Reason::UntrustedCertificate => "untrusted_certificate",
            Reason::ExpiredCertificate => "expired_certificate",
            Reason::InvalidCertificate => "invalid_certificate",
            Reason::Protocol => "protocol",
            Reason::ConnectionClosed => "connection_closed",
            Reason::Timeout => "timeout",
            Reason::Other => "other",
        }
    }

    /// The reason behind a failed `accept` of tokio-rustls.
    pub fn of(error: &std::io::Error) -> Reason {
        if let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
            return match tls {
                TlsError::NoCertificatesPresented => Reason::NoClientCertificate,
                TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => Reason::UntrustedCertificate,
                TlsError::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => Reason::ExpiredCertificate,
                TlsError::InvalidCertificate(_) => Reason::InvalidCertificate,
                TlsError::InappropriateMessage { .. }
                | TlsError::InappropriateHandshakeMessage { .. }
                | TlsError::InvalidMessage(_)
                | TlsError::PeerIncompatible(_)
                | TlsError::PeerMisbehaved(_)
                | TlsError::NoApplicationProtocol => Reason::Protocol,
                _ => Reason::Other,
            };
        }
        use std::io::ErrorKind::*;
        match error.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                Reason::ConnectionClosed
            }
            InvalidData => Reason::Protocol,
            _ => Reason::Other,
        }
    }
}

#[derive(Default)]
pub struct HandshakeFailures {
    counts: [AtomicU64; Reason::ALL.len()],
    last_logged: Mutex<HashMap<IpAddr, Instant>>,
}

impl HandshakeFailures {
    /// Counts a refused handshake and logs it unless this peer address was logged in the
    /// last minute.
    pub fn record(&self, peer: IpAddr, reason: Reason, detail: &dyn std::fmt::Display) {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_logged.lock().expect("not poisoned");
        if last
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < LOG_EVERY)
        {
            return;
        }
        if last.len() >= MAX_REMEMBERED {
            last.clear();
        }
        last.insert(peer, now);
        drop(last);
        info!(%peer, reason = reason.as_str(), %detail, "TLS handshake refused (logged once a minute per address)");
    }

    /// (reason, count) for every reason, zeros included.
    pub fn counts(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_rustls_errors() {
        let io = |e: TlsError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            Reason::of(&io(TlsError::NoCertificatesPresented)),
            Reason::NoClientCertificate
        );
        assert_eq!(
            Reason::of(&io(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            Reason::UntrustedCertificate
        );
        assert_eq!(
            Reason::of(&io(TlsError::InvalidCertificate(CertificateError::Expired))),
            Reason::ExpiredCertificate
        );
        assert_eq!(
            Reason::of(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Reason::ConnectionClosed
        );
    }

    #[test]
    fn counts_every_refusal_but_logs_an_address_once_a_minute() {
        let failures = HandshakeFailures::default();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            failures.record(peer, Reason::Protocol, &"x");
        }
        let counts: HashMap<&str, u64> = failures.counts().map(|(r, n)| (r.as_str(), n)).collect();
        assert_eq!(counts["protocol"], 3);
        assert_eq!(counts["timeout"], 0);
        assert_eq!(failures.last_logged.lock().unwrap().len(), 1);
    }
}
