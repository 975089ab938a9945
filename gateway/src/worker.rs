//! A worker client: serves any Nexus HTTP handler (a tower service) from a gateway task queue.
//!
//! Each of `concurrency` loops long-polls
//! `POST /api/v1/namespaces/{ns}/task-queues/{tq}/nexus-tasks/poll`, turns the task back into
//! the caller's HTTP request (path from `Nexus-Task-Path`, headers and body as sent), calls the
//! handler, and posts its answer to `/api/v1/nexus-tasks/{token}/response`. Errors reconnect
//! with backoff; shutdown stops polling and lets running tasks finish.
//! [`HandlerUrl`] is such a handler that forwards to a Nexus HTTP handler at a URL.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tracing::{debug, info, warn};

use crate::client::HttpClient;
use crate::error::GatewayError;
use crate::nexus::{self, headers};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The gateway's base URL, e.g. `https://localhost:7443`.
    pub gateway: Uri,
    pub namespace: String,
    pub task_queue: String,
    /// Tasks handled at once, and so polls open at once (default 16).
    pub concurrency: usize,
    /// Long-poll length asked of the gateway (default 60 s).
    pub poll_timeout: Duration,
}

impl WorkerSettings {
    pub fn new(gateway: Uri, namespace: impl Into<String>, task_queue: impl Into<String>) -> Self {
        WorkerSettings {
            gateway,
            namespace: namespace.into(),
            task_queue: task_queue.into(),
            concurrency: 16,
            poll_timeout: Duration::from_secs(60),
        }
    }
}

/// A boxed future answering one Nexus request; what handlers given to [`Worker::run`] return.
pub type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Polls one task queue and serves its tasks with a handler.
pub struct Worker {
    settings: WorkerSettings,
    client: HttpClient,
}

/// A task as received from the gateway.
struct ReceivedTask {
    token: String,
    request: Request<Full<Bytes>>,
}

impl Worker {
    pub fn new(settings: WorkerSettings, client: HttpClient) -> Self {
        Worker { settings, client }
    }

    /// Serves tasks with `handler` until `shutdown` is cancelled; then waits for running tasks.
    /// The handler is any tower service from an HTTP request to a response, like a Nexus
    /// HTTP handler mounted at the endpoint's prefix.
    pub async fn run<S, B>(&self, handler: S, shutdown: CancellationToken)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: std::fmt::Display + Send,
        S::Future: Send,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        info!(
            namespace = %self.settings.namespace,
            task_queue = %self.settings.task_queue,
            concurrency = self.settings.concurrency,
            "worker polling"
        );
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..self.settings.concurrency.max(1) {
            let worker = Worker {
                settings: self.settings.clone(),
                client: self.client.clone(),
            };
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            loops.spawn(async move { worker.poll_loop(handler, shutdown).await });
        }
        while loops.join_next().await.is_some() {}
        info!("worker stopped");
    }

    async fn poll_loop<S, B>(&self, mut handler: S, shutdown: CancellationToken)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Error: std::fmt::Display + Send,
        S::Future: Send,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let mut failures = 0u32;
        let mut next: Option<ReceivedTask> = None;
        while !shutdown.is_cancelled() {
            let polled = match next.take() {
                Some(task) => Ok(Some(task)),
                None => tokio::select! {
                    polled = self.poll_once() => polled,
                    () = shutdown.cancelled() => break,
                },
            };
            match polled {
                Ok(Some(task)) => {
                    failures = 0;
                    let token = task.token.clone();
                    let response = call_handler(&mut handler, task.request).await;
                    // The answer also asks for the next task, unless we are stopping.
                    let poll_next = !shutdown.is_cancelled();
                    // On shutdown the long poll riding on the answer is abandoned; the answer
                    // itself went out at once and gets a moment to be read.
                    let stopping = async {
                        shutdown.cancelled().await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    };
                    tokio::select! {
                        answered = self.respond(&token, response, poll_next) => match answered {
                            Ok(task) => next = task,
                            Err(error) => warn!(%error, "could not deliver a task's answer"),
                        },
                        () = stopping => break,
                    }
                }
                Ok(None) => failures = 0,
                Err(error) => {
                    let delay = reconnect_delay(failures);
                    failures = failures.saturating_add(1);
                    warn!(%error, retry_in = ?delay, "poll failed");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }

    async fn poll_once(&self) -> Result<Option<ReceivedTask>, WorkerError> {
        let s = &self.settings;
        let uri = join(
            &s.gateway,
            &crate::request::poll_path(&encode(&s.namespace), &encode(&s.task_queue)),
        )?;
        let request = Request::post(uri)
            .header(
                headers::REQUEST_TIMEOUT,
                nexus::format_timeout(s.poll_timeout),
            )
            .body(Full::new(Bytes::new()))
            .map_err(WorkerError::Build)?;
        // The gateway answers 204 when the poll ends empty; allow it some slack.
        let response = tokio::time::timeout(
            s.poll_timeout + Duration::from_secs(10),
            self.client.request(request),
        )
        .await
        .map_err(|_| WorkerError::TimedOut("poll"))?
        .map_err(|e| WorkerError::Request("poll", e))?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| WorkerError::Body("poll", e))?
            .to_bytes();
        match status {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => task_from(parts.headers, body).map(Some),
            other => Err(WorkerError::Refused(
                other,
                String::from_utf8_lossy(&body).into_owned(),
            )),
        }
    }

    /// Posts a task's answer; with `poll_next`, returns the next task the gateway handed back.
    async fn respond(
        &self,
        token: &str,
        response: Response<Bytes>,
        poll_next: bool,
    ) -> Result<Option<ReceivedTask>, WorkerError> {
        let mut path = crate::request::respond_path(&encode(token));
        if poll_next {
            path.push_str(&format!(
                "?next-task-queue={}",
                encode(&self.settings.task_queue)
            ));
        }
        let uri = join(&self.settings.gateway, &path)?;
        let (parts, body) = response.into_parts();
        let mut request = Request::post(uri)
            .body(Full::new(body))
            .map_err(WorkerError::Build)?;
        nexus::copy_relayed(&parts.headers, request.headers_mut());
        request.headers_mut().insert(
            headers::TASK_STATUS,
            HeaderValue::from(parts.status.as_u16()),
        );
        if poll_next {
            request.headers_mut().insert(
                headers::REQUEST_TIMEOUT,
                HeaderValue::from_str(&nexus::format_timeout(self.settings.poll_timeout))
                    .expect("ascii"),
            );
        }
        let answer = tokio::time::timeout(
            self.settings.poll_timeout + Duration::from_secs(10),
            self.client.request(request),
        )
        .await
        .map_err(|_| WorkerError::TimedOut("answer"))?
        .map_err(|e| WorkerError::Request("answer", e))?;
        let status = answer.status();
        let (parts, body) = answer.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        match status {
            StatusCode::OK if poll_next => task_from(parts.headers, body).map(Some),
            s if s.is_success() => Ok(None),
            _ => Err(WorkerError::Refused(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            )),
        }
    }
}

fn task_from(mut h: HeaderMap, body: Bytes) -> Result<ReceivedTask, WorkerError> {
    let text = |h: &HeaderMap, name: &http::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| WorkerError::BadTask(format!("task without a {name} header")))
    };
    let token = text(&h, &headers::TASK_TOKEN)?;
    let path = text(&h, &headers::TASK_PATH)?;
    let uri: Uri = path
        .parse()
        .map_err(|e| WorkerError::BadTask(format!("bad task path {path:?}: {e}")))?;
    // Keep the caller's headers, the verified caller namespace and the time left; drop the
    // gateway's task bookkeeping.
    let internal: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with(headers::TASK_PREFIX))
        .cloned()
        .collect();
    for name in internal {
        h.remove(name);
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = h;
    Ok(ReceivedTask { token, request })
}

async fn call_handler<S, B>(handler: &mut S, request: Request<Full<Bytes>>) -> Response<Bytes>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Display,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let outcome = match handler.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            match body.collect().await {
                Ok(collected) => Response::from_parts(parts, collected.to_bytes()),
                Err(error) => failure_response(GatewayError::internal(format!(
                    "handler response body failed: {error}"
                ))),
            }
        }
        Err(error) => failure_response(GatewayError::internal(format!("handler failed: {error}"))),
    }
}

fn reconnect_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.min(7));
    let capped = base.min(Duration::from_secs(10));
    capped.mul_f64(rand::random_range(0.8..=1.0))
}

/// Percent-encodes one path segment.
pub fn encode(segment: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Why a poll or an answer did not go through (the worker logs it and reconnects).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot build the request: {0}")]
    Build(#[from] http::Error),
    #[error("{0} timed out")]
    TimedOut(&'static str),
    #[error("{0} request failed: {1}")]
    Request(&'static str, hyper_util::client::legacy::Error),
    #[error("{0} body: {1}")]
    Body(&'static str, hyper::Error),
    #[error("gateway answered {0}: {1}")]
    Refused(StatusCode, String),
    #[error("{0}")]
    BadTask(String),
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
}

/// `base` (scheme, authority and an optional path prefix) joined with an absolute path.
pub fn join(base: &Uri, path_and_query: &str) -> Result<Uri, WorkerError> {
    let prefix = base.path().trim_end_matches('/');
    let bad = |reason: String| WorkerError::BadPath {
        path: path_and_query.to_owned(),
        reason,
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        format!("{prefix}{path_and_query}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?,
    );
    Uri::from_parts(parts).map_err(|e| bad(e.to_string()))
}

/// A handler that forwards each task to a Nexus HTTP handler at a URL (the bridge behind
/// `nexus-gateway worker --handler-url`), within the task's `Request-Timeout`.
#[derive(Clone)]
pub struct HandlerUrl {
    base: Uri,
    client: HttpClient,
}

impl HandlerUrl {
    pub fn new(base: Uri, client: HttpClient) -> Self {
        HandlerUrl { base, client }
    }

    pub async fn forward(&self, request: Request<Full<Bytes>>) -> Response<Bytes> {
        let timeout = nexus::request_timeout(request.headers())
            .ok()
            .flatten()
            .unwrap_or(Duration::from_secs(60));
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = match join(&self.base, &path) {
            Ok(uri) => uri,
            Err(error) => return failure_response(GatewayError::bad_request(error.to_string())),
        };
        // Tell the handler the time left, as the caller would have.
        parts.headers.insert(
            headers::REQUEST_TIMEOUT,
            HeaderValue::from_str(&nexus::format_timeout(timeout)).expect("ascii"),
        );
        let request = Request::from_parts(parts, body);
        let sent = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::from_parts(parts, body))
        })
        .await;
        match sent {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                debug!(%error, base = %self.base, "handler unreachable");
                failure_response(GatewayError::unavailable(format!(
                    "Nexus handler at {} unreachable: {error}",
                    self.base
                )))
            }
            Err(_) => failure_response(GatewayError::upstream_timeout(format!(
                "Nexus handler at {} did not answer within {timeout:?}",
                self.base
            ))),
        }
    }
}

impl Service<Request<Full<Bytes>>> for HandlerUrl {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await.map(Full::new)) })
    }
}

/// A gateway-generated Nexus failure as a buffered response.
pub fn failure_response(error: GatewayError) -> Response<Bytes> {
    let (parts, _) = error.clone().into_response().into_parts();
    Response::from_parts(parts, error.failure_json())
}
