//! The registry of Nexus endpoints for nexus-gateway.
//!
//! An admin creates [`Endpoint`]s (a name, a [`Target`] and the namespaces
//! allowed to call it) through the operator API; the gateway then serves each
//! endpoint under `/nexus/endpoints/{id}/services`.
//!
//! Request path: the gateway routes a request, extracts the endpoint id (or
//! name) from the URL, calls [`Registry::resolve`], then checks
//! [`Endpoint::allows_caller`] for the calling namespace before forwarding to
//! the endpoint's target.
//!
//! Key types:
//! - [`Registry`]: the API. Reads come from an immutable snapshot behind an
//!   `ArcSwap`, so they never lock; a lookup by id or name probes one index
//!   whose slots are a cache line each (`index.rs`). Writes are
//!   serialized, made durable in the [`Store`], then published as a new
//!   snapshot before the call returns.
//! - [`Store`] / [`RedbStore`]: crash-safe persistence in a redb file; every
//!   acknowledged write survives `kill -9`.
//! - [`Endpoint`], [`EndpointSpec`], [`Target`]: the model, serialized in the
//!   JSON shape of Temporal's operator API; [`EndpointSpec::validate`] applies
//!   Temporal's rules.
//! - [`RegistryError`]: one variant per HTTP status (400, 404, 409, 500).

mod cluster;
mod index;
mod model;
pub mod pg;
mod registry;
mod shards;
mod store;
mod validate;

pub use cluster::{
    Cluster, ClusterSecret, ClusterSpec, MAX_TEMPLATE_CHARS, NAMESPACE_PLACEHOLDER, secret_digest,
    validate_cluster_name,
};
pub use model::{Endpoint, EndpointSpec, RegistryError, Target, deserialize_version, url_prefix};
pub use registry::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, Registry};
pub use store::{Changes, RedbStore, Store};
pub use validate::{
    MAX_ALLOWED_CALLERS, MAX_DESCRIPTION_BYTES, MAX_NAME_CHARS, MAX_NAMESPACE_CHARS,
    MAX_TASK_QUEUE_CHARS, MAX_URL_CHARS,
};
