//! A data-port request, parsed once: the [`Route`] with its parameters, and the helpers every
//! handler shares to read the rest (method, query, body within its limits).
//!
//! | Route | Path |
//! |---|---|
//! | [`Route::Operation`] | `[/nexus/clusters/{secret}]/nexus/endpoints/{endpoint}/services/{service}/{operation}[/cancel]` |
//! | [`Route::Completion`] | `/nexus/callbacks/{token}` |
//! | [`Route::Completions`] | `/api/v1/callbacks[/{id}[/retry]]` |
//! | [`Route::Poll`] | `/api/v1/namespaces/{ns}/task-queues/{tq}/nexus-tasks/poll` |
//! | [`Route::Respond`] | `/api/v1/nexus-tasks/{token}/response` |
//! | [`Route::Endpoints`] | `/api/v1/nexus/endpoints[/{id}]` |
//! | [`Route::Clusters`] | `/api/v1/clusters[/{name}[/secrets]]` |
//! | [`Route::ForwardedTask`] | `/api/v1/internal/forwarded-tasks/{ns}/{tq}` |
//! | [`Route::AttributionEvents`] | `/api/v1/attribution/events` |
//! | [`Route::Console`] | `/console[/...]` |

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};

use crate::body::RequestBody;
use crate::error::{ErrorType, GatewayError};
use crate::names::{Namespace, TaskQueue};
use crate::nexus::{self, OperationPath, decode_segment};

pub const OPERATIONS_PREFIX: &str = nexus::ENDPOINTS_PREFIX;
/// A trusted cluster's operations: `/nexus/clusters/{secret}` then the endpoint's path
/// without its leading `/nexus`.
pub const CLUSTER_OPERATIONS_PREFIX: &str = "/nexus/clusters/";
pub const CLUSTERS_PATH: &str = "/api/v1/clusters";
/// Where a replica takes tasks other replicas forward: `{prefix}{namespace}/{task queue}`.
pub const FORWARDED_TASKS_PREFIX: &str = "/api/v1/internal/forwarded-tasks/";
pub const COMPLETION_PREFIX: &str = "/nexus/callbacks/";
pub const COMPLETIONS_PATH: &str = "/api/v1/callbacks";
pub const POLL_PREFIX: &str = "/api/v1/namespaces/";
pub const RESPOND_PREFIX: &str = "/api/v1/nexus-tasks/";
pub const ENDPOINTS_PATH: &str = "/api/v1/nexus/endpoints";
pub const ATTRIBUTION_EVENTS_PATH: &str = "/api/v1/attribution/events";
pub const CONSOLE_PREFIX: &str = "/console";

/// The poll path of a task queue; `namespace` and `task_queue` already percent-encoded.
pub fn poll_path(namespace: &str, task_queue: &str) -> String {
    format!("{POLL_PREFIX}{namespace}/task-queues/{task_queue}/{POLL_SUFFIX}")
}

/// The answer path of a task; `token` already percent-encoded.
pub fn respond_path(token: &str) -> String {
    format!("{RESPOND_PREFIX}{token}/{RESPOND_SUFFIX}")
}

const POLL_SUFFIX: &str = "nexus-tasks/poll";
const RESPOND_SUFFIX: &str = "response";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A Nexus start or cancel; a path that does not parse is kept with its error so that
    /// the refusal is still attributed to the caller. `secret` is a trusted cluster's, when
    /// the path came below [`CLUSTER_OPERATIONS_PREFIX`].
    Operation {
        secret: Option<String>,
        path: Result<OperationPath, GatewayError>,
    },
    Completion(Result<String, GatewayError>),
    Completions(CompletionsRoute),
    Poll {
        namespace: Namespace,
        task_queue: TaskQueue,
    },
    Respond {
        token: String,
    },
    Endpoints {
        id: Option<String>,
    },
    Clusters {
        name: Option<String>,
        /// `/secrets`: issue a new secret.
        secrets: bool,
    },
    AttributionEvents,
    /// A task another replica forwards to this one's workers.
    ForwardedTask {
        namespace: Namespace,
        task_queue: TaskQueue,
    },
    /// The operator console, its page and its JSON.
    Console,
}

/// The admin API of the completion spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionsRoute {
    List,
    Retry(u64),
    Drop(u64),
    /// A path or method this API does not serve: 400 naming them.
    Invalid(String),
}

impl Route {
    /// Parses a path and method; unknown paths are 404, malformed segments 400.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, GatewayError> {
        let no_route = || GatewayError::not_found(format!("no route for {method} {path}"));
        if path.starts_with(OPERATIONS_PREFIX) {
            return Ok(Route::Operation {
                secret: None,
                path: nexus::parse_operation_path(path, query),
            });
        }
        if let Some(rest) = path.strip_prefix(CLUSTER_OPERATIONS_PREFIX) {
            let (secret, below) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Route::Operation {
                secret: Some(secret.to_owned()),
                path: nexus::parse_operation_path(&format!("/nexus/{below}"), query),
            });
        }
        if let Some(rest) = path.strip_prefix(CLUSTERS_PATH) {
            let segments: Vec<&str> = rest.split('/').skip(1).collect();
            return match (rest.is_empty(), segments.as_slice()) {
                (true, _) | (false, [""]) => Ok(Route::Clusters {
                    name: None,
                    secrets: false,
                }),
                (false, [name]) => Ok(Route::Clusters {
                    name: Some(decode_segment(name, "cluster name")?),
                    secrets: false,
                }),
                (false, [name, "secrets"]) => Ok(Route::Clusters {
                    name: Some(decode_segment(name, "cluster name")?),
                    secrets: true,
                }),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
        }
        if let Some(rest) = path.strip_prefix(COMPLETION_PREFIX) {
            let token = match rest.split('/').collect::<Vec<_>>().as_slice() {
                [token] => decode_segment(token, "callback token"),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
            return Ok(Route::Completion(token));
        }
        if path
            .strip_prefix(COMPLETIONS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            return Ok(Route::Completions(completions_route(method, path)?));
        }
        if let Some(rest) = path.strip_prefix(FORWARDED_TASKS_PREFIX) {
            return match rest.split('/').collect::<Vec<_>>().as_slice() {
                [ns, tq] => Ok(Route::ForwardedTask {
                    namespace: decode_segment(ns, "namespace")?.into(),
                    task_queue: decode_segment(tq, "task queue")?.into(),
                }),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
        }
        if path == ATTRIBUTION_EVENTS_PATH {
            return Ok(Route::AttributionEvents);
        }
        if is_console(path) {
            return Ok(Route::Console);
        }
        if let Some(rest) = path.strip_prefix(POLL_PREFIX) {
            let queue = rest
                .strip_suffix(POLL_SUFFIX)
                .and_then(|q| q.strip_suffix('/'));
            let segments: Vec<&str> = queue.map(|q| q.split('/').collect()).unwrap_or_default();
            return match segments.as_slice() {
                [ns, "task-queues", tq] => Ok(Route::Poll {
                    namespace: decode_segment(ns, "namespace")?.into(),
                    task_queue: decode_segment(tq, "task queue")?.into(),
                }),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
        }
        if let Some(rest) = path.strip_prefix(RESPOND_PREFIX) {
            let segments: Vec<&str> = rest.split('/').collect();
            return match segments.as_slice() {
                [token, suffix] if *suffix == RESPOND_SUFFIX => Ok(Route::Respond {
                    token: decode_segment(token, "task token")?,
                }),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
        }
        if let Some(rest) = path.strip_prefix(ENDPOINTS_PATH) {
            return match rest.strip_prefix('/') {
                _ if rest.is_empty() => Ok(Route::Endpoints { id: None }),
                Some("") => Ok(Route::Endpoints { id: None }),
                Some(id) if !id.contains('/') => Ok(Route::Endpoints {
                    id: Some(decode_segment(id, "endpoint id")?),
                }),
                _ => Err(GatewayError::not_found(format!("no route for {path}"))),
            };
        }
        Err(no_route())
    }

    /// The route's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Operation { .. } => "operation",
            Route::Completion(_) => "completion",
            Route::Completions(_) => "callbacks-admin",
            Route::Poll { .. } => "poll",
            Route::Respond { .. } => "respond",
            Route::Endpoints { .. } | Route::Clusters { .. } => "admin",
            Route::AttributionEvents => "attribution",
            Route::ForwardedTask { .. } => "forwarded-task",
            Route::Console => "console",
        }
    }
}

/// Whether `path` is the console's: `/console` or below it.
pub fn is_console(path: &str) -> bool {
    path.strip_prefix(CONSOLE_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` fit for logs: a cluster secret in it is replaced.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix(CLUSTER_OPERATIONS_PREFIX) {
        Some(rest) => {
            let below = rest.split_once('/').map_or("", |(_, below)| below);
            format!("{CLUSTER_OPERATIONS_PREFIX}<secret>/{below}").into()
        }
        None => path.into(),
    }
}

fn completions_route(method: &Method, path: &str) -> Result<CompletionsRoute, GatewayError> {
    let rest = path.strip_prefix(COMPLETIONS_PATH).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let parse_id = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| GatewayError::bad_request(format!("invalid completion id {s:?}")))
    };
    Ok(match (method.clone(), segments.as_slice()) {
        (Method::GET, []) => CompletionsRoute::List,
        (Method::POST, [id, "retry"]) => CompletionsRoute::Retry(parse_id(id)?),
        (Method::DELETE, [id]) => CompletionsRoute::Drop(parse_id(id)?),
        (method, _) => {
            CompletionsRoute::Invalid(format!("invalid request method {method} for {path}"))
        }
    })
}

pub fn require_method(
    request: &Request<RequestBody>,
    allowed: &[Method],
) -> Result<(), GatewayError> {
    if allowed.contains(request.method()) {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!(
            "invalid request method {}: expected {}",
            request.method(),
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

/// Reads a whole body within the size cap and the read timeout.
pub async fn read_body(
    body: RequestBody,
    limits: &crate::config::Limits,
) -> Result<Bytes, GatewayError> {
    let max = limits.max_body_bytes;
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(
            GatewayError::bad_request(format!("request body exceeds the limit of {max} bytes")),
        ),
        Ok(Err(error)) => Err(GatewayError::bad_request(format!(
            "request body could not be read: {error}"
        ))),
        Err(_) => Err(GatewayError::new(
            ErrorType::RequestTimeout,
            format!(
                "request body not received within {:?}",
                limits.body_read_timeout
            ),
        )),
    }
}

/// `application/x-www-form-urlencoded` pairs of a query string, keys and values decoded.
pub fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k), form_decode(v))
    })
}

pub fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The value of query parameter `name`, if present.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_pairs(query?).find(|(k, _)| k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Result<Route, u16> {
        Route::parse(&method, path, None).map_err(|e| e.kind.status().as_u16())
    }

    #[test]
    fn every_route_and_its_parameters() {
        let post = Method::POST;
        assert!(matches!(
            route(post.clone(), "/nexus/endpoints/e/services/s/o"),
            Ok(Route::Operation { secret: None, path: Ok(p) }) if p.service == "s" && p.operation == "o"
        ));
        assert!(matches!(
            route(post.clone(), "/nexus/endpoints/e/services"),
            Ok(Route::Operation { path: Err(_), .. })
        ));
        assert!(matches!(
            route(post.clone(), "/nexus/clusters/ngs_x/endpoints/e/services/s/o/cancel"),
            Ok(Route::Operation { secret: Some(s), path: Ok(p) })
                if s == "ngs_x" && p.endpoint == "e" && p.below_prefix == "/s/o/cancel"
        ));
        assert!(matches!(
            route(post.clone(), "/nexus/clusters/ngs_x/other"),
            Ok(Route::Operation { secret: Some(_), path: Err(e) }) if !e.to_string().contains("ngs_x")
        ));
        assert_eq!(
            loggable_path("/nexus/clusters/ngs_x/endpoints/e/services/s/o"),
            "/nexus/clusters/<secret>/endpoints/e/services/s/o"
        );
        assert_eq!(
            route(Method::GET, "/api/v1/clusters/east"),
            Ok(Route::Clusters {
                name: Some("east".into()),
                secrets: false
            })
        );
        assert_eq!(
            route(post.clone(), "/api/v1/clusters/east/secrets"),
            Ok(Route::Clusters {
                name: Some("east".into()),
                secrets: true
            })
        );
        assert_eq!(
            route(Method::GET, "/api/v1/clusters"),
            Ok(Route::Clusters {
                name: None,
                secrets: false
            })
        );
        assert_eq!(
            route(post.clone(), "/nexus/callbacks/t%2F1"),
            Ok(Route::Completion(Ok("t/1".into())))
        );
        assert_eq!(
            route(
                post.clone(),
                "/api/v1/namespaces/b/task-queues/q%20x/nexus-tasks/poll"
            ),
            Ok(Route::Poll {
                namespace: "b".into(),
                task_queue: "q x".into()
            })
        );
        assert_eq!(
            route(post.clone(), "/api/v1/nexus-tasks/abc/response"),
            Ok(Route::Respond {
                token: "abc".into()
            })
        );
        assert_eq!(
            route(Method::GET, "/api/v1/nexus/endpoints"),
            Ok(Route::Endpoints { id: None })
        );
        assert_eq!(
            route(Method::GET, "/api/v1/nexus/endpoints/9b1f"),
            Ok(Route::Endpoints {
                id: Some("9b1f".into())
            })
        );
        assert_eq!(
            route(Method::GET, "/api/v1/attribution/events"),
            Ok(Route::AttributionEvents)
        );
        assert_eq!(
            route(Method::GET, "/api/v1/callbacks"),
            Ok(Route::Completions(CompletionsRoute::List))
        );
        assert_eq!(
            route(post.clone(), "/api/v1/callbacks/7/retry"),
            Ok(Route::Completions(CompletionsRoute::Retry(7)))
        );
        assert_eq!(
            route(Method::DELETE, "/api/v1/callbacks/7"),
            Ok(Route::Completions(CompletionsRoute::Drop(7)))
        );
        assert_eq!(route(Method::DELETE, "/api/v1/callbacks/x"), Err(400));
        assert_eq!(route(Method::GET, "/console"), Ok(Route::Console));
        assert_eq!(
            route(Method::POST, "/console/api/endpoints"),
            Ok(Route::Console)
        );
        assert_eq!(route(Method::GET, "/consoles"), Err(404));
    }

    #[test]
    fn the_worker_clients_paths_are_the_routes() {
        assert_eq!(
            route(Method::POST, &poll_path("b", "q%2Fx")),
            Ok(Route::Poll {
                namespace: "b".into(),
                task_queue: "q/x".into()
            })
        );
        assert_eq!(
            route(Method::POST, &respond_path("t1")),
            Ok(Route::Respond { token: "t1".into() })
        );
    }

    #[test]
    fn unknown_and_malformed_paths() {
        for (path, status) in [
            ("/", 404),
            ("/api/v1/namespaces/b/task-queues/q/poll", 404),
            ("/api/v1/nexus-tasks/abc", 404),
            ("/api/v1/nexus/endpoints/a/b", 404),
            (
                "/api/v1/namespaces/b%zz/task-queues/q/nexus-tasks/poll",
                400,
            ),
            ("/api/v1/nexus/endpoints/%FF", 400),
        ] {
            assert_eq!(route(Method::POST, path), Err(status), "{path}");
        }
    }

    #[test]
    fn query_keys_and_values_are_decoded() {
        let pairs: Vec<_> = form_pairs("%63allback=a%2Fb&x=1+2&flag").collect();
        assert_eq!(
            pairs,
            [
                ("callback".to_owned(), "a/b".to_owned()),
                ("x".to_owned(), "1 2".to_owned()),
                ("flag".to_owned(), String::new())
            ]
        );
        assert_eq!(query_param(Some("a=1&b=2"), "b").as_deref(), Some("2"));
        assert_eq!(query_param(None, "b"), None);
    }
}
