//! The proxy's HTTP/1.1 exchanges with external handlers, against a handler scripted byte by
//! byte: every way RFC 9112 frames an answer reaches the caller whole, the connection is kept
//! only when the answer allows it, a malformed answer is a clear failure, and what the handler
//! receives is one well-framed request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_certs::TlsMaterial;
use nexus_e2e::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What the handler writes for one request: pieces written apart (so the gateway reads the
/// answer in parts), and whether it then closes the connection.
struct Answer {
    pieces: Vec<String>,
    close: bool,
}

fn answer(pieces: &[&str]) -> Answer {
    Answer {
        pieces: pieces.iter().map(|p| p.to_string()).collect(),
        close: false,
    }
}

/// A plain-HTTP handler (or HTTPS, HTTP/1.1 only, with [`Scripted::start_tls`]) answering
/// the n-th request it reads with `script(n)`; it counts its connections and keeps every
/// request as received.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: CancellationToken,
}

impl Scripted {
    async fn start(script: fn(usize) -> Answer) -> Scripted {
        Self::serve(script, None).await
    }

    /// Over TLS with `material`'s certificate, requiring a client certificate of its CA.
    async fn start_tls(script: fn(usize) -> Answer, material: &TlsMaterial) -> Scripted {
        let mut config = nexus_certs::server_config(material).expect("upstream TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::serve(
            script,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(
        script: fn(usize) -> Answer,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler = Scripted {
            addr: listener.local_addr().unwrap(),
            connections: Default::default(),
            requests: Default::default(),
            stop: CancellationToken::new(),
        };
        let requests = handler.requests.clone();
        let (stop, connections) = (handler.stop.clone(), handler.connections.clone());
        accept_each(listener, stop, connections, move |tcp| {
            let (requests, tls) = (requests.clone(), tls.clone());
            async move {
                match tls {
                    None => converse(tcp, script, requests).await,
                    Some(tls) => {
                        let handshake = tokio::time::timeout(REQUEST_BOUND, tls.accept(tcp));
                        if let Ok(Ok(tls)) = handshake.await {
                            converse(tls, script, requests).await;
                        }
                    }
                }
            }
        });
        handler
    }

    fn request(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()[n]).into_owned()
    }
}

/// One connection of a [`Scripted`] handler.
async fn converse(
    mut tcp: impl AsyncRead + AsyncWrite + Unpin,
    script: fn(usize) -> Answer,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        while !request_is_whole(&seen) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let n = {
            let mut all = requests.lock().unwrap();
            all.push(std::mem::take(&mut seen));
            all.len() - 1
        };
        let answer = script(n);
        for piece in &answer.pieces {
            if tcp.write_all(piece.as_bytes()).await.is_err() || tcp.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if answer.close {
            return;
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn call(gw: &TestGateway, endpoint: &str, body: &str) -> Reply {
    let caller = gw.client(&ns("orders"));
    let uri = gw.uri(&format!("/nexus/endpoints/{endpoint}/services/svc/op"));
    send(
        &caller,
        post(uri, &[("content-type", "text/plain")], body.to_owned()),
    )
    .await
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn answers_in_every_framing_reach_the_caller_whole() {
    let gw = TestGateway::start().await;
    let handler = Scripted::start(|n| match n {
        // Chunked, with an extension and a trailer, cut mid-chunk and mid-size.
        0 => answer(&[
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhel",
            "lo\r\n",
            "1",
            "\r\n \r\n6\r\nnexus!\r\n0\r\nx-trailer: t\r\n\r\n",
        ]),
        // An interim answer first, and a head cut in two.
        1 => answer(&[
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Cre",
            "ated\r\ncontent-length: 7\r\n\r\ncreated",
        ]),
        2 => answer(&["HTTP/1.1 204 No Content\r\nx-n: 2\r\n\r\n"]),
        // No length: the body runs to the close, and the connection is not kept.
        _ => Answer {
            close: true,
            ..answer(&["HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ", "the close"])
        },
    })
    .await;
    gw.external_endpoint("scripted", &format!("http://{}", handler.addr), &["orders"]);
    let replies = [
        call(&gw, "scripted", "a").await,
        call(&gw, "scripted", "b").await,
        call(&gw, "scripted", "c").await,
    ];
    let seen: Vec<_> = replies
        .iter()
        .map(|r| (r.status.as_u16(), text(r)))
        .collect();
    assert_eq!(
        seen,
        [
            (200, "hello nexus!".to_owned()),
            (201, "created".to_owned()),
            (204, String::new())
        ]
    );
    assert_eq!(replies[2].headers["x-n"], "2");
    assert_eq!(
        handler.connections.load(SeqCst),
        1,
        "three calls on one kept connection"
    );
    let last = call(&gw, "scripted", "d").await;
    assert_eq!(
        (last.status.as_u16(), text(&last)),
        (200, "until the close".to_owned())
    );
    let again = call(&gw, "scripted", "e").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        handler.connections.load(SeqCst),
        2,
        "a body delimited by the close takes its connection with it"
    );
}

#[tokio::test]
async fn the_handler_receives_one_well_framed_request() {
    let gw = TestGateway::start().await;
    let handler =
        Scripted::start(|_| answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])).await;
    gw.external_endpoint("scripted", &format!("http://{}", handler.addr), &["orders"]);
    assert_eq!(call(&gw, "scripted", "{\"hello\":1}").await.status, 200);
    let request = handler.request(0);
    let (head, body) = request.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("POST /svc/op HTTP/1.1"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (name, value) = l.split_once(':').expect("name: value");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let one = |name: &str| {
        let values: Vec<_> = headers.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(values.len(), 1, "{name} in {head}");
        values[0].1.clone()
    };
    assert_eq!(one("host"), handler.addr.to_string());
    assert_eq!(one("content-length"), "11");
    assert_eq!(one("content-type"), "text/plain");
    assert!(
        !headers.iter().any(|(n, _)| n == "transfer-encoding"),
        "{head}"
    );
    assert_eq!(body, "{\"hello\":1}");
}

#[tokio::test]
async fn a_body_beyond_the_hand_written_limit_is_relayed_whole() {
    let gw = TestGateway::start().await;
    let handler = Scripted::start(|n| match n {
        0 => answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
        // A coding the caller would not be told of: refused on hyper's path too.
        _ => answer(&[
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]),
    })
    .await;
    gw.external_endpoint("scripted", &format!("http://{}", handler.addr), &["orders"]);
    let big = "x".repeat(100 * 1024);
    assert_eq!(call(&gw, "scripted", &big).await.status, 200);
    let request = handler.request(0);
    let (_, body) = request.split_once("\r\n\r\n").expect("a head");
    assert_eq!(body.len(), big.len());
    let coded = call(&gw, "scripted", &big).await;
    assert_eq!(coded.status, 503);
    assert!(
        text(&coded).contains("a transfer coding other than chunked"),
        "{}",
        text(&coded)
    );
}

#[tokio::test]
async fn a_malformed_answer_is_a_clear_failure_and_its_connection_is_dropped() {
    let gw = TestGateway::start().await;
    let handler = Scripted::start(|n| match n {
        0 => answer(&["SSH-2.0-OpenSSH_9.2\r\n\r\n"]),
        1 => answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"]),
        2 => answer(&["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"]),
        _ => answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    })
    .await;
    gw.external_endpoint("scripted", &format!("http://{}", handler.addr), &["orders"]);
    for (n, why) in [
        (0, "not an HTTP/1.x answer"),
        (1, "conflicting Content-Length values"),
    ] {
        let reply = call(&gw, "scripted", "x").await;
        assert_eq!(reply.status, 503, "answer {n}: {}", text(&reply));
        let failure = text(&reply);
        assert!(
            failure.contains("unreachable") && failure.contains(why),
            "answer {n}: {failure}"
        );
    }
    // A broken chunked body surfaces after the head: the caller's answer is cut off.
    let caller = gw.client(&ns("orders"));
    let uri = gw.uri("/nexus/endpoints/scripted/services/svc/op");
    let broken = try_send(&caller, post(uri, &[], "x")).await;
    assert!(broken.is_err(), "{:?}", broken.map(|r| r.status));
    // None of the three connections is reused.
    let fine = call(&gw, "scripted", "x").await;
    assert_eq!((fine.status.as_u16(), text(&fine)), (200, "ok".to_owned()));
    assert_eq!(handler.connections.load(SeqCst), 4);
}

/// An answer followed by one nobody asked for, in the same TLS record: the TLS layer holds
/// the second after the first has been read, where the socket shows nothing. The connection
/// must not carry the next request, whose answer would otherwise be the one already there.
#[tokio::test]
async fn an_answer_nobody_asked_for_is_never_taken_for_the_next_one() {
    let gw = TestGateway::start().await;
    let handler = Scripted::start_tls(
        |n| match n {
            0 => {
                // Head and body fill exactly one read of the gateway's (8 KiB).
                let head = |len: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                let len = 8192 - head(8000).len();
                let first = format!("{}{}", head(len), "x".repeat(len));
                assert_eq!(first.len(), 8192);
                let unasked = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfake!";
                answer(&[&format!("{first}{unasked}")])
            }
            _ => answer(&["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nreal!"]),
        },
        &gw.pki.server(),
    )
    .await;
    let url = format!("https://localhost:{}", handler.addr.port());
    gw.external_endpoint("scripted", &url, &["orders"]);
    let first = call(&gw, "scripted", "a").await;
    assert_eq!(first.status, 200);
    assert!(first.body.len() > 8000 && first.body.iter().all(|b| *b == b'x'));
    let second = call(&gw, "scripted", "b").await;
    assert_eq!(
        (second.status.as_u16(), text(&second)),
        (200, "real!".to_owned())
    );
    assert_eq!(
        handler.connections.load(SeqCst),
        2,
        "the connection holding the unasked answer was dropped"
    );
    assert!(handler.request(1).ends_with("\r\n\r\nb"));
}
