//! S4: 9 healthy external destinations (bare handlers B, one process each, core 1) at a fixed
//! rate, plus (in the "stalled" windows) a 10th destination that accepts and never answers,
//! offered as much load as all healthy ones together, with `Request-Timeout: 2s`. Windows
//! alternate clean, stalled. Healthy latency, healthy errors, the gateway's RSS, and the
//! largest `nexus_gateway_lane_in_flight` seen for the stalled destination on the ops port.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::{self, Measured, Tally};
use crate::report::{cell, num, table};
use crate::scenarios::{
    Common, INPUT, check, create_endpoint_with, latency_line, over, probe, quantile_ratio_row,
    spawn_self, start_gateway_with, status_key,
};
use crate::serve::RESULT;
use crate::{Result, pki};

const HEALTHY: usize = 9;

#[derive(clap::Args, Debug)]
pub struct S4Args {
    #[command(flatten)]
    pub common: Common,
    /// Healthy requests per second, all destinations together.
    #[arg(long, default_value_t = 900.0)]
    rate: f64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The largest `nexus_gateway_lane_in_flight` sample whose labels mention `needle`.
async fn lane_in_flight(ops: SocketAddr, needle: &str) -> Option<f64> {
    let mut tcp = tokio::net::TcpStream::connect(ops).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with("nexus_gateway_lane_in_flight") && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

pub async fn s4(args: S4Args) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let gateway = start_gateway_with(&args.common.gateway_bin, pki.path(), "")?;
    let ops = gateway.ops;
    let mut bares = Vec::new();
    let mut uris = Vec::new();
    for i in 0..HEALTHY {
        let b = spawn_self("bare", 1, &["serve-bare".as_ref()])?;
        let addr = b.addr_after("data http://")?;
        let name = format!("h{i}");
        let target = serde_json::json!({"external": {"url": format!("http://{addr}")}});
        create_endpoint_with(pki.path(), gateway.addr, &name, target).await?;
        uris.push(
            format!(
                "https://{}/nexus/endpoints/{name}/services/svc/op",
                gateway.addr
            )
            .parse::<Uri>()?,
        );
        bares.push(b);
    }
    // The stalled destination: accepts and holds every connection (bounded count).
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stalled_addr = stalled.local_addr()?;
    let held = Arc::new(AtomicU64::new(0));
    let held2 = held.clone();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while keep.len() < 20_000 {
            let Ok((tcp, _)) = stalled.accept().await else {
                continue;
            };
            keep.push(tcp);
            held2.store(keep.len() as u64, Ordering::Relaxed);
        }
    });
    let target = serde_json::json!({"external": {"url": format!("http://{stalled_addr}")}});
    create_endpoint_with(pki.path(), gateway.addr, "stalled", target).await?;
    let stalled_uri: Uri = format!(
        "https://{}/nexus/endpoints/stalled/services/svc/op",
        gateway.addr
    )
    .parse()?;

    let caller = pki::client_material(pki.path(), &pki::caller())?;
    let conns = HEALTHY * 2;
    let clients = (0..conns)
        .map(|_| http_client(&caller, HttpVersions::Any))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    let stall_clients = (0..8)
        .map(|_| http_client(&caller, HttpVersions::Any))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    for u in &uris {
        probe(&clients[0], u).await?;
    }
    let pids = [gateway.process.pid(), std::process::id()];
    let rss_start = rss_kb(pids[0]);
    let gap = Duration::from_secs_f64(conns as f64 / args.rate);
    let stall_gap = Duration::from_secs_f64(stall_clients.len() as f64 / args.rate);
    let statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let mut max_in_flight = 0.0f64;
    let mut pairs: Vec<(Measured, Measured)> = Vec::new();
    let needle = format!("{}", stalled_addr.port());
    for pair in 1..=args.common.pairs {
        let mut both = Vec::new();
        for with_stall in [false, true] {
            let stop = Arc::new(tokio::sync::Notify::new());
            let sampler = {
                let (stop, needle) = (stop.clone(), needle.clone());
                tokio::spawn(async move {
                    let mut worst = 0.0f64;
                    for _ in 0..10_000 {
                        if let Some(v) = lane_in_flight(ops, &needle).await {
                            worst = worst.max(v);
                        }
                        tokio::select! {
                            () = stop.notified() => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                    worst
                })
            };
            let n = conns + if with_stall { stall_clients.len() } else { 0 };
            let m = load::measure(args.common.window(), &pids, n, |i, span| {
                let statuses = statuses.clone();
                let (healthy, stall) = if i < conns {
                    (Some((clients[i].clone(), uris[i % HEALTHY].clone())), None)
                } else {
                    (None, Some(stall_clients[i - conns].clone()))
                };
                let stalled_uri = stalled_uri.clone();
                let offset = gap.mul_f64(i as f64 / n as f64);
                async move {
                    if let Some((client, uri)) = healthy {
                        return load::keep_alive_loop(
                            client,
                            uri,
                            Bytes::from_static(INPUT),
                            RESULT.len(),
                            span,
                            Some((gap, offset)),
                        )
                        .await;
                    }
                    let client = stall.expect("stall client");
                    let mut next = tokio::time::Instant::now() + offset;
                    for _ in 0..10_000_000u64 {
                        if next >= span.end {
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        next += stall_gap;
                        let request = Request::post(stalled_uri.clone())
                            .header(header::CONTENT_TYPE, "application/json")
                            .header("Request-Timeout", "2s")
                            .body(Full::new(Bytes::from_static(INPUT)))
                            .expect("valid request");
                        let (client, statuses) = (client.clone(), statuses.clone());
                        tokio::spawn(async move {
                            let key = status_key(&client, request, Duration::from_secs(5)).await;
                            *statuses.lock().expect("lock").entry(key).or_default() += 1;
                        });
                    }
                    Tally::new()
                }
            })
            .await?;
            stop.notify_one();
            let worst = sampler.await.unwrap_or(0.0);
            if with_stall {
                max_in_flight = max_in_flight.max(worst);
            }
            check(&m, "healthy destinations")?;
            both.push(m);
        }
        let s = both.pop().expect("two");
        let c = both.pop().expect("two");
        eprintln!(
            "pair {pair}: clean {} | stalled {} | RSS {} kB, in-flight max {}",
            latency_line(&c),
            latency_line(&s),
            rss_kb(pids[0]),
            max_in_flight,
        );
        pairs.push((c, s));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss_end = rss_kb(pids[0]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### S4: 9 healthy external destinations at {} req/s, plus one stalled destination \
         taking as much again\n\n{} pairs (clean window, then stalled window), {} s warm-up + {} s \
         measured each; healthy: {conns} h2 connections on a fixed schedule; stalled: open loop \
         at {} req/s over 8 h2 connections, `Request-Timeout: 2s`. Gateway defaults for outbound \
         lanes except rate_per_second (raised). Cells: median (min – max).\n",
        num(args.rate, 0),
        pairs.len(),
        args.common.warmup,
        args.common.measure,
        num(args.rate, 0),
    );
    let rows = vec![
        quantile_ratio_row("healthy p99, stalled / clean", &pairs, 0.99, "≤ 1.2"),
        quantile_ratio_row("healthy p50, stalled / clean", &pairs, 0.5, "≤ 1.1"),
        vec![
            "healthy errors per window, clean / stalled".into(),
            format!(
                "{} / {}",
                cell(over(&pairs, |(c, _)| c.tally.errors as f64), 0),
                cell(over(&pairs, |(_, s)| s.tally.errors as f64), 0)
            ),
            "0".into(),
        ],
        vec![
            "max lane in-flight to the stalled destination (ops /metrics, every 100 ms)".into(),
            num(max_in_flight, 0),
            "≤ cap (outbound concurrency 100)".into(),
        ],
        vec![
            "gateway RSS growth over the run (kB)".into(),
            format!(
                "{} ({} → {})",
                num(rss_end as f64 - rss_start as f64, 0),
                num(rss_start as f64, 0),
                num(rss_end as f64, 0)
            ),
            "< 10,240".into(),
        ],
    ];
    out.push_str(&table(&["measure", "median (min – max)", "target"], &rows));
    out.push('\n');
    let rows = vec![
        vec![
            "healthy p50 (µs)".into(),
            cell(over(&pairs, |(c, _)| c.tally.quantile_us(0.5)), 0),
            cell(over(&pairs, |(_, s)| s.tally.quantile_us(0.5)), 0),
        ],
        vec![
            "healthy p99 (µs)".into(),
            cell(over(&pairs, |(c, _)| c.tally.quantile_us(0.99)), 0),
            cell(over(&pairs, |(_, s)| s.tally.quantile_us(0.99)), 0),
        ],
        vec![
            "healthy req/s".into(),
            cell(over(&pairs, |(c, _)| c.per_second()), 0),
            cell(over(&pairs, |(_, s)| s.per_second()), 0),
        ],
        vec![
            "gateway core 0 busy (%)".into(),
            cell(over(&pairs, |(c, _)| 100.0 * c.utilisation(0)), 0),
            cell(over(&pairs, |(_, s)| 100.0 * s.utilisation(0)), 0),
        ],
        vec![
            "other processes (% of a core)".into(),
            cell(over(&pairs, |(c, _)| 100.0 * c.others_utilisation()), 0),
            cell(over(&pairs, |(_, s)| 100.0 * s.others_utilisation()), 0),
        ],
    ];
    out.push_str(&table(&["absolute input", "clean", "stalled"], &rows));
    let st = statuses.lock().expect("lock");
    let listed: Vec<String> = st.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(
        out,
        "\nStalled calls' answers over the run: {}; connections the stalled destination \
         accepted: {}\n",
        listed.join(", "),
        held.load(Ordering::Relaxed)
    );
    drop(bares);
    Ok(out)
}
