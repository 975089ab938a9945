//! The listeners: the mTLS data port and the plain ops port, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nexus_registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::authz::Peer;
use crate::closing::{Connections, Open};
use crate::config::Config;
use crate::matching::Matching;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] nexus_certs::CertError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    Registry(#[from] nexus_registry::RegistryError),
    #[error("callbacks: {0}")]
    Callbacks(#[from] crate::callbacks::OpenError),
    #[error("attribution log: {0}")]
    Attribution(#[from] crate::attribution::AttributionError),
}

/// The gateway's own addresses, which callbacks may never reach: the specific addresses
/// it listens on (loopback and private ones are refused anyway).
fn own_addresses(config: &Config) -> Vec<std::net::IpAddr> {
    [config.listen.ip(), config.ops_listen.ip()]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

/// This replica's id: random, made once and kept in the data directory, so its log's
/// `(replica, seq)` stays unique across restarts.
fn replica_id(data_dir: &std::path::Path) -> Result<String, StartError> {
    let path = data_dir.join("replica-id");
    let fail = |source| StartError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = format!("r-{:08x}", rand::random::<u32>());
            std::fs::write(&path, format!("{id}\n")).map_err(fail)?;
            Ok(id)
        }
    }
}

/// The registry; with a shared store, the callback key text and this replica's own handle.
type OpenedStore = (
    Arc<Registry>,
    Option<String>,
    Option<Arc<nexus_registry::pg::PgStore>>,
);

/// The registry and, with a shared store, the callback keys every replica uses. The shared
/// store's client blocks, so it is opened off the async workers.
async fn open_store(config: &Config) -> Result<OpenedStore, StartError> {
    let Some(pg) = config.store.postgres() else {
        let registry = Registry::open(&config.data_dir.join("registry.redb"))?;
        return Ok((Arc::new(registry), None, None));
    };
    tokio::task::spawn_blocking(move || {
        let side = nexus_registry::pg::PgStore::open(pg.clone())?;
        let keys = side.shared_secret("callback-keys", || {
            crate::callback_token::CallbackKeys::generate().unwrap_or_default()
        })?;
        let registry = Registry::new(nexus_registry::pg::PgStore::open(pg)?)?;
        Ok((Arc::new(registry), Some(keys), Some(Arc::new(side))))
    })
    .await
    .map_err(|e| StartError::Registry(nexus_registry::RegistryError::Storage(e.to_string())))?
}

/// Keeps the registry of a replica current: refreshed on every change notification of the
/// shared store (own thread: the listener blocks) and every `resync_interval` in case one was
/// missed. Records whether the store answered, for `/readyz`.
fn follow_shared_store(
    state: &Arc<State>,
    settings: &crate::config::StoreSettings,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(pg) = settings.postgres() else {
        return Vec::new();
    };
    state.store_stats.shared.store(true, Ordering::Relaxed);
    let listener = state.clone();
    std::thread::Builder::new()
        .name("store-listener".into())
        .spawn(move || {
            let stats = &listener.store_stats;
            nexus_registry::pg::listen(
                &pg,
                std::time::Duration::from_secs(1),
                || listener.shutdown.is_cancelled(),
                |lag| {
                    if let Some(lag) = lag {
                        stats.notifications.fetch_add(1, Ordering::Relaxed);
                        stats
                            .notify_lag_micros
                            .store(lag.as_micros() as u64, Ordering::Relaxed);
                    }
                    match listener.registry.refresh() {
                        Ok(true) => {
                            stats.refreshes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(error) => {
                            stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
                            warn!(%error, "registry refresh after a change notification failed");
                        }
                    }
                },
            )
        })
        .expect("spawn the store listener");
    let presence = tokio::spawn(announce_pollers(state.clone()));
    let state = state.clone();
    let interval = settings.resync_interval;
    vec![
        presence,
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let checking = state.clone();
                let started = std::time::Instant::now();
                let result =
                    tokio::task::spawn_blocking(move || check_store(&checking, interval)).await;
                let stats = &state.store_stats;
                stats
                    .last_check_micros
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                let healthy = matches!(result, Ok(Ok(())));
                if !healthy {
                    stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
                }
                if !healthy && state.store_healthy.swap(false, Ordering::SeqCst) {
                    warn!("the shared store does not answer: routing goes on from memory");
                } else if healthy && !state.store_healthy.swap(true, Ordering::SeqCst) {
                    info!("the shared store answers again");
                }
            }
        }),
    ]
}

/// How often a replica looks at which queues its workers poll, and learns the others'.
const PRESENCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often it rewrites its announcement when nothing changed (a heartbeat); others trust an
/// announcement for three of these.
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps this replica's task queues announced in the shared store and the other replicas'
/// in memory, so a task for a queue without a local worker can be forwarded (see
/// [`crate::replica_forward`]) without a database read on the request path. The
/// announcement is written when the set of queues changes, else once per [`ANNOUNCE_EVERY`].
async fn announce_pollers(state: Arc<State>) {
    let Some((store, replica)) = state.shared_store.clone() else {
        return;
    };
    let url = state.callbacks.public_url().to_owned();
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    let mut announced: Option<(Vec<(String, String)>, std::time::Instant)> = None;
    loop {
        tick.tick().await;
        let mut queues: Vec<(String, String)> = state
            .matching
            .polled_queues(PRESENCE_EVERY * 4)
            .into_iter()
            .map(|k| (k.namespace.to_string(), k.task_queue.to_string()))
            .collect();
        queues.sort();
        let stale = announced
            .as_ref()
            .is_none_or(|(last, at)| *last != queues || at.elapsed() >= ANNOUNCE_EVERY);
        let (store, replica, url) = (store.clone(), replica.clone(), url.clone());
        let write = stale.then(|| queues.clone());
        let result = tokio::task::spawn_blocking(move || {
            if let Some(queues) = &write {
                store.announce_pollers(&replica, &url, queues)?;
            }
            store.remote_pollers(&replica, ANNOUNCE_EVERY * 3)
        })
        .await;
        let Ok(Ok(remote)) = result else {
            continue;
        };
        if stale {
            announced = Some((queues, std::time::Instant::now()));
        }
        let mut by_queue: std::collections::HashMap<crate::matching::QueueKey, Vec<String>> =
            Default::default();
        for (namespace, task_queue, url) in remote {
            let key = crate::matching::QueueKey {
                namespace: namespace.into(),
                task_queue: task_queue.into(),
            };
            by_queue.entry(key).or_default().push(url);
        }
        state.remote_pollers.store(Arc::new(by_queue));
    }
}

/// One periodic check: refresh what a lost notification would have brought, and announce
/// this replica (counting those seen within three intervals).
fn check_store(
    state: &State,
    interval: std::time::Duration,
) -> Result<(), nexus_registry::RegistryError> {
    if state.registry.refresh()? {
        state.store_stats.refreshes.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((store, replica)) = &state.shared_store {
        let seen = store.heartbeat(replica, interval * 3)?;
        state
            .store_stats
            .replicas_seen
            .store(seen, Ordering::Relaxed);
    }
    Ok(())
}

/// A gateway with its ports bound, ready to [`App::run`].
pub struct App {
    data: TcpListener,
    ops: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    state: Arc<State>,
    config: Config,
}

impl App {
    /// Opens the registry and binds every port before returning, so callers (and tests) can
    /// read the real addresses.
    ///
    /// The ports are bound and TLS checked before the data directory is touched, so a start
    /// that fails on those (port in use, say) leaves nothing behind on disk.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let tls = Arc::new(ArcSwap::from_pointee(nexus_certs::server_config_with(
            &config.tls,
            config.client_auth,
        )?));
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let data = bind(config.listen).await?;
        let ops = bind(config.ops_listen).await?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let (registry, shared_keys, side_store) = open_store(&config).await?;
        let replica = match config.store.url {
            Some(_) => Some(replica_id(&config.data_dir)?),
            None => None,
        };
        let shared = match (shared_keys, &replica, config.store.postgres()) {
            (Some(keys), Some(owner), Some(pg)) => Some(crate::callbacks::SharedStore {
                keys,
                spool: Arc::new(nexus_outbound_queue::PgSpool::new(
                    Box::new(move || pg.connect().map_err(|e| e.to_string())),
                    owner.clone(),
                    config.store.lease,
                )),
                lease: config.store.lease,
            }),
            _ => None,
        };
        let data_addr = data.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let public_url = config.public_url.clone().unwrap_or_else(|| {
            if data_addr.ip().is_loopback() {
                format!("https://localhost:{}", data_addr.port())
            } else {
                format!("https://{data_addr}")
            }
        });
        let mut upstream_tls = config.tls.clone();
        if let Some(ca) = &config.upstream.ca {
            upstream_tls.ca = ca.clone();
        }
        // The collector is reached like an external handler: the same CA and client identity.
        let telemetry = match &config.tracing.otlp_endpoint {
            Some(_) => crate::telemetry::Telemetry::start(
                &config.tracing,
                crate::client::http_client(&upstream_tls, crate::client::HttpVersions::Any)?,
            ),
            None => None,
        };
        let outbound = Arc::new(nexus_outbound_queue::OutboundQueue::new(
            config.outbound.clone(),
        ));
        let shutdown = tokio_util::sync::CancellationToken::new();
        // Opening reads the spool, which may be the shared store's blocking client.
        let callbacks = {
            let (data_dir, settings, own) = (
                config.data_dir.clone(),
                config.callbacks.clone(),
                own_addresses(&config),
            );
            let (upstream_tls, outbound, shutdown, telemetry) = (
                upstream_tls.clone(),
                outbound.clone(),
                shutdown.clone(),
                telemetry.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::callbacks::Callbacks::open(
                    &data_dir,
                    shared,
                    public_url,
                    settings,
                    &upstream_tls,
                    own,
                    outbound,
                    shutdown,
                    telemetry,
                )
            })
            .await
            .map_err(|e| {
                StartError::Registry(nexus_registry::RegistryError::Storage(e.to_string()))
            })??
        };
        let attribution = if config.attribution_enabled {
            let mut settings = config.attribution.clone();
            settings.dir = config.data_dir.join("attribution");
            settings.replica = replica.clone();
            Some(crate::attribution::AttributionLog::open(settings)?)
        } else {
            None
        };
        let proxy = crate::proxy_client::ProxyClient::new(&upstream_tls)?;
        let state = Arc::new(State {
            registry,
            matching: Matching::new(config.matching.clone()),
            limits: config.limits.clone(),
            trust_domain: config.trust_domain.clone(),
            metrics: Metrics::default(),
            outbound,
            proxy,
            upstream: config.upstream.clone(),
            callbacks: Arc::new(callbacks),
            tls_reloads: Default::default(),
            inbound: crate::inbound::InboundLimits::new(config.inbound.clone()),
            attribution,
            shutdown,
            ready: std::sync::atomic::AtomicBool::new(false),
            store_healthy: std::sync::atomic::AtomicBool::new(true),
            store_stats: crate::metrics::StoreStats::default(),
            shared_store: side_store.zip(replica),
            remote_pollers: Default::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            in_flight: tokio::sync::watch::channel(0).0,
            console: config.console,
            usage_chart: Default::default(),
            telemetry,
        });
        Ok(App {
            data,
            ops,
            tls,
            state,
            config,
        })
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data.local_addr().expect("bound listener")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr().expect("bound listener")
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// within the grace period, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let App {
            data,
            ops,
            tls,
            state,
            config,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.header_read_timeout)
            .max_headers(config.limits.max_headers)
            .max_buf_size(config.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(config.limits.max_header_bytes as u32)
            .max_concurrent_streams(1000);
        let builder = Arc::new(Builders {
            http1: builder.clone().http1_only(),
            http2: builder.http2_only(),
        });
        let by_hand = Arc::new(crate::server_h1::Limits {
            header_read_timeout: config.limits.header_read_timeout,
            body_read_timeout: config.limits.body_read_timeout,
            max_headers: config.limits.max_headers,
            max_head_bytes: config.limits.max_header_bytes.max(8192),
        });
        let connections = Connections::default();
        let ops_task = tokio::spawn(serve_ops(
            ops,
            state.clone(),
            config.limits.header_read_timeout,
        ));
        state.callbacks.resume();
        let store_tasks = follow_shared_store(&state, &config.store);
        let evict_task = tokio::spawn(evict_idle_lanes(state.clone()));
        let reload_task = config.tls_files.clone().map(|files| {
            tokio::spawn(crate::reload::watch(
                files,
                tls.clone(),
                state.tls_reloads.clone(),
                config.tls_reload_interval,
                config.client_auth,
            ))
        });
        state.ready.store(true, Ordering::SeqCst);
        info!(data = %data.local_addr().expect("bound"), "serving");

        tokio::pin!(shutdown);
        // Draining keeps accepting connections: workers must still be able to deliver the
        // answers of in-flight operations, and may still pick up tasks already queued.
        let mut drain_until = None;
        loop {
            tokio::select! {
                accepted = data.accept() => {
                    let (tcp, remote) = match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            warn!(%error, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Each connection takes the certificate current at its accept.
                    let acceptor = TlsAcceptor::from(tls.load_full());
                    let conn = serve_connection(
                        tcp, remote, acceptor, state.clone(), builder.clone(),
                        by_hand.clone(), connections.open(),
                    );
                    tokio::spawn(conn.instrument(debug_span!("conn", %remote)));
                }
                () = &mut shutdown, if drain_until.is_none() => {
                    info!("shutting down: refusing new operations, draining in-flight ones");
                    state.ready.store(false, Ordering::SeqCst);
                    state.draining.store(true, Ordering::SeqCst);
                    drain_until = Some(tokio::time::Instant::now() + config.shutdown_grace);
                }
                () = state.operations_idle(), if drain_until.is_some() => break,
                () = sleep_until_some(drain_until) => {
                    warn!(grace = ?config.shutdown_grace, "grace period over; closing remaining requests");
                    break;
                }
            }
        }
        drop(data);
        // Long polls end now (answered 204) so workers reconnect elsewhere.
        state.shutdown.cancel();
        let close_within = drain_until
            .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or_default()
            .max(std::time::Duration::from_secs(1));
        connections.close_all();
        if tokio::time::timeout(close_within, connections.all_closed())
            .await
            .is_err()
        {
            warn!("connections still open at the end of the grace period; closing them");
        }
        if let Some(log) = &state.attribution
            && let Err(error) = log.flush().await
        {
            warn!(%error, "attribution log flush failed");
        }
        if let Some(telemetry) = &state.telemetry {
            telemetry.flush(std::time::Duration::from_secs(5)).await;
        }
        ops_task.abort();
        evict_task.abort();
        for task in store_tasks {
            task.abort();
        }
        if let Some(task) = reload_task {
            task.abort();
        }
        let _ = ops_task.await;
        let _ = evict_task.await;
        info!("stopped");
    }
}

/// Drops lanes of destinations not used for a while, so memory stays bounded.
async fn evict_idle_lanes(state: Arc<State>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        state.outbound.evict_idle();
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// hyper's servers, configured alike: one for each protocol a connection may be handed in.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    builder: Arc<Builders>,
    by_hand: Arc<crate::server_h1::Limits>,
    open: Open,
) {
    let _ = tcp.set_nodelay(true);
    let accepted = state.telemetry.is_some().then(std::time::SystemTime::now);
    let tls = match tokio::time::timeout(state.limits.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let reason = crate::handshakes::Reason::of(&error);
            state.metrics.handshakes.record(remote.ip(), reason, &error);
            return;
        }
        Err(_) => {
            let reason = crate::handshakes::Reason::Timeout;
            let detail = format!("no handshake within {:?}", state.limits.handshake_timeout);
            state
                .metrics
                .handshakes
                .record(remote.ip(), reason, &detail);
            return;
        }
    };
    let peer: Peer = nexus_certs::peer_identity_from_chain(
        tls.get_ref().1.peer_certificates(),
        &state.trust_domain,
    );
    match &peer {
        Ok(p) => debug!(identity = %p.identity, "connected"),
        Err(error) => debug!(%error, "connected without a recognised identity"),
    }
    // Only with tracing on: what its `nexus.connection` span needs, should a request be sampled.
    let connection = state.telemetry.as_ref().zip(accepted).map(|(t, accepted)| {
        let identity = peer.as_ref().ok().map(|p| p.uri.as_str());
        Arc::new(t.connection(accepted, remote, tls.get_ref().1, identity))
    });
    let peer = Arc::new(peer);
    // HTTP/1.1 is served by hand until a request needs hyper; h2 is hyper's. A connection
    // handed over keeps its protocol: only its first bytes (or ALPN) may make it h2.
    use crate::server_h1::{Ended, Protocol, Rewound};
    let (io, protocol) = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        (Rewound::new(tls, bytes::Bytes::new()), Protocol::Http2)
    } else {
        let handle =
            |request| routes::handle(state.clone(), peer.clone(), connection.as_deref(), request);
        match crate::server_h1::serve(tls, &by_hand, &open, handle).await {
            Ended::Closed => return,
            Ended::HandOver(io, protocol) => (io, protocol),
        }
    };
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let state = state.clone();
        let peer = peer.clone();
        let connection = connection.clone();
        let request = request.map(crate::body::RequestBody::new);
        async move {
            let response = routes::handle(state, peer, connection.as_deref(), request).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let builder = match protocol {
        Protocol::Http1 => &builder.http1,
        Protocol::Http2 => &builder.http2,
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = open.closing() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

/// Plain HTTP on localhost for probes and scrapes; never exposes the data APIs. A client that
/// sends no complete header within `header_read_timeout` is cut off, as on the data port.
async fn serve_ops(
    listener: TcpListener,
    state: Arc<State>,
    header_read_timeout: std::time::Duration,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        crate::ops_port::handle(&state, request).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
