//! Caller → gateway → polling worker → back, over real mTLS: what a caller and a handler see.

use bytes::Bytes;
use nexus_e2e::*;
use nexus_gateway::client::{HttpVersions, http_client};

const ENDPOINT: &str = "payments";

async fn setup() -> (TestGateway, WorkerHandle) {
    let gw = TestGateway::start().await;
    gw.worker_endpoint(ENDPOINT, "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    (gw, worker)
}

fn op(gw: &TestGateway, rest: &str) -> http::Uri {
    gw.uri(&format!("/nexus/endpoints/{ENDPOINT}/services/{rest}"))
}

#[tokio::test]
async fn sync_json_result_comes_back_unchanged() {
    let (gw, _worker) = setup().await;
    let caller = gw.client(&ns("orders"));
    let reply = send(
        &caller,
        post(
            op(&gw, "svc/echo"),
            &[
                ("content-type", "application/json"),
                ("request-timeout", "10000ms"),
                ("nexus-request-id", "r-1"),
            ],
            r#"{"amount":42}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, r#"{"amount":42}"#);
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn binary_payload_by_endpoint_id_is_byte_for_byte() {
    let gw = TestGateway::start().await;
    let endpoint = gw.worker_endpoint(ENDPOINT, "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let uri = gw.uri(&format!(
        "/nexus/endpoints/{}/services/svc/echo",
        endpoint.id
    ));
    let reply = send(
        &gw.client(&ns("orders")),
        post(
            uri,
            &[("content-type", "application/octet-stream")],
            payload.clone(),
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Bytes::from(payload));
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
}

#[tokio::test]
async fn worker_sees_caller_headers_sealed_callback_and_verified_namespace() {
    let (gw, _worker) = setup().await;
    let reply = send(
        &gw.client(&ns("orders")),
        post(
            op(
                &gw,
                "svc/headers?callback=https%3A%2F%2Fcaller.example%2Fcb%3Fx%3D1",
            ),
            &[
                ("content-type", "application/json"),
                ("nexus-request-id", "7f1c2a8e-0000-4000-8000-000000000001"),
                (
                    "nexus-link",
                    "<temporal:///namespaces/orders/workflows/wf/run>; type=\"x\"",
                ),
                ("nexus-callback-temporal-callback-token", "secret-token"),
                ("operation-timeout", "1m"),
                ("request-timeout", "9998ms"),
                ("temporal-nexus-failure-support", "true"),
                ("user-agent", "temporalio/server"),
                ("x-custom", "kept"),
                ("nexus-caller-namespace", "forged"),
                ("authorization", "Bearer caller-secret"),
                ("nexus-task-token", "forged"),
            ],
            "{}",
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = reply.json();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/svc/headers");
    // The callback is sealed: the handler gets the gateway's callback URL instead.
    let query = seen["query"].as_str().unwrap();
    let sealed = format!(
        "callback=https%3A%2F%2Flocalhost%3A{}%2Fnexus%2Fcallbacks%2F",
        gw.data_addr.port()
    );
    assert!(query.starts_with(&sealed), "{query}");
    assert_eq!(
        h["nexus-caller-namespace"], "orders",
        "the gateway sets it from the certificate"
    );
    assert_eq!(
        h["nexus-request-id"],
        "7f1c2a8e-0000-4000-8000-000000000001"
    );
    assert_eq!(
        h["nexus-link"],
        "<temporal:///namespaces/orders/workflows/wf/run>; type=\"x\""
    );
    assert!(
        h.get("nexus-callback-temporal-callback-token").is_none(),
        "sealed, not forwarded"
    );
    assert_eq!(h["operation-timeout"], "1m");
    assert_eq!(h["temporal-nexus-failure-support"], "true");
    assert_eq!(h["user-agent"], "temporalio/server");
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("authorization").is_none(),
        "caller credentials are not forwarded"
    );
    for name in h.as_object().unwrap().keys() {
        assert!(
            !name.starts_with("nexus-task-"),
            "internal header {name} leaked to the handler"
        );
    }
    // The handler gets the time left, in whole milliseconds, less than the caller's.
    let left: u64 = h["request-timeout"]
        .as_str()
        .unwrap()
        .trim_end_matches("ms")
        .parse()
        .unwrap();
    assert!(left > 0 && left < 9998, "{left}");
}

#[tokio::test]
async fn async_start_relays_token_and_links() {
    let (gw, _worker) = setup().await;
    let reply = send(
        &gw.client(&ns("orders")),
        post(op(&gw, "svc/async"), &[("nexus-request-id", "abc")], ""),
    )
    .await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.json(),
        serde_json::json!({"token": "op-abc", "state": "running"})
    );
    assert!(
        reply
            .header("nexus-link")
            .unwrap()
            .contains("temporal:///namespaces/h/workflows/w")
    );
}

#[tokio::test]
async fn failed_and_canceled_operations_keep_state_header_and_body() {
    let (gw, _worker) = setup().await;
    let caller = gw.client(&ns("orders"));
    for (operation, state) in [("fail", "failed"), ("cancelled", "canceled")] {
        let reply = send(&caller, post(op(&gw, &format!("svc/{operation}")), &[], "")).await;
        assert_eq!(reply.status, 424);
        assert_eq!(reply.header("nexus-operation-state"), Some(state));
        assert_eq!(
            reply.json(),
            serde_json::json!({"message": format!("operation {state}"), "details": {"code": 7}})
        );
    }
}

#[tokio::test]
async fn every_handler_error_type_is_relayed_with_status_and_body() {
    let (gw, _worker) = setup().await;
    let caller = gw.client(&ns("orders"));
    for kind in ALL_ERROR_TYPES {
        let reply = send(
            &caller,
            post(op(&gw, &format!("svc/error-{}", kind.as_str())), &[], ""),
        )
        .await;
        assert_eq!(reply.status, kind.status(), "{}", kind.as_str());
        assert_eq!(reply.error_type(), kind.as_str());
        assert_eq!(reply.message(), format!("handler says {}", kind.as_str()));
        assert_eq!(
            reply.header("temporal-nexus-failure-source"),
            Some("handler")
        );
    }
}

#[tokio::test]
async fn cancel_reaches_the_worker_in_all_three_forms() {
    let (gw, _worker) = setup().await;
    let caller = gw.client(&ns("orders"));
    let by_header = send(
        &caller,
        post(
            op(&gw, "svc/charge/cancel"),
            &[("nexus-operation-token", "tok-1")],
            "",
        ),
    )
    .await;
    assert_eq!(by_header.status, 202);
    assert_eq!(by_header.header("x-seen-token"), Some("tok-1"));
    assert!(by_header.body.is_empty());

    let by_query = send(
        &caller,
        post(op(&gw, "svc/charge/cancel?token=tok%2B2"), &[], ""),
    )
    .await;
    assert_eq!(by_query.status, 202);
    assert_eq!(by_query.header("x-seen-token"), Some("tok+2"));

    let legacy = send(&caller, post(op(&gw, "svc/charge/tok-3/cancel"), &[], "")).await;
    assert_eq!(legacy.status, 202);
    assert_eq!(legacy.header("x-seen-token"), Some("tok-3"));

    let missing = send(&caller, post(op(&gw, "svc/charge/cancel"), &[], "")).await;
    assert_eq!(missing.status, 400);
    assert!(
        missing.message().contains("missing operation token"),
        "{}",
        missing.message()
    );
}

#[tokio::test]
async fn slow_handler_past_request_timeout_gets_retryable_520() {
    let (gw, _worker) = setup().await;
    let reply = send(
        &gw.client(&ns("orders")),
        post(
            op(&gw, "svc/slow"),
            &[("request-timeout", "1500ms"), ("x-delay-ms", "4000")],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 520);
    assert_eq!(reply.error_type(), "UPSTREAM_TIMEOUT");
    assert_eq!(reply.json()["details"]["retryableOverride"], true);
}

#[tokio::test]
async fn http2_and_http1_callers_both_work() {
    let (gw, _worker) = setup().await;
    let h2 = send(
        &gw.client(&ns("orders")),
        post(op(&gw, "svc/echo"), &[], "two"),
    )
    .await;
    assert_eq!(
        (h2.status.as_u16(), h2.version),
        (200, http::Version::HTTP_2)
    );
    let h1_client = http_client(
        &gw.pki.client_material(&ns("orders")),
        HttpVersions::Http1Only,
    )
    .unwrap();
    let h1 = send(&h1_client, post(op(&gw, "svc/echo"), &[], "one")).await;
    assert_eq!(
        (h1.status.as_u16(), h1.version),
        (200, http::Version::HTTP_11)
    );
    assert_eq!(h1.body, "one");
}

#[tokio::test]
async fn many_concurrent_calls_all_get_their_own_answer() {
    let (gw, _worker) = setup().await;
    let caller = gw.client(&ns("orders"));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let caller = caller.clone();
        let uri = op(&gw, "svc/echo");
        calls.spawn(async move { (i, send(&caller, post(uri, &[], format!("call-{i}"))).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (i, reply) = done.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("call-{i}"));
    }
}

#[tokio::test]
async fn an_answer_can_carry_the_next_task() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint(ENDPOINT, "billing", "charges", &["orders"]);
    let caller = gw.client(&ns("orders"));
    let mut calls = Vec::new();
    for body in ["one", "two"] {
        let caller = caller.clone();
        let uri = op(&gw, "svc/echo");
        calls.push(tokio::spawn(async move {
            send(&caller, post(uri, &[("request-timeout", "10s")], body)).await
        }));
    }
    let worker = gw.client(&ns("billing"));
    let first = send(
        &worker,
        post(
            gw.uri("/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll"),
            &[("request-timeout", "5s")],
            "",
        ),
    )
    .await;
    assert_eq!(first.status, 200);
    let token = first.header("nexus-task-token").unwrap();
    let respond = gw.uri(&format!(
        "/api/v1/nexus-tasks/{token}/response?next-task-queue=charges"
    ));
    let second = send(
        &worker,
        post(
            respond,
            &[("nexus-task-status", "200"), ("request-timeout", "5s")],
            first.body.clone(),
        ),
    )
    .await;
    assert_eq!(second.status, 200, "the next task rides on the answer");
    assert_ne!(second.body, first.body);
    let token = second.header("nexus-task-token").unwrap();
    let last = send(
        &worker,
        post(
            gw.uri(&format!("/api/v1/nexus-tasks/{token}/response")),
            &[("nexus-task-status", "200")],
            second.body.clone(),
        ),
    )
    .await;
    assert_eq!((last.status.as_u16(), last.body.is_empty()), (200, true));
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200);
    }
}
