//! The operator console over real sockets: who may use it on each port, its headers, and that
//! its JSON is the admin APIs' and shows the traffic that went through.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use nexus_e2e::*;

fn request(
    method: Method,
    uri: http::Uri,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

const BAD_NAME: &str = r#"{"spec":{"name":"1-bad","target":{"worker":{"namespace":"billing","taskQueue":"charges"}},"allowedCallerNamespaces":["orders"]}}"#;
const GOOD: &str = r#"{"spec":{"name":"payments","description":"charges","target":{"worker":{"namespace":"billing","taskQueue":"charges"}},"allowedCallerNamespaces":["orders"]}}"#;

#[tokio::test]
async fn the_ops_port_console_is_read_only_by_default() {
    let gw = TestGateway::start().await;
    let page = gw
        .ops_send(request(Method::GET, gw.ops_uri("/console/"), &[], ""))
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-security-policy")
            .unwrap_or_default()
            .split(';')
            .next(),
        Some("default-src 'self'")
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<script type="module" src="/console/console.js">"#));
    assert!(!html.contains("<script>"), "no inline script");
    let script = gw
        .ops_send(request(
            Method::GET,
            gw.ops_uri("/console/console.js"),
            &[],
            "",
        ))
        .await;
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let redirect = gw
        .ops_send(request(Method::GET, gw.ops_uri("/console"), &[], ""))
        .await;
    assert_eq!(
        (redirect.status.as_u16(), redirect.header("location")),
        (308, Some("/console/"))
    );

    let overview = gw
        .ops_send(request(
            Method::GET,
            gw.ops_uri("/console/api/overview"),
            &[],
            "",
        ))
        .await;
    assert_eq!(overview.header("cache-control"), Some("no-store"));
    assert_eq!(overview.json()["writable"], false);

    let origin = format!("http://{}", gw.ops_addr);
    let write = gw
        .ops_send(request(
            Method::POST,
            gw.ops_uri("/console/api/endpoints"),
            &[
                ("x-nexus-console", "1"),
                ("origin", &origin),
                ("content-type", "application/json"),
            ],
            GOOD,
        ))
        .await;
    assert_eq!(write.status, 403);
    assert!(
        write.message().contains("[console] writable = true"),
        "{}",
        write.message()
    );
    assert!(gw.registry.resolve("payments").is_none());

    // A page of another site rebound to 127.0.0.1 names itself in Host.
    let rebound = gw
        .ops_send(request(
            Method::GET,
            gw.ops_uri("/console/api/endpoints"),
            &[("host", "evil.example")],
            "",
        ))
        .await;
    assert_eq!(rebound.status, 403, "{}", rebound.message());

    let off = TestGateway::start_with(|c| c.console.enabled = false).await;
    let gone = off
        .ops_send(request(Method::GET, off.ops_uri("/console/"), &[], ""))
        .await;
    assert_eq!(gone.status, 404);
    assert!(gone.message().contains("[console] enabled = false"));
}

#[tokio::test]
async fn writes_need_the_console_header_and_a_same_origin_page() {
    let gw = TestGateway::start_with(|c| c.console.writable = true).await;
    let origin = format!("http://{}", gw.ops_addr);
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(
            Method::POST,
            gw.ops_uri("/console/api/endpoints"),
            &headers,
            body,
        )
    };
    let unmarked = gw
        .ops_send(post(vec![("origin", origin.clone())], GOOD))
        .await;
    assert_eq!(unmarked.status, 403);
    assert!(
        unmarked.message().contains("x-nexus-console"),
        "{}",
        unmarked.message()
    );
    let cross = gw
        .ops_send(post(
            vec![
                ("x-nexus-console", "1".into()),
                ("origin", "http://evil.example".into()),
            ],
            GOOD,
        ))
        .await;
    assert_eq!(cross.status, 403);
    assert!(cross.message().contains("Origin"), "{}", cross.message());

    // The same validation message as the admin API's, word for word.
    let marked = || {
        vec![
            ("x-nexus-console", "1".to_owned()),
            ("origin", origin.clone()),
        ]
    };
    let bad = gw.ops_send(post(marked(), BAD_NAME)).await;
    assert_eq!(bad.status, 400);
    let admin = gw.client(&admin());
    let from_api = send(
        &admin,
        post_json(gw.uri("/api/v1/nexus/endpoints"), BAD_NAME),
    )
    .await;
    assert_eq!(from_api.status, 400);
    assert_eq!(bad.message(), from_api.message());
    assert!(bad.message().contains("1-bad"), "{}", bad.message());

    let created = gw.ops_send(post(marked(), GOOD)).await;
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let endpoint = created.json()["endpoint"].clone();
    assert_eq!(
        gw.registry.resolve("payments").unwrap().spec.description,
        "charges"
    );
    let id = endpoint["id"].as_str().unwrap();
    let headers: Vec<(&str, &str)> = vec![("x-nexus-console", "1"), ("origin", &origin)];
    let deleted = gw
        .ops_send(request(
            Method::DELETE,
            gw.ops_uri(&format!("/console/api/endpoints/{id}?version=1")),
            &headers,
            "",
        ))
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.message());
    assert!(gw.registry.resolve("payments").is_none());

    // Retry and drop are the completions admin API's, messages included.
    for (method, path) in [
        (Method::POST, "/console/api/completions/999/retry"),
        (Method::DELETE, "/console/api/completions/999"),
    ] {
        let reply = gw
            .ops_send(request(method, gw.ops_uri(path), &headers, ""))
            .await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.message(), "completion 999 not found");
    }
}

fn post_json(uri: http::Uri, body: &str) -> Request<Full<Bytes>> {
    request(
        Method::POST,
        uri,
        &[("content-type", "application/json")],
        body,
    )
}

#[tokio::test]
async fn on_the_data_port_only_admins_use_the_console() {
    let gw = TestGateway::start().await;
    let get = |path: &str| request(Method::GET, gw.uri(path), &[], "");
    let anonymous = try_send(&anonymous_client(&gw), get("/console/"))
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401);
    let namespace = send(&gw.client(&ns("orders")), get("/console/api/overview")).await;
    assert_eq!(namespace.status, 403);
    assert!(
        namespace.message().contains("admin"),
        "{}",
        namespace.message()
    );
    let admin = gw.client(&admin());
    let page = send(&admin, get("/console/")).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    let overview = send(&admin, get("/console/api/overview")).await;
    assert_eq!(overview.json()["writable"], true);

    // Writes with the admin certificate, still only from the console's page.
    let origin = format!("https://localhost:{}", gw.data_addr.port());
    let headers = [
        ("x-nexus-console", "1"),
        ("origin", origin.as_str()),
        ("content-type", "application/json"),
    ];
    let created = send(
        &admin,
        request(
            Method::POST,
            gw.uri("/console/api/endpoints"),
            &headers,
            GOOD,
        ),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.message());
    let unmarked = send(&admin, post_json(gw.uri("/console/api/endpoints"), GOOD)).await;
    assert_eq!(unmarked.status, 403);
}

#[tokio::test]
async fn traffic_chart_and_destinations_show_what_went_through() {
    let gw = TestGateway::start().await;
    let (_worker, handler, _stop) = gw.both_targets().await;
    let caller = gw.client(&ns("orders"));
    for _ in 0..3 {
        let reply = send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
                &[],
                "x",
            ),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let failed = send(
        &caller,
        post(gw.uri("/nexus/endpoints/quotes/services/svc/fail"), &[], ""),
    )
    .await;
    assert_eq!(failed.status, 424);
    let refused = send(
        &gw.client(&ns("intruder")),
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(refused.status, 403);

    let get = |path: &str| gw.ops_send(request(Method::GET, gw.ops_uri(path), &[], ""));
    let traffic = get("/console/api/traffic?window=5m").await.json();
    assert_eq!(traffic["windowSeconds"], 300);
    let rows = traffic["rows"].as_array().unwrap();
    let row = |caller: &str, endpoint: &str| {
        rows.iter()
            .find(|r| r["caller"] == caller && r["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no row {caller} -> {endpoint}: {traffic}"))
    };
    let payments = row("orders", "payments");
    assert_eq!(
        (payments["target"].as_str(), payments["requests"].as_u64()),
        (Some("billing"), Some(3))
    );
    assert!(payments["rate"].as_f64().unwrap() > 0.0);
    assert!(payments["p99Ms"].as_f64().unwrap() > 0.0);
    assert_eq!(payments["errorRate"], 0.0);
    // A 424 is the operation's result, not an error; a refusal is.
    assert_eq!(row("orders", "quotes")["errors"], 0);
    assert_eq!(row("intruder", "payments")["errorRate"], 1.0);
    let bad_window = get("/console/api/traffic?window=1h").await;
    assert_eq!(bad_window.status, 400);
    assert!(
        bad_window.message().contains("\"1h\""),
        "{}",
        bad_window.message()
    );

    let chart = get("/console/api/usage").await.json();
    assert_eq!(chart["hours"].as_array().unwrap().len(), 24);
    let callers = chart["callers"].as_array().unwrap();
    assert_eq!(
        callers.len(),
        1,
        "the refused caller is never charged: {chart}"
    );
    assert_eq!(callers[0]["caller"], "orders");
    assert_eq!(callers[0]["total"], 4);
    assert_eq!(callers[0]["actions"][23], 4);

    let destinations = get("/console/api/destinations").await.json();
    let lane = &destinations["lanes"][0];
    assert_eq!(lane["destination"], handler.to_string());
    assert_eq!(
        (lane["kind"].as_str(), lane["source"].as_str()),
        (Some("start"), Some("orders"))
    );
    assert_eq!(lane["breaker"], "closed");
    assert_eq!(destinations["completions"]["pending"], 0);
    let completions = get("/console/api/completions").await.json();
    assert_eq!(completions["completions"], serde_json::json!([]));
}
