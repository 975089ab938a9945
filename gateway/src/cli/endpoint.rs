//! `nexus-gateway endpoint create|update|get|list|delete`, with the flags of
//! `temporal operator nexus endpoint` plus `--allow-caller`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use http::Method;
use nexus_certs::Identity;
use serde_json::{Value, json};

use super::conn::{Connection, send_json};
use super::table::{Align, render};
use super::{Failure, outln, write_stdout};
use crate::worker::encode;

#[derive(Subcommand)]
pub enum Command {
    /// Create an endpoint.
    Create(SpecArgs),
    /// Change an endpoint; flags not given keep their values.
    Update(UpdateArgs),
    /// Show one endpoint.
    Get(Select),
    /// List endpoints.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete an endpoint.
    Delete(Select),
}

#[derive(Args)]
pub struct SpecArgs {
    #[command(flatten)]
    conn: Connection,
    /// Endpoint name, unique: ^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    fields: SpecFields,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    conn: Connection,
    /// The endpoint to change.
    #[arg(long)]
    name: String,
    /// Rename the endpoint.
    #[arg(long)]
    new_name: Option<String>,
    #[command(flatten)]
    fields: SpecFields,
    /// Remove the description.
    #[arg(long, conflicts_with_all = ["description", "description_file"])]
    unset_description: bool,
}

#[derive(Args)]
pub struct SpecFields {
    /// Namespace of the target task queue (worker target).
    #[arg(long, requires = "target_task_queue", conflicts_with = "target_url")]
    target_namespace: Option<String>,
    /// Task queue that workers of the target namespace poll.
    #[arg(long, requires = "target_namespace")]
    target_task_queue: Option<String>,
    /// URL of an external Nexus HTTP handler (external target).
    #[arg(long)]
    target_url: Option<String>,
    /// Description (markdown).
    #[arg(long, conflicts_with = "description_file")]
    description: Option<String>,
    /// Read the description from a file.
    #[arg(long)]
    description_file: Option<PathBuf>,
    /// A namespace allowed to call this endpoint (repeatable); on update, replaces the list.
    #[arg(long = "allow-caller")]
    allow_callers: Vec<String>,
}

#[derive(Args)]
pub struct Select {
    #[command(flatten)]
    conn: Connection,
    /// Endpoint name.
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    name: Option<String>,
    /// Endpoint id.
    #[arg(long)]
    id: Option<String>,
}

const PATH: &str = crate::request::ENDPOINTS_PATH;

fn admin() -> Identity {
    Identity::Admin("admin".into())
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Create(args) => {
            let target = args.fields.target()?.ok_or_else(|| {
                Failure::from("a target is required: --target-namespace with --target-task-queue, or --target-url")
            })?;
            let mut spec = json!({"name": args.name, "target": target});
            args.fields.apply(&mut spec)?;
            let client = args.conn.client(&admin())?;
            let out = send_json(
                &client,
                &args.conn.base_uri()?,
                Method::POST,
                PATH,
                Some(json!({"spec": spec})),
            )
            .await?;
            print_json(&out["endpoint"])
        }
        Command::Update(args) => {
            let client = args.conn.client(&admin())?;
            let base = args.conn.base_uri()?;
            let current = find(&client, &base, Some(&args.name), None).await?;
            let mut spec = current["spec"].clone();
            if let Some(new_name) = &args.new_name {
                spec["name"] = json!(new_name);
            }
            if let Some(target) = args.fields.target()? {
                spec["target"] = target;
            }
            if args.unset_description {
                spec.as_object_mut().map(|o| o.remove("description"));
            }
            args.fields.apply(&mut spec)?;
            let id = current["id"].as_str().unwrap_or_default();
            let body = json!({"version": current["version"], "spec": spec});
            let out = send_json(
                &client,
                &base,
                Method::PUT,
                &format!("{PATH}/{}", encode(id)),
                Some(body),
            )
            .await?;
            print_json(&out["endpoint"])
        }
        Command::Get(select) => {
            let client = select.conn.client(&admin())?;
            let endpoint = find(
                &client,
                &select.conn.base_uri()?,
                select.name.as_deref(),
                select.id.as_deref(),
            )
            .await?;
            print_json(&endpoint)
        }
        Command::List { conn, json } => {
            let client = conn.client(&admin())?;
            let base = conn.base_uri()?;
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let path = format!("{PATH}?pageSize=1000&nextPageToken={}", encode(&token));
                let page = send_json(&client, &base, Method::GET, &path, None).await?;
                all.extend(page["endpoints"].as_array().cloned().unwrap_or_default());
                match page["nextPageToken"].as_str() {
                    Some(next) if !next.is_empty() => token = next.to_owned(),
                    _ => break,
                }
            }
            if json {
                print_json(&Value::Array(all))
            } else {
                write_stdout(&table(&all))
            }
        }
        Command::Delete(select) => {
            let client = select.conn.client(&admin())?;
            let base = select.conn.base_uri()?;
            let endpoint =
                find(&client, &base, select.name.as_deref(), select.id.as_deref()).await?;
            let id = endpoint["id"].as_str().unwrap_or_default();
            let version = endpoint["version"].as_u64().unwrap_or_default();
            send_json(
                &client,
                &base,
                Method::DELETE,
                &format!("{PATH}/{}?version={version}", encode(id)),
                None,
            )
            .await?;
            outln!(
                "deleted endpoint {} ({id})",
                endpoint["spec"]["name"].as_str().unwrap_or_default()
            )
        }
    }
}

impl SpecFields {
    fn target(&self) -> Result<Option<Value>, Failure> {
        Ok(
            match (
                &self.target_namespace,
                &self.target_task_queue,
                &self.target_url,
            ) {
                (Some(ns), Some(tq), None) => {
                    Some(json!({"worker": {"namespace": ns, "taskQueue": tq}}))
                }
                (None, None, Some(url)) => Some(json!({"external": {"url": url}})),
                (None, None, None) => None,
                _ => {
                    return Err(
                        "give either --target-namespace and --target-task-queue, or --target-url"
                            .into(),
                    );
                }
            },
        )
    }

    fn apply(&self, spec: &mut Value) -> Result<(), Failure> {
        if let Some(description) = &self.description {
            spec["description"] = json!(description);
        }
        if let Some(path) = &self.description_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --description-file {}: {e}", path.display()))?;
            spec["description"] = json!(text);
        }
        if !self.allow_callers.is_empty() {
            spec["allowedCallerNamespaces"] = json!(self.allow_callers);
        }
        Ok(())
    }
}

async fn find(
    client: &crate::client::HttpClient,
    base: &http::Uri,
    name: Option<&str>,
    id: Option<&str>,
) -> Result<Value, Failure> {
    if let Some(id) = id {
        let out = send_json(
            client,
            base,
            Method::GET,
            &format!("{PATH}/{}", encode(id)),
            None,
        )
        .await?;
        return Ok(out["endpoint"].clone());
    }
    let name = name.unwrap_or_default();
    let out = send_json(
        client,
        base,
        Method::GET,
        &format!("{PATH}?name={}", encode(name)),
        None,
    )
    .await?;
    out["endpoints"]
        .as_array()
        .and_then(|list| list.first().cloned())
        .ok_or_else(|| format!("endpoint {name:?} not found").into())
}

fn print_json(value: &Value) -> Result<(), Failure> {
    outln!("{}", serde_json::to_string_pretty(value)?)
}

fn table(endpoints: &[Value]) -> String {
    let header = [
        ("NAME", Align::Left),
        ("ID", Align::Left),
        ("VERSION", Align::Right),
        ("TARGET", Align::Left),
        ("ALLOWED CALLERS", Align::Left),
    ];
    let rows: Vec<Vec<String>> = endpoints.iter().map(row).collect();
    render(&header, &rows)
}

fn row(e: &Value) -> Vec<String> {
    let target = &e["spec"]["target"];
    let target = if let Some(w) = target.get("worker") {
        format!(
            "{}/{}",
            w["namespace"].as_str().unwrap_or(""),
            w["taskQueue"].as_str().unwrap_or("")
        )
    } else {
        target["external"]["url"].as_str().unwrap_or("").to_owned()
    };
    let callers: Vec<&str> = e["spec"]["allowedCallerNamespaces"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    vec![
        e["spec"]["name"].as_str().unwrap_or("").to_owned(),
        e["id"].as_str().unwrap_or("").to_owned(),
        e["version"].to_string(),
        target,
        callers.join(","),
    ]
}
