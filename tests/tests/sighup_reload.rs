//! SIGHUP reloads the server certificate of the real binary at once: new connections get the
//! new certificate, and `/metrics` counts the reload.

mod support;

use std::sync::Arc;
use std::time::Duration;

use nexus_certs::CertificateDer;
use nexus_e2e::*;
use support::*;

const BOUND: Duration = Duration::from_secs(20);

/// The certificate the gateway on `port` presents to a new connection.
async fn served_certificate(dir: &std::path::Path, port: u16) -> CertificateDer<'static> {
    let material = nexus_certs::DevPki::open(&dir.join("certs"))
        .unwrap()
        .issue(&ns("orders"), TRUST_DOMAIN)
        .unwrap()
        .load()
        .unwrap();
    let config = nexus_certs::client_config(&material, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(BOUND, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn leaf(path: &std::path::Path) -> CertificateDer<'static> {
    nexus_certs::load_certs(path).unwrap().remove(0)
}

#[tokio::test]
async fn sighup_serves_the_replaced_certificate_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    // The files are checked for changes only hourly: what picks the new one up is SIGHUP.
    std::fs::write(
        dir.path().join("slow-watch.toml"),
        "[tls]\nreload_interval = \"1h\"\n",
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let Served {
        proc: mut gw,
        port,
        ops_port,
    } = tokio::task::spawn_blocking(move || serve(&d, &["--config", "slow-watch.toml"]))
        .await
        .unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    let old = leaf(&certs.join("server.pem"));
    assert_eq!(served_certificate(d, port).await, old);
    let reloads = "nexus_gateway_tls_reloads_total{result=\"ok\"} ";
    let before = metric(&ops_get(ops_port, "/metrics").await.1, reloads).unwrap();

    // A new server certificate from the same CA, with an extra name, moved into place.
    let ca = nexus_certs::Ca::load(&certs.join("ca.pem"), &certs.join("ca-key.pem")).unwrap();
    let names = ["localhost", "127.0.0.1", "rotated.example"].map(String::from);
    ca.issue_server(&names)
        .unwrap()
        .save(&certs.join("new.pem"), &certs.join("new-key.pem"))
        .unwrap();
    std::fs::rename(certs.join("new-key.pem"), certs.join("server-key.pem")).unwrap();
    std::fs::rename(certs.join("new.pem"), certs.join("server.pem")).unwrap();
    let new = leaf(&certs.join("server.pem"));
    assert_ne!(new, old);

    gw.signal("HUP");
    eventually("the reload is counted", BOUND, async || {
        metric(&ops_get(ops_port, "/metrics").await.1, reloads) == Some(before + 1.0)
    })
    .await;
    assert_eq!(
        served_certificate(d, port).await,
        new,
        "a new connection gets the new certificate"
    );
    // Still the same process, still serving.
    let reply = send(
        &client_for(d, &ns("orders")),
        post(
            format!("https://localhost:{port}/nexus/endpoints/none/services/s/o")
                .parse()
                .unwrap(),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(ops_get(ops_port, "/healthz").await.0, 200);
    gw.signal("TERM");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
