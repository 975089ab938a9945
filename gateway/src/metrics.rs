//! Counters and gauges rendered as Prometheus text on the ops port.

use std::borrow::Borrow;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seeded per map; SipHash's stronger guarantee cost ~5 % of a request (BENCHMARKS.md, round 7).
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

use crate::attribution::{Kind, Outcome};
use crate::matching::Matching;
use crate::reload::ReloadStats;

/// Completion delivery counters, as the callbacks service keeps them.
pub struct CompletionCounts {
    pub pending: u64,
    pub failed: u64,
    pub delivered: u64,
    pub attempts: u64,
}

/// Everything a scrape reads: counters and the state of the parts that keep their own.
pub struct Sources<'a> {
    pub metrics: &'a Metrics,
    pub matching: &'a Matching,
    pub outbound: &'a nexus_outbound_queue::OutboundQueue,
    pub completions: CompletionCounts,
    pub attribution_last_seq: Option<u64>,
    /// Metering reads parked until a record after theirs is written.
    pub attribution_waiting_reads: usize,
    pub tls_reloads: &'a ReloadStats,
    pub registry: &'a nexus_registry::Registry,
    pub store: &'a StoreStats,
    pub store_up: bool,
    /// The span export, when tracing is on.
    pub tracing: Option<crate::telemetry::ExportCounts>,
}

/// The shared store of replicas, as this replica sees it.
#[derive(Default)]
pub struct StoreStats {
    /// Whether a shared store is in use at all (nothing is rendered otherwise).
    pub shared: std::sync::atomic::AtomicBool,
    pub refreshes: std::sync::atomic::AtomicU64,
    pub refresh_failures: std::sync::atomic::AtomicU64,
    /// Duration of the last periodic check, µs.
    pub last_check_micros: std::sync::atomic::AtomicU64,
    pub notifications: std::sync::atomic::AtomicU64,
    /// How late the last change notification arrived, µs.
    pub notify_lag_micros: std::sync::atomic::AtomicU64,
    pub replicas_seen: std::sync::atomic::AtomicU64,
}

impl StoreStats {
    fn render(&self, up: bool, out: &mut String) {
        if !self.shared.load(Ordering::Relaxed) {
            return;
        }
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &std::sync::atomic::AtomicU64| n(a) as f64 / 1e6;
        let rows: [(&str, &str, &str, String); 7] = [
            (
                "nexus_gateway_store_up",
                "gauge",
                "Whether the shared store answered the last check.",
                u8::from(up).to_string(),
            ),
            (
                "nexus_gateway_store_refreshes_total",
                "counter",
                "Registry refreshes from the shared store.",
                n(&self.refreshes).to_string(),
            ),
            (
                "nexus_gateway_store_refresh_failures_total",
                "counter",
                "Refreshes and checks the shared store did not answer.",
                n(&self.refresh_failures).to_string(),
            ),
            (
                "nexus_gateway_store_check_seconds",
                "gauge",
                "Duration of the last periodic check of the shared store (query latency).",
                secs(&self.last_check_micros).to_string(),
            ),
            (
                "nexus_gateway_store_notifications_total",
                "counter",
                "Change notifications received from the shared store.",
                n(&self.notifications).to_string(),
            ),
            (
                "nexus_gateway_store_notify_lag_seconds",
                "gauge",
                "How late the last change notification arrived (database clock to this host's).",
                secs(&self.notify_lag_micros).to_string(),
            ),
            (
                "nexus_gateway_store_replicas_seen",
                "gauge",
                "Replicas that announced themselves in the shared store within three check intervals.",
                n(&self.replicas_seen).to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The endpoint label of requests naming no registered endpoint (never a valid name).
pub const UNKNOWN_ENDPOINT: &str = "_unknown";

/// Labels of one Nexus operation series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OperationKey {
    kind: Kind,
    caller: String,
    endpoint: String,
    target: String,
    outcome: Outcome,
}

/// A series' labels as borrowed text, so a known series is counted without copying its
/// labels into a key (four allocations an operation): the maps are searched by `dyn Labels`.
trait Labels {
    fn labels(&self) -> (Kind, &str, &str, &str, Option<&Outcome>);
}

/// Labels of one request's series, borrowed from its attribution record.
struct LabelsOf<'a>(Kind, &'a str, &'a str, &'a str, Option<&'a Outcome>);

impl Labels for LabelsOf<'_> {
    fn labels(&self) -> (Kind, &str, &str, &str, Option<&Outcome>) {
        (self.0, self.1, self.2, self.3, self.4)
    }
}

impl Labels for OperationKey {
    fn labels(&self) -> (Kind, &str, &str, &str, Option<&Outcome>) {
        let k = self;
        (k.kind, &k.caller, &k.endpoint, &k.target, Some(&k.outcome))
    }
}

/// Labels of one latency histogram: kind and endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LatencyKey {
    kind: Kind,
    endpoint: String,
}

impl Labels for LatencyKey {
    fn labels(&self) -> (Kind, &str, &str, &str, Option<&Outcome>) {
        (self.kind, "", &self.endpoint, "", None)
    }
}

// Both the owned keys and the borrowed labels hash and compare by `labels()`, as `Borrow`
// requires.
impl Hash for dyn Labels + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.labels().hash(state);
    }
}

impl PartialEq for dyn Labels + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.labels() == other.labels()
    }
}

impl Eq for dyn Labels + '_ {}

macro_rules! keyed_by_labels {
    ($key:ty) => {
        impl Hash for $key {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.labels().hash(state);
            }
        }

        impl<'a> Borrow<dyn Labels + 'a> for $key {
            fn borrow(&self) -> &(dyn Labels + 'a) {
                self
            }
        }
    };
}

keyed_by_labels!(OperationKey);
keyed_by_labels!(LatencyKey);

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Request counts and total latency by route and status; Nexus operations by caller,
/// endpoint, target and outcome, with latency histograms per kind and endpoint.
#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(&'static str, u16), (AtomicU64, AtomicU64)>,
    operations: DashMap<OperationKey, AtomicU64>,
    latency: DashMap<LatencyKey, Histogram>,
    /// Refused TLS handshakes by reason.
    pub handshakes: crate::handshakes::HandshakeFailures,
    /// The last five minutes of traffic, for the console.
    pub traffic: crate::traffic::Traffic,
}

impl Metrics {
    /// Counts one start, cancel or completion from its attribution record.
    pub fn record_operation(&self, r: &crate::attribution::Record) {
        let caller = r.caller_namespace.as_deref().unwrap_or_default();
        let target = r
            .target_namespace
            .as_deref()
            .or(r.target_url.as_deref())
            .unwrap_or_default();
        // Only registered endpoints name a series: whatever a caller typed counts under one
        // label, so callers cannot grow the series without bound.
        let endpoint = match (&r.endpoint, &r.endpoint_id) {
            (Some(name), Some(_)) => name.as_str(),
            (Some(_), None) => UNKNOWN_ENDPOINT,
            (None, _) => "",
        };
        let labels = LabelsOf(r.kind, caller, endpoint, target, Some(&r.outcome));
        let key: &dyn Labels = &labels;
        match self.operations.get(key) {
            Some(count) => count.fetch_add(1, Ordering::Relaxed),
            None => self
                .operations
                .entry(OperationKey {
                    kind: r.kind,
                    caller: caller.to_owned(),
                    endpoint: endpoint.to_owned(),
                    target: target.to_owned(),
                    outcome: r.outcome.clone(),
                })
                .or_default()
                .fetch_add(1, Ordering::Relaxed),
        };
        let labels = LabelsOf(r.kind, "", endpoint, "", None);
        let key: &dyn Labels = &labels;
        // Updated under the shard's write lock, so a scrape (read lock) never sees a bucket
        // counted before `count` is.
        let histogram = match self.latency.get_mut(key) {
            Some(histogram) => histogram,
            None => self
                .latency
                .entry(LatencyKey {
                    kind: r.kind,
                    endpoint: endpoint.to_owned(),
                })
                .or_default(),
        };
        let seconds = r.latency_us as f64 / 1e6;
        for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        histogram
            .sum_micros
            .fetch_add(r.latency_us, Ordering::Relaxed);
    }

    /// Drops the series of endpoints no longer registered (deleted or renamed).
    fn forget_unregistered(&self, registered: impl Fn(&str) -> bool) {
        let keep = |endpoint: &str| {
            endpoint.is_empty() || endpoint == UNKNOWN_ENDPOINT || registered(endpoint)
        };
        self.operations.retain(|k, _| keep(&k.endpoint));
        self.latency.retain(|k, _| keep(&k.endpoint));
    }

    pub fn record(&self, route: &'static str, status: u16, latency: Duration) {
        let entry = self.requests.entry((route, status)).or_default();
        entry.0.fetch_add(1, Ordering::Relaxed);
        entry
            .1
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

pub fn render(state: &Sources<'_>) -> String {
    let mut out = String::new();
    out.push_str("# HELP nexus_gateway_requests_total Requests served on the data port.\n");
    out.push_str("# TYPE nexus_gateway_requests_total counter\n");
    let mut rows: Vec<_> = state
        .metrics
        .requests
        .iter()
        .map(|e| {
            let (route, status) = *e.key();
            let (count, micros) = e.value();
            (
                route,
                status,
                count.load(Ordering::Relaxed),
                micros.load(Ordering::Relaxed),
            )
        })
        .collect();
    rows.sort();
    for (route, status, count, _) in &rows {
        let _ = writeln!(
            out,
            "nexus_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
        );
    }
    out.push_str("# HELP nexus_gateway_request_seconds_total Time spent serving requests.\n");
    out.push_str("# TYPE nexus_gateway_request_seconds_total counter\n");
    for (route, status, _, micros) in &rows {
        let _ = writeln!(
            out,
            "nexus_gateway_request_seconds_total{{route=\"{route}\",status=\"{status}\"}} {}",
            *micros as f64 / 1e6
        );
    }
    out.push_str("# HELP nexus_gateway_task_queue_pollers Workers waiting on a task queue.\n");
    out.push_str("# TYPE nexus_gateway_task_queue_pollers gauge\n");
    let queues = state.matching.stats();
    for q in &queues {
        let _ = writeln!(
            out,
            "nexus_gateway_task_queue_pollers{{namespace=\"{}\",task_queue=\"{}\"}} {}",
            escape(&q.key.namespace),
            escape(&q.key.task_queue),
            q.pollers
        );
    }
    out.push_str("# HELP nexus_gateway_task_queue_backlog Tasks waiting for a worker.\n");
    out.push_str("# TYPE nexus_gateway_task_queue_backlog gauge\n");
    for q in &queues {
        let _ = writeln!(
            out,
            "nexus_gateway_task_queue_backlog{{namespace=\"{}\",task_queue=\"{}\"}} {}",
            escape(&q.key.namespace),
            escape(&q.key.task_queue),
            q.waiting_tasks
        );
    }
    out.push_str("# HELP nexus_gateway_tasks_pending Tasks whose callers wait for an answer.\n");
    out.push_str("# TYPE nexus_gateway_tasks_pending gauge\n");
    let _ = writeln!(
        out,
        "nexus_gateway_tasks_pending {}",
        state.matching.pending_tasks()
    );
    state.metrics.forget_unregistered(|name| {
        state
            .registry
            .resolve(name)
            .is_some_and(|e| e.spec.name == name)
    });
    render_operations(state.metrics, &mut out);
    state.store.render(state.store_up, &mut out);
    render_lanes(state, &mut out);
    render_callbacks(state, &mut out);
    render_tracing(state, &mut out);
    if let Some(last_seq) = state.attribution_last_seq {
        out.push_str("# HELP nexus_gateway_attribution_last_seq Sequence number of the last attribution record written.\n");
        out.push_str("# TYPE nexus_gateway_attribution_last_seq gauge\n");
        let _ = writeln!(out, "nexus_gateway_attribution_last_seq {last_seq}");
        out.push_str("# HELP nexus_gateway_attribution_waiting_reads Metering reads waiting for a new attribution record.\n");
        out.push_str("# TYPE nexus_gateway_attribution_waiting_reads gauge\n");
        let _ = writeln!(
            out,
            "nexus_gateway_attribution_waiting_reads {}",
            state.attribution_waiting_reads
        );
    }
    let reloads = state.tls_reloads;
    out.push_str("# HELP nexus_gateway_tls_reloads_total TLS certificate reloads by result.\n");
    out.push_str("# TYPE nexus_gateway_tls_reloads_total counter\n");
    let _ = writeln!(
        out,
        "nexus_gateway_tls_reloads_total{{result=\"ok\"}} {}",
        reloads.succeeded.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "nexus_gateway_tls_reloads_total{{result=\"refused\"}} {}",
        reloads.failed.load(Ordering::Relaxed)
    );
    out.push_str("# HELP nexus_gateway_tls_handshake_failures_total TLS handshakes refused on the data port, by reason.\n");
    out.push_str("# TYPE nexus_gateway_tls_handshake_failures_total counter\n");
    for (reason, count) in state.metrics.handshakes.counts() {
        let _ = writeln!(
            out,
            "nexus_gateway_tls_handshake_failures_total{{reason=\"{}\"}} {count}",
            reason.as_str()
        );
    }
    out.push_str("# HELP nexus_gateway_registry_endpoints Endpoints in the registry.\n");
    out.push_str("# TYPE nexus_gateway_registry_endpoints gauge\n");
    let _ = writeln!(
        out,
        "nexus_gateway_registry_endpoints {}",
        state.registry.len()
    );
    out
}

fn render_operations(metrics: &Metrics, out: &mut String) {
    out.push_str("# HELP nexus_gateway_operations_total Nexus starts, cancels and completions by caller namespace, endpoint, target and outcome.\n");
    out.push_str("# TYPE nexus_gateway_operations_total counter\n");
    let mut rows: Vec<_> = metrics
        .operations
        .iter()
        .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
        .collect();
    rows.sort();
    for (k, n) in rows {
        let _ = writeln!(
            out,
            "nexus_gateway_operations_total{{kind=\"{}\",caller_namespace=\"{}\",endpoint=\"{}\",target=\"{}\",outcome=\"{}\"}} {n}",
            k.kind.as_str(),
            escape(&k.caller),
            escape(&k.endpoint),
            escape(&k.target),
            escape(&k.outcome.as_str())
        );
    }
    out.push_str(
        "# HELP nexus_gateway_operation_duration_seconds Time to answer Nexus operations.\n",
    );
    out.push_str("# TYPE nexus_gateway_operation_duration_seconds histogram\n");
    let mut keys: Vec<_> = metrics.latency.iter().map(|e| e.key().clone()).collect();
    keys.sort();
    for key in keys {
        let Some(h) = metrics.latency.get(&key) else {
            continue;
        };
        let labels = format!(
            "kind=\"{}\",endpoint=\"{}\"",
            key.kind.as_str(),
            escape(&key.endpoint)
        );
        for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
            let _ = writeln!(
                out,
                "nexus_gateway_operation_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "nexus_gateway_operation_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "nexus_gateway_operation_duration_seconds_sum{{{labels}}} {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "nexus_gateway_operation_duration_seconds_count{{{labels}}} {count}"
        );
    }
}

fn render_lanes(state: &Sources<'_>, out: &mut String) {
    let lanes = state.outbound.stats();
    type Gauge = (
        &'static str,
        &'static str,
        fn(&nexus_outbound_queue::LaneStats) -> f64,
    );
    let gauges: [Gauge; 7] = [
        (
            "nexus_gateway_lane_queued",
            "Requests waiting for a slot in an outbound lane.",
            |l| l.queued as f64,
        ),
        (
            "nexus_gateway_lane_in_flight",
            "Requests in flight to a destination.",
            |l| l.in_flight as f64,
        ),
        (
            "nexus_gateway_lane_rejected_full_total",
            "Requests refused because the lane was full.",
            |l| l.rejected_full as f64,
        ),
        (
            "nexus_gateway_lane_rejected_open_total",
            "Requests refused because the breaker was open.",
            |l| l.rejected_open as f64,
        ),
        (
            "nexus_gateway_lane_successes_total",
            "Attempts the destination answered (healthy).",
            |l| l.successes as f64,
        ),
        (
            "nexus_gateway_lane_failures_total",
            "Attempts that found the destination down.",
            |l| l.failures as f64,
        ),
        (
            "nexus_gateway_lane_breaker_open",
            "Circuit breaker state: 0 closed, 1 open, 0.5 half-open.",
            |l| match l.breaker {
                nexus_outbound_queue::BreakerState::Closed => 0.0,
                nexus_outbound_queue::BreakerState::Open => 1.0,
                nexus_outbound_queue::BreakerState::HalfOpen => 0.5,
            },
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for lane in &lanes {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{}\",source=\"{}\",destination=\"{}\"}} {}",
                lane.key.kind,
                escape(&lane.key.source),
                escape(&lane.key.destination),
                value(lane)
            );
        }
    }
}

fn render_callbacks(state: &Sources<'_>, out: &mut String) {
    let c = &state.completions;
    let rows = [
        (
            "nexus_gateway_completions_pending",
            "gauge",
            "Completions accepted and not yet delivered.",
            c.pending,
        ),
        (
            "nexus_gateway_completions_failed",
            "gauge",
            "Completions given up on, kept for an operator.",
            c.failed,
        ),
        (
            "nexus_gateway_completions_delivered_total",
            "counter",
            "Completions delivered to callers.",
            c.delivered,
        ),
        (
            "nexus_gateway_completion_attempts_total",
            "counter",
            "Delivery attempts made.",
            c.attempts,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

fn render_tracing(state: &Sources<'_>, out: &mut String) {
    let Some(t) = &state.tracing else {
        return;
    };
    let rows = [
        (
            "nexus_gateway_trace_spans_exported_total",
            "Spans the OTLP collector took.",
            t.exported,
        ),
        (
            "nexus_gateway_trace_spans_dropped_total",
            "Spans lost: the export queue was full, or the collector did not take their batch.",
            t.dropped,
        ),
        (
            "nexus_gateway_trace_export_failures_total",
            "Export requests to the OTLP collector that failed.",
            t.failed_requests,
        ),
    ];
    for (name, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Record;

    fn start(caller: &str, endpoint: &str, latency_us: u64) -> Record {
        Record {
            kind: Kind::Start,
            caller_namespace: Some(caller.to_owned()),
            endpoint: Some(endpoint.to_owned()),
            endpoint_id: Some("id-1".to_owned()),
            target_namespace: Some("billing".to_owned()),
            outcome: Outcome::Succeeded,
            latency_us,
            ..Record::default()
        }
    }

    #[test]
    fn a_known_series_is_found_by_its_borrowed_labels() {
        let metrics = Metrics::default();
        metrics.record_operation(&start("orders", "payments", 2_000));
        let series = LabelsOf(
            Kind::Start,
            "orders",
            "payments",
            "billing",
            Some(&Outcome::Succeeded),
        );
        let histogram = LabelsOf(Kind::Start, "", "payments", "", None);
        assert!(metrics.operations.get(&series as &dyn Labels).is_some());
        assert!(metrics.latency.get(&histogram as &dyn Labels).is_some());

        metrics.record_operation(&start("orders", "payments", 3_000));
        metrics.record_operation(&start("shipping", "payments", 1_000));
        assert_eq!(metrics.operations.len(), 2, "one series per caller");
        assert_eq!(
            metrics.latency.len(),
            1,
            "one histogram per kind and endpoint"
        );
        let count = metrics.operations.get(&series as &dyn Labels).unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 2);
        let h = metrics.latency.get(&histogram as &dyn Labels).unwrap();
        assert_eq!(h.count.load(Ordering::Relaxed), 3);
        assert_eq!(h.sum_micros.load(Ordering::Relaxed), 6_000);
    }
}
