//! The scenarios: start the candidates, alternate them window by window, and turn the
//! per-pair numbers into markdown.
//!
//! Placement (BENCHMARKING.md): the process under test (gateway or B-tls, one worker thread
//! each) alone on core 0; this process (the load generator, to be started with
//! `taskset -c 1`) and the polling worker on core 1.

use std::ffi::{OsStr, OsString};
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};
use tokio_rustls::TlsConnector;

use crate::load::{self, Measured, REQUEST_BOUND, Window};
use crate::procs::{Pinned, thread_times};
use crate::report::{Summary, cell, labelled, num, summarize, table};
use crate::serve::{self, RESULT, TASK_QUEUE};
use crate::{Result, pki};

/// The caller's Nexus start request (W1) and its input.
const OPERATION_PATH: &str = "/nexus/endpoints/bench/services/svc/op";
pub(crate) const INPUT: &[u8] = br#"{"orderId":"ord-7f3a9c2e"}"#;
/// S3's request: an unknown endpoint, answered 404 by the gateway itself.
const S3_PATH: &str = "/nexus/endpoints/nope/services/s/o";

#[derive(clap::Args, Debug)]
pub struct Common {
    /// Candidate pairs (windows of each candidate, alternating).
    #[arg(long, default_value_t = 7)]
    pub(crate) pairs: usize,
    /// Warm-up seconds at the start of each window (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Measured seconds of each window.
    #[arg(long, default_value_t = 6.0)]
    pub(crate) measure: f64,
    /// The release gateway binary.
    #[arg(long, default_value = "target/release/nexus-gateway")]
    pub(crate) gateway_bin: PathBuf,
}

impl W1Args {
    pub fn gateway_bin(&self) -> &Path {
        &self.common.gateway_bin
    }
}

impl S3Args {
    pub fn gateway_bin(&self) -> &Path {
        &self.common.gateway_bin
    }
}

impl Common {
    pub(crate) fn window(&self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup),
            measure: Duration::from_secs_f64(self.measure),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct W1Args {
    #[command(flatten)]
    common: Common,
    /// Caller connections, one request in flight on each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Total requests per second on a fixed schedule (latency from the intended send time);
    /// 0: closed loop at saturation.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// HTTP/1.1 instead of h2 for the caller connections.
    #[arg(long)]
    http1: bool,
    /// Polls the worker keeps open.
    #[arg(long, default_value_t = 32)]
    worker_concurrency: usize,
}

#[derive(clap::Args, Debug)]
pub struct S3Args {
    #[command(flatten)]
    common: Common,
    /// Loops opening connections at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// The gateway's settings beyond its defaults: inbound rate limits and the outbound lanes'
/// per-destination rate (default 100/s) far above any load here, so that no request is
/// refused or delayed but every limiter still runs.
pub const GATEWAY_CONFIG: &str = "\
[inbound]
per_caller_rate = 1000000
per_caller_burst = 1000000
per_endpoint_rate = 1000000
per_endpoint_burst = 1000000
per_caller_endpoint_rate = 1000000
per_caller_endpoint_burst = 1000000

[outbound]
rate_per_second = 1000000
";

/// The gateway, started with `serve` on 127.0.0.1:0 and pinned on core 0.
pub(crate) struct Gateway {
    pub(crate) process: Pinned,
    pub(crate) addr: SocketAddr,
    /// The ops port (plain HTTP: /metrics).
    pub(crate) ops: SocketAddr,
    _data: tempfile::TempDir,
}

fn start_gateway(bin: &Path, pki_dir: &Path) -> Result<Gateway> {
    start_gateway_with(bin, pki_dir, "")
}

/// The gateway with `extra` appended to [`GATEWAY_CONFIG`].
pub(crate) fn start_gateway_with(bin: &Path, pki_dir: &Path, extra: &str) -> Result<Gateway> {
    start_gateway_in(bin, pki_dir, extra, tempfile::tempdir()?)
}

/// [`start_gateway_with`] on `data`, whose `data/` subdirectory may already hold state (S6
/// starts on a prepared 10,000-endpoint registry); the gateway owns `data` from then on.
pub(crate) fn start_gateway_in(
    bin: &Path,
    pki_dir: &Path,
    extra: &str,
    data: tempfile::TempDir,
) -> Result<Gateway> {
    if !bin.is_file() {
        return Err(format!(
            "no gateway binary at {} (cargo build --release -p nexus-gateway, or --gateway-bin)",
            bin.display()
        )
        .into());
    }
    let config = data.path().join("bench.toml");
    std::fs::write(&config, format!("{GATEWAY_CONFIG}\n{extra}"))?;
    let files = pki::server_files(pki_dir)?;
    let mut args: Vec<OsString> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
    ]
    .map(OsString::from)
    .to_vec();
    for (flag, path) in [
        ("--config", config.as_path()),
        ("--data-dir", &data.path().join("data")),
        ("--tls-ca", &files.ca),
        ("--tls-cert", &files.cert),
        ("--tls-key", &files.key),
    ] {
        args.push(flag.into());
        args.push(path.into());
    }
    let env = [("TOKIO_WORKER_THREADS", "1")];
    let process = Pinned::spawn("gateway", 0, bin.as_os_str(), args, &env)?;
    let line = process.wait_for("data https://", Duration::from_secs(30))?;
    let after = |needle: &str| -> Result<SocketAddr> {
        let rest = line
            .split(needle)
            .nth(1)
            .ok_or_else(|| format!("gateway: no {needle:?} in {line:?}"))?;
        let addr = rest.split_whitespace().next().unwrap_or_default();
        Ok(addr
            .parse()
            .map_err(|e| format!("gateway: bad address {addr:?}: {e}"))?)
    };
    let addr = after("data https://")?;
    let ops = after("ops http://")?;
    Ok(Gateway {
        process,
        addr,
        ops,
        _data: data,
    })
}

/// Runs this binary's hidden subcommand `args` pinned on `core`.
pub(crate) fn spawn_self(name: &'static str, core: usize, args: &[&OsStr]) -> Result<Pinned> {
    let me = std::env::current_exe()?;
    Pinned::spawn(name, core, me.as_os_str(), args, &[])
}

/// One request with [`REQUEST_BOUND`]: status and whole body.
pub(crate) async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    let response = tokio::time::timeout(REQUEST_BOUND, client.request(request)).await??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn create_endpoint(pki_dir: &Path, gateway: SocketAddr) -> Result<()> {
    let target =
        serde_json::json!({"worker": {"namespace": pki::HANDLER, "taskQueue": TASK_QUEUE}});
    create_endpoint_with(pki_dir, gateway, "bench", target).await
}

/// Creates endpoint `name` with `target` through the admin API, callable by the caller
/// namespace.
pub(crate) async fn create_endpoint_with(
    pki_dir: &Path,
    gateway: SocketAddr,
    name: &str,
    target: serde_json::Value,
) -> Result<()> {
    create_endpoint_allowing(pki_dir, gateway, name, target, &[pki::CALLER]).await
}

/// [`create_endpoint_with`], callable by the namespaces `allowed`.
pub(crate) async fn create_endpoint_allowing(
    pki_dir: &Path,
    gateway: SocketAddr,
    name: &str,
    target: serde_json::Value,
    allowed: &[&str],
) -> Result<()> {
    let admin = http_client(
        &pki::client_material(pki_dir, &pki::admin())?,
        HttpVersions::Any,
    )?;
    let spec = serde_json::json!({"spec": {
        "name": name,
        "target": target,
        "allowedCallerNamespaces": allowed,
    }});
    let request = Request::post(format!("https://{gateway}/api/v1/nexus/endpoints"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(spec.to_string())))?;
    let (status, body) = send(&admin, request).await?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body);
        return Err(format!("creating the endpoint: {status} {body}").into());
    }
    Ok(())
}

/// Retries `uri` (bounded) until it answers 200 with [`RESULT`].
pub(crate) async fn probe(client: &HttpClient, uri: &Uri) -> Result<()> {
    let mut last = String::new();
    for _ in 0..100 {
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(INPUT)))?;
        match send(client, request).await {
            Ok((StatusCode::OK, body)) if body == RESULT => return Ok(()),
            Ok((status, body)) => last = format!("{status} {}", String::from_utf8_lossy(&body)),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{uri} never answered the fixed result; last: {last}").into())
}

/// Process indices in W1's CPU snapshots.
const GATEWAY: usize = 0;
const WORKER: usize = 1;
const DIRECT: usize = 2;
const LOADGEN: usize = 3;

pub async fn w1(args: W1Args) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let dir = pki.path().as_os_str();
    let gateway = start_gateway(&args.common.gateway_bin, pki.path())?;
    create_endpoint(pki.path(), gateway.addr).await?;
    let base = OsString::from(format!("https://{}", gateway.addr));
    let concurrency = OsString::from(args.worker_concurrency.to_string());
    let worker = spawn_self(
        "worker",
        1,
        &[
            "worker".as_ref(),
            "--pki".as_ref(),
            dir,
            "--gateway".as_ref(),
            &base,
            "--concurrency".as_ref(),
            &concurrency,
        ],
    )?;
    worker.wait_for("polling", Duration::from_secs(30))?;
    let direct = spawn_self(
        "b-tls",
        0,
        &["serve-direct".as_ref(), "--pki".as_ref(), dir],
    )?;
    let direct_addr = direct.data_addr()?;

    let versions = if args.http1 {
        HttpVersions::Http1Only
    } else {
        HttpVersions::Any
    };
    let caller = pki::client_material(pki.path(), &pki::caller())?;
    let clients = (0..args.connections.max(1))
        .map(|_| http_client(&caller, versions))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    let g_uri: Uri = format!("https://{}{OPERATION_PATH}", gateway.addr).parse()?;
    let b_uri: Uri = format!("https://{direct_addr}{OPERATION_PATH}").parse()?;
    probe(&clients[0], &g_uri).await?;
    probe(&clients[0], &b_uri).await?;

    let pids = [
        gateway.process.pid(),
        worker.pid(),
        direct.pid(),
        std::process::id(),
    ];
    let mut pairs = Vec::new();
    for pair in 1..=args.common.pairs {
        let g = keep_alive(&args, &pids, &clients, &g_uri).await?;
        let b = keep_alive(&args, &pids, &clients, &b_uri).await?;
        eprintln!(
            "pair {pair}: G {} req/s {} us CPU/req (+ worker {}) p50 {} us | B-tls {} req/s {} us CPU/req p50 {} us",
            num(g.per_second(), 0),
            num(g.cpu_us_per_ok(GATEWAY), 1),
            num(g.cpu_us_per_ok(WORKER), 1),
            num(g.tally.quantile_us(0.5), 0),
            num(b.per_second(), 0),
            num(b.cpu_us_per_ok(DIRECT), 1),
            num(b.tally.quantile_us(0.5), 0),
        );
        pairs.push((g, b));
    }
    let threads = thread_times(gateway.process.pid());
    Ok(w1_report(&args, &pairs, &threads))
}

async fn keep_alive(
    args: &W1Args,
    pids: &[u32],
    clients: &[HttpClient],
    uri: &Uri,
) -> Result<Measured> {
    let n = clients.len();
    let gap = (args.rate > 0.0).then(|| Duration::from_secs_f64(n as f64 / args.rate));
    let measured = load::measure(args.common.window(), pids, n, |i, span| {
        let schedule = gap.map(|gap| (gap, gap.mul_f64(i as f64 / n as f64)));
        let input = Bytes::from_static(INPUT);
        load::keep_alive_loop(
            clients[i].clone(),
            uri.clone(),
            input,
            RESULT.len(),
            span,
            schedule,
        )
    })
    .await?;
    check(&measured, uri)?;
    Ok(measured)
}

pub(crate) fn check(measured: &Measured, target: impl std::fmt::Display) -> Result<()> {
    let tally = &measured.tally;
    if let Some(error) = &tally.first_error {
        eprintln!(
            "warning: {} errors from {target}; first: {error}",
            tally.errors
        );
    }
    if tally.ok == 0 {
        return Err(format!("no request to {target} completed in the measured window").into());
    }
    Ok(())
}

pub(crate) fn over<T>(items: &[T], f: impl Fn(&T) -> f64) -> Summary {
    summarize(&items.iter().map(f).collect::<Vec<_>>())
}

/// Sends `request` and names how it ended: the status code, `error`, or `timeout` after `limit`
/// (the body is read, so the connection can be reused).
pub(crate) async fn status_key(
    client: &nexus_gateway::client::HttpClient,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
    limit: Duration,
) -> String {
    match tokio::time::timeout(limit, client.request(request)).await {
        Ok(Ok(r)) => {
            let s = r.status().as_u16().to_string();
            let _ = r.into_body().collect().await;
            s
        }
        Ok(Err(_)) => "error".into(),
        Err(_) => format!("no answer in {} s", limit.as_secs()),
    }
}

/// `p50 … p99 … err …` of one window, for progress lines.
pub(crate) fn latency_line(m: &Measured) -> String {
    format!(
        "p50 {} p99 {} err {}",
        num(m.tally.quantile_us(0.5), 0),
        num(m.tally.quantile_us(0.99), 0),
        m.tally.errors
    )
}

/// A ratio-table row: latency quantile `q` of each pair's second window over its first.
pub(crate) fn quantile_ratio_row(
    label: &str,
    pairs: &[(Measured, Measured)],
    q: f64,
    target: &str,
) -> Vec<String> {
    let ratio = over(pairs, |(a, b)| {
        b.tally.quantile_us(q) / a.tally.quantile_us(q)
    });
    vec![label.into(), cell(ratio, 2), target.into()]
}

fn w1_report(
    args: &W1Args,
    pairs: &[(Measured, Measured)],
    threads: &[(String, Duration)],
) -> String {
    let pct = |m: &Measured, i: usize| 100.0 * m.utilisation(i);
    let mode = if args.rate > 0.0 {
        format!("fixed rate {} req/s", num(args.rate, 0))
    } else {
        "closed loop".into()
    };
    let protocol = if args.http1 { "HTTP/1.1" } else { "h2" };
    // Throughput is a closed-loop measure; added latency is judged at a fixed rate.
    let (throughput_target, p50_target) = if args.rate > 0.0 {
        ("— (fixed rate)", "≤ 300")
    } else {
        ("≥ 0.5", "≤ 300 at a fixed rate (--rate)")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### W1: caller → G (gateway) → polling worker vs caller → B-tls\n\n\
         {} pairs (G then B-tls), {} s warm-up + {} s measured each; {} caller connections ({protocol}, \
         mTLS), {mode}; worker: {} polls. Ratios are per pair; cells are median (min – max).\n",
        pairs.len(),
        args.common.warmup,
        args.common.measure,
        args.connections,
        args.worker_concurrency,
    );
    let ratio_rows = vec![
        vec![
            "CPU/req, G / B-tls (gateway process only)".into(),
            cell(
                over(pairs, |(g, b)| {
                    g.cpu_us_per_ok(GATEWAY) / b.cpu_us_per_ok(DIRECT)
                }),
                2,
            ),
            "report".into(),
        ],
        vec![
            "CPU/req, (G + worker) / B-tls".into(),
            cell(
                over(pairs, |(g, b)| {
                    (g.cpu_us_per_ok(GATEWAY) + g.cpu_us_per_ok(WORKER)) / b.cpu_us_per_ok(DIRECT)
                }),
                2,
            ),
            "report".into(),
        ],
        vec![
            "throughput, G / B-tls".into(),
            cell(over(pairs, |(g, b)| g.per_second() / b.per_second()), 2),
            throughput_target.into(),
        ],
        vec![
            "p50 added, G − B-tls (µs)".into(),
            cell(
                over(pairs, |(g, b)| {
                    g.tally.quantile_us(0.5) - b.tally.quantile_us(0.5)
                }),
                0,
            ),
            p50_target.into(),
        ],
        vec![
            "p99, G / B-tls".into(),
            cell(
                over(pairs, |(g, b)| {
                    g.tally.quantile_us(0.99) / b.tally.quantile_us(0.99)
                }),
                2,
            ),
            "—".into(),
        ],
    ];
    out.push_str(&table(
        &["ratio", "median (min – max)", "target"],
        &ratio_rows,
    ));
    out.push('\n');
    let g: Vec<&Measured> = pairs.iter().map(|(g, _)| g).collect();
    let b: Vec<&Measured> = pairs.iter().map(|(_, b)| b).collect();
    let both = |f: &dyn Fn(&Measured) -> f64, decimals: usize| {
        vec![
            cell(over(&g, |m| f(m)), decimals),
            cell(over(&b, |m| f(m)), decimals),
        ]
    };
    let rows = labelled([
        ("requests/s", both(&|m| m.per_second(), 0)),
        (
            "CPU µs/req, process under test (core 0)",
            vec![
                cell(over(&g, |m| m.cpu_us_per_ok(GATEWAY)), 1),
                cell(over(&b, |m| m.cpu_us_per_ok(DIRECT)), 1),
            ],
        ),
        (
            "CPU µs/req, worker (core 1)",
            vec![cell(over(&g, |m| m.cpu_us_per_ok(WORKER)), 1), "—".into()],
        ),
        (
            "core 0 busy, process under test (%)",
            vec![
                cell(over(&g, |m| pct(m, GATEWAY)), 0),
                cell(over(&b, |m| pct(m, DIRECT)), 0),
            ],
        ),
        (
            "core 1: load generator + worker (%)",
            both(&|m| pct(m, LOADGEN) + pct(m, WORKER), 0),
        ),
        ("latency p50 (µs)", both(&|m| m.tally.quantile_us(0.5), 0)),
        ("latency p99 (µs)", both(&|m| m.tally.quantile_us(0.99), 0)),
        ("errors per window", both(&|m| m.tally.errors as f64, 0)),
        (
            "other processes on the machine (% of a core)",
            both(&|m| 100.0 * m.others_utilisation(), 0),
        ),
        (
            "steal (% of a core)",
            both(&|m| 100.0 * m.steal_utilisation(), 0),
        ),
    ]);
    out.push_str(&table(&["absolute input", "G", "B-tls"], &rows));
    out.push('\n');
    let per_pair: Vec<Vec<String>> = pairs
        .iter()
        .enumerate()
        .map(|(i, (g, b))| {
            vec![
                (i + 1).to_string(),
                num(g.per_second(), 0),
                num(b.per_second(), 0),
                num(g.cpu_us_per_ok(GATEWAY), 1),
                num(g.cpu_us_per_ok(WORKER), 1),
                num(b.cpu_us_per_ok(DIRECT), 1),
                num(g.tally.quantile_us(0.5), 0),
                num(b.tally.quantile_us(0.5), 0),
                format!(
                    "{} / {}",
                    num(100.0 * g.others_utilisation(), 0),
                    num(100.0 * b.others_utilisation(), 0)
                ),
            ]
        })
        .collect();
    out.push_str("<details><summary>per pair</summary>\n\n");
    out.push_str(&table(
        &[
            "pair",
            "G req/s",
            "B-tls req/s",
            "G µs/req",
            "worker µs/req",
            "B-tls µs/req",
            "G p50 µs",
            "B-tls p50 µs",
            "others % (G / B-tls)",
        ],
        &per_pair,
    ));
    out.push_str("\n</details>\n\n");
    out.push_str(&threads_line(threads));
    out
}

pub(crate) fn threads_line(threads: &[(String, Duration)]) -> String {
    let listed: Vec<String> = threads
        .iter()
        .take(6)
        .map(|(name, cpu)| format!("{name} {:.1} s", cpu.as_secs_f64()))
        .collect();
    format!(
        "Gateway threads, CPU over the whole run ({} live): {}\n",
        threads.len(),
        listed.join(", ")
    )
}

/// S3's process indices.
const S3_GATEWAY: usize = 0;
const S3_LOADGEN: usize = 1;

/// T's numbers for one window, from the `handshakes` child.
struct HandshakeWindow {
    per_second: f64,
    server_us: f64,
}

pub async fn s3(args: S3Args) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let gateway = start_gateway(&args.common.gateway_bin, pki.path())?;
    let tls = Arc::new(serve::s3_client_config(pki.path())?);
    let status =
        load::one_connection(&TlsConnector::from(tls.clone()), gateway.addr, S3_PATH).await?;
    if status != StatusCode::NOT_FOUND {
        return Err(format!("S3 probe: the gateway answered {status}, expected 404").into());
    }
    let pids = [gateway.process.pid(), std::process::id()];
    let mut pairs = Vec::new();
    for pair in 1..=args.common.pairs {
        let g = load::measure(args.common.window(), &pids, args.connections, |_, span| {
            load::new_connection_loop(
                gateway.addr,
                tls.clone(),
                S3_PATH,
                StatusCode::NOT_FOUND,
                span,
            )
        })
        .await?;
        check(&g, "the gateway")?;
        let t = handshake_window(pki.path(), &args.common).await?;
        eprintln!(
            "pair {pair}: G {} conns/s, {} us CPU/conn (core 0 {}%) | T {} handshakes/s, server side {} us",
            num(g.per_second(), 0),
            num(g.cpu_us_per_ok(S3_GATEWAY), 0),
            num(100.0 * g.utilisation(S3_GATEWAY), 0),
            num(t.per_second, 0),
            num(t.server_us, 0),
        );
        pairs.push((g, t));
    }
    let threads = thread_times(gateway.process.pid());
    Ok(s3_report(&args, &pairs, &threads))
}

/// Runs T in a child pinned on core 0 (where the gateway sits idle meanwhile).
async fn handshake_window(pki_dir: &Path, common: &Common) -> Result<HandshakeWindow> {
    let me = std::env::current_exe()?;
    let output = tokio::process::Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(me)
        .arg("handshakes")
        .arg("--pki")
        .arg(pki_dir)
        .arg("--warmup")
        .arg(common.warmup.to_string())
        .arg("--measure")
        .arg(common.measure.to_string())
        .kill_on_drop(true)
        .output();
    let bound = Duration::from_secs_f64(common.warmup + common.measure + 30.0);
    let output = tokio::time::timeout(bound, output).await??;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("handshake loop failed: {stderr}").into());
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let field = |name: &str| {
        v[name]
            .as_f64()
            .ok_or_else(|| format!("handshake loop: no {name} in {v}"))
    };
    let (count, wall, server) = (field("count")?, field("wall_s")?, field("server_s")?);
    Ok(HandshakeWindow {
        per_second: count / wall,
        server_us: server * 1e6 / count.max(1.0),
    })
}

fn s3_report(
    args: &S3Args,
    pairs: &[(Measured, HandshakeWindow)],
    threads: &[(String, Duration)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### S3: a new mTLS connection per request, G vs T (in-process rustls handshake loop)\n\n\
         {} pairs (G then T), {} s warm-up + {} s measured each. G: {} loops each opening a TCP + \
         TLS 1.3 connection (client certificate, ECDSA P-256, no resumption) and sending one \
         HTTP/1.1 POST {S3_PATH} (404 from the gateway). T: client and server \
         `rustls` connections in memory on core 0 (both sides' work on one core), same \
         provider, certificates and configs. Cells are median (min – max) over pairs.\n",
        pairs.len(),
        args.common.warmup,
        args.common.measure,
        args.connections,
    );
    let rows = vec![
        vec![
            "conns/s G / handshakes/s T".into(),
            cell(over(pairs, |(g, t)| g.per_second() / t.per_second), 2),
            "≥ 0.5".into(),
        ],
        vec![
            "CPU/conn G / server-side time per handshake in T".into(),
            cell(
                over(pairs, |(g, t)| g.cpu_us_per_ok(S3_GATEWAY) / t.server_us),
                2,
            ),
            "—".into(),
        ],
    ];
    out.push_str(&table(&["ratio", "median (min – max)", "target"], &rows));
    out.push('\n');
    let rows = vec![
        vec![
            "G: connections/s".into(),
            cell(over(pairs, |(g, _)| g.per_second()), 0),
        ],
        vec![
            "G: gateway CPU µs per connection".into(),
            cell(over(pairs, |(g, _)| g.cpu_us_per_ok(S3_GATEWAY)), 0),
        ],
        vec![
            "G: core 0 busy, gateway (%)".into(),
            cell(over(pairs, |(g, _)| 100.0 * g.utilisation(S3_GATEWAY)), 0),
        ],
        vec![
            "G: core 1 busy, load generator (%)".into(),
            cell(over(pairs, |(g, _)| 100.0 * g.utilisation(S3_LOADGEN)), 0),
        ],
        vec![
            "G: connection latency p50 / p99 (µs)".into(),
            format!(
                "{} / {}",
                cell(over(pairs, |(g, _)| g.tally.quantile_us(0.5)), 0),
                cell(over(pairs, |(g, _)| g.tally.quantile_us(0.99)), 0)
            ),
        ],
        vec![
            "G: errors per window".into(),
            cell(over(pairs, |(g, _)| g.tally.errors as f64), 0),
        ],
        vec![
            "G: other processes on the machine (% of a core)".into(),
            cell(over(pairs, |(g, _)| 100.0 * g.others_utilisation()), 0),
        ],
        vec![
            "T: handshakes/s (one core, both sides)".into(),
            cell(over(pairs, |(_, t)| t.per_second), 0),
        ],
        vec![
            "T: server-side µs per handshake".into(),
            cell(over(pairs, |(_, t)| t.server_us), 0),
        ],
    ];
    out.push_str(&table(&["absolute input", "median (min – max)"], &rows));
    out.push('\n');
    let per_pair: Vec<Vec<String>> = pairs
        .iter()
        .enumerate()
        .map(|(i, (g, t))| {
            vec![
                (i + 1).to_string(),
                num(g.per_second(), 0),
                num(g.cpu_us_per_ok(S3_GATEWAY), 0),
                num(100.0 * g.utilisation(S3_GATEWAY), 0),
                num(t.per_second, 0),
                num(t.server_us, 0),
                num(100.0 * g.others_utilisation(), 0),
            ]
        })
        .collect();
    out.push_str("<details><summary>per pair</summary>\n\n");
    out.push_str(&table(
        &[
            "pair",
            "G conns/s",
            "G µs/conn",
            "G core 0 %",
            "T handshakes/s",
            "T server µs",
            "others % (G)",
        ],
        &per_pair,
    ));
    out.push_str("\n</details>\n\n");
    out.push_str(&threads_line(threads));
    out
}
