//! How CLI commands reach a gateway: its URL and a client certificate. Without `--cert`, the
//! certificates of `nexus-gateway dev` (in `--dev-dir`) are used, issuing the one needed.

use std::path::PathBuf;

use crate::client::{HttpClient, HttpVersions, http_client};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use nexus_certs::{DevPki, Identity, TlsFiles, TlsMaterial};

use super::Failure;

/// Where `nexus-gateway dev` serves, and where it keeps its certificates.
pub const DEFAULT_GATEWAY: &str = "https://localhost:7443";
pub const DEFAULT_DEV_DIR: &str = ".nexus-dev";

#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The gateway's data-port URL.
    #[arg(long, env = "NEXUS_GATEWAY_URL", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// CA certificate (PEM) that the gateway's certificate chains to.
    #[arg(long, env = "NEXUS_GATEWAY_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the gateway.
    #[arg(long, env = "NEXUS_GATEWAY_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "NEXUS_GATEWAY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Data directory of `nexus-gateway dev`, whose certificates are used when --cert is absent.
    #[arg(long, env = "NEXUS_GATEWAY_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
    pub dev_dir: PathBuf,
    /// Trust domain of identities issued from the dev CA.
    #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

impl Connection {
    /// The TLS material to present: the given files, or a dev certificate for `fallback`.
    pub fn material(&self, fallback: &Identity) -> Result<TlsMaterial, Failure> {
        let files = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let ca = match &self.ca {
                    Some(ca) => ca.clone(),
                    None => self.dev_pki()?.ca_path(),
                };
                TlsFiles {
                    ca,
                    cert: cert.clone(),
                    key: key.clone(),
                }
            }
            _ => {
                let mut files = self.dev_pki()?.issue(fallback, &self.trust_domain)?;
                if let Some(ca) = &self.ca {
                    files.ca = ca.clone();
                }
                files
            }
        };
        Ok(files.load()?)
    }

    fn dev_pki(&self) -> Result<DevPki, Failure> {
        DevPki::open(&self.dev_dir.join("certs")).map_err(|error| {
            Failure::from(format!(
                "no client certificate: pass --cert, --key and --ca (or NEXUS_GATEWAY_CERT, \
                 NEXUS_GATEWAY_KEY, NEXUS_GATEWAY_CA), or run `nexus-gateway dev` first to use \
                 its certificates ({error})"
            ))
        })
    }

    pub fn base_uri(&self) -> Result<Uri, Failure> {
        let uri: Uri = self
            .gateway
            .parse()
            .map_err(|e| format!("invalid --gateway URL {:?}: {e}", self.gateway))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(format!(
                "invalid --gateway URL {:?}: expected https://host:port",
                self.gateway
            )
            .into());
        }
        Ok(uri)
    }

    pub fn client(&self, fallback: &Identity) -> Result<HttpClient, Failure> {
        Ok(http_client(&self.material(fallback)?, HttpVersions::Any)?)
    }
}

/// Sends a JSON request and returns the JSON answer; a Nexus failure becomes a [`Failure`]
/// with the gateway's message.
pub async fn send_json(
    client: &HttpClient,
    base: &Uri,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Failure> {
    let uri = crate::worker::join(base, path)?;
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("cannot reach the gateway at {base}: {e}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = json["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("gateway answered {status}: {message}").into());
    }
    Ok(json)
}
