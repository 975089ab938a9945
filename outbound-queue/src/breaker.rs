//! Per-lane circuit breaker: closed -> open -> half-open (one probe) -> closed/open.
//!
//! Time comes from `tokio::time::Instant` so tests can drive it with paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::{BreakerSettings, BreakerState, Outcome};

/// Smallest `Retry-After` we hand out: HTTP expresses it in whole seconds, and
/// "retry in 0 s" would invite a hot retry loop against a sick destination.
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_down: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition, so outcomes of requests admitted under an
    /// earlier state (e.g. stragglers finishing after the breaker opened) are
    /// ignored instead of closing or re-opening the breaker by accident.
    generation: u64,
}

/// Proof of admission, carried by the permit until its outcome is recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    pub(crate) probe: bool,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed {
                    consecutive_down: 0,
                },
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic halfway through a transition, so a
        // poisoned lock still holds a consistent state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request or returns how long the caller should wait. Once
    /// `open_for` has elapsed, the first caller becomes the single probe.
    pub(crate) fn admit(&self, now: Instant) -> Result<Ticket, Duration> {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => Ok(Ticket {
                generation: inner.generation,
                probe: false,
            }),
            State::Open { until } if now < until => Err((until - now).max(MIN_RETRY_AFTER)),
            // No ticket was issued while open and closed-era tickets were
            // invalidated on opening, so the generation needs no bump here; an
            // abandoned probe cannot record later either (it is consumed).
            State::Open { .. }
            | State::HalfOpen {
                probe_in_flight: false,
            } => {
                inner.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                Ok(Ticket {
                    generation: inner.generation,
                    probe: true,
                })
            }
            // A probe is already testing the destination; its answer is
            // typically seconds away, so the minimum back-off is the best hint.
            State::HalfOpen {
                probe_in_flight: true,
            } => Err(MIN_RETRY_AFTER),
        }
    }

    /// Re-checks a non-probe admission after the request waited for a slot:
    /// if the breaker opened meanwhile, the waiter must not hit the
    /// destination. Probes keep their ticket (only they can move half-open on).
    pub(crate) fn readmit(&self, ticket: Ticket, now: Instant) -> Result<Ticket, Duration> {
        if ticket.probe {
            return Ok(ticket);
        }
        let inner = self.lock();
        match inner.state {
            State::Closed { .. } => Ok(Ticket {
                generation: inner.generation,
                probe: false,
            }),
            State::Open { until } => Err(until.saturating_duration_since(now).max(MIN_RETRY_AFTER)),
            State::HalfOpen { .. } => Err(MIN_RETRY_AFTER),
        }
    }

    /// Records the outcome of an admitted request.
    pub(crate) fn record(&self, ticket: Ticket, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        if inner.generation != ticket.generation {
            return;
        }
        let down = outcome == Outcome::DestinationDown;
        let next = match inner.state {
            State::Closed { consecutive_down } if down => {
                let consecutive_down = consecutive_down.saturating_add(1);
                if consecutive_down > self.settings.failure_threshold {
                    State::Open {
                        until: now + self.settings.open_for,
                    }
                } else {
                    inner.state = State::Closed { consecutive_down };
                    return;
                }
            }
            State::Closed { .. } => {
                inner.state = State::Closed {
                    consecutive_down: 0,
                };
                return;
            }
            State::HalfOpen { .. } if down => State::Open {
                until: now + self.settings.open_for,
            },
            State::HalfOpen { .. } => State::Closed {
                consecutive_down: 0,
            },
            // No ticket is ever issued for an open generation.
            State::Open { .. } => return,
        };
        inner.state = next;
        inner.generation += 1;
    }

    /// The admitted request ended without an outcome (caller went away).
    /// Counts as nothing, except that an abandoned probe must make room for
    /// the next one, or the lane would stay half-open forever.
    pub(crate) fn abandon(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut inner = self.lock();
        if inner.generation == ticket.generation && matches!(inner.state, State::HalfOpen { .. }) {
            inner.state = State::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Observable state; an open breaker whose `open_for` elapsed reports
    /// half-open even before the next request performs the transition.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings::default())
    }

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            let t = b.admit(Instant::now()).expect("admitted");
            b.record(t, Outcome::DestinationDown, Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_more_than_threshold() {
        let b = breaker();
        fail(&b, 5);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        assert_eq!(
            b.admit(Instant::now()).unwrap_err(),
            Duration::from_secs(60)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_outcomes_are_ignored() {
        let b = breaker();
        let straggler = b.admit(Instant::now()).unwrap();
        fail(&b, 6);
        // A success admitted before the breaker opened must not close it.
        b.record(straggler, Outcome::Success, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn abandon_only_frees_current_probe() {
        let b = breaker();
        fail(&b, 6);
        tokio::time::advance(Duration::from_secs(60)).await;
        let probe = b.admit(Instant::now()).unwrap();
        assert!(probe.probe);
        b.record(probe, Outcome::DestinationDown, Instant::now());
        // Abandoning an already-recorded probe must not open a second probe slot.
        b.abandon(probe);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        assert!(b.admit(Instant::now()).is_err());
    }
}
