//! Per-lane rate limit: governor's GCRA driven by tokio's clock.
//!
//! governor 0.10 ships only real-time clocks (quanta, `std::time::Instant`,
//! `SystemTime`) and its `until_ready` sleeps with `futures_timer`, neither of
//! which follows tokio's paused test time. So we give governor a [`Clock`]
//! reading `tokio::time::Instant` and do the waiting ourselves with
//! `tokio::time::sleep`; both then obey `#[tokio::test(start_paused = true)]`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use tokio::time::Instant;

/// Time since the limiter was built; governor already implements its
/// `Reference` trait for `Duration`, so no custom instant type is needed.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

pub(crate) struct RateLimiter {
    gcra: Gcra<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `None` for 0 (unlimited). Burst equals the rate, like Temporal's
    /// limiter: an idle lane may send one second's worth at once.
    pub(crate) fn new(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Some(Self {
            gcra: Gcra::direct_with_clock(Quota::per_second(rate), clock),
        })
    }

    /// Takes a cell if one is available now (never waits).
    pub(crate) fn try_take(&self) -> bool {
        self.gcra.check().is_ok()
    }

    /// Waits until a cell is available and takes it. Cancel-safe: a failed
    /// check consumes nothing.
    pub(crate) async fn take(&self) {
        while let Err(not_until) = self.gcra.check() {
            let wait = not_until.wait_time_from(self.gcra.clock().now());
            // Never spin on a zero wait caused by rounding.
            tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
        }
    }
}
