//! kill -9 of a replica holding a pending completion: a survivor on the same PostgreSQL store
//! delivers it once the dead replica's lease runs out. Real processes, as an operator runs them.
//! Needs a PostgreSQL server: `bash .ci/postgres` starts one.

mod support;

use std::time::Duration;

use bytes::Bytes;
use nexus_e2e::*;
use support::*;

const BOUND: Duration = Duration::from_secs(20);

/// A client that presents no certificate, trusting the CA in `dir/certs`.
fn anonymous(dir: &std::path::Path) -> nexus_gateway::client::HttpClient {
    let ca = nexus_certs::load_certs(&dir.join("certs/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(nexus_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

#[tokio::test]
async fn after_kill_9_a_survivor_delivers_the_pending_completion() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("replica.toml"),
        format!(
            "[store]\nurl = \"{}\"\nlease = \"1s\"\nresync_interval = \"200ms\"\n\n\
             [callbacks]\nallowed = [{{ host = \"127.0.0.1\", allow_insecure = true }}]\n",
            db.url
        ),
    )
    .unwrap();
    let mut a = serve(dir.path(), &["--config", "replica.toml"]);
    let mut b_args = SERVE.to_vec();
    let data_b = ["--data-dir", "data-b"];
    let at = b_args.iter().position(|a| *a == "--data-dir").unwrap();
    b_args.splice(at..at + 2, data_b);
    b_args.extend_from_slice(&["--config", "replica.toml"]);
    let mut b = Proc::spawn(&b_args, dir.path());
    b.wait_for("serving");

    let (handler, _stop) = serve_reference_handler().await;
    let admin_client = client_for(dir.path(), &admin());
    let create = post(
        format!("https://localhost:{}/api/v1/nexus/endpoints", a.port)
            .parse()
            .unwrap(),
        &[("content-type", "application/json")],
        serde_json::json!({"spec": {"name": "payments",
            "target": {"external": {"url": format!("http://{handler}")}},
            "allowedCallerNamespaces": ["orders"]}})
        .to_string(),
    );
    assert_eq!(send(&admin_client, create).await.status, 200);

    // The caller's receiver is down while A holds the completion.
    let mut receiver = Receiver::start(503).await;
    let callback = format!("http://127.0.0.1:{}/cb", receiver.addr.port());
    let start = post(
        format!(
            "https://localhost:{}/nexus/endpoints/payments/services/svc/headers?callback={}",
            a.port,
            percent_encoding::utf8_percent_encode(&callback, percent_encoding::NON_ALPHANUMERIC)
        )
        .parse()
        .unwrap(),
        &[],
        "",
    );
    let reply = send(&client_for(dir.path(), &ns("orders")), start).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
    let sealed = sealed_callback_seen_by(&reply);
    let completion = post(
        sealed.parse().unwrap(),
        &[("nexus-operation-state", "succeeded")],
        "paid",
    );
    assert_eq!(send(&anonymous(dir.path()), completion).await.status, 200);
    receiver.next(BOUND).await.expect("A tried to deliver");

    a.proc.signal("KILL");
    a.proc.wait_exit();
    receiver.set_status(200);
    let delivered = loop {
        let got = receiver.next(BOUND).await.expect("the survivor delivers");
        if got.body == Bytes::from_static(b"paid") {
            break got;
        }
    };
    assert_eq!(delivered.path, "/cb");
    b.wait_for("taking over a completion");
}
