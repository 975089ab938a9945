//! H4: what a completion's intake waits for, embedded vs PostgreSQL: the durable
//! accept-once write (`push_once`: the token's key and the entry, in one commit) that comes
//! before the 200. Everything else on the intake path is the same code for both stores.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nexus_outbound_queue::{DurableSpool, PgSpool, Spool};

use crate::Result;

#[derive(clap::Args)]
pub struct H4Args {
    #[command(flatten)]
    server: crate::scratch_db::Server,
    /// Completions per store.
    #[arg(long, default_value_t = 2000)]
    completions: usize,
    /// Size of each completion (a result's bytes and the delivery's headers).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
}

pub fn h4(args: H4Args) -> Result<()> {
    crate::scratch_db::with_scratch_db(&args.server, "h4", |url| {
        run(url, args.completions, args.payload_bytes)
    })
}

fn run(url: &str, n: usize, payload_bytes: usize) -> Result<()> {
    let settings = nexus_registry::pg::PgSettings::new(url);
    nexus_registry::pg::migrate(&settings)?;
    let pg = PgSpool::new(
        Box::new(move || settings.connect().map_err(|e| e.to_string())),
        "bench".into(),
        Duration::from_secs(15),
    );
    let dir = tempfile::tempdir()?;
    let redb = Spool::open(&dir.path().join("callbacks.redb"))?;
    let payload = vec![7u8; payload_bytes];
    let mut results = Vec::new();
    for (label, spool) in [
        (
            "embedded (redb, fsync per commit)",
            &redb as &dyn DurableSpool,
        ),
        ("PostgreSQL (loopback, synchronous_commit on)", &pg),
    ] {
        let mut h = Histogram::<u64>::new(3)?;
        for i in 0..n + 100 {
            let key = format!("{label}-{i}");
            let started = Instant::now();
            spool.push_once(key.as_bytes(), &payload, 1, u64::MAX / 2, None)?;
            if i >= 100 {
                h.record(started.elapsed().as_micros() as u64)?;
            }
        }
        results.push((label, h));
    }
    println!(
        "H4 completion intake's durable write (push_once, {payload_bytes} B), {n} sequential each:"
    );
    for (label, h) in &results {
        println!(
            "  {label:46} p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99)
        );
    }
    Ok(())
}
