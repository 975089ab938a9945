//! S6 end to end (`nexus-bench s6 --e2e`): do 100 registry updates/s stall the requests the
//! gateway serves meanwhile? The requirement is that none is stalled by more than 1 ms.
//!
//! The real gateway (release binary, core 0, one worker thread) starts on a data dir that
//! already holds the 10,000 prepared endpoints of the start-up measurement, plus one endpoint
//! created through the admin API whose external target is the bare handler B (core 1).
//! Namespace `caller` calls that endpoint at a fixed rate (open loop, latency from the
//! intended send time). Windows alternate: "quiet" (the caller alone) and "updates" (the same
//! caller plus an admin client sending `PUT /api/v1/nexus/endpoints/{id}` on its own fixed
//! schedule, each changing the description of another of the 10,000). The in-process
//! measurement cannot see what the PUT costs around the registry write: TLS, JSON, the redb
//! commit and its fsync, and the blocking thread that shares core 0 with the request path.

use std::collections::HashMap;
use std::fmt::Write;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};
use nexus_registry::Endpoint;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::ext::EXT_PATH;
use crate::load::{self, Measured, Span, Tally, Window};
use crate::procs::thread_times;
use crate::registry::{data_dir, endpoint};
use crate::report::{cell, labelled, num, table};
use crate::scenarios::{
    Gateway, INPUT, check, create_endpoint_with, over, probe, send, spawn_self, start_gateway_in,
    threads_line,
};
use crate::serve::RESULT;
use crate::{Result, pki};

/// Endpoints prepared in the data dir (the requirement's registry size).
const ENDPOINTS: usize = 10_000;
/// Step between updated endpoints: prime, so coprime with [`ENDPOINTS`], and large, so that
/// consecutive updates land far apart in the table (and in its shards).
const STRIDE: usize = 7_919;
/// Admin PUTs in flight at most: the schedule does not wait for a slow answer, but a stalled
/// gateway must not pile up tasks without bound.
const MAX_ADMIN_IN_FLIGHT: usize = 16;
const ADMIN_PREFIX: &str = "/api/v1/nexus/endpoints";

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// End to end instead of in process: the release gateway on 10,000 endpoints serving a
    /// caller at --rate, windows without and with --update-rate admin PUTs per second.
    #[arg(long)]
    pub e2e: bool,
    /// End to end, closed loop: the release gateway on 10,000 and on 10 endpoints, throughput
    /// and CPU per request window by window.
    #[arg(long, conflicts_with = "e2e")]
    pub e2e_throughput: bool,
    /// (--e2e, --e2e-throughput) Warm-up seconds at the start of each window (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// (--e2e, --e2e-throughput) Measured seconds of each window [default: 6 with --e2e, 4 with
    /// --e2e-throughput].
    #[arg(long)]
    measure: Option<f64>,
    /// (--e2e) The caller's requests per second, on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// (--e2e, --e2e-throughput) Caller connections (h2), one request in flight on each
    /// [default: 8 sharing --rate with --e2e, 16 in a closed loop with --e2e-throughput].
    #[arg(long)]
    connections: Option<usize>,
    /// (--e2e) Admin PUTs per second in the update windows, on a fixed schedule.
    #[arg(long, default_value_t = 100.0)]
    update_rate: f64,
}

impl E2eArgs {
    /// --measure, or its default: a rare stall needs long windows to show up at a fixed rate,
    /// while a closed-loop rate settles within the warm-up.
    pub(crate) fn measure(&self) -> f64 {
        let default = if self.e2e_throughput { 4.0 } else { 6.0 };
        self.measure.unwrap_or(default)
    }

    /// --connections, or its default: `ext`'s 16 for closed-loop throughput (S1b's load), 8
    /// to share the fixed rate otherwise.
    pub(crate) fn connections(&self) -> usize {
        let default = if self.e2e_throughput { 16 } else { 8 };
        self.connections.unwrap_or(default)
    }

    pub(crate) fn window(&self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup),
            measure: Duration::from_secs_f64(self.measure()),
        }
    }
}

/// The admin client and what it knows of the prepared endpoints: the version each is at
/// (listed once before the run, then taken from each PUT's answer) and which to update next.
struct Admin {
    client: HttpClient,
    /// `https://ADDR/api/v1/nexus/endpoints`.
    base: String,
    ids: Vec<String>,
    versions: Mutex<Vec<u64>>,
    next: AtomicUsize,
}

/// Everything a window needs.
struct Bench {
    window: Window,
    pids: [u32; 3],
    uri: Uri,
    callers: Vec<HttpClient>,
    /// Gap between one caller connection's intended sends.
    caller_gap: Duration,
    admin: Arc<Admin>,
    admin_gap: Duration,
}

/// Process indices in the CPU snapshots.
const GATEWAY: usize = 0;
const BARE: usize = 1;
const LOADGEN: usize = 2;

/// One pair: the quiet window, the update window, and the admin PUTs of the latter.
struct Pair {
    quiet: Measured,
    updates: Measured,
    puts: Tally,
}

pub fn run(args: &E2eArgs, pairs: usize, gateway_bin: &Path) -> Result<String> {
    if args.rate <= 0.0 || args.update_rate <= 0.0 || args.connections() == 0 {
        return Err("--rate, --update-rate and --connections must be positive".into());
    }
    on_one_thread(e2e(args, pairs, gateway_bin))
}

/// Runs `scenario` on its own single-threaded runtime (the rest of S6 is synchronous), so
/// that the load generator uses one core, as in the other scenarios.
pub(crate) fn on_one_thread(scenario: impl Future<Output = Result<String>>) -> Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(scenario)
}

/// The gateway started on `data` (which may hold prepared endpoints), plus endpoint `ext`
/// created through the admin API, callable by `caller`, whose external target is B at `bare`.
pub(crate) async fn gateway_to_bare(
    bin: &Path,
    pki_dir: &Path,
    data: tempfile::TempDir,
    bare: SocketAddr,
) -> Result<Gateway> {
    let gateway = start_gateway_in(bin, pki_dir, "", data)?;
    let target = serde_json::json!({"external": {"url": format!("http://{bare}")}});
    create_endpoint_with(pki_dir, gateway.addr, "ext", target).await?;
    Ok(gateway)
}

async fn e2e(args: &E2eArgs, pairs: usize, gateway_bin: &Path) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let started = std::time::Instant::now();
    let data = data_dir(ENDPOINTS)?;
    eprintln!(
        "filled a {ENDPOINTS}-endpoint registry.redb in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bare = spawn_self("bare", 1, &["serve-bare".as_ref()])?;
    let bare_addr = bare.addr_after("data http://")?;
    let gateway = gateway_to_bare(gateway_bin, pki.path(), data, bare_addr).await?;

    let admin_client = http_client(
        &pki::client_material(pki.path(), &pki::admin())?,
        HttpVersions::Any,
    )?;
    let base = format!("https://{}{ADMIN_PREFIX}", gateway.addr);
    let ids: Vec<String> = (0..ENDPOINTS).map(|i| endpoint(i).id).collect();
    let versions = list_versions(&admin_client, &base, &ids).await?;
    let admin = Arc::new(Admin {
        client: admin_client,
        base,
        ids,
        versions: Mutex::new(versions),
        next: AtomicUsize::new(0),
    });

    let caller = pki::client_material(pki.path(), &pki::caller())?;
    let callers = (0..args.connections())
        .map(|_| http_client(&caller, HttpVersions::Any))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    let uri: Uri = format!("https://{}{EXT_PATH}", gateway.addr).parse()?;
    probe(&callers[0], &uri).await?;
    let bench = Bench {
        window: args.window(),
        pids: [gateway.process.pid(), bare.pid(), std::process::id()],
        uri,
        caller_gap: Duration::from_secs_f64(args.connections() as f64 / args.rate),
        callers,
        admin,
        admin_gap: Duration::from_secs_f64(1.0 / args.update_rate),
    };
    let mut done = Vec::new();
    for pair in 1..=pairs {
        let (quiet, _) = window(&bench, false).await?;
        let (updates, puts) = window(&bench, true).await?;
        let p = Pair {
            quiet,
            updates,
            puts: puts.ok_or("the admin loop reported nothing")?,
        };
        eprintln!("pair {pair}: {}", pair_line(&p));
        done.push(p);
    }
    let threads = thread_times(gateway.process.pid());
    drop(bare);
    Ok(report(args, &done, &threads))
}

/// Versions of the prepared endpoints, read through the admin API (pages of 1,000) as an
/// admin tool would before updating: what the data dir was filled with is not assumed.
async fn list_versions(client: &HttpClient, base: &str, ids: &[String]) -> Result<Vec<u64>> {
    let mut by_id: HashMap<String, u64> = HashMap::new();
    let mut token = String::new();
    // 10,001 endpoints are 11 pages; the bound only guards against a token that never ends.
    for _ in 0..100 {
        let request = Request::get(format!("{base}?pageSize=1000&nextPageToken={token}"))
            .body(Full::new(Bytes::new()))?;
        let (status, body) = send(client, request).await?;
        if status != StatusCode::OK {
            let body = String::from_utf8_lossy(&body);
            return Err(format!("listing endpoints: {status} {body}").into());
        }
        let mut page: serde_json::Value = serde_json::from_slice(&body)?;
        let endpoints: Vec<Endpoint> = serde_json::from_value(page["endpoints"].take())?;
        by_id.extend(endpoints.into_iter().map(|e| (e.id, e.version)));
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    ids.iter()
        .map(|id| {
            by_id
                .get(id)
                .copied()
                .ok_or_else(|| format!("prepared endpoint {id} is not listed").into())
        })
        .collect()
}

/// One window: the caller loops, plus the admin loop when `updates`. The admin tally comes
/// back beside the callers' (which [`load::measure`] merges), so PUTs never count as calls.
async fn window(bench: &Bench, updates: bool) -> Result<(Measured, Option<Tally>)> {
    let puts: Arc<Mutex<Option<Tally>>> = Arc::default();
    let n = bench.callers.len();
    let loops = n + usize::from(updates);
    let measured = load::measure(bench.window, &bench.pids, loops, |i, span| {
        let caller = bench.callers.get(i).cloned();
        let uri = bench.uri.clone();
        let schedule = (
            bench.caller_gap,
            bench.caller_gap.mul_f64(i as f64 / n as f64),
        );
        let (admin, admin_gap, puts) = (bench.admin.clone(), bench.admin_gap, puts.clone());
        async move {
            if let Some(client) = caller {
                let input = Bytes::from_static(INPUT);
                return load::keep_alive_loop(
                    client,
                    uri,
                    input,
                    RESULT.len(),
                    span,
                    Some(schedule),
                )
                .await;
            }
            let tally = admin_loop(admin, span, admin_gap).await;
            *puts.lock().expect("lock") = Some(tally);
            Tally::new()
        }
    })
    .await?;
    check(&measured, "the caller")?;
    let puts = puts.lock().expect("lock").take();
    Ok((measured, puts))
}

/// What an admin PUT task hands back: its intended send time, when it finished, and how.
type PutOutcome = (Instant, Instant, Result<()>);

/// Sends a PUT every `gap` from the window's start (warm-up included, so the measured span
/// sees a steady rate) to its end. Each PUT runs on its own task, so a slow answer (an fsync)
/// does not push the schedule back; latency counts from the intended send time, and only PUTs
/// finishing inside `span` count.
async fn admin_loop(admin: Arc<Admin>, span: Span, gap: Duration) -> Tally {
    let mut tally = Tally::new();
    let mut in_flight: JoinSet<PutOutcome> = JoinSet::new();
    let mut next = Instant::now();
    // Bounded by the span's end; the count bound only guards against a broken clock.
    for _ in 0..10_000_000u64 {
        let intended = next;
        next += gap;
        if intended >= span.end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        while in_flight.len() >= MAX_ADMIN_IN_FLIGHT {
            if let Some(joined) = in_flight.join_next().await {
                note(&mut tally, &span, joined);
            }
        }
        while let Some(joined) = in_flight.try_join_next() {
            note(&mut tally, &span, joined);
        }
        let k = admin.next.fetch_add(1, Ordering::Relaxed);
        let admin = admin.clone();
        in_flight.spawn(async move {
            let outcome = put_one(&admin, k).await;
            (intended, Instant::now(), outcome)
        });
    }
    while let Some(joined) = in_flight.join_next().await {
        note(&mut tally, &span, joined);
    }
    tally
}

fn note(tally: &mut Tally, span: &Span, joined: Result<PutOutcome, JoinError>) {
    match joined {
        Ok((from, done, outcome)) => tally.record(span, from, done, outcome),
        Err(error) => {
            let now = Instant::now();
            tally.record(span, now, now, Err(format!("PUT task: {error}").into()));
        }
    }
}

/// Update `k`: a new description for prepared endpoint `k * STRIDE mod 10,000`, at the version
/// last seen; the answer's version is kept for that endpoint's next update. A 409 (someone else
/// wrote it) re-reads the version and counts as an error.
async fn put_one(admin: &Admin, k: usize) -> Result<()> {
    let i = k.wrapping_mul(STRIDE) % ENDPOINTS;
    let mut spec = endpoint(i).spec;
    spec.description = format!("bench update {k}");
    let version = admin.versions.lock().expect("lock")[i];
    let body = serde_json::json!({"version": version, "spec": spec});
    let uri = format!("{}/{}", admin.base, admin.ids[i]);
    let request = Request::put(uri.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let (status, body) = send(&admin.client, request).await?;
    match status {
        StatusCode::OK => {
            admin.versions.lock().expect("lock")[i] = answered(&body)?.version;
            Ok(())
        }
        StatusCode::CONFLICT => {
            let request = Request::get(uri).body(Full::new(Bytes::new()))?;
            let (_, body) = send(&admin.client, request).await?;
            admin.versions.lock().expect("lock")[i] = answered(&body)?.version;
            Err(format!("409 at version {version}").into())
        }
        other => Err(format!("PUT answered {other}: {}", String::from_utf8_lossy(&body)).into()),
    }
}

/// The endpoint in an admin answer (`{"endpoint": ...}`).
fn answered(body: &[u8]) -> Result<Endpoint> {
    let mut value: serde_json::Value = serde_json::from_slice(body)?;
    Ok(serde_json::from_value(value["endpoint"].take())?)
}

/// Largest caller latency in the window (µs).
fn max_us(m: &Measured) -> f64 {
    m.tally.latency.max() as f64
}

fn pair_line(p: &Pair) -> String {
    let (q, u) = (&p.quiet.tally, &p.updates.tally);
    format!(
        "quiet p50 {} p99 {} max {} err {} | updates p50 {} p99 {} max {} err {} | \
         {} PUTs p50 {} p99 {} err {}",
        num(q.quantile_us(0.5), 0),
        num(q.quantile_us(0.99), 0),
        num(max_us(&p.quiet), 0),
        q.errors,
        num(u.quantile_us(0.5), 0),
        num(u.quantile_us(0.99), 0),
        num(max_us(&p.updates), 0),
        u.errors,
        p.puts.ok,
        num(p.puts.quantile_us(0.5), 0),
        num(p.puts.quantile_us(0.99), 0),
        p.puts.errors,
    )
}

fn report(args: &E2eArgs, pairs: &[Pair], threads: &[(String, Duration)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### S6 end to end: {} admin updates/s vs none, gateway on {} endpoints serving a \
         caller at {} req/s\n\n\
         Release gateway on core 0 (one worker thread), data dir prepared with {} endpoints plus \
         one external-target endpoint to B (core 1); namespace `caller` calls it at {} req/s \
         ({} h2 connections, fixed schedule, latency from the intended send time). {} pairs \
         (quiet window, then updates window), {} s warm-up + {} s measured each; in update \
         windows an admin client (h2, admin certificate) sends `PUT \
         /api/v1/nexus/endpoints/{{id}}` at {}/s on its own fixed schedule (at most {} in \
         flight), each a new description for another of the {} endpoints, at the version read \
         by listing them once and then from each answer. Cells: median (min – max) over pairs.\n",
        num(args.update_rate, 0),
        num(ENDPOINTS as f64, 0),
        num(args.rate, 0),
        num(ENDPOINTS as f64, 0),
        num(args.rate, 0),
        args.connections(),
        pairs.len(),
        args.warmup,
        args.measure(),
        num(args.update_rate, 0),
        MAX_ADMIN_IN_FLIGHT,
        num(ENDPOINTS as f64, 0),
    );
    out.push_str(&ratio_table(pairs));
    out.push('\n');
    out.push_str(&absolute_table(pairs));
    out.push('\n');
    out.push_str(&per_pair_table(pairs));
    if let Some(error) = pairs.iter().find_map(|p| p.puts.first_error.as_ref()) {
        let _ = writeln!(out, "\nFirst admin PUT error: {error}");
    }
    let caller_error = pairs.iter().find_map(|p| {
        p.quiet
            .tally
            .first_error
            .as_ref()
            .or(p.updates.tally.first_error.as_ref())
    });
    if let Some(error) = caller_error {
        let _ = writeln!(out, "\nFirst caller error: {error}");
    }
    out.push('\n');
    out.push_str(&threads_line(threads));
    out
}

fn ratio_table(pairs: &[Pair]) -> String {
    let ratio = |f: &dyn Fn(&Measured) -> f64| over(pairs, |p| f(&p.updates) / f(&p.quiet));
    let added = |f: &dyn Fn(&Measured) -> f64| over(pairs, |p| f(&p.updates) - f(&p.quiet));
    let p99 = |m: &Measured| m.tally.quantile_us(0.99);
    let rows = vec![
        vec![
            "caller p99, updates / quiet".into(),
            cell(ratio(&p99), 2),
            "—".into(),
        ],
        vec![
            "caller max, updates / quiet".into(),
            cell(ratio(&max_us), 2),
            "—".into(),
        ],
        vec![
            "caller p99 added, updates − quiet (µs)".into(),
            cell(added(&p99), 0),
            "—".into(),
        ],
        vec![
            "caller max added, updates − quiet (µs)".into(),
            cell(added(&max_us), 0),
            "≤ 1,000 (no request stalled > 1 ms)".into(),
        ],
    ];
    table(&["ratio", "median (min – max)", "target"], &rows)
}

fn absolute_table(pairs: &[Pair]) -> String {
    let both = |f: &dyn Fn(&Measured) -> f64, d: usize| {
        vec![
            cell(over(pairs, |p| f(&p.quiet)), d),
            cell(over(pairs, |p| f(&p.updates)), d),
        ]
    };
    let puts = |f: &dyn Fn(&Pair) -> f64, d: usize| vec!["—".into(), cell(over(pairs, f), d)];
    let measured_s = |p: &Pair| p.updates.wall.as_secs_f64();
    let pct = |m: &Measured, i: usize| 100.0 * m.utilisation(i);
    let rows = labelled([
        ("caller p50 (µs)", both(&|m| m.tally.quantile_us(0.5), 0)),
        ("caller p99 (µs)", both(&|m| m.tally.quantile_us(0.99), 0)),
        (
            "caller p99.9 (µs)",
            both(&|m| m.tally.quantile_us(0.999), 0),
        ),
        ("caller max (µs)", both(&max_us, 0)),
        ("caller req/s", both(&|m| m.per_second(), 0)),
        (
            "caller errors per window",
            both(&|m| m.tally.errors as f64, 0),
        ),
        (
            "admin PUTs/s completed (200)",
            puts(&|p| p.puts.ok as f64 / measured_s(p), 1),
        ),
        ("admin PUT p50 (µs)", puts(&|p| p.puts.quantile_us(0.5), 0)),
        ("admin PUT p99 (µs)", puts(&|p| p.puts.quantile_us(0.99), 0)),
        (
            "admin PUT max (µs)",
            puts(&|p| p.puts.latency.max() as f64, 0),
        ),
        (
            "admin errors per window",
            puts(&|p| p.puts.errors as f64, 0),
        ),
        (
            "gateway CPU per PUT, from the CPU/s difference (µs)",
            puts(&gateway_us_per_put, 0),
        ),
        ("gateway core 0 busy (%)", both(&|m| pct(m, GATEWAY), 0)),
        (
            "core 1: load generator + B (%)",
            both(&|m| pct(m, LOADGEN) + pct(m, BARE), 0),
        ),
        (
            "other processes (% of a core)",
            both(&|m| 100.0 * m.others_utilisation(), 0),
        ),
        (
            "steal (% of a core)",
            both(&|m| 100.0 * m.steal_utilisation(), 0),
        ),
    ]);
    table(&["absolute input", "quiet", "updates"], &rows)
}

/// The gateway's extra CPU in the update window over the quiet one, per completed PUT: what
/// one update costs the core the request path runs on.
fn gateway_us_per_put(p: &Pair) -> f64 {
    let per_s = |m: &Measured| m.cpu[GATEWAY].as_secs_f64() / m.wall.as_secs_f64();
    let puts_per_s = p.puts.ok as f64 / p.updates.wall.as_secs_f64();
    (per_s(&p.updates) - per_s(&p.quiet)) * 1e6 / puts_per_s
}

fn per_pair_table(pairs: &[Pair]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let lat = |m: &Measured| {
                format!(
                    "{} / {} / {}",
                    num(m.tally.quantile_us(0.5), 0),
                    num(m.tally.quantile_us(0.99), 0),
                    num(max_us(m), 0)
                )
            };
            vec![
                (i + 1).to_string(),
                lat(&p.quiet),
                lat(&p.updates),
                format!(
                    "{} / {} / {}",
                    p.puts.ok,
                    num(p.puts.quantile_us(0.5), 0),
                    num(p.puts.quantile_us(0.99), 0)
                ),
                format!(
                    "{} / {}",
                    num(100.0 * p.quiet.others_utilisation(), 0),
                    num(100.0 * p.updates.others_utilisation(), 0)
                ),
            ]
        })
        .collect();
    let mut out = String::from("<details><summary>per pair</summary>\n\n");
    out.push_str(&table(
        &[
            "pair",
            "quiet caller p50 / p99 / max (µs)",
            "updates caller p50 / p99 / max (µs)",
            "PUTs ok / p50 / p99 (µs)",
            "others % quiet / updates",
        ],
        &rows,
    ));
    out.push_str("\n</details>\n");
    out
}
