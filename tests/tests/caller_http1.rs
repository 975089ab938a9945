//! The data port's HTTP/1.1 as a caller sees it on the wire, over mTLS: requests served by
//! hand (pipelined, cut anywhere, closed, late) and the hand-over to hyper of whatever the
//! hand-written server does not take, on the same connection.

use std::time::Duration;

use nexus_e2e::*;

const ECHO: &str = "/nexus/endpoints/quotes/services/svc/echo";
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_each_with_its_length_and_date() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let both = raw_post(ECHO, "\"one\"", "") + &raw_post(ECHO, "\"two\"", "");
    caller.write(both.as_bytes()).await;
    for expected in ["\"one\"", "\"two\""] {
        let answer = caller.answer().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, expected.as_bytes());
        assert_eq!(
            answer.header("content-length"),
            Some(&*expected.len().to_string())
        );
        let date = answer.header("date").expect("a Date header");
        assert!(httpdate_like(date), "{date}");
        assert_eq!(answer.header("connection"), None, "kept alive");
    }
}

/// `Wed, 02 Dec 2026 11:16:13 GMT`.
fn httpdate_like(text: &str) -> bool {
    text.len() == 29 && text.ends_with(" GMT") && text.as_bytes()[3] == b','
}

#[tokio::test]
async fn a_request_cut_anywhere_is_read_whole() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let request = raw_post(ECHO, "\"cut into pieces\"", "x-trace: abc\r\n");
    let bytes = request.as_bytes();
    // Inside the request line, inside a header name, between head and body, inside the body.
    let cuts = [
        7,
        60,
        request.find("\r\n\r\n").unwrap() + 4,
        bytes.len() - 5,
    ];
    let mut from = 0;
    for cut in cuts {
        caller.write(&bytes[from..cut]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        from = cut;
    }
    caller.write(&bytes[from..]).await;
    let answer = caller.answer().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"\"cut into pieces\"");
}

#[tokio::test]
async fn what_the_hand_written_server_does_not_take_hyper_serves_on_the_same_connection() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"by hand\"", "").as_bytes())
        .await;
    let first = caller.answer().await;
    assert_eq!((first.status, &first.body[..]), (200, &b"\"by hand\""[..]));

    // A chunked body: hyper's from here on, starting with this request's bytes.
    let chunked = format!(
        "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n4\r\n\"chu\r\n5\r\nnked\"\r\n0\r\n\r\n"
    );
    caller.write(chunked.as_bytes()).await;
    let second = caller.answer().await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.body, b"\"chunked\"");

    caller
        .write(raw_post(ECHO, "\"after\"", "").as_bytes())
        .await;
    let third = caller.answer().await;
    assert_eq!((third.status, &third.body[..]), (200, &b"\"after\""[..]));

    // A malformed request line now gets hyper's own 400, and the connection ends.
    caller.write(b"GET /\x01 HTTP/1.1\r\n\r\n").await;
    let fourth = caller.answer().await;
    assert_eq!(fourth.status, 400, "{fourth:?}");
}

#[tokio::test]
async fn a_malformed_request_after_one_served_by_hand_gets_hyper_s_answer() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"fine\"", "").as_bytes())
        .await;
    assert_eq!(caller.answer().await.status, 200);
    // Two different lengths: a smuggling attempt, refused.
    let request = format!(
        "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\ncontent-length: 40\r\n\r\n{{}}"
    );
    caller.write(request.as_bytes()).await;
    let answer = caller.answer().await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        caller.closed().await,
        "the connection ends after a framing error"
    );
}

#[tokio::test]
async fn bodies_either_side_of_the_by_hand_limit_are_echoed_whole() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    // Taken by hand up to 64 KiB; one byte more and the body streams through hyper.
    for size in [64 * 1024, 64 * 1024 + 1] {
        let body = format!("\"{}\"", "x".repeat(size - 2));
        caller.write(raw_post(ECHO, &body, "").as_bytes()).await;
        let answer = caller.answer().await;
        assert_eq!(answer.status, 200, "{size}: {}", answer.head);
        assert_eq!(answer.body.len(), size);
        assert_eq!(answer.body, body.as_bytes());
    }
}

#[tokio::test]
async fn connection_close_is_answered_then_the_connection_ends() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"last\"", "connection: close\r\n").as_bytes())
        .await;
    let answer = caller.answer().await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"\"last\""[..]));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(caller.closed().await, "closed after the answer");
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_the_connection_ends() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let head = format!("POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 20\r\n\r\n");
    caller.write(head.as_bytes()).await;
    caller.write(b"\"only part").await;
    let answer = caller.answer().await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    let failure: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("request body not received within 700ms"),
        "{message}"
    );
    assert!(caller.closed().await, "closed after the 408");
}

#[tokio::test]
async fn an_idle_connection_or_a_head_that_stops_coming_is_closed_without_an_answer() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut idle = H1Caller::connect(&gw).await;
    assert!(idle.closed().await, "idle past the header read timeout");

    let mut partial = H1Caller::connect(&gw).await;
    partial
        .write(format!("POST {ECHO} HTTP/1.1\r\nhost: loc").as_bytes())
        .await;
    assert!(partial.closed().await, "a head cut short past the timeout");

    // Between requests too: the timeout starts again after each answer.
    let mut served = H1Caller::connect(&gw).await;
    served.write(raw_post(ECHO, "\"x\"", "").as_bytes()).await;
    assert_eq!(served.answer().await.status, 200);
    assert!(served.closed().await, "idle after an answer");
}

#[tokio::test]
async fn an_http_1_0_request_is_served() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let request = format!(
        "POST {ECHO} HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n\"10\""
    );
    caller.write(request.as_bytes()).await;
    let answer = caller.answer().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"\"10\"");
}
