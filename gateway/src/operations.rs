//! Nexus start and cancel requests from callers: resolve the endpoint, authorize the caller,
//! and route to the endpoint's target.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use nexus_registry::{Endpoint, Target};
use tokio::time::Instant;

use nexus_certs::Identity;

use crate::attribution::{Kind, Outcome, Record};
use crate::authz::{self, Caller, Peer};
use crate::body::{Body, CappedBody, RequestBody, full};
use crate::callback_token::CallbackClaims;
use crate::error::GatewayError;
use crate::external;
use crate::matching::{QueueKey, Task};
use crate::metering;
use crate::names::{Namespace, TaskQueue};
use crate::nexus::{self, OperationKind, OperationPath, headers};
use crate::request;
use crate::state::State;
use crate::telemetry::{self, SpanKind, Trace};

/// Serves one start or cancel and writes its attribution record before answering.
/// `connection` is set only with tracing on.
pub async fn handle(
    state: &State,
    peer: &Peer,
    connection: Option<&telemetry::Connection>,
    secret: Option<&str>,
    path: Result<OperationPath, GatewayError>,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let started = std::time::Instant::now();
    let kind = match &path {
        Ok(OperationPath {
            kind: OperationKind::Start,
            ..
        }) => Kind::Start,
        Ok(_) => Kind::Cancel,
        // A path too malformed to parse is still attributed, by its last segment.
        Err(_) if request.uri().path().ends_with("/cancel") => Kind::Cancel,
        Err(_) => Kind::Start,
    };
    let mut trace = match &state.telemetry {
        Some(telemetry) => {
            let name = match kind {
                Kind::Start => "nexus.start",
                _ => "nexus.cancel",
            };
            telemetry.operation(name, request.headers(), connection)
        }
        None => Trace::default(),
    };
    let mut facts = CallFacts {
        request_id: header_text(request.headers(), &headers::REQUEST_ID),
        operation_token: header_text(request.headers(), &headers::OPERATION_TOKEN),
        ..CallFacts::default()
    };
    let served = serve(state, peer, secret, path, request, &mut facts, &mut trace).await;
    let (response, outcome) = match served {
        Ok(response) => {
            let outcome = crate::outcome::target_outcome(kind, &response);
            (response, outcome)
        }
        Err(error) => {
            let outcome = crate::outcome::error_outcome(&error);
            (error.into_response(), outcome)
        }
    };
    let record = facts.into_record(kind, peer, outcome);
    if trace.is_sampled() {
        describe(&mut trace, &record, response.status());
    }
    let mut attribution = trace.child("nexus.attribution", SpanKind::Internal);
    let written = metering::finish(
        &state.metrics,
        state.attribution.as_ref(),
        record,
        &response,
        started,
    )
    .await;
    if let Err(error) = &written {
        attribution.fail(&error.message);
        trace.fail(&error.message);
    }
    attribution.end();
    trace.end();
    written?;
    Ok(response)
}

/// What a traced start or cancel's server span says of it.
fn describe(trace: &mut Trace, record: &Record, status: StatusCode) {
    let host = record
        .target_url
        .as_deref()
        .and_then(|url| url.parse::<http::Uri>().ok())
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
    trace.describe(&telemetry::Facts {
        caller_namespace: record.caller_namespace.as_deref(),
        endpoint: record.endpoint.as_deref(),
        target_namespace: record.target_namespace.as_deref(),
        target: record.task_queue.as_deref().or(host.as_deref()),
        service: record.service.as_deref(),
        operation: record.operation.as_deref(),
        outcome: &record.outcome.as_str(),
        status,
    });
}

/// What is known of a start or cancel, learned step by step as it is served; its attribution
/// record is derived from it once the answer is known.
#[derive(Default)]
struct CallFacts {
    /// The namespace the call is made for (`ns@cluster` for a cluster's), and how the caller
    /// proved itself, once known.
    caller: Option<(Namespace, String)>,
    request_id: Option<String>,
    operation_token: Option<String>,
    /// The path, once it parsed: the call is served from here, and the record takes its
    /// service, operation and endpoint name without copies.
    path: Option<OperationPath>,
    endpoint: Option<Arc<Endpoint>>,
    request_bytes: u64,
}

impl CallFacts {
    fn into_record(self, kind: Kind, peer: &Peer, outcome: Outcome) -> Record {
        let (service, operation, named) = match self.path {
            Some(p) => (Some(p.service), Some(p.operation), Some(p.endpoint)),
            None => (None, None, None),
        };
        let mut record = Record {
            kind,
            request_id: self.request_id,
            operation_token: self.operation_token,
            service,
            operation,
            endpoint: named,
            request_bytes: self.request_bytes,
            // The target answered: one action, unless the answer is a refusal (see metering).
            billable: u32::from(!matches!(
                outcome,
                Outcome::Rejected(_) | Outcome::Destination(_)
            )),
            outcome,
            ..Record::default()
        };
        if let Some((namespace, credential)) = self.caller {
            record.caller_namespace = Some(namespace.into_string());
            record.caller_identity = Some(credential);
        } else if let Ok(p) = peer {
            record.caller_identity = Some(p.uri.clone());
            if let Identity::Namespace(ns) = &p.identity {
                record.caller_namespace = Some(ns.clone());
            }
        }
        if let Some(endpoint) = self.endpoint {
            // Named by id in the path, the endpoint is attributed by its name.
            if record.endpoint.as_deref() != Some(&endpoint.spec.name) {
                record.endpoint = Some(endpoint.spec.name.clone());
            }
            record.endpoint_id = Some(endpoint.id.clone());
            if let Some((namespace, task_queue)) = endpoint.spec.target.namespace_and_queue() {
                record.target_namespace = Some(namespace.to_owned());
                record.task_queue = Some(task_queue.to_owned());
            }
            if let Target::External { url } = &endpoint.spec.target {
                record.target_url = Some(url.clone());
            }
        }
        record
    }
}

fn header_text(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn serve(
    state: &State,
    peer: &Peer,
    secret: Option<&str>,
    path: Result<OperationPath, GatewayError>,
    request: Request<RequestBody>,
    facts: &mut CallFacts,
    trace: &mut Trace,
) -> Result<Response<Body>, GatewayError> {
    let who = authz::caller(peer, secret, &state.registry)?;
    let _in_flight = state.track_operation();
    if state.is_draining() {
        return Err(GatewayError::unavailable(
            "the gateway is shutting down; retry on another instance",
        )
        .with_retry_after(Duration::from_secs(1)));
    }
    request::require_method(&request, &[Method::POST])?;
    let path = &*facts.path.insert(path?);
    let cancel_token = match &path.kind {
        OperationKind::Start => None,
        OperationKind::Cancel { path_token } => Some(cancel_token(
            path_token.as_deref(),
            request.headers(),
            request.uri().query(),
        )?),
    };
    let credential = credential(&who, peer);
    let (caller, cluster, cancel_token) = acting_namespace(state, who, path, cancel_token)?;
    let caller = &facts.caller.insert((caller, credential)).0;
    let Some(endpoint) = state.registry.resolve(&path.endpoint) else {
        state.inbound.charge_caller(caller)?;
        return Err(GatewayError::not_found(format!(
            "endpoint {:?} not found",
            path.endpoint
        )));
    };
    facts.endpoint = Some(endpoint.clone());
    authz::authorize_call(caller, &endpoint)?;
    let _admitted = state
        .inbound
        .admit_or_push_back(caller, &endpoint.spec.name)
        .await?;
    let timeout = nexus::request_timeout(request.headers())?;
    let max = state.limits.max_body_bytes;
    if request.body().size_hint().lower() > max as u64 {
        // A declared length over the cap: refused before anything reaches the target.
        return Err(GatewayError::bad_request(format!(
            "request body exceeds the limit of {max} bytes"
        )));
    }
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let mut forwarded = parts.headers;
    nexus::keep_relayed(&mut forwarded);
    if let Some(token) = cancel_token {
        facts.operation_token = Some(token.clone());
        forwarded.insert(
            headers::OPERATION_TOKEN,
            header_value(&token, "operation token")?,
        );
    }
    let mut below_prefix = path.below_prefix.clone();
    if path.kind == OperationKind::Start {
        seal_callback(
            state,
            caller,
            &endpoint,
            path,
            &mut below_prefix,
            &mut forwarded,
            trace,
        )
        .await?;
    }
    let wait = wait_budget(timeout, state);
    let response = match &endpoint.spec.target {
        Target::Worker {
            namespace,
            task_queue,
        } => {
            let body = request::read_body(body, &state.limits).await?;
            facts.request_bytes = body.len() as u64;
            let key = QueueKey {
                namespace: Namespace::new(namespace.clone()),
                task_queue: TaskQueue::new(task_queue.clone()),
            };
            let token = add_task_headers(&mut forwarded, caller, &endpoint, path, &below_prefix)?;
            trace.routed();
            // From the task queued to the worker's answer; the worker's spans sit below it.
            let mut worker = trace.child("nexus.worker", SpanKind::Client);
            if worker.is_recording() {
                worker.set("nexus.target_namespace", namespace.clone());
                worker.set("nexus.target", task_queue.clone());
            }
            worker.propagate(&mut forwarded);
            let mut task = Task {
                token,
                headers: forwarded,
                body,
                deadline: received + wait,
                queue_wait: Default::default(),
            };
            let answer = match remote_replica(state, &key) {
                // Another replica's queue: its wait is inside the worker span, not measured here.
                Some(url) => {
                    let signing = state.callbacks.forward_key();
                    crate::replica_forward::forward(&state.proxy, signing, &url, &key, task).await
                }
                None => {
                    task.queue_wait = worker.child("nexus.queue_wait");
                    state.matching.dispatch(&key, task).await
                }
            };
            match &answer {
                Ok(answer) => worker.answered(answer.status),
                Err(error) => worker.fail(&error.message),
            }
            worker.end();
            let answer = answer?;
            let mut response = Response::new(full(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            nexus::keep_relayed(response.headers_mut());
            response
        }
        Target::External { url } => {
            forwarded.insert(
                headers::CALLER_NAMESPACE,
                header_value(caller, "caller namespace")?,
            );
            let (body, watch) = CappedBody::new(body, state.limits.max_body_bytes);
            trace.routed();
            // From the handoff to the lane to the handler's answer; its spans sit below it.
            let mut upstream = trace.child("nexus.upstream", SpanKind::Client);
            if upstream.is_recording()
                && let Ok(uri) = url.parse::<http::Uri>()
                && let Some(host) = uri.authority()
            {
                upstream.set("nexus.target", host.as_str().to_owned());
            }
            upstream.propagate(&mut forwarded);
            let lane_wait = upstream.child("nexus.lane_wait");
            let forwarded = external::forward(
                state,
                external::Forward {
                    kind: path.kind.as_str(),
                    caller,
                    endpoint_name: &endpoint.spec.name,
                    base_url: url,
                    below_prefix: &below_prefix,
                    headers: forwarded,
                    body: body.boxed(),
                    watch: watch.clone(),
                    deadline: received + wait,
                    lane_wait,
                },
            )
            .await;
            facts.request_bytes = watch.bytes();
            match &forwarded {
                Ok(response) => upstream.answered(response.status()),
                Err(error) => upstream.fail(&error.message),
            }
            upstream.end();
            forwarded?
        }
    };
    match &cluster {
        Some(cluster) if response.status() == StatusCode::CREATED => {
            let key = state.callbacks.token_key();
            wrap_started(response, key, &cluster.name, caller).await
        }
        _ => Ok(response),
    }
}

/// The namespace a call is made for, and the handler's token of a cancel. A certificate
/// namespace acts for itself; a cluster for the namespace its callback URL names (start) or
/// its wrapped token carries (cancel), qualified as `ns@cluster`.
/// Returns the cluster too, for a cluster caller: its started operations' tokens get wrapped.
fn acting_namespace(
    state: &State,
    who: Caller,
    path: &OperationPath,
    cancel_token: Option<String>,
) -> Result<ActingFor, GatewayError> {
    let cluster = match who {
        Caller::Namespace(ns) => return Ok((ns, None, cancel_token)),
        Caller::Cluster { cluster, .. } => cluster,
    };
    let (namespace, token) = match cancel_token {
        Some(wrapped) => {
            let key = state.callbacks.token_key();
            let (namespace, token) = crate::cluster_tokens::unwrap(key, &cluster.name, &wrapped)?;
            (namespace, Some(token))
        }
        None => {
            let query = path.below_prefix.split_once('?').map(|(_, q)| q);
            let callback = query
                .and_then(|q| request::form_pairs(q).find(|(k, _)| k == "callback"))
                .map(|(_, url)| url)
                .ok_or_else(|| {
                    GatewayError::unauthorized(format!(
                        "a start from cluster {:?} must carry a callback URL: it names the caller namespace",
                        cluster.name
                    ))
                })?;
            let namespace = cluster
                .namespace_in_callback(&callback)
                .map_err(GatewayError::unauthorized)?
                .to_owned();
            (namespace, None)
        }
    };
    let qualified = Namespace::new(format!("{namespace}@{}", cluster.name));
    Ok((qualified, Some(cluster), token))
}

/// The namespace a call is made for, the cluster vouching for it (if any), and the handler's
/// token of a cancel.
type ActingFor = (
    Namespace,
    Option<std::sync::Arc<nexus_registry::Cluster>>,
    Option<String>,
);

/// How the caller proved itself, for attribution. Never a secret: a secret is named by id.
fn credential(who: &Caller, peer: &Peer) -> String {
    match (who, peer) {
        (Caller::Cluster { credential, .. }, _) => credential.clone(),
        (Caller::Namespace(_), Ok(p)) => p.uri.clone(),
        (Caller::Namespace(ns), Err(_)) => format!("namespace:{ns}"),
    }
}

/// Reads a whole response body of at most `max` bytes.
async fn read_capped(mut body: Body, max: usize) -> Result<bytes::Bytes, GatewayError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| GatewayError::internal(format!("reading the handler's answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > max {
                return Err(GatewayError::internal(format!(
                    "the handler's start answer is larger than {max} bytes"
                )));
            }
        }
    }
    Ok(out.freeze())
}

/// Largest 201 body whose token is wrapped for a cluster caller.
const MAX_STARTED_BODY: usize = 64 * 1024;

/// Wraps the token (and the deprecated `id`) of an async start's answer for a cluster caller.
async fn wrap_started(
    response: Response<Body>,
    key: &ring::hmac::Key,
    cluster: &str,
    caller: &str,
) -> Result<Response<Body>, GatewayError> {
    let namespace = caller.split_once('@').map_or(caller, |(ns, _)| ns);
    let (mut parts, body) = response.into_parts();
    let bytes = read_capped(body, MAX_STARTED_BODY).await?;
    let Ok(mut started) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        // Not a Nexus start answer: relayed as it is, the caller judges it.
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    for field in ["token", "id"] {
        if let Some(token) = started.get(field).and_then(|t| t.as_str()) {
            started[field] = crate::cluster_tokens::wrap(key, cluster, namespace, token).into();
        }
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&started).map_err(|e| GatewayError::internal(e.to_string()))?;
    Ok(Response::from_parts(parts, full(body)))
}

/// With replicas: the replica to forward a task to, when no worker polls `key` here but one
/// polls it there (the first announced; they are in replica order).
fn remote_replica(state: &State, key: &QueueKey) -> Option<String> {
    state.shared_store.as_ref()?;
    if state
        .matching
        .has_poller(key, std::time::Duration::from_secs(2))
    {
        return None;
    }
    state.remote_pollers.load().get(key)?.first().cloned()
}

/// Replaces the caller's `callback` URL with a sealed gateway URL and removes the caller's
/// `Nexus-Callback-*` headers, which travel inside the seal.
/// A traced operation's context is sealed with it, so that its completion continues the trace.
async fn seal_callback(
    state: &State,
    caller: &str,
    endpoint: &Endpoint,
    path: &OperationPath,
    below_prefix: &mut String,
    forwarded: &mut HeaderMap,
    trace: &Trace,
) -> Result<(), GatewayError> {
    let Some((raw_path, query)) = below_prefix.split_once('?') else {
        return Ok(());
    };
    // Keys compare after percent-decoding (`%63allback` is `callback`), so what is validated
    // is what is sealed and rewritten.
    let mut callbacks = request::form_pairs(query).filter(|(k, _)| k == "callback");
    let Some((_, callback)) = callbacks.next() else {
        return Ok(());
    };
    let repeated = callbacks.next().is_some();
    drop(callbacks);
    if repeated {
        return Err(GatewayError::bad_request(
            "more than one callback query parameter",
        ));
    }
    validate_callback_url(state, &callback)?;
    let callback_headers: Vec<(String, String)> = forwarded
        .iter()
        .filter_map(|(name, value)| {
            let stripped = name.as_str().strip_prefix(CALLBACK_PREFIX)?;
            if !crate::callbacks::completion_header_allowed(stripped) {
                return None;
            }
            Some((stripped.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let names: Vec<HeaderName> = forwarded
        .keys()
        .filter(|n| n.as_str().starts_with(CALLBACK_PREFIX))
        .cloned()
        .collect();
    for name in names {
        forwarded.remove(name);
    }
    let now = crate::callbacks::now_ms();
    let target_namespace = endpoint.spec.target.namespace().map(str::to_owned);
    let (traceparent, tracestate) = trace.sealed(forwarded).unzip();
    let claims = CallbackClaims {
        url: callback,
        headers: callback_headers,
        caller_namespace: caller.to_owned(),
        target_namespace,
        endpoint: endpoint.spec.name.clone(),
        endpoint_id: endpoint.id.clone(),
        service: path.service.clone(),
        operation: path.operation.clone(),
        request_id: forwarded
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        start_ms: now,
        expires_ms: now + state.callbacks.settings.expiry.as_millis() as u64,
        traceparent,
        tracestate: tracestate.flatten(),
    };
    let sealed = state.callbacks.callback_url(&claims).await?;
    let rewritten: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if request::form_decode(key) == "callback" {
                format!("callback={}", form_encode(&sealed))
            } else {
                pair.to_owned()
            }
        })
        .collect();
    *below_prefix = format!("{raw_path}?{}", rewritten.join("&"));
    Ok(())
}

const CALLBACK_PREFIX: &str = "nexus-callback-";

fn validate_callback_url(state: &State, url: &str) -> Result<(), GatewayError> {
    const MAX: usize = 1000;
    if url.len() > MAX {
        return Err(GatewayError::bad_request(format!(
            "callback URL is longer than {MAX} characters"
        )));
    }
    state
        .callbacks
        .policy
        .check_url(url)
        .map_err(|refused| GatewayError::bad_request(refused.to_string()))
}

fn form_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// How long the gateway waits for the target: the caller's `Request-Timeout` less a buffer,
/// so the caller gets the gateway's 520 rather than its own timeout.
fn wait_budget(timeout: Option<Duration>, state: &State) -> Duration {
    let settings = state.matching.settings();
    match timeout {
        Some(t) if t > settings.deadline_buffer * 2 => t - settings.deadline_buffer,
        Some(t) => t / 2,
        None => settings.default_request_timeout,
    }
}

/// The operation token of a cancel: legacy path segment, `Nexus-Operation-Token` header, or
/// `?token=` query parameter.
fn cancel_token(
    path_token: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, GatewayError> {
    let from_header = headers
        .get(headers::OPERATION_TOKEN)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| GatewayError::bad_request("Nexus-Operation-Token is not valid text"))
        })
        .transpose()?;
    let from_query = request::query_param(query, "token");
    let token = path_token
        .map(str::to_owned)
        .or(from_header)
        .or(from_query)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            GatewayError::bad_request(
                "missing operation token: send it in the Nexus-Operation-Token header",
            )
        })?;
    if token.len() > nexus::MAX_TOKEN_LEN {
        return Err(GatewayError::bad_request(format!(
            "operation token is longer than {} bytes",
            nexus::MAX_TOKEN_LEN
        )));
    }
    Ok(token)
}

fn header_value(value: &str, what: &str) -> Result<HeaderValue, GatewayError> {
    HeaderValue::from_str(value)
        .map_err(|_| GatewayError::bad_request(format!("{what} cannot be sent as a header")))
}

/// An unguessable task token: 128 random bits from the thread's generator (seeded from the
/// operating system; no system call per task). Not sequential, so one task's token says
/// nothing about another's.
fn task_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn add_task_headers(
    h: &mut HeaderMap,
    caller: &str,
    endpoint: &Endpoint,
    path: &OperationPath,
    below_prefix: &str,
) -> Result<String, GatewayError> {
    let token = task_token();
    h.insert(headers::TASK_TOKEN, header_value(&token, "task token")?);
    h.insert(headers::TASK_PATH, header_value(below_prefix, "path")?);
    h.insert(
        headers::TASK_KIND,
        HeaderValue::from_static(path.kind.as_str()),
    );
    h.insert(
        headers::TASK_ENDPOINT,
        header_value(&endpoint.spec.name, "endpoint name")?,
    );
    h.insert(
        headers::TASK_ENDPOINT_ID,
        header_value(&endpoint.id, "endpoint id")?,
    );
    h.insert(
        headers::CALLER_NAMESPACE,
        header_value(caller, "caller namespace")?,
    );
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_tokens_are_random_not_sequential() {
        let tokens: Vec<String> = (0..1000).map(|_| task_token()).collect();
        for pair in tokens.windows(2) {
            assert_eq!(pair[0].len(), 32);
            assert!(pair[0].bytes().all(|b| b.is_ascii_hexdigit()));
            // Sharing a 16-digit prefix by chance: 2^-64.
            assert_ne!(pair[0][..16], pair[1][..16], "{pair:?}");
        }
    }
}
