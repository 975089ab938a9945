//! A raw HTTP/1.1 caller over mTLS, for tests that speak to the data port byte by byte.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use tokio_util::sync::CancellationToken;

use crate::{REQUEST_BOUND, TestGateway, ns, serve_reference_handler};

/// Both read timeouts of [`echo_gateway`]: short, so tests of slow callers end quickly.
pub const H1_READ_TIMEOUT: Duration = Duration::from_millis(700);

/// A gateway whose header and body read timeouts are [`H1_READ_TIMEOUT`] (then `tweak`), with
/// endpoint `quotes` served by the reference handler and callable by namespace `orders`.
pub async fn echo_gateway(
    tweak: impl FnOnce(&mut nexus_gateway::Config),
) -> (TestGateway, CancellationToken) {
    let gw = TestGateway::start_with(|c| {
        c.limits.header_read_timeout = H1_READ_TIMEOUT;
        c.limits.body_read_timeout = H1_READ_TIMEOUT;
        tweak(c);
    })
    .await;
    let (handler, stop) = serve_reference_handler().await;
    gw.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);
    (gw, stop)
}

/// A JSON POST of `body` framed by its length, with `extra` header lines (each ending in
/// CRLF) before the length.
pub fn raw_post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A caller's HTTP/1.1 connection to the data port (namespace `orders`, mTLS), spoken to
/// byte by byte.
pub struct H1Caller {
    pub tls: TlsStream<TcpStream>,
    pub buf: Vec<u8>,
}

/// An answer as read off the wire.
#[derive(Debug)]
pub struct H1Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl H1Answer {
    /// A header's value (the first, trimmed), by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl H1Caller {
    pub async fn connect(gw: &TestGateway) -> H1Caller {
        H1Caller::connect_alpn(gw, &[b"http/1.1"]).await
    }

    pub async fn connect_alpn(gw: &TestGateway, alpn: &[&[u8]]) -> H1Caller {
        let material = gw.pki.client_material(&ns("orders"));
        let config = nexus_certs::client_config(&material, alpn).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(gw.data_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(REQUEST_BOUND, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .unwrap();
        H1Caller {
            tls,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Reads more within `bound`: Some(true) with bytes, Some(false) at the end of the
    /// stream, None when nothing came in time.
    pub async fn fill_within(&mut self, bound: Duration) -> Option<bool> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(bound, self.tls.read(&mut chunk)).await {
            Err(_) => None,
            Ok(Ok(0) | Err(_)) => Some(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
        }
    }

    /// Reads more; false at the end of the stream.
    pub async fn fill(&mut self) -> bool {
        self.fill_within(REQUEST_BOUND)
            .await
            .expect("bytes or the end in time")
    }

    /// Reads until `needle` is in the buffer; false if the stream ended first.
    pub async fn read_until(&mut self, needle: &[u8]) -> bool {
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// The next answer: its head, then a body framed by its length or chunked.
    pub async fn answer(&mut self) -> H1Answer {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                self.fill().await,
                "the connection ended before an answer's head (read so far: {:?})",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let status = head[9..12].parse().expect("a status code");
        let mut answer = H1Answer {
            status,
            head,
            body: Vec::new(),
        };
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "the connection ended inside a body");
            }
            answer.body = self.buf.drain(..length).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(
                        self.fill().await,
                        "the connection ended inside a chunk size"
                    );
                };
                let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "the connection ended inside a chunk");
                }
                let chunk: Vec<u8> = self.buf.drain(..line_end + 2 + size + 2).collect();
                assert_eq!(&chunk[chunk.len() - 2..], b"\r\n", "a chunk ends with CRLF");
                if size == 0 {
                    break;
                }
                answer
                    .body
                    .extend_from_slice(&chunk[line_end + 2..line_end + 2 + size]);
            }
        }
        answer
    }

    /// Whether the gateway closes the connection with nothing more to say.
    pub async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }

    /// Whether the connection ends (whatever comes before the end) within `bound`.
    pub async fn ends_within(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill_within(left).await {
                Some(true) => continue,
                Some(false) => return true,
                None => return false,
            }
        }
    }
}
