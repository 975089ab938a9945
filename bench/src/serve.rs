//! What runs in the child processes: the fixed Nexus handler, B-tls (that handler behind the
//! gateway's rustls mTLS acceptor), the polling worker serving it through the gateway, and T
//! (an in-memory rustls handshake loop).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use nexus_gateway::client::{HttpVersions, http_client};
use nexus_gateway::worker::{Worker, WorkerSettings};
use rustls::{ClientConnection, ServerConnection};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{Result, pki};

/// The task queue the bench endpoint targets.
pub const TASK_QUEUE: &str = "bench";

/// A fixed Nexus sync result (~100 bytes).
pub const RESULT: &[u8] =
    br#"{"orderId":"ord-7f3a9c2e","status":"confirmed","amountCents":125000,"currency":"EUR","items":3}"#;

pub fn result_response() -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(RESULT)))
        .expect("valid response")
}

/// B-tls: the fixed handler served by hyper (HTTP/1.1 + h2 by ALPN) behind
/// `nexus_certs::server_config` with the gateway's certificates. Prints
/// `nexus-bench serve-direct: data https://ADDR` on stderr, then serves for at most `max`.
pub async fn serve_direct(pki_dir: &Path, max: Duration) -> Result<()> {
    let config = nexus_certs::server_config(&pki::server_material(pki_dir)?)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    serve_fixed("serve-direct: data https", max, move |tcp, builder| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            serve_result(&builder, TokioIo::new(tls)).await;
        }
    })
    .await
}

/// B: the fixed handler over plain HTTP (HTTP/1.1 and h2 prior knowledge) on loopback, for
/// external-target endpoints. Prints `nexus-bench serve-bare: data http://ADDR` on stderr.
pub async fn serve_bare(max: Duration) -> Result<()> {
    serve_fixed("serve-bare: data http", max, |tcp, builder| async move {
        serve_result(&builder, TokioIo::new(tcp)).await;
    })
    .await
}

/// Accepts on a fresh loopback port (announced as `nexus-bench {banner}://ADDR`) for at most
/// `max`, handing each connection to `serve` on its own task.
async fn serve_fixed<F, Fut>(banner: &str, max: Duration, serve: F) -> Result<()>
where
    F: Fn(tokio::net::TcpStream, Arc<auto::Builder<TokioExecutor>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("nexus-bench {banner}://{}", listener.local_addr()?);
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let stop = tokio::time::sleep(max);
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = &mut stop => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(tcp, builder.clone()));
    }
}

/// Serves [`result_response`] to every request on one connection, after reading its body.
async fn serve_result<I>(builder: &auto::Builder<TokioExecutor>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let _ = request.into_body().collect().await;
        Ok::<_, Infallible>(result_response())
    });
    let _ = builder.serve_connection(io, service).await;
}

/// The polling worker: `nexus_gateway::worker::Worker` with `concurrency` polls on task queue
/// [`TASK_QUEUE`] of the handler namespace, answering every task with [`RESULT`].
pub async fn worker(pki_dir: &Path, gateway: Uri, concurrency: usize, max: Duration) -> Result<()> {
    let client = http_client(
        &pki::client_material(pki_dir, &pki::handler())?,
        HttpVersions::Any,
    )?;
    let mut settings = WorkerSettings::new(gateway, pki::HANDLER, TASK_QUEUE);
    settings.concurrency = concurrency;
    settings.poll_timeout = Duration::from_secs(30);
    let stop = CancellationToken::new();
    let timer = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(max).await;
        timer.cancel();
    });
    eprintln!("nexus-bench worker: polling with {concurrency} loops");
    let handler = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(result_response())
    });
    Worker::new(settings, client).run(handler, stop).await;
    Ok(())
}

/// T's result: full handshakes (client and server side, in memory, one thread).
pub struct Handshakes {
    pub count: u64,
    pub wall: Duration,
    /// Time spent in the server side's calls alone.
    pub server: Duration,
}

/// T: TLS 1.3 handshakes with client auth between a `ServerConnection` (the gateway's
/// `server_config`) and a `ClientConnection` (the caller's certificate, no resumption), bytes
/// passed in memory, for `warmup` then `measure`.
pub fn handshakes(pki_dir: &Path, warmup: Duration, measure: Duration) -> Result<Handshakes> {
    let server = Arc::new(nexus_certs::server_config(&pki::server_material(pki_dir)?)?);
    let client = Arc::new(s3_client_config(pki_dir)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let end_warmup = Instant::now() + warmup;
    while Instant::now() < end_warmup {
        handshake(&server, &client, &name)?;
    }
    let started = Instant::now();
    let mut out = Handshakes {
        count: 0,
        wall: Duration::ZERO,
        server: Duration::ZERO,
    };
    while started.elapsed() < measure && out.count < 10_000_000 {
        out.server += handshake(&server, &client, &name)?;
        out.count += 1;
    }
    out.wall = started.elapsed();
    Ok(out)
}

/// The client side of S3: the caller's certificate, HTTP/1.1, no session resumption.
pub fn s3_client_config(pki_dir: &Path) -> Result<rustls::ClientConfig> {
    let material = pki::client_material(pki_dir, &pki::caller())?;
    let mut config = nexus_certs::client_config(&material, &[b"http/1.1"])?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// One in-memory handshake, until neither side has anything left to send (the server's
/// session tickets included). Returns the time spent in server-side calls.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    name: &rustls::pki_types::ServerName<'static>,
) -> Result<Duration> {
    let mut c = ClientConnection::new(client.clone(), name.clone())?;
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone())?;
    let mut server_time = t.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..32 {
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            if c.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                return Err("T: TLS 1.3 was not negotiated".into());
            }
            return Ok(server_time);
        }
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf)?;
        }
        let t = Instant::now();
        feed(&buf, |rd| s.read_tls(rd))?;
        s.process_new_packets()?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf)?;
        }
        server_time += t.elapsed();
        feed(&buf, |rd| c.read_tls(rd))?;
        c.process_new_packets()?;
    }
    Err("T: handshake did not finish in 32 rounds".into())
}

fn feed(
    mut bytes: &[u8],
    mut read: impl FnMut(&mut &[u8]) -> std::io::Result<usize>,
) -> Result<()> {
    while !bytes.is_empty() {
        if read(&mut bytes)? == 0 {
            return Err("T: TLS peer read no bytes".into());
        }
    }
    Ok(())
}
