//! The data port's hand-written HTTP/1.1 server (`server_h1.rs`) attacked as a hostile caller
//! would, over real mTLS sockets: smuggling and desync attempts, slow callers, framing of
//! relayed answers, callers that go away, graceful shutdown, and the hand-over to hyper.
//!
//! Each case is checked on the hand-written server and, where hyper's behaviour is the
//! reference, on a connection hyper serves (one whose request has a chunked body).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ECHO: &str = "/nexus/endpoints/quotes/services/svc/echo";
/// An operation of the endpoint `scripted`, whose upstream is a [`Scripted`] server.
const SCRIPTED: &str = "/nexus/endpoints/scripted/services/svc/op";
const READ_TIMEOUT: Duration = H1_READ_TIMEOUT;
/// How long a connection may take to be closed when it should be closed "at once".
const PROMPTLY: Duration = Duration::from_secs(3);

/// The same request with a chunked body: not taken by hand, so hyper serves it (and the
/// rest of the connection).
fn post_chunked(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
}

// ---------------------------------------------------------------------------------------
// A scripted upstream: answers each request with fixed bytes, and reports what it sees.

#[derive(Debug, PartialEq)]
enum Seen {
    Request,
    /// The gateway closed the upstream connection.
    Closed,
}

#[derive(Clone)]
enum Step {
    Write(&'static [u8]),
    /// Keep the connection open, say nothing more, and report when the gateway closes it.
    Hold,
    /// Close the connection.
    Close,
}

struct Scripted {
    seen: mpsc::UnboundedReceiver<Seen>,
    _stop: tokio_util::sync::DropGuard,
}

impl Scripted {
    /// Serves `script` to every request; registers it as endpoint `scripted`.
    async fn start(gw: &TestGateway, script: Vec<Step>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let script = Arc::new(script);
        accept_each(
            listener,
            stop.clone(),
            Arc::default(),
            move |mut tcp: TcpStream| {
                let tx = tx.clone();
                let script = script.clone();
                async move {
                    let mut buf = Vec::new();
                    'requests: loop {
                        // One whole request: a head and the body its length or chunks announce.
                        let taken = loop {
                            if let Some(n) = whole_request_len(&buf) {
                                break n;
                            }
                            let mut chunk = [0u8; 8192];
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    let _ = tx.send(Seen::Closed);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        buf.drain(..taken);
                        let _ = tx.send(Seen::Request);
                        for step in script.iter() {
                            match step {
                                Step::Write(bytes) => {
                                    if tcp.write_all(bytes).await.is_err() {
                                        let _ = tx.send(Seen::Closed);
                                        return;
                                    }
                                }
                                Step::Hold => {
                                    let mut chunk = [0u8; 8192];
                                    loop {
                                        match tcp.read(&mut chunk).await {
                                            Ok(0) | Err(_) => {
                                                let _ = tx.send(Seen::Closed);
                                                return;
                                            }
                                            Ok(_) => {}
                                        }
                                    }
                                }
                                Step::Close => break 'requests,
                            }
                        }
                    }
                }
            },
        );
        gw.external_endpoint("scripted", &format!("http://{addr}"), &["orders"]);
        Scripted {
            seen,
            _stop: stop.drop_guard(),
        }
    }

    /// The next thing seen within `bound`, if any.
    async fn next_within(&mut self, bound: Duration) -> Option<Seen> {
        tokio::time::timeout(bound, self.seen.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The length of the whole request at the start of `buf`, if it is all there.
fn whole_request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let end = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// Answers `200` chunked, sends its first chunk, and then says nothing more.
const STALLED_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\n";

// ---------------------------------------------------------------------------------------
// Callers that go away, shutdown, and the h2 preface.

/// A caller that goes away while a relayed answer's body is still streaming ends the answer:
/// the relayed body is dropped, and with it the upstream connection, instead of waiting on a
/// stalled upstream. hyper's server does the same (next test).
#[tokio::test]
async fn a_caller_gone_mid_streamed_answer_releases_the_upstream() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut upstream = Scripted::start(&gw, vec![Step::Write(STALLED_CHUNKED), Step::Hold]).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller.write(raw_post(SCRIPTED, "{}", "").as_bytes()).await;
    assert_eq!(
        upstream.next_within(REQUEST_BOUND).await,
        Some(Seen::Request)
    );
    assert!(
        caller.read_until(b"\r\n\r\n1\r\n[\r\n").await,
        "the answer's head and first chunk are relayed"
    );
    assert!(String::from_utf8_lossy(&caller.buf).starts_with("HTTP/1.1 200"));
    // The caller goes away mid-answer.
    drop(caller);
    assert_eq!(
        upstream.next_within(Duration::from_secs(5)).await,
        Some(Seen::Closed),
        "the gateway should drop the relayed answer (and its upstream connection) once the \
         caller is gone, as hyper's server does"
    );
}

/// The same answer relayed on a connection hyper serves.
#[tokio::test]
async fn a_caller_gone_mid_answer_on_hyper_s_path_releases_the_upstream() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut upstream = Scripted::start(&gw, vec![Step::Write(STALLED_CHUNKED), Step::Hold]).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller.write(post_chunked(SCRIPTED, "{}").as_bytes()).await;
    assert_eq!(
        upstream.next_within(REQUEST_BOUND).await,
        Some(Seen::Request)
    );
    assert!(caller.read_until(b"\r\n\r\n1\r\n[\r\n").await);
    drop(caller);
    assert_eq!(
        upstream.next_within(Duration::from_secs(5)).await,
        Some(Seen::Closed),
        "hyper drops the relayed answer once the caller is gone"
    );
}

/// Stops the gateway in the background; the returned handle ends when it has stopped.
fn stop_in_background(mut gw: TestGateway) -> tokio::task::JoinHandle<TestGateway> {
    tokio::spawn(async move {
        gw.stop().await;
        gw
    })
}

/// At shutdown a kept-alive connection between requests closes at once, even with part of
/// the next head already in: a caller cannot hold it, and the gateway's wait for its
/// connections, until the header read timeout. hyper does the same (next test).
#[tokio::test]
async fn at_shutdown_a_kept_alive_connection_with_a_partial_head_closes_at_once() {
    let (gw, _stop) =
        echo_gateway(|c| c.limits.header_read_timeout = Duration::from_secs(20)).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"by hand\"", "").as_bytes())
        .await;
    assert_eq!(caller.answer().await.status, 200);
    caller
        .write(b"GET /nexus/endpoints/quotes HTTP/1.1\r\nhost: lo")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = stop_in_background(gw);
    let started = Instant::now();
    let ended = caller.ends_within(PROMPTLY).await;
    stopping.abort();
    assert!(
        ended,
        "closed at shutdown within {PROMPTLY:?} as hyper would (still open after {:?})",
        started.elapsed()
    );
}

/// The same bytes on a connection hyper serves.
#[tokio::test]
async fn at_shutdown_hyper_closes_a_kept_alive_connection_with_a_partial_head_at_once() {
    let (gw, _stop) =
        echo_gateway(|c| c.limits.header_read_timeout = Duration::from_secs(20)).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(post_chunked(ECHO, "\"hyper\"").as_bytes())
        .await;
    assert_eq!(caller.answer().await.status, 200);
    caller
        .write(b"GET /nexus/endpoints/quotes HTTP/1.1\r\nhost: lo")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = stop_in_background(gw);
    let ended = caller.ends_within(PROMPTLY).await;
    stopping.abort();
    assert!(ended, "hyper closes it at shutdown");
}

/// Part of the h2 preface after a request served by hand is a head that never completes:
/// cut off at the header read timeout. (hyper-util's protocol detection, which reads the
/// preface's 24 bytes with no timeout, is never asked once a connection is HTTP/1.)
#[tokio::test]
async fn a_partial_h2_preface_after_a_request_is_cut_off_at_the_header_timeout() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"by hand\"", "").as_bytes())
        .await;
    assert_eq!(caller.answer().await.status, 200);
    caller.write(b"PRI * HTTP/2.0\r\n").await;
    let bound = READ_TIMEOUT + PROMPTLY;
    assert!(
        caller.ends_within(bound).await,
        "a head that does not complete is cut off after the header read timeout ({READ_TIMEOUT:?}); \
         still open after {bound:?}"
    );
}

/// The same as a connection's first bytes: the rest of the preface is waited for under the
/// header read timeout, not forever.
#[tokio::test]
async fn a_partial_h2_preface_as_first_bytes_is_cut_off_at_the_header_timeout() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller.write(b"PRI * HTTP/2.0\r\n").await;
    let bound = READ_TIMEOUT + PROMPTLY;
    assert!(
        caller.ends_within(bound).await,
        "cut off after the header read timeout ({READ_TIMEOUT:?}); still open after {bound:?}"
    );
}

/// A connection does not change protocol midway: after a request served by hand, the whole
/// h2 preface is a malformed HTTP/1 request (hyper's error, or the end), never h2.
#[tokio::test]
async fn the_h2_preface_after_a_request_served_by_hand_does_not_switch_to_h2() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(raw_post(ECHO, "\"by hand\"", "").as_bytes())
        .await;
    assert_eq!(caller.answer().await.status, 200);
    // The preface, then an empty SETTINGS frame.
    caller
        .write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    let more = caller.fill_within(PROMPTLY).await;
    let said = caller.buf.clone();
    assert!(
        more != Some(true) || said.starts_with(b"HTTP/1.1 "),
        "after HTTP/1.1 requests the connection stays HTTP/1.1 (an HTTP/1.1 error or the end), \
         got {} bytes starting {:02x?} (an h2 frame of type {})",
        said.len(),
        &said[..said.len().min(12)],
        said.get(3).copied().unwrap_or(0)
    );
}

// ---------------------------------------------------------------------------------------
// Smuggling, slow callers, relayed answers.

/// Sends `request` on a fresh connection after one served by hand, and expects hyper's 400
/// and the end of the connection: nothing of it is taken as a request by hand.
async fn refused_after_one_by_hand(gw: &TestGateway, request: &[u8]) {
    let mut caller = H1Caller::connect(gw).await;
    caller
        .write(raw_post(ECHO, "\"first\"", "").as_bytes())
        .await;
    let first = caller.answer().await;
    assert_eq!((first.status, &first.body[..]), (200, &b"\"first\""[..]));
    // A request that would be answered if anything were taken from what follows.
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(raw_post(ECHO, "\"smuggled\"", "").as_bytes());
    caller.write(&bytes).await;
    let answer = caller.answer().await;
    assert_eq!(
        answer.status,
        400,
        "{:?}: {answer:?}",
        String::from_utf8_lossy(request)
    );
    assert!(
        caller.ends_within(REQUEST_BOUND).await && caller.buf.is_empty(),
        "{:?}: the connection ends after the 400, nothing more answered: {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&caller.buf)
    );
}

#[tokio::test]
async fn malformed_framing_is_refused_by_hyper_and_nothing_behind_it_is_answered() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let head =
        format!("POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n");
    let cases: Vec<String> = vec![
        // Lengths a lenient parser would read differently.
        format!("{head}content-length: +4\r\n\r\n\"ab\""),
        format!("{head}content-length: -4\r\n\r\n\"ab\""),
        format!("{head}content-length: 0x4\r\n\r\n\"ab\""),
        format!("{head}content-length: 4 4\r\n\r\n\"ab\""),
        format!("{head}content-length: 4,4\r\n\r\n\"ab\""),
        format!("{head}content-length: 4\r\ncontent-length: 10\r\n\r\n\"ab\""),
        format!("{head}content-length: 99999999999999999999\r\n\r\n\"ab\""),
        // Whitespace before the colon, and obs-fold (which hides a length from some parsers).
        format!("{head}content-length : 4\r\n\r\n\"ab\""),
        format!("{head}x-folded: a\r\n content-length: 40\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("{head}content-length: 4\r\n\tx\r\n\r\n\"ab\""),
        // A transfer coding other than chunked last.
        format!("{head}transfer-encoding: identity\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("{head}transfer-encoding: chunked, identity\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("{head}transfer-encoding: xchunked\r\n\r\n0\r\n\r\n"),
        // NUL and bare CR in a header, NUL in the target, a space in the target.
        format!("{head}x-nul: a\0b\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("{head}x-cr: a\rb\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("POST {ECHO}\0 HTTP/1.1\r\nhost: localhost\r\ncontent-length: 4\r\n\r\n\"ab\""),
        format!("POST {ECHO} x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 4\r\n\r\n\"ab\""),
        // HTTP/1.0 with a transfer coding.
        format!(
            "POST {ECHO} HTTP/1.0\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ];
    for case in cases {
        refused_after_one_by_hand(&gw, case.as_bytes()).await;
    }
}

/// Content-Length and Transfer-Encoding together, in any case and order: hyper decides, the
/// body is the chunked one, and the connection ends after the answer, so neither what the
/// length would have made of the bytes nor what follows is ever taken as a request.
#[tokio::test]
async fn length_and_chunked_together_are_read_as_chunked_and_end_the_connection() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    for (te_first, name) in [
        (false, "transfer-encoding"),
        (true, "Transfer-Encoding"),
        (false, "TrAnSfEr-EnCoDiNg"),
    ] {
        let mut caller = H1Caller::connect(&gw).await;
        caller
            .write(raw_post(ECHO, "\"first\"", "").as_bytes())
            .await;
        assert_eq!(caller.answer().await.status, 200);
        let smuggled = raw_post(ECHO, "\"smuggled\"", "");
        let chunked_body = "4\r\n\"ab\"\r\n0\r\n\r\n";
        let (a, b) = (
            format!("{name}: chunked\r\n"),
            format!("content-length: {}\r\n", chunked_body.len()),
        );
        let (h1, h2) = if te_first { (a, b) } else { (b, a) };
        let request = format!(
            "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{h1}{h2}\r\n{chunked_body}"
        );
        caller
            .write(format!("{request}{smuggled}").as_bytes())
            .await;
        let answer = caller.answer().await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (200, &b"\"ab\""[..]),
            "{name}"
        );
        // hyper closes after such a request (RFC 9112, 6.3): what follows is never a request.
        assert_eq!(answer.header("connection"), Some("close"), "{name}");
        assert!(caller.closed().await, "{name}: nothing more answered");
    }
}

/// A body that looks like requests is only a body; lengths with leading zeros, tabs or
/// trailing spaces are read as hyper reads them; two equal lengths are hyper's and accepted.
#[tokio::test]
async fn bodies_and_lengths_that_look_odd_are_framed_as_hyper_frames_them() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let inner = raw_post(ECHO, "\"inner\"", "");
    let body = serde_json::to_string(&inner).unwrap();
    caller.write(raw_post(ECHO, &body, "").as_bytes()).await;
    let answer = caller.answer().await;
    assert_eq!((answer.status, answer.body), (200, body.into_bytes()));
    for length in ["0004", "\t4", "4 ", "4\t"] {
        let request = format!(
            "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n\"ab\""
        );
        caller
            .write(format!("{request}{}", raw_post(ECHO, "\"next\"", "")).as_bytes())
            .await;
        let answer = caller.answer().await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (200, &b"\"ab\""[..]),
            "{length:?}"
        );
        let next = caller.answer().await;
        assert_eq!(
            (next.status, &next.body[..]),
            (200, &b"\"next\""[..]),
            "{length:?}"
        );
    }
    let twice = format!(
        "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\n\"ab\""
    );
    caller
        .write(format!("{twice}{}", raw_post(ECHO, "\"next\"", "")).as_bytes())
        .await;
    let answer = caller.answer().await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"\"ab\""[..]));
    let next = caller.answer().await;
    assert_eq!((next.status, &next.body[..]), (200, &b"\"next\""[..]));
}

/// Bare LF line ends and leading empty lines are accepted (as by hyper, the same parser),
/// and framing stays right for what follows.
#[tokio::test]
async fn bare_lf_and_leading_empty_lines_keep_the_framing() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let lf = format!(
        "POST {ECHO} HTTP/1.1\nhost: localhost\ncontent-type: application/json\ncontent-length: 4\n\n\"lf\""
    );
    let leading = format!("\r\n\r\n\n{}", raw_post(ECHO, "\"after blank lines\"", ""));
    caller
        .write(format!("{lf}{leading}{}", raw_post(ECHO, "\"last\"", "")).as_bytes())
        .await;
    for expected in ["\"lf\"", "\"after blank lines\"", "\"last\""] {
        let answer = caller.answer().await;
        assert_eq!(
            (answer.status, answer.body),
            (200, expected.as_bytes().to_vec())
        );
    }
}

/// Requests served by hand and by hyper, in one write: each answered in order, whatever
/// the hand-over takes with it.
#[tokio::test]
async fn one_write_of_requests_for_both_servers_is_answered_in_order() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let all = [
        raw_post(ECHO, "\"1\"", ""),
        raw_post(ECHO, "\"2\"", ""),
        post_chunked(ECHO, "\"3\""),
        raw_post(ECHO, "\"4\"", ""),
        raw_post(ECHO, "\"5\"", "connection: close\r\n"),
        raw_post(ECHO, "\"never\"", ""),
    ]
    .concat();
    caller.write(all.as_bytes()).await;
    for expected in ["\"1\"", "\"2\"", "\"3\"", "\"4\"", "\"5\""] {
        let answer = caller.answer().await;
        assert_eq!(
            (answer.status, answer.body),
            (200, expected.as_bytes().to_vec())
        );
    }
    assert!(
        caller.closed().await,
        "closed after the answer to `connection: close`"
    );
}

/// A head sent a byte at a time is cut off at the header read timeout: the bytes that keep
/// coming do not extend it.
#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_cut_off_at_the_header_timeout() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let head = format!(
        "POST {ECHO} HTTP/1.1\r\nhost: localhost\r\nx-slow: {}",
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut refused = false;
    for byte in head.as_bytes() {
        if caller.tls.write_all(&[*byte]).await.is_err() || caller.tls.flush().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > READ_TIMEOUT * 4 {
            break;
        }
    }
    assert!(
        refused || caller.ends_within(Duration::from_millis(100)).await,
        "cut off while the head still trickled in"
    );
    assert!(caller.buf.is_empty(), "no answer");
}

/// Leading empty lines without end: the connection is refused or cut off, never held.
#[tokio::test]
async fn endless_empty_lines_are_not_a_way_to_hold_a_connection() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut caller = H1Caller::connect(&gw).await;
    let mut refused = false;
    for _ in 0..32 {
        if caller.tls.write_all(&b"\r\n".repeat(1024)).await.is_err() {
            refused = true;
            break;
        }
    }
    let _ = caller.tls.flush().await;
    assert!(
        refused || caller.ends_within(READ_TIMEOUT + PROMPTLY).await,
        "the connection ends"
    );
    let said = String::from_utf8_lossy(&caller.buf).into_owned();
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 4"),
        "nothing, or a refusal: {said:?}"
    );
}

/// A body trickled in a byte at a time gets its 408 at the body read timeout.
#[tokio::test]
async fn a_body_trickled_byte_by_byte_gets_408_at_the_body_timeout() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let caller = H1Caller::connect(&gw).await;
    let (mut read, mut write) = tokio::io::split(caller.tls);
    let head = format!("POST {ECHO} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 200\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if write.write_all(b" ").await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = Instant::now();
    let mut said = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(REQUEST_BOUND, read.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => said.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the connection ends in time"),
        }
    }
    trickle.abort();
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(
        started.elapsed() < READ_TIMEOUT + PROMPTLY,
        "the trickle does not extend the body timeout ({:?})",
        started.elapsed()
    );
}

/// A caller that goes away while its request is handled cancels the handling: the request
/// sent upstream is dropped.
#[tokio::test]
async fn a_caller_gone_while_its_request_is_handled_cancels_it_upstream() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut upstream = Scripted::start(&gw, vec![Step::Hold]).await;
    let mut caller = H1Caller::connect(&gw).await;
    caller.write(raw_post(SCRIPTED, "{}", "").as_bytes()).await;
    assert_eq!(
        upstream.next_within(REQUEST_BOUND).await,
        Some(Seen::Request)
    );
    drop(caller);
    assert_eq!(
        upstream.next_within(Duration::from_secs(5)).await,
        Some(Seen::Closed)
    );
}

/// Answers relayed from upstream: a chunked one with trailers (relayed chunked, without
/// them, and properly ended), a 204 (no body, no length, and the connection goes on), one
/// with a length; all on one kept-alive connection.
#[tokio::test]
async fn relayed_answers_are_framed_right_and_the_connection_goes_on() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let _upstream = Scripted::start(
        &gw,
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\nx-sum: 1\r\n\r\n",
        )],
    )
    .await;
    let mut caller = H1Caller::connect(&gw).await;
    caller.write(raw_post(SCRIPTED, "{}", "").as_bytes()).await;
    let answer = caller.answer().await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (200, &b"[1]"[..]),
        "{answer:?}"
    );
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.header("content-length"), None);
    assert!(!answer.head.contains("x-sum"), "{answer:?}");
    // The connection goes on, and nothing of the trailers is left on it.
    caller
        .write(raw_post(ECHO, "\"after\"", "").as_bytes())
        .await;
    let next = caller.answer().await;
    assert_eq!(
        (next.status, &next.body[..]),
        (200, &b"\"after\""[..]),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_relayed_204_has_no_body_and_no_length() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let _upstream = Scripted::start(
        &gw,
        vec![Step::Write(
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        )],
    )
    .await;
    let mut caller = H1Caller::connect(&gw).await;
    caller
        .write(
            format!(
                "{}{}",
                raw_post(SCRIPTED, "{}", ""),
                raw_post(ECHO, "\"after\"", "")
            )
            .as_bytes(),
        )
        .await;
    let answer = caller.answer().await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.header("content-length"), None, "{answer:?}");
    assert_eq!(answer.header("transfer-encoding"), None, "{answer:?}");
    let next = caller.answer().await;
    assert_eq!(
        (next.status, &next.body[..]),
        (200, &b"\"after\""[..]),
        "{next:?}"
    );
}

/// An upstream that breaks off mid-answer: the caller's answer must not look complete (no
/// last chunk, or fewer bytes than its length), and the connection ends.
#[tokio::test]
async fn an_answer_broken_off_upstream_never_looks_complete_to_the_caller() {
    for (script, chunked) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\n"[..],
            true,
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n[1,"[..],
            false,
        ),
    ] {
        let (gw, _stop) = echo_gateway(|_| {}).await;
        let _upstream = Scripted::start(&gw, vec![Step::Write(script), Step::Close]).await;
        let mut caller = H1Caller::connect(&gw).await;
        caller.write(raw_post(SCRIPTED, "{}", "").as_bytes()).await;
        assert!(caller.ends_within(REQUEST_BOUND).await, "the connection ends");
        let said = String::from_utf8_lossy(&caller.buf).into_owned();
        if let Some(end) = said.find("\r\n\r\n") {
            let body = &said[end + 4..];
            if chunked {
                assert!(!body.contains("0\r\n\r\n"), "no last chunk: {said:?}");
            } else if said.starts_with("HTTP/1.1 200") {
                assert!(body.len() < 10, "fewer bytes than the length: {said:?}");
            }
        }
    }
}

/// At shutdown an idle connection is closed at once, and a request being handled is
/// answered whole before its connection closes.
#[tokio::test]
async fn at_shutdown_idle_connections_close_and_busy_ones_after_their_answer() {
    let (gw, _stop) = echo_gateway(|_| {}).await;
    let mut idle = H1Caller::connect(&gw).await;
    idle.write(raw_post(ECHO, "\"x\"", "").as_bytes()).await;
    assert_eq!(idle.answer().await.status, 200);
    let mut busy = H1Caller::connect(&gw).await;
    busy.write(
        raw_post(
            "/nexus/endpoints/quotes/services/svc/slow",
            "{}",
            "x-delay-ms: 1000\r\n",
        )
        .as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = stop_in_background(gw);
    assert!(
        idle.ends_within(PROMPTLY).await,
        "the idle one closes at once"
    );
    // Connections are told to close once in-flight operations are done (draining): the busy
    // one gets its whole answer, then is closed as idle.
    let answer = busy.answer().await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (200, &b"done"[..]),
        "{answer:?}"
    );
    assert!(busy.ends_within(PROMPTLY).await && busy.buf.is_empty());
    tokio::time::timeout(REQUEST_BOUND, stopping)
        .await
        .expect("stopped in time")
        .unwrap();
}
