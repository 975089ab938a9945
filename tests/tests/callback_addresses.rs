//! Where completions may go: callers cannot make the gateway POST to loopback, private or its
//! own addresses (SSRF), cannot smuggle framing or routing headers through `Nexus-Callback-*`,
//! and cannot slip a callback past the seal with a percent-encoded query key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_e2e::*;

const BOUND: Duration = Duration::from_secs(10);

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A gateway with the default callback policy (https to public addresses only), and an
/// external endpoint whose handler must never be reached by a refused start.
async fn strict() -> (TestGateway, CountingServer) {
    let gw = TestGateway::start_with(|c| c.callbacks.allowed.clear()).await;
    let handler = CountingServer::start().await;
    gw.external_endpoint("payments", &format!("http://{}", handler.addr), &["orders"]);
    (gw, handler)
}

#[tokio::test]
async fn callbacks_to_loopback_private_or_plain_http_are_refused_before_forwarding() {
    let (gw, handler) = strict().await;
    let caller = gw.client(&ns("orders"));
    let ops = gw.ops_addr.port();
    for (callback, message) in [
        (
            format!("http://127.0.0.1:{ops}/metrics"),
            format!(
                "callback URL \"http://127.0.0.1:{ops}/metrics\" must use https: plain http only to hosts listed in [callbacks] allowed with allow_insecure = true"
            ),
        ),
        (
            format!("https://127.0.0.1:{ops}/metrics"),
            format!(
                "callback URL \"https://127.0.0.1:{ops}/metrics\" is not allowed: 127.0.0.1 is a loopback address; callbacks go only to public addresses unless the host is listed in [callbacks] allowed"
            ),
        ),
        (
            "https://localhost/x".to_owned(),
            "callback URL \"https://localhost/x\" is not allowed: localhost is a loopback name; callbacks go only to public addresses unless the host is listed in [callbacks] allowed".to_owned(),
        ),
        (
            "https://169.254.169.254/latest/meta-data".to_owned(),
            "callback URL \"https://169.254.169.254/latest/meta-data\" is not allowed: 169.254.169.254 is a link-local address; callbacks go only to public addresses unless the host is listed in [callbacks] allowed".to_owned(),
        ),
        (
            "https://[fd12::1]/x".to_owned(),
            "callback URL \"https://[fd12::1]/x\" is not allowed: fd12::1 is a unique-local address; callbacks go only to public addresses unless the host is listed in [callbacks] allowed".to_owned(),
        ),
    ] {
        let uri = gw.uri(&format!(
            "/nexus/endpoints/payments/services/svc/op?callback={}",
            encode(&callback)
        ));
        let reply = send(&caller, post(uri, &[], "")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_type(), reply.message()),
            (400, "BAD_REQUEST".to_owned(), message),
            "{callback}"
        );
    }
    assert_eq!(handler.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_at_delivery_without_connecting() {
    let gw = TestGateway::start_with(|c| c.callbacks.allowed.clear()).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let receiver = CountingServer::start().await;
    // The machine's own name is a name like any other until it is resolved, to a loopback or
    // private address of this machine: only the check on the resolved address can catch it.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let callback = format!("https://{host}:{}/cb", receiver.addr.port());
    let uri = gw.uri(&format!(
        "/nexus/endpoints/payments/services/svc/headers?callback={}",
        encode(&callback)
    ));
    let reply = send(&gw.client(&ns("orders")), post(uri, &[], "")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    complete_through(&gw, &reply, "ok").await;
    let admin = gw.client(&admin());
    let failed = gw.uri("/api/v1/callbacks?state=failed");
    let mut last_error = String::new();
    eventually("the completion is given up", BOUND, async || {
        let list = send(&admin, get(failed.clone())).await.json();
        match list["completions"].as_array().and_then(|l| l.first()) {
            Some(entry) => {
                last_error = entry["lastError"].as_str().unwrap_or_default().to_owned();
                true
            }
            None => false,
        }
    })
    .await;
    let refused = format!(
        "{host}:{}: {host} resolves only to addresses callbacks may not reach",
        receiver.addr.port()
    );
    assert!(last_error.starts_with(&refused), "{last_error}");
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 0);
}

/// Completes, as the handler namespace, the operation whose start `reply` reports (the
/// reference handler echoes the query it got, with the sealed callback URL).
async fn complete_through(gw: &TestGateway, reply: &Reply, result: &'static str) {
    let sealed = sealed_callback_seen_by(reply);
    let done = post(
        sealed.parse().unwrap(),
        &[("nexus-operation-state", "succeeded")],
        result,
    );
    assert_eq!(send(&gw.client(&ns("billing")), done).await.status, 200);
}

fn get(uri: http::Uri) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(uri)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// Starts an async operation on the worker endpoint `payments` with `query` as the query
/// string; returns the query the handler saw.
async fn start(gw: &TestGateway, query: &str, headers: &[(&str, &str)]) -> Reply {
    let uri = gw.uri(&format!(
        "/nexus/endpoints/payments/services/svc/headers?{query}"
    ));
    send(&gw.client(&ns("orders")), post(uri, headers, "")).await
}

#[tokio::test]
async fn callback_headers_never_supply_framing_routing_or_gateway_headers() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let mut receiver = Receiver::start(200).await;
    let callback = format!("http://{}/cb", receiver.addr);
    let reply = start(
        &gw,
        &format!("callback={}", encode(&callback)),
        &[
            ("nexus-callback-host", "internal.example"),
            ("nexus-callback-transfer-encoding", "chunked"),
            ("nexus-callback-connection", "close"),
            ("nexus-callback-content-length", "1"),
            ("nexus-callback-nexus-operation-state", "failed"),
            ("nexus-callback-token", "caller-token"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    complete_through(&gw, &reply, "result").await;
    let got = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(got.header("token"), Some("caller-token"));
    assert_eq!(got.header("host"), Some(receiver.addr.to_string().as_str()));
    assert_eq!(got.header("transfer-encoding"), None);
    assert_eq!(got.header("connection"), None);
    assert_eq!(got.header("content-length"), Some("6"));
    assert_eq!(got.header("nexus-operation-state"), Some("succeeded"));
    assert_eq!(got.body.as_ref(), b"result");
}

#[tokio::test]
async fn a_percent_encoded_callback_key_is_sealed_and_two_callbacks_are_refused() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let callback = encode("http://127.0.0.1:9/cb");
    let reply = start(&gw, &format!("%63allback={callback}&x=1"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let query = reply.json()["query"].as_str().unwrap().to_owned();
    let prefix = format!(
        "callback={}",
        encode(&format!(
            "https://localhost:{}/nexus/callbacks/",
            gw.data_addr.port()
        ))
    );
    assert!(query.starts_with(&prefix), "{query}");
    assert!(query.ends_with("&x=1"), "{query}");
    assert!(!query.contains("127.0.0.1"), "{query}");

    let reply = start(
        &gw,
        &format!("callback={callback}&callback={callback}"),
        &[],
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.message()),
        (400, "more than one callback query parameter".to_owned())
    );
}
