//! The admin API over real mTLS: CRUD with optimistic concurrency, validation, authorization,
//! changes seen by the very next routed request, and persistence across restarts.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use nexus_e2e::*;
use serde_json::{Value, json};

const PATH: &str = "/api/v1/nexus/endpoints";

fn request(
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(gw.uri(path))
        .header("content-type", "application/json")
        .body(Full::new(
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
        ))
        .unwrap()
}

fn spec(name: &str, callers: &[&str]) -> Value {
    json!({"name": name, "target": {"worker": {"namespace": "billing", "taskQueue": "charges"}}, "allowedCallerNamespaces": callers})
}

#[tokio::test]
async fn endpoint_lifecycle_with_optimistic_concurrency() {
    let gw = TestGateway::start().await;
    let admin = gw.client(&admin());
    let created = send(
        &admin,
        request(
            &gw,
            Method::POST,
            PATH,
            Some(json!({"spec": spec("payments", &["orders"])})),
        ),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let endpoint = created.json()["endpoint"].clone();
    let id = endpoint["id"].as_str().unwrap().to_owned();
    assert_eq!(endpoint["version"], 1);
    assert_eq!(
        endpoint["urlPrefix"],
        format!("/nexus/endpoints/{id}/services")
    );
    assert_eq!(endpoint["spec"]["target"]["worker"]["taskQueue"], "charges");
    assert!(endpoint["createdTime"].as_str().unwrap().ends_with('Z'));

    let got = send(
        &admin,
        request(&gw, Method::GET, &format!("{PATH}/{id}"), None),
    )
    .await;
    assert_eq!(got.json()["endpoint"], endpoint);
    let listed = send(
        &admin,
        request(&gw, Method::GET, &format!("{PATH}?name=payments"), None),
    )
    .await;
    assert_eq!(listed.json()["endpoints"][0]["id"], id.as_str());

    let update = json!({"version": 1, "spec": spec("payments", &["orders", "shipping"])});
    let updated = send(
        &admin,
        request(
            &gw,
            Method::PUT,
            &format!("{PATH}/{id}"),
            Some(update.clone()),
        ),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["endpoint"]["version"], 2);
    // Temporal's JSON sends versions as strings; both work.
    let stale = send(
        &admin,
        request(
            &gw,
            Method::PUT,
            &format!("{PATH}/{id}"),
            Some(json!({"version": "1", "spec": spec("payments", &[])})),
        ),
    )
    .await;
    assert_eq!(stale.status, 409);
    assert!(
        stale.message().contains('1') && stale.message().contains('2'),
        "{}",
        stale.message()
    );

    let stale_delete = send(
        &admin,
        request(&gw, Method::DELETE, &format!("{PATH}/{id}?version=1"), None),
    )
    .await;
    assert_eq!(stale_delete.status, 409);
    let no_version = send(
        &admin,
        request(&gw, Method::DELETE, &format!("{PATH}/{id}"), None),
    )
    .await;
    assert_eq!(no_version.status, 400);
    let deleted = send(
        &admin,
        request(&gw, Method::DELETE, &format!("{PATH}/{id}?version=2"), None),
    )
    .await;
    assert_eq!(deleted.status, 200);
    let gone = send(
        &admin,
        request(&gw, Method::GET, &format!("{PATH}/{id}"), None),
    )
    .await;
    assert_eq!(gone.status, 404);
    assert!(gone.message().contains("not found"));
}

#[tokio::test]
async fn invalid_and_duplicate_endpoints_are_refused_with_the_rule() {
    let gw = TestGateway::start().await;
    let admin = gw.client(&admin());
    let create = |spec: Value| request(&gw, Method::POST, PATH, Some(json!({"spec": spec})));
    let bad_name = send(&admin, create(spec("1-bad", &[]))).await;
    assert_eq!(bad_name.status, 400);
    assert!(
        bad_name
            .message()
            .contains("^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$"),
        "{}",
        bad_name.message()
    );
    let empty_queue = send(
        &admin,
        create(
            json!({"name": "ok", "target": {"worker": {"namespace": "billing", "taskQueue": ""}}}),
        ),
    )
    .await;
    assert_eq!(empty_queue.status, 400);
    assert!(
        empty_queue.message().contains("taskQueue"),
        "{}",
        empty_queue.message()
    );
    let bad_url = send(
        &admin,
        create(json!({"name": "ok", "target": {"external": {"url": "ftp://x"}}})),
    )
    .await;
    assert_eq!(bad_url.status, 400);
    let not_json = send(&admin, request(&gw, Method::POST, PATH, None)).await;
    assert_eq!(not_json.status, 400);
    assert!(not_json.message().contains("invalid request body"));
    assert_eq!(
        send(&admin, create(spec("payments", &[]))).await.status,
        200
    );
    let duplicate = send(&admin, create(spec("payments", &[]))).await;
    assert_eq!(duplicate.status, 409);
    assert!(duplicate.message().contains("payments"));
}

#[tokio::test]
async fn only_admins_manage_endpoints() {
    let gw = TestGateway::start().await;
    for identity in [ns("orders"), nexus_certs::Identity::Metering("m".into())] {
        let reply = send(&gw.client(&identity), request(&gw, Method::GET, PATH, None)).await;
        assert_eq!(reply.status, 403);
        assert!(
            reply.message().contains("an admin certificate is required"),
            "{}",
            reply.message()
        );
    }
}

#[tokio::test]
async fn a_change_is_seen_by_the_very_next_request() {
    let gw = TestGateway::start().await;
    let _worker = gw.start_worker("billing", "charges");
    let admin = gw.client(&admin());
    let caller = gw.client(&ns("orders"));
    let call = || {
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[],
            "x",
        )
    };
    assert_eq!(send(&caller, call()).await.status, 404);
    let created = send(
        &admin,
        request(
            &gw,
            Method::POST,
            PATH,
            Some(json!({"spec": spec("payments", &["orders"])})),
        ),
    )
    .await;
    let id = created.json()["endpoint"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(send(&caller, call()).await.status, 200);
    let revoke = json!({"version": 1, "spec": spec("payments", &["shipping"])});
    assert_eq!(
        send(
            &admin,
            request(&gw, Method::PUT, &format!("{PATH}/{id}"), Some(revoke))
        )
        .await
        .status,
        200
    );
    assert_eq!(send(&caller, call()).await.status, 403);
    assert_eq!(
        send(
            &admin,
            request(&gw, Method::DELETE, &format!("{PATH}/{id}?version=2"), None)
        )
        .await
        .status,
        200
    );
    assert_eq!(send(&caller, call()).await.status, 404);
}

#[tokio::test]
async fn registry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    let mut gw = TestGateway::start_in(pki.clone(), dir.path(), |_| {}).await;
    let admin_client = gw.client(&admin());
    for name in ["one", "two", "three"] {
        let reply = send(
            &admin_client,
            request(
                &gw,
                Method::POST,
                PATH,
                Some(json!({"spec": spec(name, &["orders"])})),
            ),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    gw.stop().await;
    drop(gw);
    let gw = TestGateway::start_in(pki, dir.path(), |_| {}).await;
    let listed = send(&gw.client(&admin()), request(&gw, Method::GET, PATH, None)).await;
    let mut names: Vec<String> = listed.json()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spec"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["one", "three", "two"]);
}

#[tokio::test]
async fn specs_of_the_wrong_shape_or_with_secrets_in_the_url_get_400_naming_the_rule() {
    let gw = TestGateway::start().await;
    let admin = gw.client(&admin());
    let create = |spec: Value| request(&gw, Method::POST, PATH, Some(json!({"spec": spec})));
    let either =
        r#"give exactly one of {"worker": {"namespace", "taskQueue"}} or {"external": {"url"}}"#;
    let cases = [
        (
            json!({"name": "ok", "target": {}}),
            format!("invalid spec.target {{}}: {either}"),
        ),
        (
            json!({"name": "ok", "target": {
                "worker": {"namespace": "b", "taskQueue": "q"},
                "external": {"url": "https://h"}}}),
            format!(
                r#"invalid spec.target {{"external":{{"url":"https://h"}},"worker":{{"namespace":"b","taskQueue":"q"}}}}: {either}"#
            ),
        ),
        (
            json!({"name": "ok"}),
            format!(r#"invalid spec: missing "target": {either}"#),
        ),
        (
            json!({"name": "ok", "target": {"worker": {"namespace": "b", "taskQueue": "q"}},
                   "allowedCallerNamespace": ["orders"]}),
            "invalid request body: unknown field `allowedCallerNamespace`, expected one of `name`, `description`, `target`, `allowedCallerNamespaces`".to_owned(),
        ),
        (
            json!({"name": "ok", "target": {"external": {"url": "https://user:s3cret@h.example/x"}}}),
            "external target url is invalid: must not carry credentials (user:password@); the gateway authenticates to targets with its client certificate".to_owned(),
        ),
        (
            json!({"name": "ok", "target": {"external": {"url": "https://h.example/x?y=1"}}}),
            r#"external target url "https://h.example/x?y=1" is invalid: must not have a query (?...): operations are appended to its path"#.to_owned(),
        ),
        (
            json!({"name": "ok", "target": {"external": {"url": "https://h.example/x#top"}}}),
            r#"external target url "https://h.example/x#top" is invalid: must not have a fragment (#...)"#.to_owned(),
        ),
        (
            json!({"name": "ok", "target": {"external": {"url": "http://h.example:8080"}}}),
            r#"external target url "http://h.example:8080" is invalid: plain http is allowed only to loopback hosts unless --plain-http-upstreams always ([upstream] plain_http = "always")"#.to_owned(),
        ),
    ];
    for (spec, message) in cases {
        let reply = send(&admin, create(spec.clone())).await;
        let got = reply.message();
        // serde appends the position: the rule comes first.
        assert!(
            reply.status == 400 && got.starts_with(&message),
            "{spec}: {} {got}",
            reply.status
        );
        assert!(!got.contains("s3cret"), "{got}");
    }
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains("nexus_gateway_registry_endpoints 0"),
        "{metrics}"
    );
    // Plain http to loopback stays allowed by default, and anywhere with "always".
    let local = json!({"name": "local", "target": {"external": {"url": "http://127.0.0.1:9"}}});
    assert_eq!(send(&admin, create(local)).await.status, 200);
    let gw = TestGateway::start_with(|c| {
        c.upstream.plain_http = nexus_gateway::external::PlainHttp::Always;
    })
    .await;
    let remote =
        json!({"name": "remote", "target": {"external": {"url": "http://h.example:8080"}}});
    let reply = send(
        &gw.client(&nexus_e2e::admin()),
        request(&gw, Method::POST, PATH, Some(json!({"spec": remote}))),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.message());
}
