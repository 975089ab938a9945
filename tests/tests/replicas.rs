//! Several gateways on one shared PostgreSQL store are one gateway: an endpoint written through
//! any replica is routed by every other, and a completion sealed by one is accepted by another.
//! Needs a PostgreSQL server: `bash .ci/postgres` starts one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use nexus_e2e::*;

const BOUND: Duration = Duration::from_secs(10);

fn json_request(method: Method, uri: http::Uri, body: serde_json::Value) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn replica(pki: &Arc<Pki>, dir: &tempfile::TempDir, db: &TestDb) -> TestGateway {
    let url = db.url.clone();
    TestGateway::start_in(pki.clone(), dir.path(), move |c| {
        c.store.url = Some(url);
        c.store.resync_interval = Duration::from_millis(200);
    })
    .await
}

/// Creates endpoint `payments` (external target `handler`, caller `orders`) through `gw`.
async fn create_payments(gw: &TestGateway, handler: std::net::SocketAddr) {
    let spec = serde_json::json!({"spec": {
        "name": "payments",
        "target": {"external": {"url": format!("http://{handler}")}},
        "allowedCallerNamespaces": ["orders"],
    }});
    let reply = send(
        &gw.client(&admin()),
        json_request(Method::POST, gw.uri("/api/v1/nexus/endpoints"), spec),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.message());
}

fn echo(gw: &TestGateway) -> Request<Full<Bytes>> {
    post(
        gw.uri("/nexus/endpoints/payments/services/svc/echo"),
        &[("content-type", "text/plain")],
        "hello",
    )
}

#[tokio::test]
async fn replicas_share_endpoints_clusters_and_callback_keys() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&pki, &dir_a, &db).await;
    let b = replica(&pki, &dir_b, &db).await;
    let (handler, _stop) = serve_reference_handler().await;

    // An endpoint written through A: routed by A on the next request, by B soon after.
    create_payments(&a, handler).await;
    let orders_a = a.client(&ns("orders"));
    let orders_b = b.client(&ns("orders"));
    assert_eq!(send(&orders_a, echo(&a)).await.status, 200);
    eventually("replica B routes the new endpoint", BOUND, async || {
        send(&orders_b, echo(&b)).await.status == 200
    })
    .await;

    // A completion sealed by A is accepted by B and delivered.
    let mut receiver = Receiver::start(200).await;
    let callback = format!("http://127.0.0.1:{}/cb", receiver.addr.port());
    let start = post(
        a.uri(&format!(
            "/nexus/endpoints/payments/services/svc/headers?callback={}",
            percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        )),
        &[("nexus-callback-x-caller", "kept")],
        "",
    );
    let reply = send(&orders_a, start).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let sealed = sealed_callback_seen_by(&reply);
    let on_b = sealed.replace(
        &format!("localhost:{}", a.data_addr.port()),
        &format!("localhost:{}", b.data_addr.port()),
    );
    assert_ne!(sealed, on_b);
    let completion = post(
        on_b.parse().unwrap(),
        &[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-token", "op-1"),
        ],
        "done",
    );
    let reply = send(&anonymous_client(&b), completion).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let delivered = receiver.next(BOUND).await.expect("delivered");
    assert_eq!(delivered.header("x-caller"), Some("kept"));
    assert_eq!(delivered.body, Bytes::from_static(b"done"));

    // A cluster added through B works on A.
    let cluster = serde_json::json!({"name": "east", "spec": {
        "callbackUrlTemplate": format!("http://127.0.0.1:{}/namespaces/{{namespace}}/cb", receiver.addr.port())
    }});
    let reply = send(
        &b.client(&admin()),
        json_request(Method::POST, b.uri("/api/v1/clusters"), cluster),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let admin_a = a.client(&admin());
    eventually("replica A knows the cluster", BOUND, async || {
        let get = json_request(
            Method::GET,
            a.uri("/api/v1/clusters/east"),
            serde_json::json!({}),
        );
        send(&admin_a, get).await.status == 200
    })
    .await;

    // Each sees the store, the other replica, and the notifications that brought the changes.
    eventually("metrics show both replicas", BOUND, async || {
        let (_, metrics) = a.ops_get("/metrics").await;
        metrics.contains("nexus_gateway_store_up 1")
            && metrics.contains("nexus_gateway_store_replicas_seen 2")
            && !metrics.contains("nexus_gateway_store_notifications_total 0")
    })
    .await;
}

#[tokio::test]
async fn two_admins_updating_through_two_replicas_one_wins() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&pki, &dir_a, &db).await;
    let b = replica(&pki, &dir_b, &db).await;
    let spec = |name: &str| {
        serde_json::json!({
            "name": name,
            "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}},
            "allowedCallerNamespaces": ["orders"],
        })
    };
    let reply = send(
        &a.client(&admin()),
        json_request(
            Method::POST,
            a.uri("/api/v1/nexus/endpoints"),
            serde_json::json!({"spec": spec("payments")}),
        ),
    )
    .await;
    let id = reply.json()["endpoint"]["id"].as_str().unwrap().to_owned();
    let update = |gw: &TestGateway, name: &str| {
        json_request(
            Method::PUT,
            gw.uri(&format!("/api/v1/nexus/endpoints/{id}")),
            serde_json::json!({"version": 1, "spec": spec(name)}),
        )
    };
    let (admin_a, admin_b) = (a.client(&admin()), b.client(&admin()));
    let (ra, rb) = tokio::join!(
        send(&admin_a, update(&a, "from-a")),
        send(&admin_b, update(&b, "from-b"))
    );
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", ra.message(), rb.message());
}

#[tokio::test]
async fn without_its_store_a_replica_routes_from_memory_and_refuses_writes_with_503() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let gw = replica(&pki, &dir, &db).await;
    let (handler, _stop) = serve_reference_handler().await;
    let spec = |name: &str| {
        serde_json::json!({"spec": {
            "name": name,
            "target": {"external": {"url": format!("http://{handler}")}},
            "allowedCallerNamespaces": ["orders"],
        }})
    };
    let admin_client = gw.client(&admin());
    let create =
        |name: &str| json_request(Method::POST, gw.uri("/api/v1/nexus/endpoints"), spec(name));
    assert_eq!(send(&admin_client, create("payments")).await.status, 200);
    assert_eq!(gw.ops_get("/readyz").await.1, "ready\n");

    db.drop_now();
    eventually("readyz says degraded", BOUND, async || {
        gw.ops_get("/readyz").await.1.starts_with("degraded")
    })
    .await;
    assert_eq!(gw.ops_get("/readyz").await.0, 200);
    let orders = gw.client(&ns("orders"));
    assert_eq!(
        send(&orders, echo(&gw)).await.status,
        200,
        "routing goes on"
    );
    let reply = send(&admin_client, create("fraud")).await;
    assert_eq!(reply.status, 503, "{}", reply.message());
    assert_eq!(reply.error_type(), "UNAVAILABLE");
    assert!(reply.header("retry-after").is_some());
}

/// Each replica writes its own log, every record naming the replica; `usage` over all their
/// directories counts a start retried on another replica once.
#[tokio::test]
async fn usage_over_all_replicas_counts_a_retry_on_another_replica_once() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = replica(&pki, &dir_a, &db).await;
    let mut b = replica(&pki, &dir_b, &db).await;
    let (handler, _stop) = serve_reference_handler().await;
    create_payments(&a, handler).await;
    let start = |gw: &TestGateway, id: &str| {
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/async"),
            &[("nexus-request-id", id)],
            "",
        )
    };
    let (orders_a, orders_b) = (a.client(&ns("orders")), b.client(&ns("orders")));
    assert_eq!(send(&orders_a, start(&a, "r-1")).await.status, 201);
    eventually("replica B routes the endpoint", BOUND, async || {
        send(&orders_b, start(&b, "r-1")).await.status == 201
    })
    .await;
    assert_eq!(send(&orders_b, start(&b, "r-2")).await.status, 201);
    a.stop().await;
    b.stop().await;

    let logs: Vec<String> = [&dir_a, &dir_b]
        .iter()
        .map(|d| d.path().join("attribution").display().to_string())
        .collect();
    for log in &logs {
        let tail = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
            .args(["attribution", "tail", "--dir", log])
            .output()
            .unwrap();
        let text = String::from_utf8(tail.stdout).unwrap();
        let replicas: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                r["replica"].as_str().expect("a replica id").to_owned()
            })
            .collect();
        assert_eq!(replicas.len(), 1, "{text}");
    }
    let usage = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-gateway-e2e"))
        .args([
            "usage", "--dir", &logs[0], "--dir", &logs[1], "--by", "caller", "--format", "json",
        ])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    assert_eq!(rows[0]["caller_namespace"], "orders", "{rows}");
    assert_eq!(
        rows[0]["starts"], 2,
        "r-1 on A and its retry on B count once: {rows}"
    );
}

/// A completion accepted by a replica that then stops is delivered by a survivor once the
/// stopped replica's lease on it runs out.
#[tokio::test]
async fn a_survivor_delivers_what_a_stopped_replica_accepted() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fast = |db: &TestDb| {
        let url = db.url.clone();
        move |c: &mut nexus_gateway::Config| {
            c.store.url = Some(url);
            c.store.resync_interval = Duration::from_millis(200);
            c.store.lease = Duration::from_millis(900);
        }
    };
    let mut a = TestGateway::start_in(pki.clone(), dir_a.path(), fast(&db)).await;
    let b = TestGateway::start_in(pki.clone(), dir_b.path(), fast(&db)).await;
    let (handler, _stop) = serve_reference_handler().await;
    create_payments(&a, handler).await;

    // The caller's receiver is down (503) while A holds the completion.
    let mut receiver = Receiver::start(503).await;
    let callback = format!("http://127.0.0.1:{}/cb", receiver.addr.port());
    let start = post(
        a.uri(&format!(
            "/nexus/endpoints/payments/services/svc/headers?callback={}",
            percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        )),
        &[],
        "",
    );
    let reply = send(&a.client(&ns("orders")), start).await;
    let sealed = sealed_callback_seen_by(&reply);
    let completion = post(
        sealed.parse().unwrap(),
        &[("nexus-operation-state", "succeeded")],
        "done",
    );
    assert_eq!(send(&anonymous_client(&a), completion).await.status, 200);
    receiver.next(BOUND).await.expect("A tried once");
    a.stop().await;

    // B has never seen it, yet delivers it once A's lease has run out.
    receiver.set_status(200);
    let delivered = loop {
        let got = receiver
            .next(BOUND)
            .await
            .expect("B delivers within the bound");
        if got.body == Bytes::from_static(b"done") {
            break got;
        }
    };
    assert_eq!(delivered.path, "/cb");
    eventually("B's spool is empty", BOUND, async || {
        let list = json_request(
            Method::GET,
            b.uri("/api/v1/callbacks"),
            serde_json::json!({}),
        );
        let reply = send(&b.client(&admin()), list).await;
        reply.json()["completions"]
            .as_array()
            .is_some_and(|c| c.is_empty())
    })
    .await;
}

/// A worker polling replica A only serves a caller connected to replica B only: B forwards
/// the task, signed, to A. An unsigned or tampered forward is refused.
#[tokio::test]
async fn a_worker_on_one_replica_serves_callers_of_another() {
    let db = TestDb::new();
    let pki = Arc::new(Pki::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&pki, &dir_a, &db).await;
    let b = replica(&pki, &dir_b, &db).await;
    let worker_spec = serde_json::json!({"spec": {
        "name": "payments",
        "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}},
        "allowedCallerNamespaces": ["orders"],
    }});
    let reply = send(
        &a.client(&admin()),
        json_request(Method::POST, a.uri("/api/v1/nexus/endpoints"), worker_spec),
    )
    .await;
    assert_eq!(reply.status, 200);
    let _worker = a.start_worker("billing", "charges");
    let orders_b = b.client(&ns("orders"));
    let call = || {
        post(
            b.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[("content-type", "text/plain"), ("request-timeout", "3s")],
            "through B",
        )
    };
    eventually("B forwards to A's worker", BOUND, async || {
        let reply = send(&orders_b, call()).await;
        reply.status == 200 && reply.body == Bytes::from_static(b"through B")
    })
    .await;

    // The caller's deadline holds across the forward: a worker slower than it gets the
    // caller a retryable 520, not a hang.
    let slow = post(
        b.uri("/nexus/endpoints/payments/services/svc/slow"),
        &[("x-delay-ms", "8000"), ("request-timeout", "3s")],
        "",
    );
    let reply = tokio::time::timeout(BOUND, send(&orders_b, slow))
        .await
        .expect("answered before the test's bound");
    assert_eq!(reply.status.as_u16(), 520, "{}", reply.message());
    assert_eq!(reply.error_type(), "UPSTREAM_TIMEOUT");

    // Nobody but a replica can hand A a task.
    let forged = post(
        a.uri("/api/v1/internal/forwarded-tasks/billing/charges"),
        &[
            ("nexus-task-token", "0123"),
            ("nexus-gateway-forwarded", "99999999999999.AAAA"),
        ],
        "x",
    );
    let reply = send(&anonymous_client(&a), forged).await;
    assert_eq!(reply.status, 401, "{}", reply.message());
    assert!(
        reply.message().contains("replica signature"),
        "{}",
        reply.message()
    );
}

/// A TCP relay to PostgreSQL that the test can cut: while cut, it drops every connection and
/// refuses new ones, as an unreachable database does.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (cut2, generation2) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cuts = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay {
            port,
            cut,
            generation,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

/// The database unreachable for 5 s while callers keep calling: every call is routed from
/// memory, admin writes and completions get 503 meanwhile, and both work again by themselves.
#[tokio::test]
async fn a_five_second_database_outage_under_load_is_ridden_out() {
    let db = TestDb::new();
    let (host_port, _) = db
        .url
        .trim_start_matches("postgres://nexus:nexus@")
        .split_once('/')
        .unwrap();
    let relay = Relay::start(host_port.parse().unwrap()).await;
    let via_relay = db
        .url
        .replace(host_port, &format!("127.0.0.1:{}", relay.port));
    let pki = Arc::new(Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_in(pki.clone(), dir.path(), move |c| {
        c.store.url = Some(via_relay);
        c.store.resync_interval = Duration::from_millis(200);
        c.store.lease = Duration::from_secs(3);
    })
    .await;
    let (handler, _stop) = serve_reference_handler().await;
    create_payments(&gw, handler).await;
    let admin_client = gw.client(&admin());
    let create = |name: &str| {
        json_request(
            Method::POST,
            gw.uri("/api/v1/nexus/endpoints"),
            serde_json::json!({"spec": {
                "name": name,
                "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}},
                "allowedCallerNamespaces": ["orders"],
            }}),
        )
    };

    // Load: callers keep calling for the whole outage.
    let orders = gw.client(&ns("orders"));
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = {
        let (orders, stop_load) = (orders.clone(), stop_load.clone());
        let uri = gw.uri("/nexus/endpoints/payments/services/svc/echo");
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop_load.is_cancelled() {
                let request = post(uri.clone(), &[("content-type", "text/plain")], "x");
                match send(&orders, request).await.status.as_u16() {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };

    relay.set_cut(true);
    eventually("readyz says degraded", BOUND, async || {
        gw.ops_get("/readyz").await.1.starts_with("degraded")
    })
    .await;
    let reply = send(&admin_client, create("during")).await;
    assert_eq!(reply.status, 503, "{}", reply.message());
    assert!(reply.header("retry-after").is_some());
    // A completion cannot be stored now: 503, so the handler sends it again later.
    let mut receiver = Receiver::start(200).await;
    let callback = format!("http://127.0.0.1:{}/cb", receiver.addr.port());
    let start = post(
        gw.uri(&format!(
            "/nexus/endpoints/payments/services/svc/headers?callback={}",
            percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        )),
        &[],
        "",
    );
    let sealed = sealed_callback_seen_by(&send(&orders, start).await);
    let completion = || {
        post(
            sealed.parse().unwrap(),
            &[("nexus-operation-state", "succeeded")],
            "late",
        )
    };
    let reply = send(&anonymous_client(&gw), completion()).await;
    assert_eq!(reply.status, 503, "{}", reply.message());
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.set_cut(false);

    eventually("writes work again", BOUND, async || {
        send(&admin_client, create("after")).await.status == 200
    })
    .await;
    eventually("readyz is ready again", BOUND, async || {
        gw.ops_get("/readyz").await.1 == "ready\n"
    })
    .await;
    assert_eq!(send(&anonymous_client(&gw), completion()).await.status, 200);
    let delivered = receiver
        .next(BOUND)
        .await
        .expect("delivered after the outage");
    assert_eq!(delivered.body, Bytes::from_static(b"late"));
    stop_load.cancel();
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0, "calls were served during the outage");
    assert_eq!(failed, 0, "routing never needed the database");
}
