//! H2: the added latency of a task forwarded between two replicas (caller on B, worker on A)
//! against the same task matched locally (caller and worker on A). Two gateways in this
//! process on one PostgreSQL store, one polling worker on A, one caller making sequential
//! calls over a kept-alive mTLS connection, local and forwarded rounds interleaved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use nexus_gateway::client::{HttpVersions, http_client};
use nexus_gateway::{App, Config};
use nexus_registry::{EndpointSpec, Target};

use crate::{Result, pki};

#[derive(clap::Args)]
pub struct H2Args {
    #[command(flatten)]
    server: crate::scratch_db::Server,
    /// Calls per path (local, forwarded).
    #[arg(long, default_value_t = 4000)]
    calls: usize,
}

pub fn h2(args: H2Args) -> Result<()> {
    crate::scratch_db::with_scratch_db(&args.server, "h2", |url| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(run(url.to_owned(), args.calls))
    })
}

async fn replica(pki_dir: &std::path::Path, data: &std::path::Path, url: &str) -> Result<App> {
    let mut config = Config::new(pki::server_material(pki_dir)?, data.to_path_buf());
    config.listen = "127.0.0.1:0".parse()?;
    config.ops_listen = "127.0.0.1:0".parse()?;
    config.store.url = Some(url.to_owned());
    config.attribution_enabled = true;
    // Rate limits lifted: sequential calls measure latency, not admission.
    let unlimited = nexus_gateway::inbound::Rate::UNLIMITED;
    config.inbound.per_caller = unlimited;
    config.inbound.per_endpoint = unlimited;
    config.inbound.per_caller_endpoint = unlimited;
    Ok(App::build(config).await?)
}

async fn run(url: String, calls: usize) -> Result<()> {
    let pki = pki::BenchPki::create()?;
    let (data_a, data_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = replica(pki.path(), data_a.path(), &url).await?;
    let b = replica(pki.path(), data_b.path(), &url).await?;
    let (port_a, port_b) = (a.data_addr().port(), b.data_addr().port());
    let registry = a.registry();
    tokio::task::spawn_blocking(move || {
        registry.create(EndpointSpec {
            name: "bench".into(),
            description: String::new(),
            target: Target::Worker {
                namespace: pki::HANDLER.into(),
                task_queue: crate::serve::TASK_QUEUE.into(),
            },
            allowed_caller_namespaces: vec![pki::CALLER.into()],
        })
    })
    .await??;
    let stop = tokio_util::sync::CancellationToken::new();
    let (stop_a, stop_b) = (stop.clone(), stop.clone());
    tokio::spawn(a.run(async move { stop_a.cancelled().await }));
    tokio::spawn(b.run(async move { stop_b.cancelled().await }));
    let pki_dir = pki.path().to_path_buf();
    let gateway_a: http::Uri = format!("https://localhost:{port_a}").parse()?;
    tokio::spawn(async move {
        let _ = crate::serve::worker(&pki_dir, gateway_a, 4, Duration::from_secs(600)).await;
    });
    let client = Arc::new(http_client(
        &pki::client_material(pki.path(), &pki::caller())?,
        HttpVersions::Http1Only,
    )?);
    let call = |port: u16| {
        let client = client.clone();
        async move {
            let request = Request::post(format!(
                "https://localhost:{port}/nexus/endpoints/bench/services/s/o"
            ))
            .header("content-type", "application/json")
            .header("request-timeout", "2s")
            .body(Full::new(bytes::Bytes::from_static(b"{\"n\":1}")))
            .expect("request");
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            let ok = status == 200;
            if !ok && std::env::var_os("H2_DEBUG").is_some() {
                eprintln!("{port}: {status} {}", String::from_utf8_lossy(&body));
            }
            Ok::<bool, Box<dyn std::error::Error + Send + Sync>>(ok)
        }
    };
    // Until B knows A's worker (it announces twice a second).
    let ready = Instant::now() + Duration::from_secs(20);
    while !call(port_b).await.unwrap_or(false) {
        if Instant::now() > ready {
            return Err("replica B never forwarded to A's worker".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut local = Histogram::<u64>::new(3)?;
    let mut forwarded = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        call(port_a).await?;
        call(port_b).await?;
    }
    let rounds = calls / 100;
    for _ in 0..rounds {
        for (port, histogram) in [(port_a, &mut local), (port_b, &mut forwarded)] {
            for _ in 0..100 {
                let started = Instant::now();
                if !call(port).await? {
                    return Err("a call failed".into());
                }
                histogram.record(started.elapsed().as_micros() as u64)?;
            }
        }
    }
    stop.cancel();
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    println!(
        "H2 forwarded task vs local match, {} calls each, sequential, one mTLS keep-alive connection:",
        local.len()
    );
    println!(
        "  local (caller and worker on A)      p50 {} µs  p90 {} µs  p99 {} µs",
        q(&local, 0.5),
        q(&local, 0.9),
        q(&local, 0.99)
    );
    println!(
        "  forwarded (caller on B, worker on A) p50 {} µs  p90 {} µs  p99 {} µs",
        q(&forwarded, 0.5),
        q(&forwarded, 0.9),
        q(&forwarded, 0.99)
    );
    println!(
        "  added by forwarding: p50 {} µs",
        q(&forwarded, 0.5).saturating_sub(q(&local, 0.5))
    );
    Ok(())
}
