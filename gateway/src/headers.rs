//! Header names of Nexus RPC and of the gateway's worker API, and what HTTP/1.1's own
//! headers say.

use http::{HeaderMap, HeaderName};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("nexus-request-id");
pub const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("request-timeout");
pub const OPERATION_TOKEN: HeaderName = HeaderName::from_static("nexus-operation-token");
pub const OPERATION_ID: HeaderName = HeaderName::from_static("nexus-operation-id");
pub const OPERATION_STATE: HeaderName = HeaderName::from_static("nexus-operation-state");
pub const REQUEST_RETRYABLE: HeaderName = HeaderName::from_static("nexus-request-retryable");
/// Set by the gateway from the verified certificate; a caller-supplied value is dropped.
pub const CALLER_NAMESPACE: HeaderName = HeaderName::from_static("nexus-caller-namespace");
/// Gateway-internal headers of the worker API all start with this prefix.
pub const TASK_PREFIX: &str = "nexus-task-";
pub const TASK_TOKEN: HeaderName = HeaderName::from_static("nexus-task-token");
pub const TASK_PATH: HeaderName = HeaderName::from_static("nexus-task-path");
pub const TASK_KIND: HeaderName = HeaderName::from_static("nexus-task-kind");
pub const TASK_ENDPOINT: HeaderName = HeaderName::from_static("nexus-task-endpoint");
pub const TASK_ENDPOINT_ID: HeaderName = HeaderName::from_static("nexus-task-endpoint-id");
pub const TASK_STATUS: HeaderName = HeaderName::from_static("nexus-task-status");

/// Whether a comma-separated `Connection` header lists `token` (`close`, say).
pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
