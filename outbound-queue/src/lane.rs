//! One lane per (kind, source, destination): bounded waiting, bounded
//! concurrency, rate limit and circuit breaker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::breaker::{Breaker, MIN_RETRY_AFTER, Ticket};
use crate::rate::RateLimiter;
use crate::{BreakerState, LaneKey, LaneSettings, LaneStats, Outcome, Rejection};

#[derive(Debug)]
pub(crate) struct Lane {
    key: LaneKey,
    buffer: usize,
    slots: Arc<Semaphore>,
    rate: Option<RateLimiter>,
    breaker: Breaker,
    /// Acquires admitted but not yet holding a permit (waiting for a slot or
    /// the rate limit); bounded by `buffer`.
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    rejected_full: AtomicU64,
    rejected_open: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    last_activity: Mutex<Instant>,
}

/// Result of the synchronous part of `acquire`.
pub(crate) enum Admission {
    Ready(Permit),
    Wait(Waiter),
}

impl Lane {
    pub(crate) fn new(key: LaneKey, settings: &LaneSettings) -> Self {
        // A lane without slots could never send; clamp instead of deadlocking.
        let concurrency = settings.concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            key,
            buffer: settings.buffer,
            slots: Arc::new(Semaphore::new(concurrency)),
            rate: RateLimiter::new(settings.rate_per_second),
            breaker: Breaker::new(settings.breaker.clone()),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            rejected_full: AtomicU64::new(0),
            rejected_open: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self, now: Instant) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Synchronous admission. The queue calls this while holding the map
    /// shard lock, so eviction (which takes the same lock) never removes a
    /// lane between lookup and the moment the request is counted in it.
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> Result<Admission, Rejection> {
        self.touch(now);
        let ticket = self.breaker.admit(now).map_err(|retry_after| {
            self.rejected_open.fetch_add(1, SeqCst);
            Rejection::BreakerOpen { retry_after }
        })?;

        // Fast path only when nobody waits, so newcomers don't overtake waiters.
        let mut slot = if self.queued.load(SeqCst) == 0 {
            self.slots.clone().try_acquire_owned().ok()
        } else {
            None
        };
        if let Some(permit) = slot.take() {
            if self.rate.as_ref().is_none_or(RateLimiter::try_take) {
                return Ok(Admission::Ready(Permit::new(self.clone(), permit, ticket)));
            }
            // Keep the slot; only the rate limit is left to wait for.
            slot = Some(permit);
        }

        let reserved = self
            .queued
            .fetch_update(SeqCst, SeqCst, |q| (q < self.buffer).then_some(q + 1));
        if reserved.is_err() {
            self.breaker.abandon(ticket);
            self.rejected_full.fetch_add(1, SeqCst);
            // Waiters drain within about a send's duration; 1 s is the
            // smallest Retry-After HTTP can express.
            return Err(Rejection::LaneFull {
                retry_after: MIN_RETRY_AFTER,
            });
        }
        Ok(Admission::Wait(Waiter {
            lane: self.clone(),
            ticket: Some(ticket),
            slot,
        }))
    }

    /// Evictable: nothing waiting or in flight, quiet for longer than
    /// `idle_timeout`, and not inside an open window (forgetting that would
    /// let traffic hit a known-dead destination early). An expired open
    /// window may be forgotten: the next request would be a probe anyway,
    /// and keeping such lanes would let dead destinations pile up forever.
    pub(crate) fn is_idle(&self, now: Instant, idle_timeout: Duration) -> bool {
        self.queued.load(SeqCst) == 0
            && self.in_flight.load(SeqCst) == 0
            && self.breaker.state(now) != BreakerState::Open
            && now.saturating_duration_since(
                *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()),
            ) > idle_timeout
    }

    pub(crate) fn stats(&self, now: Instant) -> LaneStats {
        LaneStats {
            key: self.key.clone(),
            queued: self.queued.load(SeqCst),
            in_flight: self.in_flight.load(SeqCst),
            rejected_full: self.rejected_full.load(SeqCst),
            rejected_open: self.rejected_open.load(SeqCst),
            breaker: self.breaker.state(now),
            successes: self.successes.load(SeqCst),
            failures: self.failures.load(SeqCst),
        }
    }
}

/// An admitted request waiting for a slot and/or the rate limit. Dropping it
/// (caller's deadline fired) frees its buffer place and, if it was the
/// half-open probe, the probe slot.
pub(crate) struct Waiter {
    lane: Arc<Lane>,
    ticket: Option<Ticket>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Waiter {
    pub(crate) async fn wait(mut self) -> Result<Permit, Rejection> {
        let lane = self.lane.clone();
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => lane
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("lane semaphore is never closed"),
        };
        if let Some(rate) = &lane.rate {
            rate.take().await;
        }
        let ticket = self.ticket.take().expect("ticket is taken only here");
        // The breaker may have opened while we waited; don't send then.
        match lane.breaker.readmit(ticket, Instant::now()) {
            // `self` drops after the permit exists, so the lane is never seen
            // with neither queued nor in-flight work (eviction safety).
            Ok(ticket) => Ok(Permit::new(lane.clone(), slot, ticket)),
            Err(retry_after) => {
                lane.rejected_open.fetch_add(1, SeqCst);
                Err(Rejection::BreakerOpen { retry_after })
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.lane.queued.fetch_sub(1, SeqCst);
        if let Some(ticket) = self.ticket.take() {
            self.lane.breaker.abandon(ticket);
        }
    }
}

/// Right to send one request to the lane's destination. Holds a concurrency
/// slot until dropped; report how it went with [`Permit::finish`].
pub struct Permit {
    lane: Arc<Lane>,
    _slot: OwnedSemaphorePermit,
    ticket: Ticket,
    finished: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("lane", &self.lane.key)
            .field("probe", &self.ticket.probe)
            .finish()
    }
}

impl Permit {
    fn new(lane: Arc<Lane>, slot: OwnedSemaphorePermit, ticket: Ticket) -> Self {
        lane.in_flight.fetch_add(1, SeqCst);
        Self {
            lane,
            _slot: slot,
            ticket,
            finished: false,
        }
    }

    /// Reports the outcome to the lane's breaker and stats, then frees the slot.
    pub fn finish(mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success | Outcome::OperationFailed => &self.lane.successes,
            Outcome::DestinationDown => &self.lane.failures,
        };
        counter.fetch_add(1, SeqCst);
        self.lane
            .breaker
            .record(self.ticket, outcome, Instant::now());
        self.finished = true;
    }
}

impl Drop for Permit {
    /// Without `finish` the request says nothing about the destination (the
    /// caller went away), except that an abandoned probe frees the probe slot.
    fn drop(&mut self) {
        if !self.finished {
            self.lane.breaker.abandon(self.ticket);
        }
        self.lane.touch(Instant::now());
        self.lane.in_flight.fetch_sub(1, SeqCst);
    }
}
