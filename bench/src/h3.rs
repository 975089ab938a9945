//! H3: how fast an endpoint written through one replica is routable on another, over a shared
//! PostgreSQL store (NOTIFY, then a refresh of the other replica's snapshot), at a steady rate
//! of admin writes. Two registries in this process, each on its own connections, as two
//! replicas are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nexus_registry::pg::{PgSettings, PgStore, listen};
use nexus_registry::{EndpointSpec, Registry, Target};

use crate::Result;

#[derive(clap::Args)]
pub struct H3Args {
    #[command(flatten)]
    server: crate::scratch_db::Server,
    /// Admin writes per second through replica A.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to write.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

pub fn h3(args: H3Args) -> Result<()> {
    crate::scratch_db::with_scratch_db(&args.server, "h3", |url| run(url, &args))
}

fn run(url: &str, args: &H3Args) -> Result<()> {
    let settings = PgSettings::new(url);
    let a = Registry::new(PgStore::open(settings.clone())?)?;
    let b = Arc::new(Registry::new(PgStore::open(settings.clone())?)?);
    // Written through A, not yet seen on B: name → when A's write returned.
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let stop = Arc::new(AtomicBool::new(false));
    let listening = Arc::new(AtomicBool::new(false));
    let listener = {
        let (b, pending, latencies, stop, listening) = (
            b.clone(),
            pending.clone(),
            latencies.clone(),
            stop.clone(),
            listening.clone(),
        );
        std::thread::spawn(move || {
            listen(
                &settings,
                Duration::from_millis(100),
                || stop.load(Ordering::SeqCst),
                |_| {
                    listening.store(true, Ordering::SeqCst);
                    let _ = b.refresh();
                    let now = Instant::now();
                    let mut pending = pending.lock().unwrap();
                    pending.retain(|name, written| {
                        if b.resolve(name).is_none() {
                            return true;
                        }
                        let us = now.saturating_duration_since(*written).as_micros() as u64;
                        latencies.lock().unwrap().record(us.max(1)).ok();
                        false
                    });
                },
            )
        })
    };
    while !listening.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let count = (args.rate * args.seconds) as usize;
    let mut writes = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let name = format!("endpoint-{i:06}");
        let began = Instant::now();
        // Registered before the write: B may see it before A's call returns.
        pending.lock().unwrap().insert(name.clone(), Instant::now());
        a.create(EndpointSpec {
            name: name.clone(),
            description: String::new(),
            target: Target::Worker {
                namespace: "billing".into(),
                task_queue: "charges".into(),
            },
            allowed_caller_namespaces: vec!["orders".into()],
        })?;
        writes.record(began.elapsed().as_micros() as u64)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    listener.join().ok();
    let missed = pending.lock().unwrap().len();
    let seen = latencies.lock().unwrap();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "H3 registry propagation over PostgreSQL: {count} writes at {} /s through replica A",
        args.rate
    );
    println!(
        "  write (A, commit incl.)   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(&writes, 0.5),
        ms(&writes, 0.99),
        writes.max() as f64 / 1000.0
    );
    println!(
        "  visible on B after write  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} seen, {missed} not seen within 10 s)",
        ms(&seen, 0.5),
        ms(&seen, 0.9),
        ms(&seen, 0.99),
        seen.max() as f64 / 1000.0,
        seen.len()
    );
    Ok(())
}
