//! The ops port: liveness, readiness and metrics, plain HTTP on localhost; and the console
//! (see [`crate::console`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::authz::ConsoleDoor;
use crate::body::{Body, RequestBody, full};
use crate::state::State;

pub async fn handle(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    if crate::request::is_console(request.uri().path()) {
        let door = ConsoleDoor::OpsPort {
            writable: state.console.writable,
        };
        return crate::console::serve(state, door, request.map(RequestBody::new)).await;
    }
    let (status, text) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        // Degraded still serves: routing goes on from memory; writes answer 503 meanwhile.
        "/readyz"
            if state.ready.load(Ordering::SeqCst)
                && !state.store_healthy.load(Ordering::SeqCst) =>
        {
            (
                StatusCode::OK,
                "degraded: the shared store does not answer; routing from memory, writes refused\n"
                    .into(),
            )
        }
        "/readyz" if state.ready.load(Ordering::SeqCst) => (StatusCode::OK, "ready\n".into()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => (StatusCode::OK, metrics(state)),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn metrics(state: &State) -> String {
    crate::metrics::render(&crate::metrics::Sources {
        metrics: &state.metrics,
        matching: &state.matching,
        outbound: &state.outbound,
        completions: state.callbacks.counts(),
        attribution_last_seq: state.attribution.as_ref().map(|log| log.last_seq()),
        attribution_waiting_reads: state
            .attribution
            .as_ref()
            .map_or(0, |log| log.waiting_reads()),
        tls_reloads: &state.tls_reloads,
        registry: &state.registry,
        store: &state.store_stats,
        store_up: state.store_healthy.load(Ordering::Relaxed),
        tracing: state.telemetry.as_ref().map(|t| t.counts()),
    })
}
