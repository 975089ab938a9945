//! The HTTP client the gateway's own tools use: the worker bridge, the admin CLI and completion
//! delivery (the proxy has its own, [`crate::proxy_client`]). HTTPS with a client
//! certificate, or plain HTTP where allowed.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nexus_certs::{CertError, TlsMaterial};

use crate::callback_policy::CallbackResolver;

/// A pooled client speaking HTTP/1.1 or HTTP/2 (by ALPN) over TLS, and HTTP/1.1 in the clear.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which HTTP versions the client offers over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersions {
    /// HTTP/2 when the server offers it, else HTTP/1.1.
    #[default]
    Any,
    Http1Only,
}

pub fn http_client<B>(
    tls: &TlsMaterial,
    versions: HttpVersions,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, CertError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = nexus_certs::client_config(tls, &[])?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let connector = match versions {
        HttpVersions::Any => builder.enable_all_versions().wrap_connector(http),
        HttpVersions::Http1Only => builder.enable_http1().wrap_connector(http),
    };
    Ok(pooled(connector))
}

/// The client that delivers completions: it connects only to addresses the callback policy
/// allows, checked on the resolved addresses themselves.
pub type CallbackClient =
    Client<HttpsConnector<HttpConnector<CallbackResolver>>, crate::body::Body>;

pub fn callback_client(
    tls: &TlsMaterial,
    policy: std::sync::Arc<crate::callback_policy::CallbackPolicy>,
) -> Result<CallbackClient, CertError> {
    let config = nexus_certs::client_config(tls, &[])?;
    let mut http = HttpConnector::new_with_resolver(CallbackResolver::new(policy));
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(pooled(connector))
}

fn pooled<C, B>(connector: C) -> Client<C, B>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}
