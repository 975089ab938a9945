//! Attribution in the request path: the outcome of each start, cancel and completion, the
//! record written before the answer goes out, and the metering read API
//! `GET /api/v1/attribution/events?after=<seq>&limit=<n>[&wait=<duration>]`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as _;
use tracing::error;

use crate::attribution::Record;
use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody, full};
use crate::error::GatewayError;
use crate::request::{self, form_pairs};
/// Completes `record` from the answer, counts it in `metrics` and writes it to `log`; the
/// answer waits for the log's durability.
pub async fn finish(
    metrics: &crate::metrics::Metrics,
    log: Option<&crate::attribution::AttributionLog>,
    mut record: Record,
    response: &Response<Body>,
    started: Instant,
) -> Result<(), GatewayError> {
    record.status = response.status().as_u16();
    // Exact for buffered answers and for relayed ones with a Content-Length.
    let hint = response.body().size_hint();
    record.response_bytes = hint.exact().unwrap_or(hint.lower());
    record.latency_us = started.elapsed().as_micros() as u64;
    if record.outcome.is_rejected() {
        record.billable = 0;
    }
    metrics.record_operation(&record);
    metrics.traffic.record(&record);
    let Some(log) = log else {
        return Ok(());
    };
    log.append(record).await.map(drop).map_err(|e| {
        error!(error = %e, "attribution record not written; refusing to answer without it");
        GatewayError::internal("the gateway could not record this call; retry")
    })
}

/// `GET /api/v1/attribution/events`: records after `after` (default 0) as JSON lines, at most
/// `limit` (default 1000, at most 10000). With `wait` (at most 30 s), waits for new records
/// when there are none yet. Metering identities only.
pub async fn events(
    log: Option<&crate::attribution::AttributionLog>,
    shutdown: &tokio_util::sync::CancellationToken,
    peer: &Peer,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    authz::authorize(peer, Action::ReadAttribution)?;
    request::require_method(&request, &[Method::GET])?;
    let Some(log) = log else {
        return Err(GatewayError::new(
            crate::ErrorType::NotImplemented,
            "attribution is turned off on this gateway",
        ));
    };
    let (mut after, mut limit, mut wait) = (0u64, 1000usize, Duration::ZERO);
    for (key, value) in request
        .uri()
        .query()
        .map(|q| form_pairs(q).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let bad = |what: &str| {
            GatewayError::bad_request(format!("invalid {key} {value:?}: expected {what}"))
        };
        match key.as_str() {
            "after" => after = value.parse().map_err(|_| bad("a sequence number"))?,
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("a positive number"))?
                    .min(10_000)
            }
            "wait" => {
                wait = crate::nexus::parse_duration(&value)
                    .ok_or_else(|| bad("a duration like 5s"))?
                    .min(Duration::from_secs(30))
            }
            _ => {}
        }
    }
    if log.last_seq() <= after && !wait.is_zero() {
        tokio::select! {
            _ = log.wait_after(after, wait) => {}
            () = shutdown.cancelled() => {}
        }
    }
    let dir = log.dir().to_path_buf();
    let lines =
        tokio::task::spawn_blocking(move || crate::attribution::read_after(&dir, after, limit))
            .await
            .map_err(|e| GatewayError::internal(e.to_string()))?
            .map_err(|e| GatewayError::internal(format!("cannot read attribution: {e}")))?;
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let mut response = Response::new(full(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response.headers_mut().insert(
        "nexus-attribution-last-seq",
        HeaderValue::from(log.last_seq()),
    );
    Ok(response)
}
