//! Which completion deliveries are retried: 408, 429 and no answer in time are retried with
//! backoff until they succeed; another 4xx fails at once and is kept; expiry ends the retries.
//! Kept completions are listed, retried and dropped with the `callbacks` CLI.

use std::time::Duration;

use nexus_e2e::*;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(15);

/// Short retry delays so retries happen within a test.
fn quick_retries(c: &mut nexus_gateway::Config) {
    c.callbacks.backoff.initial = Duration::from_millis(50);
    c.callbacks.backoff.max = Duration::from_millis(200);
}

async fn gateway(tweak: impl FnOnce(&mut nexus_gateway::Config)) -> (TestGateway, WorkerHandle) {
    let gw = TestGateway::start_with(|c| {
        quick_retries(c);
        tweak(c);
    })
    .await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    (gw, worker)
}

/// Starts an async operation with a callback to `callback_host` and has the handler complete
/// it with `body`; returns once the gateway accepted the completion.
async fn complete_to(gw: &TestGateway, callback_host: std::net::SocketAddr, body: &str) {
    let callback = format!("http://{callback_host}/cb");
    let query =
        percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC);
    let seen = send(
        &gw.client(&ns("orders")),
        post(
            gw.uri(&format!(
                "/nexus/endpoints/payments/services/svc/headers?callback={query}"
            )),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(seen.status, 200, "{:?}", seen.body);
    let sealed = sealed_callback_seen_by(&seen);
    let ack = send(
        &gw.client(&ns("billing")),
        post(
            sealed.parse().unwrap(),
            &[("nexus-operation-state", "succeeded")],
            body.to_owned(),
        ),
    )
    .await;
    assert_eq!(ack.status, 200, "{:?}", ack.body);
}

/// The completions the admin API lists (`state`: "", "pending" or "failed").
async fn listed(gw: &TestGateway, state: &str) -> Vec<Value> {
    let mut list = post(gw.uri(&format!("/api/v1/callbacks?state={state}")), &[], "");
    *list.method_mut() = http::Method::GET;
    let reply = send(&gw.client(&admin()), list).await;
    assert_eq!(reply.status, 200);
    reply.json()["completions"].as_array().unwrap().clone()
}

/// Waits (bounded) for the first completion listed as `state`; returns it.
async fn first_listed(gw: &TestGateway, state: &str, what: &str) -> Value {
    let mut entry = Value::Null;
    eventually(what, BOUND, async || {
        entry = listed(gw, state)
            .await
            .into_iter()
            .next()
            .unwrap_or_default();
        !entry.is_null()
    })
    .await;
    entry
}

#[tokio::test]
async fn receiver_408_then_429_is_retried_until_it_accepts() {
    let (gw, _worker) = gateway(|_| {}).await;
    let mut receiver = Receiver::start(408).await;
    complete_to(&gw, receiver.addr, "payload").await;
    let first = receiver.next(BOUND).await.expect("first attempt");
    assert_eq!(first.body, "payload");
    // The answer to the next attempt is decided when it arrives.
    receiver.set_status(429);
    let second = receiver.next(BOUND).await.expect("408 is retried");
    assert_eq!(second.body, "payload");
    receiver.set_status(200);
    let third = receiver.next(BOUND).await.expect("429 is retried");
    assert_eq!(third.body, "payload");
    eventually("delivered and removed", BOUND, async || {
        listed(&gw, "").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_retried_after_each_timeout() {
    let (gw, _worker) = gateway(|c| c.callbacks.attempt_timeout = Duration::from_millis(300)).await;
    let (silent, accepted, _stop) = stalled_server().await;
    complete_to(&gw, silent, "payload").await;
    let mut entry = Value::Null;
    eventually("several attempts timed out", BOUND, async || {
        entry = listed(&gw, "pending")
            .await
            .into_iter()
            .next()
            .unwrap_or_default();
        entry["attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(entry["state"], "pending", "still retried: {entry}");
    assert!(
        entry["lastError"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{entry}"
    );
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "each attempt reached the receiver"
    );
}

#[tokio::test]
async fn a_403_fails_at_once_and_is_kept() {
    let (gw, _worker) = gateway(|_| {}).await;
    let mut receiver = Receiver::start(403).await;
    complete_to(&gw, receiver.addr, "payload").await;
    assert!(receiver.next(BOUND).await.is_some());
    let entry = first_listed(&gw, "failed", "the completion is failed").await;
    assert_eq!(entry["attempts"], 1, "not retried: {entry}");
    assert!(
        entry["lastError"].as_str().unwrap().contains("403"),
        "{entry}"
    );
    assert!(listed(&gw, "pending").await.is_empty());
}

#[tokio::test]
async fn retries_stop_at_the_tokens_expiry() {
    let (gw, _worker) = gateway(|c| c.callbacks.expiry = Duration::from_secs(3)).await;
    let mut receiver = Receiver::start(503).await;
    complete_to(&gw, receiver.addr, "payload").await;
    assert!(receiver.next(BOUND).await.is_some());
    let entry = first_listed(&gw, "failed", "given up at expiry").await;
    assert!(
        entry["lastError"].as_str().unwrap().contains("expired"),
        "{entry}"
    );
    assert!(entry["attempts"].as_u64().unwrap() >= 2, "{entry}");
    assert!(listed(&gw, "pending").await.is_empty());
    // Nothing more goes out once it is failed.
    while receiver.captured.try_recv().is_ok() {}
    let attempts = entry["attempts"].clone();
    let again = listed(&gw, "failed").await;
    assert_eq!(again[0]["attempts"], attempts);
}

/// Runs the CLI against `gw` as an admin; returns (success, stdout, stderr).
async fn cli(gw: &TestGateway, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        REQUEST_BOUND,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
            .args(args)
            .args(gw.cli_flags(&admin(), dir.path()))
            .output(),
    )
    .await
    .expect("CLI finishes")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn callbacks_cli_lists_retries_and_drops_kept_completions() {
    let (gw, _worker) = gateway(|_| {}).await;
    let mut receiver = Receiver::start(403).await;
    complete_to(&gw, receiver.addr, "first").await;
    complete_to(&gw, receiver.addr, "second").await;
    assert!(receiver.next(BOUND).await.is_some());
    assert!(receiver.next(BOUND).await.is_some());
    eventually("both failed", BOUND, async || {
        listed(&gw, "failed").await.len() == 2
    })
    .await;
    let ids: Vec<u64> = listed(&gw, "failed")
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();

    let (ok, out, err) = cli(&gw, &["callbacks", "list", "--failed"]).await;
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for id in &ids {
        assert!(
            rows.iter()
                .any(|r| r.split_whitespace().next() == Some(&id.to_string())),
            "{id} listed:\n{out}"
        );
    }
    let (ok, out, _) = cli(&gw, &["callbacks", "list", "--pending"]).await;
    assert!(ok);
    assert_eq!(out.lines().skip(1).count(), 0, "{out}");

    // Retry the first once the receiver accepts: it is delivered and gone.
    receiver.set_status(200);
    let retry = ids[0].to_string();
    let (ok, out, err) = cli(&gw, &["callbacks", "retry", "--id", &retry]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("completion {retry} queued")), "{out}");
    let delivered = receiver.next(BOUND).await.expect("delivered on retry");
    let drop_id = ids[1].to_string();
    eventually("the retried one is gone", BOUND, async || {
        let left = listed(&gw, "").await;
        left.len() == 1 && left[0]["id"].as_u64() == Some(ids[1])
    })
    .await;

    // Drop the other: nothing left, nothing delivered.
    let (ok, out, err) = cli(&gw, &["callbacks", "drop", "--id", &drop_id]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("completion {drop_id} dropped")),
        "{out}"
    );
    assert!(listed(&gw, "").await.is_empty());
    let (ok, _, err) = cli(&gw, &["callbacks", "drop", "--id", &drop_id]).await;
    assert!(!ok, "dropping it again fails");
    assert!(err.contains("not found"), "{err}");
    assert!(
        receiver.captured.try_recv().is_err(),
        "only the retried one went out: {}",
        String::from_utf8_lossy(&delivered.body)
    );
}
