//! `nexus-gateway cluster add|update|get|list|delete|rotate-secret`: trusted Temporal clusters
//! (admin certificate). A secret is printed once, when it is issued, with the URL prefix that
//! the cluster's admin registers as Temporal endpoint targets.

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use nexus_certs::Identity;
use serde_json::{Value, json};

use super::conn::{Connection, send_json};
use super::table::{Align, render};
use super::{Failure, outln, write_stdout};
use crate::worker::encode;

#[derive(Subcommand)]
pub enum Command {
    /// Register a Temporal cluster as a caller for its namespaces.
    Add(AddArgs),
    /// Change a cluster's callback URL template or description.
    Update(UpdateArgs),
    /// Show one cluster.
    Get(Select),
    /// List clusters.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a cluster; its secrets stop working at once.
    Delete(Select),
    /// Issue a new secret; the current ones keep working for --overlap.
    RotateSecret(RotateArgs),
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Auth {
    /// A gateway-issued secret in the endpoint URL (stock Temporal servers).
    Secret,
    /// The cluster's certificate, spiffe://<trust domain>/cluster/<name>.
    Mtls,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    conn: Connection,
    /// Cluster name: ^[a-zA-Z0-9][a-zA-Z0-9._-]*$; its namespaces are called `ns@name`.
    #[arg(long)]
    name: String,
    /// The cluster's `nexusoperation.callback.endpoint.template`, with {namespace} (or
    /// {{.NamespaceName}}) where the namespace goes.
    #[arg(long)]
    callback_url_template: String,
    /// How the cluster authenticates.
    #[arg(long, value_enum, default_value = "secret")]
    auth: Auth,
    #[arg(long)]
    description: Option<String>,
    /// Print the answer as JSON (with `secret` and `urlPrefix`).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    conn: Connection,
    #[arg(long)]
    name: String,
    #[arg(long)]
    callback_url_template: Option<String>,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Args)]
pub struct Select {
    #[command(flatten)]
    conn: Connection,
    #[arg(long)]
    name: String,
}

#[derive(Args)]
pub struct RotateArgs {
    #[command(flatten)]
    conn: Connection,
    #[arg(long)]
    name: String,
    /// How long the current secrets keep working, e.g. 24h; 0 stops them now.
    #[arg(long, default_value = "24h")]
    overlap: String,
    /// Print the answer as JSON (with `secret` and `urlPrefix`).
    #[arg(long)]
    json: bool,
}

const PATH: &str = crate::request::CLUSTERS_PATH;

fn admin() -> Identity {
    Identity::Admin("admin".into())
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Add(args) => {
            let mut spec = json!({ "callbackUrlTemplate": args.callback_url_template });
            if let Some(description) = &args.description {
                spec["description"] = json!(description);
            }
            let auth = match args.auth {
                Auth::Secret => "secret",
                Auth::Mtls => "mtls",
            };
            let body = json!({ "name": args.name, "spec": spec, "authentication": auth });
            let client = args.conn.client(&admin())?;
            let out = send_json(
                &client,
                &args.conn.base_uri()?,
                Method::POST,
                PATH,
                Some(body),
            )
            .await?;
            print_issued(&args.conn, out, args.json)
        }
        Command::Update(args) => {
            let client = args.conn.client(&admin())?;
            let base = args.conn.base_uri()?;
            let path = format!("{PATH}/{}", encode(&args.name));
            let current = send_json(&client, &base, Method::GET, &path, None).await?;
            let current = &current["cluster"];
            let mut spec = current["spec"].clone();
            if let Some(template) = args.callback_url_template {
                spec["callbackUrlTemplate"] = json!(template);
            }
            if let Some(description) = args.description {
                spec["description"] = json!(description);
            }
            let body = json!({ "version": current["version"], "spec": spec });
            let out = send_json(&client, &base, Method::PUT, &path, Some(body)).await?;
            print_json(&out["cluster"])
        }
        Command::Get(select) => {
            let client = select.conn.client(&admin())?;
            let path = format!("{PATH}/{}", encode(&select.name));
            let out =
                send_json(&client, &select.conn.base_uri()?, Method::GET, &path, None).await?;
            print_json(&out["cluster"])
        }
        Command::List { conn, json } => {
            let client = conn.client(&admin())?;
            let out = send_json(&client, &conn.base_uri()?, Method::GET, PATH, None).await?;
            let clusters = out["clusters"].as_array().cloned().unwrap_or_default();
            if json {
                print_json(&Value::Array(clusters))
            } else {
                write_stdout(&table(&clusters))
            }
        }
        Command::Delete(select) => {
            let client = select.conn.client(&admin())?;
            let base = select.conn.base_uri()?;
            let path = format!("{PATH}/{}", encode(&select.name));
            let current = send_json(&client, &base, Method::GET, &path, None).await?;
            let version = current["cluster"]["version"].as_u64().unwrap_or_default();
            let delete = format!("{path}?version={version}");
            send_json(&client, &base, Method::DELETE, &delete, None).await?;
            outln!("deleted cluster {}", select.name)
        }
        Command::RotateSecret(args) => {
            let client = args.conn.client(&admin())?;
            let base = args.conn.base_uri()?;
            let path = format!("{PATH}/{}", encode(&args.name));
            let current = send_json(&client, &base, Method::GET, &path, None).await?;
            let body = json!({
                "version": current["cluster"]["version"],
                "overlap": args.overlap,
            });
            let secrets = format!("{path}/secrets");
            let out = send_json(&client, &base, Method::POST, &secrets, Some(body)).await?;
            print_issued(&args.conn, out, args.json)
        }
    }
}

/// Prints a cluster and, when one was issued, its secret and the endpoint URL prefix.
fn print_issued(conn: &Connection, mut out: Value, json: bool) -> Result<(), Failure> {
    let secret = out["secret"].as_str().map(str::to_owned);
    let prefix = secret.as_ref().map(|secret| {
        format!(
            "{}{}{secret}/endpoints/",
            conn.gateway.trim_end_matches('/'),
            crate::request::CLUSTER_OPERATIONS_PREFIX,
        )
    });
    if let Some(prefix) = &prefix {
        out["urlPrefix"] = json!(prefix);
    }
    if json {
        return print_json(&out);
    }
    print_json(&out["cluster"])?;
    if let (Some(secret), Some(prefix)) = (secret, prefix) {
        outln!(
            "\nsecret (shown once; store it like a password): {secret}\n\
             Temporal endpoint target URL for gateway endpoint E: {prefix}E/services"
        )?;
    }
    Ok(())
}

fn print_json(value: &Value) -> Result<(), Failure> {
    outln!("{}", serde_json::to_string_pretty(value)?)
}

fn table(clusters: &[Value]) -> String {
    let header = [
        ("NAME", Align::Left),
        ("VERSION", Align::Right),
        ("CALLBACK URL TEMPLATE", Align::Left),
        ("SECRETS", Align::Left),
    ];
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            let secrets: Vec<String> = c["secrets"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| match s["expiresTime"].as_str() {
                            Some(t) => format!("{} (until {t})", s["id"].as_str().unwrap_or("")),
                            None => s["id"].as_str().unwrap_or("").to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                c["name"].as_str().unwrap_or("").to_owned(),
                c["version"].to_string(),
                c["spec"]["callbackUrlTemplate"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                if secrets.is_empty() {
                    "mtls only".into()
                } else {
                    secrets.join(", ")
                },
            ]
        })
        .collect();
    render(&header, &rows)
}
