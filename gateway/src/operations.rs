//! Nexus start and cancel requests from callers: resolve the endpoint, authorize the caller,
//! and route to the endpoint's target.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use nexus_registry::{Endpoint, Target};
use tokio::time::Instant;

use crate::body::{Body, full};
use crate::error::GatewayError;
use crate::matching::{QueueKey, Task};
use crate::nexus::{self, OperationKind, OperationPath, headers};
use crate::routes;
use crate::server::Peer;
use crate::state::State;

pub async fn handle(
    state: &State,
    peer: &Peer,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let caller = routes::namespace(peer, "call Nexus endpoints")?.to_owned();
    let _in_flight = state.track_operation();
    if state.is_draining() {
        return Err(GatewayError::unavailable(
            "the gateway is shutting down; retry on another instance",
        )
        .with_retry_after(Duration::from_secs(1)));
    }
    routes::require_method(&request, &[Method::POST])?;
    let path = nexus::parse_operation_path(request.uri().path(), request.uri().query())?;
    let endpoint = state.registry.resolve(&path.endpoint).ok_or_else(|| {
        GatewayError::not_found(format!("endpoint {:?} not found", path.endpoint))
    })?;
    if !endpoint.allows_caller(&caller) {
        return Err(GatewayError::unauthorized(format!(
            "namespace {caller:?} is not allowed to call endpoint {:?}",
            endpoint.spec.name
        )));
    }
    let timeout = nexus::request_timeout(request.headers())?;
    let received = Instant::now();
    let cancel_token = match &path.kind {
        OperationKind::Start => None,
        OperationKind::Cancel { path_token } => Some(cancel_token(
            path_token.as_deref(),
            request.headers(),
            request.uri().query(),
        )?),
    };
    let (parts, body) = request.into_parts();
    let body = routes::read_body(state, body).await?;
    match &endpoint.spec.target {
        Target::Worker {
            namespace,
            task_queue,
        } => {
            let key = QueueKey {
                namespace: namespace.clone(),
                task_queue: task_queue.clone(),
            };
            let wait = wait_budget(timeout, state);
            let mut task_headers = HeaderMap::new();
            nexus::copy_relayed(&parts.headers, &mut task_headers);
            if let Some(token) = cancel_token {
                task_headers.insert(
                    headers::OPERATION_TOKEN,
                    header_value(&token, "operation token")?,
                );
            }
            add_task_headers(&mut task_headers, &caller, &endpoint, &path)?;
            let task = Task {
                token: task_headers[headers::TASK_TOKEN]
                    .to_str()
                    .unwrap_or_default()
                    .to_owned(),
                headers: task_headers,
                body,
                deadline: received + wait,
            };
            let answer = state.matching.dispatch(&key, task).await?;
            let mut response = Response::new(full(answer.body));
            *response.status_mut() = answer.status;
            nexus::copy_relayed(&answer.headers, response.headers_mut());
            Ok(response)
        }
        Target::External { url } => Err(GatewayError::new(
            crate::error::ErrorType::NotImplemented,
            format!(
                "endpoint {:?} targets external handler {url}, which this gateway build does not proxy",
                endpoint.spec.name
            ),
        )),
    }
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
    let from_query = query.and_then(|q| form_pairs(q).find(|(k, _)| k == "token").map(|(_, v)| v));
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

/// `application/x-www-form-urlencoded` pairs of a query string.
pub fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k), decode(v))
    })
}

fn header_value(value: &str, what: &str) -> Result<HeaderValue, GatewayError> {
    HeaderValue::from_str(value)
        .map_err(|_| GatewayError::bad_request(format!("{what} cannot be sent as a header")))
}

fn add_task_headers(
    h: &mut HeaderMap,
    caller: &str,
    endpoint: &Endpoint,
    path: &OperationPath,
) -> Result<(), GatewayError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    h.insert(headers::TASK_TOKEN, header_value(&token, "task token")?);
    h.insert(
        headers::TASK_PATH,
        header_value(&path.below_prefix, "path")?,
    );
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
    Ok(())
}
