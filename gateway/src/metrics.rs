//! Counters and gauges rendered as Prometheus text on the ops port.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::state::State;

/// Request counts and total latency by route and status.
#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(&'static str, u16), (AtomicU64, AtomicU64)>,
}

impl Metrics {
    pub fn record(&self, route: &'static str, status: u16, latency: Duration) {
        let entry = self.requests.entry((route, status)).or_default();
        entry.0.fetch_add(1, Ordering::Relaxed);
        entry
            .1
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

pub fn render(state: &State) -> String {
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
    out.push_str("# HELP nexus_gateway_registry_endpoints Endpoints in the registry.\n");
    out.push_str("# TYPE nexus_gateway_registry_endpoints gauge\n");
    let _ = writeln!(
        out,
        "nexus_gateway_registry_endpoints {}",
        state.registry.len()
    );
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
