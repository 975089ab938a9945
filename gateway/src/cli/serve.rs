//! `nexus-gateway serve`: run the gateway with your own certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{App, Config};
use clap::Args as ClapArgs;
use nexus_certs::TlsFiles;

use super::Failure;

#[derive(ClapArgs)]
pub struct Args {
    /// Data port (mTLS): Nexus, worker and admin APIs.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Ops port (plain HTTP): /healthz, /readyz, /metrics. Keep it on localhost.
    #[arg(long, default_value = crate::config::DEFAULT_OPS_LISTEN)]
    ops_listen: SocketAddr,
    /// Data directory: the registry database.
    #[arg(long)]
    data_dir: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long)]
    tls_ca: PathBuf,
    /// Server certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// SPIFFE trust domain of client identities.
    #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// The gateway's URL as handlers reach it (for rewritten callback URLs).
    #[arg(long)]
    public_url: Option<String>,
    /// CA bundle (PEM) trusted for HTTPS to external handlers and callback receivers
    /// (default: --tls-ca).
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// When plain-HTTP upstream URLs are allowed: never, loopback, always.
    #[arg(long, default_value = "loopback")]
    plain_http_upstreams: crate::external::PlainHttp,
    /// Seconds to drain in-flight requests on SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let files = TlsFiles {
        ca: args.tls_ca,
        cert: args.tls_cert,
        key: args.tls_key,
    };
    let mut config = Config::new(files.load()?, args.data_dir);
    config.tls_files = Some(files);
    config.listen = args.listen;
    config.ops_listen = args.ops_listen;
    config.trust_domain = args.trust_domain;
    config.limits.max_body_bytes = args.max_body_bytes;
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.public_url = args.public_url;
    config.upstream.plain_http = args.plain_http_upstreams;
    if let Some(path) = &args.upstream_ca {
        config.upstream.ca = Some(nexus_certs::load_certs(path)?);
    }
    let app = App::build(config).await?;
    eprintln!(
        "nexus-gateway: data https://{}  ops http://{}",
        app.data_addr(),
        app.ops_addr()
    );
    app.run(super::shutdown_signal()).await;
    Ok(())
}
