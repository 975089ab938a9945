//! `nexus-gateway certs init|issue`: a dev PKI for trying the gateway and for tests. With your
//! own CA, skip this and pass your PEM files to `serve`.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use nexus_certs::{CertError, DevPki, Existing, Identity};

use super::{Failure, outln};

#[derive(Subcommand)]
pub enum Command {
    /// Create a CA and the gateway's server certificate in DIR (kept if already there).
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// DNS names and IP addresses the server certificate is valid for (repeatable).
        #[arg(long = "server-name", default_values = ["localhost", "127.0.0.1", "::1"])]
        server_names: Vec<String>,
        /// Replace an existing server certificate that does not match (the CA is kept).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate from the CA in DIR.
    Issue(IssueArgs),
}

#[derive(ClapArgs)]
pub struct IssueArgs {
    #[arg(long, default_value = "pki")]
    dir: PathBuf,
    #[command(flatten)]
    who: Who,
    #[arg(long, default_value = crate::config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Replace existing files of this identity that hold another certificate.
    #[arg(long)]
    force: bool,
}

#[derive(ClapArgs)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A namespace identity: calls endpoints, polls its own task queues.
    #[arg(long)]
    namespace: Option<String>,
    /// An admin identity: manages endpoints.
    #[arg(long)]
    admin: Option<String>,
    /// A metering identity: reads attribution.
    #[arg(long)]
    metering: Option<String>,
    /// A trusted Temporal cluster identity: calls endpoints for its namespaces.
    #[arg(long)]
    cluster: Option<String>,
}

pub fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Init {
            dir,
            server_names,
            force,
        } => {
            let pki = DevPki::init_with(&dir, &server_names, existing(force)).map_err(refused)?;
            let server = pki.server_files();
            outln!("CA:          {}", pki.ca_path().display())?;
            outln!("server cert: {}", server.cert.display())?;
            outln!("server key:  {}", server.key.display())
        }
        Command::Issue(args) => {
            let who = args.who;
            let identity = match (who.namespace, who.admin, who.metering, who.cluster) {
                (Some(ns), ..) => Identity::Namespace(ns),
                (_, Some(name), ..) => Identity::Admin(name),
                (_, _, Some(name), _) => Identity::Metering(name),
                (.., Some(name)) => Identity::Cluster(name),
                _ => unreachable!("clap requires one identity"),
            };
            let pki = DevPki::open(&args.dir)?;
            let files = pki
                .issue_with(&identity, &args.trust_domain, existing(args.force))
                .map_err(refused)?;
            outln!("identity: {}", identity.uri(&args.trust_domain))?;
            outln!("cert:     {}", files.cert.display())?;
            outln!("key:      {}", files.key.display())?;
            outln!("ca:       {}", files.ca.display())
        }
    }
}

/// Files that hold something else are someone's: replaced only when asked.
fn existing(force: bool) -> Existing {
    if force {
        Existing::Replace
    } else {
        Existing::Refuse
    }
}

/// Tells how to go ahead when a file is in the way.
fn refused(error: CertError) -> Failure {
    match error {
        CertError::Exists { .. } => format!("{error}; pass --force to replace it").into(),
        other => other.into(),
    }
}
