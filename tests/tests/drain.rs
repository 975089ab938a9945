//! Draining on SIGTERM and SIGINT, on the real binary: new operations get 503 and `/readyz`
//! says so, a task a worker already holds can still be answered and reaches its caller, open
//! long polls end once nothing is in flight, and the process exits 0.

mod support;

use std::time::Duration;

use nexus_e2e::*;
use support::*;

const BOUND: Duration = Duration::from_secs(20);

async fn drains_on(signal: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let Served {
        proc: mut gw,
        port,
        ops_port,
    } = tokio::task::spawn_blocking(move || serve(&d, &["--shutdown-grace", "20"]))
        .await
        .unwrap();
    let d = dir.path();
    create_worker_endpoint(d, port, "payments", "billing", "charges", &["orders"]).await;
    let base = format!("https://localhost:{port}");
    let caller = client_for(d, &ns("orders"));
    let worker = client_for(d, &ns("billing"));
    let start = |body: &'static str| {
        post(
            format!("{base}/nexus/endpoints/payments/services/svc/op")
                .parse()
                .unwrap(),
            &[("request-timeout", "25s")],
            body,
        )
    };
    let poll = || {
        post(
            format!("{base}/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll")
                .parse()
                .unwrap(),
            &[("request-timeout", "25s")],
            "",
        )
    };
    assert_eq!(ops_get(ops_port, "/readyz").await.0, 200);

    // A caller starts an operation; the worker (by hand) takes the task and holds it.
    let held = tokio::spawn({
        let (caller, request) = (caller.clone(), start("held"));
        async move { send(&caller, request).await }
    });
    let task = send(&worker, poll()).await;
    assert_eq!(task.status, 200, "{:?}", task.body);
    assert_eq!(task.body, "held");
    let token = task.header("nexus-task-token").unwrap().to_owned();
    // Another poll waits for the next task.
    let long_poll = tokio::spawn({
        let (worker, request) = (worker.clone(), poll());
        async move { send(&worker, request).await }
    });
    let pollers = "nexus_gateway_task_queue_pollers{namespace=\"billing\",task_queue=\"charges\"} ";
    eventually("the long poll is waiting", BOUND, async || {
        metric(&ops_get(ops_port, "/metrics").await.1, pollers) == Some(1.0)
    })
    .await;

    gw.signal(signal);
    eventually("/readyz turns 503", BOUND, async || {
        ops_get(ops_port, "/readyz").await.0 == 503
    })
    .await;
    let refused = send(&caller, start("too late")).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.error_type(), "UNAVAILABLE");
    assert!(refused.header("retry-after").is_some());
    assert!(
        !long_poll.is_finished(),
        "long polls stay open while an operation is in flight"
    );

    // The held task is answered during the drain and its caller gets the answer.
    let answer = post(
        format!("{base}/api/v1/nexus-tasks/{token}/response")
            .parse()
            .unwrap(),
        &[("nexus-task-status", "200"), ("content-type", "text/plain")],
        "answered while draining",
    );
    let relayed = send(&worker, answer).await;
    assert_eq!(relayed.status, 200, "{:?}", relayed.body);
    let reply = tokio::time::timeout(BOUND, held).await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body, "answered while draining");

    // Nothing in flight any more: the open long poll ends (no task), and the process exits 0.
    let ended = tokio::time::timeout(BOUND, long_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, 204, "{:?}", ended.body);
    let code = tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sigterm_refuses_new_starts_lets_held_tasks_answer_and_exits_zero() {
    drains_on("TERM").await;
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    drains_on("INT").await;
}
