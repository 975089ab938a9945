//! Dev PKI: a local CA issuing ECDSA P-256 server and client certificates, for
//! `nexus-gateway dev`, `certs init/issue` and tests. Not meant for production CAs.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::identity::{Identity, validate_trust_domain};
use crate::{CertError, TlsFiles, TlsMaterial, load_certs, load_key, parse_certs, parse_key};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const CA_DAYS: u32 = 3653; // 10 years including leap days
const LEAF_DAYS: u32 = 365;
const DEV_CA_NAME: &str = "nexus-gateway dev CA";

fn rcgen_err(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let context = context.into();
    move |source| CertError::Rcgen { context, source }
}

/// Valid from a day ago (tolerates clock skew between hosts) for `days` from now.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - DAY;
    params.not_after = now + DAY * days;
}

fn new_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_err(format!("generating {what} key")))
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn parse_x509<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertError::InvalidCa {
            path: path.to_owned(),
            reason: format!("certificate cannot be parsed: {e}"),
        })
}

/// Writes a file, creating parent directories. Secrets get mode 0600 on unix, also
/// when the file already existed with looser permissions.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies to newly created files; tighten before writing the key.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// A certificate authority that can issue server and client certificates.
#[derive(Debug)]
pub struct Ca {
    // Issuer's Debug impl omits the signing key.
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl Ca {
    /// A new self-signed CA: 10 years, ECDSA P-256, CA:TRUE, keyCertSign + cRLSign.
    pub fn generate(common_name: &str) -> Result<Ca, CertError> {
        let key = new_key("the CA")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-signing the CA certificate"))?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// Reopens a saved CA (one certificate; PKCS#8 key) to issue more certificates.
    pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<Ca, CertError> {
        let invalid = |path: &Path, reason: String| CertError::InvalidCa {
            path: path.to_owned(),
            reason,
        };
        let pem_text = fs::read_to_string(cert_pem).map_err(|source| CertError::Io {
            path: cert_pem.to_owned(),
            source,
        })?;
        let mut certs = parse_certs(pem_text.as_bytes(), cert_pem)?;
        if certs.len() != 1 {
            return Err(invalid(
                cert_pem,
                format!("expected exactly one CA certificate, found {}", certs.len()),
            ));
        }
        let cert_der = certs.remove(0);
        // rcgen signs with ring, which only takes PKCS#8 keys.
        let key = KeyPair::try_from(&load_key(key_pem)?).map_err(|e| {
            invalid(
                key_pem,
                format!(
                    "key is not a supported PKCS#8 (`BEGIN PRIVATE KEY`) signing key: {e}; \
                     convert with `openssl pkcs8 -topk8 -nocrypt`"
                ),
            )
        })?;

        let x509 = parse_x509(&cert_der, cert_pem)?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(invalid(
                cert_pem,
                "certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                key_pem,
                format!(
                    "key does not match the CA certificate {}",
                    cert_pem.display()
                ),
            ));
        }

        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(rcgen_err(format!(
            "reading CA certificate {}",
            cert_pem.display()
        )))?;
        Ok(Ca {
            issuer,
            cert_pem: pem_text,
            cert_der,
        })
    }

    /// Writes the CA certificate and key (key mode 0600 on unix).
    pub fn save(&self, cert_pem: &Path, key_pem: &Path) -> Result<(), CertError> {
        write_file(key_pem, &self.issuer.key().serialize_pem(), true)?;
        write_file(cert_pem, &self.cert_pem, false)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    fn sign(&self, mut params: CertificateParams, what: &str) -> Result<Issued, CertError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Lets verifiers pick the right CA key when several CAs share a name.
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_DAYS);
        let key = new_key(what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err(format!("signing {what} certificate")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Server certificate for `names`: each an IP address (IP SAN) or a DNS name.
    /// Valid 1 year (from a day ago), EKU serverAuth, CN = first name.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, CertError> {
        let Some(first) = names.first() else {
            return Err(CertError::Invalid(
                "a server certificate needs at least one DNS name or IP address".into(),
            ));
        };
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(rcgen_err(format!("invalid server name in {names:?}")))?;
        params.distinguished_name = subject(first);
        // Client auth too: the gateway presents this certificate to external handlers.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, "the server")
    }

    /// Client certificate whose only SAN is `uri_san` (e.g. `spiffe://td/ns/payments`);
    /// CN = the URI. Valid 1 year (from a day ago), EKU clientAuth.
    pub fn issue_client(&self, uri_san: &str) -> Result<Issued, CertError> {
        self.issue_client_with_uris(&[uri_san])
    }

    /// [`Self::issue_client`] with several URI SANs: what a gateway must refuse (SPIFFE
    /// allows exactly one), for tests. CN = the first.
    pub fn issue_client_with_uris(&self, uri_sans: &[&str]) -> Result<Issued, CertError> {
        if uri_sans.is_empty() || uri_sans.iter().any(|u| u.is_empty()) {
            return Err(CertError::Invalid(
                "a client certificate needs a URI SAN".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(uri_sans[0]);
        for uri_san in uri_sans {
            let uri = (*uri_san)
                .try_into()
                .map_err(rcgen_err(format!("invalid URI SAN {uri_san:?}")))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &format!("the client ({})", uri_sans.join(", ")))
    }
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// Writes certificate and key (key mode 0600 on unix).
    pub fn save(&self, cert_pem: &Path, key_pem: &Path) -> Result<(), CertError> {
        write_file(key_pem, &self.key_pem, true)?;
        write_file(cert_pem, &self.cert_pem, false)
    }

    /// TLS material with `ca = [ca cert]`, `chain = [this cert]` and this key.
    pub fn material(&self, ca: &Ca) -> Result<TlsMaterial, CertError> {
        let origin = Path::new("<issued certificate>");
        Ok(TlsMaterial {
            ca: vec![ca.cert_der()],
            chain: parse_certs(self.cert_pem.as_bytes(), origin)?,
            key: parse_key(self.key_pem.as_bytes(), origin)?,
        })
    }
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

/// What [`DevPki::init_with`] and [`DevPki::issue_with`] do with existing certificate or key
/// files they cannot reuse (another CA, expired, another identity or server names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace them: right for a directory only this tool writes (`nexus-gateway dev`).
    Replace,
    /// Fail with [`CertError::Exists`]: they may be someone's own files.
    Refuse,
}

/// A dev PKI in one directory: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`
/// and clients as `<kind>-<name>.pem` / `<kind>-<name>-key.pem` (`ns-payments.pem`,
/// `admin-admin.pem`, `metering-billing.pem`).
#[derive(Debug)]
pub struct DevPki {
    dir: PathBuf,
    ca: Ca,
}

impl DevPki {
    /// Creates the directory, CA and server certificate where missing; existing files
    /// are reused. A server certificate is reissued only if it is not signed by this CA,
    /// has expired, or does not cover `server_names`.
    pub fn init(dir: &Path, server_names: &[String]) -> Result<DevPki, CertError> {
        Self::init_with(dir, server_names, Existing::Replace)
    }

    /// [`DevPki::init`], with a choice for a server certificate that cannot be reused.
    /// A complete CA is always kept: replacing it would invalidate every issued certificate.
    pub fn init_with(
        dir: &Path,
        server_names: &[String],
        existing: Existing,
    ) -> Result<DevPki, CertError> {
        fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let ca = match (cert.exists(), key.exists()) {
            (true, true) => Ca::load(&cert, &key)?,
            (false, false) => {
                let ca = Ca::generate(DEV_CA_NAME)?;
                ca.save(&cert, &key)?;
                ca
            }
            // Never silently replace half a CA: every issued cert would stop verifying.
            (has_cert, _) => {
                let (present, missing) = if has_cert { (cert, key) } else { (key, cert) };
                return Err(CertError::InvalidCa {
                    reason: format!(
                        "{} is missing; restore it, or delete {} to start a new CA",
                        missing.display(),
                        present.display()
                    ),
                    path: present,
                });
            }
        };
        let pki = DevPki {
            dir: dir.to_owned(),
            ca,
        };
        let files = pki.server_files();
        if !pki.reusable(&files, |c| covers_names(c, server_names)) {
            may_replace(&files, existing)?;
            pki.ca
                .issue_server(server_names)?
                .save(&files.cert, &files.key)?;
        }
        Ok(pki)
    }

    /// Opens an existing dev PKI (its CA); errors clearly if it has not been created.
    pub fn open(dir: &Path) -> Result<DevPki, CertError> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        for path in [&cert, &key] {
            if !path.exists() {
                return Err(CertError::NoDevPki {
                    dir: dir.to_owned(),
                    missing: path.clone(),
                });
            }
        }
        Ok(DevPki {
            dir: dir.to_owned(),
            ca: Ca::load(&cert, &key)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.join(SERVER_CERT),
            key: self.dir.join(SERVER_KEY),
        }
    }

    /// Issues a client certificate for `identity` in `trust_domain`, or reuses the existing
    /// files if they hold a valid certificate from this CA for the same URI.
    ///
    /// Names ending in `-key` are refused: `ns-x-key.pem` would be both the certificate of
    /// namespace `x-key` and the key of namespace `x`.
    pub fn issue(&self, identity: &Identity, trust_domain: &str) -> Result<TlsFiles, CertError> {
        self.issue_with(identity, trust_domain, Existing::Replace)
    }

    /// [`DevPki::issue`], with a choice for existing files that cannot be reused.
    pub fn issue_with(
        &self,
        identity: &Identity,
        trust_domain: &str,
        existing: Existing,
    ) -> Result<TlsFiles, CertError> {
        identity.validate()?;
        validate_trust_domain(trust_domain).map_err(CertError::Invalid)?;
        if identity.name().ends_with("-key") {
            return Err(CertError::Invalid(format!(
                "{identity}: names ending in \"-key\" clash with key file names in the dev PKI \
                 layout ({}); pick another name",
                self.dir.display()
            )));
        }
        let files = self.client_files(identity);
        let uri = identity.uri(trust_domain);
        if !self.reusable(&files, |c| uri_sans(c) == [uri.as_str()]) {
            may_replace(&files, existing)?;
            self.ca.issue_client(&uri)?.save(&files.cert, &files.key)?;
        }
        Ok(files)
    }

    /// Where the files for `identity` live (they may not exist yet).
    pub fn client_files(&self, identity: &Identity) -> TlsFiles {
        let stem = format!("{}-{}", identity.segment(), identity.name());
        TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        }
    }

    /// Whether existing cert/key files can be kept: they load, the key matches, the cert
    /// is signed by this CA, is currently valid and passes `wanted`.
    fn reusable(&self, files: &TlsFiles, wanted: impl Fn(&X509Certificate<'_>) -> bool) -> bool {
        let (Ok(certs), Ok(key)) = (load_certs(&files.cert), load_key(&files.key)) else {
            return false;
        };
        let Ok(key) = KeyPair::try_from(&key) else {
            return false;
        };
        let (Ok((_, cert)), Ok((_, ca))) = (
            x509_parser::parse_x509_certificate(&certs[0]),
            x509_parser::parse_x509_certificate(&self.ca.cert_der),
        ) else {
            return false;
        };
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
            && cert.validity().is_valid()
            && wanted(&cert)
    }
}

/// Whether `files` may be written over: always under [`Existing::Replace`], else only if
/// neither exists.
fn may_replace(files: &TlsFiles, existing: Existing) -> Result<(), CertError> {
    let present = [&files.cert, &files.key].into_iter().find(|p| p.exists());
    match (existing, present) {
        (Existing::Refuse, Some(path)) => Err(CertError::Exists { path: path.clone() }),
        _ => Ok(()),
    }
}

fn uri_sans<'a>(cert: &X509Certificate<'a>) -> Vec<&'a str> {
    general_names(cert)
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u),
            _ => None,
        })
        .collect()
}

fn general_names<'a>(cert: &X509Certificate<'a>) -> Vec<GeneralName<'a>> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        _ => Vec::new(),
    }
}

/// Every requested server name is present as an IP or DNS SAN.
fn covers_names(cert: &X509Certificate<'_>, names: &[String]) -> bool {
    let sans = general_names(cert);
    names.iter().all(|name| {
        sans.iter().any(|san| match (san, name.parse::<IpAddr>()) {
            (GeneralName::IPAddress(bytes), Ok(IpAddr::V4(ip))) => *bytes == ip.octets(),
            (GeneralName::IPAddress(bytes), Ok(IpAddr::V6(ip))) => *bytes == ip.octets(),
            (GeneralName::DNSName(dns), Err(_)) => dns.eq_ignore_ascii_case(name),
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ca_save_load_issues_verifiable_certs() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA").unwrap();
        let (cert, key) = (tmp.path().join("ca.pem"), tmp.path().join("ca-key.pem"));
        ca.save(&cert, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Ca::load(&cert, &key).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.cert_pem(), ca.cert_pem());

        // A cert from the reloaded CA verifies against the original CA cert.
        let issued = again.issue_client("spiffe://td/ns/a").unwrap();
        let der = parse_certs(issued.cert_pem.as_bytes(), Path::new("x")).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
        assert_eq!(uri_sans(&leaf), ["spiffe://td/ns/a"]);
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn ca_load_rejects_mismatch_and_non_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let (a, b) = (Ca::generate("a").unwrap(), Ca::generate("b").unwrap());
        a.save(&p("a.pem"), &p("a-key.pem")).unwrap();
        b.save(&p("b.pem"), &p("b-key.pem")).unwrap();
        let err = Ca::load(&p("a.pem"), &p("b-key.pem")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        let leaf = a.issue_server(&names(&["localhost"])).unwrap();
        leaf.save(&p("s.pem"), &p("s-key.pem")).unwrap();
        let err = Ca::load(&p("s.pem"), &p("s-key.pem")).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");

        let err = Ca::load(&p("missing.pem"), &p("a-key.pem")).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }));
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn server_cert_sans() {
        let ca = Ca::generate("t").unwrap();
        let issued = ca
            .issue_server(&names(&["localhost", "127.0.0.1", "::1"]))
            .unwrap();
        let der = parse_certs(issued.cert_pem.as_bytes(), Path::new("x")).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        assert!(covers_names(
            &cert,
            &names(&["LOCALHOST", "::1", "127.0.0.1"])
        ));
        assert!(!covers_names(&cert, &names(&["example.com"])));
        assert!(matches!(ca.issue_server(&[]), Err(CertError::Invalid(_))));
    }

    #[test]
    fn dev_pki_init_is_idempotent_and_issue_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let err = DevPki::open(&dir).unwrap_err();
        assert!(
            matches!(&err, CertError::NoDevPki { missing, .. } if missing.ends_with("ca.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("certs init"), "{err}");

        let server_names = names(&["localhost", "127.0.0.1", "::1"]);
        let pki = DevPki::init(&dir, &server_names).unwrap();
        let ca_bytes = fs::read(pki.ca_path()).unwrap();
        let server_bytes = fs::read(&pki.server_files().cert).unwrap();
        drop(pki);

        let pki = DevPki::init(&dir, &server_names).unwrap();
        assert_eq!(fs::read(pki.ca_path()).unwrap(), ca_bytes);
        assert_eq!(fs::read(&pki.server_files().cert).unwrap(), server_bytes);
        pki.server_files().load().unwrap();

        // New names reissue the server cert under the same CA.
        let pki = DevPki::init(&dir, &names(&["gw.internal"])).unwrap();
        assert_eq!(fs::read(pki.ca_path()).unwrap(), ca_bytes);
        assert_ne!(fs::read(&pki.server_files().cert).unwrap(), server_bytes);

        let pki = DevPki::open(&dir).unwrap();
        assert_eq!(pki.dir(), dir);
        let id = Identity::Namespace("payments".into());
        let files = pki.issue(&id, "example.org").unwrap();
        assert_eq!(files.cert, dir.join("ns-payments.pem"));
        assert_eq!(files.key, dir.join("ns-payments-key.pem"));
        assert_eq!(files.ca, dir.join("ca.pem"));
        let m = files.load().unwrap();
        let peer = crate::peer_identity(&m.chain[0], "example.org").unwrap();
        assert_eq!(peer.identity, id);
        assert_eq!(peer.uri, "spiffe://example.org/ns/payments");

        // Reissue only when needed.
        let before = fs::read(&files.cert).unwrap();
        pki.issue(&id, "example.org").unwrap();
        assert_eq!(fs::read(&files.cert).unwrap(), before);
        pki.issue(&id, "other.org").unwrap();
        assert_ne!(fs::read(&files.cert).unwrap(), before);

        for (id, file) in [
            (Identity::Admin("admin".into()), "admin-admin.pem"),
            (Identity::Metering("billing".into()), "metering-billing.pem"),
        ] {
            assert_eq!(pki.client_files(&id).cert, dir.join(file));
            pki.issue(&id, "example.org").unwrap().load().unwrap();
        }

        assert!(
            pki.issue(&Identity::Namespace("../x".into()), "example.org")
                .is_err()
        );
        assert!(
            pki.issue(&Identity::Namespace("x-key".into()), "example.org")
                .is_err()
        );
        assert!(pki.issue(&id, "").is_err());
    }

    #[test]
    fn dev_pki_refuses_half_a_ca() {
        let tmp = tempfile::tempdir().unwrap();
        DevPki::init(tmp.path(), &names(&["localhost"])).unwrap();
        fs::remove_file(tmp.path().join("ca-key.pem")).unwrap();
        let err = DevPki::init(tmp.path(), &names(&["localhost"])).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem is missing"), "{err}");
        assert!(matches!(
            DevPki::open(tmp.path()),
            Err(CertError::NoDevPki { .. })
        ));
    }
}
