//! The admin API: endpoint registry CRUD, for admin identities only. Shapes follow Temporal's
//! operator service (`{"spec": ...}` in, `{"endpoint": ...}` out).
//!
//! - `POST   /api/v1/nexus/endpoints`                 `{"spec"}` → 200 `{"endpoint"}`
//! - `GET    /api/v1/nexus/endpoints?pageSize=&nextPageToken=&name=` → `{"endpoints", "nextPageToken"}`
//! - `GET    /api/v1/nexus/endpoints/{id}`            → `{"endpoint"}`
//! - `PUT    /api/v1/nexus/endpoints/{id}`            `{"version", "spec"}` → `{"endpoint"}`
//! - `DELETE /api/v1/nexus/endpoints/{id}?version=N`  → `{}`

use std::sync::Arc;

use http::{Method, Request, Response};
use nexus_registry::{EndpointSpec, Registry, RegistryError};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody, json};
use crate::config::{Limits, PlainHttp};
use crate::error::GatewayError;
use crate::request::{self, form_pairs};

/// What the admin API uses of the gateway.
pub(crate) struct AdminApi<'a> {
    pub registry: &'a Arc<Registry>,
    pub limits: &'a Limits,
    /// External target URLs must satisfy it.
    pub plain_http: PlainHttp,
}

#[derive(Deserialize)]
struct CreateRequest {
    spec: EndpointSpec,
}

#[derive(Deserialize)]
struct UpdateRequest {
    #[serde(deserialize_with = "number_or_string")]
    version: u64,
    spec: EndpointSpec,
}

pub async fn handle(
    api: &AdminApi<'_>,
    peer: &Peer,
    id: Option<String>,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    authz::authorize(peer, Action::ManageEndpoints)?;
    serve(api, id, request).await
}

/// The API itself, for a caller that has been authorized: [`handle`], and the console (which
/// answers with the same validation messages).
pub async fn serve(
    api: &AdminApi<'_>,
    id: Option<String>,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let path = request.uri().path().to_owned();
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_pairs(q).collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let registry = api.registry;
    match (request.method().clone(), id) {
        (Method::POST, None) => {
            let body: CreateRequest = read_json(api.limits, request).await?;
            check_target(api.plain_http, &body.spec)?;
            let endpoint = write(registry, move |r| r.create(body.spec)).await?;
            Ok(json(&serde_json::json!({ "endpoint": endpoint })))
        }
        (Method::GET, None) => {
            let page_size = match param("pageSize") {
                Some(v) => v.parse::<usize>().map_err(|_| {
                    GatewayError::bad_request(format!("invalid pageSize {v:?}: expected a number"))
                })?,
                None => 0,
            };
            let page = registry.list(
                page_size,
                param("nextPageToken").filter(|t| !t.is_empty()),
                param("name"),
            )?;
            let mut out = serde_json::json!({ "endpoints": page.endpoints });
            if let Some(token) = page.next_page_token {
                out["nextPageToken"] = token.into();
            }
            Ok(json(&out))
        }
        (Method::GET, Some(id)) => Ok(json(&serde_json::json!({ "endpoint": registry.get(&id)? }))),
        (Method::PUT, Some(id)) => {
            let body: UpdateRequest = read_json(api.limits, request).await?;
            check_target(api.plain_http, &body.spec)?;
            let endpoint = write(registry, move |r| r.update(&id, body.version, body.spec)).await?;
            Ok(json(&serde_json::json!({ "endpoint": endpoint })))
        }
        (Method::DELETE, Some(id)) => {
            let version = param("version").ok_or_else(|| {
                GatewayError::bad_request(
                    "missing version query parameter: delete needs the version you read",
                )
            })?;
            let version = version.parse::<u64>().map_err(|_| {
                GatewayError::bad_request(format!("invalid version {version:?}: expected a number"))
            })?;
            write(registry, move |r| r.delete(&id, version)).await?;
            Ok(json(&serde_json::json!({})))
        }
        (method, _) => Err(GatewayError::bad_request(format!(
            "invalid request method {method} for {path}"
        ))),
    }
}

/// Runs a registry write (a redb commit with fsync) off the async workers, so requests being
/// routed meanwhile never wait for the disk.
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

/// Temporal's JSON encodes int64 as a string; accept either.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Number(u64),
        Text(String),
    }
    match Version::deserialize(d)? {
        Version::Number(n) => Ok(n),
        Version::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

async fn read_json<T: DeserializeOwned>(
    limits: &Limits,
    request: Request<RequestBody>,
) -> Result<T, GatewayError> {
    let body = request::read_body(request.into_body(), limits).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| GatewayError::bad_request(format!("invalid request body: {error}")))?;
    check_shape(&value)?;
    serde_json::from_value(value)
        .map_err(|error| GatewayError::bad_request(format!("invalid request body: {error}")))
}

/// The shape rules serde would only report as "expected value at line 1 column 37".
fn check_shape(body: &serde_json::Value) -> Result<(), GatewayError> {
    let Some(body) = body.as_object() else {
        return Err(GatewayError::bad_request(
            "invalid request body: expected a JSON object with \"spec\"",
        ));
    };
    let Some(spec) = body.get("spec") else {
        return Err(GatewayError::bad_request(
            "invalid request body: missing \"spec\"",
        ));
    };
    let Some(target) = spec.get("target") else {
        return Err(GatewayError::bad_request(
            "invalid spec: missing \"target\": give exactly one of {\"worker\": {\"namespace\", \"taskQueue\"}} or {\"external\": {\"url\"}}",
        ));
    };
    let kinds: Vec<&str> = target
        .as_object()
        .map(|t| t.keys().map(String::as_str).collect())
        .unwrap_or_default();
    match kinds.as_slice() {
        ["worker"] | ["external"] => Ok(()),
        _ => Err(GatewayError::bad_request(format!(
            "invalid spec.target {target}: give exactly one of {{\"worker\": {{\"namespace\", \"taskQueue\"}}}} or {{\"external\": {{\"url\"}}}}"
        ))),
    }
}

/// The gateway's own rule on external target URLs, beyond the registry's: plain http only
/// where the upstream policy allows it.
fn check_target(plain_http: PlainHttp, spec: &EndpointSpec) -> Result<(), GatewayError> {
    let nexus_registry::Target::External { url } = &spec.target else {
        return Ok(());
    };
    crate::external::check_plain_http(plain_http, url).map_err(|why| {
        GatewayError::bad_request(format!("external target url {url:?} is invalid: {why}"))
    })
}
