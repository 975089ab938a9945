//! The proxy's HTTP/1.1 exchange, by hand, for what it relays most: a request whose body is
//! known and small. The head and the body go out in one write from the request's own task,
//! the answer's head is parsed where it lands, and a body already in the buffer is handed
//! over at once. hyper's client, used for everything else, runs a task per connection and
//! hands each request and answer across channels: about a third of a proxied request's
//! instructions (BENCHMARKS.md round 9).
//!
//! Only bodies up to [`MAX_BODY`] come here: they are read whole before the write, which then
//! always fits in the socket's buffers, so an upstream that answers without reading the body
//! cannot leave the write stuck.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::buffers::{take_all, take_front};

/// The largest request body sent by hand; larger or unknown lengths go through hyper.
pub const MAX_BODY: u64 = 64 * 1024;
/// An answer's head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A chunk-size or trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before its answer was complete")]
    Closed,
    #[error("malformed answer from the upstream: {0}")]
    Malformed(&'static str),
    #[error("reading the request body: {0}")]
    Body(BoxError),
}

/// A plain or TLS connection to an upstream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection between exchanges.
pub struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on it since its last
    /// answer, not even the end of the stream (the upstream closed it while idle). Asked of
    /// the TLS layer, not the socket: it may hold bytes it already took off the socket, and
    /// an answer nobody asked for would be read as the next request's.
    pub fn is_idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Whether the TLS layer holds nothing more of what the upstream sent, asked of rustls
    /// alone (no system call): checked as each answer ends, while the socket itself is
    /// looked at when the connection is taken again.
    fn tls_holds_nothing(&mut self) -> bool {
        use std::io::Read;
        let Io::Tls(tls) = &mut self.io else {
            return true;
        };
        let mut probe = [0u8; 1];
        matches!(tls.get_mut().1.reader().read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Whether `request` is sent by hand: a body of known length up to [`MAX_BODY`].
pub fn fits(request: &Request<Body>) -> bool {
    request
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_BODY)
}

/// The request's body, read whole (it is small: [`fits`]).
pub async fn read_body(body: Body) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    Ok(body.collect().await.map_err(Error::Body)?.to_bytes())
}

/// The request's head and body, ready to write in one go.
pub fn encode(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // The framing is this hop's own: the length is the one just read.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Writes `message` (from [`encode`]) on `conn`. A failed write is not sent again: part of
/// it may have reached the upstream, which may have acted on it (a handler that answers
/// after the head and closes without reading the body, say). A connection closed while idle
/// is found before the write instead ([`Conn::is_idle_and_open`]).
pub async fn write(conn: &mut Conn, message: &[u8]) -> Result<(), Error> {
    conn.io.write_all(message).await?;
    conn.io.flush().await?;
    Ok(())
}

/// Reads the answer's head (skipping interim 1xx answers); the body follows in [`H1Body`].
pub async fn read_head(mut conn: Conn, is_head: bool) -> Result<Response<H1Body>, Error> {
    loop {
        let Some(head) = parse_head(&mut conn.buf)? else {
            if conn.buf.len() > MAX_HEAD {
                return Err(Error::Malformed("head too large"));
            }
            if read_more(&mut conn).await? == 0 {
                return Err(Error::Closed);
            }
            continue;
        };
        if head.status.is_informational() {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Malformed("unexpected 101 Switching Protocols"));
            }
            continue;
        }
        let framing = framing(&head, is_head)?;
        let keep_alive = head.version == Version::HTTP_11
            && !crate::headers::connection_lists(&head.headers, "close");
        let mut response = Response::new(());
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        let body = H1Body::start(conn, framing, keep_alive);
        return Ok(response.map(|()| body));
    }
}

async fn read_more(conn: &mut Conn) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(conn, cx)).await
}

fn poll_read_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    conn.buf.reserve(READ_SIZE);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Takes the head off the start of `buf`, or `None` while it is incomplete. Header values
/// are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("too many headers")),
        Err(_) => return Err(Error::Malformed("not an HTTP/1.x answer")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Error::Malformed("bad status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each name and value sits in the head, to slice them once it is frozen.
    let start = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let at = part.as_ptr() as usize - start;
        at..at + part.len()
    };
    let places: Vec<_> = parsed
        .headers
        .iter()
        .map(|h| (span(h.name.as_bytes()), span(h.value)))
        .collect();
    let head = take_front(buf, len);
    let mut headers = HeaderMap::with_capacity(places.len());
    for (name, value) in places {
        let name =
            HeaderName::from_bytes(&head[name]).map_err(|_| Error::Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| Error::Malformed("bad header"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How the answer's body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection, which then is not reused.
    Close,
}

fn framing(head: &Head, is_head: bool) -> Result<Framing, Error> {
    let status = head.status.as_u16();
    if is_head || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    if head.headers.contains_key(TRANSFER_ENCODING) {
        if !transfer_coding_relayable(&head.headers) {
            return Err(Error::Malformed("a transfer coding other than chunked"));
        }
        if head.headers.contains_key(CONTENT_LENGTH) {
            // Both framings: the message is suspect; refuse it rather than guess.
            return Err(Error::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        return Ok(Framing::Chunked(Chunk::Size));
    }
    let mut length = None;
    for value in head.headers.get_all(CONTENT_LENGTH) {
        let parsed = value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(Error::Malformed("bad Content-Length"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(Error::Malformed("conflicting Content-Length values"));
        }
        length = Some(parsed);
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Whether an answer's body can be relayed under its `Transfer-Encoding`: none, or chunked
/// alone. The coding is this hop's and is not relayed, so a body under any other (gzip, ...)
/// would reach the caller as bytes it cannot know how to decode.
pub fn transfer_coding_relayable(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

/// Decodes what `buf` holds of a chunked body.
fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                let digits = line[..].split(|&b| b == b';').next().unwrap_or_default();
                let digits = digits.trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(Error::Malformed("bad chunk size"));
                }
                let mut size = 0u64;
                for &b in digits {
                    let digit = (b as char)
                        .to_digit(16)
                        .ok_or(Error::Malformed("bad chunk size"))?;
                    size = size * 16 + u64::from(digit);
                }
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = left.min(buf.len() as u64);
                let data = take_front(buf, n as usize);
                *state = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Decoded::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                // Trailers are read and dropped: the gateway relays no trailers.
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                if line.is_empty() {
                    return Ok(Decoded::End);
                }
            }
        }
    }
}

/// The next CRLF-ended line of `buf`, taken off it without its CRLF.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = take_front(buf, end);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(Error::Malformed("line too long")),
        None => Ok(None),
    }
}

/// Where a connection goes when its answer's body has been read to the end.
pub trait Checkin: Send + Sync {
    fn checkin(&self, conn: Conn);
}

/// An answer's body read from its connection; at its end the connection goes back to the
/// pool. Dropped before its end, the connection is closed: it still carries the rest.
pub struct H1Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// What of a length-delimited body was already read with the head.
    ready: Option<Bytes>,
    done: bool,
    back: Option<std::sync::Arc<dyn Checkin>>,
}

impl H1Body {
    fn start(mut conn: Conn, framing: Framing, keep_alive: bool) -> Self {
        let mut body = H1Body {
            conn: None,
            framing,
            keep_alive,
            ready: None,
            done: false,
            back: None,
        };
        // The common case: a small answer that arrived with its head.
        if let Framing::Length(n) = framing
            && conn.buf.len() as u64 >= n
        {
            if n > 0 {
                body.ready = Some(take_front(&mut conn.buf, n as usize));
            }
            body.framing = Framing::Length(0);
            body.done = true;
        }
        body.conn = Some(conn);
        body
    }

    /// Sets where the connection goes at the body's end; if the body has already ended, it
    /// goes there now, before the body is read.
    pub fn return_to(&mut self, back: std::sync::Arc<dyn Checkin>) {
        self.back = Some(back);
        if self.done {
            self.release();
        }
    }

    fn release(&mut self) {
        self.done = true;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Bytes beyond the answer mean the upstream said more than it was asked.
        let reusable = self.keep_alive
            && self.framing != Framing::Close
            && conn.buf.is_empty()
            && conn.tls_holds_nothing();
        if let (true, Some(back)) = (reusable, self.back.take()) {
            back.checkin(conn);
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(data) = this.ready.take() {
            if this.done {
                this.release();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            if this.done {
                this.release();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.framing {
                Framing::Length(0) => {
                    this.done = true;
                    continue;
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    Some(take_front(&mut conn.buf, n as usize))
                }
                Framing::Close if !conn.buf.is_empty() => Some(take_all(&mut conn.buf)),
                Framing::Chunked(state) => match decode_chunked(state, &mut conn.buf) {
                    Ok(Decoded::Data(data)) => Some(data),
                    Ok(Decoded::End) => {
                        this.done = true;
                        continue;
                    }
                    Ok(Decoded::NeedMore) => None,
                    Err(error) => return this.fail(error),
                },
                _ => None,
            };
            if let Some(data) = data {
                if this.framing == Framing::Length(0) {
                    this.done = true;
                    this.release();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match ready!(poll_read_more(conn, cx)) {
                Ok(0) if this.framing == Framing::Close => this.done = true,
                Ok(0) => return this.fail(Error::Closed),
                Ok(_) => {}
                Err(error) => return this.fail(error.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |r| r.len() as u64);
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left + ready),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, bool), Error> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decode_chunked(&mut state, &mut buf)? {
                Decoded::Data(data) => out.extend_from_slice(&data),
                Decoded::NeedMore => return Ok((out, false)),
                Decoded::End => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn decodes_chunked_bodies_with_extensions_and_trailers() {
        let (body, ended) =
            chunked(b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n")
                .unwrap();
        assert_eq!(body, b"hello 0123456789");
        assert!(ended);
    }

    #[test]
    fn waits_for_the_rest_of_a_cut_chunk() {
        let (body, ended) = chunked(b"5\r\nhel").unwrap();
        assert_eq!(body, b"hel");
        assert!(!ended);
    }

    #[test]
    fn refuses_malformed_chunks() {
        for input in [
            &b"z\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                matches!(chunked(input), Err(Error::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = vec![b'1'; MAX_LINE + 1];
        assert!(matches!(chunked(&endless), Err(Error::Malformed(_))));
    }

    fn head(raw: &str) -> Head {
        parse_head(&mut BytesMut::from(raw)).unwrap().unwrap()
    }

    #[test]
    fn frames_answers_as_rfc_9112_says() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
                Framing::Length(7),
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Length(0)),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked \r\n\r\n",
                Framing::Chunked(Chunk::Size),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::Close),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
                Framing::Length(3),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(framing(&head(raw), false).unwrap(), want, "{raw:?}");
        }
        assert_eq!(
            framing(&head(cases[0].0), true).unwrap(),
            Framing::Length(0)
        );
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            // Codings the gateway would not relay: the caller could not decode the body.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(framing(&head(raw), false).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn parses_heads_in_pieces_and_refuses_garbage() {
        let mut cut = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(parse_head(&mut cut).unwrap().is_none());
        assert_eq!(cut.len(), 27, "an incomplete head stays in the buffer");
        let mut whole = BytesMut::from("HTTP/1.0 201 Created\r\nA: b\r\nX-Long: v w\r\n\r\nbody");
        let head = parse_head(&mut whole).unwrap().unwrap();
        assert_eq!(&whole[..], b"body", "the head is taken off the buffer");
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.version, Version::HTTP_10);
        assert_eq!(head.headers["a"], "b");
        assert_eq!(head.headers["x-long"], "v w");
        assert!(parse_head(&mut BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n")).is_err());
    }
}
