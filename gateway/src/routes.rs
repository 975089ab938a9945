//! Top-level routing of data-port requests: the route is parsed once ([`Route`]) and the
//! request goes to its handler, which asks [`crate::authz`] before it acts. Every error
//! becomes a Nexus failure response here.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use tracing::{Instrument, debug, debug_span};

use crate::authz::Peer;
use crate::body::{Body, RequestBody};
use crate::request::Route;
use crate::state::State;
use crate::{admin, cluster_admin, completions, console, metering, operations, worker_api};

fn workers(state: &State) -> worker_api::WorkerApi<'_> {
    worker_api::WorkerApi {
        matching: &state.matching,
        limits: &state.limits,
        shutdown: &state.shutdown,
    }
}

/// Answers one request; never fails: every error becomes a Nexus failure response here.
/// `connection` is set only with tracing on.
pub async fn handle(
    state: Arc<State>,
    peer: Arc<Peer>,
    connection: Option<&crate::telemetry::Connection>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let started = Instant::now();
    let uri = request.uri();
    let route = Route::parse(request.method(), uri.path(), uri.query());
    let label = route.as_ref().map_or("unknown", Route::label);
    // Debug level: spans on every request cost measurable CPU when info is on.
    let span = debug_span!(
        "request",
        method = %request.method(),
        path = %crate::request::loggable_path(uri.path())
    );
    // Each handler's future is boxed, so this one stays small whatever the largest handler
    // holds (about 15 KB unboxed). hyper and tokio move the request future by value (h2 spawns
    // a task per stream), and every move copied all of it.
    let result = async {
        match route? {
            Route::Operation { secret, path } => {
                let secret = secret.as_deref();
                Box::pin(operations::handle(
                    &state, &peer, connection, secret, path, request,
                ))
                .await
            }
            Route::Completion(token) => {
                Box::pin(completions::complete(&state, &peer, token, request)).await
            }
            Route::Completions(route) => {
                Box::pin(completions::admin(&state, &peer, route, request)).await
            }
            Route::Poll {
                namespace,
                task_queue,
            } => {
                let api = workers(&state);
                Box::pin(worker_api::poll(
                    &api, &peer, namespace, task_queue, request,
                ))
                .await
            }
            Route::Respond { token } => {
                let api = workers(&state);
                Box::pin(worker_api::respond(&api, &peer, token, request)).await
            }
            Route::Endpoints { id } => {
                let api = admin::AdminApi {
                    registry: &state.registry,
                    limits: &state.limits,
                    plain_http: state.upstream.plain_http,
                };
                Box::pin(admin::handle(&api, &peer, id, request)).await
            }
            Route::Clusters { name, secrets } => {
                let api = cluster_admin::ClusterApi {
                    registry: &state.registry,
                    limits: &state.limits,
                    policy: &state.callbacks.policy,
                };
                Box::pin(cluster_admin::handle(&api, &peer, name, secrets, request)).await
            }
            Route::ForwardedTask {
                namespace,
                task_queue,
            } => {
                let signing = state.callbacks.forward_key();
                let api = workers(&state);
                Box::pin(worker_api::forwarded(
                    &api, signing, &peer, namespace, task_queue, request,
                ))
                .await
            }
            Route::AttributionEvents => {
                let log = state.attribution.as_ref();
                Box::pin(metering::events(log, &state.shutdown, &peer, request)).await
            }
            Route::Console => {
                let door = crate::authz::ConsoleDoor::DataPort(&peer);
                Ok(Box::pin(console::serve(&state, door, request)).await)
            }
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
        .record(label, response.status().as_u16(), started.elapsed());
    response
}
