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
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    let slow = tokio::spawn({
        let caller = caller.clone();
        let uri = gw.uri("/nexus/endpoints/payments/services/svc/slow");
        async move { send(&caller, post(uri, &[("x-delay-ms", "1500")], "")).await }
    });
    let gw_ref = &gw;
    eventually("slow call in flight", Duration::from_secs(5), async || {
        gw_ref.registry.len() == 1 && !slow.is_finished()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(second.status, 429);
    assert!(
        second.message().contains("1 operations in flight"),
        "{}",
        second.message()
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(
        send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
                &[],
                ""
            )
        )
        .await
        .status,
        200
    );
}
