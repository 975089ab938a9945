//! The worker API: workers of a namespace long-poll its task queues for Nexus tasks and post
//! back the HTTP answer a Nexus handler would have given.
//!
//! - `POST /api/v1/namespaces/{ns}/task-queues/{tq}/nexus-tasks/poll` → 200 with a task, or
//!   204 when none came within the poll's wait (`Request-Timeout`, at most 60 s).
//! - `POST /api/v1/nexus-tasks/{token}/response` with `Nexus-Task-Status` → 200. With
//!   `?next-task-queue={tq}` it also long-polls `tq` and answers like a poll (200 with the next
//!   task, or 204), saving a round trip per task.

use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::authz::{self, Action, Peer};
use crate::body::{Body, RequestBody, empty, full};
use crate::config::Limits;
use crate::error::GatewayError;
use crate::matching::Matching;
use crate::matching::{QueueKey, TaskResponse};
use crate::names::{Namespace, TaskQueue};
use crate::nexus::{self, headers};
use crate::request;

/// What the worker API uses of the gateway.
pub(crate) struct WorkerApi<'a> {
    pub matching: &'a Matching,
    pub limits: &'a Limits,
    /// Cancelled when the gateway stops: long polls end at once.
    pub shutdown: &'a tokio_util::sync::CancellationToken,
}

pub async fn poll(
    api: &WorkerApi<'_>,
    peer: &Peer,
    namespace: Namespace,
    task_queue: TaskQueue,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    authz::authorize(
        peer,
        Action::PollQueue {
            namespace: &namespace,
        },
    )?;
    request::require_method(&request, &[Method::POST])?;
    let key = QueueKey {
        namespace,
        task_queue,
    };
    let wait = poll_wait(api, request.headers())?;
    poll_queue(api, &key, wait).await
}

fn poll_wait(api: &WorkerApi<'_>, h: &HeaderMap) -> Result<Duration, GatewayError> {
    let max = api.matching.settings().max_poll;
    Ok(nexus::request_timeout(h)?.map_or(max, |t| t.min(max)))
}

/// Long-polls `key`: 200 with the next task, or 204 when none came within `wait`.
async fn poll_queue(
    api: &WorkerApi<'_>,
    key: &QueueKey,
    wait: Duration,
) -> Result<Response<Body>, GatewayError> {
    let task = tokio::select! {
        task = api.matching.poll(key, wait) => task,
        () = api.shutdown.cancelled() => None,
    };
    let Some(task) = task else {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        return Ok(response);
    };
    task.queue_wait.end();
    let mut response = Response::new(full(task.body));
    *response.headers_mut() = task.headers;
    // The worker gets what is left of the gateway's own wait, so its answer arrives in time.
    let left = task
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    response
        .headers_mut()
        .insert(headers::REQUEST_TIMEOUT, nexus::timeout_header(left));
    Ok(response)
}

pub async fn respond(
    api: &WorkerApi<'_>,
    peer: &Peer,
    token: String,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let namespace = authz::authorize(peer, Action::AnswerTasks)?.to_owned();
    request::require_method(&request, &[Method::POST])?;
    let status = task_status(request.headers())?;
    // `?next-task-queue=TQ` asks for the next task of TQ (own namespace) in the answer, saving
    // the worker a separate poll.
    let next = request::query_param(request.uri().query(), "next-task-queue").map(|tq| QueueKey {
        namespace: Namespace::new(namespace.clone()),
        task_queue: tq.into(),
    });
    let wait = poll_wait(api, request.headers())?;
    let (parts, body) = request.into_parts();
    let body = request::read_body(body, api.limits).await?;
    let mut relayed = parts.headers;
    nexus::keep_relayed(&mut relayed);
    api.matching.complete(
        &token,
        |owner| authz::authorize(peer, Action::AnswerTask { owner }).map(drop),
        TaskResponse {
            status,
            headers: relayed,
            body,
        },
    )?;
    match next {
        Some(key) if !key.task_queue.is_empty() => poll_queue(api, &key, wait).await,
        _ => Ok(Response::new(empty())),
    }
}

fn task_status(h: &HeaderMap) -> Result<StatusCode, GatewayError> {
    let value = h.get(headers::TASK_STATUS).ok_or_else(|| {
        GatewayError::bad_request("missing Nexus-Task-Status header: the handler's HTTP status")
    })?;
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            GatewayError::bad_request(format!(
                "invalid Nexus-Task-Status {:?}: expected an HTTP status from 200 to 599",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// `POST /api/v1/internal/forwarded-tasks/{ns}/{tq}`: a task another replica forwarded, for
/// lack of a worker of its own. Dispatched to this replica's workers under the caller's
/// deadline; the answer is the worker's, relayed back as is.
pub async fn forwarded(
    api: &WorkerApi<'_>,
    signing: &ring::hmac::Key,
    peer: &Peer,
    namespace: Namespace,
    task_queue: TaskQueue,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    request::require_method(&request, &[Method::POST])?;
    let key = QueueKey {
        namespace,
        task_queue,
    };
    let (parts, body) = request.into_parts();
    let body = request::read_body(body, api.limits).await?;
    let deadline = crate::replica_forward::verify(signing, &key, &parts.headers, &body);
    authz::authorize(
        peer,
        Action::AcceptForwardedTask {
            signed: deadline.is_ok(),
        },
    )?;
    let deadline = deadline.map_err(GatewayError::unauthenticated)?;
    let mut headers = parts.headers;
    headers.remove(crate::replica_forward::SIGNATURE);
    let token = headers
        .get(crate::headers::TASK_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| GatewayError::bad_request("a forwarded task needs its task token"))?;
    let task = crate::matching::Task {
        token,
        headers,
        body,
        deadline,
        queue_wait: Default::default(),
    };
    let answer = api.matching.dispatch(&key, task).await?;
    let mut response = Response::new(crate::body::full(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    nexus::keep_relayed(response.headers_mut());
    Ok(response)
}
