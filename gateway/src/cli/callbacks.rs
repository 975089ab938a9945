//! `nexus-gateway callbacks list|retry|drop`: completions the gateway could not deliver yet.

use clap::Subcommand;
use http::Method;
use nexus_certs::Identity;

use super::conn::{Connection, send_json};
use super::table::{Align, render};
use super::{Failure, outln, write_stdout};

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

const PATH: &str = crate::request::COMPLETIONS_PATH;

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
            write_stdout(&table(&list))
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
            outln!("completion {id} queued for delivery")
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
            outln!("completion {id} dropped")
        }
    }
}

fn table(completions: &[serde_json::Value]) -> String {
    let header = [
        ("ID", Align::Right),
        ("STATE", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("NEXT ATTEMPT", Align::Left),
        ("CALLER", Align::Left),
        ("ENDPOINT", Align::Left),
        ("LAST ERROR", Align::Left),
    ];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let rows: Vec<Vec<String>> = completions
        .iter()
        .map(|c| {
            vec![
                c["id"].to_string(),
                text(&c["state"]),
                c["attempts"].to_string(),
                text(&c["nextAttempt"]),
                text(&c["callerNamespace"]),
                text(&c["endpoint"]),
                text(&c["lastError"]),
            ]
        })
        .collect();
    render(&header, &rows)
}
