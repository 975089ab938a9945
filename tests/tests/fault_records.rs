//! Attribution records of calls that fail: each refusal and each destination fault gets its
//! record with the outcome metering reads, and none of them is billable. A completion's record
//! names the handler that posted it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_e2e::*;
use nexus_gateway::inbound::Rate;
use nexus_outbound_queue::LaneSettings;
use serde_json::Value;

/// The one record of the call with `request_id`.
async fn record_of(gw: &TestGateway, request_id: &str) -> Value {
    let found: Vec<Value> = attribution_events(gw, 0, 10_000)
        .await
        .into_iter()
        .filter(|r| r["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "one record for {request_id}: {found:?}");
    found.into_iter().next().unwrap()
}

fn call(gw: &TestGateway, endpoint: &str, request_id: &str, timeout: &str) -> CallRequest {
    post(
        gw.uri(&format!("/nexus/endpoints/{endpoint}/services/svc/echo")),
        &[
            ("nexus-request-id", request_id),
            ("request-timeout", timeout),
        ],
        "x",
    )
}

type CallRequest = http::Request<http_body_util::Full<bytes::Bytes>>;

fn assert_fault(record: &Value, outcome: &str, status: u16) {
    assert_eq!(record["outcome"], outcome, "{record}");
    assert_eq!(record["status"], status, "{record}");
    assert_eq!(record["billable"], 0, "faults are never billed: {record}");
    assert_eq!(record["caller_namespace"], "orders", "{record}");
}

#[tokio::test]
async fn inbound_rate_limit_refusal_is_recorded_unbilled() {
    let gw = TestGateway::start_with(|c| {
        c.inbound.caller_overrides.insert(
            "orders".into(),
            Rate {
                per_second: 1,
                burst: 1,
            },
        );
        c.inbound.push_back = Duration::ZERO;
    })
    .await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    let first = send(&caller, call(&gw, "payments", "in-1", "10s")).await;
    assert_eq!(first.status, 200);
    let second = send(&caller, call(&gw, "payments", "in-2", "10s")).await;
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(record_of(&gw, "in-1").await["billable"], 1);
    let record = record_of(&gw, "in-2").await;
    assert_fault(&record, "rejected:resource_exhausted", 429);
    assert_eq!(record["endpoint"], "payments");
}

#[tokio::test]
async fn lane_full_and_external_timeout_are_recorded_with_the_target_url() {
    let (stalled, accepted, _stop) = stalled_server().await;
    let host = stalled.to_string();
    let gw = TestGateway::start_with(|c| {
        c.outbound.per_destination.insert(
            host,
            LaneSettings {
                concurrency: 1,
                buffer: 0,
                ..Default::default()
            },
        );
    })
    .await;
    let url = format!("http://{stalled}");
    gw.external_endpoint("stalled", &url, &["orders"]);
    let caller = gw.client(&ns("orders"));
    let stuck = tokio::spawn({
        let (caller, request) = (caller.clone(), call(&gw, "stalled", "ext-slow", "2500ms"));
        async move { send(&caller, request).await }
    });
    eventually(
        "the first call holds the lane's one slot",
        Duration::from_secs(10),
        async || accepted.load(Ordering::SeqCst) == 1,
    )
    .await;
    let full = send(&caller, call(&gw, "stalled", "ext-full", "10s")).await;
    assert_eq!(full.status, 429, "{:?}", full.body);
    assert!(full.header("retry-after").is_some());
    let timed_out = stuck.await.unwrap();
    assert_eq!(timed_out.status, 520, "{:?}", timed_out.body);

    let record = record_of(&gw, "ext-full").await;
    assert_fault(&record, "rejected:resource_exhausted", 429);
    assert_eq!(record["target_url"], url.as_str());
    let record = record_of(&gw, "ext-slow").await;
    assert_fault(&record, "upstream_timeout", 520);
    assert_eq!(record["target_url"], url.as_str());
    assert_eq!(record["endpoint"], "stalled");
}

#[tokio::test]
async fn an_open_breaker_is_recorded_unbilled_with_the_target_url() {
    let mut receiver = Receiver::start(503).await;
    let gw = TestGateway::start().await;
    let url = format!("http://{}", receiver.addr);
    gw.external_endpoint("flaky", &url, &["orders"]);
    let caller = gw.client(&ns("orders"));
    for i in 0..6 {
        let id = format!("down-{i}");
        assert_eq!(
            send(&caller, call(&gw, "flaky", &id, "10s")).await.status,
            503
        );
        assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    }
    let open = send(&caller, call(&gw, "flaky", "open", "10s")).await;
    assert_eq!(open.status, 503);
    assert!(open.message().contains("circuit breaker open"));
    // The 503s the destination itself gave are handler answers; the breaker's is the
    // gateway's refusal.
    let relayed = record_of(&gw, "down-0").await;
    assert_eq!(relayed["outcome"], "handler_error", "{relayed}");
    let record = record_of(&gw, "open").await;
    assert_fault(&record, "rejected:unavailable", 503);
    assert_eq!(record["target_url"], url.as_str());
}

#[tokio::test]
async fn no_worker_in_time_is_an_unbilled_upstream_timeout() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let caller = gw.client(&ns("orders"));
    let reply = send(&caller, call(&gw, "payments", "lonely", "2500ms")).await;
    assert_eq!(reply.status, 520, "{:?}", reply.body);
    assert_eq!(reply.error_type(), "UPSTREAM_TIMEOUT");
    let record = record_of(&gw, "lonely").await;
    assert_fault(&record, "upstream_timeout", 520);
    assert_eq!(record["target_namespace"], "billing");
    assert_eq!(record["task_queue"], "charges");
    assert!(record.get("target_url").is_none_or(Value::is_null));
}

#[tokio::test]
async fn a_completion_record_names_the_handler_that_posted_it() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let receiver = Receiver::start(200).await;
    let callback = format!("http://{}/cb", receiver.addr);
    let query =
        percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC);
    let seen = send(
        &gw.client(&ns("orders")),
        post(
            gw.uri(&format!(
                "/nexus/endpoints/payments/services/svc/headers?callback={query}"
            )),
            &[("nexus-request-id", "with-callback")],
            "",
        ),
    )
    .await;
    let sealed = sealed_callback_seen_by(&seen);
    let ack = send(
        &gw.client(&ns("billing")),
        post(
            sealed.parse().unwrap(),
            &[("nexus-operation-state", "succeeded")],
            "done",
        ),
    )
    .await;
    assert_eq!(ack.status, 200, "{:?}", ack.body);
    let completion = attribution_events(&gw, 0, 100)
        .await
        .into_iter()
        .find(|r| r["kind"] == "completion")
        .expect("a completion record");
    assert_eq!(completion["outcome"], "accepted", "{completion}");
    assert_eq!(
        completion["caller_identity"],
        format!("spiffe://{TRUST_DOMAIN}/ns/billing"),
        "the handler's identity: {completion}"
    );
    assert_eq!(completion["caller_namespace"], "orders", "{completion}");
    assert_eq!(completion["request_id"], "with-callback", "{completion}");
    assert_eq!(completion["billable"], 0, "{completion}");
}
