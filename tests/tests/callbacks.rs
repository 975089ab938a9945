//! Async completions: the caller's callback is sealed, the handler completes through the
//! gateway, and the completion reaches the caller's receiver with the caller's headers, durably.

use std::time::Duration;

use nexus_e2e::*;

const BOUND: Duration = Duration::from_secs(10);

/// Starts an async operation whose handler reports what it saw; returns the callback URL the
/// handler was given.
async fn start_with_callback(gw: &TestGateway, receiver: &Receiver) -> String {
    start_with_callback_token(gw, receiver, "caller-secret").await
}

/// [`start_with_callback`] with the caller's `Temporal-Callback-Token` (secret: it must not
/// appear in what the handler sees).
async fn start_with_callback_token(gw: &TestGateway, receiver: &Receiver, secret: &str) -> String {
    let caller = gw.client(&ns("orders"));
    let callback = format!("http://{}/callback?run=42", receiver.addr);
    let uri = gw.uri(&format!(
        "/nexus/endpoints/payments/services/svc/headers?callback={}",
        percent_encode(&callback)
    ));
    let reply = send(
        &caller,
        post(
            uri,
            &[
                ("nexus-callback-temporal-callback-token", secret),
                ("nexus-request-id", "req-1"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = reply.json();
    let headers = seen["headers"].as_object().unwrap();
    assert!(
        !headers.keys().any(|k| k.starts_with("nexus-callback-")),
        "the handler must not see the caller's callback headers: {headers:?}"
    );
    let query = seen["query"].as_str().unwrap();
    let sealed = sealed_callback(query);
    assert!(
        sealed.starts_with(&format!(
            "https://localhost:{}/nexus/callbacks/",
            gw.data_addr.port()
        )),
        "{sealed}"
    );
    assert!(!sealed.contains(secret) && !sealed.contains(&receiver.addr.to_string()));
    sealed
}

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn completion(
    url: &str,
    state: &str,
    body: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    post(
        url.parse().unwrap(),
        &[
            ("nexus-operation-state", state),
            ("nexus-operation-token", "op-token-1"),
            ("nexus-operation-close-time", "2026-11-23T01:00:00.000Z"),
            (
                "nexus-link",
                "<temporal:///namespaces/billing/workflows/w/r>; type=\"x\"",
            ),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    )
}

async fn setup() -> (TestGateway, WorkerHandle) {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    (gw, worker)
}

#[tokio::test]
async fn completion_reaches_the_caller_with_its_callback_headers() {
    let (gw, _worker) = setup().await;
    let mut receiver = Receiver::start(200).await;
    let url = start_with_callback(&gw, &receiver).await;
    let handler = gw.client(&ns("billing"));
    let ack = send(
        &handler,
        completion(&url, "succeeded", r#"{"charged":true}"#),
    )
    .await;
    assert_eq!(ack.status, 200);
    let got = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(got.path, "/callback?run=42");
    assert_eq!(got.header("temporal-callback-token"), Some("caller-secret"));
    assert_eq!(got.header("nexus-operation-state"), Some("succeeded"));
    assert_eq!(got.header("nexus-operation-token"), Some("op-token-1"));
    assert_eq!(got.header("nexus-operation-id"), Some("op-token-1"));
    assert!(got.header("nexus-operation-start-time").is_some());
    assert_eq!(
        got.header("nexus-operation-close-time"),
        Some("2026-11-23T01:00:00.000Z")
    );
    assert!(got.header("nexus-link").unwrap().contains("workflows/w"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.body, r#"{"charged":true}"#);

    // Failed and canceled completions travel the same way.
    for state in ["failed", "canceled"] {
        let url = start_with_callback(&gw, &receiver).await;
        assert_eq!(
            send(&handler, completion(&url, state, r#"{"message":"no"}"#))
                .await
                .status,
            200
        );
        let got = receiver.next(BOUND).await.expect("delivered");
        assert_eq!(got.header("nexus-operation-state"), Some(state));
        assert_eq!(got.body, r#"{"message":"no"}"#);
    }
}

#[tokio::test]
async fn bad_tokens_and_senders_are_refused() {
    let (gw, _worker) = setup().await;
    let receiver = Receiver::start(200).await;
    let url = start_with_callback(&gw, &receiver).await;
    let handler = gw.client(&ns("billing"));

    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let reply = send(&handler, completion(&tampered, "succeeded", "")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.message(),
        "callback token is not valid for this gateway"
    );

    let reply = send(
        &handler,
        completion(
            &gw.uri("/nexus/callbacks/garbage").to_string(),
            "succeeded",
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 404);

    let foreign = send(&gw.client(&ns("orders")), completion(&url, "succeeded", "")).await;
    assert_eq!(foreign.status, 403);
    assert_eq!(
        foreign.message(),
        r#"namespace "orders" may not complete operations handled by namespace "billing""#
    );

    let admin = send(&gw.client(&admin()), completion(&url, "succeeded", "")).await;
    assert_eq!(admin.status, 403);

    let no_state = send(&handler, post(url.parse().unwrap(), &[], "")).await;
    assert_eq!(no_state.status, 400);
    assert!(no_state.message().contains("Nexus-Operation-State"));
}

#[tokio::test]
async fn expired_token_is_refused() {
    let gw = TestGateway::start_with(|c| c.callbacks.expiry = Duration::from_millis(1)).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let receiver = Receiver::start(200).await;
    let url = start_with_callback(&gw, &receiver).await;
    // The token was sealed before the start was answered, to expire 1 ms later: wait until the
    // clock is past that.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let expired_by = now_ms() + 1;
    eventually("the token expired", BOUND, async || now_ms() > expired_by).await;
    let reply = send(
        &gw.client(&ns("billing")),
        completion(&url, "succeeded", ""),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.message().starts_with("callback token expired at"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn undeliverable_completions_are_kept_retried_and_dropped() {
    let (gw, _worker) = setup().await;
    let mut receiver = Receiver::start(400).await;
    let handler = gw.client(&ns("billing"));
    let admin = gw.client(&admin());
    let list = |state: &str| post(gw.uri(&format!("/api/v1/callbacks?state={state}")), &[], "");
    let list = |state: &'static str| {
        let mut r = list(state);
        *r.method_mut() = http::Method::GET;
        r
    };

    // 400 is not retryable: the completion is kept as failed.
    receiver.set_body("no such run\n");
    let url = start_with_callback(&gw, &receiver).await;
    assert_eq!(
        send(&handler, completion(&url, "succeeded", "first"))
            .await
            .status,
        200
    );
    assert_eq!(receiver.next(BOUND).await.unwrap().body, "first");
    let failed = {
        let admin = admin.clone();
        let mut found = serde_json::Value::Null;
        eventually("completion marked failed", BOUND, async || {
            found = send(&admin, list("failed")).await.json()["completions"][0].clone();
            !found.is_null()
        })
        .await;
        found
    };
    assert!(
        failed["lastError"].as_str().unwrap().contains("400"),
        "{failed}"
    );
    assert_eq!(failed["callerNamespace"], "orders");
    assert_eq!(failed["attempts"], 1, "tried once: {failed}");
    let id = failed["id"].as_u64().unwrap();
    cli_lists_the_failed_completion(&gw, id).await;

    // Retry once the receiver accepts.
    receiver.set_status(200);
    let retried = send(
        &admin,
        post(gw.uri(&format!("/api/v1/callbacks/{id}/retry")), &[], ""),
    )
    .await;
    assert_eq!(retried.status, 200);
    assert_eq!(receiver.next(BOUND).await.unwrap().body, "first");
    let admin2 = admin.clone();
    eventually("spool empty", BOUND, async || {
        send(&admin2, list("pending")).await.json()["completions"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;

    // A pending one (receiver down with 503: retried with backoff) can be dropped.
    receiver.set_status(503);
    let url = start_with_callback(&gw, &receiver).await;
    assert_eq!(
        send(&handler, completion(&url, "succeeded", "second"))
            .await
            .status,
        200
    );
    assert_eq!(receiver.next(BOUND).await.unwrap().body, "second");
    let pending = send(&admin, list("pending")).await.json()["completions"][0].clone();
    let id = pending["id"].as_u64().unwrap();
    let mut delete = post(gw.uri(&format!("/api/v1/callbacks/{id}")), &[], "");
    *delete.method_mut() = http::Method::DELETE;
    assert_eq!(send(&admin, delete).await.status, 200);
    assert!(
        send(&admin, list("pending")).await.json()["completions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let forbidden = send(&handler, list("pending")).await;
    assert_eq!(forbidden.status, 403);
}

/// `callbacks list` shows the completion on one line under its headers, with the one attempt
/// made and the receiver's answer without its line break.
async fn cli_lists_the_failed_completion(gw: &TestGateway, id: u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
        .args(["callbacks", "list", "--failed"])
        .args(gw.cli_flags(&admin(), dir.path()))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row:\n{text}");
    let (header, row) = (lines[0], lines[1]);
    assert!(row.ends_with("400 Bad Request: no such run"), "{text}");
    // Right-aligned numbers end under their titles.
    let cell = |title: &str| {
        let at = header.find(title).unwrap();
        row[at..at + title.len()].trim()
    };
    assert_eq!(cell("ID"), id.to_string(), "{text}");
    assert_eq!(cell("ATTEMPTS"), "1", "{text}");
    for title in ["STATE", "CALLER", "ENDPOINT", "LAST ERROR"] {
        let at = header.find(title).unwrap();
        assert!(
            row[..at].ends_with(' ') && !row[at..].starts_with(' '),
            "{title} column not aligned:\n{text}"
        );
    }
}

#[tokio::test]
async fn external_target_callbacks_are_sealed_too() {
    let gw = TestGateway::start().await;
    let (addr, _stop) = serve_reference_handler().await;
    gw.external_endpoint("payments", &format!("http://{addr}"), &["orders"]);
    let mut receiver = Receiver::start(200).await;
    let url = start_with_callback(&gw, &receiver).await;
    // Any namespace identity may complete an external target's operation.
    let ack = send(
        &gw.client(&ns("external-handler")),
        completion(&url, "succeeded", "done"),
    )
    .await;
    assert_eq!(ack.status, 200);
    let got = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(got.header("temporal-callback-token"), Some("caller-secret"));
    assert_eq!(got.body, "done");
}

/// A Temporal caller's callback token is a few hundred characters; sealed whole into the URL it
/// would pass Temporal's 1,000-character limit on callback URLs. The gateway then keeps the
/// callback in a durable note and hands the handler a short URL; the completion still reaches
/// the caller with the whole token, once.
#[tokio::test]
async fn long_callbacks_get_a_short_url_and_still_reach_the_caller() {
    let (gw, _worker) = setup().await;
    let mut receiver = Receiver::start(200).await;
    let secret = format!("{{\"v\":1,\"d\":\"{}\"}}", "Q".repeat(700));
    let url = start_with_callback_token(&gw, &receiver, &secret).await;
    assert!(url.len() <= 1000, "{} characters: {url}", url.len());
    let handler = gw.client(&ns("billing"));
    let ack = send(&handler, completion(&url, "succeeded", "{}")).await;
    assert_eq!(ack.status, 200, "{:?}", ack.body);
    let got = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(got.path, "/callback?run=42");
    assert_eq!(got.header("temporal-callback-token"), Some(secret.as_str()));
    assert_eq!(got.header("nexus-operation-state"), Some("succeeded"));

    // The same completion again (the handler missed the 200, say): answered like the first,
    // not delivered again.
    let again = send(&handler, completion(&url, "succeeded", "{}")).await;
    assert_eq!((again.status.as_u16(), again.body.len()), (200, 0));
    // Short callbacks still travel inside their URL.
    let short = start_with_callback(&gw, &receiver).await;
    assert!(short.len() > 200, "claims sealed in the URL: {short}");
    // Completed after the repeat was answered, the short one is the next (and only) delivery:
    // the repeat was not delivered.
    let ack = send(&handler, completion(&short, "succeeded", "short")).await;
    assert_eq!(ack.status, 200, "{:?}", ack.body);
    let next = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(
        (next.header("temporal-callback-token"), next.body.as_ref()),
        (Some("caller-secret"), &b"short"[..]),
        "the repeated completion was delivered again"
    );
    assert!(receiver.captured.try_recv().is_err());
}

/// The ids of the completions the spool holds (pending or failed).
async fn spooled(gw: &TestGateway) -> Vec<u64> {
    let mut list = post(gw.uri("/api/v1/callbacks"), &[], "");
    *list.method_mut() = http::Method::GET;
    let listed = send(&gw.client(&admin()), list).await.json();
    listed["completions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_completion_posted_twice_is_answered_twice_and_stored_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = std::sync::Arc::new(Pki::new());
    // Long backoff: the receiver refuses, so the accepted completion stays in the spool,
    // where a second copy would be seen.
    let slow_retries = |c: &mut nexus_gateway::Config| {
        c.callbacks.backoff.initial = Duration::from_secs(3600);
    };
    let mut gw = TestGateway::start_in(pki.clone(), dir.path(), slow_retries).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    let mut receiver = Receiver::start(503).await;
    let url = start_with_callback(&gw, &receiver).await;
    let handler = gw.client(&ns("billing"));
    let first = send(&handler, completion(&url, "succeeded", "once")).await;
    assert_eq!(first.status, 200);
    assert_eq!(receiver.next(BOUND).await.unwrap().body, "once");
    // The handler did not see the first 200 (say) and sends it again: the same answer, and
    // nothing new is stored.
    let again = send(&handler, completion(&url, "succeeded", "once")).await;
    assert_eq!((again.status, again.body.len()), (first.status, 0));
    assert_eq!(spooled(&gw).await, [1]);
    worker.stop().await;
    gw.stop().await;
    let old = format!("localhost:{}", gw.data_addr.port());
    drop(gw);

    let gw = TestGateway::start_in(pki, dir.path(), slow_retries).await;
    let url = url.replace(&old, &format!("localhost:{}", gw.data_addr.port()));
    let replay = send(
        &gw.client(&ns("billing")),
        completion(&url, "succeeded", "once"),
    )
    .await;
    assert_eq!(replay.status, 200);
    assert_eq!(spooled(&gw).await, [1]);
    let outcomes: Vec<String> = attribution_events(&gw, 0, 100)
        .await
        .iter()
        .filter(|r| r["kind"] == "completion")
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["accepted", "duplicate", "duplicate"]);
}

#[tokio::test]
async fn after_a_restart_pending_completions_go_at_once_instead_of_after_their_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let pki = std::sync::Arc::new(Pki::new());
    // After a failure the next attempt would be an hour away.
    let hour = |c: &mut nexus_gateway::Config| {
        c.callbacks.backoff.initial = Duration::from_secs(3600);
        c.callbacks.backoff.jitter_min = 1.0;
    };
    let mut gw = TestGateway::start_in(pki.clone(), dir.path(), hour).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    let mut receiver = Receiver::start(503).await;
    let handler = gw.client(&ns("billing"));
    for body in ["first", "second", "third"] {
        let url = start_with_callback(&gw, &receiver).await;
        assert_eq!(
            send(&handler, completion(&url, "succeeded", body))
                .await
                .status,
            200
        );
        // The receiver is down: the attempt fails and the next one is scheduled in an hour.
        assert_eq!(receiver.next(BOUND).await.unwrap().body, body);
    }
    worker.stop().await;
    gw.stop().await;
    drop(gw);

    receiver.set_status(200);
    let _gw = TestGateway::start_in(pki, dir.path(), hour).await;
    // One goes at once as a probe; its success wakes the other two.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            receiver
                .next(BOUND)
                .await
                .expect("delivered without waiting an hour")
                .body,
        );
    }
    got.sort();
    assert_eq!(got, ["first", "second", "third"]);
}
