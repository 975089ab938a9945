//! The proxy's outbound client: a pool of connections per destination, kept by hand.
//!
//! hyper-util's generic pooled client cost about 20,000 instructions per proxied request
//! (BENCHMARKS.md round 7): a SipHash pool key built per request, checkout and connect futures
//! raced against each other, and a task spawned per request to return the connection. Here a
//! destination is found by its authority in a sharded map, an idle HTTP/1.1 connection is
//! popped from a vector, and it goes back when the response body ends. HTTP/2 connections
//! (chosen by ALPN) are shared by every request to their destination. An HTTP/1.1 request
//! with a small body of known length is exchanged by hand ([`crate::proxy_h1`]); others go
//! through hyper's HTTP/1.1 client, on connections of their own.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nexus_certs::{CertError, TlsMaterial};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Body, full};
use crate::proxy_h1;

type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// Idle connections kept per destination; more are closed.
const MAX_IDLE_PER_DESTINATION: usize = 256;
/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not an http or https URL with a host")]
    Url(Uri),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP/1.1 exchange: {0}")]
    H1(#[from] proxy_h1::Error),
}

/// A cheap handle to the pools; clones share them.
#[derive(Clone)]
pub struct ProxyClient {
    inner: Arc<Inner>,
}

struct Inner {
    tls: TlsConnector,
    https: DashMap<Box<str>, Arc<Destination>>,
    http: DashMap<Box<str>, Arc<Destination>>,
    sweeping: std::sync::Once,
}

#[derive(Default)]
struct Destination {
    conns: Mutex<Conns>,
    /// Held while connecting to a destination that speaks HTTP/2 or has not said yet, so that
    /// a burst of requests opens one shared connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Set once a connection to it negotiated HTTP/1.1: its connections are opened in
    /// parallel, one per concurrent request.
    http1_only: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Conns {
    /// hyper's HTTP/1.1 connections.
    idle: Vec<(http1::SendRequest<Body>, Instant)>,
    /// HTTP/1.1 connections exchanged on by hand.
    by_hand: Vec<(proxy_h1::Conn, Instant)>,
    shared: Option<(http2::SendRequest<Body>, Instant)>,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
    ByHand(proxy_h1::Conn),
}

impl ProxyClient {
    /// HTTPS with `tls`'s client certificate (HTTP/2 or HTTP/1.1 by ALPN), or plain HTTP/1.1.
    pub fn new(tls: &TlsMaterial) -> Result<Self, CertError> {
        let config = nexus_certs::client_config(tls, &[b"h2", b"http/1.1"])?;
        Ok(Self {
            inner: Arc::new(Inner {
                tls: TlsConnector::from(Arc::new(config)),
                https: DashMap::default(),
                http: DashMap::default(),
                sweeping: std::sync::Once::new(),
            }),
        })
    }

    /// Sends `request` (with an absolute `http` or `https` URI) on a pooled connection to its
    /// destination, or on a new one.
    pub async fn request(&self, mut request: Request<Body>) -> Result<Response<PooledBody>, Error> {
        let uri = request.uri().clone();
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(Error::Url(uri)),
        };
        let Some(authority) = uri.authority().map(|a| a.as_str()) else {
            return Err(Error::Url(uri));
        };
        // Userinfo never leaves the gateway: not in the Host header, not as a pool key.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        if !request.headers().contains_key(http::header::HOST) {
            let host = HeaderValue::from_str(authority).map_err(|_| Error::Url(uri.clone()))?;
            request.headers_mut().insert(http::header::HOST, host);
        }
        let destination = self.destination(https, authority);
        if proxy_h1::fits(&request) && !destination.has_shared() {
            // Boxed, as the rare paths below: the request's future stays small.
            let by_hand = self.by_hand(request, destination, https, authority, &uri);
            return Box::pin(by_hand).await;
        }
        // A pooled connection the server closed before taking the request gives it back;
        // it is tried on the next one, and finally on a new connection.
        while let Some(conn) = destination.checkout(false) {
            match conn {
                Conn::ByHand(_) => continue,
                Conn::H2(mut sender) => {
                    *request.uri_mut() = uri.clone();
                    if sender.ready().await.is_err() {
                        destination.forget_shared();
                        continue;
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok(PooledBody::wrap(response, None)),
                        Err(mut error) => match error.take_message() {
                            Some(returned) => {
                                destination.forget_shared();
                                request = returned;
                            }
                            None => return Err(error.into_error().into()),
                        },
                    }
                }
                Conn::H1(mut sender) => {
                    *request.uri_mut() = origin_form(&uri);
                    if !sender.is_ready() && sender.ready().await.is_err() {
                        continue;
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let back = Some((sender, destination));
                            return Ok(PooledBody::wrap(response, back));
                        }
                        Err(mut error) => match error.take_message() {
                            Some(returned) => request = returned,
                            None => return Err(error.into_error().into()),
                        },
                    }
                }
            }
        }
        // Boxed: the connect future is large, and the request's future moves on every poll
        // up the stack while the rare connect would weigh on every request.
        let conn = Box::pin(self.connect_to(&destination, https, authority, &uri, false)).await?;
        Box::pin(self.send_new(conn, request, uri, destination)).await
    }

    /// Sends on a connection just opened, by hyper.
    async fn send_new(
        &self,
        conn: Conn,
        mut request: Request<Body>,
        uri: Uri,
        destination: Arc<Destination>,
    ) -> Result<Response<PooledBody>, Error> {
        match conn {
            Conn::H2(mut sender) => {
                *request.uri_mut() = uri;
                Ok(PooledBody::wrap(sender.send_request(request).await?, None))
            }
            Conn::H1(mut sender) => {
                *request.uri_mut() = origin_form(&uri);
                let response = sender.send_request(request).await?;
                Ok(PooledBody::wrap(response, Some((sender, destination))))
            }
            Conn::ByHand(_) => unreachable!("hyper's connections only"),
        }
    }

    /// An HTTP/1.1 exchange by hand: the body is read whole, then head and body go out in one
    /// write on an idle connection (one the upstream closed while idle is found before the
    /// write and dropped), or a new one. It is sent once: a failed write is an error.
    async fn by_hand(
        &self,
        request: Request<Body>,
        destination: Arc<Destination>,
        https: bool,
        authority: &str,
        uri: &Uri,
    ) -> Result<Response<PooledBody>, Error> {
        let (parts, body) = request.into_parts();
        let body = proxy_h1::read_body(body).await?;
        let message = proxy_h1::encode(&parts, &body);
        let is_head = parts.method == http::Method::HEAD;
        let conn = match destination.checkout(true) {
            Some(conn) => conn,
            None => Box::pin(self.connect_to(&destination, https, authority, uri, true)).await?,
        };
        let mut conn = match conn {
            Conn::ByHand(conn) => conn,
            // The destination turned out to speak HTTP/2.
            other => {
                let request = Request::from_parts(parts, full(body));
                let send = self.send_new(other, request, uri.clone(), destination);
                return Box::pin(send).await;
            }
        };
        proxy_h1::write(&mut conn, &message).await?;
        let mut response = proxy_h1::read_head(conn, is_head).await?;
        response.body_mut().return_to(destination);
        Ok(response.map(|body| PooledBody(Kind::ByHand(body))))
    }

    fn destination(&self, https: bool, authority: &str) -> Arc<Destination> {
        let map = if https {
            &self.inner.https
        } else {
            &self.inner.http
        };
        if let Some(found) = map.get(authority) {
            return found.clone();
        }
        map.entry(authority.into()).or_default().clone()
    }

    /// A new connection to `destination`, or the HTTP/2 one another request just opened.
    async fn connect_to(
        &self,
        destination: &Destination,
        https: bool,
        authority: &str,
        uri: &Uri,
        by_hand: bool,
    ) -> Result<Conn, Error> {
        use std::sync::atomic::Ordering::Relaxed;
        if !https || destination.http1_only.load(Relaxed) {
            return self.connect(https, authority, uri, by_hand).await;
        }
        let _connecting = destination.connecting.lock().await;
        if let Some(Conn::H2(sender)) = destination.checkout_shared() {
            return Ok(Conn::H2(sender));
        }
        let conn = self.connect(https, authority, uri, by_hand).await?;
        match &conn {
            Conn::H2(sender) => {
                destination.conns.lock().expect("pool lock").shared =
                    Some((sender.clone(), Instant::now()));
            }
            Conn::H1(_) | Conn::ByHand(_) => destination.http1_only.store(true, Relaxed),
        }
        Ok(conn)
    }

    async fn connect(
        &self,
        https: bool,
        authority: &str,
        uri: &Uri,
        by_hand: bool,
    ) -> Result<Conn, Error> {
        self.start_sweeping();
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_error = |source| Error::Connect {
            authority: authority.to_owned(),
            source,
        };
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        if !https {
            if by_hand {
                return Ok(Conn::ByHand(proxy_h1::Conn::new(proxy_h1::Io::Plain(tcp))));
            }
            return handshake_http1(TokioIo::new(tcp)).await;
        }
        let tls_error = |source| Error::Tls {
            authority: authority.to_owned(),
            source,
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| Error::Url(uri.clone()))?;
        let tls = self.inner.tls.connect(name, tcp).await.map_err(tls_error)?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Conn::H2(sender));
        }
        if by_hand {
            let io = proxy_h1::Io::Tls(Box::new(tls));
            return Ok(Conn::ByHand(proxy_h1::Conn::new(io)));
        }
        handshake_http1(TokioIo::new(tls)).await
    }

    /// Starts, once, the task that closes connections idle for too long. It holds the pools
    /// weakly, so it ends with the client.
    fn start_sweeping(&self) {
        self.inner.sweeping.call_once(|| {
            let pools = Arc::downgrade(&self.inner);
            tokio::spawn(sweep(pools));
        });
    }
}

async fn handshake_http1<T>(io: T) -> Result<Conn, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Conn::H1(sender))
}

async fn sweep(pools: Weak<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pools) = pools.upgrade() else { return };
        let now = Instant::now();
        for map in [&pools.https, &pools.http] {
            map.retain(|_, destination| destination.sweep(now));
        }
    }
}

impl Destination {
    /// A live connection: the shared HTTP/2 one, else the most recently returned HTTP/1.1 one
    /// of the kind asked for.
    fn checkout(&self, by_hand: bool) -> Option<Conn> {
        let mut conns = self.conns.lock().expect("pool lock");
        if let Some(shared) = Self::shared(&mut conns) {
            return Some(shared);
        }
        if by_hand {
            while let Some((mut conn, _)) = conns.by_hand.pop() {
                if conn.is_idle_and_open() {
                    return Some(Conn::ByHand(conn));
                }
            }
            return None;
        }
        while let Some((sender, _)) = conns.idle.pop() {
            if !sender.is_closed() {
                return Some(Conn::H1(sender));
            }
        }
        None
    }

    fn has_shared(&self) -> bool {
        self.conns.lock().expect("pool lock").shared.is_some()
    }

    fn checkout_shared(&self) -> Option<Conn> {
        Self::shared(&mut self.conns.lock().expect("pool lock"))
    }

    fn shared(conns: &mut Conns) -> Option<Conn> {
        if let Some((sender, last_used)) = &mut conns.shared {
            if !sender.is_closed() {
                *last_used = Instant::now();
                return Some(Conn::H2(sender.clone()));
            }
            conns.shared = None;
        }
        None
    }

    /// Stops sharing the HTTP/2 connection, which refused a request.
    fn forget_shared(&self) {
        self.conns.lock().expect("pool lock").shared = None;
    }

    fn checkin(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().expect("pool lock");
        if conns.idle.len() < MAX_IDLE_PER_DESTINATION {
            conns.idle.push((sender, Instant::now()));
        }
    }

    /// Closes what has been idle too long; whether anything is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut conns = self.conns.lock().expect("pool lock");
        let fresh = |since: Instant| now.duration_since(since) < IDLE_TIMEOUT;
        conns
            .idle
            .retain(|(sender, since)| fresh(*since) && !sender.is_closed());
        conns
            .by_hand
            .retain_mut(|(conn, since)| fresh(*since) && conn.is_idle_and_open());
        if conns
            .shared
            .as_ref()
            .is_some_and(|(sender, last_used)| !fresh(*last_used) || sender.is_closed())
        {
            conns.shared = None;
        }
        !conns.idle.is_empty() || !conns.by_hand.is_empty() || conns.shared.is_some()
    }
}

impl proxy_h1::Checkin for Destination {
    fn checkin(&self, conn: proxy_h1::Conn) {
        let mut conns = self.conns.lock().expect("pool lock");
        if conns.by_hand.len() < MAX_IDLE_PER_DESTINATION {
            conns.by_hand.push((conn, Instant::now()));
        }
    }
}

/// The path and query of `uri`, which an HTTP/1.1 request line carries.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// A response body that returns its HTTP/1.1 connection to the pool when it ends. Dropped
/// before its end, the connection is closed instead: it still carries the rest of the body.
pub struct PooledBody(Kind);

enum Kind {
    Hyper {
        body: Incoming,
        back: Option<(http1::SendRequest<Body>, Arc<Destination>)>,
    },
    ByHand(proxy_h1::H1Body),
}

impl PooledBody {
    fn wrap(
        response: Response<Incoming>,
        back: Option<(http1::SendRequest<Body>, Arc<Destination>)>,
    ) -> Response<Self> {
        let mut response = response.map(|body| PooledBody(Kind::Hyper { body, back }));
        if let Kind::Hyper { body, back } = &mut response.body_mut().0
            && body.is_end_stream()
        {
            release(back);
        }
        response
    }
}

fn release(back: &mut Option<(http1::SendRequest<Body>, Arc<Destination>)>) {
    if let Some((sender, destination)) = back.take() {
        destination.checkin(sender);
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let (body, back) = match &mut self.0 {
            Kind::ByHand(body) => {
                return Pin::new(body).poll_frame(cx).map_err(Error::from);
            }
            Kind::Hyper { body, back } => (body, back),
        };
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        match &frame {
            None => release(back),
            Some(Ok(_)) if body.is_end_stream() => release(back),
            Some(Ok(_)) => {}
            // A broken body leaves the connection in an unknown state.
            Some(Err(_)) => *back = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(Error::from)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper { body, .. } => body.is_end_stream(),
            Kind::ByHand(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper { body, .. } => body.size_hint(),
            Kind::ByHand(body) => body.size_hint(),
        }
    }
}
