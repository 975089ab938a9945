//! `nexus-gateway attribution tail` and `nexus-gateway usage`: what metering consumes. Both read
//! through the gateway's metering API (metering certificate), or the segment files directly
//! with `--dir <data-dir>/attribution`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::Method;
use http_body_util::{BodyExt, Full};
use nexus_certs::Identity;

use super::conn::Connection;
use super::{Failure, outln, write_stdout};
use crate::attribution::{self, Dimension, Record};
use crate::client::HttpClient;

#[derive(Args)]
pub struct Source {
    #[command(flatten)]
    conn: Connection,
    /// Read segment files in this directory (e.g. data/attribution) instead of the API.
    /// `usage` takes several, one per replica, and totals them.
    #[arg(long = "dir")]
    dirs: Vec<PathBuf>,
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    source: Source,
    /// Print records after this sequence number.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep waiting for new records.
    #[arg(long)]
    follow: bool,
}

#[derive(Args)]
pub struct UsageArgs {
    #[command(flatten)]
    source: Source,
    /// Start of the window (RFC 3339 UTC, or a date), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// End of the window, exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Group by these, comma-separated: caller, target, endpoint, hour.
    #[arg(long, default_value = "caller,target,endpoint", value_delimiter = ',')]
    by: Vec<Dimension>,
    /// Output: table, json or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

const PAGE: usize = 1000;

enum Reader {
    Files(PathBuf),
    Api(Box<(HttpClient, http::Uri)>),
}

impl Reader {
    /// The readers of `source`: one per `--dir`, else the API.
    fn all(source: &Source) -> Result<Vec<Reader>, Failure> {
        if source.dirs.is_empty() {
            return Ok(vec![Reader::new(source)?]);
        }
        Ok(source.dirs.iter().cloned().map(Reader::Files).collect())
    }

    fn new(source: &Source) -> Result<Reader, Failure> {
        if source.dirs.len() > 1 {
            return Err("give one --dir: this reads one replica's log".into());
        }
        Ok(match source.dirs.first() {
            Some(dir) => Reader::Files(dir.clone()),
            None => Reader::Api(Box::new((
                source.conn.client(&Identity::Metering("metering".into()))?,
                source.conn.base_uri()?,
            ))),
        })
    }

    /// Where the records come from, for messages.
    fn describe(&self) -> String {
        match self {
            Reader::Files(dir) => format!("directory {}", dir.display()),
            Reader::Api(api) => format!("the attribution log of the gateway at {}", api.1),
        }
    }

    /// Raw JSON lines after `after`; with `wait`, the API waits that long for new ones.
    async fn page(&self, after: u64, wait: Option<Duration>) -> Result<Vec<String>, Failure> {
        match self {
            Reader::Files(dir) => {
                let lines = attribution::read_after(dir, after, PAGE)?;
                if lines.is_empty()
                    && let Some(wait) = wait
                {
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
                Ok(lines)
            }
            Reader::Api(api) => {
                let (client, base) = &**api;
                let mut path = format!(
                    "{}?after={after}&limit={PAGE}",
                    crate::request::ATTRIBUTION_EVENTS_PATH
                );
                if let Some(wait) = wait {
                    path.push_str(&format!("&wait={}ms", wait.as_millis()));
                }
                let uri = crate::worker::join(base, &path)?;
                let request = http::Request::builder()
                    .method(Method::GET)
                    .uri(uri)
                    .body(Full::default())?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("cannot reach the gateway at {base}: {e}"))?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let message = json["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into());
                    return Err(format!("gateway answered {status}: {message}").into());
                }
                Ok(String::from_utf8_lossy(&body)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect())
            }
        }
    }
}

fn seq_of(line: &str) -> Result<u64, Failure> {
    let record: Record =
        serde_json::from_str(line).map_err(|e| format!("unreadable record {line:?}: {e}"))?;
    Ok(record.seq)
}

pub async fn tail(args: TailArgs) -> Result<(), Failure> {
    let reader = Reader::new(&args.source)?;
    let mut after = args.from;
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let wait = args.follow.then_some(Duration::from_secs(25));
        let lines = tokio::select! {
            lines = reader.page(after, wait) => lines?,
            () = &mut stop => return Ok(()),
        };
        for line in &lines {
            outln!("{line}")?;
            after = seq_of(line)?;
        }
        if lines.len() < PAGE && !args.follow {
            return Ok(());
        }
    }
}

pub async fn usage(args: UsageArgs) -> Result<(), Failure> {
    check_window(args.from.as_deref(), args.to.as_deref())?;
    if !matches!(args.format.as_str(), "table" | "json" | "csv") {
        return Err(format!(
            "invalid --format {:?}: expected table, json or csv",
            args.format
        )
        .into());
    }
    let readers = Reader::all(&args.source)?;
    let mut records = Vec::new();
    for reader in &readers {
        let mut after = 0;
        loop {
            let lines = reader.page(after, None).await?;
            for line in &lines {
                let record: Record =
                    serde_json::from_str(line).map_err(|e| format!("unreadable record: {e}"))?;
                after = record.seq;
                records.push(record);
            }
            if lines.len() < PAGE {
                break;
            }
        }
    }
    if readers.len() > 1 {
        // Several replicas' logs: in time order, so a request retried on another replica is
        // charged by its first record (the sort is stable, so one log keeps its seq order).
        records.sort_by(|a, b| a.time.cmp(&b.time));
    }
    let rows = attribution::aggregate(records, args.from.as_deref(), args.to.as_deref(), &args.by);
    if rows.is_empty() {
        // An empty table alone cannot tell a quiet period from a wrong --dir or window.
        let sources: Vec<String> = readers.iter().map(Reader::describe).collect();
        eprintln!(
            "no attribution records {} in {}",
            window(args.from.as_deref(), args.to.as_deref()),
            sources.join(", ")
        );
    }
    match args.format.as_str() {
        "json" => outln!("{}", serde_json::to_string_pretty(&rows)?),
        "csv" => write_stdout(&attribution::format_csv(&rows, &args.by)),
        _ => write_stdout(&attribution::format_table(&rows, &args.by)),
    }
}

/// Both bounds parse, and the window is not reversed (which would silently match nothing).
fn check_window(from: Option<&str>, to: Option<&str>) -> Result<(), Failure> {
    let parse = |flag: &str, bound: Option<&str>| {
        bound
            .map(attribution::usage::parse_time)
            .transpose()
            .map_err(|e| Failure::from(format!("invalid {flag}: {e}")))
    };
    if let (Some(start), Some(end), Some(from), Some(to)) =
        (parse("--from", from)?, parse("--to", to)?, from, to)
        && start > end
    {
        return Err(format!("--from {from} is after --to {to}: the window is empty").into());
    }
    Ok(())
}

/// The period read, in the words of the flags.
fn window(from: Option<&str>, to: Option<&str>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => format!("from {from} to {to}"),
        (Some(from), None) => format!("from {from} on"),
        (None, Some(to)) => format!("before {to}"),
        (None, None) => "at any time".into(),
    }
}
