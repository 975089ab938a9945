//! The proxy's connections to external handlers: kept and reused between calls, one shared
//! HTTP/2 connection for a burst, and a connection the handler closed never costs a call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use nexus_e2e::*;
use nexus_gateway::client::HttpClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// An HTTPS Nexus handler ([`reference_handler`]) offering only `alpn`, which counts its TLS
/// connections and records the protocol each negotiated; `delay` slows every answer.
struct TlsHandler {
    addr: SocketAddr,
    protocols: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl TlsHandler {
    async fn start(gw: &TestGateway, alpn: &[&[u8]], delay: Duration) -> TlsHandler {
        let mut config = nexus_certs::server_config(&gw.pki.server()).expect("TLS config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler = TlsHandler {
            addr: listener.local_addr().unwrap(),
            protocols: Default::default(),
            stop: CancellationToken::new(),
        };
        let (protocols, stop) = (handler.protocols.clone(), handler.stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    Ok((tcp, _)) = listener.accept() => tcp,
                    () = stop.cancelled() => break,
                };
                let (acceptor, protocols) = (acceptor.clone(), protocols.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(REQUEST_BOUND, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let protocol = tls.get_ref().1.alpn_protocol().unwrap_or_default();
                    protocols
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(protocol).into_owned());
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| async move {
                            tokio::time::sleep(delay).await;
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes());
                            let body = body.unwrap_or_default();
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
        handler
    }

    fn protocols(&self) -> Vec<String> {
        self.protocols.lock().unwrap().clone()
    }
}

impl Drop for TlsHandler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn echo(gw: &TestGateway, endpoint: &str, text: &str) -> Request<Full<Bytes>> {
    post(
        gw.uri(&format!("/nexus/endpoints/{endpoint}/services/svc/echo")),
        &[("content-type", "text/plain")],
        text.to_owned(),
    )
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection_over_http1_and_http2() {
    let gw = TestGateway::start().await;
    let caller = gw.client(&ns("orders"));
    for (name, alpn) in [("h2", b"h2".as_slice()), ("http1", b"http/1.1".as_slice())] {
        let handler = TlsHandler::start(&gw, &[alpn], Duration::ZERO).await;
        let url = format!("https://localhost:{}", handler.addr.port());
        gw.external_endpoint(name, &url, &["orders"]);
        for i in 0..10 {
            let reply = send(&caller, echo(&gw, name, &format!("call {i}"))).await;
            assert_eq!(
                (reply.status.as_u16(), text(&reply)),
                (200, format!("call {i}"))
            );
        }
        let protocol = String::from_utf8_lossy(alpn).into_owned();
        assert_eq!(
            handler.protocols(),
            vec![protocol],
            "one connection for {name}"
        );
    }
}

#[tokio::test]
async fn a_burst_to_an_http2_handler_shares_one_connection() {
    let gw = TestGateway::start().await;
    let handler = TlsHandler::start(&gw, &[b"h2"], Duration::from_millis(50)).await;
    let url = format!("https://localhost:{}", handler.addr.port());
    gw.external_endpoint("shared", &url, &["orders"]);
    let caller = gw.client(&ns("orders"));
    let requests = (0..20).map(|i| echo(&gw, "shared", &format!("call {i}")));
    let replies = burst(&caller, requests.collect()).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            (reply.status.as_u16(), text(reply)),
            (200, format!("call {i}"))
        );
    }
    assert_eq!(handler.protocols(), vec!["h2".to_owned()]);
}

#[tokio::test]
async fn a_burst_to_an_http1_handler_runs_in_parallel_and_its_connections_are_kept() {
    let gw = TestGateway::start().await;
    let handler = TlsHandler::start(&gw, &[b"http/1.1"], Duration::from_millis(200)).await;
    let url = format!("https://localhost:{}", handler.addr.port());
    gw.external_endpoint("parallel", &url, &["orders"]);
    let caller = gw.client(&ns("orders"));
    let requests = || {
        (0..8)
            .map(|i| echo(&gw, "parallel", &format!("call {i}")))
            .collect()
    };
    for reply in burst(&caller, requests()).await {
        assert_eq!(reply.status, 200, "{}", text(&reply));
    }
    let opened = handler.protocols().len();
    assert!(
        (2..=8).contains(&opened),
        "8 concurrent calls to an HTTP/1.1 handler opened {opened} connections"
    );
    // The same burst again finds them idle.
    for reply in burst(&caller, requests()).await {
        assert_eq!(reply.status, 200, "{}", text(&reply));
    }
    assert_eq!(handler.protocols().len(), opened, "no new connection");
}

/// A plain-HTTP handler that answers `ok` with keep-alive headers and then closes the
/// connection anyway, as a server does when its idle timeout ends at the wrong moment.
async fn closing_handler() -> (SocketAddr, Arc<AtomicUsize>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, stop) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
    let (count, stopped) = (connections.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let mut tcp = tokio::select! {
                Ok((tcp, _)) = listener.accept() => tcp,
                () = stopped.cancelled() => break,
            };
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !request_is_whole(&seen) {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                              content-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, connections, stop)
}

#[tokio::test]
async fn a_connection_the_handler_closed_never_costs_a_call() {
    let gw = TestGateway::start().await;
    let (addr, connections, stop) = closing_handler().await;
    gw.external_endpoint("closing", &format!("http://{addr}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    for i in 0..10 {
        let reply = send(&caller, echo(&gw, "closing", &format!("call {i}"))).await;
        assert_eq!(
            (reply.status.as_u16(), text(&reply)),
            (200, "ok".to_owned()),
            "call {i}"
        );
        // Half the calls come at once, half after the close has surely been seen.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        connections.load(SeqCst),
        10,
        "each call on its own connection"
    );
    stop.cancel();
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// Sends `requests` at once; the replies in their order.
async fn burst(caller: &HttpClient, requests: Vec<Request<Full<Bytes>>>) -> Vec<Reply> {
    let calls: Vec<_> = requests
        .into_iter()
        .map(|request| tokio::spawn(send_owned(caller.clone(), request)))
        .collect();
    let mut replies = Vec::with_capacity(calls.len());
    for call in calls {
        replies.push(call.await.expect("call task"));
    }
    replies
}

async fn send_owned(caller: HttpClient, request: Request<Full<Bytes>>) -> Reply {
    send(&caller, request).await
}
