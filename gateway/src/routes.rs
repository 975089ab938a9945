//! Top-level routing of data-port requests and the checks every route shares: identity,
//! method, bounded body reads.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use nexus_certs::Identity;
use tracing::{Instrument, debug, debug_span};

use crate::body::{Body, RequestBody};
use crate::error::{ErrorType, GatewayError};
use crate::server::Peer;
use crate::state::State;
use crate::{admin, callbacks, metering, operations, worker_api};

/// Answers one request; never fails: every error becomes a Nexus failure response here.
pub async fn handle(
    state: Arc<State>,
    peer: Arc<Peer>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = route_name(&path);
    // Debug level: spans on every request cost measurable CPU when info is on.
    let span = debug_span!("request", %method, %path);
    let result = async {
        match route {
            "operation" => operations::handle(&state, &peer, request).await,
            "completion" => callbacks::complete(&state, &peer, request).await,
            "callbacks-admin" => match identity(&peer)? {
                Identity::Admin(_) => callbacks::admin(&state, request).await,
                other => Err(GatewayError::unauthorized(format!(
                    "{other} may not manage completions: an admin certificate is required"
                ))),
            },
            "poll" => worker_api::poll(&state, &peer, request).await,
            "respond" => worker_api::respond(&state, &peer, request).await,
            "admin" => admin::handle(&state, &peer, request).await,
            "attribution" => metering::events(&state, &peer, request).await,
            _ => Err(GatewayError::not_found(format!(
                "no route for {method} {path}"
            ))),
        }
    }
    .instrument(span)
    .await;
    let response = result.unwrap_or_else(|error| {
        debug!(%error, "request failed");
        error.into_response()
    });
    state
        .metrics
        .record(route, response.status().as_u16(), started.elapsed());
    response
}

fn route_name(path: &str) -> &'static str {
    if path.starts_with(crate::nexus::ENDPOINTS_PREFIX) {
        "operation"
    } else if path.starts_with(callbacks::PREFIX) {
        "completion"
    } else if path == callbacks::ADMIN_PREFIX || path.starts_with("/api/v1/callbacks/") {
        "callbacks-admin"
    } else if path == metering::EVENTS_PATH {
        "attribution"
    } else if path.starts_with("/api/v1/namespaces/") {
        "poll"
    } else if path.starts_with("/api/v1/nexus-tasks/") {
        "respond"
    } else if path == admin::PREFIX || path.starts_with(admin::PREFIX_SLASH) {
        "admin"
    } else {
        "unknown"
    }
}

/// The verified identity, or 401 saying why there is none.
pub fn identity(peer: &Peer) -> Result<&Identity, GatewayError> {
    peer.as_ref().map(|p| &p.identity).map_err(|error| {
        GatewayError::unauthenticated(format!("client certificate not accepted: {error}"))
    })
}

/// The caller's namespace; other identities get 403.
pub fn namespace<'a>(peer: &'a Peer, action: &str) -> Result<&'a str, GatewayError> {
    match identity(peer)? {
        Identity::Namespace(ns) => Ok(ns),
        other => Err(GatewayError::unauthorized(format!(
            "{other} may not {action}: a namespace certificate is required"
        ))),
    }
}

pub fn require_method(
    request: &Request<RequestBody>,
    allowed: &[Method],
) -> Result<(), GatewayError> {
    if allowed.contains(request.method()) {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!(
            "invalid request method {}: expected {}",
            request.method(),
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

/// Reads a whole body within the size cap and the read timeout.
pub async fn read_body(state: &State, body: RequestBody) -> Result<Bytes, GatewayError> {
    let max = state.limits.max_body_bytes;
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(state.limits.body_read_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(
            GatewayError::bad_request(format!("request body exceeds the limit of {max} bytes")),
        ),
        Ok(Err(error)) => Err(GatewayError::bad_request(format!(
            "request body could not be read: {error}"
        ))),
        Err(_) => Err(GatewayError::new(
            ErrorType::RequestTimeout,
            format!(
                "request body not received within {:?}",
                state.limits.body_read_timeout
            ),
        )),
    }
}

/// Percent-decoded path segments after `prefix`.
pub fn segments_after<'a>(path: &'a str, prefix: &str) -> Vec<&'a str> {
    path.strip_prefix(prefix)
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default()
}
