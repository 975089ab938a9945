//! Inbound limits over real mTLS: a flooding caller gets 429 with Retry-After; others don't.

use std::time::Duration;

use nexus_e2e::*;
use nexus_gateway::inbound::Rate;

#[tokio::test]
async fn a_flooding_namespace_is_limited_and_others_are_not() {
    let gw = TestGateway::start_with(|c| {
        c.inbound.caller_overrides.insert(
            "noisy".into(),
            Rate {
                per_second: 1,
                burst: 3,
            },
        );
    })
    .await;
    gw.worker_endpoint("payments", "billing", "charges", &["noisy", "quiet"]);
    let _worker = gw.start_worker("billing", "charges");
    let call = || {
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[],
            "x",
        )
    };
    let noisy = gw.client(&ns("noisy"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = send(&noisy, call()).await;
        if reply.status == 429 {
            assert_eq!(reply.error_type(), "RESOURCE_EXHAUSTED");
            assert!(
                reply
                    .message()
                    .contains("namespace \"noisy\" is over its rate limit of 1/s"),
                "{}",
                reply.message()
            );
            assert!(reply.header("retry-after").is_some());
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst passes");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let quiet = gw.client(&ns("quiet"));
    for _ in 0..6 {
        assert_eq!(send(&quiet, call()).await.status, 200);
    }
}

#[tokio::test]
async fn concurrent_operations_per_caller_are_capped() {
    let gw = TestGateway::start_with(|c| {
        c.inbound.concurrent_overrides.insert("orders".into(), 1);
    })
    .await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let caller = gw.client(&ns("orders"));
    let call = || {
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[("request-timeout", "20s")],
            "",
        )
    };
    // The first call waits for a worker until the test answers it by hand, holding the slot.
    let first = tokio::spawn({
        let caller = caller.clone();
        let request = call();
        async move { send(&caller, request).await }
    });
    let gw_ref = &gw;
    eventually("first call in flight", Duration::from_secs(5), async || {
        gw_ref.ops_get("/metrics").await.1.contains(
            "nexus_gateway_task_queue_backlog{namespace=\"billing\",task_queue=\"charges\"} 1",
        )
    })
    .await;
    let second = send(&caller, call()).await;
    assert_eq!(second.status, 429);
    assert!(
        second.message().contains("1 operations in flight"),
        "{}",
        second.message()
    );
    // Answer the first call as its worker; its slot is free once it is answered.
    let owner = gw.client(&ns("billing"));
    let task = send(
        &owner,
        post(
            gw.uri("/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll"),
            &[("request-timeout", "5s")],
            "",
        ),
    )
    .await;
    assert_eq!(task.status, 200);
    let token = task.header("nexus-task-token").unwrap();
    let answered = send(
        &owner,
        post(
            gw.uri(&format!("/api/v1/nexus-tasks/{token}/response")),
            &[("nexus-task-status", "200")],
            "first",
        ),
    )
    .await;
    assert_eq!(answered.status, 200);
    let first = first.await.unwrap();
    assert_eq!(
        (first.status.as_u16(), first.body.as_ref()),
        (200, &b"first"[..])
    );
    let _worker = gw.start_worker("billing", "charges");
    assert_eq!(send(&caller, call()).await.status, 200);
}
