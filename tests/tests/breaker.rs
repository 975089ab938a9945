//! The circuit breaker of a destination's lane: more than 5 consecutive destination-down
//! outcomes (429s, timeouts) open it, an open breaker answers 503 with Retry-After without
//! touching the destination, after `open_for` one probe goes through, and starts and cancels
//! have lanes (and breakers) of their own.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_e2e::*;

const BOUND: Duration = Duration::from_secs(15);

fn start(gw: &TestGateway) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    post(gw.uri("/nexus/endpoints/flaky/services/svc/op"), &[], "")
}

fn is_breaker_open(reply: &Reply) -> bool {
    reply.status == 503 && reply.message().contains("circuit breaker open")
}

/// Answers 429 six times through `gw`, each reaching `receiver`.
async fn six_429s(gw: &TestGateway, receiver: &mut Receiver) {
    let caller = gw.client(&ns("orders"));
    for i in 0..6 {
        let reply = send(&caller, start(gw)).await;
        assert_eq!(reply.status, 429, "call {i} relayed: {:?}", reply.body);
        assert!(receiver.next(BOUND).await.is_some(), "call {i} reached it");
    }
}

#[tokio::test]
async fn six_429s_open_the_breaker_and_one_probe_goes_through_after_open_for() {
    let gw = TestGateway::start_with(|c| {
        c.outbound.defaults.breaker.open_for = Duration::from_secs(1);
    })
    .await;
    let mut receiver = Receiver::start(429).await;
    gw.external_endpoint("flaky", &format!("http://{}", receiver.addr), &["orders"]);
    let caller = gw.client(&ns("orders"));
    six_429s(&gw, &mut receiver).await;

    let open = send(&caller, start(&gw)).await;
    assert!(is_breaker_open(&open), "{:?}", open.body);
    assert_eq!(open.error_type(), "UNAVAILABLE");
    let retry_after: u64 = open.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Had it been sent, the receiver would have recorded it before the gateway could answer.
    assert!(
        receiver.captured.try_recv().is_err(),
        "the open breaker sent nothing"
    );

    // After open_for, one probe reaches the destination; still 429, so it opens again.
    let mut probe = None;
    eventually("a probe is let through", BOUND, async || {
        let reply = send(&caller, start(&gw)).await;
        if is_breaker_open(&reply) {
            return false;
        }
        probe = Some(reply);
        true
    })
    .await;
    assert_eq!(probe.unwrap().status, 429);
    assert!(receiver.captured.try_recv().is_ok(), "the probe arrived");
    assert!(
        receiver.captured.try_recv().is_err(),
        "nothing but the probe arrived"
    );
    let reopened = send(&caller, start(&gw)).await;
    assert!(
        is_breaker_open(&reopened),
        "a failed probe reopens the breaker: {:?}",
        reopened.body
    );
    assert!(receiver.captured.try_recv().is_err());

    // The destination recovers: the next probe succeeds and closes the breaker.
    receiver.set_status(200);
    eventually("a probe succeeds", BOUND, async || {
        send(&caller, start(&gw)).await.status == 200
    })
    .await;
    while receiver.captured.try_recv().is_ok() {}
    for _ in 0..10 {
        assert_eq!(send(&caller, start(&gw)).await.status, 200);
        assert!(
            receiver.captured.try_recv().is_ok(),
            "closed: every call goes"
        );
    }
}

#[tokio::test]
async fn six_timeouts_open_the_breaker_without_another_connection() {
    let (stalled, accepted, _stop) = stalled_server().await;
    let gw = TestGateway::start().await;
    gw.external_endpoint("flaky", &format!("http://{stalled}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let mut calls = Vec::new();
    for _ in 0..6 {
        let (caller, uri) = (
            caller.clone(),
            gw.uri("/nexus/endpoints/flaky/services/svc/op"),
        );
        calls.push(tokio::spawn(async move {
            send(&caller, post(uri, &[("request-timeout", "2500ms")], "")).await
        }));
    }
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 520, "{:?}", reply.body);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
    let open = send(&caller, start(&gw)).await;
    assert!(is_breaker_open(&open), "{:?}", open.body);
    assert!(open.header("retry-after").is_some());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        6,
        "no connection for a call the breaker refused"
    );
}

#[tokio::test]
async fn cancels_still_reach_a_destination_whose_start_breaker_is_open() {
    let gw = TestGateway::start().await;
    let mut receiver = Receiver::start(429).await;
    gw.external_endpoint(
        "flaky",
        &format!("http://{}", receiver.addr),
        &["orders", "shipping"],
    );
    let caller = gw.client(&ns("orders"));
    six_429s(&gw, &mut receiver).await;
    assert!(is_breaker_open(&send(&caller, start(&gw)).await));

    receiver.set_status(202);
    let cancel = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/flaky/services/svc/op/cancel"),
            &[("nexus-operation-token", "op-1")],
            "",
        ),
    )
    .await;
    assert_eq!(cancel.status, 202, "{:?}", cancel.body);
    let seen = receiver.captured.try_recv().expect("the cancel arrived");
    assert!(seen.path.ends_with("/svc/op/cancel"), "{}", seen.path);
    assert_eq!(seen.header("nexus-operation-token"), Some("op-1"));

    // Starts stay refused; another caller namespace has a lane of its own.
    assert!(is_breaker_open(&send(&caller, start(&gw)).await));
    assert!(receiver.captured.try_recv().is_err());
    let other = send(&gw.client(&ns("shipping")), start(&gw)).await;
    assert_eq!(other.status, 202, "{:?}", other.body);
    assert!(receiver.captured.try_recv().is_ok());
}
