//! The admin API of trusted Temporal clusters, for admin identities only. Secrets are shown
//! once, in the answer that issues them; listings name them by id.
//!
//! - `POST   /api/v1/clusters`                 `{"name", "spec", "authentication"}` → `{"cluster", "secret"?}`
//! - `GET    /api/v1/clusters`                 → `{"clusters"}`
//! - `GET    /api/v1/clusters/{name}`          → `{"cluster"}`
//! - `PUT    /api/v1/clusters/{name}`          `{"version", "spec"}` → `{"cluster"}`
//! - `DELETE /api/v1/clusters/{name}?version=N` → `{}`
//! - `POST   /api/v1/clusters/{name}/secrets`  `{"version", "overlap"?}` → `{"cluster", "secret"}`

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use nexus_registry::{Cluster, ClusterSpec, NAMESPACE_PLACEHOLDER, Registry, RegistryError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody};
use crate::callback_policy::CallbackPolicy;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::request::{self, form_pairs};

/// What the cluster API uses of the gateway.
pub(crate) struct ClusterApi<'a> {
    pub registry: &'a Arc<Registry>,
    pub limits: &'a Limits,
    /// Completions go to the cluster's callback URLs: they must be allowed.
    pub policy: &'a CallbackPolicy,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    name: String,
    spec: ClusterSpec,
    #[serde(default)]
    authentication: Authentication,
}

/// How a cluster proves itself.
#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Authentication {
    /// A gateway-issued secret in the endpoint URLs (stock Temporal servers).
    #[default]
    Secret,
    /// Its certificate `spiffe://<td>/cluster/<name>` only.
    Mtls,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRequest {
    #[serde(deserialize_with = "nexus_registry::deserialize_version")]
    version: u64,
    spec: ClusterSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    #[serde(deserialize_with = "nexus_registry::deserialize_version")]
    version: u64,
    /// How long the current secrets keep working, e.g. `24h` (default 0: they stop now).
    #[serde(default)]
    overlap: Option<String>,
}

pub async fn handle(
    api: &ClusterApi<'_>,
    peer: &Peer,
    name: Option<String>,
    secrets: bool,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    authz::authorize(peer, Action::ManageClusters)?;
    let path = request.uri().path().to_owned();
    let version: Option<String> = request
        .uri()
        .query()
        .and_then(|q| form_pairs(q).find(|(k, _)| k == "version").map(|(_, v)| v));
    let registry = api.registry;
    match (request.method().clone(), name, secrets) {
        (Method::POST, None, false) => {
            let body: CreateRequest = read_json(api.limits, request).await?;
            check_reachable(api.policy, &body.spec)?;
            let with_secret = body.authentication == Authentication::Secret;
            let (cluster, secret) = write(registry, move |r| {
                r.create_cluster(&body.name, body.spec, with_secret)
            })
            .await?;
            let mut out = json!({ "cluster": view(&cluster) });
            if let Some(secret) = secret {
                out["secret"] = secret.into();
            }
            Ok(crate::body::json(&out))
        }
        (Method::GET, None, false) => {
            let clusters: Vec<Value> = registry.clusters().iter().map(|c| view(c)).collect();
            Ok(crate::body::json(&json!({ "clusters": clusters })))
        }
        (Method::GET, Some(name), false) => {
            let cluster = registry
                .cluster(&name)
                .ok_or(RegistryError::ClusterNotFound(name))?;
            Ok(crate::body::json(&json!({ "cluster": view(&cluster) })))
        }
        (Method::PUT, Some(name), false) => {
            let body: UpdateRequest = read_json(api.limits, request).await?;
            check_reachable(api.policy, &body.spec)?;
            let cluster = write(registry, move |r| {
                r.update_cluster(&name, body.version, body.spec)
            })
            .await?;
            Ok(crate::body::json(&json!({ "cluster": view(&cluster) })))
        }
        (Method::DELETE, Some(name), false) => {
            let version = version.ok_or_else(|| {
                GatewayError::bad_request(
                    "missing version query parameter: delete needs the version you read",
                )
            })?;
            let version = version.parse::<u64>().map_err(|_| {
                GatewayError::bad_request(format!("invalid version {version:?}: expected a number"))
            })?;
            write(registry, move |r| r.delete_cluster(&name, version)).await?;
            Ok(crate::body::json(&json!({})))
        }
        (Method::POST, Some(name), true) => {
            let body: RotateRequest = read_json(api.limits, request).await?;
            let overlap = match body.overlap.as_deref() {
                None | Some("") => Duration::ZERO,
                Some(text) => humantime::parse_duration(text).map_err(|e| {
                    GatewayError::bad_request(format!(
                        "invalid overlap {text:?}: {e} (e.g. \"24h\", \"30m\")"
                    ))
                })?,
            };
            let (cluster, secret) = write(registry, move |r| {
                r.rotate_cluster_secret(&name, body.version, overlap)
            })
            .await?;
            Ok(crate::body::json(
                &json!({ "cluster": view(&cluster), "secret": secret }),
            ))
        }
        (method, _, _) => Err(GatewayError::bad_request(format!(
            "invalid request method {method} for {path}"
        ))),
    }
}

/// A cluster as the API shows it: secrets by id and dates, never their digests.
fn view(cluster: &Cluster) -> Value {
    let secrets: Vec<Value> = cluster
        .secrets
        .iter()
        .map(|s| {
            let mut secret = json!({ "id": s.id, "createdTime": s.created_time });
            if let Some(expires) = &s.expires_time {
                secret["expiresTime"] = expires.as_str().into();
            }
            secret
        })
        .collect();
    json!({
        "name": cluster.name,
        "version": cluster.version,
        "createdTime": cluster.created_time,
        "lastModifiedTime": cluster.last_modified_time,
        "spec": cluster.spec,
        "secrets": secrets,
    })
}

/// The gateway must be allowed to deliver completions to the cluster's callback URLs, as
/// `[callbacks] allowed` says; better refused now than every completion later.
fn check_reachable(policy: &CallbackPolicy, spec: &ClusterSpec) -> Result<(), GatewayError> {
    let mut spec = spec.clone();
    spec.validate()?;
    let example = spec
        .callback_url_template
        .replace(NAMESPACE_PLACEHOLDER, "default");
    policy.check_url(&example).map_err(|refused| {
        GatewayError::bad_request(format!(
            "callbackUrlTemplate is not reachable for completions: {refused}; \
             allow its host in [callbacks] allowed"
        ))
    })
}

/// Registry writes commit to disk: off the async workers.
async fn write<T: Send + 'static>(
    registry: &Arc<Registry>,
    op: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, GatewayError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || op(&registry))
        .await
        .map_err(|e| GatewayError::internal(format!("registry write failed: {e}")))?
        .map_err(GatewayError::from)
}

async fn read_json<T: DeserializeOwned>(
    limits: &Limits,
    request: Request<RequestBody>,
) -> Result<T, GatewayError> {
    let body = request::read_body(request.into_body(), limits).await?;
    serde_json::from_slice(&body)
        .map_err(|error| GatewayError::bad_request(format!("invalid request body: {error}")))
}
