//! Trusted Temporal clusters: a stock Temporal server calls without a client certificate, with
//! a gateway-issued secret in the endpoint URL, names its namespace in the callback URL, and
//! posts completions without a certificate. Everything else still needs one.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use nexus_certs::Identity;
use nexus_e2e::*;

const BOUND: Duration = Duration::from_secs(10);

fn request(method: Method, uri: http::Uri, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// Registers cluster `name` through the admin API; returns its secret.
async fn add_cluster(gw: &TestGateway, name: &str, template: &str) -> String {
    let body = serde_json::json!({
        "name": name,
        "spec": {"callbackUrlTemplate": template},
    });
    let reply = send(
        &gw.client(&admin()),
        request(Method::POST, gw.uri("/api/v1/clusters"), &body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    reply.json()["secret"].as_str().unwrap().to_owned()
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// What a stock Temporal server sends on a start: no certificate, the callback URL from its
/// template, its callback token as a callback header, links and failure support.
fn temporal_start(uri: http::Uri) -> Request<Full<Bytes>> {
    post(
        uri,
        &[
            ("nexus-request-id", "5b3c1c8e-0f4e-4f55-9d0e-7a1f5c2b9e11"),
            (
                "nexus-callback-temporal-callback-token",
                "caller-secret-token",
            ),
            ("temporal-nexus-failure-support", "true"),
            ("operation-timeout", "60000ms"),
            (
                "nexus-link",
                "<temporal:///namespaces/orders/workflows/wf/run/events?eventID=5>; type=\"temporal.api.common.v1.Link.WorkflowEvent\"",
            ),
            ("user-agent", "temporalio/server"),
            ("content-type", "application/json"),
        ],
        "{\"amount\":5}",
    )
}

struct Setup {
    gw: TestGateway,
    receiver: Receiver,
    secret: String,
    _worker: WorkerHandle,
}

impl Setup {
    async fn new() -> Setup {
        let gw = TestGateway::start().await;
        let receiver = Receiver::start(200).await;
        let template = format!(
            "http://127.0.0.1:{}/namespaces/{{{{.NamespaceName}}}}/nexus/callback",
            receiver.addr.port()
        );
        let secret = add_cluster(&gw, "east", &template).await;
        gw.worker_endpoint("payments", "billing", "charges", &["orders@east"]);
        let worker = gw.start_worker("billing", "charges");
        Setup {
            gw,
            receiver,
            secret,
            _worker: worker,
        }
    }

    fn callback(&self, namespace: &str) -> String {
        format!(
            "http://127.0.0.1:{}/namespaces/{namespace}/nexus/callback",
            self.receiver.addr.port()
        )
    }

    fn op(&self, rest: &str, callback: Option<&str>) -> http::Uri {
        let query = callback
            .map(|c| format!("?callback={}", encode(c)))
            .unwrap_or_default();
        self.gw.uri(&format!(
            "/nexus/clusters/{}/endpoints/payments/services/svc/{rest}{query}",
            self.secret
        ))
    }
}

#[tokio::test]
async fn a_stock_temporal_caller_starts_cancels_and_gets_its_completion() {
    let mut s = Setup::new().await;
    let anonymous = anonymous_client(&s.gw);
    let callback = s.callback("orders");

    // The handler sees the namespace the cluster vouches for, Temporal's headers untouched,
    // and a sealed callback instead of the caller's.
    let reply = send(&anonymous, temporal_start(s.op("headers", Some(&callback)))).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let seen = reply.json();
    let headers = &seen["headers"];
    assert_eq!(headers["nexus-caller-namespace"], "orders@east");
    assert_eq!(headers["temporal-nexus-failure-support"], "true");
    assert!(
        headers["nexus-link"]
            .as_str()
            .unwrap()
            .contains("workflows/wf")
    );
    assert!(
        headers
            .get("nexus-callback-temporal-callback-token")
            .is_none()
    );
    let sealed = sealed_callback_seen_by(&reply);
    assert!(sealed.contains("/nexus/callbacks/"), "{sealed}");

    // Async start: the token the cluster gets is wrapped; its cancel reaches the handler
    // with the handler's own token.
    let reply = send(&anonymous, temporal_start(s.op("async", Some(&callback)))).await;
    assert_eq!(reply.status, 201, "{}", reply.message());
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ngt1."), "{token}");
    assert_eq!(reply.json()["state"], "running");
    let cancel = post(
        s.op("async/cancel", None),
        &[("nexus-operation-token", &token)],
        "",
    );
    let reply = send(&anonymous, cancel).await;
    assert_eq!(reply.status, 202, "{}", reply.message());
    assert_eq!(
        reply.header("x-seen-token"),
        Some("op-5b3c1c8e-0f4e-4f55-9d0e-7a1f5c2b9e11")
    );

    // A handler error keeps Temporal's failure source header.
    let reply = send(
        &anonymous,
        temporal_start(s.op("error-BAD_REQUEST", Some(&callback))),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.header("temporal-nexus-failure-source"),
        Some("handler")
    );

    // The completion comes without a certificate; the caller gets it with its own callback
    // token and the operation token as the cluster knows it.
    let completion = post(
        sealed.parse().unwrap(),
        &[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-token", "handler-token"),
            ("content-type", "application/json"),
        ],
        "\"paid\"",
    );
    let reply = send(&anonymous, completion).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let delivered = s.receiver.next(BOUND).await.expect("completion delivered");
    assert_eq!(delivered.path, "/namespaces/orders/nexus/callback");
    assert_eq!(
        delivered.header("temporal-callback-token"),
        Some("caller-secret-token")
    );
    assert_eq!(delivered.body, Bytes::from_static(b"\"paid\""));
    let relayed_token = delivered
        .header("nexus-operation-token")
        .unwrap()
        .to_owned();
    assert!(relayed_token.starts_with("ngt1."), "{relayed_token}");
    let cancel = post(
        s.op("async/cancel", None),
        &[("nexus-operation-token", &relayed_token)],
        "",
    );
    let reply = send(&anonymous, cancel).await;
    assert_eq!(reply.header("x-seen-token"), Some("handler-token"));

    // Attribution names the cluster's namespace and the secret by id, never the secret.
    let events = attribution_events(&s.gw, 0, 100).await;
    let starts: Vec<_> = events.iter().filter(|e| e["kind"] == "start").collect();
    assert_eq!(starts.len(), 3, "{events:?}");
    for e in &events {
        if e["kind"] != "completion" {
            assert_eq!(e["caller_namespace"], "orders@east", "{e}");
            assert!(
                e["caller_identity"]
                    .as_str()
                    .unwrap()
                    .starts_with("secret:"),
                "{e}"
            );
        } else {
            assert_eq!(e["caller_namespace"], "orders@east", "{e}");
            assert_eq!(e["target_namespace"], "billing", "{e}");
        }
    }
    let all = serde_json::to_string(&events).unwrap();
    let (_, metrics) = s.gw.ops_get("/metrics").await;
    for text in [&all, &metrics] {
        assert!(!text.contains(&s.secret[4..]), "the secret leaked");
    }
}

#[tokio::test]
async fn a_cluster_acts_only_for_namespaces_its_callback_url_names_and_the_endpoint_allows() {
    let s = Setup::new().await;
    let anonymous = anonymous_client(&s.gw);
    let cases = [
        (
            Some("http://127.0.0.1:1/namespaces/orders/nexus/callback".to_owned()),
            "does not match cluster \"east\"'s callback URL template",
        ),
        (
            Some(s.callback("payroll")),
            "namespace \"payroll@east\" is not allowed to call endpoint \"payments\"",
        ),
        (None, "must carry a callback URL"),
    ];
    for (callback, message) in cases {
        let reply = send(
            &anonymous,
            temporal_start(s.op("echo", callback.as_deref())),
        )
        .await;
        assert_eq!(reply.status, 403, "{callback:?}");
        assert_eq!(reply.error_type(), "UNAUTHORIZED");
        assert!(reply.message().contains(message), "{}", reply.message());
    }
    // A cancel whose token the gateway did not wrap for this cluster.
    let cancel = post(
        s.op("async/cancel", None),
        &[("nexus-operation-token", "op-1")],
        "",
    );
    let reply = send(&anonymous, cancel).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.message().contains("not issued by this gateway"),
        "{}",
        reply.message()
    );

    // A wrong secret is 401 and is not echoed.
    let uri =
        s.gw.uri("/nexus/clusters/ngs_0000/endpoints/payments/services/svc/echo?callback=x");
    let reply = send(&anonymous, temporal_start(uri)).await;
    assert_eq!(reply.status, 401);
    assert!(!reply.message().contains("ngs_0000"), "{}", reply.message());
}

#[tokio::test]
async fn rotated_secrets_overlap_then_stop_and_a_deleted_cluster_is_locked_out() {
    let s = Setup::new().await;
    let anonymous = anonymous_client(&s.gw);
    let admin_client = s.gw.client(&admin());
    let callback = s.callback("orders");
    let call = |secret: &str| {
        temporal_start(s.gw.uri(&format!(
            "/nexus/clusters/{secret}/endpoints/payments/services/svc/echo?callback={}",
            encode(&callback)
        )))
    };
    let rotate = |version: u64, overlap: &str| {
        request(
            Method::POST,
            s.gw.uri("/api/v1/clusters/east/secrets"),
            &serde_json::json!({"version": version, "overlap": overlap}).to_string(),
        )
    };
    let reply = send(&admin_client, rotate(1, "1h")).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let second = reply.json()["secret"].as_str().unwrap().to_owned();
    let listed = reply.json()["cluster"]["secrets"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("sha256"), "{listed}");
    assert_eq!(send(&anonymous, call(&s.secret)).await.status, 200);
    assert_eq!(send(&anonymous, call(&second)).await.status, 200);

    let reply = send(&admin_client, rotate(2, "0s")).await;
    let third = reply.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(send(&anonymous, call(&s.secret)).await.status, 401);
    assert_eq!(send(&anonymous, call(&second)).await.status, 401);
    assert_eq!(send(&anonymous, call(&third)).await.status, 200);

    let delete = request(
        Method::DELETE,
        s.gw.uri("/api/v1/clusters/east?version=3"),
        "",
    );
    assert_eq!(send(&admin_client, delete).await.status, 200);
    assert_eq!(send(&anonymous, call(&third)).await.status, 401);
}

#[tokio::test]
async fn a_cluster_certificate_is_a_cluster_caller_when_registered() {
    let s = Setup::new().await;
    let callback = s.callback("orders");
    let plain = |rest: &str| {
        s.gw.uri(&format!(
            "/nexus/endpoints/payments/services/svc/{rest}?callback={}",
            encode(&callback)
        ))
    };
    let east = s.gw.client(&Identity::Cluster("east".into()));
    let reply = send(&east, temporal_start(plain("headers"))).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    assert_eq!(
        reply.json()["headers"]["nexus-caller-namespace"],
        "orders@east"
    );
    let west = s.gw.client(&Identity::Cluster("west".into()));
    let reply = send(&west, temporal_start(plain("headers"))).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .message()
            .contains("cluster \"west\" is not registered")
    );
    // Its own name is not a namespace: the allow-list says orders@east.
    let orders = s.gw.client(&ns("orders"));
    assert_eq!(
        send(&orders, temporal_start(plain("echo"))).await.status,
        403
    );
}

/// Client certificates are optional at the handshake only for cluster calls and completions:
/// every other route of the data port answers 401 without one.
#[tokio::test]
async fn without_a_certificate_every_other_route_answers_401() {
    let s = Setup::new().await;
    let anonymous = anonymous_client(&s.gw);
    let routes = [
        (Method::POST, "/nexus/endpoints/payments/services/svc/echo"),
        (
            Method::POST,
            "/nexus/endpoints/payments/services/svc/echo/cancel",
        ),
        (
            Method::POST,
            "/nexus/endpoints/payments/services/svc/echo/tok/cancel",
        ),
        (Method::GET, "/api/v1/callbacks"),
        (Method::POST, "/api/v1/callbacks/1/retry"),
        (Method::DELETE, "/api/v1/callbacks/1"),
        (
            Method::POST,
            "/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll",
        ),
        (Method::POST, "/api/v1/nexus-tasks/0123/response"),
        (Method::GET, "/api/v1/nexus/endpoints"),
        (Method::POST, "/api/v1/nexus/endpoints"),
        (Method::GET, "/api/v1/nexus/endpoints/x"),
        (Method::PUT, "/api/v1/nexus/endpoints/x"),
        (Method::DELETE, "/api/v1/nexus/endpoints/x?version=1"),
        (Method::GET, "/api/v1/clusters"),
        (Method::POST, "/api/v1/clusters"),
        (Method::GET, "/api/v1/clusters/east"),
        (Method::PUT, "/api/v1/clusters/east"),
        (Method::DELETE, "/api/v1/clusters/east?version=1"),
        (Method::POST, "/api/v1/clusters/east/secrets"),
        (Method::GET, "/api/v1/attribution/events"),
        (
            Method::POST,
            "/api/v1/internal/forwarded-tasks/billing/charges",
        ),
        (
            Method::POST,
            "/nexus/clusters/ngs_wrong/endpoints/payments/services/svc/echo",
        ),
    ];
    for (method, path) in routes {
        let reply = send(&anonymous, request(method.clone(), s.gw.uri(path), "{}")).await;
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.message());
        assert_eq!(reply.error_type(), "UNAUTHENTICATED", "{method} {path}");
    }
    // The completion route is open: the sealed token decides, and a forged one is refused.
    let reply = send(
        &anonymous,
        post(
            s.gw.uri("/nexus/callbacks/forged"),
            &[("nexus-operation-state", "succeeded")],
            "",
        ),
    )
    .await;
    assert!(
        reply.status != 401 && reply.status.as_u16() >= 400,
        "{}",
        reply.status
    );
    // Nothing was touched: the endpoint and cluster are still there.
    assert_eq!(s.gw.registry.len(), 1);
    assert!(s.gw.registry.cluster("east").is_some());
}

#[tokio::test]
async fn the_cluster_api_refuses_bad_input_with_clear_messages() {
    let gw = TestGateway::start().await;
    let admin_client = gw.client(&admin());
    let cases = [
        (
            serde_json::json!({"name": "east", "spec": {"callbackUrlTemplate": "http://127.0.0.1:9/cb"}}),
            400,
            "must contain {namespace} (or {{.NamespaceName}}) exactly once",
        ),
        (
            serde_json::json!({"name": "a@b", "spec": {"callbackUrlTemplate": "http://127.0.0.1:9/ns/{namespace}"}}),
            400,
            "cluster name \"a@b\" is invalid",
        ),
        (
            serde_json::json!({"name": "east", "spec": {"callbackUrlTemplate": "http://127.0.0.1:9/ns/{namespace}", "typo": 1}}),
            400,
            "unknown field `typo`",
        ),
    ];
    for (body, status, message) in cases {
        let reply = send(
            &admin_client,
            request(Method::POST, gw.uri("/api/v1/clusters"), &body.to_string()),
        )
        .await;
        assert_eq!(reply.status, status, "{body}");
        assert!(reply.message().contains(message), "{}", reply.message());
    }
    let secret = add_cluster(
        &gw,
        "east",
        "http://localhost:7243/namespaces/{namespace}/nexus/callback",
    )
    .await;
    assert!(secret.starts_with("ngs_"));
    let again = serde_json::json!({"name": "east", "spec": {"callbackUrlTemplate": "http://127.0.0.1:9/ns/{namespace}"}});
    let reply = send(
        &admin_client,
        request(Method::POST, gw.uri("/api/v1/clusters"), &again.to_string()),
    )
    .await;
    assert_eq!(reply.status, 409);
    // Completions must be deliverable to the template's host.
    let unreachable = serde_json::json!({"name": "west", "spec": {"callbackUrlTemplate": "http://temporal-west:7243/namespaces/{namespace}/nexus/callback"}});
    let reply = send(
        &admin_client,
        request(
            Method::POST,
            gw.uri("/api/v1/clusters"),
            &unreachable.to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.message().contains("[callbacks] allowed"),
        "{}",
        reply.message()
    );
    let reply = send(
        &gw.client(&ns("orders")),
        request(Method::GET, gw.uri("/api/v1/clusters"), ""),
    )
    .await;
    assert_eq!(reply.status, 403);
}
