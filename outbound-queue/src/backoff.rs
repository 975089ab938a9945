//! Retry delays for deliveries that must eventually succeed (e.g. callbacks).

use std::time::Duration;

/// Exponential backoff with jitter for retried deliveries: initial 1 s
/// doubling to a max of 1 h, each delay multiplied by a random factor in
/// [0.8, 1.0].
///
/// Jitter only shortens delays, so `max` stays a hard upper bound, and spreads
/// retries of many deliveries that failed together (one destination outage).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay before the first retry (default 1 s).
    pub initial: Duration,
    /// Cap on any delay (default 1 h): a destination down for days is still
    /// retried hourly rather than ever more rarely.
    pub max: Duration,
    /// Growth per attempt (default 2).
    pub multiplier: f64,
    /// Lower bound of the random factor (default 0.8); the upper bound is 1.
    pub jitter_min: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter_min: 0.8,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based):
    /// `min(initial * multiplier^attempt, max) * U[jitter_min, 1]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let max = self.max.as_secs_f64();
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        // powi saturates to +inf for huge attempts; min() then caps it.
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let base = (self.initial.as_secs_f64() * multiplier.powi(exponent)).min(max);
        let low = if self.jitter_min.is_finite() {
            self.jitter_min.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let factor = if low < 1.0 {
            rand::random_range(low..=1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).clamp(0.0, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, lo: f64, hi: f64) -> bool {
        let s = d.as_secs_f64();
        s >= lo - 1e-9 && s <= hi + 1e-9
    }

    #[test]
    fn first_attempt_is_about_initial() {
        let b = Backoff::default();
        for _ in 0..200 {
            assert!(within(b.delay(0), 0.8, 1.0));
            assert!(within(b.delay(1), 1.6, 2.0));
            assert!(within(b.delay(3), 6.4, 8.0));
        }
    }

    #[test]
    fn large_attempts_are_capped() {
        let b = Backoff::default();
        for attempt in [12, 13, 40, 1_000, u32::MAX] {
            for _ in 0..50 {
                assert!(within(b.delay(attempt), 2880.0, 3600.0), "{attempt}");
            }
        }
    }

    #[test]
    fn no_jitter_is_exact() {
        let b = Backoff {
            jitter_min: 1.0,
            ..Backoff::default()
        };
        assert_eq!(b.delay(2), Duration::from_secs(4));
    }
}
