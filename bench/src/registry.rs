//! S6: registry lookups at 10,000 vs 10 endpoints, in process (`nexus_registry::Registry` on
//! a store that only loads a prepared table), the duration of one update at each size (the
//! gateway's admin PUT runs it on a blocking thread, on the same core as the request path),
//! the worst lookup seen while 100 updates/s run on another thread, and the gateway's start-up
//! time with a data dir of 10,000 vs 10 endpoints. `--e2e` measures the stall requirement end
//! to end instead, through the real gateway ([`crate::registry_e2e`]); `--e2e-throughput` the
//! throughput requirement ([`crate::registry_throughput`]).

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_registry::{
    Endpoint, EndpointSpec, RedbStore, Registry, RegistryError, Store, Target, url_prefix,
};

use crate::procs::Pinned;
use crate::report::{cell, num, summarize, table};
use crate::{Result, pki, registry_e2e, registry_throughput};

#[derive(clap::Args, Debug)]
pub struct S6Args {
    /// Pairs (10,000 then 10 endpoints).
    #[arg(long, default_value_t = 7)]
    pairs: usize,
    /// Lookups per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    lookups: u64,
    /// Seconds of 100 updates/s while a reader thread looks up.
    #[arg(long, default_value_t = 3.0)]
    update_secs: f64,
    /// The release gateway binary (start-up time); empty: skip.
    #[arg(long, default_value = "target/release/nexus-gateway")]
    pub gateway_bin: std::path::PathBuf,
    #[command(flatten)]
    end_to_end: registry_e2e::E2eArgs,
}

/// Prepared endpoint `i`: the same for every call, so the end-to-end run knows the ids and specs
/// that [`data_dir`] stored.
pub(crate) fn endpoint(i: usize) -> Endpoint {
    // Ids shaped like the gateway's (UUID v4 text), deterministic.
    let h = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1;
    let hex = format!("{h:032x}");
    let id = format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    );
    Endpoint {
        url_prefix: url_prefix(&id),
        id,
        version: 1,
        created_time: "2026-01-01T00:00:00.000Z".into(),
        last_modified_time: "2026-01-01T00:00:00.000Z".into(),
        spec: EndpointSpec {
            name: format!("endpoint-{i:05}"),
            description: String::new(),
            target: Target::Worker {
                namespace: "handler".into(),
                task_queue: format!("tq-{i}"),
            },
            allowed_caller_namespaces: vec!["caller".into()],
        },
    }
}

/// A store that loads a prepared table and accepts every write (no IO).
struct Prepared(Vec<Endpoint>, std::sync::atomic::AtomicU64);

impl Store for Prepared {
    fn load(&self) -> Result<(u64, Vec<Endpoint>), RegistryError> {
        Ok((1, self.0.clone()))
    }
    fn put(&self, _: &Endpoint, _: Option<u64>) -> Result<u64, RegistryError> {
        Ok(self.1.fetch_add(1, Ordering::Relaxed) + 2)
    }
    fn delete(&self, _: &str, _: u64) -> Result<u64, RegistryError> {
        Ok(self.1.fetch_add(1, Ordering::Relaxed) + 2)
    }
    fn load_clusters(&self) -> Result<Vec<nexus_registry::Cluster>, RegistryError> {
        Ok(Vec::new())
    }
    fn put_cluster(
        &self,
        _: &nexus_registry::Cluster,
        _: Option<u64>,
    ) -> Result<(), RegistryError> {
        Ok(())
    }
    fn delete_cluster(&self, _: &str, _: u64) -> Result<(), RegistryError> {
        Ok(())
    }
}

fn registry(n: usize) -> Result<(Registry, Vec<Endpoint>)> {
    let all: Vec<Endpoint> = (0..n).map(endpoint).collect();
    let r = Registry::new(Prepared(all.clone(), 0.into()))?;
    Ok((r, all))
}

/// The looked-up keys, back to back in one buffer: a gateway looks up a key it has just read
/// from the request, in cache, so the keys' own storage should not add misses of its own.
struct Keys {
    text: String,
    spans: Vec<(usize, usize)>,
}

impl Keys {
    fn get(&self, i: usize) -> &str {
        let (start, end) = self.spans[i];
        &self.text[start..end]
    }
}

/// ns per resolve over `lookups`, cycling through 4,096 keys picked across the table.
fn lookup_ns(r: &Registry, keys: &Keys, lookups: u64) -> f64 {
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..lookups {
        let key = keys.get((i as usize) & (keys.spans.len() - 1));
        found += u64::from(black_box(r.resolve(black_box(key))).is_some());
    }
    let ns = started.elapsed().as_nanos() as f64 / lookups as f64;
    assert_eq!(found, lookups, "every key resolves");
    ns
}

/// Which endpoints the 4,096 looked-up keys name.
#[derive(Clone, Copy)]
enum KeySet {
    /// Spread over the whole table: the working set grows with the table.
    Spread,
    /// Ten endpoints spread over the table, repeated: the same working set at every size, so
    /// only the table's own size differs.
    Hot10,
}

fn keys(all: &[Endpoint], by_name: bool, set: KeySet) -> Keys {
    let mut keys = Keys {
        text: String::new(),
        spans: Vec::with_capacity(4096),
    };
    for i in 0..4096usize {
        let at = match set {
            KeySet::Spread => i.wrapping_mul(7919) % all.len(),
            KeySet::Hot10 => (i % 10) * (all.len() / 10),
        };
        let e = &all[at];
        let start = keys.text.len();
        keys.text
            .push_str(if by_name { &e.spec.name } else { &e.id });
        keys.spans.push((start, keys.text.len()));
    }
    keys
}

/// Durations of `count` updates of one endpoint (µs): snapshot copy + publish.
fn update_us(r: &Registry, all: &[Endpoint], count: usize) -> Result<Vec<f64>> {
    let e = &all[all.len() / 2];
    let mut version = r.get(&e.id)?.version;
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let mut spec = e.spec.clone();
        spec.description = format!("update {k}");
        let t = Instant::now();
        version = r.update(&e.id, version, spec)?.version;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Worst single lookup (µs) on a reader thread over `secs`, with or without 100 updates/s on
/// this thread.
fn worst_lookup(
    r: Arc<Registry>,
    all: &[Endpoint],
    secs: f64,
    updates: bool,
) -> Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let keys = keys(all, true, KeySet::Spread);
    let reader = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 2_000_000_000 {
                let key = keys.get((n as usize) & 4095);
                let t = Instant::now();
                black_box(r.resolve(key));
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (worst, n)
        })
    };
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let e = &all[all.len() / 2];
    let mut version = r.get(&e.id)?.version;
    let mut k = 0;
    while Instant::now() < end {
        if updates {
            let mut spec = e.spec.clone();
            spec.description = format!("update {k}");
            version = r.update(&e.id, version, spec)?.version;
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let (worst, n) = reader.join().map_err(|_| "reader panicked")?;
    Ok((worst.as_secs_f64() * 1e6, n))
}

/// Seconds from spawning the gateway to its `data https://` line, with a data dir holding
/// `n` endpoints.
fn startup(bin: &Path, pki_dir: &Path, data: &Path) -> Result<f64> {
    let files = pki::server_files(pki_dir)?;
    let config = data.join("bench.toml");
    std::fs::write(&config, crate::scenarios::GATEWAY_CONFIG)?;
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--ops-listen".into(),
        "127.0.0.1:0".into(),
        "--config".into(),
        config.into(),
        "--data-dir".into(),
        data.join("data").into(),
        "--tls-ca".into(),
        files.ca.into(),
        "--tls-cert".into(),
        files.cert.into(),
        "--tls-key".into(),
        files.key.into(),
    ];
    let t = Instant::now();
    let p = Pinned::spawn(
        "gateway",
        0,
        bin.as_os_str(),
        args,
        &[("TOKIO_WORKER_THREADS", "1")],
    )?;
    p.data_addr()?;
    Ok(t.elapsed().as_secs_f64())
}

/// A temporary directory whose `data/registry.redb` holds endpoints `0..n`.
pub(crate) fn data_dir(n: usize) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("data"))?;
    let store = RedbStore::open(&dir.path().join("data").join("registry.redb"))?;
    for i in 0..n {
        store.put(&endpoint(i), None)?;
    }
    Ok(dir)
}

pub fn s6(args: S6Args) -> Result<String> {
    if args.end_to_end.e2e {
        return registry_e2e::run(&args.end_to_end, args.pairs, &args.gateway_bin);
    }
    if args.end_to_end.e2e_throughput {
        return registry_throughput::run(&args.end_to_end, args.pairs, &args.gateway_bin);
    }
    let (big, big_all) = registry(10_000)?;
    let (small, small_all) = registry(10)?;
    // (by name, key set) → per-pair (ns at 10,000, ns at 10).
    let cases = [
        (true, KeySet::Spread),
        (false, KeySet::Spread),
        (true, KeySet::Hot10),
        (false, KeySet::Hot10),
    ];
    let mut measured: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    for pair in 1..=args.pairs {
        for (case, &(by_name, set)) in cases.iter().enumerate() {
            let b = lookup_ns(&big, &keys(&big_all, by_name, set), args.lookups);
            let s = lookup_ns(&small, &keys(&small_all, by_name, set), args.lookups);
            measured[case].push((b, s));
        }
        let ns: Vec<String> = measured
            .iter()
            .map(|m| format!("{:.1}/{:.1}", m[pair - 1].0, m[pair - 1].1))
            .collect();
        eprintln!("pair {pair}: by name, by id (spread; hot 10) ns 10,000/10: {ns:?}");
    }
    let [rows_name, rows_id, hot_name, hot_id] = measured.try_into().expect("four cases");
    let big_updates = update_us(&big, &big_all, 200)?;
    let small_updates = update_us(&small, &small_all, 200)?;
    let big = Arc::new(big);
    let (quiet_worst, quiet_n) = worst_lookup(big.clone(), &big_all, args.update_secs, false)?;
    let (busy_worst, busy_n) = worst_lookup(big.clone(), &big_all, args.update_secs, true)?;
    eprintln!("worst lookup: quiet {quiet_worst:.1} us, with updates {busy_worst:.1} us");

    let mut starts = Vec::new();
    if args.gateway_bin.is_file() {
        let pki = pki::BenchPki::create()?;
        let t = Instant::now();
        let big_dir = data_dir(10_000)?;
        let fill = t.elapsed().as_secs_f64();
        let small_dir = data_dir(10)?;
        eprintln!("filled a 10,000-endpoint registry.redb in {fill:.1} s");
        for pair in 1..=args.pairs {
            let b = startup(&args.gateway_bin, pki.path(), big_dir.path())?;
            let s = startup(&args.gateway_bin, pki.path(), small_dir.path())?;
            eprintln!("start-up pair {pair}: 10,000 {b:.3} s / 10 {s:.3} s");
            starts.push((b, s));
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### S6: registry at 10,000 vs 10 endpoints\n\n\
         In process: `Registry::resolve` through a store that only loads a prepared table; {} \
         pairs (10,000 then 10), {} lookups each, cycling over 4,096 keys spread over the table \
         (and, to separate the table's size from the working set's, over 10 endpoints). \
         Cells: median (min – max).\n",
        args.pairs, args.lookups
    );
    let pairs_summary = |v: &[(f64, f64)], f: &dyn Fn(&(f64, f64)) -> f64| {
        summarize(&v.iter().map(f).collect::<Vec<_>>())
    };
    let lookup_rows = [
        ("resolve by name", &rows_name, "≤ 1.3 and < 150 ns"),
        ("resolve by id", &rows_id, "≤ 1.3 and < 150 ns"),
        ("same 10 hot endpoints, by name", &hot_name, "—"),
        ("same 10 hot endpoints, by id", &hot_id, "—"),
    ];
    let rows: Vec<Vec<String>> = lookup_rows
        .into_iter()
        .map(|(label, ns, target)| {
            vec![
                format!("{label}: ns at 10,000 / at 10"),
                cell(pairs_summary(ns, &|p| p.0 / p.1), 2),
                cell(pairs_summary(ns, &|p| p.0), 1),
                cell(pairs_summary(ns, &|p| p.1), 1),
                target.into(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ratio",
            "median (min – max)",
            "ns at 10,000",
            "ns at 10",
            "target",
        ],
        &rows,
    ));
    out.push('\n');
    let q = |v: &[f64], p: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    };
    let rows = vec![
        vec![
            "one `Registry::update` (µs), p50 / max of 200".into(),
            format!(
                "{} / {}",
                num(q(&big_updates, 0.5), 0),
                num(q(&big_updates, 1.0), 0)
            ),
            format!(
                "{} / {}",
                num(q(&small_updates, 0.5), 1),
                num(q(&small_updates, 1.0), 1)
            ),
        ],
        vec![
            format!(
                "worst single lookup on a reader thread over {} s (µs): quiet / with 100 updates/s",
                args.update_secs
            ),
            format!("{} / {}", num(quiet_worst, 1), num(busy_worst, 1)),
            "—".into(),
        ],
        vec![
            "lookups done by the reader: quiet / with updates".into(),
            format!("{} / {}", num(quiet_n as f64, 0), num(busy_n as f64, 0)),
            "—".into(),
        ],
    ];
    out.push_str(&table(&["", "10,000 endpoints", "10 endpoints"], &rows));
    out.push('\n');
    if !starts.is_empty() {
        let rows = vec![vec![
            "gateway start-up, spawn → `data https://` line (s)".into(),
            cell(pairs_summary(&starts, &|p| p.0), 3),
            cell(pairs_summary(&starts, &|p| p.1), 3),
            cell(pairs_summary(&starts, &|p| p.0 / p.1), 2),
            "< 1 s".into(),
        ]];
        out.push_str(&table(
            &["", "10,000 endpoints", "10 endpoints", "ratio", "target"],
            &rows,
        ));
        out.push('\n');
    }
    Ok(out)
}
