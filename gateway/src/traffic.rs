//! Recent Nexus traffic for the console: per (caller namespace, endpoint, target) the
//! requests, errors and latencies of each 10-second slot of the last five minutes.
//!
//! Recording is on the request path, so it is one sharded-map lookup by borrowed strings (no
//! allocation once a series exists) and one uncontended lock on that series' ring of slots.
//! Reading merges the slots of a window; series with nothing in the window are dropped then,
//! so memory follows the traffic of the last five minutes.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seeded per map; SipHash's stronger guarantee cost ~5 % of a request (BENCHMARKS.md, round 7).
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
use serde::Serialize;

use crate::attribution::{Kind, Record};
use crate::str_key::StrKey;

/// Width of one slot.
pub const SLOT: Duration = Duration::from_secs(10);
/// Slots kept: five minutes, the longest window the console shows.
pub const SLOTS: usize = 30;
/// Latency buckets: two per power of two of microseconds, so a percentile read from them is
/// within about 25 % of the truth; the last bucket takes everything above ~2 minutes.
const BUCKETS: usize = 56;

/// The endpoint of calls naming no registered endpoint: whatever a caller typed counts under
/// one name, as in the metrics, so callers cannot grow the series without bound.
const UNKNOWN_ENDPOINT: &str = "_unknown";

/// The traffic of every (caller, endpoint, target) seen in the last five minutes.
pub struct Traffic {
    started: Instant,
    series: DashMap<Key, Box<Mutex<Ring>>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            started: Instant::now(),
            series: DashMap::default(),
        }
    }
}

/// One row of the traffic view.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub caller: String,
    pub endpoint: String,
    pub target: String,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// Share of requests answered with an error (status >= 400 except 424, as in usage).
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Traffic {
    /// Counts a start or cancel from its attribution record; completions flow the other way
    /// and are not caller traffic.
    pub fn record(&self, r: &Record) {
        self.record_at(r, Instant::now());
    }

    fn record_at(&self, r: &Record, now: Instant) {
        if r.kind == Kind::Completion {
            return;
        }
        let key = [
            r.caller_namespace.as_deref().unwrap_or_default(),
            match (&r.endpoint, &r.endpoint_id) {
                (Some(name), Some(_)) => name.as_str(),
                (Some(_), None) => UNKNOWN_ENDPOINT,
                (None, _) => "",
            },
            r.target_namespace
                .as_deref()
                .or(r.target_url.as_deref())
                .unwrap_or_default(),
        ];
        let error = r.status >= 400 && r.status != 424;
        let epoch = self.epoch(now);
        let view: &dyn StrKey<3> = &key;
        if let Some(ring) = self.series.get(view) {
            lock(&ring).add(epoch, error, r.latency_us);
            return;
        }
        let ring = self
            .series
            .entry(Key::from(key))
            .or_insert_with(|| Box::new(Mutex::new(Ring::new())));
        lock(&ring).add(epoch, error, r.latency_us);
    }

    /// Every series with traffic in the last `window` (at most five minutes), busiest first.
    pub fn snapshot(&self, window: Duration) -> Vec<Row> {
        self.snapshot_at(window, Instant::now())
    }

    fn snapshot_at(&self, window: Duration, now: Instant) -> Vec<Row> {
        let slots = (window.as_secs().div_ceil(SLOT.as_secs()) as usize).clamp(1, SLOTS);
        let current = self.epoch(now);
        let oldest = current.saturating_sub(slots as u64 - 1);
        // The current slot is partly over, and the gateway may be younger than the window.
        let into_slot = now.duration_since(self.started).as_secs_f64() % SLOT.as_secs_f64();
        let seconds = ((slots - 1) as f64 * SLOT.as_secs_f64() + into_slot)
            .min(now.duration_since(self.started).as_secs_f64())
            .max(1.0);
        let mut rows = Vec::new();
        self.series.retain(|key, ring| {
            let ring = lock(ring);
            let total = ring.merge(oldest, current);
            if total.requests > 0 {
                rows.push(Row {
                    caller: key.caller.to_string(),
                    endpoint: key.endpoint.to_string(),
                    target: key.target.to_string(),
                    requests: total.requests,
                    errors: total.errors,
                    rate: total.requests as f64 / seconds,
                    error_rate: total.errors as f64 / total.requests as f64,
                    p50_ms: total.quantile_ms(0.5),
                    p99_ms: total.quantile_ms(0.99),
                });
            }
            // Anything still in the ring's five minutes is kept for a wider window.
            ring.newest() + SLOTS as u64 > current
        });
        rows.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| (&a.caller, &a.endpoint).cmp(&(&b.caller, &b.endpoint)))
        });
        rows
    }

    /// The slot number of `now`, counted from 1 so that 0 marks a slot never used.
    fn epoch(&self, now: Instant) -> u64 {
        now.duration_since(self.started).as_secs() / SLOT.as_secs() + 1
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    // A panic while holding it leaves counters, never broken invariants.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The slots of one series; slot `epoch % SLOTS` holds `epoch` until a later one reuses it.
struct Ring {
    slots: [Slot; SLOTS],
}

#[derive(Clone, Copy)]
struct Slot {
    epoch: u64,
    requests: u32,
    errors: u32,
    latency: [u32; BUCKETS],
}

const EMPTY: Slot = Slot {
    epoch: 0,
    requests: 0,
    errors: 0,
    latency: [0; BUCKETS],
};

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: [EMPTY; SLOTS],
        }
    }

    fn add(&mut self, epoch: u64, error: bool, latency_us: u64) {
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot { epoch, ..EMPTY };
        }
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(error));
        let bucket = &mut slot.latency[bucket(latency_us)];
        *bucket = bucket.saturating_add(1);
    }

    fn newest(&self) -> u64 {
        self.slots.iter().map(|s| s.epoch).max().unwrap_or(0)
    }

    fn merge(&self, oldest: u64, newest: u64) -> Total {
        let mut total = Total {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        };
        for slot in self
            .slots
            .iter()
            .filter(|s| s.epoch >= oldest && s.epoch <= newest && s.epoch != 0)
        {
            total.requests += u64::from(slot.requests);
            total.errors += u64::from(slot.errors);
            for (sum, n) in total.latency.iter_mut().zip(slot.latency) {
                *sum += u64::from(n);
            }
        }
        total
    }
}

struct Total {
    requests: u64,
    errors: u64,
    latency: [u64; BUCKETS],
}

impl Total {
    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let count: u64 = self.latency.iter().sum();
        let rank = ((count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound_us(index) as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// Bucket 0 holds 0 and 1 µs; bucket `2k + h` (k >= 1) holds `[(2 + h) << (k - 1), (3 + h) << (k - 1))`.
fn bucket(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let half = ((us >> (octave - 1)) & 1) as usize;
    (octave * 2 + half).min(BUCKETS - 1)
}

fn upper_bound_us(bucket: usize) -> u64 {
    if bucket < 2 {
        return 2;
    }
    (3 + (bucket as u64 & 1)) << (bucket / 2 - 1)
}

/// A series' key, owned once when the series is created.
struct Key {
    caller: Box<str>,
    endpoint: Box<str>,
    target: Box<str>,
}

impl From<[&str; 3]> for Key {
    fn from([caller, endpoint, target]: [&str; 3]) -> Key {
        Key {
            caller: caller.into(),
            endpoint: endpoint.into(),
            target: target.into(),
        }
    }
}

impl StrKey<3> for Key {
    fn parts(&self) -> [&str; 3] {
        [&self.caller, &self.endpoint, &self.target]
    }
}

impl<'a> Borrow<dyn StrKey<3> + 'a> for Key {
    fn borrow(&self) -> &(dyn StrKey<3> + 'a) {
        self
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Key {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Outcome;

    fn call(caller: &str, endpoint: &str, status: u16, latency_us: u64) -> Record {
        Record {
            kind: Kind::Start,
            caller_namespace: Some(caller.into()),
            endpoint: Some(endpoint.into()),
            endpoint_id: Some("id".into()),
            target_namespace: Some("billing".into()),
            outcome: Outcome::Succeeded,
            status,
            latency_us,
            ..Record::default()
        }
    }

    #[test]
    fn buckets_cover_every_latency_in_order() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(us < upper_bound_us(b), "{us} in bucket {b}");
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn rates_errors_and_percentiles_per_caller_endpoint_and_target() {
        let traffic = Traffic::default();
        let t0 = traffic.started;
        for i in 0..100 {
            // 1 ms mostly, one slow call; two errors and one operation failure (424).
            let latency = if i == 99 { 500_000 } else { 1_000 };
            let status = match i {
                0 | 1 => 503,
                2 => 424,
                _ => 200,
            };
            traffic.record_at(&call("orders", "payments", status, latency), t0);
        }
        traffic.record_at(
            &call("shipping", "payments", 200, 10),
            t0 + Duration::from_secs(25),
        );
        let mut completion = call("orders", "payments", 200, 10);
        completion.kind = Kind::Completion;
        traffic.record_at(&completion, t0);

        let rows = traffic.snapshot_at(Duration::from_secs(60), t0 + Duration::from_secs(50));
        assert_eq!(rows.len(), 2, "{rows:?}");
        let orders = &rows[0];
        assert_eq!(
            (orders.caller.as_str(), orders.endpoint.as_str()),
            ("orders", "payments")
        );
        assert_eq!((orders.requests, orders.errors), (100, 2));
        assert_eq!(orders.target, "billing");
        assert!((orders.rate - 2.0).abs() < 1e-9, "{}", orders.rate);
        assert!((1.0..=1.25).contains(&orders.p50_ms), "{}", orders.p50_ms);
        assert!((1.0..=1.25).contains(&orders.p99_ms), "{}", orders.p99_ms);
        let rows = traffic.snapshot_at(Duration::from_secs(300), t0 + Duration::from_secs(50));
        assert!(rows[0].p99_ms >= 1.0, "{rows:?}");

        // A minute later the first calls are out of a one-minute window, but not forgotten.
        let later = t0 + Duration::from_secs(75);
        let rows = traffic.snapshot_at(Duration::from_secs(60), later);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].caller, "shipping");
        assert_eq!(
            traffic.snapshot_at(Duration::from_secs(300), later).len(),
            2
        );
        // After five quiet minutes a series is gone.
        traffic.snapshot_at(Duration::from_secs(300), t0 + Duration::from_secs(400));
        assert!(traffic.series.is_empty());
    }

    #[test]
    fn unregistered_endpoints_share_one_series() {
        let traffic = Traffic::default();
        for name in ["typo-1", "typo-2"] {
            let mut r = call("orders", name, 404, 10);
            r.endpoint_id = None;
            traffic.record(&r);
        }
        let rows = traffic.snapshot(Duration::from_secs(60));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].endpoint, UNKNOWN_ENDPOINT);
        assert_eq!(UNKNOWN_ENDPOINT, crate::metrics::UNKNOWN_ENDPOINT);
        assert_eq!(rows[0].errors, 2);
    }
}
