//! Test support for nexus-gateway's end-to-end tests: a gateway on 127.0.0.1:0 with a fresh
//! PKI and data directory, clients with certificates of any identity, a reference Nexus HTTP
//! handler, and bounded request helpers. Every wait here is bounded.

mod h1_caller;
pub use h1_caller::{H1_READ_TIMEOUT, H1Answer, H1Caller, echo_gateway, raw_post};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use nexus_certs::{Ca, Identity, TlsMaterial};
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};
use nexus_gateway::worker::{Worker, WorkerSettings, failure_response};
use nexus_gateway::{App, Config, ErrorType, GatewayError};
use nexus_registry::{Endpoint, EndpointSpec, Registry, Target};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TRUST_DOMAIN: &str = nexus_gateway::config::DEFAULT_TRUST_DOMAIN;
/// Upper bound for any single request in a test.
pub const REQUEST_BOUND: Duration = Duration::from_secs(30);

/// A CA that issues server and client certificates for one test.
pub struct Pki {
    pub ca: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            ca: Ca::generate("nexus-gateway test CA").expect("CA"),
        }
    }

    pub fn server(&self) -> TlsMaterial {
        let names = ["localhost", "127.0.0.1"].map(String::from);
        self.ca
            .issue_server(&names)
            .expect("server cert")
            .material(&self.ca)
            .expect("material")
    }

    pub fn client_material(&self, identity: &Identity) -> TlsMaterial {
        self.uri_material(&identity.uri(TRUST_DOMAIN))
    }

    /// A client certificate with an arbitrary URI SAN (for identity errors).
    pub fn uri_material(&self, uri: &str) -> TlsMaterial {
        self.ca
            .issue_client(uri)
            .expect("client cert")
            .material(&self.ca)
            .expect("material")
    }

    /// A client certificate with several URI SANs.
    pub fn uris_material(&self, uris: &[&str]) -> TlsMaterial {
        self.ca
            .issue_client_with_uris(uris)
            .expect("client cert")
            .material(&self.ca)
            .expect("material")
    }

    pub fn client(&self, identity: &Identity) -> HttpClient {
        http_client(&self.client_material(identity), HttpVersions::Any).expect("client")
    }

    /// Writes the CA and a certificate for `identity` as PEM files into `dir`; returns
    /// (ca, cert, key) paths.
    pub fn write_files(&self, dir: &Path, identity: &Identity) -> (PathBuf, PathBuf, PathBuf) {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, self.ca.cert_pem()).expect("write ca");
        let name = format!("{}-{}", identity.kind(), identity.name());
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        self.ca
            .issue_client(&identity.uri(TRUST_DOMAIN))
            .expect("client cert")
            .save(&cert, &key)
            .expect("save");
        (ca, cert, key)
    }
}

/// A client that presents no certificate at all.
pub fn anonymous_client(gw: &TestGateway) -> nexus_gateway::client::HttpClient {
    let roots = {
        let mut store = rustls::RootCertStore::empty();
        store.add(gw.pki.ca.cert_der()).unwrap();
        store
    };
    let config = rustls::ClientConfig::builder_with_provider(nexus_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

pub fn ns(name: &str) -> Identity {
    Identity::Namespace(name.into())
}

pub fn admin() -> Identity {
    Identity::Admin("root".into())
}

/// A gateway serving in this process on loopback ports chosen by the OS.
pub struct TestGateway {
    pub data_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub pki: Arc<Pki>,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        let mut gw = Self::start_in(Arc::new(Pki::new()), &data_dir, tweak).await;
        gw._dir = Some(dir);
        gw
    }

    /// Starts on an existing data directory (restarts keep the registry).
    pub async fn start_in(pki: Arc<Pki>, data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::new(pki.server(), data_dir.to_path_buf());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.ops_listen = "127.0.0.1:0".parse().unwrap();
        config.shutdown_grace = Duration::from_secs(5);
        // Test callers' callback receivers listen on loopback, as under `dev`.
        config.callbacks.allowed = nexus_gateway::callback_policy::AllowedCallback::loopback();
        tweak(&mut config);
        let app = App::build(config).await.expect("gateway starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let data_addr = app.data_addr();
        let ops_addr = app.ops_addr();
        let registry = app.registry();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        TestGateway {
            data_addr,
            ops_addr,
            registry,
            pki,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the gateway and waits (bounded) until it has shut down; keeps the data directory.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("gateway stops in time")
                .expect("gateway task");
        }
    }

    pub fn base(&self) -> Uri {
        format!("https://localhost:{}", self.data_addr.port())
            .parse()
            .unwrap()
    }

    pub fn uri(&self, path: &str) -> Uri {
        format!("https://localhost:{}{path}", self.data_addr.port())
            .parse()
            .unwrap()
    }

    pub fn client(&self, identity: &Identity) -> HttpClient {
        self.pki.client(identity)
    }

    /// Flags that point the `nexus-gateway` CLI at this gateway with a certificate of
    /// `identity`, whose files are written into `dir`.
    pub fn cli_flags(&self, identity: &Identity, dir: &Path) -> Vec<String> {
        let (ca, cert, key) = self.pki.write_files(dir, identity);
        let mut flags = vec![
            "--gateway".to_owned(),
            format!("https://localhost:{}", self.data_addr.port()),
        ];
        for (flag, path) in [("--ca", ca), ("--cert", cert), ("--key", key)] {
            flags.push(flag.to_owned());
            flags.push(path.display().to_string());
        }
        flags
    }

    /// Creates an endpoint targeting task queue `task_queue` of `namespace`.
    pub fn worker_endpoint(
        &self,
        name: &str,
        namespace: &str,
        task_queue: &str,
        callers: &[&str],
    ) -> Arc<Endpoint> {
        self.registry
            .create(EndpointSpec {
                name: name.into(),
                description: String::new(),
                target: Target::Worker {
                    namespace: namespace.into(),
                    task_queue: task_queue.into(),
                },
                allowed_caller_namespaces: callers.iter().map(|c| c.to_string()).collect(),
            })
            .expect("create endpoint")
    }

    /// Runs a worker of `namespace` on `task_queue` serving [`reference_handler`].
    pub fn start_worker(&self, namespace: &str, task_queue: &str) -> WorkerHandle {
        self.start_worker_with(namespace, task_queue, tower::service_fn(reference_handler))
    }

    /// Runs a worker of `namespace` on `task_queue` serving `handler`.
    pub fn start_worker_with<S>(
        &self,
        namespace: &str,
        task_queue: &str,
        handler: S,
    ) -> WorkerHandle
    where
        S: tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>
            + Clone
            + Send
            + 'static,
        S::Error: std::fmt::Display + Send,
        S::Future: Send,
    {
        let mut settings = WorkerSettings::new(self.base(), namespace, task_queue);
        settings.concurrency = 4;
        settings.poll_timeout = Duration::from_secs(5);
        let worker = Worker::new(settings, self.client(&ns(namespace)));
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            worker.run(handler, token).await;
        });
        WorkerHandle {
            stop,
            task: Some(task),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct WorkerHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub version: http::Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `message` of a Nexus failure body.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `details.type` of a gateway HandlerError.
    pub fn error_type(&self) -> String {
        self.json()["details"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole answer, within [`REQUEST_BOUND`].
pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Reply {
    try_send(client, request).await.expect("request failed")
}

pub async fn try_send(client: &HttpClient, request: Request<Full<Bytes>>) -> Result<Reply, String> {
    tokio::time::timeout(REQUEST_BOUND, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            version: parts.version,
            status: parts.status,
            headers: parts.headers,
            body,
        })
    })
    .await
    .map_err(|_| "request not answered in time".to_string())?
}

/// The TLS alert somewhere in `error`'s source chain: a `rustls::Error::AlertReceived`, on its
/// own or inside an `std::io::Error`.
pub fn alert_in(error: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return Some(*alert);
        }
        next = e.source();
    }
    None
}

/// Sends a request the gateway must refuse during the TLS handshake; returns the alert the
/// client received (panics on an answer, or on a failure that carries no alert). Use an
/// HTTP/1.1 client: over HTTP/2, `h2` keeps only the text of an I/O error, not the
/// `rustls::Error` in it.
pub async fn handshake_alert(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> rustls::AlertDescription {
    let result = tokio::time::timeout(REQUEST_BOUND, client.request(request))
        .await
        .expect("handshake refused in time");
    let error = match result {
        Ok(response) => panic!("answered {} instead of refused", response.status()),
        Err(error) => error,
    };
    alert_in(&error).unwrap_or_else(|| panic!("no TLS alert in {error:?}"))
}

/// A port on 127.0.0.1 that is bound but not listening: connections to it are refused, and
/// no one else can take it until the socket is dropped or turned into a listener.
pub fn reserved_port() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket
}

/// A POST with a body and headers.
pub fn post(uri: Uri, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut builder = Request::post(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(body.into())).unwrap()
}

/// The reference Nexus HTTP handler used by the tests, mounted below an endpoint prefix.
/// Service `svc`:
/// - `echo`: 200, the input and its content type
/// - `headers`: 200, JSON `{"path": ..., "headers": {name: value}}` of what it received
/// - `async`: 201 `{"token":"op-<request id>","state":"running"}`
/// - `fail` / `cancelled`: 424 with a Failure and `Nexus-Operation-State: failed|canceled`
/// - `error-<TYPE>`: a typed HandlerError of that type with its status
/// - `slow`: waits `x-delay-ms` then 200
/// - `{op}/cancel` and `{op}/{token}/cancel`: 202, echoing the token in `x-seen-token`
pub async fn reference_handler(
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut response = Response::new(Bytes::new());
    match segments.as_slice() {
        ["svc", "echo"] => {
            *response.body_mut() = body;
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, ct.clone());
            }
        }
        ["svc", "headers"] => {
            let mut seen = serde_json::Map::new();
            for (k, v) in &parts.headers {
                seen.insert(k.to_string(), String::from_utf8_lossy(v.as_bytes()).into());
            }
            let out = serde_json::json!({"path": path, "query": query, "headers": seen, "body": String::from_utf8_lossy(&body)});
            *response.body_mut() = Bytes::from(out.to_string());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        }
        ["svc", "async"] => {
            let id = parts
                .headers
                .get("nexus-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            *response.status_mut() = StatusCode::CREATED;
            *response.body_mut() = Bytes::from(
                serde_json::json!({"token": format!("op-{id}"), "state": "running"}).to_string(),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            response.headers_mut().insert("nexus-link", "<temporal:///namespaces/h/workflows/w>; type=\"temporal.api.common.v1.Link.WorkflowEvent\"".parse().unwrap());
        }
        ["svc", state @ ("fail" | "cancelled")] => {
            let state = if *state == "fail" {
                "failed"
            } else {
                "canceled"
            };
            *response.status_mut() = StatusCode::from_u16(424).unwrap();
            *response.body_mut() = Bytes::from(serde_json::json!({"message": format!("operation {state}"), "details": {"code": 7}}).to_string());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            response
                .headers_mut()
                .insert("nexus-operation-state", state.parse().unwrap());
        }
        ["svc", op] if op.starts_with("error-") => {
            let kind = error_type(&op["error-".len()..]).unwrap_or(ErrorType::Internal);
            response = failure_response(GatewayError::new(
                kind,
                format!("handler says {}", kind.as_str()),
            ));
            response
                .headers_mut()
                .insert("temporal-nexus-failure-source", "handler".parse().unwrap());
        }
        ["svc", "slow"] => {
            let ms = parts
                .headers
                .get("x-delay-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            *response.body_mut() = Bytes::from_static(b"done");
        }
        ["svc", _, "cancel"] | ["svc", _, _, "cancel"] => {
            *response.status_mut() = StatusCode::ACCEPTED;
            let token = match segments.as_slice() {
                ["svc", _, token, "cancel"] => Some(token.to_string()),
                _ => parts
                    .headers
                    .get("nexus-operation-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            };
            if let Some(token) = token {
                response
                    .headers_mut()
                    .insert("x-seen-token", token.parse().unwrap());
            }
        }
        _ => {
            response = failure_response(GatewayError::not_found(format!("no operation at {path}")))
        }
    }
    Ok(response.map(Full::new))
}

pub fn error_type(name: &str) -> Option<ErrorType> {
    ALL_ERROR_TYPES.iter().copied().find(|t| t.as_str() == name)
}

pub const ALL_ERROR_TYPES: [ErrorType; 11] = ErrorType::ALL;

/// Serves [`reference_handler`] over plain HTTP/1.1 on 127.0.0.1:0, as an ordinary Nexus HTTP
/// handler would be deployed. Returns its address; stops when the handle is dropped.
pub async fn serve_reference_handler() -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                () = token.cancelled() => break,
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        reference_handler(Request::from_parts(parts, Full::new(body))).await
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

/// Waits (bounded) until `probe` returns true, checking every 20 ms.
pub async fn eventually(what: &str, bound: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not true within {bound:?}");
}

impl TestGateway {
    /// Creates an endpoint targeting an external Nexus HTTP handler at `url`.
    pub fn external_endpoint(&self, name: &str, url: &str, callers: &[&str]) -> Arc<Endpoint> {
        self.registry
            .create(EndpointSpec {
                name: name.into(),
                description: String::new(),
                target: Target::External { url: url.into() },
                allowed_caller_namespaces: callers.iter().map(|c| c.to_string()).collect(),
            })
            .expect("create endpoint")
    }

    /// Both kinds of target, callable by namespace `orders`: endpoint `payments` serves task
    /// queue `charges` of namespace `billing` (its worker is running), endpoint `quotes` the
    /// reference handler. Returns the worker, the handler's address and what stops it.
    pub async fn both_targets(&self) -> (WorkerHandle, SocketAddr, CancellationToken) {
        self.worker_endpoint("payments", "billing", "charges", &["orders"]);
        let worker = self.start_worker("billing", "charges");
        let (handler, stop) = serve_reference_handler().await;
        self.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);
        (worker, handler, stop)
    }
}

/// A request captured by a [`Receiver`].
#[derive(Debug, Clone)]
pub struct Captured {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP server on 127.0.0.1 that records every request and answers with the status that
/// `status` currently holds and the body `body` holds (a caller's callback receiver, say).
/// Stops on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub body: Arc<std::sync::Mutex<Bytes>>,
    pub captured: tokio::sync::mpsc::UnboundedReceiver<Captured>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, status)
    }

    /// Starts listening on a port held by [`reserved_port`] (a receiver that was down).
    pub async fn start_on(socket: tokio::net::TcpSocket, status: u16) -> Receiver {
        Self::serve(socket.listen(1024).unwrap(), status)
    }

    fn serve(listener: tokio::net::TcpListener, status: u16) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(status));
        let body = Arc::new(std::sync::Mutex::new(Bytes::new()));
        let (tx, captured) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let answer = status.clone();
        let answer_body = body.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    () = token.cancelled() => break,
                };
                let tx = tx.clone();
                let answer = answer.clone();
                let answer_body = answer_body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                            let reply = answer_body.lock().unwrap().clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let _ = tx.send(Captured {
                                    path: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                let mut response = Response::new(Full::new(reply));
                                *response.status_mut() = StatusCode::from_u16(code).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            status,
            body,
            captured,
            stop,
        }
    }

    pub fn set_status(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_body(&self, body: &'static str) {
        *self.body.lock().unwrap() = Bytes::from_static(body.as_bytes());
    }

    /// The next captured request, waiting at most `bound`.
    pub async fn next(&mut self, bound: Duration) -> Option<Captured> {
        tokio::time::timeout(bound, self.captured.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A destination that accepts connections and never answers. Returns its address and a
/// counter of connections accepted.
pub async fn stalled_server() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    CancellationToken,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, token) = (accepted.clone(), stop.clone());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((tcp, _)) = listener.accept() => {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    held.push(tcp);
                }
                () = token.cancelled() => break,
            }
        }
    });
    (addr, accepted, stop)
}

impl TestGateway {
    /// GET on the plain-HTTP ops port: (status, body).
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let uri: Uri = format!("http://{}{path}", self.ops_addr).parse().unwrap();
        let response = tokio::time::timeout(REQUEST_BOUND, client.get(uri))
            .await
            .unwrap()
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl TestGateway {
    /// The ops port's URL of `path`.
    pub fn ops_uri(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.ops_addr).parse().unwrap()
    }

    /// Any request to the plain-HTTP ops port, within [`REQUEST_BOUND`].
    pub async fn ops_send(&self, request: Request<Full<Bytes>>) -> Reply {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let response = tokio::time::timeout(REQUEST_BOUND, client.request(request))
            .await
            .expect("ops port answers in time")
            .expect("ops port request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("ops port body").to_bytes();
        Reply {
            version: parts.version,
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Records of the metering API after `after`, at most `limit`, as JSON values.
pub async fn attribution_events(
    gw: &TestGateway,
    after: u64,
    limit: usize,
) -> Vec<serde_json::Value> {
    let request = Request::get(gw.uri(&format!(
        "/api/v1/attribution/events?after={after}&limit={limit}"
    )))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let reply = send(
        &gw.client(&Identity::Metering("billing-pipeline".into())),
        request,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Accepts connections on `listener` until `stop`, counting them in `connections` and
/// serving each with `serve` on a task of its own: the loop of the tests' scripted servers.
pub fn accept_each<F, Fut>(
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                Ok((tcp, _)) = listener.accept() => tcp,
                () = stop.cancelled() => break,
            };
            connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
}

/// A plain-HTTP server on 127.0.0.1 that answers 200 to every request whose body arrived
/// whole, and counts what reached it: connections, whole requests (with their body
/// lengths) and requests whose body was cut off.
pub struct CountingServer {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub completed: Arc<std::sync::Mutex<Vec<usize>>>,
    pub aborted: Arc<std::sync::atomic::AtomicUsize>,
    /// Signalled after every request, whole or cut.
    pub seen: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

impl CountingServer {
    pub async fn start() -> CountingServer {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = CountingServer {
            addr: listener.local_addr().unwrap(),
            connections: Default::default(),
            completed: Default::default(),
            aborted: Default::default(),
            seen: Default::default(),
            stop: CancellationToken::new(),
        };
        let (completed, aborted, seen) = (
            server.completed.clone(),
            server.aborted.clone(),
            server.seen.clone(),
        );
        let (stop, connections) = (server.stop.clone(), server.connections.clone());
        accept_each(listener, stop, connections, move |tcp| {
            let (completed, aborted, seen) = (completed.clone(), aborted.clone(), seen.clone());
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (completed, aborted, seen) =
                        (completed.clone(), aborted.clone(), seen.clone());
                    async move {
                        match request.into_body().collect().await {
                            Ok(body) => completed.lock().unwrap().push(body.to_bytes().len()),
                            Err(_) => {
                                aborted.fetch_add(1, SeqCst);
                            }
                        }
                        seen.notify_one();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            }
        });
        server
    }

    pub fn completed(&self) -> Vec<usize> {
        self.completed.lock().unwrap().clone()
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sealed callback URL in a query string the gateway rewrote (`callback=<encoded URL>`
/// first, as the gateway leaves it).
pub fn sealed_callback(query: &str) -> String {
    let encoded = query
        .strip_prefix("callback=")
        .expect("the query starts with the callback parameter");
    let encoded = encoded.split('&').next().unwrap_or_default();
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .expect("UTF-8")
        .into_owned()
}

/// [`sealed_callback`] of the query the reference handler echoes back from a start.
pub fn sealed_callback_seen_by(reply: &Reply) -> String {
    sealed_callback(
        reply.json()["query"]
            .as_str()
            .expect("the handler echoes the query"),
    )
}

/// A PostgreSQL database of its own for one test, dropped at the end. Needs a server:
/// `bash .ci/postgres` starts one (or set NEXUS_TEST_POSTGRES to an admin URL whose role may
/// create databases).
pub struct TestDb {
    admin: String,
    name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        // The blocking client must not run on an async worker: its own thread.
        std::thread::spawn(Self::create)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    fn create() -> TestDb {
        let admin = std::env::var("NEXUS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://nexus:nexus@127.0.0.1:5432/postgres".into());
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin}: {e}. Start one with `bash .ci/postgres` \
                 (installs Debian's postgresql, starts it, creates role nexus), or set \
                 NEXUS_TEST_POSTGRES to a server whose role may create databases"
            )
        });
        let name = format!("nexus_e2e_{:032x}", rand_u128());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        let (base, _) = admin.rsplit_once('/').expect("a database in the URL");
        let url = format!("{base}/{name}");
        TestDb { admin, name, url }
    }

    /// Drops the database now, as if the store went away (connections are closed).
    pub fn drop_now(&self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        std::thread::spawn(move || drop_database(&admin, &name))
            .join()
            .unwrap();
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || drop_database(&admin, &name)).join();
    }
}

fn drop_database(admin: &str, name: &str) {
    if let Ok(mut client) = postgres::Client::connect(admin, postgres::NoTls) {
        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    (u128::from(h.finish()) << 64) | u128::from(std::process::id())
}

/// Whether `seen` holds a whole request head and the body its content-length announces.
pub fn request_is_whole(seen: &[u8]) -> bool {
    let text = String::from_utf8_lossy(seen);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    seen.len() >= end + 4 + length
}
