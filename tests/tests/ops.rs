//! The ops port and tracing context: health, readiness, Prometheus metrics, traceparent.

use nexus_e2e::*;

#[tokio::test]
async fn health_readiness_and_metrics_by_caller_endpoint_and_outcome() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.ops_get("/healthz").await.0, 200);
    assert_eq!(gw.ops_get("/readyz").await.0, 200);
    let (_worker, handler, _stop) = gw.both_targets().await;
    let caller = gw.client(&ns("orders"));
    assert_eq!(
        send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
                &[],
                "x"
            )
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            &caller,
            post(gw.uri("/nexus/endpoints/quotes/services/svc/fail"), &[], "")
        )
        .await
        .status,
        424
    );
    assert_eq!(
        send(
            &gw.client(&ns("intruder")),
            post(
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
                &[],
                ""
            )
        )
        .await
        .status,
        403
    );
    let (status, text) = gw.ops_get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"nexus_gateway_operations_total{kind="start",caller_namespace="orders",endpoint="payments",target="billing",outcome="succeeded"} 1"#,
        r#"nexus_gateway_operations_total{kind="start",caller_namespace="intruder",endpoint="payments",target="billing",outcome="rejected:unauthorized"} 1"#,
        r#"outcome="failed"} 1"#,
        r#"nexus_gateway_operation_duration_seconds_count{kind="start",endpoint="payments"} 2"#,
        r#"nexus_gateway_operation_duration_seconds_bucket{kind="start",endpoint="payments",le="+Inf"} 2"#,
        "nexus_gateway_task_queue_pollers{namespace=\"billing\",task_queue=\"charges\"}",
        &format!(
            "nexus_gateway_lane_successes_total{{kind=\"start\",source=\"orders\",destination=\"{handler}\"}} 1"
        ),
        "nexus_gateway_lane_breaker_open{",
        "nexus_gateway_completions_pending 0",
        "nexus_gateway_attribution_last_seq 3",
        "nexus_gateway_registry_endpoints 2",
        "nexus_gateway_requests_total{route=\"operation\",status=\"200\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
}

#[tokio::test]
async fn traceparent_reaches_workers_and_external_handlers() {
    let gw = TestGateway::start().await;
    let (_worker, _handler, _stop) = gw.both_targets().await;
    let caller = gw.client(&ns("orders"));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for endpoint in ["payments", "quotes"] {
        let reply = send(
            &caller,
            post(
                gw.uri(&format!("/nexus/endpoints/{endpoint}/services/svc/headers")),
                &[("traceparent", trace), ("tracestate", "vendor=1")],
                "",
            ),
        )
        .await;
        let headers = &reply.json()["headers"];
        assert_eq!(headers["traceparent"], trace, "{endpoint}");
        assert_eq!(headers["tracestate"], "vendor=1", "{endpoint}");
    }
}

#[tokio::test]
async fn metrics_name_only_registered_endpoints_and_forget_deleted_ones() {
    let gw = TestGateway::start().await;
    let endpoint = gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    for i in 0..50 {
        let uri = gw.uri(&format!("/nexus/endpoints/probe-{i}/services/svc/echo"));
        assert_eq!(send(&caller, post(uri, &[], "")).await.status, 404);
    }
    let uri = gw.uri("/nexus/endpoints/payments/services/svc/echo");
    assert_eq!(send(&caller, post(uri, &[], "x")).await.status, 200);
    let (_, metrics) = gw.ops_get("/metrics").await;
    let operations: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nexus_gateway_operations_total{"))
        .collect();
    assert_eq!(
        operations,
        [
            r#"nexus_gateway_operations_total{kind="start",caller_namespace="orders",endpoint="_unknown",target="",outcome="rejected:not_found"} 50"#,
            r#"nexus_gateway_operations_total{kind="start",caller_namespace="orders",endpoint="payments",target="billing",outcome="succeeded"} 1"#,
        ]
    );
    assert!(!metrics.contains("probe-"), "{metrics}");

    gw.registry.delete(&endpoint.id, endpoint.version).unwrap();
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(!metrics.contains("endpoint=\"payments\""), "{metrics}");
    assert!(metrics.contains("endpoint=\"_unknown\""), "{metrics}");
}

#[tokio::test]
async fn requests_for_unknown_endpoints_spend_the_callers_rate() {
    let gw = TestGateway::start_with(|c| {
        c.inbound.per_caller = nexus_gateway::inbound::Rate {
            per_second: 1,
            burst: 3,
        };
        c.inbound.push_back = std::time::Duration::ZERO;
    })
    .await;
    let caller = gw.client(&ns("orders"));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let uri = gw.uri(&format!("/nexus/endpoints/nope-{i}/services/svc/echo"));
        statuses.push(send(&caller, post(uri, &[], "")).await.status.as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429]);
    // Another namespace is not affected.
    let other = gw.client(&ns("shipping"));
    let uri = gw.uri("/nexus/endpoints/nope/services/svc/echo");
    assert_eq!(send(&other, post(uri, &[], "")).await.status, 404);
}
