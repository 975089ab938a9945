//! Usage totals for metering: what each namespace is charged, from attribution records.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Kind, Record};

/// A grouping key of [`aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// `caller_namespace`: who is charged.
    Caller,
    /// `target_namespace`.
    Target,
    /// `endpoint` (name).
    Endpoint,
    /// The UTC hour of `time`.
    Hour,
}

impl Dimension {
    /// The [`UsageRow`] field, also the table and CSV column header.
    pub fn column(self) -> &'static str {
        match self {
            Self::Caller => "caller_namespace",
            Self::Target => "target_namespace",
            Self::Endpoint => "endpoint",
            Self::Hour => "hour",
        }
    }
}

impl FromStr for Dimension {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "caller" => Ok(Self::Caller),
            "target" => Ok(Self::Target),
            "endpoint" => Ok(Self::Endpoint),
            "hour" => Ok(Self::Hour),
            other => Err(format!(
                "unknown dimension {other:?} (expected caller, target, endpoint or hour)"
            )),
        }
    }
}

/// Totals for one group. A dimension not grouped by is `None`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageRow {
    pub caller_namespace: Option<String>,
    pub target_namespace: Option<String>,
    pub endpoint: Option<String>,
    /// Start of the UTC hour, e.g. `2026-11-23T01:00:00Z`.
    pub hour: Option<String>,
    /// Charged actions: billable starts and cancels, retries counted once.
    pub actions: u64,
    pub starts: u64,
    pub cancels: u64,
    pub completions: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Counted records answered with status >= 400, except 424 (an operation failure is a
    /// result, not an error).
    pub errors: u64,
    /// Calls the gateway refused; never charged.
    pub rejected: u64,
}

const COUNTERS: [&str; 8] = [
    "actions",
    "starts",
    "cancels",
    "completions",
    "request_bytes",
    "response_bytes",
    "errors",
    "rejected",
];

impl UsageRow {
    fn dimension(&self, d: Dimension) -> Option<&str> {
        match d {
            Dimension::Caller => self.caller_namespace.as_deref(),
            Dimension::Target => self.target_namespace.as_deref(),
            Dimension::Endpoint => self.endpoint.as_deref(),
            Dimension::Hour => self.hour.as_deref(),
        }
    }

    fn counters(&self) -> [u64; 8] {
        [
            self.actions,
            self.starts,
            self.cancels,
            self.completions,
            self.request_bytes,
            self.response_bytes,
            self.errors,
            self.rejected,
        ]
    }
}

/// Parses a time bound: RFC 3339 in UTC (`Z` or `+00:00`, any fraction) or a date
/// (`2026-11-23`, midnight UTC). For validating `--from`/`--to` before [`aggregate`].
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let parsed = if s.len() == 10 {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339(s)
    };
    parsed.map_err(|e| format!("bad time {s:?} (expected RFC 3339 in UTC): {e}"))
}

fn hour_of(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs - secs % 3600))
        .to_string()
}

/// Aggregates the records with `from <= time < to` (either bound optional, see [`parse_time`];
/// an unparsable bound matches nothing, so a typo never bills a wrong window) grouped by `by`,
/// rows sorted by the grouping keys in `by` order.
///
/// Charging: one action per `start` and per `cancel` with `billable > 0`, to `caller_namespace`.
/// A retried request (same caller namespace, endpoint id (or name), request id and kind) is
/// counted once, by its first billable record; later billable copies are left out of every
/// total, even when the first one is before `from`, so consecutive windows add up. A cancel
/// without a request id (Temporal sends none) is keyed by its operation token instead: the
/// same operation's cancel counts once. Other records without a request id are never
/// deduplicated. Pass records in seq order
/// ([`super::read_records`] gives them so).
///
/// Rejected records (outcome `rejected…`) count in `rejected` only. Bytes and `errors` sum over
/// the other counted records. A record whose time does not parse is only counted without bounds,
/// with hour `None`.
pub fn aggregate(
    records: impl IntoIterator<Item = Record>,
    from: Option<&str>,
    to: Option<&str>,
    by: &[Dimension],
) -> Vec<UsageRow> {
    let (Ok(from), Ok(to)) = (
        from.map(parse_time).transpose(),
        to.map(parse_time).transpose(),
    ) else {
        return Vec::new();
    };
    let mut charged: HashSet<(String, String, String, Kind)> = HashSet::new();
    let mut rows: BTreeMap<Vec<Option<String>>, UsageRow> = BTreeMap::new();
    for r in records {
        let rejected = r.is_rejected();
        // Before the window check, so a retry is not charged again in a later window.
        let retry_key = match (&r.request_id, r.kind, &r.operation_token) {
            (Some(request_id), ..) => Some(request_id.clone()),
            (None, Kind::Cancel, Some(token)) => Some(format!("token:{token}")),
            _ => None,
        };
        let duplicate = r.billable > 0
            && !rejected
            && retry_key.is_some_and(|key| {
                let endpoint = r.endpoint_id.as_ref().or(r.endpoint.as_ref());
                !charged.insert((
                    r.caller_namespace.clone().unwrap_or_default(),
                    endpoint.cloned().unwrap_or_default(),
                    key,
                    r.kind,
                ))
            });
        let time = humantime::parse_rfc3339_weak(&r.time).ok();
        let in_window = match time {
            Some(t) => from.is_none_or(|f| t >= f) && to.is_none_or(|end| t < end),
            None => from.is_none() && to.is_none(),
        };
        if duplicate || !in_window {
            continue;
        }
        let hour = time.map(hour_of);
        let key: Vec<Option<String>> = by
            .iter()
            .map(|d| match d {
                Dimension::Caller => r.caller_namespace.clone(),
                Dimension::Target => r.target_namespace.clone(),
                Dimension::Endpoint => r.endpoint.clone(),
                Dimension::Hour => hour.clone(),
            })
            .collect();
        let row = rows.entry(key).or_insert_with(|| UsageRow {
            caller_namespace: by
                .contains(&Dimension::Caller)
                .then(|| r.caller_namespace.clone())
                .flatten(),
            target_namespace: by
                .contains(&Dimension::Target)
                .then(|| r.target_namespace.clone())
                .flatten(),
            endpoint: by
                .contains(&Dimension::Endpoint)
                .then(|| r.endpoint.clone())
                .flatten(),
            hour: by
                .contains(&Dimension::Hour)
                .then(|| hour.clone())
                .flatten(),
            ..UsageRow::default()
        });
        if rejected {
            row.rejected += 1;
            continue;
        }
        match r.kind {
            Kind::Start => row.starts += 1,
            Kind::Cancel => row.cancels += 1,
            Kind::Completion => row.completions += 1,
        }
        if r.billable > 0 && matches!(r.kind, Kind::Start | Kind::Cancel) {
            row.actions += 1;
        }
        if r.status >= 400 && r.status != 424 {
            row.errors += 1;
        }
        row.request_bytes += r.request_bytes;
        row.response_bytes += r.response_bytes;
    }
    rows.into_values().collect()
}

/// An aligned text table: the `by` columns (`-` for none), then the counters.
pub fn format_table(rows: &[UsageRow], by: &[Dimension]) -> String {
    let header: Vec<&str> = by.iter().map(|d| d.column()).chain(COUNTERS).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            by.iter()
                .map(|&d| row.dimension(d).unwrap_or("-").to_owned())
                .chain(row.counters().iter().map(u64::to_string))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let lines = std::iter::once(header.iter().map(|h| h.to_string()).collect()).chain(cells);
    for line in lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            // Text columns left-aligned, counters right-aligned.
            let _ = if i < by.len() {
                write!(text, "{sep}{cell:<w$}", w = widths[i])
            } else {
                write!(text, "{sep}{cell:>w$}", w = widths[i])
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// CSV with a header line; a missing dimension is an empty cell.
pub fn format_csv(rows: &[UsageRow], by: &[Dimension]) -> String {
    let mut out = String::new();
    let header: Vec<&str> = by.iter().map(|d| d.column()).chain(COUNTERS).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in rows {
        let dims = by
            .iter()
            .map(|&d| csv_field(row.dimension(d).unwrap_or("")));
        let counters = row.counters().map(|n| n.to_string());
        let fields: Vec<String> = dims.chain(counters).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;
    use crate::error::ErrorType;
    use Dimension::*;

    /// A record as the gateway writes it for a call it relayed and the target answered: a
    /// start answered 201, a cancel answered 202, a completion accepted.
    fn rec(kind: &str, caller: &str, request_id: Option<&str>, time: &str) -> Record {
        let (kind, outcome, status) = match kind {
            "start" => (Kind::Start, Outcome::Started, 201),
            "cancel" => (Kind::Cancel, Outcome::CancelRequested, 202),
            "completion" => (Kind::Completion, Outcome::Accepted, 200),
            other => panic!("the gateway writes no {other:?} records"),
        };
        Record {
            kind,
            time: time.into(),
            caller_namespace: Some(caller.into()),
            target_namespace: Some("payments".into()),
            endpoint: Some("pay".into()),
            endpoint_id: Some("e1".into()),
            request_id: request_id.map(Into::into),
            outcome,
            status,
            request_bytes: 10,
            response_bytes: 20,
            billable: u32::from(kind != Kind::Completion),
            ..Record::default()
        }
    }

    const T0: &str = "2026-11-23T00:59:59.999Z";
    const T1: &str = "2026-11-23T01:00:00.000Z";
    const T2: &str = "2026-11-23T02:30:00.000Z";

    fn total(records: Vec<Record>) -> UsageRow {
        let rows = aggregate(records, None, None, &[]);
        assert_eq!(rows.len(), 1);
        rows[0].clone()
    }

    #[test]
    fn retries_are_charged_once() {
        let mut other_endpoint = rec("start", "orders", Some("r1"), T1);
        other_endpoint.endpoint_id = Some("e2".into());
        let row = total(vec![
            rec("start", "orders", Some("r1"), T1),
            rec("start", "orders", Some("r1"), T1),  // retry
            rec("cancel", "orders", Some("r1"), T1), // another kind
            rec("start", "billing", Some("r1"), T1), // another caller
            other_endpoint,
            rec("start", "orders", None, T1), // no request id: never deduplicated
            rec("start", "orders", None, T1),
            rec("completion", "orders", Some("r1"), T1),
        ]);
        assert_eq!((row.actions, row.starts, row.cancels), (6, 5, 1));
        assert_eq!(row.completions, 1);
        assert_eq!((row.request_bytes, row.response_bytes), (70, 140));
    }

    #[test]
    fn a_cancel_without_request_id_is_charged_once_per_operation() {
        let cancel = |token: &str| {
            let mut r = rec("cancel", "orders@east", None, T1);
            r.operation_token = Some(token.into());
            r
        };
        let row = total(vec![cancel("t1"), cancel("t1"), cancel("t2")]);
        assert_eq!((row.actions, row.cancels), (2, 2));
    }

    #[test]
    fn retry_of_a_request_charged_before_the_window_is_not_charged() {
        let records = vec![
            rec("start", "orders", Some("r1"), T0),
            rec("start", "orders", Some("r1"), T1),
        ];
        assert_eq!(aggregate(records, Some(T1), None, &[]), vec![]);
    }

    #[test]
    fn rejected_are_not_charged_and_errors_skip_424() {
        // Outcomes and billability as the gateway writes them for starts and completions.
        let mut rejected = rec("start", "orders", Some("r1"), T1);
        rejected.outcome = Outcome::Rejected(ErrorType::Unauthorized);
        rejected.status = 403;
        rejected.billable = 0;
        let mut failed_op = rec("start", "orders", Some("r2"), T1);
        failed_op.outcome = Outcome::Failed;
        failed_op.status = 424;
        let mut handler_error = rec("start", "orders", Some("r3"), T1);
        handler_error.outcome = Outcome::HandlerError;
        handler_error.status = 500;
        let mut upstream_timeout = rec("start", "orders", Some("r4"), T1);
        upstream_timeout.outcome = Outcome::Destination(ErrorType::UpstreamTimeout);
        upstream_timeout.status = 520;
        upstream_timeout.billable = 0;
        let mut refused_completion = rec("completion", "orders", None, T1);
        refused_completion.outcome = Outcome::Rejected(ErrorType::NotFound);
        refused_completion.status = 404;
        let completion = rec("completion", "orders", None, T1);
        let row = total(vec![
            rejected,
            failed_op,
            handler_error,
            upstream_timeout,
            refused_completion,
            completion,
        ]);
        assert_eq!(row.rejected, 2);
        assert_eq!(row.errors, 2, "500 and 520, not 424");
        assert_eq!((row.actions, row.starts, row.completions), (2, 3, 1));
        assert_eq!(row.request_bytes, 40, "rejected bytes are not summed");
    }

    #[test]
    fn groups_by_each_dimension() {
        let mut to_other = rec("start", "orders", None, T2);
        to_other.target_namespace = Some("shipping".into());
        to_other.endpoint = Some("ship".into());
        let records = vec![
            rec("start", "orders", None, T0),
            rec("start", "billing", None, T1),
            to_other,
        ];
        let keys = |by: &[Dimension]| -> Vec<(Vec<Option<String>>, u64)> {
            aggregate(records.clone(), None, None, by)
                .iter()
                .map(|r| {
                    (
                        [Caller, Target, Endpoint, Hour]
                            .map(|d| r.dimension(d).map(Into::into))
                            .to_vec(),
                        r.actions,
                    )
                })
                .collect()
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            keys(&[Caller]),
            vec![
                (vec![s("billing"), None, None, None], 1),
                (vec![s("orders"), None, None, None], 2)
            ]
        );
        assert_eq!(
            keys(&[Target]),
            vec![
                (vec![None, s("payments"), None, None], 2),
                (vec![None, s("shipping"), None, None], 1)
            ]
        );
        assert_eq!(
            keys(&[Endpoint]),
            vec![
                (vec![None, None, s("pay"), None], 2),
                (vec![None, None, s("ship"), None], 1)
            ]
        );
        let hours: Vec<_> = keys(&[Hour])
            .into_iter()
            .map(|(k, n)| (k[3].clone(), n))
            .collect();
        assert_eq!(
            hours,
            vec![
                (s("2026-11-23T00:00:00Z"), 1),
                (s("2026-11-23T01:00:00Z"), 1),
                (s("2026-11-23T02:00:00Z"), 1)
            ]
        );
        // Sorted by the keys in `by` order: hour first here.
        let rows = aggregate(records.clone(), None, None, &[Hour, Caller]);
        let order: Vec<_> = rows
            .iter()
            .map(|r| r.caller_namespace.clone().unwrap())
            .collect();
        assert_eq!(order, ["orders", "billing", "orders"]);
    }

    #[test]
    fn time_bounds() {
        let records = vec![
            rec("start", "a", None, T0),
            rec("start", "b", None, T1),
            rec("start", "c", None, T2),
        ];
        let callers = |from, to| -> Vec<String> {
            aggregate(records.clone(), from, to, &[Caller])
                .into_iter()
                .filter_map(|r| r.caller_namespace)
                .collect()
        };
        // Bounds in another precision than the records: compared as times, not strings.
        assert_eq!(callers(Some("2026-11-23T01:00:00Z"), None), ["b", "c"]);
        assert_eq!(callers(None, Some("2026-11-23T01:00:00Z")), ["a"]);
        assert_eq!(callers(Some(T1), Some(T2)), ["b"]);
        assert_eq!(
            callers(Some("2026-11-23"), Some("2026-11-24")),
            ["a", "b", "c"]
        );
        assert_eq!(callers(Some("yesterday"), None), Vec::<String>::new());
        assert!(parse_time("2026-11-23T01:00:00+02:00").is_err(), "only UTC");
    }

    #[test]
    fn table_and_csv() {
        let mut a = rec("start", "orders", None, T1);
        a.request_bytes = 1234;
        let mut b = rec("start", "a,\"b\"", None, T1);
        b.target_namespace = None;
        let by = [Caller, Target];
        let rows = aggregate(vec![a, b], None, None, &by);
        assert_eq!(
            format_table(&rows, &by),
            "\
caller_namespace  target_namespace  actions  starts  cancels  completions  request_bytes  response_bytes  errors  rejected
a,\"b\"             -                       1       1        0            0             10              20       0         0
orders            payments                1       1        0            0           1234              20       0         0
"
        );
        assert_eq!(
            format_csv(&rows, &by),
            "\
caller_namespace,target_namespace,actions,starts,cancels,completions,request_bytes,response_bytes,errors,rejected
\"a,\"\"b\"\"\",,1,1,0,0,10,20,0,0
orders,payments,1,1,0,0,1234,20,0,0
"
        );
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["caller_namespace"], "orders");
        assert_eq!(json["hour"], serde_json::Value::Null);
    }

    #[test]
    fn dimension_names() {
        assert_eq!("hour".parse::<Dimension>(), Ok(Hour));
        assert!("day".parse::<Dimension>().is_err());
    }
}
