//! nexus-gateway: a cross-namespace Nexus RPC gateway.
//!
//! Callers in one namespace invoke Nexus operations handled in another, over HTTPS with mutual
//! TLS. The client certificate says which namespace is calling; the URL names an endpoint from
//! the registry; the endpoint's target is a task queue that workers long-poll.
//!
//! A request reads top to bottom; each file imports only those below it (checked by
//! `tests/layers.rs`):
//!
//! ```text
//! TCP accept → rustls handshake → Peer (identity from the URI SAN)          server.rs
//!   → HTTP/1.1 by hand, or hyper (HTTP/2, the rest)                         server_h1.rs
//!   → Route, parsed once                                                     routes.rs, request.rs
//!   → handler, which asks authz::authorize(peer, action) first              authz.rs
//!      Nexus start/cancel  → registry.resolve → caller allowed? → limits     operations.rs, inbound.rs
//!                          → callback URL sealed (allowed addresses only)    callback_policy.rs
//!                          → worker target:   matching → polling worker      matching.rs
//!                          → external target: lane → send → classify         external.rs, upstream.rs
//!      completion          → token → spool → 200 → delivery (lane → send)    completions.rs, callbacks.rs
//!      worker poll/respond → matching                                        worker_api.rs
//!      admin, metering     → registry CRUD, attribution reader               admin.rs, metering.rs
//!      trusted clusters    → cluster CRUD; caller namespace from callback    cluster_admin.rs
//!                            URL, operation tokens wrapped for cancels       cluster_tokens.rs
//!   → every start, cancel and completion → attribution record → answer       metering.rs, attribution/
//!   → outcomes (breaker, attribution, registry errors) from one table         outcome.rs
//!   → errors become Nexus failure responses in one place                     error.rs
//! ops port (plain HTTP): /healthz /readyz /metrics                           ops_port.rs, metrics.rs
//! sampled starts, cancels and completions → spans → OTLP/HTTP collector     telemetry/
//! ```
//!
//! The worker client ([`worker::Worker`]) serves any Nexus HTTP handler from a task queue;
//! [`worker::HandlerUrl`] bridges a task queue to a handler at a URL.

pub(crate) mod admin;
pub mod attribution;
pub(crate) mod authz;
pub mod body;
pub(crate) mod buffers;
pub mod callback_policy;
pub(crate) mod callback_token;
pub(crate) mod callbacks;
pub mod cli;
pub mod client;
pub(crate) mod closing;
pub(crate) mod cluster_admin;
pub(crate) mod cluster_tokens;
pub(crate) mod completions;
pub mod config;
pub mod config_file;
pub(crate) mod console;
pub mod demo;
pub mod error;
pub mod external;
pub(crate) mod handshakes;
pub mod headers;
pub mod inbound;
pub mod matching;
pub(crate) mod metering;
pub(crate) mod metrics;
pub mod names;
pub mod nexus;
pub(crate) mod operations;
pub(crate) mod ops_port;
pub(crate) mod outcome;
pub(crate) mod proxy_client;
pub(crate) mod proxy_h1;
pub mod reload;
pub(crate) mod replica_forward;
pub(crate) mod request;
pub(crate) mod routes;
pub mod server;
pub(crate) mod server_h1;
pub(crate) mod state;
pub(crate) mod str_key;
pub mod telemetry;
pub(crate) mod traffic;
pub(crate) mod upstream;
pub mod worker;
pub(crate) mod worker_api;

pub use config::{Config, Limits};
pub use error::{ErrorType, GatewayError};
pub use server::{App, StartError};
