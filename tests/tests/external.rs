//! External targets: start and cancel proxied to a Nexus HTTP handler, through per-destination
//! lanes that keep a stalled or failing destination from hurting others.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_e2e::*;
use nexus_outbound_queue::LaneSettings;

async fn with_handler() -> (TestGateway, tokio_util::sync::CancellationToken) {
    let gw = TestGateway::start().await;
    let (addr, stop) = serve_reference_handler().await;
    gw.external_endpoint("payments", &format!("http://{addr}/prefix"), &["orders"]);
    (gw, stop)
}

fn op(gw: &TestGateway, rest: &str) -> http::Uri {
    gw.uri(&format!("/nexus/endpoints/payments/services/{rest}"))
}

#[tokio::test]
async fn external_handler_answers_are_relayed_unchanged() {
    let (gw, _stop) = with_handler().await;
    let caller = gw.client(&ns("orders"));
    // The reference handler is mounted at /, so /prefix/svc/... is unknown to it: it answers
    // 404 NOT_FOUND with its own message, relayed as is.
    let reply = send(&caller, post(op(&gw, "svc/echo"), &[], "x")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.message(), "no operation at /prefix/svc/echo");
}

#[tokio::test]
async fn sync_async_failures_and_cancel_through_an_external_target() {
    let gw = TestGateway::start().await;
    let (addr, _stop) = serve_reference_handler().await;
    gw.external_endpoint("payments", &format!("http://{addr}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let echo = send(
        &caller,
        post(
            op(&gw, "svc/echo"),
            &[("content-type", "application/octet-stream")],
            binary.clone(),
        ),
    )
    .await;
    assert_eq!(
        (echo.status.as_u16(), echo.body.as_ref()),
        (200, binary.as_slice())
    );
    assert_eq!(
        echo.header("content-type"),
        Some("application/octet-stream")
    );
    let started = send(
        &caller,
        post(op(&gw, "svc/async"), &[("nexus-request-id", "r7")], ""),
    )
    .await;
    assert_eq!(
        (started.status.as_u16(), started.json()["token"].as_str()),
        (201, Some("op-r7"))
    );
    let failed = send(&caller, post(op(&gw, "svc/fail"), &[], "")).await;
    assert_eq!(
        (
            failed.status.as_u16(),
            failed.header("nexus-operation-state")
        ),
        (424, Some("failed"))
    );
    for kind in ALL_ERROR_TYPES {
        let reply = send(
            &caller,
            post(op(&gw, &format!("svc/error-{}", kind.as_str())), &[], ""),
        )
        .await;
        assert_eq!(
            (reply.status, reply.error_type()),
            (kind.status(), kind.as_str().to_owned())
        );
    }
    let cancel = send(
        &caller,
        post(
            op(&gw, "svc/charge/cancel"),
            &[("nexus-operation-token", "t-9")],
            "",
        ),
    )
    .await;
    assert_eq!(
        (cancel.status.as_u16(), cancel.header("x-seen-token")),
        (202, Some("t-9"))
    );
    let seen = send(
        &caller,
        post(
            op(&gw, "svc/headers"),
            &[
                ("nexus-caller-namespace", "forged"),
                ("connection", "keep-alive"),
                ("request-timeout", "8s"),
                ("authorization", "secret"),
                ("x-custom", "1"),
            ],
            "",
        ),
    )
    .await;
    let h = &seen.json()["headers"];
    assert_eq!(h["nexus-caller-namespace"], "orders");
    assert_eq!(h["x-custom"], "1");
    assert!(h.get("authorization").is_none());
    let left: u64 = h["request-timeout"]
        .as_str()
        .unwrap()
        .trim_end_matches("ms")
        .parse()
        .unwrap();
    assert!(left > 0 && left < 8000, "{left}");
}

#[tokio::test]
async fn slow_external_handler_gets_520_and_dead_one_503() {
    let gw = TestGateway::start().await;
    let (addr, _stop) = serve_reference_handler().await;
    gw.external_endpoint("payments", &format!("http://{addr}"), &["orders"]);
    // Held for the whole test: nothing listens there, and nothing else can start to.
    let dead_port = reserved_port();
    let dead = dead_port.local_addr().unwrap();
    gw.external_endpoint("dead", &format!("http://{dead}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let slow = send(
        &caller,
        post(
            op(&gw, "svc/slow"),
            &[("request-timeout", "1500ms"), ("x-delay-ms", "4000")],
            "",
        ),
    )
    .await;
    assert_eq!(slow.status, 520);
    assert_eq!(slow.error_type(), "UPSTREAM_TIMEOUT");
    let down = send(
        &caller,
        post(gw.uri("/nexus/endpoints/dead/services/svc/echo"), &[], ""),
    )
    .await;
    assert_eq!(down.status, 503);
    assert!(down.message().contains("unreachable"), "{}", down.message());
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_by_default() {
    let gw = TestGateway::start().await;
    gw.external_endpoint("remote", "http://handler.example:8080", &["orders"]);
    let reply = send(
        &gw.client(&ns("orders")),
        post(gw.uri("/nexus/endpoints/remote/services/s/o"), &[], ""),
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.message()),
        (
            503,
            "endpoint \"remote\" targets handler.example:8080 over plain http, which this gateway refuses: plain http is allowed only to loopback hosts unless --plain-http-upstreams always ([upstream] plain_http = \"always\")".to_owned()
        )
    );
}

#[tokio::test]
async fn stalled_destination_is_capped_and_healthy_ones_are_untouched() {
    let (stalled, accepted, _stop) = stalled_server().await;
    let stalled_host = stalled.to_string();
    let gw = TestGateway::start_with(|c| {
        c.outbound.per_destination.insert(
            stalled_host,
            LaneSettings {
                concurrency: 3,
                buffer: 2,
                ..Default::default()
            },
        );
    })
    .await;
    let (healthy, _h) = serve_reference_handler().await;
    gw.external_endpoint("stalled", &format!("http://{stalled}"), &["orders"]);
    gw.external_endpoint("healthy", &format!("http://{healthy}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    // Fill the stalled lane: 3 in flight + 2 waiting.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let caller = caller.clone();
        let uri = gw.uri("/nexus/endpoints/stalled/services/svc/echo");
        stuck.push(tokio::spawn(async move {
            send(&caller, post(uri, &[("request-timeout", "6s")], "")).await
        }));
    }
    let probe = &accepted;
    eventually(
        "3 connections to the stalled destination",
        Duration::from_secs(5),
        async || probe.load(Ordering::SeqCst) >= 3,
    )
    .await;
    // The next one is refused at once: lane full.
    let full = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/stalled/services/svc/echo"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(full.status, 429);
    assert_eq!(full.error_type(), "RESOURCE_EXHAUSTED");
    assert!(full.header("retry-after").is_some());
    // Healthy destinations keep answering meanwhile.
    for i in 0..20 {
        let reply = send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/healthy/services/svc/echo"),
                &[],
                format!("{i}"),
            ),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "never more connections than the concurrency cap"
    );
    for s in stuck {
        assert_eq!(s.await.unwrap().status, 520);
    }
}

#[tokio::test]
async fn failing_destination_opens_the_breaker_and_gets_503_at_once() {
    let mut receiver = Receiver::start(503).await;
    let gw = TestGateway::start().await;
    gw.external_endpoint(
        "flaky",
        &format!("http://{}", receiver.addr),
        &["orders", "shipping"],
    );
    let caller = gw.client(&ns("orders"));
    let call = || post(gw.uri("/nexus/endpoints/flaky/services/s/o"), &[], "");
    for _ in 0..6 {
        assert_eq!(send(&caller, call()).await.status, 503);
        assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    }
    let open = send(&caller, call()).await;
    assert_eq!(open.status, 503);
    assert!(
        open.message().contains("circuit breaker open"),
        "{}",
        open.message()
    );
    let retry_after: u64 = open.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    // Another caller has a lane (and breaker) of its own to the same destination: its call,
    // made after the refusal, is the next (and only) request the destination sees.
    let other = send(
        &gw.client(&ns("shipping")),
        post(gw.uri("/nexus/endpoints/flaky/services/s/o"), &[], ""),
    )
    .await;
    assert_eq!(other.status, 503);
    assert!(
        !String::from_utf8_lossy(&other.body).contains("circuit breaker open"),
        "{:?}",
        other.body
    );
    let next = receiver.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        next.header("nexus-caller-namespace"),
        Some("shipping"),
        "the open breaker sends nothing"
    );
    assert!(
        receiver.captured.try_recv().is_err(),
        "the open breaker sends nothing"
    );
}

#[tokio::test]
async fn operation_failures_never_open_the_breaker() {
    let mut receiver = Receiver::start(424).await;
    let gw = TestGateway::start().await;
    gw.external_endpoint(
        "failing-ops",
        &format!("http://{}", receiver.addr),
        &["orders"],
    );
    let caller = gw.client(&ns("orders"));
    for _ in 0..10 {
        let reply = send(
            &caller,
            post(gw.uri("/nexus/endpoints/failing-ops/services/s/o"), &[], ""),
        )
        .await;
        assert_eq!(
            reply.status, 424,
            "relayed from the destination, not refused by the gateway"
        );
        assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    }
}

/// A handler that reads `Content-Length` (and knows nothing of chunked encoding) gets the
/// caller's body whole, with the caller's length, over HTTP/1.1 and HTTP/2 callers alike.
#[tokio::test]
async fn relayed_requests_keep_their_content_length() {
    let mut receiver = Receiver::start(200).await;
    let gw = TestGateway::start().await;
    gw.external_endpoint("sized", &format!("http://{}", receiver.addr), &["orders"]);
    let body = br#"{"orderId":"ord-7f3a9c2e"}"#;
    let h1 = nexus_gateway::client::http_client(
        &gw.pki.client_material(&ns("orders")),
        nexus_gateway::client::HttpVersions::Http1Only,
    )
    .unwrap();
    for caller in [gw.client(&ns("orders")), h1] {
        let uri = gw.uri("/nexus/endpoints/sized/services/s/o");
        let reply = send(&caller, post(uri, &[], &body[..])).await;
        assert_eq!(reply.status, 200);
        let seen = receiver.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(seen.body, &body[..]);
        assert_eq!(seen.header("content-length"), Some("26"));
        assert_eq!(seen.header("transfer-encoding"), None);
    }
}
