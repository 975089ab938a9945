//! `nexus-gateway serve`: run the gateway with your own certificates, from a config file
//! and/or flags (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args as ClapArgs;
use nexus_certs::TlsFiles;

use super::Failure;
use crate::App;
use crate::config_file::{self, FileConfig};

/// Exit code for a bad configuration (EX_USAGE).
const BAD_CONFIG: u8 = 64;

#[derive(ClapArgs)]
pub struct Args {
    /// TOML configuration file (see `nexus-gateway config example`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data port (mTLS): Nexus, worker and admin APIs [default: 127.0.0.1:7443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Ops port (plain HTTP): /healthz, /readyz, /metrics [default: 127.0.0.1:7080].
    #[arg(long)]
    ops_listen: Option<SocketAddr>,
    /// Data directory: registry, callback keys, completion spool [default: data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// SPIFFE trust domain of client identities [default: nexus-gateway].
    #[arg(long)]
    trust_domain: Option<String>,
    /// Largest request body in bytes [default: 2097152].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Seconds to drain in-flight requests on SIGTERM [default: 30].
    #[arg(long)]
    shutdown_grace: Option<u64>,
    /// The gateway's URL as handlers reach it (for rewritten callback URLs).
    #[arg(long)]
    public_url: Option<String>,
    /// CA bundle (PEM) trusted for HTTPS to external handlers and callback receivers.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// When plain-HTTP upstream URLs are allowed: never, loopback, always [default: loopback].
    #[arg(long)]
    plain_http_upstreams: Option<crate::external::PlainHttp>,
    /// Shared PostgreSQL store of replicas, postgres://user:password@host/db [default: the
    /// embedded store in the data directory].
    #[arg(long, env = "NEXUS_GATEWAY_STORE")]
    store: Option<String>,
    /// CA bundle (PEM) the database's certificate chains to, for sslmode=require.
    #[arg(long)]
    store_ca: Option<PathBuf>,
}

/// `source` says where the bad settings came from: "in <file>", "in --upstream-ca", ...
fn bad_config(problems: Vec<String>, source: &str) -> Failure {
    let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    Failure {
        message: format!("invalid configuration {source}:\n{}", list.join("\n")),
        code: BAD_CONFIG,
    }
}

/// The config file, or the defaults without one.
fn load_file(path: Option<&Path>) -> Result<FileConfig, Failure> {
    let Some(path) = path else {
        return config_file::parse("").map_err(|p| bad_config(p, "in the defaults"));
    };
    let source = format!("in {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad_config(
            vec![format!("cannot read {}: {e}", path.display())],
            &source,
        )
    })?;
    config_file::parse(&text).map_err(|p| bad_config(p, &source))
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let FileConfig { mut config, tls } = load_file(args.config.as_deref())?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.ops_listen {
        config.ops_listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.trust_domain {
        config.trust_domain = v;
    }
    if let Some(v) = args.max_body_bytes {
        config.limits.max_body_bytes = v;
    }
    if let Some(v) = args.shutdown_grace {
        config.shutdown_grace = Duration::from_secs(v);
    }
    if let Some(v) = args.public_url {
        config.public_url = Some(v);
    }
    if let Some(v) = args.store {
        config.store.url = Some(v);
    }
    if let Some(v) = args.store_ca {
        config.store.ca = Some(v);
    }
    if let Some(v) = args.plain_http_upstreams {
        config.upstream.plain_http = v;
    }
    if let Some(path) = &args.upstream_ca {
        config.upstream.ca = Some(
            nexus_certs::load_certs(path)
                .map_err(|e| bad_config(vec![e.to_string()], "in --upstream-ca"))?,
        );
    }
    // Problems with TLS files named in the config file name the config file too.
    let (files, source) = match (args.tls_ca, args.tls_cert, args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => (
            TlsFiles { ca, cert, key },
            "in --tls-ca, --tls-cert, --tls-key".to_owned(),
        ),
        _ => match (tls, &args.config) {
            (Some(files), Some(path)) => (files, format!("in [tls] of {}", path.display())),
            (_, path) => {
                let in_file = path
                    .as_ref()
                    .map_or(String::new(), |p| format!(" in {}", p.display()));
                return Err(bad_config(
                    vec![format!(
                        "no TLS files: set [tls] ca, cert and key{in_file}, or pass --tls-ca, --tls-cert and --tls-key"
                    )],
                    "for TLS",
                ));
            }
        },
    };
    config.tls = files
        .load()
        .map_err(|e| bad_config(vec![e.to_string()], &source))?;
    config.tls_files = Some(files);
    let app = App::build(config).await?;
    let shutdown = super::shutdown_signal();
    eprintln!(
        "nexus-gateway: data https://{}  ops http://{}",
        app.data_addr(),
        app.ops_addr()
    );
    app.run(shutdown).await;
    Ok(())
}
