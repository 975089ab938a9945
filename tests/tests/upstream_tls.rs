//! External targets over HTTPS with mutual TLS: the gateway presents its own certificate to
//! the upstream, trusts only the configured upstream CA, and applies the plain-HTTP policy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use nexus_certs::{CertificateDer, TlsMaterial};
use nexus_e2e::*;
use nexus_gateway::external::PlainHttp;
use tokio_util::sync::CancellationToken;

/// An HTTPS Nexus handler ([`reference_handler`]) that requires a client certificate chained
/// to `material.ca`, and records the leaf certificate of every client that got through the
/// handshake.
struct TlsUpstream {
    addr: SocketAddr,
    clients: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    /// Handshakes that failed, either side's refusal.
    refused: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

impl TlsUpstream {
    async fn start(material: &TlsMaterial) -> TlsUpstream {
        let config = nexus_certs::server_config(material).expect("upstream TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TlsUpstream {
            addr: listener.local_addr().unwrap(),
            clients: Default::default(),
            refused: Default::default(),
            stop: CancellationToken::new(),
        };
        let (clients, refused, stop) = (
            upstream.clients.clone(),
            upstream.refused.clone(),
            upstream.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    Ok((tcp, _)) = listener.accept() => tcp,
                    () = stop.cancelled() => break,
                };
                let (acceptor, clients, refused) =
                    (acceptor.clone(), clients.clone(), refused.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(REQUEST_BOUND, acceptor.accept(tcp)).await;
                    let Ok(Ok(tls)) = handshake else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    if let Some(chain) = tls.get_ref().1.peer_certificates() {
                        clients.lock().unwrap().push(chain[0].clone().into_owned());
                    }
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            reference_handler(Request::from_parts(parts, Full::new(body))).await
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        upstream
    }

    fn clients(&self) -> Vec<CertificateDer<'static>> {
        self.clients.lock().unwrap().clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gateway whose own certificate (the one it presents upstream) is returned too.
async fn gateway_with(
    tweak: impl FnOnce(&mut nexus_gateway::Config),
) -> (TestGateway, CertificateDer<'static>) {
    let mut own = None;
    let gw = TestGateway::start_with(|c| {
        own = Some(c.tls.chain[0].clone());
        tweak(c);
    })
    .await;
    (gw, own.unwrap())
}

fn call(gw: &TestGateway, endpoint: &str, op: &str) -> Request<Full<Bytes>> {
    post(
        gw.uri(&format!("/nexus/endpoints/{endpoint}/services/svc/{op}")),
        &[("content-type", "text/plain")],
        "over mTLS",
    )
}

#[tokio::test]
async fn https_upstream_gets_the_gateways_client_certificate() {
    let (gw, own) = gateway_with(|_| {}).await;
    // The upstream's certificate and the CA it requires clients to chain to: the gateway's.
    let upstream = TlsUpstream::start(&gw.pki.server()).await;
    gw.external_endpoint(
        "secure",
        &format!("https://localhost:{}", upstream.addr.port()),
        &["orders"],
    );
    let caller = gw.client(&ns("orders"));
    let echo = send(&caller, call(&gw, "secure", "echo")).await;
    assert_eq!(echo.status, 200, "{:?}", echo.body);
    assert_eq!(echo.body, "over mTLS");
    let seen = send(&caller, call(&gw, "secure", "headers")).await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.json()["headers"]["nexus-caller-namespace"], "orders");
    let clients = upstream.clients();
    assert!(!clients.is_empty());
    assert!(
        clients.iter().all(|c| *c == own),
        "the upstream saw the gateway's own certificate as client certificate"
    );
    assert_ne!(
        own,
        gw.pki.client_material(&ns("orders")).chain[0],
        "not the caller's"
    );
}

#[tokio::test]
async fn an_upstream_refusing_the_gateways_certificate_is_unavailable() {
    let (gw, _) = gateway_with(|_| {}).await;
    // Serves a certificate the gateway trusts, but requires clients of another CA.
    let other = Pki::new();
    let mut material = gw.pki.server();
    material.ca = vec![other.ca.cert_der()];
    let upstream = TlsUpstream::start(&material).await;
    gw.external_endpoint(
        "picky",
        &format!("https://localhost:{}", upstream.addr.port()),
        &["orders"],
    );
    let reply = send(&gw.client(&ns("orders")), call(&gw, "picky", "echo")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.error_type(), "UNAVAILABLE");
    assert!(upstream.clients().is_empty(), "no client got through");
}

#[tokio::test]
async fn an_upstream_certificate_from_an_untrusted_ca_is_unavailable() {
    let untrusted = Pki::new();
    let trusted_ca = Pki::new();
    let ca = trusted_ca.ca.cert_der();
    let (gw, _) = gateway_with(|c| c.upstream.ca = Some(vec![ca])).await;
    // The upstream would accept the gateway's certificate, but its own is from a CA the
    // gateway was told not to trust for upstreams (only `trusted_ca`).
    let mut material = gw.pki.server();
    let theirs = untrusted.server();
    material.chain = theirs.chain;
    material.key = theirs.key;
    let upstream = TlsUpstream::start(&material).await;
    gw.external_endpoint(
        "untrusted",
        &format!("https://localhost:{}", upstream.addr.port()),
        &["orders"],
    );
    let reply = send(&gw.client(&ns("orders")), call(&gw, "untrusted", "echo")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.error_type(), "UNAVAILABLE");
    assert!(
        upstream.clients().is_empty(),
        "the gateway sent nothing to it"
    );
    let refused = &upstream.refused;
    eventually(
        "the upstream saw the handshake fail",
        Duration::from_secs(5),
        async || refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
    )
    .await;
}

#[tokio::test]
async fn plain_http_never_refuses_even_loopback_and_always_allows_it() {
    let (handler, _stop) = serve_reference_handler().await;
    let url = format!("http://{handler}");

    let (never, _) = gateway_with(|c| c.upstream.plain_http = PlainHttp::Never).await;
    never.external_endpoint("plain", &url, &["orders"]);
    let reply = send(&never.client(&ns("orders")), call(&never, "plain", "echo")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.error_type(), "UNAVAILABLE");
    let message = reply.message();
    assert!(
        message.contains("plain http")
            && message.contains("--plain-http-upstreams never")
            && message.contains(&handler.to_string()),
        "names the destination and the policy: {message}"
    );

    let (always, _) = gateway_with(|c| c.upstream.plain_http = PlainHttp::Always).await;
    always.external_endpoint("plain", &url, &["orders"]);
    let reply = send(
        &always.client(&ns("orders")),
        call(&always, "plain", "echo"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body, "over mTLS");
}
