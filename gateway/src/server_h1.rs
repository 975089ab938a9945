//! The data port's HTTP/1.1 server, by hand, for what callers send most: a request with no
//! body or a body of known length up to [`MAX_BODY`]. The head is parsed where it landed
//! in the connection's buffer, the body is read whole, the request is handled in the
//! connection's own task, and the answer's head and body go out in one write. hyper's
//! server runs a dispatcher around each request and hands its body across a channel
//! (BENCHMARKS.md round 10).
//!
//! Everything else stays hyper's. At the first request this server does not take, the
//! connection is handed to hyper's HTTP/1 server with the bytes read so far, and hyper
//! serves the rest of it as it serves any connection from its start. Not taken: a head
//! httparse refuses, one over the size or header limits, `HTTP/1.0`, `HEAD`, `CONNECT`,
//! `Transfer-Encoding`, several or invalid `Content-Length`s, `Expect`, `Upgrade`, or a
//! larger body. So every answer to a malformed request (400, 414, 431, 505) is hyper's, as
//! before. A connection that opens with the h2 preface goes to hyper's HTTP/2 server; one
//! that served a request by hand stays HTTP/1.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{Body, RequestBody};
use crate::buffers::take_front;
use crate::closing::Open;
use crate::error::{ErrorType, GatewayError};
use crate::headers::connection_lists;

/// The largest request body taken by hand; it is read whole before the request is handled.
pub const MAX_BODY: usize = 64 * 1024;
/// Header slots for httparse on the stack (the default limit is 100).
const SLOTS: usize = 128;
/// hyper answers 414 to a longer request target.
const MAX_URI: usize = 65_534;
const READ_SIZE: usize = 8 * 1024;
/// An answer's body is gathered up to this much before a write.
const WRITE_AT_ONCE: usize = 64 * 1024;

/// The limits the data port applies to a request's head, as hyper is configured with them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// For the head to arrive, from when the connection waits for it (idle time included).
    pub header_read_timeout: Duration,
    /// For the body to arrive once the head is in.
    pub body_read_timeout: Duration,
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// How the service by hand ended.
pub enum Ended<IO> {
    /// The connection is closed or done with: by the caller, after `Connection: close`, on
    /// a timeout or an I/O error, or because the gateway is closing.
    Closed,
    /// A request this server does not take is next: hyper serves the rest of the
    /// connection, from the bytes already read, in that protocol.
    HandOver(Rewound<IO>, Protocol),
}

/// What hyper is to speak on a connection handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// The connection opened with the h2 preface (prior knowledge, without ALPN).
    Http2,
}

/// What an HTTP/2 connection sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves requests on `io` by hand, each answered by `handle`, until the connection ends
/// or a request needs hyper.
pub async fn serve<IO, F, Fut>(mut io: IO, limits: &Limits, open: &Open, mut handle: F) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(READ_SIZE);
    let mut closing = pin!(open.closing());
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut first = true;
    loop {
        let waiting = next_head(
            &mut io,
            &mut buf,
            first,
            limits,
            timer.as_mut(),
            closing.as_mut(),
        );
        let head = match waiting.await {
            Next::Head(head) => head,
            Next::HandOver(protocol) => {
                return Ended::HandOver(Rewound::new(io, buf.freeze()), protocol);
            }
            Next::Gone => return Ended::Closed,
            Next::Closing => return close(io).await,
        };
        first = false;
        match read_body(&mut io, &mut buf, head.body_len, limits, timer.as_mut()).await {
            Ok(()) => {}
            Err(BodyStop::Gone) => return Ended::Closed,
            Err(BodyStop::Late) => {
                let late = GatewayError::new(
                    ErrorType::RequestTimeout,
                    format!(
                        "request body not received within {:?}",
                        limits.body_read_timeout
                    ),
                );
                let answer = late.into_response();
                let _ = write_response(&mut io, &mut buf, &mut out, answer, false).await;
                return close(io).await;
            }
        }
        // A large body grew the buffer; it is let go once the body is (below).
        let grew = buf.capacity() > 2 * READ_SIZE;
        let body = take_front(&mut buf, head.body_len);
        let mut request = Request::new(RequestBody::whole(body));
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.headers_mut() = head.headers;

        // As hyper: a caller that closes while its request is handled cancels the handling.
        let response = tokio::select! {
            biased;
            response = handle(request) => response,
            () = caller_gone(&mut io, &mut buf) => return Ended::Closed,
        };
        let keep_alive =
            head.keep_alive && !open.is_closing() && !connection_lists(response.headers(), "close");
        if write_response(&mut io, &mut buf, &mut out, response, keep_alive)
            .await
            .is_err()
        {
            return Ended::Closed;
        }
        if !keep_alive {
            return close(io).await;
        }
        // An idle connection keeps small buffers, whatever its last request needed.
        if buf.is_empty() && (grew || buf.capacity() > 2 * READ_SIZE) {
            buf = BytesMut::with_capacity(READ_SIZE);
        }
        if out.capacity() > 2 * READ_SIZE {
            out = Vec::with_capacity(READ_SIZE);
        }
    }
}

/// What comes next on a connection between requests. Moved once, to the loop: boxing the
/// head would cost an allocation a request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    HandOver(Protocol),
    /// Closed by the caller, broken, or silent past the header read timeout: dropped
    /// without an answer or close_notify, as hyper drops it.
    Gone,
    /// The gateway is closing its connections: between requests, even with part of the
    /// next head in, as hyper does.
    Closing,
}

/// Reads until a whole head is in `buf` (taken off it), or says why not: the header read
/// timeout (`timer`, reset here), the caller, or the gateway closing its connections.
async fn next_head<IO, C>(
    io: &mut IO,
    buf: &mut BytesMut,
    first: bool,
    limits: &Limits,
    mut timer: Pin<&mut tokio::time::Sleep>,
    mut closing: Pin<&mut C>,
) -> Next
where
    IO: AsyncRead + Unpin,
    C: Future<Output = ()>,
{
    let mut waiting = false;
    loop {
        // Only a connection's first bytes may switch it to h2, once the preface is whole
        // (a part of it waits, under the header read timeout).
        if first && !buf.is_empty() && H2_PREFACE.starts_with(&buf[..buf.len().min(24)]) {
            if buf.len() >= H2_PREFACE.len() {
                return Next::HandOver(Protocol::Http2);
            }
        } else {
            match parse(buf, limits) {
                Parsed::Head(head) => return Next::Head(head),
                Parsed::NotMine => return Next::HandOver(Protocol::Http1),
                Parsed::Partial => {}
            }
        }
        // The deadline starts at the first wait for this head, as hyper's does.
        if !waiting {
            waiting = true;
            let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
            timer.as_mut().reset(deadline);
        }
        let read = tokio::select! {
            biased;
            read = read_more(io, buf) => read,
            () = closing.as_mut() => return Next::Closing,
            () = timer.as_mut() => return Next::Gone,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Next::Gone;
        }
    }
}

/// Why a body did not arrive whole.
enum BodyStop {
    Gone,
    /// Not within `body_read_timeout` of its head.
    Late,
}

/// Reads until `buf` holds the body (`len` bytes), within `body_read_timeout`.
async fn read_body<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    len: usize,
    limits: &Limits,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Result<(), BodyStop> {
    if buf.len() >= len {
        return Ok(());
    }
    timer
        .as_mut()
        .reset(tokio::time::Instant::now() + limits.body_read_timeout);
    buf.reserve(len - buf.len());
    while buf.len() < len {
        let read = tokio::select! {
            biased;
            read = read_more(io, buf) => read,
            () = timer.as_mut() => return Err(BodyStop::Late),
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Err(BodyStop::Gone);
        }
    }
    Ok(())
}

/// Ends the connection with TLS's close_notify, without waiting long for a caller that
/// does not read.
async fn close<IO: AsyncWrite + Unpin>(mut io: IO) -> Ended<IO> {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    Ended::Closed
}

async fn read_more<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_SIZE);
    poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}

/// Resolves when the caller closed its side while its request is handled. Bytes that
/// arrive instead (a pipelined request) stay in `buf` for later, and the watch stops there.
async fn caller_gone<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) {
    if buf.is_empty() && matches!(read_more(io, buf).await, Ok(0) | Err(_)) {
        return;
    }
    std::future::pending().await
}

/// A request's head, taken off the buffer.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body_len: usize,
    keep_alive: bool,
}

// Moved once, from the parse to its caller: boxing the head would cost an allocation a request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    Partial,
    /// hyper's to serve (module docs).
    NotMine,
}

/// Where a header's name and value sit in the head.
#[derive(Clone, Copy, Default)]
struct Place {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the head at the start of `buf`, and takes it off if it is this server's.
fn parse(buf: &mut BytesMut, limits: &Limits) -> Parsed {
    // On the stack up to SLOTS headers; a gateway configured for more takes them from the
    // heap, so the limit is applied here as hyper applies it (not handed over at slot 129).
    let max = limits.max_headers;
    let (mut inline_slots, mut inline_places) = (
        [const { MaybeUninit::uninit() }; SLOTS],
        [Place::default(); SLOTS],
    );
    let (mut heap_slots, mut heap_places);
    let (slots, places): (&mut [MaybeUninit<httparse::Header<'_>>], &mut [Place]) = if max <= SLOTS
    {
        (&mut inline_slots[..max], &mut inline_places[..max])
    } else {
        heap_slots = vec![MaybeUninit::uninit(); max];
        heap_places = vec![Place::default(); max];
        (&mut heap_slots, &mut heap_places)
    };
    let mut request = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut request, buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => {
            return Parsed::Partial;
        }
        _ => return Parsed::NotMine,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::NotMine;
    };
    if len > limits.max_head_bytes || target.len() > MAX_URI {
        return Parsed::NotMine;
    }
    let method = match method {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        "OPTIONS" => Method::OPTIONS,
        // HEAD answers without a body and CONNECT tunnels: hyper's. Other methods are rare.
        _ => return Parsed::NotMine,
    };
    let start = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let at = part.as_ptr() as usize - start;
        (at as u32, (at + part.len()) as u32)
    };
    let target = span(target.as_bytes());
    let mut body_len = None;
    let mut keep_alive = true;
    // As many places as slots: every header parsed is looked at below.
    debug_assert!(request.headers.len() <= places.len());
    for (header, place) in request.headers.iter().zip(places.iter_mut()) {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length(header.value), body_len) {
                (Some(n), None) => body_len = Some(n),
                // Several lengths, even equal ones, or an invalid one: hyper decides.
                _ => return Parsed::NotMine,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = String::from_utf8_lossy(header.value);
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return Parsed::NotMine;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::NotMine;
        }
        *place = Place {
            name: span(name),
            value: span(header.value),
        };
    }
    let count = request.headers.len();
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Parsed::NotMine;
    }
    // Taken off the buffer only once it is known to be ours: hyper must see it whole.
    let Some(head) = build(buf, len, target, &places[..count]) else {
        return Parsed::NotMine;
    };
    let (uri, headers) = head;
    Parsed::Head(Head {
        method,
        uri,
        headers,
        body_len,
        keep_alive,
    })
}

/// The URI and header map of a head whose places are known, or `None` (the head left in
/// `buf`) if one of them is invalid.
fn build(
    buf: &mut BytesMut,
    len: usize,
    target: (u32, u32),
    places: &[Place],
) -> Option<(Uri, HeaderMap)> {
    let range = |(from, to): (u32, u32)| from as usize..to as usize;
    let head = take_front(buf, len);
    let Ok(uri) = Uri::from_maybe_shared(head.slice(range(target))) else {
        return restore(buf, head);
    };
    let mut headers = HeaderMap::with_capacity(places.len());
    for place in places {
        let name = HeaderName::from_bytes(&head[range(place.name)]);
        let value = HeaderValue::from_maybe_shared(head.slice(range(place.value)));
        let (Ok(name), Ok(value)) = (name, value) else {
            return restore(buf, head);
        };
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// Puts a head taken off `buf` back in front of it, for hyper.
fn restore<T>(buf: &mut BytesMut, head: Bytes) -> Option<T> {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    None
}

/// A `Content-Length` value: digits only (RFC 9110, section 8.6).
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Writes `response` with its framing: its length when known, else chunked. The head and
/// what the body has ready go out in one write; the rest as it comes. A caller that closes
/// while the body is awaited ends the answer (and the body, which may hold an upstream).
async fn write_response<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    response: Response<Body>,
    keep_alive: bool,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact().or_else(|| {
        let value = parts.headers.get(CONTENT_LENGTH)?;
        content_length(value.as_bytes()).map(|n| n as u64)
    });
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The framing and the connection's fate are this hop's own.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(DATE) {
        put_header(out, b"date", &date::now());
    }
    match (bodiless, length) {
        (true, _) => {}
        (false, Some(n)) => put_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        (false, None) => put_header(out, b"transfer-encoding", b"chunked"),
    }
    if !keep_alive {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        return send(io, out).await;
    }

    let mut sent = 0u64;
    loop {
        // What the body has ready joins what waits to be written; a wait writes it first.
        let frame = if out.is_empty() {
            tokio::select! {
                biased;
                frame = http_body_util::BodyExt::frame(&mut body) => frame,
                () = caller_gone(io, buf) => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "caller gone"));
                }
            }
        } else {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    send(io, out).await?;
                    continue;
                }
            }
        };
        match frame {
            None => break,
            Some(Err(error)) => return Err(io::Error::other(error)),
            Some(Ok(frame)) => {
                // Trailers are not relayed to HTTP/1.1 callers.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                sent += data.len() as u64;
                if length.is_some_and(|n| sent > n) {
                    return Err(io::Error::other("answer body longer than its length"));
                }
                if length.is_none() && !data.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(&data);
                }
                if out.len() >= WRITE_AT_ONCE {
                    send(io, out).await?;
                }
            }
        }
    }
    if length.is_some_and(|n| sent < n) {
        return Err(io::Error::other("answer body shorter than its length"));
    }
    if length.is_none() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(io, out).await
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    Ok(())
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn now() -> [u8; 29] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(now);
                if let Ok(bytes) = <[u8; 29]>::try_from(text.as_bytes()) {
                    *cached = (second, bytes);
                }
            }
            cached.1
        })
    }
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Rewound<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewound<IO> {
    pub fn new(io: IO, prefix: Bytes) -> Self {
        Self { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_head_bytes: 16 * 1024,
        }
    }

    fn parse_all(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (parse(&mut buf, &limits()), buf)
    }

    #[test]
    fn a_plain_request_is_taken_and_its_head_consumed() {
        let (parsed, rest) = parse_all(
            "POST /nexus/endpoints/e/services/s/x?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-Y: z\r\n\r\n{}NEXT",
        );
        let Parsed::Head(head) = parsed else {
            panic!("taken by hand")
        };
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/nexus/endpoints/e/services/s/x");
        assert_eq!(head.uri.query(), Some("a=1"));
        assert_eq!(head.headers["x-y"], "z");
        assert_eq!(head.headers["host"], "gw");
        assert_eq!(head.body_len, 2);
        assert!(head.keep_alive);
        assert_eq!(&rest[..], b"{}NEXT");
    }

    #[test]
    fn a_partial_head_waits_for_more_and_keeps_its_bytes() {
        let (parsed, rest) = parse_all("GET / HTTP/1.1\r\nHost: g");
        assert!(matches!(parsed, Parsed::Partial));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: g");
    }

    #[test]
    fn what_hyper_must_decide_is_left_whole_for_it() {
        for text in [
            "GET / HTTP/1.0\r\n\r\n",
            "HEAD / HTTP/1.1\r\n\r\n",
            "CONNECT gw:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
        ] {
            let (parsed, rest) = parse_all(text);
            assert!(matches!(parsed, Parsed::NotMine), "{text:?} is hyper's");
            assert_eq!(&rest[..], text.as_bytes(), "{text:?} left whole");
        }
    }

    #[test]
    fn a_head_beyond_the_limits_is_left_to_hyper_to_refuse() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let (parsed, _) = parse_all(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert!(matches!(parsed, Parsed::NotMine), "too many headers");

        let huge = "a".repeat(16 * 1024);
        let (parsed, _) = parse_all(&format!("GET / HTTP/1.1\r\nX: {huge}"));
        assert!(
            matches!(parsed, Parsed::NotMine),
            "an incomplete head at the limit"
        );
    }

    #[test]
    fn a_limit_above_the_stack_slots_is_applied_here_with_every_header_checked() {
        let limits = Limits {
            max_headers: 200,
            ..limits()
        };
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        let Parsed::Head(head) = parse(&mut buf, &limits) else {
            panic!("150 headers under a limit of 200 are taken by hand")
        };
        assert_eq!(head.headers.len(), 150);
        // A framing header past the stack's slots is still seen.
        let text = format!("POST / HTTP/1.1\r\n{many}Transfer-Encoding: chunked\r\n\r\n");
        let mut buf = BytesMut::from(text.as_bytes());
        assert!(matches!(parse(&mut buf, &limits), Parsed::NotMine));
        let over: String = (0..201).map(|i| format!("X-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{over}\r\n").as_bytes());
        assert!(matches!(parse(&mut buf, &limits), Parsed::NotMine));
    }

    #[test]
    fn connection_close_is_seen_among_other_tokens() {
        let (parsed, _) = parse_all("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        let Parsed::Head(head) = parsed else {
            panic!("taken by hand")
        };
        assert!(!head.keep_alive);
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"65536"), Some(65536));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 ",
            b"0x10",
            b"1,1",
            b"9999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_date_is_an_http_date() {
        let date = date::now();
        let text = std::str::from_utf8(&date).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
