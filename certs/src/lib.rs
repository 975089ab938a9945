//! Certificates and TLS for nexus-gateway.
//!
//! Every connection to the gateway is mutual TLS: the peer presents a client
//! certificate chaining to the configured CA, and its identity is the SPIFFE URI
//! SAN in that certificate (`spiffe://<td>/ns/<namespace>`, `.../admin/<name>`,
//! `.../metering/<name>`). In the request path this crate sits here:
//!
//! ```text
//! TLS handshake (server_config: client cert required, verified against the CA)
//!   -> peer_certificates()[0] -> peer_identity(cert, trust_domain) -> PeerIdentity
//! ```
//!
//! Key items:
//! - [`TlsFiles`] / [`TlsMaterial`]: PEM paths and the loaded CA roots, chain and key.
//! - [`server_config`] / [`client_config`]: rustls configs, always built on the
//!   ring [`provider`] (never the process-wide default).
//! - [`Identity`], [`PeerIdentity`], [`peer_identity`] / [`peer_identity_from_chain`]:
//!   identity from a certificate the handshake has already verified.
//! - [`Ca`], [`Issued`], [`DevPki`]: a small dev PKI for `nexus-gateway dev`,
//!   `certs init/issue` and tests (ECDSA P-256).

mod dev;
mod identity;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls_pki_types::pem::{self, PemObject};
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use dev::{Ca, DevPki, Existing, Issued};
pub use identity::{
    Identity, IdentityError, PeerIdentity, parse_identity_uri, peer_identity,
    peer_identity_from_chain, validate_name, validate_trust_domain,
};

/// ALPN protocols the gateway offers, in preference order.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Everything that can go wrong loading PEM, issuing certificates or building configs.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate (PEM `BEGIN CERTIFICATE` block) found in {}", .path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "no private key (PEM `BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or \
         `BEGIN RSA PRIVATE KEY` block) found in {}",
        .path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("bad PEM in {}: {source}", .path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{context}: {source}")]
    Rustls {
        context: String,
        source: rustls::Error,
    },
    #[error("{context}: {source}")]
    Rcgen {
        context: String,
        source: rcgen::Error,
    },
    #[error("cannot build the client certificate verifier from the CA certificates: {source}")]
    Verifier { source: VerifierBuilderError },
    /// A saved CA that cannot issue: not a CA certificate, or key and certificate do not match.
    #[error("unusable CA {}: {reason}", .path.display())]
    InvalidCa { path: PathBuf, reason: String },
    #[error(
        "no dev PKI in {}: {} is missing (create it with `nexus-gateway certs init`)",
        .dir.display(), .missing.display()
    )]
    NoDevPki { dir: PathBuf, missing: PathBuf },
    /// A file that would be replaced by a new certificate or key, under [`Existing::Refuse`].
    #[error(
        "{} already exists and does not hold the certificate asked for; refusing to overwrite it",
        .path.display()
    )]
    Exists { path: PathBuf },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Bad caller input, e.g. no server names or no CA certificates.
    #[error("{0}")]
    Invalid(String),
}

/// The ring crypto provider, the only one used in the workspace.
///
/// Configs are built with `builder_with_provider(provider())` so nothing depends
/// on (or races to install) a process-wide default provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate in PEM text; `origin` names the source in errors.
pub(crate) fn parse_certs(
    pem_bytes: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            path: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) in PEM text.
pub(crate) fn parse_key(
    pem_bytes: &[u8],
    origin: &Path,
) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => CertError::NoPrivateKey {
            path: origin.to_owned(),
        },
        source => CertError::Pem {
            path: origin.to_owned(),
            source,
        },
    })
}

/// Loads all certificates from a PEM file, in file order; errors if there are none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    parse_certs(&read(path)?, path)
}

/// Loads the first private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    parse_key(&read(path)?, path)
}

/// Paths of the PEM files one side of a TLS connection needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate(s) the peer must chain to.
    pub ca: PathBuf,
    /// Own certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key for the leaf certificate.
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsMaterial, CertError> {
        Ok(TlsMaterial {
            ca: load_certs(&self.ca)?,
            chain: load_certs(&self.cert)?,
            key: load_key(&self.key)?,
        })
    }
}

/// Loaded TLS material: trusted CA roots, own chain (leaf first) and its key.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            // PrivateKeyDer is deliberately not Clone; copying is explicit.
            key: self.key.clone_key(),
        }
    }
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, CertError> {
    if ca.is_empty() {
        return Err(CertError::Invalid(
            "no CA certificates given: refusing to build a TLS config that trusts nothing".into(),
        ));
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in ca.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|source| CertError::Rustls {
                context: format!("CA certificate #{} cannot be used as a trust anchor", i + 1),
                source,
            })?;
    }
    Ok(store)
}

fn protocol_error(side: &str, source: rustls::Error) -> CertError {
    CertError::Rustls {
        context: format!("building the TLS {side} config"),
        source,
    }
}

/// Whether a client must present a certificate during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No certificate: the handshake fails.
    Required,
    /// A certificate, if presented, must still chain to the CA; without one the connection
    /// is anonymous and the application decides what it may do.
    #[default]
    Optional,
}

/// Server side: client certificate REQUIRED and verified against `m.ca`,
/// ALPN `["h2", "http/1.1"]`.
pub fn server_config(m: &TlsMaterial) -> Result<rustls::ServerConfig, CertError> {
    server_config_with(m, ClientAuth::Required)
}

/// [`server_config`] with the client certificate required or optional.
pub fn server_config_with(
    m: &TlsMaterial,
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, CertError> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&m.ca)?), provider());
    let builder = match client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|source| CertError::Verifier { source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| protocol_error("server", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|source| CertError::Rustls {
            context: "server certificate chain and key are not usable together".into(),
            source,
        })?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client side: trusts exactly `m.ca` as roots, presents `m.chain`/`m.key`,
/// offers the caller's ALPN protocols (e.g. `&[b"h2", b"http/1.1"]`).
pub fn client_config(m: &TlsMaterial, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, CertError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| protocol_error("client", e))?
        .with_root_certificates(roots(&m.ca)?)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|source| CertError::Rustls {
            context: "client certificate chain and key are not usable together".into(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread;
    use std::time::Duration;

    use rustls::{ClientConnection, ServerConnection};
    use rustls_pki_types::ServerName;

    const TD: &str = "example.org";
    const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Peer certificates and negotiated ALPN, as seen by the server.
    type ServerView = (Option<Vec<CertificateDer<'static>>>, Option<Vec<u8>>);

    struct Outcome {
        /// What the server saw, or its error.
        server: Result<ServerView, std::io::Error>,
        /// What the client read after the handshake, or its error.
        client: Result<Vec<u8>, std::io::Error>,
    }

    /// The TLS error inside an I/O error of a handshake.
    fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
        error.get_ref()?.downcast_ref::<rustls::Error>()
    }

    /// The alert a peer's handshake failed with, as that peer received it.
    fn alert_received(error: &std::io::Error) -> Option<rustls::AlertDescription> {
        match tls_error(error)? {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        }
    }

    fn timeouts(sock: &TcpStream) {
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Real handshake over loopback TCP; the server sends "ok" once it accepts the client.
    fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        name: &str,
    ) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(server);
        let server_thread = thread::spawn(move || -> std::io::Result<ServerView> {
            let (mut sock, _) = listener.accept()?;
            timeouts(&sock);
            let mut conn = ServerConnection::new(server).map_err(std::io::Error::other)?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock)?;
            }
            let peer = conn.peer_certificates().map(|c| c.to_vec());
            let alpn = conn.alpn_protocol().map(|p| p.to_vec());
            conn.writer().write_all(b"ok")?;
            while conn.wants_write() {
                conn.complete_io(&mut sock)?;
            }
            // Wait (bounded) for the client to hang up so "ok" is not cut off by a reset.
            let _ = sock.read(&mut [0; 256]);
            Ok((peer, alpn))
        });

        let mut sock = TcpStream::connect(addr).unwrap();
        timeouts(&sock);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut buf = [0; 2];
        let client = rustls::Stream::new(&mut conn, &mut sock)
            .read_exact(&mut buf)
            .map(|()| buf.to_vec());
        drop(sock);
        Outcome {
            server: server_thread.join().unwrap(),
            client,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    struct Setup {
        ca: Ca,
        server: TlsMaterial,
        client: TlsMaterial,
    }

    fn setup() -> Setup {
        let ca = Ca::generate("test CA").unwrap();
        let server = ca
            .issue_server(&names(&["localhost", "127.0.0.1"]))
            .unwrap()
            .material(&ca)
            .unwrap();
        let client = ca
            .issue_client("spiffe://example.org/ns/payments")
            .unwrap()
            .material(&ca)
            .unwrap();
        Setup { ca, server, client }
    }

    #[test]
    fn mtls_round_trip_yields_identity() {
        let s = setup();
        for host in ["localhost", "127.0.0.1"] {
            let out = handshake(
                server_config(&s.server).unwrap(),
                client_config(&s.client, ALPN).unwrap(),
                host,
            );
            assert_eq!(out.client.unwrap(), b"ok");
            let (peer, alpn) = out.server.unwrap();
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
            let peer = peer_identity_from_chain(peer.as_deref(), TD).unwrap();
            assert_eq!(peer.identity, Identity::Namespace("payments".into()));
            assert_eq!(peer.uri, "spiffe://example.org/ns/payments");
        }
        // ALPN falls back to the caller's choice.
        let out = handshake(
            server_config(&s.server).unwrap(),
            client_config(&s.client, &[b"http/1.1"]).unwrap(),
            "localhost",
        );
        assert_eq!(out.server.unwrap().1.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[test]
    fn client_cert_from_other_ca_is_rejected() {
        let s = setup();
        let other = Ca::generate("other CA").unwrap();
        let foreign = other
            .issue_client("spiffe://example.org/ns/payments")
            .unwrap();
        let mut client = foreign.material(&other).unwrap();
        client.ca = vec![s.ca.cert_der()]; // still trusts the real server
        let out = handshake(
            server_config(&s.server).unwrap(),
            client_config(&client, ALPN).unwrap(),
            "localhost",
        );
        let err = out.server.unwrap_err();
        assert!(
            matches!(
                tls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err}"
        );
        let err = out.client.unwrap_err();
        assert_eq!(
            alert_received(&err),
            Some(rustls::AlertDescription::UnknownCA),
            "{err}"
        );
    }

    #[test]
    fn client_without_cert_is_rejected() {
        let s = setup();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&s.client.ca).unwrap())
            .with_no_client_auth();
        let out = handshake(server_config(&s.server).unwrap(), client, "localhost");
        let err = out.server.unwrap_err();
        assert!(
            matches!(
                tls_error(&err),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err}"
        );
        // TLS 1.3 names the missing certificate in its alert.
        let err = out.client.unwrap_err();
        assert_eq!(
            alert_received(&err),
            Some(rustls::AlertDescription::CertificateRequired),
            "{err}"
        );
    }

    #[test]
    fn server_cert_from_other_ca_is_rejected() {
        let s = setup();
        let other = Ca::generate("other CA").unwrap();
        let mut server = other
            .issue_server(&names(&["localhost"]))
            .unwrap()
            .material(&other)
            .unwrap();
        server.ca = vec![s.ca.cert_der()];
        let out = handshake(
            server_config(&server).unwrap(),
            client_config(&s.client, ALPN).unwrap(),
            "localhost",
        );
        let err = out.client.unwrap_err();
        assert!(
            matches!(
                tls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err}"
        );
        let err = out.server.unwrap_err();
        assert_eq!(
            alert_received(&err),
            Some(rustls::AlertDescription::UnknownCA),
            "{err}"
        );
    }

    #[test]
    fn config_errors() {
        let s = setup();
        let mut m = s.client.clone();
        m.ca.clear();
        assert!(matches!(server_config(&m), Err(CertError::Invalid(_))));
        assert!(matches!(
            client_config(&m, ALPN),
            Err(CertError::Invalid(_))
        ));

        let mut m = s.client.clone();
        m.key = s.server.key.clone_key();
        let err = client_config(&m, ALPN).unwrap_err();
        assert!(matches!(err, CertError::Rustls { .. }), "{err}");
        let err = server_config(&m).unwrap_err();
        assert!(
            err.to_string().contains("server certificate chain and key"),
            "{err}"
        );
    }

    #[test]
    fn peer_identity_from_real_certs() {
        let s = setup();
        let err = peer_identity(&s.server.chain[0], TD).unwrap_err();
        assert_eq!(
            err,
            IdentityError::NoUriSan {
                trust_domain: TD.into()
            }
        );
        assert!(err.to_string().contains("has no URI SAN"), "{err}");

        let cert = |uris: &[&str]| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = uris
                .iter()
                .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
                .collect();
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let got = peer_identity(&cert(&["spiffe://example.org/admin/root"]), TD).unwrap();
        assert_eq!(got.identity, Identity::Admin("root".into()));
        assert_eq!(got.uri, "spiffe://example.org/admin/root");

        // SPIFFE: exactly one URI SAN, even when one of several would be recognised.
        let err = peer_identity(
            &cert(&["https://x.test/", "spiffe://example.org/admin/root"]),
            TD,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "client certificate has 2 URI SANs (https://x.test/, spiffe://example.org/admin/root); \
             a SPIFFE identity certificate has exactly one"
        );

        let err = peer_identity(&cert(&["spiffe://other.org/ns/a"]), TD);
        assert!(
            matches!(err, Err(IdentityError::WrongTrustDomain { .. })),
            "{err:?}"
        );

        let err = peer_identity(&cert(&["spiffe://example.org/ns/b%2f"]), TD);
        assert!(
            matches!(err, Err(IdentityError::InvalidName { .. })),
            "{err:?}"
        );

        let err = peer_identity(&cert(&["spiffe://example.org/x/a"]), TD).unwrap_err();
        assert_eq!(
            err,
            IdentityError::Unrecognised {
                found: vec!["spiffe://example.org/x/a".into()],
                trust_domain: TD.into()
            }
        );
    }

    #[test]
    fn pem_loading_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let ca = Ca::generate("t").unwrap();
        let issued = ca.issue_client("spiffe://example.org/ns/a").unwrap();
        issued.save(&p("c.pem"), &p("k.pem")).unwrap();
        std::fs::write(p("empty.pem"), "nothing here\n").unwrap();
        std::fs::write(p("broken.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();

        assert_eq!(load_certs(&p("c.pem")).unwrap().len(), 1);
        assert!(matches!(
            load_key(&p("k.pem")).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));

        let err = load_certs(&p("empty.pem")).unwrap_err();
        assert!(matches!(err, CertError::NoCertificate { .. }));
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = load_key(&p("c.pem")).unwrap_err();
        assert!(matches!(err, CertError::NoPrivateKey { .. }));
        assert!(err.to_string().contains("c.pem"), "{err}");
        let err = load_certs(&p("broken.pem")).unwrap_err();
        assert!(matches!(err, CertError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");
        let err = load_certs(&p("absent.pem")).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }));
        assert!(err.to_string().contains("absent.pem"), "{err}");

        // SEC1 and PKCS#1 are recognised by their PEM labels.
        for (label, sec1) in [("EC PRIVATE KEY", true), ("RSA PRIVATE KEY", false)] {
            std::fs::write(p("x.pem"), issued.key_pem.replace("PRIVATE KEY", label)).unwrap();
            match load_key(&p("x.pem")).unwrap() {
                PrivateKeyDer::Sec1(_) => assert!(sec1),
                PrivateKeyDer::Pkcs1(_) => assert!(!sec1),
                other => panic!("{label}: {other:?}"),
            }
        }

        let files = TlsFiles {
            ca: p("empty.pem"),
            cert: p("c.pem"),
            key: p("k.pem"),
        };
        assert!(files.load().unwrap_err().to_string().contains("empty.pem"));
    }
}
