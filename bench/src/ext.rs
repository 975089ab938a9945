//! S1b + S7 and S5: the gateway proxying to an external target (the bare handler B over plain
//! HTTP on loopback, on core 1), against B-tls or against a second gateway configuration.
//! Candidates are measured in turn, round by round (X, Y, Z, X, Y, Z ...).

use std::fmt::Write;

use bytes::Bytes;
use http::Uri;
use nexus_gateway::client::{HttpClient, HttpVersions, http_client};

use crate::load::{self, Measured, Window};
use crate::procs::Pinned;
use crate::report::{cell, labelled, num, table};
use crate::scenarios::{
    Common, INPUT, check, create_endpoint_with, over, probe, spawn_self, start_gateway_with,
};
use crate::serve::RESULT;
use crate::{Result, pki};

pub(crate) const EXT_PATH: &str = "/nexus/endpoints/ext/services/svc/op";

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Mode {
    /// S1b + S7: G (h2 caller), B-tls (h2 caller), G (HTTP/1.1 caller).
    S1b,
    /// S5: G with `[attribution] durability = "written"` vs G with attribution disabled.
    Written,
    /// S5: G with `[attribution] durability = "strict"` vs G with attribution disabled.
    Strict,
    /// S1: G vs N (Debian nginx, one process, `ssl_verify_client on`, same certificates,
    /// keep-alive HTTP/1.1 upstream to B), both with HTTP/1.1 callers; then both with h2
    /// callers, so S7's h2 / HTTP/1.1 ratio is seen next to nginx's own.
    Nginx,
}

#[derive(clap::Args, Debug)]
pub struct ExtArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "s1b")]
    mode: Mode,
    /// Caller connections, one request in flight on each (closed loop).
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

/// One candidate of a comparison: where its callers send and which process is under test.
pub(crate) struct Candidate {
    pub(crate) label: String,
    pub(crate) uri: Uri,
    /// One per caller connection, each with one request in flight.
    pub(crate) clients: Vec<HttpClient>,
    /// Index in the pid list of the process under test.
    pub(crate) pid: usize,
}

pub async fn ext(args: ExtArgs) -> Result<String> {
    let pki = pki::BenchPki::create()?;
    let dir = pki.path().as_os_str();
    let bare = spawn_self("bare", 1, &["serve-bare".as_ref()])?;
    let bare_addr = bare.addr_after("data http://")?;
    let target = serde_json::json!({"external": {"url": format!("http://{bare_addr}")}});
    let caller = pki::client_material(pki.path(), &pki::caller())?;
    let n = args.connections.max(1);
    let make = |v: HttpVersions| {
        (0..n)
            .map(|_| http_client(&caller, v))
            .collect::<Result<Vec<HttpClient>, _>>()
    };
    let bin = &args.common.gateway_bin;
    let mut keep: Vec<Pinned> = Vec::new();
    let mut gateways = Vec::new();
    let mut candidates = Vec::new();
    let mut pids = Vec::new();
    let configs: Vec<(&str, &str)> = match args.mode {
        Mode::S1b | Mode::Nginx => vec![("G", "")],
        Mode::Written => vec![
            (
                "G written",
                "[attribution]\nenabled = true\ndurability = \"written\"\n",
            ),
            ("G off", "[attribution]\nenabled = false\n"),
        ],
        Mode::Strict => vec![
            (
                "G strict",
                "[attribution]\nenabled = true\ndurability = \"strict\"\n",
            ),
            ("G off", "[attribution]\nenabled = false\n"),
        ],
    };
    for (label, extra) in &configs {
        let g = start_gateway_with(bin, pki.path(), extra)?;
        create_endpoint_with(pki.path(), g.addr, "ext", target.clone()).await?;
        let uri: Uri = format!("https://{}{EXT_PATH}", g.addr).parse()?;
        pids.push(g.process.pid());
        candidates.push(Candidate {
            label: format!("{label} (h2)"),
            uri,
            clients: make(HttpVersions::Any)?,
            pid: pids.len() - 1,
        });
        gateways.push(g);
    }
    if let Mode::S1b = args.mode {
        let direct = spawn_self(
            "b-tls",
            0,
            &["serve-direct".as_ref(), "--pki".as_ref(), dir],
        )?;
        let direct_addr = direct.data_addr()?;
        pids.push(direct.pid());
        candidates.push(Candidate {
            label: "B-tls (h2)".into(),
            uri: format!("https://{direct_addr}{EXT_PATH}").parse()?,
            clients: make(HttpVersions::Any)?,
            pid: pids.len() - 1,
        });
        keep.push(direct);
        candidates.push(Candidate {
            label: "G (HTTP/1.1)".into(),
            uri: candidates[0].uri.clone(),
            clients: make(HttpVersions::Http1Only)?,
            pid: 0,
        });
    }
    let mut _nginx_dir = None;
    if let Mode::Nginx = args.mode {
        candidates[0].label = "G (HTTP/1.1)".into();
        candidates[0].clients = make(HttpVersions::Http1Only)?;
        let (n_proc, n_addr, n_dir) = start_nginx(pki.path(), bare_addr)?;
        pids.push(n_proc.pid());
        candidates.push(Candidate {
            label: "N (HTTP/1.1)".into(),
            uri: format!("https://{n_addr}{EXT_PATH}").parse()?,
            clients: make(HttpVersions::Http1Only)?,
            pid: pids.len() - 1,
        });
        let n_uri = candidates[1].uri.clone();
        candidates.push(Candidate {
            label: "G (h2)".into(),
            uri: candidates[0].uri.clone(),
            clients: make(HttpVersions::Any)?,
            pid: 0,
        });
        candidates.push(Candidate {
            label: "N (h2)".into(),
            uri: n_uri,
            clients: make(HttpVersions::Any)?,
            pid: pids.len() - 1,
        });
        keep.push(n_proc);
        _nginx_dir = Some(n_dir);
    }
    pids.push(bare.pid());
    pids.push(std::process::id());
    let bare_i = pids.len() - 2;
    let rounds = rounds(args.common.window(), args.common.pairs, &pids, &candidates).await?;
    drop(keep);
    Ok(report(&args, &candidates, &rounds, bare_i))
}

/// Probes every candidate, then measures `pairs` rounds, each a window of every candidate in
/// turn: a closed loop on each of its clients, the CPU of all `pids` read at the span's ends.
/// Only the candidate of the window gets load, so the others sit idle meanwhile.
pub(crate) async fn rounds(
    window: Window,
    pairs: usize,
    pids: &[u32],
    candidates: &[Candidate],
) -> Result<Vec<Vec<Measured>>> {
    for c in candidates {
        probe(&c.clients[0], &c.uri).await?;
    }
    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=pairs {
        let mut row = Vec::new();
        let mut line = format!("round {round}:");
        for c in candidates {
            let m = load::measure(window, pids, c.clients.len(), |i, span| {
                load::keep_alive_loop(
                    c.clients[i].clone(),
                    c.uri.clone(),
                    Bytes::from_static(INPUT),
                    RESULT.len(),
                    span,
                    None,
                )
            })
            .await?;
            check(&m, &c.label)?;
            let _ = write!(
                line,
                " | {} {} req/s {} us/req p50 {}",
                c.label,
                num(m.per_second(), 0),
                num(m.cpu_us_per_ok(c.pid), 1),
                num(m.tally.quantile_us(0.5), 0)
            );
            row.push(m);
        }
        eprintln!("{line}");
        rounds.push(row);
    }
    Ok(rounds)
}

fn report(args: &ExtArgs, cands: &[Candidate], rounds: &[Vec<Measured>], bare: usize) -> String {
    let mut out = String::new();
    let title = match args.mode {
        Mode::S1b => {
            "S1b + S7: G → external target (B, plain HTTP on loopback) vs B-tls; h2 vs HTTP/1.1 callers"
        }
        Mode::Written => "S5: attribution durability = \"written\" vs disabled (external target)",
        Mode::Strict => "S5: attribution durability = \"strict\" vs disabled (external target)",
        Mode::Nginx => {
            "S1: G vs N (nginx, one process, mTLS front) proxying to B, HTTP/1.1 callers"
        }
    };
    let order: Vec<&str> = cands.iter().map(|c| c.label.as_str()).collect();
    let _ = writeln!(
        out,
        "### {title}\n\n{} rounds ({}), {} s warm-up + {} s measured each; {} caller connections \
         (mTLS), closed loop. B (bare handler, upstream of G) on core 1. Ratios per round; cells \
         median (min – max).\n",
        rounds.len(),
        order.join(", then "),
        args.common.warmup,
        args.common.measure,
        args.connections,
    );
    let cpu = |r: &Vec<Measured>, k: usize| r[k].cpu_us_per_ok(cands[k].pid);
    let tput = |r: &Vec<Measured>, k: usize| r[k].per_second();
    let mut rows = Vec::new();
    match args.mode {
        Mode::S1b => {
            rows.push(vec![
                "S1b CPU/req, G (h2) / B-tls".into(),
                cell(over(rounds, |r| cpu(r, 0) / cpu(r, 1)), 2),
                "≤ 2.0".into(),
            ]);
            rows.push(vec![
                "S1b CPU/req, (G + B on core 1) / B-tls".into(),
                cell(
                    over(rounds, |r| {
                        (cpu(r, 0) + r[0].cpu_us_per_ok(bare)) / cpu(r, 1)
                    }),
                    2,
                ),
                "—".into(),
            ]);
            rows.push(vec![
                "S1b throughput, G (h2) / B-tls".into(),
                cell(over(rounds, |r| tput(r, 0) / tput(r, 1)), 2),
                "≥ 0.45".into(),
            ]);
            rows.push(vec![
                "S7 CPU/req, G h2 caller / G HTTP/1.1 caller".into(),
                cell(over(rounds, |r| cpu(r, 0) / cpu(r, 2)), 2),
                "≤ 1.15".into(),
            ]);
            rows.push(vec![
                "S7 throughput, G h2 / G HTTP/1.1".into(),
                cell(over(rounds, |r| tput(r, 0) / tput(r, 2)), 2),
                "—".into(),
            ]);
        }
        Mode::Nginx => {
            rows.push(vec![
                "S1 CPU/req, G / N".into(),
                cell(over(rounds, |r| cpu(r, 0) / cpu(r, 1)), 2),
                "≤ 1.0 (stretch 0.8)".into(),
            ]);
            rows.push(vec![
                "S1 throughput, G / N".into(),
                cell(over(rounds, |r| tput(r, 0) / tput(r, 1)), 2),
                "≥ 1.0".into(),
            ]);
            rows.push(vec![
                "CPU/req with h2 callers, G / N".into(),
                cell(over(rounds, |r| cpu(r, 2) / cpu(r, 3)), 2),
                "—".into(),
            ]);
            rows.push(vec![
                "S7 CPU/req, G h2 / G HTTP/1.1".into(),
                cell(over(rounds, |r| cpu(r, 2) / cpu(r, 0)), 2),
                "≤ 1.15".into(),
            ]);
            rows.push(vec![
                "CPU/req, N h2 / N HTTP/1.1 (nginx's own S7)".into(),
                cell(over(rounds, |r| cpu(r, 3) / cpu(r, 1)), 2),
                "—".into(),
            ]);
        }
        Mode::Written | Mode::Strict => {
            rows.push(vec![
                format!("CPU/req, {} / {}", cands[0].label, cands[1].label),
                cell(over(rounds, |r| cpu(r, 0) / cpu(r, 1)), 2),
                match args.mode {
                    Mode::Written => "≤ 1.05",
                    _ => "≤ 1.10",
                }
                .into(),
            ]);
            rows.push(vec![
                format!("throughput, {} / {}", cands[1].label, cands[0].label),
                cell(over(rounds, |r| tput(r, 1) / tput(r, 0)), 2),
                "≤ 1.10".into(),
            ]);
        }
    }
    out.push_str(&table(&["ratio", "median (min – max)", "target"], &rows));
    out.push('\n');
    let mut header = vec!["absolute input"];
    header.extend(order.iter().copied());
    out.push_str(&table(&header, &absolute_rows(cands, rounds, bare)));
    out.push('\n');
    out.push_str(&per_round_table(cands, rounds));
    out
}

/// One cell per candidate: `f(window, index of its process under test)`, median (min – max)
/// over rounds.
pub(crate) fn per_candidate(
    cands: &[Candidate],
    rounds: &[Vec<Measured>],
    f: &dyn Fn(&Measured, usize) -> f64,
    decimals: usize,
) -> Vec<String> {
    (0..cands.len())
        .map(|k| cell(over(rounds, |r| f(&r[k], cands[k].pid)), decimals))
        .collect()
}

/// The absolute inputs behind the ratios, a row each, a column per candidate; `bare` is B's
/// index in the pid list (the load generator's follows it).
pub(crate) fn absolute_rows(
    cands: &[Candidate],
    rounds: &[Vec<Measured>],
    bare: usize,
) -> Vec<Vec<String>> {
    let col = |f: &dyn Fn(&Measured, usize) -> f64, d: usize| per_candidate(cands, rounds, f, d);
    labelled([
        ("requests/s", col(&|m, _| m.per_second(), 0)),
        (
            "CPU µs/req, process under test (core 0)",
            col(&|m, p| m.cpu_us_per_ok(p), 1),
        ),
        (
            "core 0 busy, process under test (%)",
            col(&|m, p| 100.0 * m.utilisation(p), 0),
        ),
        (
            "CPU µs/req, B (core 1)",
            col(&|m, _| m.cpu_us_per_ok(bare), 1),
        ),
        (
            "core 1: load generator + B (%)",
            col(
                &|m, _| 100.0 * (m.utilisation(bare) + m.utilisation(bare + 1)),
                0,
            ),
        ),
        ("latency p50 (µs)", col(&|m, _| m.tally.quantile_us(0.5), 0)),
        (
            "latency p99 (µs)",
            col(&|m, _| m.tally.quantile_us(0.99), 0),
        ),
        ("errors per window", col(&|m, _| m.tally.errors as f64, 0)),
        (
            "other processes (% of a core)",
            col(&|m, _| 100.0 * m.others_utilisation(), 0),
        ),
    ])
}

/// Requests/s and CPU µs/req of each candidate, round by round, folded away.
pub(crate) fn per_round_table(cands: &[Candidate], rounds: &[Vec<Measured>]) -> String {
    let mut header = vec!["round".to_owned()];
    for c in cands {
        header.push(format!("{} req/s", c.label));
        header.push(format!("{} µs/req", c.label));
    }
    let per: Vec<Vec<String>> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = vec![(i + 1).to_string()];
            for (k, c) in cands.iter().enumerate() {
                row.push(num(r[k].per_second(), 0));
                row.push(num(r[k].cpu_us_per_ok(c.pid), 1));
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = String::from("<details><summary>per round</summary>\n\n");
    out.push_str(&table(&header, &per));
    out.push_str("\n</details>\n");
    out
}

/// N: `nginx` (from PATH or /usr/sbin) in one process (`master_process off`), pinned on core
/// 0, mTLS front with the bench certificates, keep-alive HTTP/1.1 upstream to `bare`.
fn start_nginx(
    pki_dir: &std::path::Path,
    bare: std::net::SocketAddr,
) -> Result<(Pinned, std::net::SocketAddr, tempfile::TempDir)> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or("no nginx (apt-get install -y nginx-light)")?;
    let files = pki::server_files(pki_dir)?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         upstream b {{ server {bare}; keepalive 64; }}\n\
         server {{\n  listen {port} ssl http2;\n  ssl_protocols TLSv1.3;\n\
         ssl_certificate {cert};\n  ssl_certificate_key {key};\n  ssl_client_certificate {ca};\n\
         ssl_verify_client on;\n  keepalive_requests 1000000;\n\
         location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n }}\n}}\n",
        d = dir.path().display(),
        cert = files.cert.display(),
        key = files.key.display(),
        ca = files.ca.display(),
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf)?;
    let args: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        path.into(),
        "-e".into(),
        dir.path().join("error.log").into(),
    ];
    let p = Pinned::spawn("nginx", 0, std::ffi::OsStr::new(bin), args, &[])?;
    Ok((p, port, dir))
}
