//! `nexus-gateway callbacks list|retry|drop`: completions the gateway could not deliver yet.

use clap::Subcommand;
use http::Method;
use nexus_certs::Identity;

use super::Failure;
use super::conn::{Connection, send_json};

#[derive(Subcommand)]
pub enum Command {
    /// List completions waiting for delivery or given up on.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Only undeliverable (failed) completions.
        #[arg(long, conflicts_with = "pending")]
        failed: bool,
        /// Only pending completions.
        #[arg(long)]
        pending: bool,
    },
    /// Deliver a completion again now (a failed one becomes pending).
    Retry {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        id: u64,
    },
    /// Delete a completion without delivering it.
    Drop {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        id: u64,
    },
}

const PATH: &str = "/api/v1/callbacks";

pub async fn run(command: Command) -> Result<(), Failure> {
    let admin = Identity::Admin("admin".into());
    match command {
        Command::List {
            conn,
            failed,
            pending,
        } => {
            let filter = if failed {
                "?state=failed"
            } else if pending {
                "?state=pending"
            } else {
                ""
            };
            let client = conn.client(&admin)?;
            let out = send_json(
                &client,
                &conn.base_uri()?,
                Method::GET,
                &format!("{PATH}{filter}"),
                None,
            )
            .await?;
            let list = out["completions"].as_array().cloned().unwrap_or_default();
            println!(
                "{:>6}  {:<8} {:>8}  {:<30} {:<20} {:<20} LAST ERROR",
                "ID", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "CALLER", "ENDPOINT"
            );
            for c in list {
                println!(
                    "{:>6}  {:<8} {:>8}  {:<30} {:<20} {:<20} {}",
                    c["id"],
                    c["state"].as_str().unwrap_or(""),
                    c["attempts"],
                    c["nextAttempt"].as_str().unwrap_or(""),
                    c["callerNamespace"].as_str().unwrap_or(""),
                    c["endpoint"].as_str().unwrap_or(""),
                    c["lastError"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Retry { conn, id } => {
            let client = conn.client(&admin)?;
            send_json(
                &client,
                &conn.base_uri()?,
                Method::POST,
                &format!("{PATH}/{id}/retry"),
                None,
            )
            .await?;
            println!("completion {id} queued for delivery");
            Ok(())
        }
        Command::Drop { conn, id } => {
            let client = conn.client(&admin)?;
            send_json(
                &client,
                &conn.base_uri()?,
                Method::DELETE,
                &format!("{PATH}/{id}"),
                None,
            )
            .await?;
            println!("completion {id} dropped");
            Ok(())
        }
    }
}
