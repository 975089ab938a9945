//! The export of finished spans: OTLP/HTTP, protobuf (`POST` with
//! `Content-Type: application/x-protobuf`, an `ExportTraceServiceRequest`), as any
//! OpenTelemetry collector takes it, through the gateway's own HTTP client.
//!
//! A span that ends goes into a bounded queue ([`QUEUE`] spans) without waiting: when the queue
//! is full (the collector is slow or gone), the span is dropped and counted, so a request never
//! waits on tracing. One background task sends what the queue holds every `export_interval`, or
//! as soon as [`BATCH`] spans wait, one request at a time within [`EXPORT_TIMEOUT`]; a batch the
//! collector does not take is dropped and counted too (no retries: the queue behind it is what
//! matters). The numbers are OpenTelemetry's batch processor defaults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Finished spans that may wait for export; beyond, spans are dropped (and counted).
pub const QUEUE: usize = 2048;
/// Most spans in one export request.
pub const BATCH: usize = 512;
/// Time for one export request.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Settings {
    /// The collector's traces URL.
    pub endpoint: Uri,
    pub client: crate::client::HttpClient,
    pub resource: opentelemetry_sdk::Resource,
    pub interval: Duration,
}

/// What the export did, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    /// Spans the collector took.
    pub exported: u64,
    /// Spans lost: the queue was full, or the collector did not take their batch.
    pub dropped: u64,
    /// Export requests that failed (no answer in time, or not 2xx).
    pub failed_requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_requests: AtomicU64,
}

/// The span processor the tracer hands finished spans to: into the queue, never waiting.
#[derive(Debug)]
pub struct Enqueue {
    spans: mpsc::Sender<SpanData>,
    counters: Arc<Counters>,
}

impl SpanProcessor for Enqueue {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The running export: its counters, and a way to ask for everything queued to go now.
pub struct Exporting {
    counters: Arc<Counters>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Exporting {
    pub fn counts(&self) -> ExportCounts {
        ExportCounts {
            exported: self.counters.exported.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed_requests: self.counters.failed_requests.load(Ordering::Relaxed),
        }
    }

    /// Exports what is queued now, waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let (done, exported) = oneshot::channel();
        if self.flush.try_send(done).is_ok() {
            let _ = tokio::time::timeout(within, exported).await;
        }
    }
}

/// Starts the export task; returns the processor for the tracer and the handle on the export.
pub fn start(settings: Settings) -> (Enqueue, Exporting) {
    let (spans, queued) = mpsc::channel(QUEUE);
    let (flush, flushes) = mpsc::channel(4);
    let counters = Arc::new(Counters::default());
    let exporter = Exporter {
        resource: ResourceAttributesWithSchema::from(&settings.resource),
        endpoint: settings.endpoint,
        client: settings.client,
        counters: counters.clone(),
        failing: false,
    };
    tokio::spawn(run(exporter, queued, flushes, settings.interval));
    (
        Enqueue {
            spans,
            counters: counters.clone(),
        },
        Exporting { counters, flush },
    )
}

/// Sends batches until the tracer is gone (its processor, the queue's sender, dropped).
async fn run(
    mut exporter: Exporter,
    mut queued: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    interval: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Below BATCH here: a full batch is sent as soon as it fills.
        let room = BATCH - batch.len();
        tokio::select! {
            received = queued.recv_many(&mut batch, room) => {
                if received == 0 {
                    exporter.export(&mut batch).await;
                    return;
                }
                if batch.len() >= BATCH {
                    exporter.export(&mut batch).await;
                }
            }
            _ = tick.tick() => exporter.export(&mut batch).await,
            Some(done) = flushes.recv() => {
                while let Ok(span) = queued.try_recv() {
                    batch.push(span);
                    if batch.len() >= BATCH {
                        exporter.export(&mut batch).await;
                    }
                }
                exporter.export(&mut batch).await;
                let _ = done.send(());
            }
        }
    }
}

struct Exporter {
    endpoint: Uri,
    client: crate::client::HttpClient,
    resource: ResourceAttributesWithSchema,
    counters: Arc<Counters>,
    /// Whether the last export failed: a dead collector is logged once, not every interval.
    failing: bool,
}

impl Exporter {
    /// Sends `batch` (emptied) and counts the outcome.
    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                std::mem::take(batch),
                &self.resource,
            ),
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, self.post(request.encode_to_vec())).await {
            Ok(Ok(rejected)) => {
                let rejected = rejected.min(count);
                self.counters
                    .exported
                    .fetch_add(count - rejected, Ordering::Relaxed);
                self.counters.dropped.fetch_add(rejected, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    info!(endpoint = %self.endpoint, "span export works again");
                }
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(why)) => why,
                    _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                self.counters
                    .failed_requests
                    .fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    warn!(endpoint = %self.endpoint, error = %why, "span export failed; dropping spans until the collector takes them");
                }
            }
        }
    }

    /// Posts one encoded request; the number of spans the collector says it rejected.
    async fn post(&self, body: Vec<u8>) -> Result<u64, String> {
        let request = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| root_cause(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("the collector answered {status}: {text}"));
        }
        // A partial success names the spans it did not take.
        let answer = ExportTraceServiceResponse::decode(body).unwrap_or_default();
        Ok(answer
            .partial_success
            .map_or(0, |partial| partial.rejected_spans.max(0) as u64))
    }
}

/// The innermost cause of an error, which names what actually went wrong.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
