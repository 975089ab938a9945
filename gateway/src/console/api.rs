//! The console's JSON, below `/console/api/`. Endpoints and completions go through the admin
//! APIs' own handlers, so the page shows their validation messages word for word.
//!
//! | Path | Answer |
//! |---|---|
//! | `GET overview` | what this door allows: `{writable, attribution}` |
//! | `endpoints[/{id}]` | [`crate::admin`] (list, get, create, update, delete) |
//! | `GET traffic?window=1m` | [`crate::traffic`] rows over the window (at most 5m) |
//! | `GET usage` | actions per hour per caller namespace, last 24 h ([`super::usage`]) |
//! | `GET destinations` | every outbound lane, and completion counts |
//! | `completions[/{id}[/retry]]` | [`crate::completions::manage`] (list, retry, drop) |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response};
use nexus_outbound_queue::BreakerState;
use serde_json::json;

use crate::body::{Body, RequestBody, json};
use crate::error::GatewayError;
use crate::request::{self, Route};
use crate::state::State;
use crate::{admin, completions};

pub async fn handle(
    state: &Arc<State>,
    writable: bool,
    rest: &str,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let below = |base: &str| match tail {
        "" => base.to_owned(),
        tail => format!("{base}/{tail}"),
    };
    match head {
        "endpoints" => {
            let path = below(request::ENDPOINTS_PATH);
            let Route::Endpoints { id } = Route::parse(request.method(), &path, None)? else {
                return Err(not_found(rest));
            };
            let api = admin::AdminApi {
                registry: &state.registry,
                limits: &state.limits,
                plain_http: state.upstream.plain_http,
            };
            admin::serve(&api, id, request).await
        }
        "completions" => {
            let path = below(request::COMPLETIONS_PATH);
            let Route::Completions(route) = Route::parse(request.method(), &path, None)? else {
                return Err(not_found(rest));
            };
            completions::manage(state, route, request).await
        }
        _ if !tail.is_empty() => Err(not_found(rest)),
        "overview" => read_only(
            &request,
            || json!({ "writable": writable, "attribution": state.attribution.is_some() }),
        ),
        "traffic" => {
            let window = window(request.uri().query())?;
            let rows = state.metrics.traffic.snapshot(window);
            read_only(
                &request,
                || json!({ "windowSeconds": window.as_secs(), "rows": rows }),
            )
        }
        "destinations" => read_only(&request, || destinations(state)),
        "usage" => {
            request::require_method(&request, &[Method::GET])?;
            Ok(json(&usage(state).await?))
        }
        _ => Err(not_found(rest)),
    }
}

fn not_found(rest: &str) -> GatewayError {
    GatewayError::not_found(format!("no console API at /console/api/{rest}"))
}

fn read_only(
    request: &Request<RequestBody>,
    body: impl FnOnce() -> serde_json::Value,
) -> Result<Response<Body>, GatewayError> {
    request::require_method(request, &[Method::GET])?;
    Ok(json(&body()))
}

/// `window` of the traffic view: a duration like `1m`, default one minute, at most the five
/// minutes kept.
fn window(query: Option<&str>) -> Result<Duration, GatewayError> {
    let longest = crate::traffic::SLOT * crate::traffic::SLOTS as u32;
    let Some(text) = request::query_param(query, "window") else {
        return Ok(Duration::from_secs(60));
    };
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() && d <= longest => Ok(d),
        _ => Err(GatewayError::bad_request(format!(
            "invalid window {text:?}: expected a duration from 10s to {}",
            humantime::format_duration(longest)
        ))),
    }
}

fn destinations(state: &State) -> serde_json::Value {
    let mut lanes = state.outbound.stats();
    lanes.sort_by(|a, b| {
        (&a.key.destination, &a.key.source, a.key.kind).cmp(&(
            &b.key.destination,
            &b.key.source,
            b.key.kind,
        ))
    });
    let lanes: Vec<_> = lanes
        .iter()
        .map(|l| {
            json!({
                "kind": l.key.kind,
                "source": l.key.source,
                "destination": l.key.destination,
                "queued": l.queued,
                "inFlight": l.in_flight,
                "rejectedFull": l.rejected_full,
                "rejectedOpen": l.rejected_open,
                "breaker": match l.breaker {
                    BreakerState::Closed => "closed",
                    BreakerState::Open => "open",
                    BreakerState::HalfOpen => "half-open",
                },
                "successes": l.successes,
                "failures": l.failures,
            })
        })
        .collect();
    let c = state.callbacks.counts();
    json!({
        "lanes": lanes,
        "completions": {
            "pending": c.pending,
            "failed": c.failed,
            "delivered": c.delivered,
            "attempts": c.attempts,
        },
    })
}

/// The chart, counted off the async workers and cached briefly.
async fn usage(state: &State) -> Result<serde_json::Value, GatewayError> {
    let Some(log) = state.attribution.as_ref() else {
        return Err(GatewayError::new(
            crate::ErrorType::NotImplemented,
            "attribution is turned off on this gateway: no actions to chart",
        ));
    };
    let last_seq = log.last_seq();
    let chart = match state.usage_chart.get(last_seq) {
        Some(chart) => chart,
        None => {
            let dir = log.dir().to_path_buf();
            let chart = tokio::task::spawn_blocking(move || {
                super::usage::actions_per_hour(&dir, SystemTime::now())
            })
            .await
            .map_err(|e| GatewayError::internal(e.to_string()))?
            .map_err(|e| GatewayError::internal(format!("cannot read attribution: {e}")))?;
            let chart = Arc::new(chart);
            state.usage_chart.put(last_seq, chart.clone());
            chart
        }
    };
    serde_json::to_value(&*chart).map_err(|e| GatewayError::internal(e.to_string()))
}
