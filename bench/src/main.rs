//! `nexus-bench`: side-by-side benchmarks of nexus-gateway on loopback, following
//! shared/BENCHMARKING.md. Run it pinned on core 1 (`taskset -c 1 nexus-bench w1`); it pins
//! the process under test on core 0 itself. Every result is a ratio of two candidates measured
//! in the same run, window by window, alternating.
//!
//! Modules: `load` (load generators and windows), `procs` (pinned children, CPU from /proc),
//! `serve` (what the children run), `scenarios` (W1, S3), `ext` (S1, S1b, S7, S5 against an
//! external target), `s4` (stalled destination), `flood`, `registry` (S6), `registry_e2e`
//! (S6 `--e2e`: updates while serving, end to end), `registry_throughput` (S6
//! `--e2e-throughput`: throughput at 10,000 vs 10 endpoints, end to end), `report` (markdown),
//! `pki`.

mod ext;
mod flood;
mod h2;
mod h3;
mod h4;
mod load;
mod pki;
mod procs;
mod registry;
mod registry_e2e;
mod registry_throughput;
mod report;
mod s4;
mod scenarios;
mod scratch_db;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

#[derive(Parser)]
#[command(
    name = "nexus-bench",
    about = "Side-by-side benchmarks of nexus-gateway (run with taskset -c 1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// W1: caller → gateway → polling worker, vs caller → B-tls (bare hyper behind the same
    /// rustls mTLS acceptor).
    W1(scenarios::W1Args),
    /// S3: a new mTLS connection per request against the gateway, vs an in-process rustls
    /// handshake loop (T).
    S3(scenarios::S3Args),
    /// S1b + S7 (`--mode s1b`) and S5 (`--mode written|strict`): the gateway proxying to an
    /// external target (bare B over plain HTTP on loopback).
    Ext(ext::ExtArgs),
    /// S4: 9 healthy external destinations and one stalled one.
    S4(s4::S4Args),
    /// Flood: one namespace floods (shed by its inbound limit) while another calls at a
    /// fixed rate.
    Flood(flood::FloodArgs),
    /// S6: registry lookups at 10,000 vs 10 endpoints (in process), update cost, start-up;
    /// with `--e2e`, the gateway serving a caller with and without 100 admin updates/s; with
    /// `--e2e-throughput`, the gateway's closed-loop throughput at 10,000 vs 10 endpoints.
    S6(registry::S6Args),
    /// H2: a task forwarded between two replicas vs matched locally (shared PostgreSQL store).
    H2(h2::H2Args),
    /// H4: a completion's durable accept, embedded store vs PostgreSQL.
    H4(h4::H4Args),
    /// H3: registry propagation between two replicas over a shared PostgreSQL store.
    H3(h3::H3Args),
    /// (child) B: the fixed handler over plain HTTP.
    #[command(hide = true)]
    ServeBare {
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// (child) B-tls: the fixed handler behind the gateway's mTLS acceptor.
    #[command(hide = true)]
    ServeDirect {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// (child) The polling worker serving the fixed handler through the gateway.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        gateway: http::Uri,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// (child) T: in-memory rustls handshakes; prints one JSON line.
    #[command(hide = true)]
    Handshakes {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(long, default_value_t = 6.0)]
        measure: f64,
    },
}

/// The gateway's allocator, so in-process measurements (S6's registry lookups and updates) see
/// the heap layout the gateway has.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    if let Command::Handshakes {
        pki,
        warmup,
        measure,
    } = &command
    {
        let h = serve::handshakes(
            pki,
            Duration::from_secs_f64(*warmup),
            Duration::from_secs_f64(*measure),
        )?;
        let out = serde_json::json!({
            "count": h.count,
            "wall_s": h.wall.as_secs_f64(),
            "server_s": h.server.as_secs_f64(),
        });
        println!("{out}");
        return Ok(());
    }
    if let Command::H3(args) = command {
        return h3::h3(args);
    }
    if let Command::H2(args) = command {
        return h2::h2(args);
    }
    if let Command::H4(args) = command {
        return h4::h4(args);
    }
    if let Command::S6(args) = command {
        let gateway_bin = args.gateway_bin.display().to_string();
        let tables = registry::s6(args)?;
        print_report(&tables, &gateway_bin);
        return Ok(());
    }
    // One thread: the load generator, B-tls and the worker each use exactly one core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::W1(args) => {
                let gateway_bin = args.gateway_bin().display().to_string();
                let tables = scenarios::w1(args).await?;
                print_report(&tables, &gateway_bin);
            }
            Command::S3(args) => {
                let gateway_bin = args.gateway_bin().display().to_string();
                let tables = scenarios::s3(args).await?;
                print_report(&tables, &gateway_bin);
            }
            Command::Ext(args) => {
                let gateway_bin = args.common.gateway_bin.display().to_string();
                let tables = ext::ext(args).await?;
                print_report(&tables, &gateway_bin);
            }
            Command::S4(args) => {
                let gateway_bin = args.common.gateway_bin.display().to_string();
                let tables = s4::s4(args).await?;
                print_report(&tables, &gateway_bin);
            }
            Command::Flood(args) => {
                let gateway_bin = args.common.gateway_bin.display().to_string();
                let tables = flood::flood(args).await?;
                print_report(&tables, &gateway_bin);
            }
            Command::ServeBare { max_secs } => {
                serve::serve_bare(Duration::from_secs(max_secs)).await?;
            }
            Command::ServeDirect { pki, max_secs } => {
                serve::serve_direct(&pki, Duration::from_secs(max_secs)).await?;
            }
            Command::Worker {
                pki,
                gateway,
                concurrency,
                max_secs,
            } => {
                serve::worker(&pki, gateway, concurrency, Duration::from_secs(max_secs)).await?;
            }
            Command::Handshakes { .. }
            | Command::S6(_)
            | Command::H3(_)
            | Command::H2(_)
            | Command::H4(_) => {
                unreachable!("handled above")
            }
        }
        Ok(())
    })
}

fn print_report(tables: &str, gateway_bin: &str) {
    println!("{tables}");
    println!("{}", report::environment(Some(gateway_bin)));
}
