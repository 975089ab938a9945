//! Queue-level tests; all run on paused tokio time, so they are deterministic
//! and take no wall-clock time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, advance, timeout};

use crate::*;

fn key(destination: &str) -> LaneKey {
    LaneKey {
        kind: "start",
        source: "ns-a".into(),
        destination: destination.into(),
    }
}

fn queue_with(lane: LaneSettings) -> Arc<OutboundQueue> {
    Arc::new(OutboundQueue::new(QueueSettings {
        defaults: lane,
        ..QueueSettings::default()
    }))
}

fn queue() -> Arc<OutboundQueue> {
    queue_with(LaneSettings::default())
}

fn stats(q: &OutboundQueue, k: &LaneKey) -> LaneStats {
    q.stats()
        .into_iter()
        .find(|s| &s.key == k)
        .expect("lane exists")
}

async fn finish_n(q: &OutboundQueue, k: &LaneKey, n: usize, outcome: Outcome) {
    for _ in 0..n {
        q.acquire(k).await.expect("admitted").finish(outcome);
    }
}

/// Lets spawned tasks run until they block.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn breaker_open(r: Result<Permit, Rejection>) -> Duration {
    match r {
        Err(Rejection::BreakerOpen { retry_after }) => retry_after,
        other => panic!("expected BreakerOpen, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_on_sixth_consecutive_failure_not_fifth() {
    let (q, k) = (queue(), key("down.example"));
    finish_n(&q, &k, 5, Outcome::DestinationDown).await;
    assert_eq!(stats(&q, &k).breaker, BreakerState::Closed);
    finish_n(&q, &k, 1, Outcome::DestinationDown).await;
    assert_eq!(stats(&q, &k).breaker, BreakerState::Open);
    let start = Instant::now();
    assert_eq!(breaker_open(q.acquire(&k).await), Duration::from_secs(60));
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected at once");
}

#[tokio::test(start_paused = true)]
async fn healthy_outcomes_reset_the_count() {
    for healthy in [Outcome::Success, Outcome::OperationFailed] {
        let (q, k) = (queue(), key("flaky.example"));
        finish_n(&q, &k, 5, Outcome::DestinationDown).await;
        finish_n(&q, &k, 1, healthy).await;
        finish_n(&q, &k, 5, Outcome::DestinationDown).await;
        assert_eq!(stats(&q, &k).breaker, BreakerState::Closed, "{healthy:?}");
        finish_n(&q, &k, 1, Outcome::DestinationDown).await;
        assert_eq!(stats(&q, &k).breaker, BreakerState::Open, "{healthy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_permit_neither_counts_nor_resets() {
    let (q, k) = (queue(), key("x.example"));
    finish_n(&q, &k, 5, Outcome::DestinationDown).await;
    drop(q.acquire(&k).await.unwrap());
    assert_eq!(stats(&q, &k).breaker, BreakerState::Closed);
    finish_n(&q, &k, 1, Outcome::DestinationDown).await;
    assert_eq!(stats(&q, &k).breaker, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_reports_remaining_time_at_least_one_second() {
    let (q, k) = (queue(), key("down.example"));
    finish_n(&q, &k, 6, Outcome::DestinationDown).await;
    advance(Duration::from_secs(20)).await;
    assert_eq!(breaker_open(q.acquire(&k).await), Duration::from_secs(40));
    advance(Duration::from_millis(39_700)).await;
    assert_eq!(breaker_open(q.acquire(&k).await), Duration::from_secs(1));
    assert_eq!(
        Rejection::LaneFull {
            retry_after: Duration::from_secs(3)
        }
        .retry_after(),
        Duration::from_secs(3)
    );
}

/// Opens the breaker and waits out `open_for`, returning the admitted probe.
async fn half_open(q: &OutboundQueue, k: &LaneKey) -> Permit {
    finish_n(q, k, 6, Outcome::DestinationDown).await;
    advance(Duration::from_secs(60)).await;
    assert_eq!(stats(q, k).breaker, BreakerState::HalfOpen);
    let probe = q.acquire(k).await.expect("probe admitted");
    // Everyone else is turned away while the probe is out.
    for _ in 0..3 {
        assert_eq!(breaker_open(q.acquire(k).await), Duration::from_secs(1));
    }
    probe
}

#[tokio::test(start_paused = true)]
async fn probe_success_closes() {
    let (q, k) = (queue(), key("down.example"));
    half_open(&q, &k).await.finish(Outcome::Success);
    assert_eq!(stats(&q, &k).breaker, BreakerState::Closed);
    let permits: Vec<_> = acquire_n(&q, &k, 5).await;
    assert_eq!(permits.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn probe_operation_failure_also_closes() {
    let (q, k) = (queue(), key("down.example"));
    half_open(&q, &k).await.finish(Outcome::OperationFailed);
    assert_eq!(stats(&q, &k).breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_for_another_period() {
    let (q, k) = (queue(), key("down.example"));
    half_open(&q, &k).await.finish(Outcome::DestinationDown);
    assert_eq!(stats(&q, &k).breaker, BreakerState::Open);
    assert_eq!(breaker_open(q.acquire(&k).await), Duration::from_secs(60));
    advance(Duration::from_secs(60)).await;
    let probe = q.acquire(&k).await.expect("next probe");
    assert!(q.acquire(&k).await.is_err());
    probe.finish(Outcome::Success);
    assert!(q.acquire(&k).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn probe_dropped_without_outcome_lets_a_new_probe_through() {
    let (q, k) = (queue(), key("down.example"));
    drop(half_open(&q, &k).await);
    assert_eq!(stats(&q, &k).breaker, BreakerState::HalfOpen);
    let probe = q.acquire(&k).await.expect("new probe");
    assert!(q.acquire(&k).await.is_err(), "still one probe at a time");
    probe.finish(Outcome::Success);
    assert_eq!(stats(&q, &k).breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_rejected_if_breaker_opens_meanwhile() {
    let q = queue_with(LaneSettings {
        concurrency: 1,
        breaker: BreakerSettings {
            failure_threshold: 0,
            ..BreakerSettings::default()
        },
        ..LaneSettings::default()
    });
    let k = key("down.example");
    let held = q.acquire(&k).await.unwrap();
    let waiter = tokio::spawn({
        let (q, k) = (q.clone(), k.clone());
        async move { q.acquire(&k).await }
    });
    settle().await;
    held.finish(Outcome::DestinationDown);
    assert_eq!(breaker_open(waiter.await.unwrap()), Duration::from_secs(60));
    let s = stats(&q, &k);
    assert_eq!((s.queued, s.in_flight, s.rejected_open), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_delays_beyond_burst() {
    let q = queue_with(LaneSettings {
        rate_per_second: 10,
        ..LaneSettings::default()
    });
    let k = key("rated.example");
    let start = Instant::now();
    let permits = acquire_n(&q, &k, 10).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "burst of 10 is immediate");
    let eleventh = q.acquire(&k).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(101),
        "{waited:?}"
    );
    drop((permits, eleventh));
}

#[tokio::test(start_paused = true)]
async fn zero_rate_is_unlimited() {
    let q = queue_with(LaneSettings {
        rate_per_second: 0,
        concurrency: 1000,
        ..LaneSettings::default()
    });
    let start = Instant::now();
    let permits = acquire_n(&q, &key("fast.example"), 500).await;
    assert_eq!((permits.len(), start.elapsed()), (500, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn full_buffer_rejects_at_once_and_cancelled_waiter_frees_its_place() {
    let q = queue_with(LaneSettings {
        concurrency: 1,
        buffer: 2,
        ..LaneSettings::default()
    });
    let k = key("slow.example");
    let held = q.acquire(&k).await.unwrap();
    let spawn_waiter = || {
        let (q, k) = (q.clone(), k.clone());
        tokio::spawn(async move { q.acquire(&k).await })
    };
    let first = spawn_waiter();
    settle().await;
    // The caller's deadline cancels this wait; its place must be freed.
    assert!(
        timeout(Duration::from_millis(10), q.acquire(&k))
            .await
            .is_err()
    );
    assert_eq!(stats(&q, &k).queued, 1);
    let second = spawn_waiter();
    settle().await;
    assert_eq!(stats(&q, &k).queued, 2);

    let start = Instant::now();
    match q.acquire(&k).await {
        Err(e @ Rejection::LaneFull { .. }) => assert_eq!(e.retry_after(), Duration::from_secs(1)),
        other => panic!("expected LaneFull, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Slots go to waiters in arrival order.
    held.finish(Outcome::Success);
    first.await.unwrap().unwrap().finish(Outcome::Success);
    second.await.unwrap().unwrap().finish(Outcome::Success);
    let s = stats(&q, &k);
    assert_eq!(
        (s.queued, s.in_flight, s.rejected_full, s.successes),
        (0, 0, 1, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn per_destination_overrides_apply() {
    let mut settings = QueueSettings::default();
    settings.per_destination.insert(
        "tiny.example".into(),
        LaneSettings {
            concurrency: 1,
            buffer: 0,
            ..LaneSettings::default()
        },
    );
    let q = OutboundQueue::new(settings);
    let tiny = key("tiny.example");
    let _held = q.acquire(&tiny).await.unwrap();
    assert!(matches!(
        q.acquire(&tiny).await,
        Err(Rejection::LaneFull { .. })
    ));
    // Other destinations, and the same destination from another source, are
    // separate lanes; only the override's limits differ.
    let other = acquire_n(&q, &key("big.example"), 50).await;
    assert_eq!(other.len(), 50);
    let other_source = LaneKey {
        source: "ns-b".into(),
        ..tiny.clone()
    };
    let _also = q.acquire(&other_source).await.unwrap();
    assert_eq!(q.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn idle_lanes_are_evicted_busy_ones_kept() {
    let q = queue();
    let (idle, busy, was_open) = (
        key("idle.example"),
        key("busy.example"),
        key("was-open.example"),
    );
    finish_n(&q, &idle, 1, Outcome::Success).await;
    let held = q.acquire(&busy).await.unwrap();
    // Opens at t=0; its 60 s window has long expired by the eviction below.
    finish_n(&q, &was_open, 6, Outcome::DestinationDown).await;
    assert_eq!(q.len(), 3);

    advance(Duration::from_secs(300)).await;
    assert_eq!(
        q.evict_idle(),
        0,
        "not idle for longer than idle_timeout yet"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(stats(&q, &was_open).breaker, BreakerState::HalfOpen);
    assert_eq!(q.evict_idle(), 2, "idle lane and expired open window go");
    assert_eq!(q.stats()[0].key, busy);

    // The busy lane becomes idle only `idle_timeout` after its last permit.
    drop(held);
    advance(Duration::from_secs(300)).await;
    assert_eq!(q.evict_idle(), 0);
    advance(Duration::from_secs(1)).await;
    assert_eq!(q.evict_idle(), 1);
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn long_open_window_blocks_eviction() {
    let q = queue_with(LaneSettings {
        breaker: BreakerSettings {
            open_for: Duration::from_secs(3600),
            ..BreakerSettings::default()
        },
        ..LaneSettings::default()
    });
    let k = key("down.example");
    finish_n(&q, &k, 6, Outcome::DestinationDown).await;
    advance(Duration::from_secs(600)).await;
    assert_eq!(q.evict_idle(), 0);
    advance(Duration::from_secs(3000)).await;
    assert_eq!(q.evict_idle(), 1);
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn evicted_lane_starts_fresh() {
    let (q, k) = (queue(), key("x.example"));
    finish_n(&q, &k, 5, Outcome::DestinationDown).await;
    advance(Duration::from_secs(301)).await;
    assert_eq!(q.evict_idle(), 1);
    finish_n(&q, &k, 1, Outcome::DestinationDown).await;
    let s = stats(&q, &k);
    assert_eq!((s.breaker, s.failures), (BreakerState::Closed, 1));
}

#[tokio::test(start_paused = true)]
async fn stats_count_everything() {
    let q = queue_with(LaneSettings {
        concurrency: 2,
        buffer: 1,
        ..LaneSettings::default()
    });
    let k = key("s.example");
    finish_n(&q, &k, 2, Outcome::Success).await;
    finish_n(&q, &k, 1, Outcome::OperationFailed).await;
    finish_n(&q, &k, 1, Outcome::DestinationDown).await;
    let a = q.acquire(&k).await.unwrap();
    let _b = q.acquire(&k).await.unwrap();
    let waiter = tokio::spawn({
        let (q, k) = (q.clone(), k.clone());
        async move { q.acquire(&k).await }
    });
    settle().await;
    assert!(q.acquire(&k).await.is_err());
    let s = stats(&q, &k);
    assert_eq!(s.key, k);
    assert_eq!((s.queued, s.in_flight), (1, 2));
    assert_eq!((s.successes, s.failures), (3, 1));
    assert_eq!((s.rejected_full, s.rejected_open), (1, 0));
    assert_eq!(s.breaker, BreakerState::Closed);
    a.finish(Outcome::Success);
    let _c = waiter.await.unwrap().unwrap();
    let s = stats(&q, &k);
    assert_eq!((s.queued, s.in_flight, s.successes), (0, 2, 4));
}

async fn acquire_n(q: &OutboundQueue, k: &LaneKey, n: usize) -> Vec<Permit> {
    let mut permits = Vec::with_capacity(n);
    for _ in 0..n {
        permits.push(q.acquire(k).await.expect("admitted"));
    }
    permits
}

#[tokio::test(start_paused = true)]
async fn a_lane_is_the_same_whether_named_by_key_or_by_borrowed_names() {
    let q = queue_with(LaneSettings {
        concurrency: 1,
        ..LaneSettings::default()
    });
    let k = key("h:443");
    let held = q.acquire(&k).await.unwrap();
    let borrowed = LaneRef {
        kind: "start",
        source: "ns-a",
        destination: "h:443",
    };
    // The one slot is held through the key: the borrowed names wait for it.
    assert!(
        timeout(Duration::from_secs(1), q.acquire(borrowed))
            .await
            .is_err()
    );
    assert_eq!(q.len(), 1, "one lane for both forms");
    held.finish(Outcome::Success);
    q.acquire(borrowed).await.unwrap().finish(Outcome::Success);
    assert_eq!(stats(&q, &k).successes, 2);
    let other = LaneRef {
        source: "ns-b",
        ..borrowed
    };
    drop(q.acquire(other).await.unwrap());
    assert_eq!(q.len(), 2);
    assert!(q.stats().iter().any(|s| s.key == other.to_key()));
}
