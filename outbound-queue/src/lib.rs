//! Per-destination outbound lanes for the Nexus gateway.
//!
//! The gateway sends requests to many destinations (external Nexus handlers,
//! callers' callback receivers). A slow or dead destination must never hold
//! connections, memory or tasks that requests to other destinations need, so
//! every destination gets its own [`LaneKey`]-addressed lane with:
//!
//! - a bounded **buffer** of requests waiting for a slot (full: reject at once,
//!   [`Rejection::LaneFull`], mapped to 429),
//! - bounded **concurrency** (requests in flight),
//! - a **rate limit** (governor GCRA, burst = rate),
//! - a **circuit breaker** counting only [`Outcome::DestinationDown`]
//!   (open: reject at once, [`Rejection::BreakerOpen`], mapped to 503).
//!
//! Flow: `gateway -> OutboundQueue::acquire(key) -> send -> Permit::finish(outcome)`.
//! Idle lanes are dropped by [`OutboundQueue::evict_idle`] so memory stays
//! bounded with many destinations; [`Backoff`] computes retry delays; [`Spool`]
//! keeps deliveries that must survive a crash.
//!
//! This crate knows nothing about HTTP or Nexus; all time is
//! `tokio::time::Instant`, so behaviour is testable with paused time.

mod backoff;
mod breaker;
mod durable;
mod lane;
mod pg_spool;
mod rate;
mod spool;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Seeded per map; SipHash's stronger guarantee cost ~5 % of a request (BENCHMARKS.md, round 7).
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
use tokio::time::Instant;

pub use backoff::Backoff;
pub use durable::DurableSpool;
pub use lane::Permit;
pub use pg_spool::{Connect, PgSpool};
pub use spool::{EntryState, Spool, SpoolEntry, SpoolError};

use lane::{Admission, Lane};

/// Identifies a lane: one per kind of call, calling namespace and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneKey {
    /// `"start"`, `"cancel"` or `"callback"`: a flood of one kind must not
    /// starve the others (e.g. cancels behind stuck starts).
    pub kind: &'static str,
    /// Source namespace, so one noisy caller cannot fill a shared lane.
    pub source: String,
    /// Destination host (authority); also the key of per-destination settings.
    pub destination: String,
}

impl LaneKey {
    /// The key, borrowed.
    pub fn as_ref(&self) -> LaneRef<'_> {
        LaneRef {
            kind: self.kind,
            source: &self.source,
            destination: &self.destination,
        }
    }
}

/// A [`LaneKey`] made of borrowed names: a lane that exists is found from it without
/// copying the names into a key (two allocations a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneRef<'a> {
    pub kind: &'static str,
    pub source: &'a str,
    pub destination: &'a str,
}

impl<'a> From<&'a LaneKey> for LaneRef<'a> {
    fn from(key: &'a LaneKey) -> Self {
        key.as_ref()
    }
}

impl LaneRef<'_> {
    pub fn to_key(self) -> LaneKey {
        LaneKey {
            kind: self.kind,
            source: self.source.to_owned(),
            destination: self.destination.to_owned(),
        }
    }
}

/// What both key forms hash and compare by, so the lanes map, keyed by [`LaneKey`], is
/// searched with a [`LaneRef`] (`Borrow` requires both to hash alike).
trait LaneNames {
    fn names(&self) -> (&'static str, &str, &str);
}

impl LaneNames for LaneKey {
    fn names(&self) -> (&'static str, &str, &str) {
        (self.kind, &self.source, &self.destination)
    }
}

impl LaneNames for LaneRef<'_> {
    fn names(&self) -> (&'static str, &str, &str) {
        (self.kind, self.source, self.destination)
    }
}

impl std::hash::Hash for dyn LaneNames + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names().hash(state);
    }
}

impl PartialEq for dyn LaneNames + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for dyn LaneNames + '_ {}

impl std::hash::Hash for LaneKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names().hash(state);
    }
}

impl<'a> std::borrow::Borrow<dyn LaneNames + 'a> for LaneKey {
    fn borrow(&self) -> &(dyn LaneNames + 'a) {
        self
    }
}

/// Circuit-breaker settings.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Default 5: opens after MORE than this many consecutive destination-down
    /// outcomes (Temporal's value), tolerating short blips.
    pub failure_threshold: u32,
    /// Default 60 s: how long the breaker stays open before one probe is let
    /// through; long enough for a restart, short enough to notice recovery.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
        }
    }
}

/// Limits of one lane (defaults are Temporal's outbound queue defaults).
#[derive(Debug, Clone)]
pub struct LaneSettings {
    /// Default 100: requests that may wait for a slot; more are rejected at
    /// once so a slow destination cannot accumulate unbounded memory/tasks.
    pub buffer: usize,
    /// Default 100: requests in flight at once (values below 1 act as 1);
    /// caps connections a single destination can hold.
    pub concurrency: usize,
    /// Default 100 requests/s, burst = the rate; 0 = unlimited. Protects
    /// destinations from bursts the gateway would otherwise amplify.
    pub rate_per_second: u32,
    /// Default [`BreakerSettings::default`].
    pub breaker: BreakerSettings,
}

impl Default for LaneSettings {
    fn default() -> Self {
        Self {
            buffer: 100,
            concurrency: 100,
            rate_per_second: 100,
            breaker: BreakerSettings::default(),
        }
    }
}

/// Settings of the whole queue.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Settings of lanes without an override.
    pub defaults: LaneSettings,
    /// Overrides keyed by [`LaneKey::destination`]; read when a lane is created.
    pub per_destination: HashMap<String, LaneSettings>,
    /// Default 5 min: an unused lane is evicted after this long, keeping
    /// memory bounded while sparing busy lanes the cost of re-creation.
    pub idle_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            defaults: LaneSettings::default(),
            per_destination: HashMap::new(),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// How a request to the destination ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The destination is healthy but the operation failed (e.g. the handler
    /// answered 4xx/424): counts as healthy and resets the failure count.
    OperationFailed,
    /// Timeout, transport error, 5xx, 429, 520: counts toward opening.
    DestinationDown,
}

/// Why [`OutboundQueue::acquire`] refused a request (immediately, no waiting).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// `buffer` requests already wait in the lane (maps to 429).
    #[error("outbound lane is full, retry after {retry_after:?}")]
    LaneFull { retry_after: Duration },
    /// The destination's circuit breaker is open (maps to 503); `retry_after`
    /// is the time until half-open, at least 1 s.
    #[error("destination circuit breaker is open, retry after {retry_after:?}")]
    BreakerOpen { retry_after: Duration },
}

impl Rejection {
    /// Suggested wait before retrying, at least 1 s; not rounded, so callers
    /// writing a `Retry-After` header should round up to whole seconds.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::LaneFull { retry_after } | Self::BreakerOpen { retry_after } => *retry_after,
        }
    }
}

/// Circuit-breaker state as reported in [`LaneStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    /// `open_for` elapsed: the next request (only one at a time) is a probe.
    HalfOpen,
}

/// Snapshot of one lane, for metrics.
#[derive(Debug, Clone)]
pub struct LaneStats {
    pub key: LaneKey,
    /// Admitted requests waiting for a slot or the rate limit.
    pub queued: usize,
    pub in_flight: usize,
    pub rejected_full: u64,
    /// Rejections because the breaker was open (or a probe was in flight).
    pub rejected_open: u64,
    pub breaker: BreakerState,
    /// Outcomes counted as healthy: [`Outcome::Success`] and [`Outcome::OperationFailed`].
    pub successes: u64,
    /// [`Outcome::DestinationDown`] outcomes.
    pub failures: u64,
}

/// All lanes, created on first use and evicted when idle.
pub struct OutboundQueue {
    settings: QueueSettings,
    lanes: DashMap<LaneKey, Arc<Lane>>,
}

impl std::fmt::Debug for OutboundQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundQueue")
            .field("settings", &self.settings)
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

impl OutboundQueue {
    pub fn new(settings: QueueSettings) -> Self {
        Self {
            settings,
            lanes: DashMap::default(),
        }
    }

    /// Waits for a slot (concurrency + rate limit) in the lane; rejects at once
    /// if the breaker is open or `buffer` requests already wait. The caller
    /// bounds the wait with its own deadline (`tokio::time::timeout`); a
    /// cancelled wait frees its buffer place (and the probe slot, if it was
    /// the half-open probe).
    pub async fn acquire<'k>(&self, key: impl Into<LaneRef<'k>>) -> Result<Permit, Rejection> {
        let key = key.into();
        let now = Instant::now();
        // Admission runs under the shard lock (see `Lane::admit`); the guard
        // is released before any await.
        let admission = if let Some(lane) = self.lanes.get(&key as &dyn LaneNames) {
            lane.admit(now)
        } else {
            let settings = self
                .settings
                .per_destination
                .get(key.destination)
                .unwrap_or(&self.settings.defaults);
            let key = key.to_key();
            self.lanes
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Lane::new(key, settings)))
                .admit(now)
        };
        match admission? {
            Admission::Ready(permit) => Ok(permit),
            Admission::Wait(waiter) => waiter.wait().await,
        }
    }

    /// Snapshot of every lane, for `/metrics`.
    pub fn stats(&self) -> Vec<LaneStats> {
        let now = Instant::now();
        self.lanes.iter().map(|lane| lane.stats(now)).collect()
    }

    /// Removes idle lanes and returns how many; call periodically. A lane is
    /// idle when nothing waits or is in flight, its breaker is not open, and
    /// it has been unused for longer than `idle_timeout`.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        let mut evicted = 0;
        self.lanes.retain(|_, lane| {
            let idle = lane.is_idle(now, timeout);
            evicted += usize::from(idle);
            !idle
        });
        evicted
    }

    /// Number of lanes currently held.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}
