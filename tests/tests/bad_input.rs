//! Every bad input gets a clear Nexus failure (or a refused handshake) and breaks nothing else.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use nexus_certs::{Ca, Identity};
use nexus_e2e::*;
use nexus_gateway::client::{HttpVersions, http_client};
use rustls::AlertDescription;

fn op(gw: &TestGateway, rest: &str) -> http::Uri {
    gw.uri(&format!("/nexus/endpoints/payments/services/{rest}"))
}

async fn gateway() -> TestGateway {
    let gw = TestGateway::start().await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    gw
}

#[tokio::test]
async fn with_certificates_required_no_certificate_fails_the_handshake() {
    let gw = TestGateway::start_with(|c| c.client_auth = nexus_certs::ClientAuth::Required).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let alert = handshake_alert(&anonymous_client(&gw), post(op(&gw, "svc/echo"), &[], "")).await;
    // TLS 1.3: the gateway asks for a certificate and refuses the handshake without one.
    assert_eq!(alert, AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() {
    let gw = gateway().await;
    // A CA the gateway has never heard of; and one posing under the gateway CA's own name,
    // whose signature does not verify with the gateway CA's key.
    let strangers = [
        (
            Ca::generate("another CA").unwrap(),
            AlertDescription::UnknownCA,
        ),
        (Pki::new().ca, AlertDescription::DecryptError),
    ];
    for (ca, expected) in strangers {
        let stranger = Pki { ca };
        let mut material = stranger.client_material(&ns("orders"));
        material.ca = vec![gw.pki.ca.cert_der()];
        let client = http_client(&material, HttpVersions::Http1Only).unwrap();
        let alert = handshake_alert(&client, post(op(&gw, "svc/echo"), &[], "")).await;
        assert_eq!(alert, expected);
    }
}

#[tokio::test]
async fn certificate_without_a_recognised_identity_gets_401() {
    let gw = gateway().await;
    for (uri, expect) in [
        ("spiffe://other-domain/ns/orders", "trust domain"),
        (
            "spiffe://nexus-gateway/workload/orders",
            "spiffe://nexus-gateway/ns/",
        ),
    ] {
        let client = http_client(&gw.pki.uri_material(uri), HttpVersions::Any).unwrap();
        let reply = send(&client, post(op(&gw, "svc/echo"), &[], "")).await;
        assert_eq!(reply.status, 401, "{uri}");
        assert_eq!(reply.error_type(), "UNAUTHENTICATED");
        assert!(
            reply.message().contains(expect),
            "{uri}: {}",
            reply.message()
        );
    }
}

#[tokio::test]
async fn a_certificate_with_two_uri_sans_gets_401_even_if_one_is_allowed() {
    let gw = gateway().await;
    let material = gw.pki.uris_material(&[
        "spiffe://nexus-gateway/ns/orders",
        "spiffe://nexus-gateway/admin/root",
    ]);
    let client = http_client(&material, HttpVersions::Any).unwrap();
    let reply = send(&client, post(op(&gw, "svc/echo"), &[], "")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.error_type(), reply.message()),
        (
            401,
            "UNAUTHENTICATED".to_owned(),
            "client certificate not accepted: client certificate has 2 URI SANs \
             (spiffe://nexus-gateway/ns/orders, spiffe://nexus-gateway/admin/root); \
             a SPIFFE identity certificate has exactly one"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn caller_not_allowed_gets_403_and_admin_cannot_call() {
    let gw = gateway().await;
    let reply = send(
        &gw.client(&ns("intruder")),
        post(op(&gw, "svc/echo"), &[], ""),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.message(),
        r#"namespace "intruder" is not allowed to call endpoint "payments""#
    );
    let reply = send(&gw.client(&admin()), post(op(&gw, "svc/echo"), &[], "")).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .message()
            .contains("a namespace or cluster certificate is required"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn unknown_endpoint_gets_404() {
    let gw = gateway().await;
    let reply = send(
        &gw.client(&ns("orders")),
        post(gw.uri("/nexus/endpoints/nope/services/svc/echo"), &[], ""),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.message(), r#"endpoint "nope" not found"#);
}

#[tokio::test]
async fn malformed_paths_methods_and_timeouts_get_400_or_404() {
    let gw = gateway().await;
    let caller = gw.client(&ns("orders"));
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case; 6] = [
        ("svc%zz/echo", &[], 400, "malformed percent-encoding"),
        ("svc/%C3%28", &[], 400, "not UTF-8"),
        ("svc", &[], 404, "no route"),
        ("svc/echo/x/y/z", &[], 404, "no route"),
        (
            "svc/echo",
            &[("request-timeout", "10 seconds")],
            400,
            "invalid Request-Timeout header",
        ),
        (
            "svc/echo",
            &[("request-timeout", "5h")],
            400,
            "invalid Request-Timeout header",
        ),
    ];
    for (rest, headers, status, message) in cases {
        let reply = send(&caller, post(op(&gw, rest), headers, "")).await;
        assert_eq!(reply.status, status, "{rest}");
        assert!(
            reply.message().contains(message),
            "{rest}: {}",
            reply.message()
        );
    }
    let get = Request::get(op(&gw, "svc/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&caller, get).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.message().contains("invalid request method GET"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn body_over_the_cap_is_rejected_and_the_gateway_keeps_serving() {
    let gw = gateway().await;
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    let big = vec![b'x'; 2 * 1024 * 1024 + 1];
    let reply = send(&caller, post(op(&gw, "svc/echo"), &[], big)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.message(),
        "request body exceeds the limit of 2097152 bytes"
    );
    let ok = send(&caller, post(op(&gw, "svc/echo"), &[], "still fine")).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn no_worker_before_the_deadline_gets_retryable_520() {
    let gw = gateway().await;
    let reply = send(
        &gw.client(&ns("orders")),
        post(op(&gw, "svc/echo"), &[("request-timeout", "3s")], ""),
    )
    .await;
    assert_eq!(reply.status, 520);
    assert_eq!(reply.error_type(), "UPSTREAM_TIMEOUT");
    assert!(
        reply
            .message()
            .contains("no worker of namespace \"billing\""),
        "{}",
        reply.message()
    );
    assert_eq!(reply.json()["details"]["retryableOverride"], true);
}

#[tokio::test]
async fn full_task_queue_backlog_gets_429_with_retry_after() {
    let gw = TestGateway::start_with(|c| c.matching.max_waiting_tasks = 1).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let caller = gw.client(&ns("orders"));
    let waiting = tokio::spawn({
        let caller = caller.clone();
        let uri = op(&gw, "svc/echo");
        async move { send(&caller, post(uri, &[("request-timeout", "4s")], "")).await }
    });
    let gw_ref = &gw;
    eventually("first task queued", Duration::from_secs(5), async || {
        gw_ref.registry.len() == 1
            && metrics(gw_ref).await.contains(
                "nexus_gateway_task_queue_backlog{namespace=\"billing\",task_queue=\"charges\"} 1",
            )
    })
    .await;
    let reply = send(&caller, post(op(&gw, "svc/echo"), &[], "")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.error_type(), "RESOURCE_EXHAUSTED");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(waiting.await.unwrap().status, 520);
}

async fn metrics(gw: &TestGateway) -> String {
    gw.ops_get("/metrics").await.1
}

#[tokio::test]
async fn workers_are_confined_to_their_namespace() {
    let gw = gateway().await;
    let poll_uri = gw.uri("/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll");
    // Polling another namespace's queue.
    let reply = send(&gw.client(&ns("intruder")), post(poll_uri.clone(), &[], "")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.message(),
        r#"namespace "intruder" may not poll task queues of namespace "billing""#
    );

    // Answering another namespace's task: the real worker polls by hand to learn the token.
    let caller = gw.client(&ns("orders"));
    let call = tokio::spawn({
        let uri = op(&gw, "svc/echo");
        async move { send(&caller, post(uri, &[("request-timeout", "10s")], "hi")).await }
    });
    let owner = gw.client(&ns("billing"));
    let task = send(&owner, post(poll_uri, &[("request-timeout", "5s")], "")).await;
    assert_eq!(task.status, 200);
    assert_eq!(task.body, "hi");
    assert_eq!(task.header("nexus-task-path"), Some("/svc/echo"));
    assert_eq!(task.header("nexus-task-kind"), Some("start"));
    assert_eq!(task.header("nexus-caller-namespace"), Some("orders"));
    let token = task.header("nexus-task-token").unwrap().to_owned();
    let respond = gw.uri(&format!("/api/v1/nexus-tasks/{token}/response"));
    let forged = send(
        &gw.client(&ns("intruder")),
        post(respond.clone(), &[("nexus-task-status", "200")], "forged"),
    )
    .await;
    assert_eq!(
        (forged.status.as_u16(), forged.message()),
        (
            403,
            r#"namespace "intruder" may not answer this task: it belongs to another namespace"#
                .to_owned()
        )
    );
    let bad_status = send(
        &owner,
        post(respond.clone(), &[("nexus-task-status", "99")], ""),
    )
    .await;
    assert_eq!(bad_status.status, 400);
    assert!(bad_status.message().contains("invalid Nexus-Task-Status"));
    let missing_status = send(&owner, post(respond.clone(), &[], "")).await;
    assert_eq!(missing_status.status, 400);
    let real = send(
        &owner,
        post(respond.clone(), &[("nexus-task-status", "200")], "real"),
    )
    .await;
    assert_eq!(real.status, 200);
    let answered = call.await.unwrap();
    assert_eq!(
        (answered.status.as_u16(), answered.body),
        (200, Bytes::from("real"))
    );
    // The same token again is late.
    let late = send(
        &owner,
        post(respond, &[("nexus-task-status", "200")], "again"),
    )
    .await;
    assert_eq!(late.status, 404);
    assert!(
        late.message()
            .contains("unknown or its caller stopped waiting")
    );
}

#[tokio::test]
async fn unknown_task_token_gets_404_and_unknown_route_404() {
    let gw = gateway().await;
    let owner = gw.client(&ns("billing"));
    let reply = send(
        &owner,
        post(
            gw.uri("/api/v1/nexus-tasks/deadbeef/response"),
            &[("nexus-task-status", "200")],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 404);
    let reply = send(&owner, post(gw.uri("/somewhere/else"), &[], "")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_type(), "NOT_FOUND");
}

/// How a raw exchange ended: everything the gateway sent, then how the connection closed.
struct RawAnswer {
    bytes: Vec<u8>,
    /// `None`: a clean end of stream; else the error the read ended with.
    end: Option<std::io::ErrorKind>,
}

impl RawAnswer {
    fn status_line(&self) -> String {
        String::from_utf8_lossy(&self.bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Writes raw HTTP/1.1 over mTLS and reads the answer until the status line is in, or (with
/// `to_close`) until the gateway closes the connection.
async fn raw_exchange(gw: &TestGateway, request: String, to_close: bool) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config =
        nexus_certs::client_config(&gw.pki.client_material(&ns("orders")), &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.data_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = RawAnswer {
        bytes: Vec::new(),
        end: None,
    };
    let mut buf = [0u8; 4096];
    let read = async {
        while to_close || !answer.bytes.windows(2).any(|w| w == b"\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.bytes.extend_from_slice(&buf[..n]),
                Err(e) => {
                    answer.end = Some(e.kind());
                    break;
                }
            }
        }
    };
    tokio::time::timeout(REQUEST_BOUND, read)
        .await
        .expect("answer in time");
    answer
}

/// Writes raw HTTP/1.1 over mTLS and returns the status line of the answer.
async fn raw_status_line(gw: &TestGateway, request: String) -> String {
    raw_exchange(gw, request, false).await.status_line()
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let gw = gateway().await;
    let path = "/nexus/endpoints/payments/services/svc/echo";
    let huge = "x".repeat(20 * 1024);
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-huge: {huge}\r\ncontent-length: 0\r\n\r\n"
    );
    assert!(
        raw_status_line(&gw, request)
            .await
            .starts_with("HTTP/1.1 431")
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request =
        format!("POST {path} HTTP/1.1\r\nhost: localhost\r\n{many}content-length: 0\r\n\r\n");
    assert!(
        raw_status_line(&gw, request)
            .await
            .starts_with("HTTP/1.1 431")
    );
    // The gateway keeps serving.
    let reply = send(
        &gw.client(&ns("orders")),
        post(op(&gw, "svc/echo"), &[("request-timeout", "2500ms")], ""),
    )
    .await;
    assert_eq!(reply.status, 520);
}

#[tokio::test]
async fn identity_from_metering_cannot_poll() {
    let gw = gateway().await;
    let metering = gw.client(&Identity::Metering("billing".into()));
    let reply = send(
        &metering,
        post(
            gw.uri("/api/v1/namespaces/billing/task-queues/charges/nexus-tasks/poll"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_header_and_body_timeouts() {
    let gw = TestGateway::start_with(|c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    // Headers never finished: no request to answer, so no answer; the connection is closed.
    let cut = raw_exchange(
        &gw,
        "POST /nexus/endpoints/payments/services/svc/echo HTTP/1.1\r\nhost: loc".into(),
        true,
    )
    .await;
    // Dropped, without even a TLS close_notify.
    assert_eq!(
        (String::from_utf8_lossy(&cut.bytes).as_ref(), cut.end),
        ("", Some(std::io::ErrorKind::UnexpectedEof))
    );
    // A body that stops arriving: 408 REQUEST_TIMEOUT.
    let line = raw_status_line(
        &gw,
        "POST /nexus/endpoints/payments/services/svc/echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n0123456789".into(),
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 408"), "{line:?}");
    // Others are served meanwhile and after.
    let reply = send(
        &gw.client(&ns("orders")),
        post(op(&gw, "svc/echo"), &[("request-timeout", "2500ms")], ""),
    )
    .await;
    assert_eq!(reply.status, 520);
}

/// A request body fed by hand, so a test can hold the stream open after the answer. When the
/// client drops it, `done` says whether it was read to its end (sent whole) or given up.
struct ChannelBody {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    ended: bool,
    done: Option<tokio::sync::oneshot::Sender<bool>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = self.chunks.poll_recv(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled.map(|chunk| chunk.map(|data| Ok(http_body::Frame::data(data))))
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.ended);
        }
    }
}

/// An HTTP/2 caller refused before it finished sending its body (403 here) gets the answer and
/// may finish sending: the stream is not reset under it (clients such as curl 7.x report such a
/// reset as an error).
#[tokio::test]
async fn early_answers_over_http2_do_not_reset_a_body_still_being_sent() {
    let gw = gateway().await;
    let client =
        http_client::<ChannelBody>(&gw.pki.client_material(&ns("intruders")), HttpVersions::Any)
            .unwrap();
    let (tx, chunks) = tokio::sync::mpsc::channel(1);
    let (done, sent) = tokio::sync::oneshot::channel();
    let body = |chunks, done| ChannelBody {
        chunks,
        ended: false,
        done,
    };
    let request = Request::post(op(&gw, "svc/op"))
        .header("content-length", "10")
        .body(body(chunks, Some(done)))
        .unwrap();
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answer before the body ends")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 403);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    let message = String::from_utf8_lossy(&answer);
    assert!(
        message.contains("not allowed to call endpoint"),
        "{message}"
    );
    // A reset, if the gateway sent one, would have gone out with the end of that answer, ahead
    // of anything it sends on the connection later: once a later request on the same
    // connection is answered, the client has seen it.
    let (_no_more, empty) = tokio::sync::mpsc::channel(1);
    drop(_no_more);
    let later = Request::post(op(&gw, "svc/op"))
        .body(body(empty, None))
        .unwrap();
    let later = tokio::time::timeout(Duration::from_secs(10), client.request(later))
        .await
        .expect("later answer in time")
        .unwrap();
    assert_eq!(later.status(), 403);
    tx.send(Bytes::from_static(b"world"))
        .await
        .expect("the stream still takes the rest of the body");
    drop(tx);
    let whole = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("body finished in time")
        .unwrap();
    assert!(whole, "the client gave up the body: the stream was reset");
}

#[tokio::test]
async fn control_characters_in_names_get_400_and_credentials_are_not_relayed() {
    let gw = TestGateway::start().await;
    let (handler, _stop) = serve_reference_handler().await;
    gw.external_endpoint("payments", &format!("http://{handler}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let reply = send(&caller, post(op(&gw, "svc/ec%00ho"), &[], "")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.message()),
        (
            400,
            r#"operation "ec%00ho" contains a control character"#.to_owned()
        )
    );
    let reply = send(&caller, post(op(&gw, "s%1Bvc/echo"), &[], "")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.message()),
        (
            400,
            r#"service "s%1Bvc" contains a control character"#.to_owned()
        )
    );
    let seen = send(
        &caller,
        post(
            op(&gw, "svc/headers"),
            &[
                ("cookie", "session=secret"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("x-kept", "1"),
            ],
            "",
        ),
    )
    .await;
    let headers = &seen.json()["headers"];
    assert_eq!(headers["x-kept"], "1");
    for dropped in ["cookie", "proxy-authorization", "expect", "authorization"] {
        assert!(headers.get(dropped).is_none(), "{dropped}: {headers}");
    }
}

#[tokio::test]
async fn the_ops_port_cuts_off_a_client_that_never_finishes_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start_with(|c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.ops_addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(REQUEST_BOUND, tcp.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the ops port held a slow client open");
    // Closed without an answer, as the data port does (no request was ever read).
    assert_eq!(String::from_utf8_lossy(&answer), "");
    assert_eq!(gw.ops_get("/healthz").await.0, 200);
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start_with(|c| c.client_auth = nexus_certs::ClientAuth::Required).await;
    let no_cert = handshake_alert(&anonymous_client(&gw), post(op(&gw, "svc/echo"), &[], "")).await;
    assert_eq!(no_cert, AlertDescription::CertificateRequired);
    let stranger = Pki {
        ca: Ca::generate("another CA").unwrap(),
    };
    let mut material = stranger.client_material(&ns("orders"));
    material.ca = vec![gw.pki.ca.cert_der()];
    let untrusted = http_client(&material, HttpVersions::Http1Only).unwrap();
    assert_eq!(
        handshake_alert(&untrusted, post(op(&gw, "svc/echo"), &[], "")).await,
        AlertDescription::UnknownCA
    );
    // Plain HTTP to the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(gw.data_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(REQUEST_BOUND, tcp.read_to_end(&mut rest)).await;
    let expected = [
        r#"nexus_gateway_tls_handshake_failures_total{reason="no_client_certificate"} 1"#,
        r#"nexus_gateway_tls_handshake_failures_total{reason="untrusted_certificate"} 1"#,
        r#"nexus_gateway_tls_handshake_failures_total{reason="protocol"} 1"#,
    ];
    let mut metrics = String::new();
    eventually(
        "refusals are counted",
        Duration::from_secs(10),
        async || {
            metrics = gw.ops_get("/metrics").await.1;
            expected.iter().all(|line| metrics.contains(line))
        },
    )
    .await;
}
