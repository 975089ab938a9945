//! Async completions, the service: the callback keys and URLs, the durable spool, and the
//! delivery of each accepted completion (the routes are in `completions.rs`). A completion
//! goes to the caller's original callback URL with the caller's callback headers, through a
//! lane keyed (callback, handler namespace, caller host), retried with backoff until success,
//! a non-retryable answer or expiry. Undeliverable completions stay in the spool for an
//! operator.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use nexus_outbound_queue::{
    DurableSpool, EntryState, LaneRef, OutboundQueue, Outcome, Spool, SpoolEntry,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::full;
use crate::callback_policy::CallbackPolicy;
use crate::callback_token::{CallbackClaims, CallbackKeys, NoteRef, Sealed};
use crate::client::CallbackClient;
pub use crate::config::CallbackSettings;
use crate::error::GatewayError;
use crate::nexus::headers;
use crate::telemetry::{self, SpanKind, Telemetry};
use crate::upstream::{self, SendError};

use crate::request::COMPLETION_PREFIX as PREFIX;
/// Longest callback URL handed to a handler with the claims sealed inside (Temporal refuses
/// longer ones); beyond it the claims go to a durable note and the URL carries its id.
pub const MAX_CALLBACK_URL: usize = 1000;
/// How often notes past their expiry are deleted.
const NOTE_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// What a spooled completion holds besides its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub caller_namespace: String,
    pub handler_namespace: String,
    pub endpoint: String,
    pub service: String,
    pub operation: String,
    pub operation_state: String,
    /// The operation's trace, sealed with its callback (see [`CallbackClaims::traceparent`]):
    /// kept with the completion so that a delivery after a restart still continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// Why the callbacks service could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("client TLS for deliveries: {0}")]
    Tls(#[from] nexus_certs::CertError),
    #[error("callback keys: {0}")]
    Keys(#[from] crate::callback_token::KeyError),
    #[error("completion spool: {0}")]
    Spool(#[from] nexus_outbound_queue::SpoolError),
}

pub struct Callbacks {
    keys: CallbackKeys,
    /// Lanes shared with external targets: deliveries go through (callback, handler
    /// namespace, caller host) lanes.
    outbound: Arc<OutboundQueue>,
    /// Cancelled when the gateway stops: waiting deliveries end (they resume on start).
    shutdown: CancellationToken,
    /// Where completions may go, and the client that goes only there.
    pub policy: Arc<CallbackPolicy>,
    client: CallbackClient,
    pub(crate) spool: Arc<dyn DurableSpool>,
    /// With a spool shared by replicas: how long a claim on a delivery lasts unrenewed.
    lease: Option<Duration>,
    pub settings: CallbackSettings,
    public_url: String,
    /// Deliveries running in this process, to wake one on `retry` or when its destination
    /// has just taken another completion.
    pub(crate) active: DashMap<u64, Arc<Active>>,
    pub pending: AtomicI64,
    pub failed: AtomicI64,
    pub delivered: AtomicU64,
    pub attempts: AtomicU64,
    /// Traces deliveries of traced operations; `None` when tracing is off.
    telemetry: Option<Arc<Telemetry>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Callbacks {
    /// `tls` is the client identity deliveries present; `own` the gateway's own addresses,
    /// which callbacks may never reach; `shared_keys` the key file text every replica shares
    /// (else the key file in `data_dir`); `telemetry` traces deliveries (when on).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        data_dir: &std::path::Path,
        shared: Option<SharedStore>,
        public_url: String,
        settings: CallbackSettings,
        tls: &nexus_certs::TlsMaterial,
        own: Vec<std::net::IpAddr>,
        outbound: Arc<OutboundQueue>,
        shutdown: CancellationToken,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Callbacks, OpenError> {
        let policy = Arc::new(CallbackPolicy::new(settings.allowed.clone(), own));
        let client = crate::client::callback_client(tls, policy.clone())?;
        let (keys, spool, lease): (_, Arc<dyn DurableSpool>, _) = match shared {
            Some(shared) => (
                CallbackKeys::parse(&shared.keys)
                    .map_err(|message| crate::callback_token::KeyError::Shared { message })?,
                shared.spool,
                Some(shared.lease),
            ),
            None => (
                CallbackKeys::load_or_create(data_dir)?,
                Arc::new(Spool::open(&data_dir.join("callbacks.redb"))?),
                None,
            ),
        };
        let entries = spool.list(None)?;
        let failed = entries
            .iter()
            .filter(|e| e.state == EntryState::Failed)
            .count() as i64;
        Ok(Callbacks {
            keys,
            outbound,
            shutdown,
            policy,
            client,
            spool,
            lease,
            settings,
            public_url: public_url.trim_end_matches('/').to_owned(),
            active: DashMap::new(),
            pending: AtomicI64::new(entries.len() as i64 - failed),
            failed: AtomicI64::new(failed),
            delivered: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            telemetry,
        })
    }

    /// The URL handed to the handler in place of the caller's: the claims sealed in it or, if
    /// that would be longer than [`MAX_CALLBACK_URL`], a sealed reference to a durable note
    /// holding them.
    pub async fn callback_url(&self, claims: &CallbackClaims) -> Result<String, GatewayError> {
        let url = self.url_for(claims)?;
        if url.len() <= MAX_CALLBACK_URL {
            return Ok(url);
        }
        let payload = serde_json::to_vec(claims).expect("serializable");
        let (spool, expires_ms) = (self.spool.clone(), claims.expires_ms);
        let id = tokio::task::spawn_blocking(move || spool.put_note(&payload, expires_ms))
            .await
            .map_err(|e| GatewayError::internal(e.to_string()))?
            .map_err(|e| spool_unavailable("cannot store the callback", e))?;
        self.url_for(&NoteRef { id, expires_ms })
    }

    fn url_for<T: serde::Serialize>(&self, sealed: &T) -> Result<String, GatewayError> {
        let token = self.keys.seal(sealed)?;
        Ok(format!("{}{PREFIX}{token}", self.public_url))
    }

    /// The claims behind a token, and the note holding them if they were too long to seal.
    pub(crate) async fn open_claims(
        &self,
        token: &str,
    ) -> Result<(CallbackClaims, Option<u64>), GatewayError> {
        let note = match self.keys.open(token, now_ms())? {
            Sealed::Claims(claims) => return Ok((*claims, None)),
            Sealed::Note(note) => note,
        };
        let spool = self.spool.clone();
        let payload = tokio::task::spawn_blocking(move || spool.get_note(note.id, now_ms()))
            .await
            .map_err(|e| GatewayError::internal(e.to_string()))?
            .map_err(|e| spool_unavailable("cannot read the callback", e))?
            .ok_or_else(|| {
                GatewayError::not_found(
                    "callback token refers to an operation this gateway no longer tracks: \
                     already completed or expired",
                )
            })?;
        let claims = serde_json::from_slice(&payload)
            .map_err(|e| GatewayError::internal(format!("stored callback is corrupt: {e}")))?;
        Ok((claims, Some(note.id)))
    }

    /// Starts delivering every pending completion (after a restart), in the background: the
    /// spool may be the shared store's blocking client.
    pub fn resume(self: &Arc<Self>) {
        let callbacks = self.clone();
        tokio::spawn(async move {
            let spool = callbacks.spool.clone();
            let Some(pending) = on_spool_logged("cannot read the completion spool", move || {
                spool.list(Some(EntryState::Pending))
            })
            .await
            else {
                return;
            };
            callbacks.resume_entries(&pending);
        });
        tokio::spawn(sweep_notes(Arc::downgrade(&self.spool)));
        if let Some(lease) = self.lease {
            tokio::spawn(adopt_orphans(Arc::downgrade(self), lease));
        }
    }

    fn resume_entries(self: &Arc<Self>, pending: &[SpoolEntry]) {
        if !pending.is_empty() {
            info!(
                count = pending.len(),
                "resuming delivery of pending completions"
            );
        }
        // One completion per destination goes at once, whatever its backoff said: if the
        // destination is back, its success wakes the others (see `wake_siblings`).
        let mut probed = std::collections::HashSet::new();
        let mut by_due: Vec<_> = pending.iter().collect();
        by_due.sort_by_key(|e| e.next_attempt_ms);
        for entry in by_due {
            let host = decode(&entry.payload).map(|(d, _)| destination_of(&d.url));
            let probe = host.is_some_and(|h| probed.insert(h));
            self.spawn_delivery(entry.id);
            if probe && let Some(active) = self.active.get(&entry.id) {
                active.due_now();
            }
        }
    }
}

/// With a spool shared by replicas: keeps this replica's leases alive and delivers the
/// pending completions of replicas whose leases ran out (they died), every third of a lease.
async fn adopt_orphans(callbacks: std::sync::Weak<Callbacks>, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    loop {
        tick.tick().await;
        let Some(callbacks) = callbacks.upgrade() else {
            return;
        };
        if callbacks.shutdown.is_cancelled() {
            return;
        }
        let spool = callbacks.spool.clone();
        let orphans = on_spool_logged("cannot renew completion leases", move || {
            spool.renew(now_ms())?;
            spool.orphaned(now_ms())
        })
        .await
        .unwrap_or_default();
        for id in orphans {
            if !callbacks.active.contains_key(&id) {
                info!(
                    id,
                    "taking over a completion whose replica stopped renewing it"
                );
                callbacks.pending.fetch_add(1, Ordering::Relaxed);
                callbacks.spawn_delivery(id);
            }
        }
    }
}

/// What replicas share for completions: the sealing key's text and the spool.
pub struct SharedStore {
    pub keys: String,
    pub spool: Arc<dyn DurableSpool>,
    pub lease: Duration,
}

/// Deletes callback notes past their expiry (operations that never completed), for as long as
/// the spool is open (a weak handle, so a stopped gateway's database closes).
async fn sweep_notes(spool: std::sync::Weak<dyn DurableSpool>) {
    let mut tick = tokio::time::interval(NOTE_SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(spool) = spool.upgrade() else { return };
        match tokio::task::spawn_blocking(move || spool.sweep_notes(now_ms())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(swept)) => info!(swept, "deleted expired callback notes"),
            Ok(Err(error)) => warn!(%error, "cannot sweep expired callback notes"),
            Err(error) => warn!(%error, "callback note sweep failed"),
        }
    }
}

/// Headers for the caller: its own callback headers, then the completion's Nexus headers.
pub(crate) fn completion_headers(
    claims: &CallbackClaims,
    from: &HeaderMap,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = claims
        .headers
        .iter()
        .filter(|(name, _)| completion_header_allowed(name))
        .cloned()
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        let relayed = n.starts_with("content-") && n != "content-length"
            || n.starts_with("nexus-operation-")
            || n == "nexus-link";
        if relayed && let Ok(v) = value.to_str() {
            out.push((n.to_owned(), v.to_owned()));
        }
    }
    let has = |out: &[(String, String)], name: &str| {
        out.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    // Old receivers read the deprecated id, new ones the token: send both.
    let token = from
        .get(headers::OPERATION_TOKEN)
        .or(from.get(headers::OPERATION_ID));
    if let Some(token) = token.and_then(|v| v.to_str().ok()).map(str::to_owned) {
        for name in ["nexus-operation-token", "nexus-operation-id"] {
            if !has(&out, name) {
                out.push((name.to_owned(), token.clone()));
            }
        }
    }
    if !has(&out, "nexus-operation-start-time") {
        out.push((
            "nexus-operation-start-time".into(),
            crate::callback_token::humantime_ms(claims.start_ms),
        ));
    }
    out
}

/// For a cluster caller (`ns@cluster`), the operation token in the completion's headers as
/// the cluster got it from the start: wrapped (see [`crate::cluster_tokens`]).
pub(crate) fn wrap_tokens_for_cluster(
    key: &ring::hmac::Key,
    caller_namespace: &str,
    headers: &mut [(String, String)],
) {
    let Some((namespace, cluster)) = caller_namespace.split_once('@') else {
        return;
    };
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("nexus-operation-token")
            || name.eq_ignore_ascii_case("nexus-operation-id")
        {
            *value = crate::cluster_tokens::wrap(key, cluster, namespace, value);
        }
    }
}

pub(crate) fn encode(delivery: &Delivery, body: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(delivery).expect("serializable");
    let mut out = Vec::with_capacity(4 + meta.len() + body.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(body);
    out
}

pub(crate) fn decode(payload: &[u8]) -> Option<(Delivery, Bytes)> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(payload.get(4..4 + len)?).ok()?;
    Some((meta, Bytes::copy_from_slice(&payload[4 + len..])))
}

/// A delivery running in this process.
#[derive(Default)]
pub(crate) struct Active {
    pub(crate) wake: Notify,
    /// Set to attempt at once, whatever the backoff said.
    now: std::sync::atomic::AtomicBool,
    /// The destination (`host:port`), once known.
    destination: std::sync::OnceLock<String>,
}

impl Active {
    pub(crate) fn due_now(&self) {
        self.now.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

fn destination_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

/// A destination just took a completion: the others waiting for it go now instead of after
/// their backoff.
fn wake_siblings(callbacks: &Callbacks, destination: &str) {
    for active in callbacks.active.iter() {
        if active.destination.get().is_some_and(|d| d == destination) {
            active.due_now();
        }
    }
}

impl Callbacks {
    /// The delivery counters, for `/metrics`.
    /// The key that signs operation tokens handed to cluster callers.
    pub fn token_key(&self) -> &ring::hmac::Key {
        self.keys.token_key()
    }

    /// The gateway's URL as handlers and other replicas reach it.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The key that signs tasks replicas forward to each other.
    pub fn forward_key(&self) -> &ring::hmac::Key {
        self.keys.forward_key()
    }

    pub fn counts(&self) -> crate::metrics::CompletionCounts {
        crate::metrics::CompletionCounts {
            pending: self.pending.load(Ordering::Relaxed).max(0) as u64,
            failed: self.failed.load(Ordering::Relaxed).max(0) as u64,
            delivered: self.delivered.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
        }
    }

    /// Delivers completion `id` in the background, or wakes its delivery if one runs.
    pub(crate) fn spawn_delivery(self: &Arc<Self>, id: u64) {
        use dashmap::mapref::entry::Entry;
        let active = match self.active.entry(id) {
            Entry::Occupied(running) => {
                running.get().wake.notify_one();
                return;
            }
            Entry::Vacant(slot) => slot.insert(Arc::new(Active::default())).clone(),
        };
        let callbacks = self.clone();
        tokio::spawn(async move {
            deliver(&callbacks, id, &active).await;
            callbacks.active.remove(&id);
        });
    }
}

enum Attempt {
    Delivered,
    Retry { reason: String, at_least: Duration },
    GiveUp(String),
}

/// A spool that cannot be read or written now (a store that does not answer): 503, so the
/// sender retries rather than lose anything.
pub(crate) fn spool_unavailable(what: &str, error: impl std::fmt::Display) -> GatewayError {
    GatewayError::unavailable(format!("{what} now: {error}"))
        .with_retry_after(Duration::from_secs(1))
}

/// Runs a spool operation off the async workers. A panicked task is an error, never "empty".
pub(crate) async fn on_spool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, nexus_outbound_queue::SpoolError> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GatewayError::internal(format!("completion spool task failed: {e}")))?
        .map_err(|e| GatewayError::internal(format!("completion spool: {e}")))
}

/// [`on_spool`] where the caller can only log a failure and go on.
async fn on_spool_logged<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, nexus_outbound_queue::SpoolError> + Send + 'static,
) -> Option<T> {
    on_spool(f)
        .await
        .inspect_err(|error| warn!(%error, "{what}"))
        .ok()
}

async fn deliver(callbacks: &Arc<Callbacks>, id: u64, active: &Active) {
    loop {
        let spool = callbacks.spool.clone();
        let read = on_spool_logged("cannot read a pending completion", move || spool.get(id));
        let Some(Some(mut entry)) = read.await else {
            return; // dropped by an operator, or the spool is unreadable (logged)
        };
        if entry.state == EntryState::Failed {
            return;
        }
        let now = now_ms();
        if now >= entry.expires_ms {
            give_up(
                callbacks,
                entry,
                "expired before it could be delivered".into(),
            )
            .await;
            return;
        }
        let Some((delivery, body)) = decode(&entry.payload) else {
            give_up(callbacks, entry, "stored completion is unreadable".into()).await;
            return;
        };
        let destination = active
            .destination
            .get_or_init(|| destination_of(&delivery.url));
        if entry.next_attempt_ms > now && !active.now.swap(false, Ordering::AcqRel) {
            let wait = Duration::from_millis(entry.next_attempt_ms.min(entry.expires_ms) - now);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = active.wake.notified() => {}
                () = callbacks.shutdown.cancelled() => return,
            }
            continue;
        }
        // With replicas, only the holder of the entry's lease delivers it.
        let spool = callbacks.spool.clone();
        match on_spool(move || spool.claim(id, now_ms())).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(id, "another replica delivers this completion");
                callbacks.pending.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                warn!(%error, id, "cannot claim a completion; trying again shortly");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = callbacks.shutdown.cancelled() => return,
                }
                continue;
            }
        }
        callbacks.attempts.fetch_add(1, Ordering::Relaxed);
        let mut span = delivery_span(callbacks, &delivery, entry.attempts + 1);
        let outcome = attempt(callbacks, &delivery, body, &mut span).await;
        if let Attempt::Retry { reason, .. } | Attempt::GiveUp(reason) = &outcome {
            span.fail(reason);
        }
        span.end();
        match outcome {
            Attempt::Delivered => {
                let spool = callbacks.spool.clone();
                on_spool_logged("cannot mark a completion delivered", move || {
                    spool.remove(id)
                })
                .await;
                callbacks.pending.fetch_sub(1, Ordering::Relaxed);
                callbacks.delivered.fetch_add(1, Ordering::Relaxed);
                debug!(id, "completion delivered");
                wake_siblings(callbacks, destination);
                return;
            }
            Attempt::GiveUp(reason) => {
                // It was tried: `attempts` counts deliveries made, not retries left.
                entry.attempts += 1;
                give_up(callbacks, entry, reason).await;
                return;
            }
            Attempt::Retry { reason, at_least } => {
                let delay = callbacks
                    .settings
                    .backoff
                    .delay(entry.attempts)
                    .max(at_least);
                entry.attempts += 1;
                entry.next_attempt_ms = now_ms() + delay.as_millis() as u64;
                debug!(id, %reason, retry_in = ?delay, "completion delivery failed");
                entry.last_error = Some(reason);
                let spool = callbacks.spool.clone();
                on_spool_logged("cannot record a delivery attempt", move || {
                    spool.update(&entry)
                })
                .await;
            }
        }
    }
}

async fn give_up(callbacks: &Callbacks, mut entry: SpoolEntry, reason: String) {
    warn!(id = entry.id, %reason, "completion undeliverable; kept for `nexus-gateway callbacks`");
    entry.state = EntryState::Failed;
    entry.last_error = Some(reason);
    let spool = callbacks.spool.clone();
    on_spool_logged("cannot mark a completion failed", move || {
        spool.update(&entry)
    })
    .await;
    callbacks.pending.fetch_sub(1, Ordering::Relaxed);
    callbacks.failed.fetch_add(1, Ordering::Relaxed);
}

/// The span of one delivery attempt of a traced operation's completion: a child of the
/// operation's server span, sealed with its callback.
fn delivery_span(callbacks: &Callbacks, delivery: &Delivery, attempt: u32) -> telemetry::Span {
    let (Some(telemetry), Some(parent)) = (&callbacks.telemetry, &delivery.traceparent) else {
        return telemetry::Span::default();
    };
    let mut span = telemetry.continue_operation("nexus.callback", SpanKind::Client, parent);
    span.set("nexus.caller_namespace", delivery.caller_namespace.clone());
    span.set("nexus.endpoint", delivery.endpoint.clone());
    span.set("nexus.target", destination_of(&delivery.url));
    span.set("nexus.service", delivery.service.clone());
    span.set("nexus.operation", delivery.operation.clone());
    span.set("nexus.operation_state", delivery.operation_state.clone());
    span.set("nexus.callback.attempt", i64::from(attempt));
    span
}

/// One delivery attempt; `span` (recorded when the operation is traced) is the request's
/// parent at the caller.
async fn attempt(
    callbacks: &Callbacks,
    delivery: &Delivery,
    body: Bytes,
    span: &mut telemetry::Span,
) -> Attempt {
    let timeout = callbacks.settings.attempt_timeout;
    if let Err(why) = callbacks.policy.check_url(&delivery.url) {
        return Attempt::GiveUp(why.to_string());
    }
    let uri: http::Uri = match delivery.url.parse() {
        Ok(uri) => uri,
        Err(e) => return Attempt::GiveUp(format!("callback URL is invalid: {e}")),
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let lane = LaneRef {
        kind: "callback",
        source: &delivery.handler_namespace,
        destination: &host,
    };
    let mut request = Request::post(uri).body(full(body)).expect("valid request");
    for (name, value) in &delivery.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            request.headers_mut().append(n, v);
        }
    }
    if span.is_recording() {
        // The operation's trace, not any the caller put among its callback headers.
        span.propagate(request.headers_mut());
        let state = delivery.tracestate.as_deref().map(HeaderValue::from_str);
        match state {
            Some(Ok(state)) => request.headers_mut().insert(telemetry::TRACESTATE, state),
            _ => request.headers_mut().remove(telemetry::TRACESTATE),
        };
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let sent = upstream::send(
        &callbacks.outbound,
        lane,
        deadline,
        callbacks.client.request(request),
        &PolicyRefusal,
        span.child("nexus.lane_wait"),
    )
    .await;
    let response = match sent {
        Ok(response) => response,
        Err(SendError::Refused(rejection)) => {
            return Attempt::Retry {
                reason: format!("{host}: {rejection}"),
                at_least: rejection.retry_after(),
            };
        }
        Err(SendError::NoSlot) => {
            return Attempt::Retry {
                reason: format!("{host}: lane saturated"),
                at_least: Duration::ZERO,
            };
        }
        Err(SendError::NotTheDestination(error)) => {
            let why = error.map(|e| upstream::root_cause(e.as_ref()));
            return Attempt::GiveUp(format!("{host}: {}", why.unwrap_or_default()));
        }
        Err(SendError::Unreachable(error)) => {
            return Attempt::Retry {
                reason: format!(
                    "{host} unreachable: {}",
                    upstream::root_cause(error.as_ref())
                ),
                at_least: Duration::ZERO,
            };
        }
        Err(SendError::TimedOut) => {
            return Attempt::Retry {
                reason: format!("{host} did not answer within {timeout:?}"),
                at_least: Duration::ZERO,
            };
        }
    };
    let status = response.status();
    span.answered(status);
    let body = response.into_body();
    match crate::outcome::classify(status) {
        Outcome::Success => {
            // Delivered once the status is in: recorded at once, not after the body, so a
            // crash has the smallest window to deliver it again. The body is read in the
            // background only so the connection can be reused.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, body.collect()).await;
            });
            Attempt::Delivered
        }
        outcome => {
            let body = tokio::time::timeout(timeout, body.collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let detail = format!("{host} answered {status}: {}", text.trim_end());
            if outcome == Outcome::DestinationDown {
                Attempt::Retry {
                    reason: detail,
                    at_least: Duration::ZERO,
                }
            } else {
                Attempt::GiveUp(detail)
            }
        }
    }
}

/// A delivery failed by the gateway's own refusal when the callback policy refused every
/// address of the destination: never retried, never counted against the destination.
struct PolicyRefusal;

impl upstream::Fault for PolicyRefusal {
    fn senders_fault(&self, _: bool, error: Option<&crate::body::BoxError>) -> bool {
        error.is_some_and(|e| crate::callback_policy::is_refused(e.as_ref()))
    }
}

/// Whether a caller's callback header (a `Nexus-Callback-*` header, prefix stripped) may be
/// sent with the completion: never framing, hop-by-hop or routing headers, and never one the
/// gateway sets itself from the completion.
pub fn completion_header_allowed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(crate::nexus::is_framing_or_hop(&name)
        || name == "nexus-link"
        || name.starts_with("content-")
        || name.starts_with("nexus-operation-")
        || name.starts_with(crate::nexus::headers::TASK_PREFIX))
}
