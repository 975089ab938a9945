//! Flood: namespace `flood` calls in a closed loop on many connections while namespace
//! `caller` calls the same external-target endpoint at a fixed rate; windows alternate
//! without and with the flood. The flood's inbound limit is low
//! (`[inbound.callers."flood"] rate = 500`), so the gateway sheds it with 429.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};

use crate::load::{self, Measured, Tally};
use crate::report::{cell, labelled, num, table};
use crate::scenarios::{
    Common, INPUT, check, create_endpoint_allowing, latency_line, over, probe, quantile_ratio_row,
    spawn_self, start_gateway_with, status_key,
};
use crate::serve::RESULT;
use crate::{Result, pki};

#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: Common,
    /// The victim's requests per second (namespace `caller`, 8 h2 connections).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Flooding connections (namespace `flood`, h2, closed loop).
    #[arg(long, default_value_t = 64)]
    flood_connections: usize,
}

pub async fn flood(args: FloodArgs) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let extra = "[inbound.callers.\"flood\"]\nrate = 500\nburst = 500\n";
    let gateway = start_gateway_with(&args.common.gateway_bin, pki.path(), extra)?;
    let bare = spawn_self("bare", 1, &["serve-bare".as_ref()])?;
    let bare_addr = bare.addr_after("data http://")?;
    let target = serde_json::json!({"external": {"url": format!("http://{bare_addr}")}});
    create_endpoint_allowing(
        pki.path(),
        gateway.addr,
        "ext",
        target,
        &[pki::CALLER, pki::FLOOD],
    )
    .await?;
    let uri: Uri = format!(
        "https://{}/nexus/endpoints/ext/services/svc/op",
        gateway.addr
    )
    .parse()?;
    let victim = pki::client_material(pki.path(), &pki::caller())?;
    let flooder = pki::client_material(pki.path(), &pki::flood())?;
    let vconns = 8;
    let victims = (0..vconns)
        .map(|_| http_client(&victim, HttpVersions::Any))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    let floods = (0..args.flood_connections)
        .map(|_| http_client(&flooder, HttpVersions::Any))
        .collect::<Result<Vec<HttpClient>, _>>()?;
    probe(&victims[0], &uri).await?;
    let pids = [gateway.process.pid(), bare.pid(), std::process::id()];
    let gap = Duration::from_secs_f64(vconns as f64 / args.rate);
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut pairs: Vec<(Measured, Measured)> = Vec::new();
    for pair in 1..=args.common.pairs {
        let mut both = Vec::new();
        for with_flood in [false, true] {
            let n = vconns + if with_flood { floods.len() } else { 0 };
            let m = load::measure(args.common.window(), &pids, n, |i, span| {
                let uri = uri.clone();
                let statuses = statuses.clone();
                let victim = (i < vconns).then(|| victims[i].clone());
                let flood = (i >= vconns).then(|| floods[i - vconns].clone());
                let offset = gap.mul_f64(i as f64 / vconns as f64);
                async move {
                    if let Some(client) = victim {
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
                    let client = flood.expect("flood client");
                    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                    for _ in 0..100_000_000u64 {
                        if tokio::time::Instant::now() >= span.end {
                            break;
                        }
                        let request = Request::post(uri.clone())
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from_static(INPUT)))
                            .expect("valid request");
                        let key = status_key(&client, request, Duration::from_secs(10)).await;
                        *seen.entry(key).or_default() += 1;
                    }
                    let mut all = statuses.lock().expect("lock");
                    for (k, v) in seen {
                        *all.entry(k).or_default() += v;
                    }
                    Tally::new()
                }
            })
            .await?;
            check(&m, "the victim namespace")?;
            both.push(m);
        }
        let f = both.pop().expect("two");
        let q = both.pop().expect("two");
        eprintln!(
            "pair {pair}: quiet {} | flood {}",
            latency_line(&q),
            latency_line(&f)
        );
        pairs.push((q, f));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Flood: namespace `flood` (closed loop, {} h2 connections, inbound limit 500/s) vs \
         namespace `caller` at {} req/s (8 h2 connections, fixed schedule), same external-target \
         endpoint\n\n{} pairs (quiet window, then flood window), {} s warm-up + {} s measured each. \
         Cells: median (min – max).\n",
        args.flood_connections,
        num(args.rate, 0),
        pairs.len(),
        args.common.warmup,
        args.common.measure,
    );
    let rows = vec![
        quantile_ratio_row("victim p99, flood / quiet", &pairs, 0.99, "≤ 1.2"),
        quantile_ratio_row("victim p50, flood / quiet", &pairs, 0.5, "—"),
    ];
    out.push_str(&table(&["ratio", "median (min – max)", "target"], &rows));
    out.push('\n');
    let col = |f: &dyn Fn(&Measured) -> f64, d: usize| {
        vec![
            cell(over(&pairs, |(q, _)| f(q)), d),
            cell(over(&pairs, |(_, x)| f(x)), d),
        ]
    };
    let rows = labelled([
        ("victim p50 (µs)", col(&|m| m.tally.quantile_us(0.5), 0)),
        ("victim p99 (µs)", col(&|m| m.tally.quantile_us(0.99), 0)),
        ("victim req/s", col(&|m| m.per_second(), 0)),
        (
            "victim errors per window",
            col(&|m| m.tally.errors as f64, 0),
        ),
        (
            "gateway core 0 busy (%)",
            col(&|m| 100.0 * m.utilisation(0), 0),
        ),
        (
            "core 1: load generator + B (%)",
            col(&|m| 100.0 * (m.utilisation(1) + m.utilisation(2)), 0),
        ),
        (
            "other processes (% of a core)",
            col(&|m| 100.0 * m.others_utilisation(), 0),
        ),
    ]);
    out.push_str(&table(&["absolute input", "quiet", "flood"], &rows));
    let st = statuses.lock().expect("lock");
    let listed: Vec<String> = st.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(
        out,
        "\nFlood answers over all flood windows (warm-up included): {}\n",
        listed.join(", ")
    );
    drop(bare);
    Ok(out)
}
