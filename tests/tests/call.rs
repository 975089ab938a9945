//! `nexus-gateway call` as a person or a script runs it: the real binary against a real
//! gateway, its output and the exit code of each outcome.

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use nexus_e2e::*;

/// Bound on one run of the command.
const BOUND: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", self.stdout))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `nexus-gateway call ARGS` as namespace `orders` against `gw`.
async fn call(gw: &TestGateway, dir: &Path, args: &[&str]) -> Run {
    run_cli(args, &gw.cli_flags(&ns("orders"), dir)).await
}

async fn run_cli(args: &[&str], flags: &[String]) -> Run {
    let out = tokio::time::timeout(
        BOUND,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
            .arg("call")
            .args(args)
            .args(flags)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("call ends in time")
    .expect("call runs");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A gateway with endpoint `payments` served by the reference handler (as `billing`).
async fn setup() -> (TestGateway, WorkerHandle, tempfile::TempDir) {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    (gw, worker, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn sync_success_prints_the_result_and_exits_0() {
    let (gw, _worker, dir) = setup().await;
    let run = call(
        &gw,
        dir.path(),
        &["payments", "svc", "echo", "--input", r#"{"hello":"nexus"}"#],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("state:     succeeded\n"), "{run}");
    assert!(run.stdout.contains(" ms (200 OK)\n"), "{run}");
    assert!(
        run.stdout.contains("result:    application/json\n"),
        "{run}"
    );
    assert!(
        run.stdout.ends_with("{\n  \"hello\": \"nexus\"\n}\n"),
        "{run}"
    );

    let run = call(
        &gw,
        dir.path(),
        &["payments", "svc", "echo", "--input", "[1,2]", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    let out = run.json();
    assert_eq!(out["state"], "succeeded");
    assert_eq!(out["status"], 200);
    assert_eq!(out["result"], serde_json::json!([1, 2]));
    assert_eq!(out["contentType"], "application/json");
    assert!(out["timings"]["startMs"].as_f64().unwrap() > 0.0, "{run}");
}

#[tokio::test]
async fn headers_timeout_and_file_input_reach_the_handler() {
    let (gw, _worker, dir) = setup().await;
    let input = dir.path().join("input.bin");
    std::fs::write(&input, [0u8, 159, 146, 150]).unwrap();
    let run = call(
        &gw,
        dir.path(),
        &[
            "payments",
            "svc",
            "headers",
            "--input-file",
            input.to_str().unwrap(),
            "--header",
            "x-trace=abc",
            "--header",
            "Nexus-Request-Id=order-42",
            "--timeout",
            "7s",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    let seen = &run.json()["result"];
    let header = |name: &str| {
        seen["headers"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-trace"), "abc");
    assert_eq!(header("nexus-request-id"), "order-42");
    assert_eq!(header("content-type"), "application/octet-stream");
    // The time left when the handler got it: from --timeout, not the default 10 s.
    let left = header("request-timeout");
    let ms: u64 = left.trim_end_matches("ms").parse().expect(&left);
    assert!((1000..=7000).contains(&ms), "{left}");
}

#[tokio::test]
async fn a_failed_operation_exits_1_and_a_canceled_one_2() {
    let (gw, _worker, dir) = setup().await;
    let failed = call(&gw, dir.path(), &["payments", "svc", "fail"]).await;
    assert_eq!(failed.code, 1, "{failed}");
    assert!(failed.stdout.contains("state:     failed\n"), "{failed}");
    assert!(
        failed.stdout.contains("failure:   operation failed\n"),
        "{failed}"
    );
    assert!(
        failed.stdout.contains(r#"details:   {"code":7}"#),
        "{failed}"
    );
    assert!(failed.stderr.is_empty(), "{failed}");

    let canceled = call(&gw, dir.path(), &["payments", "svc", "cancelled", "--json"]).await;
    assert_eq!(canceled.code, 2, "{canceled}");
    let out = canceled.json();
    assert_eq!(out["state"], "canceled");
    assert_eq!(out["status"], 424);
    assert_eq!(out["failure"]["message"], "operation canceled");
}

#[tokio::test]
async fn an_unknown_endpoint_is_a_handler_error_with_the_gateways_message() {
    let (gw, _worker, dir) = setup().await;
    let run = call(&gw, dir.path(), &["nope", "svc", "echo"]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.stdout
            .contains("error:     404 Not Found, NOT_FOUND, not retryable\n"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("message:   endpoint \"nope\" not found\n"),
        "{run}"
    );

    // A handler's own error is one too.
    let run = call(
        &gw,
        dir.path(),
        &["payments", "svc", "error-UNAVAILABLE", "--json"],
    )
    .await;
    assert_eq!(run.code, 3, "{run}");
    let out = run.json();
    assert_eq!(out["state"], serde_json::Value::Null);
    assert_eq!(out["status"], 503);
    assert_eq!(out["error"]["type"], "UNAVAILABLE");
    assert_eq!(out["error"]["message"], "handler says UNAVAILABLE");
}

#[tokio::test]
async fn a_gateway_that_does_not_listen_is_a_transport_error() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let closed = reserved_port();
    let port = closed.local_addr().unwrap().port();
    let mut flags = gw.cli_flags(&ns("orders"), dir.path());
    flags[1] = format!("https://localhost:{port}");
    let run = run_cli(&["payments", "svc", "echo"], &flags).await;
    assert_eq!(run.code, 4, "{run}");
    assert!(
        run.stderr.contains(&format!(
            "error: cannot reach the gateway at https://localhost:{port}/"
        )),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");
}

#[tokio::test]
async fn usage_errors_exit_64_with_a_message() {
    let (gw, _worker, dir) = setup().await;
    for (args, says) in [
        (
            &["payments", "svc", "echo", "--header", "no-equals-sign"][..],
            "expected NAME=VALUE",
        ),
        (
            &["payments", "svc", "echo", "--header", "bad name=1"],
            "is not a valid header name",
        ),
        (&["payments", "svc", "echo", "--input", "{oops"], "not JSON"),
        (
            &["payments", "svc", "echo", "--timeout", "soon"],
            "--timeout",
        ),
        (&["payments", "svc"], "required"),
        (
            &["payments", "svc", "echo", "--async"],
            "add --wait to receive it here, or --callback-url URL",
        ),
        (
            &["payments", "svc", "echo", "--input-file", "/no/such/file"],
            "cannot read --input-file /no/such/file",
        ),
    ] {
        let run = call(&gw, dir.path(), args).await;
        assert_eq!(run.code, 64, "{args:?}: {run}");
        assert!(run.stderr.contains(says), "{args:?}: {run}");
    }
    // Help is no error, and lists the exit codes.
    let help = call(&gw, dir.path(), &["--help"]).await;
    assert_eq!(help.code, 0, "{help}");
    assert!(
        help.stdout.contains("2   the operation was canceled"),
        "{help}"
    );
}

/// A handler whose `svc/later` starts asynchronously and completes through the gateway, with
/// the state named by its input (`succeeded` echoes the input as the result).
fn completing_worker(gw: &TestGateway) -> WorkerHandle {
    let completer = gw.client(&ns("billing"));
    let handler = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let completer = completer.clone();
        async move {
            let query = request.uri().query().unwrap_or_default().to_owned();
            let input = http_body_util::BodyExt::collect(request.into_body())
                .await
                .unwrap()
                .to_bytes();
            let state = match &input[..] {
                b"\"failed\"" => "failed",
                b"\"canceled\"" => "canceled",
                _ => "succeeded",
            };
            let body = if state == "succeeded" {
                input
            } else {
                Bytes::from(format!(r#"{{"message":"the operation {state}"}}"#))
            };
            let completion = post(
                sealed_callback(&query).parse().unwrap(),
                &[
                    ("nexus-operation-state", state),
                    ("nexus-operation-token", "op-later"),
                    ("content-type", "application/json"),
                ],
                body,
            );
            // After the answer is on its way, as a real handler's workflow would.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let ack = send(&completer, completion).await;
                assert_eq!(ack.status, 200, "{:?}", ack.body);
            });
            let mut started = Response::new(Full::new(Bytes::from_static(
                br#"{"token":"op-later","state":"running"}"#,
            )));
            *started.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(started)
        }
    });
    gw.start_worker_with("billing", "later", handler)
}

#[tokio::test]
async fn async_wait_receives_the_completion_on_its_own_listener() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("deferred", "billing", "later", &["orders"]);
    let _worker = completing_worker(&gw);
    let dir = tempfile::tempdir().unwrap();

    let run = call(
        &gw,
        dir.path(),
        &[
            "deferred",
            "svc",
            "later",
            "--async",
            "--wait",
            "--input",
            r#"{"n":1}"#,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("callback:  http://127.0.0.1:"),
        "{run}"
    );
    for expected in [
        "state:     running",
        "token:     op-later",
        "state:     succeeded",
        "result:    application/json",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {run}");
    }
    assert!(run.stdout.contains(" after the start\n"), "{run}");
    assert!(run.stdout.ends_with("{\n  \"n\": 1\n}\n"), "{run}");

    for (state, code) in [("failed", 1), ("canceled", 2)] {
        let input = format!("{state:?}");
        let run = call(
            &gw,
            dir.path(),
            &[
                "deferred", "svc", "later", "--async", "--wait", "--input", &input, "--json",
            ],
        )
        .await;
        assert_eq!(run.code, code, "{run}");
        let out = run.json();
        assert_eq!(out["state"], state, "{run}");
        assert_eq!(out["status"], 201, "{run}");
        assert_eq!(out["token"], "op-later", "{run}");
        assert_eq!(
            out["failure"]["message"],
            format!("the operation {state}"),
            "{run}"
        );
        assert!(
            out["callbackUrl"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        let timings = &out["timings"];
        assert!(
            timings["completionMs"].as_f64().unwrap() >= timings["startMs"].as_f64().unwrap(),
            "{run}"
        );
    }
}

#[tokio::test]
async fn waiting_for_a_completion_that_never_comes_ends_with_a_transport_error() {
    let (gw, _worker, dir) = setup().await;
    // The reference handler starts the operation and never completes it.
    let run = call(
        &gw,
        dir.path(),
        &[
            "payments",
            "svc",
            "async",
            "--async",
            "--wait",
            "--wait-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{run}");
    assert!(run.stdout.contains("state:     running\n"), "{run}");
    assert!(
        run.stderr
            .contains("no completion arrived within --wait-timeout 1s"),
        "{run}"
    );
}

#[tokio::test]
async fn a_refused_callback_url_reaches_the_user_with_the_rule() {
    let gw = TestGateway::start_with(|c| c.callbacks.allowed.clear()).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let dir = tempfile::tempdir().unwrap();
    let run = call(
        &gw,
        dir.path(),
        &["payments", "svc", "async", "--async", "--wait"],
    )
    .await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stdout.contains("400 Bad Request, BAD_REQUEST"), "{run}");
    assert!(
        run.stdout
            .contains("message:   callback URL \"http://127.0.0.1:"),
        "{run}"
    );
    assert!(run.stdout.contains("[callbacks] allowed"), "{run}");
    assert!(
        run.stdout
            .contains("hint:      the gateway refused the callback URL"),
        "{run}"
    );
}

#[tokio::test]
async fn an_async_start_prints_its_token_and_a_cancel_is_accepted() {
    let (gw, _worker, dir) = setup().await;
    // The reference handler answers 201 even without a callback.
    let started = call(&gw, dir.path(), &["payments", "svc", "async", "--json"]).await;
    assert_eq!(started.code, 0, "{started}");
    let out = started.json();
    assert_eq!(out["state"], "running");
    assert_eq!(out["status"], 201);
    let token = out["token"].as_str().expect("a token").to_owned();
    assert!(token.starts_with("op-"), "{started}");

    let canceled = call(
        &gw,
        dir.path(),
        &["payments", "svc", "async", "--cancel", &token],
    )
    .await;
    assert_eq!(canceled.code, 0, "{canceled}");
    assert!(
        canceled.stdout.contains("cancel:    accepted\n"),
        "{canceled}"
    );
    assert!(
        canceled.stdout.contains(&format!("token:     {token}\n")),
        "{canceled}"
    );
    assert!(canceled.stdout.contains("(202 Accepted)"), "{canceled}");

    // A cancel the gateway refuses is a handler error.
    let refused = call(
        &gw,
        dir.path(),
        &["nope", "svc", "async", "--cancel", &token],
    )
    .await;
    assert_eq!(refused.code, 3, "{refused}");
}
