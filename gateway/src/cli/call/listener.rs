//! The local HTTP listener of `call --async --wait`: it receives the operation's completion
//! from the gateway, answers it 200 and hands it to the waiting call.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outcome::{self, Outcome};

/// Larger than any completion the gateway relays (its body limit is 2 MiB).
const MAX_BODY: usize = 8 << 20;
/// How long the listener lets the 200 to the completion go out before the process exits.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// A completion received: the outcome and the operation token it names.
pub struct Completion {
    pub outcome: Outcome,
    pub token: Option<String>,
}

pub struct CallbackListener {
    url: String,
    completions: mpsc::UnboundedReceiver<Completion>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl CallbackListener {
    /// Binds `addr`. The callback URL is `advertised` when given (the gateway reaches the
    /// listener through it, on any path), else a URL of the bound address with a random path,
    /// so that only this call's completion is taken.
    pub async fn bind(addr: SocketAddr, advertised: Option<String>) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for the completion on {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot listen for the completion on {addr}: {e}"))?;
        let (url, path) = match advertised {
            Some(url) => (url, None),
            None => {
                let path = format!("/nexus-call/{}", uuid::Uuid::new_v4());
                (format!("http://{}{path}", reachable(bound)), Some(path))
            }
        };
        let (tx, completions) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, path.map(Arc::from), tx, stop.clone()));
        Ok(CallbackListener {
            url,
            completions,
            stop,
            task,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first completion, or `None` when none came `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Completion> {
        tokio::time::timeout(within, self.completions.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops listening and lets answers in flight (the 200 to the completion) go out.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(CLOSE_WITHIN + Duration::from_millis(500), self.task).await;
    }
}

/// The address to put in the URL: an unspecified bind address is reached over loopback.
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

async fn serve(
    listener: TcpListener,
    path: Option<Arc<str>>,
    completions: mpsc::UnboundedSender<Completion>,
    stop: CancellationToken,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (path, completions) = (path.clone(), completions.clone());
        let service = service_fn(move |request| {
            let (path, completions) = (path.clone(), completions.clone());
            async move { Ok::<_, Infallible>(receive(request, path.as_deref(), &completions).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(tcp), service);
        let watched = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = watched.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(CLOSE_WITHIN, graceful.shutdown()).await;
}

async fn receive(
    request: Request<Incoming>,
    path: Option<&str>,
    completions: &mpsc::UnboundedSender<Completion>,
) -> Response<Full<Bytes>> {
    if path.is_some_and(|p| request.uri().path() != p) {
        return answer(
            StatusCode::NOT_FOUND,
            "no completion is awaited at this path",
        );
    }
    if request.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "a completion is a POST");
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the completion: {error}"),
            );
        }
    };
    match outcome::completion(&parts.headers, body) {
        Ok((outcome, token)) => {
            // Delivery is at least once: a repeat finds the call gone and is still answered 200.
            let _ = completions.send(Completion { outcome, token });
            answer(StatusCode::OK, "")
        }
        Err(why) => answer(StatusCode::BAD_REQUEST, &why),
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}
