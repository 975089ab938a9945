//! S6 end-to-end throughput (`nexus-bench s6 --e2e-throughput`): does a registry of 10,000
//! endpoints cost the request path anything a registry of 10 does not? The requirement is a
//! throughput ratio 10,000 / 10 of at least 0.97.
//!
//! The same release gateway runs twice on core 0 (one worker thread each), on a data dir
//! prepared with 10,000 endpoints and on one prepared with 10, each plus the endpoint `ext`
//! whose external target is the bare handler B (core 1), as in [`crate::registry_e2e`]. Windows
//! alternate (10,000, then 10) with `ext`'s closed-loop load: h2 caller connections with mTLS,
//! one request in flight on each. Both gateways stay up for the whole run and only the one
//! being measured gets load: a restart per window would put a cold process (new connections
//! and handshakes, an allocator still growing, the registry just loaded) into every window,
//! while two warm processes differ only in their registries. The idle one's CPU is reported,
//! as it shares core 0.

use std::fmt::Write;
use std::path::Path;

use http::Uri;
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};

use crate::ext::{self, Candidate, EXT_PATH};
use crate::load::Measured;
use crate::registry::data_dir;
use crate::registry_e2e::{E2eArgs, gateway_to_bare, on_one_thread};
use crate::report::{cell, num, table};
use crate::scenarios::{over, spawn_self};
use crate::{Result, pki};

/// Endpoints prepared in each gateway's data dir, in window order.
const SIZES: [usize; 2] = [10_000, 10];

pub fn run(args: &E2eArgs, pairs: usize, gateway_bin: &Path) -> Result<String> {
    if args.connections() == 0 {
        return Err("--connections must be positive".into());
    }
    on_one_thread(throughput(args, pairs, gateway_bin))
}

async fn throughput(args: &E2eArgs, pairs: usize, gateway_bin: &Path) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let bare = spawn_self("bare", 1, &["serve-bare".as_ref()])?;
    let bare_addr = bare.addr_after("data http://")?;
    let caller = pki::client_material(pki.path(), &pki::caller())?;
    let mut gateways = Vec::new();
    let mut candidates = Vec::new();
    let mut pids = Vec::new();
    for n in SIZES {
        let g = gateway_to_bare(gateway_bin, pki.path(), data_dir(n)?, bare_addr).await?;
        let uri: Uri = format!("https://{}{EXT_PATH}", g.addr).parse()?;
        pids.push(g.process.pid());
        candidates.push(Candidate {
            label: format!("{} endpoints", num(n as f64, 0)),
            uri,
            clients: (0..args.connections())
                .map(|_| http_client(&caller, HttpVersions::Any))
                .collect::<Result<Vec<HttpClient>, _>>()?,
            pid: pids.len() - 1,
        });
        gateways.push(g);
    }
    pids.push(bare.pid());
    pids.push(std::process::id());
    let bare_i = pids.len() - 2;
    let rounds = ext::rounds(args.window(), pairs, &pids, &candidates).await?;
    drop(gateways);
    Ok(report(args, &candidates, &rounds, bare_i))
}

fn report(args: &E2eArgs, cands: &[Candidate], rounds: &[Vec<Measured>], bare: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### S6 end to end: gateway throughput at 10,000 vs 10 endpoints\n\n\
         The release gateway twice on core 0 (one worker thread each, both up for the whole \
         run, only the measured one loaded), on data dirs prepared with 10,000 and with 10 \
         endpoints, each plus one external-target endpoint to B (core 1). {} pairs (10,000 \
         window, then 10), {} s warm-up + {} s measured each; {} caller connections (h2, mTLS), \
         closed loop, one request in flight on each. Ratios per pair; cells median (min – max).\n",
        rounds.len(),
        args.warmup,
        args.measure(),
        args.connections(),
    );
    let ratio = |f: &dyn Fn(&Measured, usize) -> f64| {
        over(rounds, |r| f(&r[0], cands[0].pid) / f(&r[1], cands[1].pid))
    };
    let rows = vec![
        vec![
            "throughput, 10,000 / 10 endpoints".into(),
            cell(ratio(&|m, _| m.per_second()), 3),
            "≥ 0.97".into(),
        ],
        vec![
            "gateway CPU µs/req, 10,000 / 10 endpoints".into(),
            cell(ratio(&|m, p| m.cpu_us_per_ok(p)), 3),
            "—".into(),
        ],
    ];
    out.push_str(&table(&["ratio", "median (min – max)", "target"], &rows));
    out.push('\n');
    let mut header = vec!["absolute input"];
    header.extend(cands.iter().map(|c| c.label.as_str()));
    let mut rows = ext::absolute_rows(cands, rounds, bare);
    // The gateways are the first two processes: the other one sits idle on core 0.
    let idle = |m: &Measured, p: usize| 100.0 * m.utilisation(1 - p);
    let steal = |m: &Measured, _: usize| 100.0 * m.steal_utilisation();
    for (name, f) in [
        (
            "core 0, the idle gateway (%)",
            &idle as &dyn Fn(&Measured, usize) -> f64,
        ),
        ("steal (% of a core)", &steal),
    ] {
        let cells = ext::per_candidate(cands, rounds, f, 0);
        rows.push([vec![name.to_owned()], cells].concat());
    }
    out.push_str(&table(&header, &rows));
    out.push('\n');
    out.push_str(&ext::per_round_table(cands, rounds));
    out
}
