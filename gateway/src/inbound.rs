//! Inbound limits: requests per second (with burst) per caller namespace, per endpoint and per
//! (caller namespace, endpoint), and concurrent requests per caller namespace, so one caller
//! flooding the gateway cannot take capacity others need. Over a limit: 429
//! RESOURCE_EXHAUSTED with `Retry-After`.
//!
//! A request refused for its caller's own rate limit waits `push_back` (jittered down to half)
//! before its 429, holding one of the caller's concurrency slots meanwhile. A caller that
//! retries at once (a flood) is so slowed to about `max_concurrent / push_back` requests per
//! second instead of taking the gateway's CPU from others; a caller that honours `Retry-After`
//! (at least 1 s) never notices. Once the slots are taken, refusals are answered at once, so
//! held requests stay bounded.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Seeded per map; SipHash's stronger guarantee cost ~5 % of a request (BENCHMARKS.md, round 7).
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;
use crate::str_key::StrKey;

/// A caller and endpoint pair, the key of its limiter. The map is searched with the borrowed
/// names (`crate::str_key`), so a known pair is found without copying both (two allocations
/// a request).
#[derive(PartialEq, Eq)]
struct PairKey {
    caller: String,
    endpoint: String,
}

impl StrKey<2> for PairKey {
    fn parts(&self) -> [&str; 2] {
        [&self.caller, &self.endpoint]
    }
}

impl Hash for PairKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl<'a> Borrow<dyn StrKey<2> + 'a> for PairKey {
    fn borrow(&self) -> &(dyn StrKey<2> + 'a) {
        self
    }
}

/// A rate: `per_second` sustained, `burst` at once. `per_second = 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_second: 0,
        burst: 0,
    };
}

#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// Per caller namespace (default 1000/s, burst 2000).
    pub per_caller: Rate,
    /// Per endpoint, all callers together (default 2000/s, burst 4000).
    pub per_endpoint: Rate,
    /// Per (caller namespace, endpoint) (default 500/s, burst 1000).
    pub per_caller_endpoint: Rate,
    /// Operations in flight per caller namespace (default 1000).
    pub max_concurrent_per_caller: usize,
    /// Overrides by caller namespace.
    pub caller_overrides: HashMap<String, Rate>,
    /// Overrides by endpoint name.
    pub endpoint_overrides: HashMap<String, Rate>,
    /// Concurrency overrides by caller namespace.
    pub concurrent_overrides: HashMap<String, usize>,
    /// How long a request refused for its caller's own rate limit waits before its 429
    /// (default 250 ms; zero answers at once).
    pub push_back: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            per_caller: Rate {
                per_second: 1000,
                burst: 2000,
            },
            per_endpoint: Rate {
                per_second: 2000,
                burst: 4000,
            },
            per_caller_endpoint: Rate {
                per_second: 500,
                burst: 1000,
            },
            max_concurrent_per_caller: 1000,
            caller_overrides: HashMap::new(),
            endpoint_overrides: HashMap::new(),
            concurrent_overrides: HashMap::new(),
            push_back: Duration::from_millis(250),
        }
    }
}

/// Why [`InboundLimits::check`] refused.
struct Refusal {
    error: GatewayError,
    /// The caller's own rate (alone or on this endpoint), not an endpoint-wide limit.
    callers_own: bool,
}

type Limiter = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

/// Limiters are made on first use per key; keys are namespaces and endpoints, a bounded set.
pub struct InboundLimits {
    settings: InboundSettings,
    callers: DashMap<String, Option<Arc<Limiter>>>,
    endpoints: DashMap<String, Option<Arc<Limiter>>>,
    pairs: DashMap<PairKey, Option<Arc<Limiter>>>,
    concurrency: DashMap<String, Arc<Semaphore>>,
    clock: DefaultClock,
}

/// Holds the caller's concurrency slot while the operation runs.
pub struct InboundPermit(#[allow(dead_code)] OwnedSemaphorePermit);

fn limiter(rate: Rate) -> Option<Arc<Limiter>> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second);
    Some(Arc::new(RateLimiter::direct(
        Quota::per_second(per_second).allow_burst(burst),
    )))
}

impl InboundLimits {
    pub fn new(settings: InboundSettings) -> Self {
        InboundLimits {
            settings,
            callers: DashMap::default(),
            endpoints: DashMap::default(),
            pairs: DashMap::default(),
            concurrency: DashMap::default(),
            clock: DefaultClock::default(),
        }
    }

    /// The limiter for `key`, made on first use; the common path only reads.
    fn limiter_for(
        &self,
        map: &DashMap<String, Option<Arc<Limiter>>>,
        key: &str,
        rate: Rate,
    ) -> Option<Arc<Limiter>> {
        if let Some(l) = map.get(key) {
            return l.clone();
        }
        map.entry(key.to_owned())
            .or_insert_with(|| limiter(rate))
            .clone()
    }

    /// A request that names no registered endpoint still spends the caller's own rate, so a
    /// caller probing random names is limited like any other; 429 when over it.
    pub fn charge_caller(&self, caller: &str) -> Result<(), GatewayError> {
        let s = &self.settings;
        let rate = *s.caller_overrides.get(caller).unwrap_or(&s.per_caller);
        let Some(limiter) = self.limiter_for(&self.callers, caller, rate) else {
            return Ok(());
        };
        match limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => Err(GatewayError::resource_exhausted(format!(
                "namespace {caller:?} is over its rate limit of {}/s",
                rate.per_second
            ))
            .with_retry_after(
                not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_secs(1)),
            )),
        }
    }

    /// Admits one operation of `caller` on `endpoint`, or says why not, at once.
    pub fn admit(&self, caller: &str, endpoint: &str) -> Result<InboundPermit, GatewayError> {
        self.check(caller, endpoint).map_err(|r| r.error)
    }

    /// [`Self::admit`], but a refusal for the caller's own rate comes after `push_back` (see
    /// the module docs).
    pub async fn admit_or_push_back(
        &self,
        caller: &str,
        endpoint: &str,
    ) -> Result<InboundPermit, GatewayError> {
        match self.check(caller, endpoint) {
            Ok(permit) => Ok(permit),
            Err(Refusal {
                error,
                callers_own: true,
            }) if !self.settings.push_back.is_zero() => {
                if let Ok(slot) = self.concurrency_for(caller).try_acquire_owned() {
                    // Jittered, so a flood refused at one instant does not come back in step.
                    let wait = self
                        .settings
                        .push_back
                        .mul_f64(rand::random_range(0.5..=1.0));
                    tokio::time::sleep(wait).await;
                    drop(slot);
                }
                Err(error)
            }
            Err(refusal) => Err(refusal.error),
        }
    }

    fn max_concurrent(&self, caller: &str) -> usize {
        let s = &self.settings;
        *s.concurrent_overrides
            .get(caller)
            .unwrap_or(&s.max_concurrent_per_caller)
    }

    fn concurrency_for(&self, caller: &str) -> Arc<Semaphore> {
        match self.concurrency.get(caller) {
            Some(s) => s.clone(),
            None => self
                .concurrency
                .entry(caller.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrent(caller).max(1))))
                .clone(),
        }
    }

    fn check(&self, caller: &str, endpoint: &str) -> Result<InboundPermit, Refusal> {
        let s = &self.settings;
        let caller_rate = *s.caller_overrides.get(caller).unwrap_or(&s.per_caller);
        let endpoint_rate = *s
            .endpoint_overrides
            .get(endpoint)
            .unwrap_or(&s.per_endpoint);
        let caller_limiter = self.limiter_for(&self.callers, caller, caller_rate);
        let endpoint_limiter = self.limiter_for(&self.endpoints, endpoint, endpoint_rate);
        let pair_key: &dyn StrKey<2> = &[caller, endpoint];
        let pair_limiter = match self.pairs.get(pair_key) {
            Some(l) => l.clone(),
            None => self
                .pairs
                .entry(PairKey {
                    caller: caller.to_owned(),
                    endpoint: endpoint.to_owned(),
                })
                .or_insert_with(|| limiter(s.per_caller_endpoint))
                .clone(),
        };
        // Messages are built only when a limit is hit.
        let over = |limiter: &Option<Arc<Limiter>>| {
            let not_until = limiter.as_ref()?.check().err()?;
            Some(
                not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_secs(1)),
            )
        };
        let refused = |message: String, wait: Duration, callers_own: bool| {
            Err(Refusal {
                error: GatewayError::resource_exhausted(message).with_retry_after(wait),
                callers_own,
            })
        };
        if let Some(wait) = over(&caller_limiter) {
            return refused(
                format!(
                    "namespace {caller:?} is over its rate limit of {}/s",
                    caller_rate.per_second
                ),
                wait,
                true,
            );
        }
        if let Some(wait) = over(&endpoint_limiter) {
            return refused(
                format!(
                    "endpoint {endpoint:?} is over its rate limit of {}/s",
                    endpoint_rate.per_second
                ),
                wait,
                false,
            );
        }
        if let Some(wait) = over(&pair_limiter) {
            return refused(
                format!(
                    "namespace {caller:?} is over its rate limit of {}/s on endpoint {endpoint:?}",
                    s.per_caller_endpoint.per_second
                ),
                wait,
                true,
            );
        }
        let max = self.max_concurrent(caller);
        self.concurrency_for(caller)
            .try_acquire_owned()
            .map(InboundPermit)
            .map_err(|_| Refusal {
                error: GatewayError::resource_exhausted(format!(
                    "namespace {caller:?} has {max} operations in flight, its limit"
                ))
                .with_retry_after(Duration::from_secs(1)),
                callers_own: false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_429_with_retry_after_and_others_unaffected() {
        let mut settings = InboundSettings::default();
        settings.caller_overrides.insert(
            "noisy".into(),
            Rate {
                per_second: 2,
                burst: 3,
            },
        );
        let limits = InboundLimits::new(settings);
        let mut permits = Vec::new();
        for _ in 0..3 {
            permits.push(limits.admit("noisy", "e").unwrap());
        }
        let err = limits.admit("noisy", "e").err().unwrap();
        assert_eq!(err.kind.status(), 429);
        assert_eq!(
            err.message,
            "namespace \"noisy\" is over its rate limit of 2/s"
        );
        assert!(err.retry_after.unwrap() >= Duration::from_secs(1));
        assert!(limits.admit("quiet", "e").is_ok());
    }

    #[test]
    fn concurrency_is_capped_per_caller_and_released() {
        let mut settings = InboundSettings::default();
        settings.concurrent_overrides.insert("c".into(), 2);
        let limits = InboundLimits::new(settings);
        let a = limits.admit("c", "e").unwrap();
        let _b = limits.admit("c", "e").unwrap();
        let err = limits.admit("c", "e").err().unwrap();
        assert!(
            err.message.contains("2 operations in flight"),
            "{}",
            err.message
        );
        drop(a);
        assert!(limits.admit("c", "e").is_ok());
    }

    #[test]
    fn endpoint_and_pair_limits_apply() {
        let mut settings = InboundSettings::default();
        settings.endpoint_overrides.insert(
            "hot".into(),
            Rate {
                per_second: 1,
                burst: 1,
            },
        );
        settings.per_caller_endpoint = Rate {
            per_second: 1,
            burst: 2,
        };
        let limits = InboundLimits::new(settings);
        let _p = limits.admit("a", "hot").unwrap();
        assert!(
            limits
                .admit("b", "hot")
                .err()
                .unwrap()
                .message
                .contains("endpoint \"hot\"")
        );
        let _q = limits.admit("a", "cold").unwrap();
        let _r = limits.admit("a", "cold").unwrap();
        assert!(
            limits
                .admit("a", "cold")
                .err()
                .unwrap()
                .message
                .contains("on endpoint \"cold\"")
        );
        assert!(limits.admit("a", "other").is_ok());
    }

    #[test]
    fn a_known_pair_is_found_by_its_borrowed_names() {
        let limits = InboundLimits::new(InboundSettings::default());
        let _a = limits.admit("orders", "payments").unwrap();
        let _b = limits.admit("orders", "payments").unwrap();
        let _c = limits.admit("orders", "shipping").unwrap();
        assert_eq!(limits.pairs.len(), 2, "one limiter per caller and endpoint");
        let known: &dyn StrKey<2> = &["orders", "payments"];
        assert!(limits.pairs.get(known).is_some());
        let unknown: &dyn StrKey<2> = &["orderspay", "ments"];
        assert!(limits.pairs.get(unknown).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_for_the_callers_own_rate_are_pushed_back_holding_a_slot() {
        let mut settings = InboundSettings::default();
        settings.caller_overrides.insert(
            "flood".into(),
            Rate {
                per_second: 1,
                burst: 1,
            },
        );
        settings.concurrent_overrides.insert("flood".into(), 2);
        let limits = Arc::new(InboundLimits::new(settings));
        let _ok = limits.admit_or_push_back("flood", "e").await.unwrap();
        let start = tokio::time::Instant::now();
        let held = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.admit_or_push_back("flood", "e").await })
        };
        tokio::task::yield_now().await;
        // One slot is the admitted request's, the other the held refusal's: the next refusal
        // finds none free and is answered at once.
        let at_once = limits.admit_or_push_back("flood", "e").await.err().unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(
            at_once.message.contains("over its rate limit"),
            "{}",
            at_once.message
        );
        let err = held.await.unwrap().err().unwrap();
        assert_eq!(err.kind.status(), 429);
        let waited = start.elapsed();
        assert!(
            (Duration::from_millis(125)..=Duration::from_millis(250)).contains(&waited),
            "{waited:?}"
        );
        // Endpoint-wide limits are not the caller's doing: answered at once.
        let limits = InboundLimits::new(InboundSettings {
            per_endpoint: Rate {
                per_second: 1,
                burst: 1,
            },
            ..Default::default()
        });
        let _ok = limits.admit_or_push_back("a", "hot").await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(limits.admit_or_push_back("b", "hot").await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn zero_means_unlimited() {
        let settings = InboundSettings {
            per_caller: Rate::UNLIMITED,
            per_endpoint: Rate::UNLIMITED,
            per_caller_endpoint: Rate::UNLIMITED,
            ..Default::default()
        };
        let limits = InboundLimits::new(settings);
        for _ in 0..5000 {
            drop(limits.admit("a", "e").unwrap());
        }
    }
}
