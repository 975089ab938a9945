//! The attribution log as metering sees it: one record per start, cancel and completion
//! (rejected ones included), read through the metering API, the files and `usage`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nexus_certs::Identity;
use nexus_e2e::*;
use serde_json::Value;

fn metering() -> Identity {
    Identity::Metering("billing-pipeline".into())
}

fn get(uri: http::Uri) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

async fn events(gw: &TestGateway, after: u64, limit: usize) -> Vec<Value> {
    let reply = send(
        &gw.client(&metering()),
        get(gw.uri(&format!(
            "/api/v1/attribution/events?after={after}&limit={limit}"
        ))),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn op(gw: &TestGateway, endpoint: &str, rest: &str) -> http::Uri {
    gw.uri(&format!("/nexus/endpoints/{endpoint}/services/{rest}"))
}

#[tokio::test]
async fn every_action_is_recorded_once_with_its_fields() {
    let gw = TestGateway::start().await;
    let endpoint = gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    let receiver = Receiver::start(200).await;

    assert_eq!(
        send(
            &caller,
            post(
                op(&gw, "payments", "svc/echo"),
                &[("nexus-request-id", "r-sync")],
                "12345"
            )
        )
        .await
        .status,
        200
    );
    let callback = format!("http://{}/cb", receiver.addr);
    let enc = percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let seen = send(
        &caller,
        post(
            op(&gw, "payments", &format!("svc/headers?callback={enc}")),
            &[("nexus-request-id", "r-async")],
            "",
        ),
    )
    .await;
    assert_eq!(
        send(
            &caller,
            post(
                op(&gw, "payments", "svc/fail"),
                &[("nexus-request-id", "r-fail")],
                ""
            )
        )
        .await
        .status,
        424
    );
    assert_eq!(
        send(
            &caller,
            post(
                op(&gw, "payments", "svc/charge/cancel"),
                &[("nexus-operation-token", "tok-1")],
                ""
            )
        )
        .await
        .status,
        202
    );
    assert_eq!(
        send(&caller, post(op(&gw, "nowhere", "svc/echo"), &[], ""))
            .await
            .status,
        404
    );
    assert_eq!(
        send(
            &gw.client(&ns("intruder")),
            post(op(&gw, "payments", "svc/echo"), &[], "")
        )
        .await
        .status,
        403
    );
    // The handler completes the async operation.
    let sealed = sealed_callback_seen_by(&seen);
    let done = post(
        sealed.parse().unwrap(),
        &[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-token", "op-9"),
        ],
        "ok",
    );
    assert_eq!(send(&gw.client(&ns("billing")), done).await.status, 200);

    let records = events(&gw, 0, 100).await;
    let summary: Vec<(String, String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["billable"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = [
        ("start", "succeeded", 1),
        ("start", "succeeded", 1),
        ("start", "failed", 1),
        ("cancel", "cancel_requested", 1),
        ("start", "rejected:not_found", 0),
        ("start", "rejected:unauthorized", 0),
        ("completion", "accepted", 0),
    ]
    .iter()
    .map(|(k, o, b)| (k.to_string(), o.to_string(), *b))
    .collect();
    assert_eq!(summary, expected);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());

    let sync = &records[0];
    assert_eq!(sync["caller_namespace"], "orders");
    assert_eq!(sync["caller_identity"], "spiffe://nexus-gateway/ns/orders");
    assert_eq!(sync["endpoint"], "payments");
    assert_eq!(sync["endpoint_id"], endpoint.id.as_str());
    assert_eq!(sync["target_namespace"], "billing");
    assert_eq!(sync["task_queue"], "charges");
    assert_eq!(
        (sync["service"].as_str(), sync["operation"].as_str()),
        (Some("svc"), Some("echo"))
    );
    assert_eq!(sync["request_id"], "r-sync");
    assert_eq!(
        (
            sync["status"].as_u64(),
            sync["request_bytes"].as_u64(),
            sync["response_bytes"].as_u64()
        ),
        (Some(200), Some(5), Some(5))
    );
    assert!(sync["latency_us"].as_u64().unwrap() > 0);
    assert!(
        sync["time"].as_str().unwrap().ends_with('Z') && !sync["id"].as_str().unwrap().is_empty()
    );
    assert_eq!(records[3]["operation_token"], "tok-1");
    assert_eq!(records[5]["caller_namespace"], "intruder");
    let completion = &records[6];
    assert_eq!(
        (
            completion["caller_namespace"].as_str(),
            completion["target_namespace"].as_str()
        ),
        (Some("orders"), Some("billing"))
    );
    assert_eq!(
        (
            completion["request_id"].as_str(),
            completion["operation_token"].as_str()
        ),
        (Some("r-async"), Some("op-9"))
    );
}

#[tokio::test]
async fn only_metering_reads_and_paging_and_waiting_work() {
    let gw = TestGateway::start().await;
    for identity in [ns("orders"), admin()] {
        let reply = send(
            &gw.client(&identity),
            get(gw.uri("/api/v1/attribution/events")),
        )
        .await;
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .message()
                .contains("a metering certificate is required"),
            "{}",
            reply.message()
        );
    }
    let caller = gw.client(&ns("orders"));
    for _ in 0..5 {
        send(&caller, post(op(&gw, "none", "s/o"), &[], "")).await;
    }
    let page: Vec<u64> = events(&gw, 2, 2)
        .await
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, [3, 4]);
    let bad = send(
        &gw.client(&metering()),
        get(gw.uri("/api/v1/attribution/events?after=x")),
    )
    .await;
    assert_eq!(bad.status, 400);
    // A waiting read returns as soon as a new record is written.
    let waiting = tokio::spawn({
        let client = gw.client(&metering());
        let uri = gw.uri("/api/v1/attribution/events?after=5&wait=20s");
        async move { send(&client, get(uri)).await }
    });
    let gw_ref = &gw;
    eventually("the read is waiting", Duration::from_secs(10), async || {
        gw_ref
            .ops_get("/metrics")
            .await
            .1
            .contains("nexus_gateway_attribution_waiting_reads 1")
    })
    .await;
    send(&caller, post(op(&gw, "none", "s/o"), &[], "")).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reply.body).contains("\"seq\":6"),
        "{:?}",
        reply.body
    );
}

#[tokio::test]
async fn usage_equals_exactly_what_was_sent() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint(
        "payments",
        "billing",
        "charges",
        &["orders", "shipping", "returns"],
    );
    gw.worker_endpoint("inventory", "stock", "levels", &["orders", "shipping"]);
    let _w1 = gw.start_worker("billing", "charges");
    let _w2 = gw.start_worker("stock", "levels");
    // (caller, endpoint, distinct billable requests)
    let plan = [
        ("orders", "payments", 7),
        ("orders", "inventory", 4),
        ("shipping", "payments", 5),
        ("shipping", "inventory", 3),
        ("returns", "payments", 6),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for (caller, endpoint, n) in plan {
        for i in 0..n {
            let client = gw.client(&ns(caller));
            let uri = op(&gw, endpoint, "svc/echo");
            let id = format!("{caller}-{endpoint}-{i}");
            calls.spawn(async move {
                // Each request is sent twice with the same request id: a retry counts once.
                for _ in 0..2 {
                    assert_eq!(
                        send(
                            &client,
                            post(uri.clone(), &[("nexus-request-id", &id)], "abc")
                        )
                        .await
                        .status,
                        200
                    );
                }
            });
        }
        // Rejected calls: "returns" may not call inventory; charged nowhere.
        let client = gw.client(&ns("returns"));
        let uri = op(&gw, "inventory", "svc/echo");
        calls.spawn(async move {
            assert_eq!(
                send(&client, post(uri, &[("nexus-request-id", "nope")], ""))
                    .await
                    .status,
                403
            );
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let dir = gw.data_dir.join("attribution");
    let records = nexus_gateway::attribution::read_records(&dir, 0, 100_000).unwrap();
    assert_eq!(records.len(), 2 * 25 + 5);
    use nexus_gateway::attribution::Dimension;
    let rows = nexus_gateway::attribution::aggregate(
        records,
        None,
        None,
        &[Dimension::Caller, Dimension::Target, Dimension::Endpoint],
    );
    let got: BTreeMap<(String, String), u64> = rows
        .iter()
        .filter(|r| r.actions > 0)
        .map(|r| {
            (
                (
                    r.caller_namespace.clone().unwrap(),
                    r.endpoint.clone().unwrap(),
                ),
                r.actions,
            )
        })
        .collect();
    let want: BTreeMap<(String, String), u64> = plan
        .iter()
        .map(|(c, e, n)| ((c.to_string(), e.to_string()), *n as u64))
        .collect();
    assert_eq!(got, want);
    let rejected: u64 = rows.iter().map(|r| r.rejected).sum();
    assert_eq!(rejected, 5);
    let orders_payments = rows
        .iter()
        .find(|r| {
            r.caller_namespace.as_deref() == Some("orders")
                && r.endpoint.as_deref() == Some("payments")
        })
        .unwrap();
    assert_eq!(
        (
            orders_payments.target_namespace.as_deref(),
            orders_payments.request_bytes
        ),
        (Some("billing"), 7 * 3)
    );

    // The CLI reading the files directly agrees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
        .args([
            "usage",
            "--dir",
            dir.to_str().unwrap(),
            "--by",
            "caller",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_caller: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let actions: BTreeMap<String, u64> = by_caller
        .iter()
        .map(|r| {
            (
                r["caller_namespace"].as_str().unwrap().to_owned(),
                r["actions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        BTreeMap::from([
            ("orders".into(), 11),
            ("returns".into(), 6),
            ("shipping".into(), 8)
        ])
    );
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
        .args([
            "usage",
            "--dir",
            dir.to_str().unwrap(),
            "--by",
            "caller",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(
        csv.lines().next().unwrap().starts_with("caller_namespace,"),
        "{csv}"
    );
    assert!(csv.lines().any(|l| l.starts_with("orders,11,")), "{csv}");
}
