//! Async completions: handlers post them to `/nexus/callbacks/<token>`; the gateway checks the
//! token and sender, writes the completion to the durable spool, answers 200, and then delivers
//! it to the caller's original callback URL with the caller's callback headers, through a lane
//! keyed (callback, handler namespace, caller host), retrying with backoff until success, a
//! non-retryable answer or expiry. Undeliverable completions stay in the spool for an operator.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use nexus_outbound_queue::{Backoff, EntryState, LaneKey, Outcome, Spool, SpoolEntry};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::attribution::Record;
use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody, empty, full, json};
use crate::callback_policy::{AllowedCallback, CallbackPolicy};
use crate::callback_token::{CallbackClaims, CallbackKeys, NoteRef, Sealed};
use crate::client::CallbackClient;
use crate::error::GatewayError;
use crate::nexus::headers;
use crate::request::{self, CompletionsRoute};
use crate::state::State;

use crate::request::COMPLETION_PREFIX as PREFIX;
/// Longest callback URL handed to a handler with the claims sealed inside (Temporal refuses
/// longer ones); beyond it the claims go to a durable note and the URL carries its id.
pub const MAX_CALLBACK_URL: usize = 1000;
/// How often notes past their expiry are deleted.
const NOTE_SWEEP_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// How long a callback token, and so a pending completion, stays valid (default 60 days,
    /// longer than any Temporal operation's default timeout).
    pub expiry: Duration,
    /// Time for one delivery attempt (default 10 s).
    pub attempt_timeout: Duration,
    /// Delay between attempts: 1 s doubling to 1 h, 80-100 % jitter.
    pub backoff: Backoff,
    /// Callback hosts allowed beyond the default (https to public addresses only); see
    /// [`crate::callback_policy`]. Default none; `dev` allows loopback.
    pub allowed: Vec<AllowedCallback>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            expiry: Duration::from_secs(60 * 24 * 3600),
            attempt_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            allowed: Vec::new(),
        }
    }
}

/// What a spooled completion holds besides its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    url: String,
    headers: Vec<(String, String)>,
    caller_namespace: String,
    handler_namespace: String,
    endpoint: String,
    service: String,
    operation: String,
    operation_state: String,
}

pub struct Callbacks {
    keys: CallbackKeys,
    /// Where completions may go, and the client that goes only there.
    pub policy: Arc<CallbackPolicy>,
    client: CallbackClient,
    spool: Arc<Spool>,
    pub settings: CallbackSettings,
    public_url: String,
    /// Deliveries running in this process, to wake one on `retry` or when its destination
    /// has just taken another completion.
    active: DashMap<u64, Arc<Active>>,
    pub pending: AtomicI64,
    pub failed: AtomicI64,
    pub delivered: AtomicU64,
    pub attempts: AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Callbacks {
    /// `tls` is the client identity deliveries present; `own` the gateway's own addresses,
    /// which callbacks may never reach.
    pub fn open(
        data_dir: &std::path::Path,
        public_url: String,
        settings: CallbackSettings,
        tls: &nexus_certs::TlsMaterial,
        own: Vec<std::net::IpAddr>,
    ) -> Result<Callbacks, String> {
        let policy = Arc::new(CallbackPolicy::new(settings.allowed.clone(), own));
        let client =
            crate::client::callback_client(tls, policy.clone()).map_err(|e| e.to_string())?;
        let keys = CallbackKeys::load_or_create(data_dir).map_err(|e| e.to_string())?;
        let spool = Spool::open(&data_dir.join("callbacks.redb")).map_err(|e| e.to_string())?;
        let entries = spool.list(None).map_err(|e| e.to_string())?;
        let failed = entries
            .iter()
            .filter(|e| e.state == EntryState::Failed)
            .count() as i64;
        Ok(Callbacks {
            keys,
            policy,
            client,
            spool: Arc::new(spool),
            settings,
            public_url: public_url.trim_end_matches('/').to_owned(),
            active: DashMap::new(),
            pending: AtomicI64::new(entries.len() as i64 - failed),
            failed: AtomicI64::new(failed),
            delivered: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
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
            .map_err(|e| GatewayError::internal(format!("cannot store the callback: {e}")))?;
        self.url_for(&NoteRef { id, expires_ms })
    }

    fn url_for<T: serde::Serialize>(&self, sealed: &T) -> Result<String, GatewayError> {
        let token = self.keys.seal(sealed)?;
        Ok(format!("{}{PREFIX}{token}", self.public_url))
    }

    /// The claims behind a token, and the note holding them if they were too long to seal.
    async fn open_claims(
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
            .map_err(|e| GatewayError::internal(format!("cannot read the callback: {e}")))?
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

    /// Starts delivering every pending completion (after a restart).
    pub fn resume(state: &Arc<State>) {
        let pending = match state.callbacks.spool.list(Some(EntryState::Pending)) {
            Ok(pending) => pending,
            Err(error) => {
                warn!(%error, "cannot read the completion spool");
                return;
            }
        };
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
            spawn_delivery(state, entry.id);
            if probe && let Some(active) = state.callbacks.active.get(&entry.id) {
                active.due_now();
            }
        }
        tokio::spawn(sweep_notes(Arc::downgrade(&state.callbacks.spool)));
    }
}

/// `POST /nexus/callbacks/{token}`: a handler completes an async operation. Recorded in the
/// attribution log (never billable) before the answer.
pub async fn complete(
    state: &Arc<State>,
    peer: &Peer,
    token: Result<String, GatewayError>,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let started = std::time::Instant::now();
    let mut record = Record {
        kind: "completion".into(),
        caller_identity: peer.as_ref().ok().map(|p| p.uri.clone()),
        operation_token: request
            .headers()
            .get(headers::OPERATION_TOKEN)
            .or(request.headers().get(headers::OPERATION_ID))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Record::default()
    };
    let response = match accept(state, peer, token, request, &mut record).await {
        Ok(Accepted::New) => {
            record.outcome = "accepted".into();
            Response::new(empty())
        }
        Ok(Accepted::Duplicate) => {
            record.outcome = "duplicate".into();
            Response::new(empty())
        }
        Err(error) => {
            record.outcome = crate::metering::error_outcome(&error);
            error.into_response()
        }
    };
    crate::metering::finish(state, record, &response, started).await?;
    Ok(response)
}

/// How an acceptable completion was taken.
enum Accepted {
    New,
    /// Its token's completion was already accepted: answered like the first, not delivered
    /// again.
    Duplicate,
}

/// The key a completion is accepted once under: a digest of its token.
fn once_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("32 bytes")
}

async fn accept(
    state: &Arc<State>,
    peer: &Peer,
    token: Result<String, GatewayError>,
    request: Request<RequestBody>,
    record: &mut Record,
) -> Result<Accepted, GatewayError> {
    let sender = authz::authorize(peer, Action::CompleteOperation { target: None })?.to_owned();
    record.target_namespace = Some(sender.clone());
    let token = token?;
    request::require_method(&request, &[Method::POST])?;
    let key = once_key(&token);
    // Only tokens this gateway accepted are keyed, so a forged token never matches.
    let spool = state.callbacks.spool.clone();
    let seen = tokio::task::spawn_blocking(move || spool.was_pushed(&key, now_ms()))
        .await
        .map_err(|e| GatewayError::internal(e.to_string()))?
        .map_err(|e| GatewayError::internal(format!("cannot read the completion spool: {e}")))?;
    if seen {
        return Ok(Accepted::Duplicate);
    }
    let (claims, note) = state.callbacks.open_claims(&token).await?;
    record.caller_namespace = Some(claims.caller_namespace.clone());
    record.endpoint = Some(claims.endpoint.clone());
    record.endpoint_id = Some(claims.endpoint_id.clone());
    record.service = Some(claims.service.clone());
    record.operation = Some(claims.operation.clone());
    record.request_id = claims.request_id.clone();
    authz::authorize(
        peer,
        Action::CompleteOperation {
            target: claims.target_namespace.as_deref(),
        },
    )?;
    let operation_state = request
        .headers()
        .get(headers::OPERATION_STATE)
        .and_then(|v| v.to_str().ok())
        .filter(|s| matches!(*s, "succeeded" | "failed" | "canceled"))
        .map(str::to_owned)
        .ok_or_else(|| {
            GatewayError::bad_request(
                "missing or invalid Nexus-Operation-State header: expected succeeded, failed or canceled",
            )
        })?;
    let (parts, body) = request.into_parts();
    let body = request::read_body(body, &state.limits).await?;
    record.request_bytes = body.len() as u64;
    let delivery = Delivery {
        headers: completion_headers(&claims, &parts.headers),
        url: claims.url,
        caller_namespace: claims.caller_namespace,
        handler_namespace: sender,
        endpoint: claims.endpoint,
        service: claims.service,
        operation: claims.operation,
        operation_state,
    };
    let payload = encode(&delivery, &body);
    let spool = state.callbacks.spool.clone();
    let expires = claims.expires_ms;
    // The 200 goes out only once the completion is on disk. It uses up a long callback's note,
    // in the same transaction.
    let pushed = tokio::task::spawn_blocking(move || {
        spool.push_once(&key, &payload, now_ms(), expires, note)
    })
    .await
    .map_err(|e| GatewayError::internal(e.to_string()))?
    .map_err(|e| GatewayError::internal(format!("cannot store the completion: {e}")))?;
    let Some(entry) = pushed else {
        return Ok(Accepted::Duplicate);
    };
    state.callbacks.pending.fetch_add(1, Ordering::Relaxed);
    debug!(id = entry.id, "completion accepted");
    spawn_delivery(state, entry.id);
    Ok(Accepted::New)
}

/// Deletes callback notes past their expiry (operations that never completed), for as long as
/// the spool is open (a weak handle, so a stopped gateway's database closes).
async fn sweep_notes(spool: std::sync::Weak<Spool>) {
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
fn completion_headers(claims: &CallbackClaims, from: &HeaderMap) -> Vec<(String, String)> {
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

fn encode(delivery: &Delivery, body: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(delivery).expect("serializable");
    let mut out = Vec::with_capacity(4 + meta.len() + body.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(body);
    out
}

fn decode(payload: &[u8]) -> Option<(Delivery, Bytes)> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(payload.get(4..4 + len)?).ok()?;
    Some((meta, Bytes::copy_from_slice(&payload[4 + len..])))
}

/// A delivery running in this process.
#[derive(Default)]
struct Active {
    wake: Notify,
    /// Set to attempt at once, whatever the backoff said.
    now: std::sync::atomic::AtomicBool,
    /// The destination (`host:port`), once known.
    destination: std::sync::OnceLock<String>,
}

impl Active {
    fn due_now(&self) {
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
fn wake_siblings(state: &State, destination: &str) {
    for active in state.callbacks.active.iter() {
        if active.destination.get().is_some_and(|d| d == destination) {
            active.due_now();
        }
    }
}

fn spawn_delivery(state: &Arc<State>, id: u64) {
    use dashmap::mapref::entry::Entry;
    let active = match state.callbacks.active.entry(id) {
        Entry::Occupied(running) => {
            running.get().wake.notify_one();
            return;
        }
        Entry::Vacant(slot) => slot.insert(Arc::new(Active::default())).clone(),
    };
    let state = state.clone();
    tokio::spawn(async move {
        deliver(&state, id, &active).await;
        state.callbacks.active.remove(&id);
    });
}

enum Attempt {
    Delivered,
    Retry { reason: String, at_least: Duration },
    GiveUp(String),
}

/// Runs a spool operation off the async workers. A panicked task is an error, never "empty".
async fn on_spool<T: Send + 'static>(
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

async fn deliver(state: &Arc<State>, id: u64, active: &Active) {
    let callbacks = &state.callbacks;
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
            give_up(state, entry, "expired before it could be delivered".into()).await;
            return;
        }
        let Some((delivery, body)) = decode(&entry.payload) else {
            give_up(state, entry, "stored completion is unreadable".into()).await;
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
                () = state.shutdown.cancelled() => return,
            }
            continue;
        }
        callbacks.attempts.fetch_add(1, Ordering::Relaxed);
        match attempt(state, &delivery, body).await {
            Attempt::Delivered => {
                let spool = callbacks.spool.clone();
                on_spool_logged("cannot mark a completion delivered", move || {
                    spool.remove(id)
                })
                .await;
                callbacks.pending.fetch_sub(1, Ordering::Relaxed);
                callbacks.delivered.fetch_add(1, Ordering::Relaxed);
                debug!(id, "completion delivered");
                wake_siblings(state, destination);
                return;
            }
            Attempt::GiveUp(reason) => {
                // It was tried: `attempts` counts deliveries made, not retries left.
                entry.attempts += 1;
                give_up(state, entry, reason).await;
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

async fn give_up(state: &State, mut entry: SpoolEntry, reason: String) {
    warn!(id = entry.id, %reason, "completion undeliverable; kept for `nexus-gateway callbacks`");
    entry.state = EntryState::Failed;
    entry.last_error = Some(reason);
    let spool = state.callbacks.spool.clone();
    on_spool_logged("cannot mark a completion failed", move || {
        spool.update(&entry)
    })
    .await;
    state.callbacks.pending.fetch_sub(1, Ordering::Relaxed);
    state.callbacks.failed.fetch_add(1, Ordering::Relaxed);
}

async fn attempt(state: &State, delivery: &Delivery, body: Bytes) -> Attempt {
    let timeout = state.callbacks.settings.attempt_timeout;
    if let Err(why) = state.callbacks.policy.check_url(&delivery.url) {
        return Attempt::GiveUp(why);
    }
    let uri: http::Uri = match delivery.url.parse() {
        Ok(uri) => uri,
        Err(e) => return Attempt::GiveUp(format!("callback URL is invalid: {e}")),
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let lane = LaneKey {
        kind: "callback",
        source: delivery.handler_namespace.clone(),
        destination: host.clone(),
    };
    let permit = match tokio::time::timeout(timeout, state.outbound.acquire(&lane)).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(rejection)) => {
            return Attempt::Retry {
                reason: format!("{host}: {rejection}"),
                at_least: rejection.retry_after(),
            };
        }
        Err(_) => {
            return Attempt::Retry {
                reason: format!("{host}: lane saturated"),
                at_least: Duration::ZERO,
            };
        }
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
    let sent = tokio::time::timeout(timeout, async {
        let response = state.callbacks.client.request(request).await?;
        let status = response.status();
        if status.is_success() {
            // Delivered once the status is in: recorded at once, not after the body, so a
            // crash has the smallest window to deliver it again. The body is read in the
            // background only so the connection can be reused.
            let body = response.into_body();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, body.collect()).await;
            });
            return Ok((status, Bytes::new()));
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    })
    .await;
    match sent {
        Ok(Ok((status, body))) => {
            let outcome = crate::destination::classify(status);
            permit.finish(outcome);
            let detail = || {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                format!("{host} answered {status}: {}", text.trim_end())
            };
            match outcome {
                Outcome::Success => Attempt::Delivered,
                Outcome::DestinationDown => Attempt::Retry {
                    reason: detail(),
                    at_least: Duration::ZERO,
                },
                Outcome::OperationFailed => Attempt::GiveUp(detail()),
            }
        }
        Ok(Err(error)) if crate::callback_policy::is_refused(error.as_ref()) => {
            drop(permit);
            Attempt::GiveUp(format!("{host}: {}", root_cause(error.as_ref())))
        }
        Ok(Err(error)) => {
            permit.finish(Outcome::DestinationDown);
            Attempt::Retry {
                reason: format!("{host} unreachable: {}", root_cause(error.as_ref())),
                at_least: Duration::ZERO,
            }
        }
        Err(_) => {
            permit.finish(Outcome::DestinationDown);
            Attempt::Retry {
                reason: format!("{host} did not answer within {timeout:?}"),
                at_least: Duration::ZERO,
            }
        }
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Whether a caller's callback header (a `Nexus-Callback-*` header, prefix stripped) may be
/// sent with the completion: never framing, hop-by-hop or routing headers, and never one the
/// gateway sets itself from the completion.
pub fn completion_header_allowed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
            | "nexus-link"
    ) || name.starts_with("proxy-")
        || name.starts_with("content-")
        || name.starts_with("nexus-operation-")
        || name.starts_with(crate::nexus::headers::TASK_PREFIX))
}

/// Admin API for completions: `GET /api/v1/callbacks[?state=pending|failed]`,
/// `POST /api/v1/callbacks/{id}/retry`, `DELETE /api/v1/callbacks/{id}`.
pub async fn admin(
    state: &Arc<State>,
    peer: &Peer,
    route: CompletionsRoute,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    authz::authorize(peer, Action::ManageCompletions)?;
    let spool = state.callbacks.spool.clone();
    match route {
        CompletionsRoute::List => {
            let filter = request::query_param(request.uri().query(), "state");
            let filter = match filter.as_deref() {
                None | Some("") => None,
                Some("pending") => Some(EntryState::Pending),
                Some("failed") => Some(EntryState::Failed),
                Some(other) => {
                    return Err(GatewayError::bad_request(format!(
                        "invalid state {other:?}: expected pending or failed"
                    )));
                }
            };
            let entries = on_spool(move || spool.list(filter)).await?;
            let list: Vec<_> = entries.iter().map(describe).collect();
            Ok(json(&serde_json::json!({ "completions": list })))
        }
        CompletionsRoute::Retry(id) => {
            let found = on_spool(
                move || -> Result<Option<SpoolEntry>, nexus_outbound_queue::SpoolError> {
                    let Some(mut entry) = spool.get(id)? else {
                        return Ok(None);
                    };
                    let was_failed = entry.state == EntryState::Failed;
                    entry.state = EntryState::Pending;
                    entry.next_attempt_ms = now_ms();
                    // A fresh expiry: the operator asked for it.
                    entry.expires_ms = entry.expires_ms.max(now_ms() + 24 * 3600 * 1000);
                    spool.update(&entry)?;
                    Ok(Some(SpoolEntry {
                        state: if was_failed {
                            EntryState::Failed
                        } else {
                            EntryState::Pending
                        },
                        ..entry
                    }))
                },
            )
            .await?;
            let Some(previous) = found else {
                return Err(GatewayError::not_found(format!(
                    "completion {id} not found"
                )));
            };
            if previous.state == EntryState::Failed {
                state.callbacks.failed.fetch_sub(1, Ordering::Relaxed);
                state.callbacks.pending.fetch_add(1, Ordering::Relaxed);
            }
            spawn_delivery(state, id);
            Ok(json(&serde_json::json!({})))
        }
        CompletionsRoute::Drop(id) => {
            let existing = {
                let spool = spool.clone();
                on_spool(move || spool.get(id)).await?
            };
            let Some(entry) = existing else {
                return Err(GatewayError::not_found(format!(
                    "completion {id} not found"
                )));
            };
            on_spool(move || spool.remove(id)).await?;
            let counter = match entry.state {
                EntryState::Pending => &state.callbacks.pending,
                EntryState::Failed => &state.callbacks.failed,
            };
            counter.fetch_sub(1, Ordering::Relaxed);
            if let Some(active) = state.callbacks.active.get(&id) {
                active.wake.notify_one();
            }
            Ok(json(&serde_json::json!({})))
        }
        CompletionsRoute::Invalid(message) => Err(GatewayError::bad_request(message)),
    }
}

fn describe(entry: &SpoolEntry) -> serde_json::Value {
    let delivery = decode(&entry.payload).map(|(d, _)| d);
    let host = delivery
        .as_ref()
        .and_then(|d| d.url.parse::<http::Uri>().ok())
        .and_then(|u| u.authority().map(|a| a.to_string()));
    serde_json::json!({
        "id": entry.id,
        "state": match entry.state { EntryState::Pending => "pending", EntryState::Failed => "failed" },
        "attempts": entry.attempts,
        "nextAttempt": crate::callback_token::humantime_ms(entry.next_attempt_ms),
        "expires": crate::callback_token::humantime_ms(entry.expires_ms),
        "lastError": entry.last_error,
        "callerHost": host,
        "callerNamespace": delivery.as_ref().map(|d| d.caller_namespace.clone()),
        "handlerNamespace": delivery.as_ref().map(|d| d.handler_namespace.clone()),
        "endpoint": delivery.as_ref().map(|d| d.endpoint.clone()),
        "service": delivery.as_ref().map(|d| d.service.clone()),
        "operation": delivery.as_ref().map(|d| d.operation.clone()),
        "operationState": delivery.as_ref().map(|d| d.operation_state.clone()),
    })
}
