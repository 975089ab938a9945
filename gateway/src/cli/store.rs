//! `nexus-gateway store migrate`: creates or migrates the schema of a shared PostgreSQL store
//! (replicas do it themselves at start; this runs it alone, e.g. before a rollout).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Failure, outln};

#[derive(Subcommand)]
pub enum Command {
    /// Apply the schema migrations not applied yet.
    Migrate(MigrateArgs),
}

#[derive(Args)]
pub struct MigrateArgs {
    /// postgres://user:password@host/db[?sslmode=require]
    #[arg(long, env = "NEXUS_GATEWAY_STORE")]
    store: String,
    /// CA bundle (PEM) the database's certificate chains to, for sslmode=require.
    #[arg(long)]
    store_ca: Option<PathBuf>,
}

pub async fn run(command: Command) -> Result<(), Failure> {
    let Command::Migrate(args) = command;
    let mut settings = nexus_registry::pg::PgSettings::new(args.store);
    settings.ca = args.store_ca;
    let applied = tokio::task::spawn_blocking(move || nexus_registry::pg::migrate(&settings))
        .await
        .map_err(|e| Failure::from(e.to_string()))?
        .map_err(|e| Failure::from(e.to_string()))?;
    if applied.is_empty() {
        outln!("the store's schema is up to date")
    } else {
        for name in &applied {
            outln!("applied {name}")?;
        }
        Ok(())
    }
}
