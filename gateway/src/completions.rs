//! The completion routes: a handler posts a completion to `/nexus/callbacks/<token>`; the
//! gateway checks the token and sender, writes the completion to the durable spool, answers
//! 200, and hands it to [`crate::callbacks::Callbacks`] for delivery. Also the admin API of the spool.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response};
use nexus_outbound_queue::{EntryState, SpoolEntry};
use tracing::debug;

use crate::attribution::{Kind, Outcome, Record};
use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody, empty, json};
use crate::callbacks::{
    Delivery, completion_headers, decode, encode, now_ms, on_spool, wrap_tokens_for_cluster,
};
use crate::error::GatewayError;
use crate::nexus::headers;
use crate::request::{self, CompletionsRoute};
use crate::state::State;
use crate::telemetry::{self, SpanKind};

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
        kind: Kind::Completion,
        caller_identity: peer.as_ref().ok().map(|p| p.uri.clone()),
        operation_token: request
            .headers()
            .get(headers::OPERATION_TOKEN)
            .or(request.headers().get(headers::OPERATION_ID))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Record::default()
    };
    // Recorded when the operation was traced: the completion continues its trace.
    let mut span = telemetry::Span::default();
    let response = match accept(state, peer, token, request, &mut record, &mut span).await {
        Ok(Accepted::New) => {
            record.outcome = Outcome::Accepted;
            Response::new(empty())
        }
        Ok(Accepted::Duplicate) => {
            record.outcome = Outcome::Duplicate;
            Response::new(empty())
        }
        Err(error) => {
            record.outcome = crate::outcome::error_outcome(&error);
            error.into_response()
        }
    };
    if span.is_recording() {
        describe_traced(&mut span, &record, response.status());
    }
    let mut attribution = span.child("nexus.attribution");
    let written = crate::metering::finish(
        &state.metrics,
        state.attribution.as_ref(),
        record,
        &response,
        started,
    )
    .await;
    if let Err(error) = &written {
        attribution.fail(&error.message);
        span.fail(&error.message);
    }
    attribution.end();
    span.end();
    written?;
    Ok(response)
}

/// What a traced completion's span says of it.
fn describe_traced(span: &mut telemetry::Span, record: &Record, status: http::StatusCode) {
    for (key, value) in [
        ("nexus.caller_namespace", &record.caller_namespace),
        ("nexus.target_namespace", &record.target_namespace),
        ("nexus.endpoint", &record.endpoint),
        ("nexus.service", &record.service),
        ("nexus.operation", &record.operation),
    ] {
        if let Some(value) = value {
            span.set(key, value.clone());
        }
    }
    span.set("nexus.outcome", record.outcome.as_str().into_owned());
    span.answered(status);
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
    span: &mut telemetry::Span,
) -> Result<Accepted, GatewayError> {
    // Empty for a sender without a namespace certificate: the token is its credential.
    let sender = authz::authorize(peer, Action::CompleteOperation { target: None })?.to_owned();
    if !sender.is_empty() {
        record.target_namespace = Some(sender.clone());
    }
    let token = token?;
    request::require_method(&request, &[Method::POST])?;
    let key = once_key(&token);
    // Only tokens this gateway accepted are keyed, so a forged token never matches.
    let spool = state.callbacks.spool.clone();
    let seen = tokio::task::spawn_blocking(move || spool.was_pushed(&key, now_ms()))
        .await
        .map_err(|e| GatewayError::internal(e.to_string()))?
        .map_err(|e| crate::callbacks::spool_unavailable("cannot read the completion spool", e))?;
    if seen {
        return Ok(Accepted::Duplicate);
    }
    let (claims, note) = state.callbacks.open_claims(&token).await?;
    if let (Some(telemetry), Some(parent)) = (&state.telemetry, &claims.traceparent) {
        *span = telemetry.continue_operation("nexus.completion", SpanKind::Server, parent);
    }
    record.caller_namespace = Some(claims.caller_namespace.clone());
    record.endpoint = Some(claims.endpoint.clone());
    record.endpoint_id = Some(claims.endpoint_id.clone());
    record.service = Some(claims.service.clone());
    record.operation = Some(claims.operation.clone());
    record.request_id = claims.request_id.clone();
    if record.target_namespace.is_none() {
        record.target_namespace = claims.target_namespace.clone();
    }
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
    let mut headers = completion_headers(&claims, &parts.headers);
    wrap_tokens_for_cluster(
        state.callbacks.token_key(),
        &claims.caller_namespace,
        &mut headers,
    );
    // The lane's source: the handler's namespace, as its certificate or the operation says.
    let handler_namespace = match (sender.is_empty(), &claims.target_namespace) {
        (false, _) => sender,
        (true, Some(target)) => target.clone(),
        (true, None) => format!("endpoint:{}", claims.endpoint),
    };
    let delivery = Delivery {
        headers,
        url: claims.url,
        caller_namespace: claims.caller_namespace,
        handler_namespace,
        endpoint: claims.endpoint,
        service: claims.service,
        operation: claims.operation,
        operation_state,
        traceparent: claims.traceparent,
        tracestate: claims.tracestate,
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
    // Retryable: the handler sends it again rather than it being lost.
    .map_err(|e| crate::callbacks::spool_unavailable("cannot store the completion", e))?;
    let Some(entry) = pushed else {
        return Ok(Accepted::Duplicate);
    };
    state.callbacks.pending.fetch_add(1, Ordering::Relaxed);
    debug!(id = entry.id, "completion accepted");
    state.callbacks.spawn_delivery(entry.id);
    Ok(Accepted::New)
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
    manage(state, route, request).await
}

/// The admin API itself, for a caller that has been authorized: [`admin`], and the console.
pub async fn manage(
    state: &Arc<State>,
    route: CompletionsRoute,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
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
            state.callbacks.spawn_delivery(id);
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
