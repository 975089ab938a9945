//! Certificate rotation without a restart: new files are picked up, open connections stay up,
//! and a bad file is refused while the old certificate keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use nexus_certs::TlsFiles;
use nexus_e2e::*;
use nexus_gateway::client::{HttpVersions, http_client};

fn write_server_files(pki: &Pki, dir: &Path) -> TlsFiles {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    let issued = pki
        .ca
        .issue_server(&["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    // Write the new files under temporary names first so the gateway never sees a mix.
    std::fs::write(dir.join("tmp-ca"), pki.ca.cert_pem()).unwrap();
    issued
        .save(&dir.join("tmp-cert"), &dir.join("tmp-key"))
        .unwrap();
    std::fs::rename(dir.join("tmp-ca"), &files.ca).unwrap();
    std::fs::rename(dir.join("tmp-key"), &files.key).unwrap();
    std::fs::rename(dir.join("tmp-cert"), &files.cert).unwrap();
    files
}

async fn reloads(gw: &TestGateway, result: &str) -> u64 {
    let text = gw.ops_get("/metrics").await.1;
    let prefix = format!("nexus_gateway_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

fn unknown_endpoint(gw: &TestGateway) -> http::Request<Full<Bytes>> {
    post(gw.uri("/nexus/endpoints/none/services/s/o"), &[], "")
}

#[tokio::test]
async fn certificates_rotate_without_restart_or_dropped_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = Arc::new(Pki::new());
    let files = write_server_files(&old, dir.path());
    let data = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_in(old.clone(), data.path(), |c| {
        c.tls = files.load().unwrap();
        c.tls_files = Some(files.clone());
        c.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    // HTTP/2: one connection, kept open across the rotation.
    let open = http_client(&old.client_material(&ns("orders")), HttpVersions::Any).unwrap();
    assert_eq!(send(&open, unknown_endpoint(&gw)).await.status, 404);

    let new = Pki::new();
    write_server_files(&new, dir.path());
    let gw_ref = &gw;
    eventually("rotation picked up", Duration::from_secs(10), async || {
        reloads(gw_ref, "ok").await >= 1
    })
    .await;

    let fresh_new = http_client(&new.client_material(&ns("orders")), HttpVersions::Any).unwrap();
    assert_eq!(
        send(&fresh_new, unknown_endpoint(&gw)).await.status,
        404,
        "new CA accepted"
    );
    // A certificate of the old CA, from a client that trusts the new server certificate:
    // the gateway itself refuses it. Both CAs have the same name, so the old certificate's
    // issuer is found and its signature fails to verify with the new CA's key.
    let mut old_cert = old.client_material(&ns("orders"));
    old_cert.ca = vec![new.ca.cert_der()];
    let fresh_old = http_client(&old_cert, HttpVersions::Http1Only).unwrap();
    assert_eq!(
        handshake_alert(&fresh_old, unknown_endpoint(&gw)).await,
        rustls::AlertDescription::DecryptError,
        "old CA no longer trusted for new connections"
    );
    assert_eq!(
        send(&open, unknown_endpoint(&gw)).await.status,
        404,
        "the open connection survived"
    );

    // A broken certificate file is refused; the current certificate keeps serving.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    eventually("bad file refused", Duration::from_secs(10), async || {
        reloads(gw_ref, "refused").await >= 1
    })
    .await;
    let another = http_client(&new.client_material(&ns("orders")), HttpVersions::Any).unwrap();
    assert_eq!(send(&another, unknown_endpoint(&gw)).await.status, 404);
}
