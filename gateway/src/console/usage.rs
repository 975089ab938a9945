//! The console's chart: billable actions per hour per caller namespace over the last 24 hours,
//! counted from the attribution log by [`crate::attribution::aggregate`], the same rules
//! metering bills by (retries once, rejected calls never).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::attribution::{AttributionError, Dimension, aggregate, read_records, seq_before};

/// Hours the chart shows, the current one last.
pub const HOURS: usize = 24;
/// Records parsed per read of the log.
const PAGE: usize = 10_000;

/// Actions per hour per caller namespace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Chart {
    /// Start of each hour, RFC 3339 UTC, oldest first.
    pub hours: Vec<String>,
    /// Busiest caller first.
    pub callers: Vec<CallerActions>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallerActions {
    pub caller: String,
    /// One count per entry of [`Chart::hours`].
    pub actions: Vec<u64>,
    pub total: u64,
}

/// Counts the chart from the log in `dir`, reading only segments written in the last 24 hours.
/// Blocking file IO: call it from `spawn_blocking`.
pub fn actions_per_hour(dir: &Path, now: SystemTime) -> Result<Chart, AttributionError> {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let first_hour =
        UNIX_EPOCH + Duration::from_secs(now_secs - now_secs % 3600 - (HOURS as u64 - 1) * 3600);
    let hours: Vec<String> = (0..HOURS as u64)
        .map(|i| {
            humantime::format_rfc3339_seconds(first_hour + Duration::from_secs(i * 3600))
                .to_string()
        })
        .collect();
    let mut chart = Chart {
        hours,
        callers: Vec::new(),
    };
    let Some(mut after) = seq_before(dir, first_hour)? else {
        return Ok(chart);
    };
    let mut failed = None;
    let mut page = Vec::new().into_iter();
    let records = std::iter::from_fn(|| {
        if let Some(record) = page.next() {
            return Some(record);
        }
        match read_records(dir, after, PAGE) {
            Ok(next) => {
                after = next.last()?.seq;
                page = next.into_iter();
                page.next()
            }
            Err(e) => {
                failed = Some(e);
                None
            }
        }
    });
    let rows = aggregate(
        records,
        Some(&chart.hours[0]),
        None,
        &[Dimension::Caller, Dimension::Hour],
    );
    if let Some(e) = failed {
        return Err(e);
    }
    for row in rows.into_iter().filter(|r| r.actions > 0) {
        let caller = row.caller_namespace.unwrap_or_default();
        let Some(slot) = row
            .hour
            .and_then(|h| chart.hours.iter().position(|x| *x == h))
        else {
            continue;
        };
        let entry = match chart.callers.iter().position(|c| c.caller == caller) {
            Some(i) => &mut chart.callers[i],
            None => {
                chart.callers.push(CallerActions {
                    caller,
                    actions: vec![0; HOURS],
                    total: 0,
                });
                chart.callers.last_mut().expect("just pushed")
            }
        };
        entry.actions[slot] += row.actions;
        entry.total += row.actions;
    }
    chart
        .callers
        .sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.caller.cmp(&b.caller)));
    Ok(chart)
}

/// The last chart counted, so that pages refreshing every few seconds do not each read a
/// day of the log.
#[derive(Default)]
pub struct ChartCache {
    last: Mutex<Option<Cached>>,
}

struct Cached {
    at: Instant,
    last_seq: u64,
    chart: Arc<Chart>,
}

/// A chart is counted again at most this often while records come in...
const RECOUNT_AFTER: Duration = Duration::from_secs(2);
/// ...and at least this often, so that old hours leave the chart.
const MAX_AGE: Duration = Duration::from_secs(60);

impl ChartCache {
    /// The cached chart if it is recent enough for a log whose last record is `last_seq`.
    pub fn get(&self, last_seq: u64) -> Option<Arc<Chart>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let cached = last.as_ref()?;
        let age = cached.at.elapsed();
        let fresh = age < RECOUNT_AFTER || (cached.last_seq == last_seq && age < MAX_AGE);
        fresh.then(|| cached.chart.clone())
    }

    pub fn put(&self, last_seq: u64, chart: Arc<Chart>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            at: Instant::now(),
            last_seq,
            chart,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{AttributionLog, AttributionSettings, Kind, Outcome, Record};

    fn start(caller: &str, request_id: &str, billable: u32, outcome: Outcome) -> Record {
        Record {
            kind: Kind::Start,
            caller_namespace: Some(caller.into()),
            endpoint: Some("payments".into()),
            endpoint_id: Some("e1".into()),
            request_id: Some(request_id.into()),
            outcome,
            status: 200,
            billable,
            ..Record::default()
        }
    }

    #[tokio::test]
    async fn billable_actions_per_caller_in_the_current_hour() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AttributionLog::open(AttributionSettings::new(tmp.path().to_path_buf())).unwrap();
        for record in [
            start("orders", "r1", 1, Outcome::Succeeded),
            // A retry of r1: billed once.
            start("orders", "r1", 1, Outcome::Succeeded),
            start("orders", "r2", 1, Outcome::Succeeded),
            start("shipping", "r3", 1, Outcome::Succeeded),
            start(
                "intruder",
                "r4",
                0,
                Outcome::Rejected(crate::ErrorType::Unauthorized),
            ),
        ] {
            log.append(record).await.unwrap();
        }
        let dir = tmp.path().to_path_buf();
        let chart =
            tokio::task::spawn_blocking(move || actions_per_hour(&dir, SystemTime::now()).unwrap())
                .await
                .unwrap();
        assert_eq!(chart.hours.len(), HOURS);
        let totals: Vec<(&str, u64, u64)> = chart
            .callers
            .iter()
            .map(|c| (c.caller.as_str(), c.total, c.actions[HOURS - 1]))
            .collect();
        assert_eq!(totals, [("orders", 2, 2), ("shipping", 1, 1)]);

        let cache = ChartCache::default();
        assert!(cache.get(5).is_none());
        cache.put(5, Arc::new(chart.clone()));
        assert_eq!(cache.get(5).as_deref(), Some(&chart));
    }

    #[test]
    fn an_empty_or_old_log_gives_empty_hours() {
        let tmp = tempfile::tempdir().unwrap();
        let chart = actions_per_hour(tmp.path(), SystemTime::now()).unwrap();
        assert_eq!(chart.hours.len(), HOURS);
        assert!(chart.callers.is_empty());
        assert!(chart.hours[HOURS - 1] > chart.hours[0]);
    }
}
