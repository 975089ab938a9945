//! Request bodies over the cap never reach a destination cut short: a declared length over
//! the cap is refused before anything is sent, a streamed body is aborted upstream the moment
//! it crosses the cap. Either way the caller gets 400, nothing is billed and the destination's
//! breaker does not move.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use nexus_e2e::*;
use nexus_gateway::client::{HttpVersions, http_client};

const MAX: usize = 2 * 1024 * 1024;
const OVER: usize = MAX / (64 * 1024) + 1;
const TOO_LARGE: &str = "request body exceeds the limit of 2097152 bytes";

/// `chunks` chunks of 64 KiB with no length announced: sent chunked (HTTP/1.1).
/// `OVER` of them cross the cap with the last chunk, so the caller has sent everything by
/// the time the gateway answers and reads the 400 on a clean connection.
struct Streamed {
    chunks: usize,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.chunks == 0 {
            return Poll::Ready(None);
        }
        self.chunks -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
    }
}

type StreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    BoxBody<Bytes, std::convert::Infallible>,
>;

async fn send_streamed(client: &StreamClient, uri: http::Uri, chunks: usize) -> (u16, String) {
    let request = Request::post(uri)
        .body(Streamed { chunks }.boxed())
        .unwrap();
    let response = tokio::time::timeout(REQUEST_BOUND, client.request(request))
        .await
        .expect("answer in time")
        .expect("an answer, not a reset");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, message)
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_the_upstream_is_contacted() {
    let gw = TestGateway::start().await;
    let upstream = CountingServer::start().await;
    gw.external_endpoint(
        "payments",
        &format!("http://{}", upstream.addr),
        &["orders"],
    );
    let caller = gw.client(&ns("orders"));
    let uri = gw.uri("/nexus/endpoints/payments/services/svc/upload");
    let reply = send(&caller, post(uri.clone(), &[], vec![b'x'; MAX + 1])).await;
    assert_eq!(
        (reply.status.as_u16(), reply.error_type(), reply.message()),
        (400, "BAD_REQUEST".to_owned(), TOO_LARGE.to_owned())
    );
    // Exactly the cap still goes through whole.
    let reply = send(&caller, post(uri, &[], vec![b'x'; MAX])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.completed(), vec![MAX]);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_streamed_body_over_the_cap_is_aborted_upstream_and_never_opens_the_breaker() {
    let gw = TestGateway::start().await;
    let upstream = CountingServer::start().await;
    gw.external_endpoint(
        "payments",
        &format!("http://{}", upstream.addr),
        &["orders"],
    );
    let material = gw.pki.client_material(&ns("orders"));
    let streaming: StreamClient = http_client(&material, HttpVersions::Http1Only).unwrap();
    let uri = gw.uri("/nexus/endpoints/payments/services/svc/upload");
    // More than the breaker's threshold of destination-down outcomes (5), were they counted.
    for round in 1..=7 {
        let seen = upstream.seen.notified();
        let (status, message) = send_streamed(&streaming, uri.clone(), OVER).await;
        assert_eq!(
            (status, message.as_str()),
            (400, TOO_LARGE),
            "round {round}"
        );
        // The upstream saw the request end, cut, not complete.
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .expect("the upstream sees the aborted request");
        assert_eq!(upstream.aborted.load(Ordering::SeqCst), round);
        assert!(
            upstream.completed().is_empty(),
            "{:?}",
            upstream.completed()
        );
    }
    // Under the cap, streamed: relayed whole; the breaker is closed.
    let (status, _) = send_streamed(&streaming, uri, 16).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.completed(), vec![16 * 64 * 1024]);

    let records = attribution_events(&gw, 0, 100).await;
    let outcomes: Vec<(&str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["billable"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![("rejected:bad_request", 0); 7];
    expected.push(("succeeded", 1));
    assert_eq!(outcomes, expected);
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("nexus_gateway_lane_failures_total") && !l.ends_with(" 0")),
        "no destination-down outcome counted:\n{metrics}"
    );
}

#[tokio::test]
async fn a_worker_target_refuses_the_same_bodies_the_same_way() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let material = gw.pki.client_material(&ns("orders"));
    let streaming: StreamClient = http_client(&material, HttpVersions::Http1Only).unwrap();
    let uri = gw.uri("/nexus/endpoints/payments/services/svc/echo");
    let (status, message) = send_streamed(&streaming, uri.clone(), OVER).await;
    assert_eq!((status, message.as_str()), (400, TOO_LARGE));
    let reply = send(
        &gw.client(&ns("orders")),
        post(uri, &[], vec![b'x'; MAX + 1]),
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.message()),
        (400, TOO_LARGE.to_owned())
    );
}
