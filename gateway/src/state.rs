//! What every request handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nexus_registry::Registry;
use tokio_util::sync::CancellationToken;

use nexus_outbound_queue::OutboundQueue;

use crate::callbacks::Callbacks;
use crate::config::{Limits, UpstreamSettings};
use crate::matching::Matching;
use crate::metrics::Metrics;
use crate::proxy_client::ProxyClient;

pub struct State {
    pub registry: Arc<Registry>,
    pub matching: Matching,
    pub limits: Limits,
    pub trust_domain: String,
    pub metrics: Metrics,
    /// Lanes to external handlers and callback receivers.
    pub outbound: Arc<OutboundQueue>,
    /// Pooled HTTPS client (the gateway's certificate) for external targets and callbacks.
    pub proxy: ProxyClient,
    pub upstream: UpstreamSettings,
    pub callbacks: Arc<Callbacks>,
    pub inbound: crate::inbound::InboundLimits,
    /// The attribution log; `None` when turned off.
    pub attribution: Option<crate::attribution::AttributionLog>,
    pub tls_reloads: Arc<crate::reload::ReloadStats>,
    /// Cancelled when shutdown begins: long polls end at once.
    pub shutdown: CancellationToken,
    /// False until the ports serve and again once shutdown begins (`/readyz`).
    pub ready: AtomicBool,
    /// False while a shared store does not answer: routing goes on from memory, `/readyz`
    /// says degraded.
    pub store_healthy: AtomicBool,
    pub store_stats: crate::metrics::StoreStats,
    /// This replica's own handle on a shared store (heartbeats), apart from the registry's.
    pub shared_store: Option<(Arc<nexus_registry::pg::PgStore>, String)>,
    /// Task queues other replicas have workers for, and those replicas' URLs (shared store).
    pub remote_pollers:
        arc_swap::ArcSwap<std::collections::HashMap<crate::matching::QueueKey, Vec<String>>>,
    /// Set when shutdown begins: new operations are refused while in-flight ones finish.
    pub draining: AtomicBool,
    /// Nexus operations in flight; shutdown waits for it to reach zero.
    pub in_flight: tokio::sync::watch::Sender<usize>,
    pub console: crate::config::ConsoleSettings,
    /// The console's last chart of actions per hour.
    pub usage_chart: crate::console::usage::ChartCache,
    /// Distributed tracing; `None` when off (`[tracing]` without an endpoint).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl State {
    /// Counts an operation in flight until the guard drops.
    pub fn track_operation(&self) -> InFlight<'_> {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(self)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once no operation is in flight.
    pub async fn operations_idle(&self) {
        let mut rx = self.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

pub struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}
