//! The `nexus-gateway` command as a user runs it: `dev`, `certs`, `serve`, `endpoint`,
//! `worker --handler-url`, SIGTERM draining and `kill -9` of the registry.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use nexus_e2e::*;

mod support;

use support::{BIN, Proc, port_after, run};

/// `certs init` + `serve` on free ports; returns the process and its data-port port.
fn serve(dir: &Path) -> (Proc, u16) {
    let (code, _, err) = run(&["certs", "init", "--dir", "certs"], dir);
    assert_eq!(code, 0, "{err}");
    start_serve(dir)
}

/// `serve` on free ports with the certificates and data directory in `dir` (a restart keeps
/// the data).
fn start_serve(dir: &Path) -> (Proc, u16) {
    // The tests' callback receivers listen on loopback.
    std::fs::write(
        dir.join("callbacks.toml"),
        "[callbacks]\nallowed = [{ host = \"127.0.0.1\", allow_insecure = true }]\n",
    )
    .unwrap();
    let mut args = support::SERVE.to_vec();
    args.extend(["--config", "callbacks.toml", "--shutdown-grace", "10"]);
    let mut gw = Proc::spawn(&args, dir);
    let line = gw.wait_for("data https://");
    (gw, port_after(&line, "127.0.0.1:"))
}

#[test]
fn dev_starts_from_nothing_and_the_printed_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Proc::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let line = dev.wait_for("data port (mTLS): https://localhost:");
    let port = port_after(&line, "https://localhost:");
    dev.wait_for("metering \"metering\" .nexus-dev/certs/metering-metering.pem");
    dev.wait_for(
        "cargo run -q -p nexus-gateway -- call demo echo echo --input '{\"hello\":\"nexus\"}'",
    );
    dev.wait_for(&format!("--gateway https://localhost:{port}"));
    dev.wait_for("curl --cacert");
    let certs = dir.path().join(".nexus-dev/certs");
    for file in [
        "ca.pem",
        "server.pem",
        "ns-caller.pem",
        "ns-caller-key.pem",
        "admin-admin.pem",
    ] {
        assert!(certs.join(file).exists(), "{file} missing");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let material = nexus_certs::TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("ns-caller.pem"),
            key: certs.join("ns-caller-key.pem"),
        }
        .load()
        .unwrap();
        let client = nexus_gateway::client::http_client(&material, Default::default()).unwrap();
        let uri: http::Uri =
            format!("https://localhost:{port}/nexus/endpoints/demo/services/echo/echo")
                .parse()
                .unwrap();
        let reply = send(
            &client,
            post(
                uri,
                &[("content-type", "application/json")],
                r#"{"hello":"nexus"}"#,
            ),
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body, r#"{"hello":"nexus"}"#);
    });
    // The CLI finds the dev certificates by itself: `call` those of namespace "caller".
    let (code, out, err) = run(
        &[
            "call",
            "demo",
            "echo",
            "echo",
            "--input",
            r#"{"hello":"nexus"}"#,
            "--gateway",
            &format!("https://localhost:{port}"),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("state:     succeeded\n") && out.ends_with("\"hello\": \"nexus\"\n}\n"),
        "{out}"
    );
    let (code, out, err) = run(
        &[
            "endpoint",
            "list",
            "--gateway",
            &format!("https://localhost:{port}"),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("demo") && out.contains("handler/demo") && out.contains("caller"),
        "{out}"
    );
    dev.signal("TERM");
    assert_eq!(dev.wait_exit(), Some(0));
}

#[test]
fn certs_serve_and_endpoint_cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut gw, port) = serve(d);
    let (code, out, err) = run(&["certs", "issue", "--dir", "certs", "--admin", "ops"], d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("spiffe://nexus-gateway/admin/ops"), "{out}");
    let url = format!("https://localhost:{port}");
    let conn = [
        "--gateway",
        url.as_str(),
        "--ca",
        "certs/ca.pem",
        "--cert",
        "certs/admin-ops.pem",
        "--key",
        "certs/admin-ops-key.pem",
    ];
    let with = |args: &[&'static str]| -> Vec<String> {
        args.iter()
            .chain(conn.iter())
            .map(|s| s.to_string())
            .collect()
    };

    let (code, out, err) = run(
        &with(&[
            "endpoint",
            "create",
            "--name",
            "payments",
            "--target-namespace",
            "billing",
            "--target-task-queue",
            "charges",
            "--allow-caller",
            "orders",
            "--allow-caller",
            "shipping",
            "--description",
            "Charge cards",
        ]),
        d,
    );
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["spec"]["allowedCallerNamespaces"],
        serde_json::json!(["orders", "shipping"])
    );

    let (code, out, _) = run(&with(&["endpoint", "list"]), d);
    assert_eq!(code, 0);
    assert!(
        out.contains("payments")
            && out.contains("billing/charges")
            && out.contains("orders,shipping"),
        "{out}"
    );

    let (code, out, err) = run(
        &with(&[
            "endpoint",
            "update",
            "--name",
            "payments",
            "--allow-caller",
            "orders",
            "--target-url",
            "https://handler.internal/nexus",
        ]),
        d,
    );
    assert_eq!(code, 0, "{err}");
    let updated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(
        updated["spec"]["target"]["external"]["url"],
        "https://handler.internal/nexus"
    );
    assert_eq!(updated["spec"]["description"], "Charge cards");

    let (code, out, _) = run(&with(&["endpoint", "get", "--name", "payments"]), d);
    assert_eq!(code, 0);
    assert!(out.contains("\"version\": 2"), "{out}");

    let (code, _, err) = run(
        &with(&[
            "endpoint",
            "create",
            "--name",
            "9lives",
            "--target-url",
            "https://x",
        ]),
        d,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("400") && err.contains("^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$"),
        "{err}"
    );
    let (code, _, err) = run(
        &with(&[
            "endpoint",
            "create",
            "--name",
            "payments",
            "--target-url",
            "https://x",
        ]),
        d,
    );
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");

    let (code, out, _) = run(&with(&["endpoint", "delete", "--name", "payments"]), d);
    assert_eq!(code, 0);
    assert!(out.contains("deleted endpoint payments"), "{out}");
    let (code, _, err) = run(&with(&["endpoint", "get", "--name", "payments"]), d);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    // A namespace certificate cannot manage endpoints.
    run(
        &["certs", "issue", "--dir", "certs", "--namespace", "orders"],
        d,
    );
    let (code, _, err) = run(
        &[
            "endpoint",
            "list",
            "--gateway",
            &url,
            "--ca",
            "certs/ca.pem",
            "--cert",
            "certs/ns-orders.pem",
            "--key",
            "certs/ns-orders-key.pem",
        ],
        d,
    );
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(), Some(0));
}

#[tokio::test]
async fn worker_bridge_serves_a_nexus_http_handler() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let (handler, _stop) = serve_reference_handler().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = gw.pki.write_files(dir.path(), &ns("billing"));
    let gateway_url = gw.base().to_string();
    let handler_url = format!("http://{handler}");
    let mut worker = Proc::spawn(
        &[
            "worker",
            "--gateway",
            gateway_url.trim_end_matches('/'),
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--namespace",
            "billing",
            "--task-queue",
            "charges",
            "--handler-url",
            &handler_url,
            "--concurrency",
            "4",
        ],
        dir.path(),
    );
    worker.wait_for("worker polling");
    let caller = gw.client(&ns("orders"));
    let op = |rest: &str| gw.uri(&format!("/nexus/endpoints/payments/services/{rest}"));

    let sync = send(
        &caller,
        post(
            op("svc/echo"),
            &[("content-type", "application/json")],
            r#"{"a":1}"#,
        ),
    )
    .await;
    assert_eq!(
        (sync.status.as_u16(), sync.body.as_ref()),
        (200, br#"{"a":1}"#.as_ref())
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    let bin = send(
        &caller,
        post(
            op("svc/echo"),
            &[("content-type", "application/octet-stream")],
            binary.clone(),
        ),
    )
    .await;
    assert_eq!(bin.body.as_ref(), binary.as_slice());
    let started = send(
        &caller,
        post(op("svc/async"), &[("nexus-request-id", "r9")], ""),
    )
    .await;
    assert_eq!(
        (started.status.as_u16(), started.json()["token"].as_str()),
        (201, Some("op-r9"))
    );
    let failed = send(&caller, post(op("svc/fail"), &[], "")).await;
    assert_eq!(
        (
            failed.status.as_u16(),
            failed.header("nexus-operation-state")
        ),
        (424, Some("failed"))
    );
    let canceled = send(&caller, post(op("svc/cancelled"), &[], "")).await;
    assert_eq!(
        (
            canceled.status.as_u16(),
            canceled.header("nexus-operation-state")
        ),
        (424, Some("canceled"))
    );
    for kind in ALL_ERROR_TYPES {
        let reply = send(
            &caller,
            post(op(&format!("svc/error-{}", kind.as_str())), &[], ""),
        )
        .await;
        assert_eq!(
            (reply.status, reply.error_type()),
            (kind.status(), kind.as_str().to_owned())
        );
    }
    let cancel = send(
        &caller,
        post(
            op("svc/charge/cancel"),
            &[("nexus-operation-token", "t-1")],
            "",
        ),
    )
    .await;
    assert_eq!(
        (cancel.status.as_u16(), cancel.header("x-seen-token")),
        (202, Some("t-1"))
    );
    let seen = send(
        &caller,
        post(
            op("svc/headers?callback=http%3A%2F%2F127.0.0.1%3A9%2Fcb"),
            &[("nexus-callback-x", "y"), ("nexus-link", "<l>; type=\"t\"")],
            "",
        ),
    )
    .await;
    let h = &seen.json()["headers"];
    assert_eq!(
        (
            h.get("nexus-callback-x"),
            h["nexus-link"].as_str(),
            h["nexus-caller-namespace"].as_str()
        ),
        (None, Some("<l>; type=\"t\""), Some("orders"))
    );
    let query = seen.json()["query"].as_str().unwrap().to_owned();
    assert!(
        query.starts_with("callback=https%3A%2F%2Flocalhost%3A"),
        "sealed: {query}"
    );
    let slow = send(
        &caller,
        post(
            op("svc/slow"),
            &[("request-timeout", "1500ms"), ("x-delay-ms", "4000")],
            "",
        ),
    )
    .await;
    assert_eq!(slow.status, 520);

    worker.signal("TERM");
    // Wait off the runtime: the gateway in this process must keep serving meanwhile.
    let code = tokio::task::spawn_blocking(move || worker.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (mut gw, port) = tokio::task::spawn_blocking(move || serve(&d))
        .await
        .unwrap();
    let pki_dir = dir.path().join("certs");
    let files = |name: &str| {
        nexus_certs::DevPki::open(&pki_dir)
            .unwrap()
            .issue(&nexus_certs::Identity::Namespace(name.into()), TRUST_DOMAIN)
            .unwrap()
            .load()
            .unwrap()
    };
    let admin_files = nexus_certs::DevPki::open(&pki_dir)
        .unwrap()
        .issue(&admin(), TRUST_DOMAIN)
        .unwrap()
        .load()
        .unwrap();
    let admin = nexus_gateway::client::http_client(&admin_files, Default::default()).unwrap();
    let base: http::Uri = format!("https://localhost:{port}").parse().unwrap();
    let create = http::Request::builder().method(Method::POST).uri(format!("{base}api/v1/nexus/endpoints"))
        .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::json!({"spec": {"name": "payments", "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}}, "allowedCallerNamespaces": ["orders"]}}).to_string()))).unwrap();
    assert_eq!(send(&admin, create).await.status, 200);

    let worker_client =
        nexus_gateway::client::http_client(&files("billing"), Default::default()).unwrap();
    let mut settings =
        nexus_gateway::worker::WorkerSettings::new(base.clone(), "billing", "charges");
    settings.poll_timeout = Duration::from_secs(5);
    let worker = nexus_gateway::worker::Worker::new(settings, worker_client);
    let stop = tokio_util::sync::CancellationToken::new();
    // Says when the handler has the slow call.
    let (reached, mut handler_has_it) = tokio::sync::mpsc::unbounded_channel::<()>();
    let handler = tower::service_fn(
        move |request: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let _ = reached.send(());
            reference_handler(request)
        },
    );
    tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(handler, stop).await }
    });

    let caller = nexus_gateway::client::http_client(&files("orders"), Default::default()).unwrap();
    let uri: http::Uri = format!("{base}nexus/endpoints/payments/services/svc/slow")
        .parse()
        .unwrap();
    let in_flight = tokio::spawn({
        let caller = caller.clone();
        async move {
            send(
                &caller,
                post(
                    uri,
                    &[("x-delay-ms", "1500"), ("request-timeout", "20s")],
                    "",
                ),
            )
            .await
        }
    });
    // Once the slow call is with the worker, ask the gateway to stop.
    tokio::time::timeout(Duration::from_secs(10), handler_has_it.recv())
        .await
        .expect("the slow call reaches the worker in time")
        .unwrap();
    gw.signal("TERM");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "in-flight request finished during drain");
    assert_eq!(reply.body, "done");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    stop.cancel();
}

#[test]
fn registry_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut gw, port) = serve(d);
    run(&["certs", "issue", "--dir", "certs", "--admin", "ops"], d);
    let url = format!("https://localhost:{port}");
    let conn = [
        "--gateway",
        url.as_str(),
        "--ca",
        "certs/ca.pem",
        "--cert",
        "certs/admin-ops.pem",
        "--key",
        "certs/admin-ops-key.pem",
    ];
    let mut acknowledged = Vec::new();
    for i in 0..8 {
        let name = format!("endpoint-{i}");
        let (code, _, err) = run(
            &[
                &[
                    "endpoint",
                    "create",
                    "--name",
                    &name,
                    "--target-namespace",
                    "b",
                    "--target-task-queue",
                    "q",
                ][..],
                &conn[..],
            ]
            .concat(),
            d,
        );
        assert_eq!(code, 0, "{err}");
        acknowledged.push(name);
    }
    gw.signal("KILL");
    gw.wait_exit();
    let (_gw, port) = start_serve(d);
    let url = format!("https://localhost:{port}");
    let conn = [
        "--gateway",
        url.as_str(),
        "--ca",
        "certs/ca.pem",
        "--cert",
        "certs/admin-ops.pem",
        "--key",
        "certs/admin-ops-key.pem",
    ];
    let (code, out, err) = run(&[&["endpoint", "list"][..], &conn[..]].concat(), d);
    assert_eq!(code, 0, "{err}");
    for name in acknowledged {
        assert!(out.contains(&name), "{name} lost after kill -9:\n{out}");
    }
}

#[tokio::test]
async fn accepted_completions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (mut gw, port) = tokio::task::spawn_blocking(move || serve(&d))
        .await
        .unwrap();
    let pki = nexus_certs::DevPki::open(&dir.path().join("certs")).unwrap();
    let client_for = |identity: &nexus_certs::Identity| {
        let material = pki.issue(identity, TRUST_DOMAIN).unwrap().load().unwrap();
        nexus_gateway::client::http_client(&material, Default::default()).unwrap()
    };
    let base = format!("https://localhost:{port}");
    let create = post(
        format!("{base}/api/v1/nexus/endpoints").parse().unwrap(),
        &[],
        serde_json::json!({"spec": {"name": "payments", "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}}, "allowedCallerNamespaces": ["orders"]}}).to_string(),
    );
    assert_eq!(send(&client_for(&admin()), create).await.status, 200);

    // The caller's receiver is down while the completions are accepted.
    // Held until the receiver starts on it, so no one else can take the port meanwhile.
    let receiver_port = reserved_port();
    let receiver_addr = receiver_port.local_addr().unwrap();
    let caller = client_for(&ns("orders"));
    let handler = client_for(&ns("billing"));
    let poll = format!("{base}/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll");
    let mut expected = Vec::new();
    // The sixth is started with a Temporal-sized callback token (kept in a note, not the URL)
    // and completed only after the restart.
    let mut after_restart = None;
    for i in 0..6 {
        let secret = if i == 5 {
            format!("secret-{i}-{}", "t".repeat(800))
        } else {
            format!("secret-{i}")
        };
        let callback = format!("http://{receiver_addr}/cb/{i}");
        let uri: http::Uri = format!(
            "{base}/nexus/endpoints/payments/services/svc/op?callback={}",
            percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        )
        .parse()
        .unwrap();
        let start = tokio::spawn({
            let caller = caller.clone();
            let secret = secret.clone();
            async move { send(&caller, post(uri, &[("nexus-callback-token", &secret)], "")).await }
        });
        // Act as the worker by hand: take the task, answer 201, then complete.
        let task = send(
            &handler,
            post(poll.parse().unwrap(), &[("request-timeout", "10s")], ""),
        )
        .await;
        assert_eq!(task.status, 200);
        let path = task.header("nexus-task-path").unwrap();
        let query = path.split_once('?').unwrap().1;
        let sealed = sealed_callback(query);
        let token = task.header("nexus-task-token").unwrap();
        let answer = post(
            format!("{base}/api/v1/nexus-tasks/{token}/response")
                .parse()
                .unwrap(),
            &[
                ("nexus-task-status", "201"),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"token":"op-{i}","state":"running"}}"#),
        );
        assert_eq!(send(&handler, answer).await.status, 200);
        assert_eq!(start.await.unwrap().status, 201);
        expected.push((format!("/cb/{i}"), secret, format!("result-{i}")));
        if i == 5 {
            assert!(sealed.len() <= 1000, "{sealed}");
            after_restart = Some(sealed);
            continue;
        }
        let done = post(
            sealed.parse().unwrap(),
            &[
                ("nexus-operation-state", "succeeded"),
                ("nexus-operation-token", &format!("op-{i}")),
            ],
            format!("result-{i}"),
        );
        assert_eq!(
            send(&handler, done).await.status,
            200,
            "completion {i} acknowledged"
        );
    }
    gw.signal("KILL");
    tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();

    let mut receiver = Receiver::start_on(receiver_port, 200).await;
    let d = dir.path().to_path_buf();
    let (_gw, new_port) = tokio::task::spawn_blocking(move || start_serve(&d))
        .await
        .unwrap();
    // Same gateway, same path; only the test's port changed with the restart.
    let later = after_restart
        .unwrap()
        .replace(&format!(":{port}/"), &format!(":{new_port}/"));
    let done = post(
        later.parse().unwrap(),
        &[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-token", "op-5"),
        ],
        "result-5",
    );
    assert_eq!(
        send(&handler, done).await.status,
        200,
        "a long callback's note survives kill -9"
    );
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        let got = receiver
            .next(Duration::from_secs(20))
            .await
            .expect("every accepted completion is delivered after the restart");
        delivered.push((
            got.path.clone(),
            got.header("token").unwrap_or_default().to_owned(),
            String::from_utf8_lossy(&got.body).into_owned(),
        ));
    }
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected);
}

#[test]
fn config_file_from_the_example_runs_and_a_bad_one_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, example, _) = run(&["config", "example"], d);
    assert_eq!(code, 0);
    assert!(example.contains("[outbound]") && example.contains("max_body_bytes = 2097152"));
    let (code, _, err) = run(&["certs", "init", "--dir", "certs"], d);
    assert_eq!(code, 0, "{err}");
    let config = example
        .replace("listen = \"127.0.0.1:7443\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "ops_listen = \"127.0.0.1:7080\"",
            "ops_listen = \"127.0.0.1:0\"",
        )
        .replace(
            "ca = \"\"\ncert = \"\"\nkey = \"\"",
            "ca = \"certs/ca.pem\"\ncert = \"certs/server.pem\"\nkey = \"certs/server-key.pem\"",
        );
    std::fs::write(d.join("gateway.toml"), config).unwrap();
    let mut gw = Proc::spawn(&["serve", "--config", "gateway.toml"], d);
    gw.wait_for("data https://127.0.0.1:");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(), Some(0));

    std::fs::write(
        d.join("bad.toml"),
        "[server]\nlisten = \"nowhere\"\nshutdown_grace = 5\n[limits]\nmax_headers = 0\n[tls]\nca = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", "bad.toml"], d);
    assert_eq!(code, 64, "{err}");
    for expected in [
        "[server] listen",
        "[server] shutdown_grace",
        "[limits] max_headers",
        "[tls] ca, cert and key go together",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
}

/// Reads every attribution record through the metering API, page by page.
async fn all_events(
    client: &nexus_gateway::client::HttpClient,
    base: &str,
) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let uri: http::Uri = format!("{base}/api/v1/attribution/events?after={after}&limit=500")
            .parse()
            .unwrap();
        let reply = send(
            client,
            http::Request::get(uri)
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        let page: Vec<serde_json::Value> = String::from_utf8(reply.body.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let Some(last) = page.last() else { return all };
        after = last["seq"].as_u64().unwrap();
        all.extend(page);
    }
}

#[tokio::test]
async fn attribution_survives_kill_9_under_load_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (mut gw, port) = tokio::task::spawn_blocking(move || serve(&d))
        .await
        .unwrap();
    let pki = nexus_certs::DevPki::open(&dir.path().join("certs")).unwrap();
    let client_for = |identity: &nexus_certs::Identity| {
        let material = pki.issue(identity, TRUST_DOMAIN).unwrap().load().unwrap();
        nexus_gateway::client::http_client(&material, Default::default()).unwrap()
    };
    let caller = client_for(&ns("orders"));
    let metering = client_for(&nexus_certs::Identity::Metering("m".into()));
    // Rejected calls (no such endpoint) are recorded like any other and need no worker.
    let load = |base: String,
                prefix: &'static str,
                answered: std::sync::Arc<std::sync::Mutex<Vec<String>>>| {
        let caller = caller.clone();
        async move {
            for i in 0..100_000 {
                let id = format!("{prefix}-{i}");
                let uri: http::Uri = format!("{base}/nexus/endpoints/none/services/s/o")
                    .parse()
                    .unwrap();
                match try_send(&caller, post(uri, &[("nexus-request-id", &id)], "")).await {
                    Ok(reply) if reply.status == 404 => answered.lock().unwrap().push(id),
                    _ => return,
                }
            }
        }
    };
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let base = format!("https://localhost:{port}");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let prefix: &'static str = ["a", "b", "c", "d"][t];
        tasks.push(tokio::spawn(load(base.clone(), prefix, answered.clone())));
    }
    let probe = answered.clone();
    eventually("load running", Duration::from_secs(20), async || {
        probe.lock().unwrap().len() >= 300
    })
    .await;
    gw.signal("KILL");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .unwrap()
            .unwrap();
    }
    tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();

    let d = dir.path().to_path_buf();
    let _gw2 = tokio::task::spawn_blocking(move || start_serve(&d))
        .await
        .unwrap();
    let (_gw2, port) = _gw2;
    let base = format!("https://localhost:{port}");
    let before_restart_load = answered.lock().unwrap().len();
    // More load after the restart.
    for i in 0..50 {
        let id = format!("after-{i}");
        let uri: http::Uri = format!("{base}/nexus/endpoints/none/services/s/o")
            .parse()
            .unwrap();
        assert_eq!(
            send(&caller, post(uri, &[("nexus-request-id", &id)], ""))
                .await
                .status,
            404
        );
        answered.lock().unwrap().push(id);
    }
    let records = all_events(&metering, &base).await;
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq strictly increasing without gaps or duplicates"
    );
    let recorded: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let answered = answered.lock().unwrap().clone();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no record, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(before_restart_load >= 300);
    // A consumer resuming from its last seq sees every record once.
    let half = seqs.len() as u64 / 2;
    let uri: http::Uri = format!("{base}/api/v1/attribution/events?after={half}&limit=100000")
        .parse()
        .unwrap();
    let rest = send(
        &metering,
        http::Request::get(uri)
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    let first_rest: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&rest.body).lines().next().unwrap()).unwrap();
    assert_eq!(first_rest["seq"].as_u64(), Some(half + 1));
}

#[test]
fn certs_never_overwrite_other_files_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = run(&["certs", "init", "--dir", "pki"], d);
    assert_eq!(code, 0, "{err}");
    // Issuing the same identity again keeps its files.
    let issue = ["certs", "issue", "--dir", "pki", "--namespace", "orders"];
    assert_eq!(run(&issue, d).0, 0);
    let cert = d.join("pki/ns-orders.pem");
    let before = std::fs::read(&cert).unwrap();
    let (code, _, err) = run(&issue, d);
    assert_eq!((code, std::fs::read(&cert).unwrap()), (0, before), "{err}");

    // Someone's own file where a new certificate would go is left alone.
    std::fs::write(d.join("pki/ns-billing.pem"), "my own certificate").unwrap();
    let issue = ["certs", "issue", "--dir", "pki", "--namespace", "billing"];
    let (code, _, err) = run(&issue, d);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pki/ns-billing.pem") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("pki/ns-billing.pem")).unwrap(),
        "my own certificate"
    );
    let (code, _, err) = run(&[&issue[..], &["--force"]].concat(), d);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(d.join("pki/ns-billing.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    // Another identity's certificate under the same name: another trust domain.
    let (code, _, err) = run(
        &[
            "certs",
            "issue",
            "--dir",
            "pki",
            "--namespace",
            "orders",
            "--trust-domain",
            "other",
        ],
        d,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ns-orders.pem") && err.contains("--force"),
        "{err}"
    );

    // A server certificate for other names.
    let server = d.join("pki/server.pem");
    let before = std::fs::read(&server).unwrap();
    let init = [
        "certs",
        "init",
        "--dir",
        "pki",
        "--server-name",
        "gateway.internal",
    ];
    let (code, _, err) = run(&init, d);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pki/server.pem") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&server).unwrap(), before);
    let (code, _, err) = run(&[&init[..], &["--force"]].concat(), d);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&server).unwrap(), before);
}

#[test]
fn serve_on_a_busy_port_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = run(&["certs", "init", "--dir", "pki"], d);
    assert_eq!(code, 0, "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let tls = [
        "--tls-ca",
        "pki/ca.pem",
        "--tls-cert",
        "pki/server.pem",
        "--tls-key",
        "pki/server-key.pem",
    ];
    for (flag, other) in [("--listen", "--ops-listen"), ("--ops-listen", "--listen")] {
        let args = [
            &[
                "serve",
                "--data-dir",
                "fresh",
                flag,
                &addr,
                other,
                "127.0.0.1:0",
            ][..],
            &tls[..],
        ]
        .concat();
        let (code, _, err) = run(&args, d);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
        assert!(
            !d.join("fresh").exists(),
            "{flag} busy: the data directory was created"
        );
    }
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, _) = serve(dir.path());
    let line = gw.wait_for("serving");
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
}

#[test]
fn a_bad_config_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("gateway.toml"),
        "[tls]\nca = \"missing/ca.pem\"\ncert = \"missing/server.pem\"\nkey = \"missing/server-key.pem\"\n",
    )
    .unwrap();
    std::fs::write(d.join("broken.toml"), "[server\n").unwrap();
    std::fs::write(d.join("no-tls.toml"), "[server]\nshutdown_grace = \"5s\"\n").unwrap();
    for file in ["gateway.toml", "broken.toml", "no-tls.toml", "absent.toml"] {
        let (code, _, err) = run(&["serve", "--config", file], d);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(file), "{file} not named in:\n{err}");
    }
    assert!(!d.join("data").exists());
}

#[test]
fn usage_refuses_a_reversed_window_and_explains_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("attribution")).unwrap();
    let (code, out, err) = run(
        &[
            "usage",
            "--dir",
            "attribution",
            "--from",
            "2026-12-01",
            "--to",
            "2026-11-01",
        ],
        d,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("--from 2026-12-01") && err.contains("--to 2026-11-01"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "usage",
            "--dir",
            "attribution",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
        ],
        d,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("from 2026-11-01 to 2026-12-01") && err.contains("attribution"),
        "{err}"
    );
}

/// Runs the CLI with a stdout pipe whose reader is already gone, as `| head -1` leaves it.
async fn run_into_closed_pipe(args: &[String]) -> (Option<i32>, String) {
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    // Not `output()`: tokio's replaces the stdout given with a pipe of its own.
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer.into_blocking_fd().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly() {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let dir = tempfile::tempdir().unwrap();
    let list = [
        vec!["endpoint".to_owned(), "list".to_owned()],
        gw.cli_flags(&admin(), dir.path()),
    ]
    .concat();
    for args in [list, vec!["config".into(), "example".into()]] {
        let (code, err) = run_into_closed_pipe(&args).await;
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn endpoint_list_columns_line_up() {
    let gw = TestGateway::start().await;
    let long = "a-much-longer-endpoint-name-than-the-column-was";
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    gw.external_endpoint(
        long,
        "https://handler.internal:7243/namespaces/risk/task-queues/fraud/nexus-services",
        &["payments"],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["endpoint", "list"])
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
    assert_eq!(lines.len(), 3, "{text}");
    for title in ["ID", "TARGET", "ALLOWED CALLERS"] {
        let at = lines[0].find(title).unwrap();
        for row in &lines[1..] {
            assert!(
                row[..at].ends_with(' ') && !row[at..].starts_with(' '),
                "{title} column not aligned:\n{text}"
            );
        }
    }
    let version_end = lines[0].find("VERSION").unwrap() + "VERSION".len();
    for row in &lines[1..] {
        assert_eq!(&row[version_end - 1..version_end], "1", "{text}");
    }
}

#[test]
fn readme_keeps_generated_files_out_of_the_workspace_crates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ignored = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    let mut dirs = std::collections::BTreeSet::new();
    for flag in ["--dir ", "--data-dir "] {
        for (at, _) in readme.match_indices(flag) {
            let path: String = readme[at + flag.len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '`')
                .collect();
            if let Some(top) = path
                .split('/')
                .next()
                .filter(|t| !t.is_empty() && !t.starts_with(['<', '.']))
            {
                dirs.insert(top.to_owned());
            }
        }
    }
    assert!(!dirs.is_empty());
    for dir in dirs {
        assert!(
            !root.join(&dir).join("Cargo.toml").exists(),
            "README writes into the crate folder {dir}/"
        );
        assert!(
            ignored.lines().any(|l| l.trim() == format!("/{dir}/")),
            "/{dir}/ missing from .gitignore"
        );
    }
}
