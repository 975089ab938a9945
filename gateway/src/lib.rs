//! nexus-gateway: a cross-namespace Nexus RPC gateway.
//!
//! Callers in one namespace invoke Nexus operations handled in another, over HTTPS with mutual
//! TLS. The client certificate says which namespace is calling; the URL names an endpoint from
//! the registry; the endpoint's target is a task queue that workers long-poll.
//!
//! ```text
//! TCP accept → rustls handshake (client cert required) → PeerIdentity      server.rs
//!   → hyper (HTTP/1.1 + HTTP/2 by ALPN) → routes::handle                  routes.rs
//!      Nexus start/cancel → registry.resolve → caller allowed?             operations.rs
//!                         → matching[(ns, task queue)] → poller → answer   matching.rs
//!      worker poll/respond → matching                                      worker_api.rs
//!      admin               → registry CRUD                                 admin.rs
//!   → errors become Nexus failure responses in one place                   error.rs
//! ops port (plain HTTP): /healthz /readyz /metrics                          ops.rs
//! ```
//!
//! The worker client ([`worker::Worker`]) serves any Nexus HTTP handler from a task queue;
//! [`worker::HandlerUrl`] bridges a task queue to a handler at a URL.

pub(crate) mod admin;
pub mod attribution;
pub(crate) mod authz;
pub mod body;
pub mod callback_policy;
pub(crate) mod callback_token;
pub(crate) mod callbacks;
pub mod cli;
pub mod client;
pub(crate) mod completions;
pub mod config;
pub mod config_file;
pub mod demo;
pub mod error;
pub mod external;
pub(crate) mod handshakes;
pub mod headers;
pub mod inbound;
pub mod matching;
pub(crate) mod metering;
pub(crate) mod metrics;
pub mod nexus;
pub(crate) mod operations;
pub(crate) mod ops_port;
pub(crate) mod outcome;
pub mod reload;
pub(crate) mod request;
pub(crate) mod routes;
pub mod server;
pub(crate) mod state;
pub(crate) mod upstream;
pub mod worker;
pub(crate) mod worker_api;

pub use config::{Config, Limits};
pub use error::{ErrorType, GatewayError};
pub use server::{App, StartError};
