//! Matching across replicas: a replica with no worker polling a task queue forwards the task
//! to a replica that has one (as Temporal's matching partitions forward), over TLS to its
//! data port. The task is signed with a key every replica derives from the shared callback
//! key, binding queue, deadline, task token and body, so only a replica can forward and
//! nothing can be changed on the way. The receiving replica dispatches it to its worker under
//! the caller's deadline and answers with the worker's answer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use ring::hmac;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::matching::{QueueKey, Task, TaskResponse};

/// `<deadline, ms since the epoch>.<signature>` on a forwarded task.
pub const SIGNATURE: HeaderName = HeaderName::from_static("nexus-gateway-forwarded");
/// Longest deadline a forwarded task may carry: anything further out is not a caller's.
const MAX_AHEAD_MS: u64 = 10 * 60 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn signed(key: &QueueKey, deadline_ms: u64, token: &str, body: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = Vec::new();
    for part in [
        key.namespace.as_bytes(),
        key.task_queue.as_bytes(),
        &deadline_ms.to_be_bytes(),
        token.as_bytes(),
        digest.as_ref(),
    ] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn token_of(headers: &HeaderMap) -> &str {
    headers
        .get(crate::headers::TASK_TOKEN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Sends `task` to the replica at `base_url` and returns its worker's answer.
pub async fn forward(
    client: &crate::proxy_client::ProxyClient,
    signing: &hmac::Key,
    base_url: &str,
    key: &QueueKey,
    task: Task,
) -> Result<TaskResponse, GatewayError> {
    let left = task.deadline.saturating_duration_since(Instant::now());
    let deadline_ms = now_ms() + left.as_millis() as u64;
    let tag = hmac::sign(
        signing,
        &signed(key, deadline_ms, token_of(&task.headers), &task.body),
    );
    let uri = format!(
        "{}{}{}/{}",
        base_url.trim_end_matches('/'),
        crate::request::FORWARDED_TASKS_PREFIX,
        crate::worker::encode(&key.namespace),
        crate::worker::encode(&key.task_queue)
    );
    let mut request = Request::post(uri)
        .body(crate::body::full(task.body))
        .map_err(|e| GatewayError::internal(format!("forwarding a task: {e}")))?;
    *request.headers_mut() = task.headers;
    let signature = format!("{deadline_ms}.{}", B64.encode(tag.as_ref()));
    request
        .headers_mut()
        .insert(SIGNATURE, HeaderValue::from_str(&signature).expect("ASCII"));
    let unreachable = |e: &dyn std::fmt::Display| {
        GatewayError::unavailable(format!(
            "the replica serving task queue {:?} of namespace {:?} cannot be reached: {e}",
            key.task_queue, key.namespace
        ))
        .with_retry_after(std::time::Duration::from_secs(1))
    };
    let response = tokio::time::timeout_at(task.deadline, client.request(request))
        .await
        .map_err(|_| {
            GatewayError::upstream_timeout(format!(
                "no worker of namespace {:?} answered on task queue {:?} before the deadline",
                key.namespace, key.task_queue
            ))
        })?
        .map_err(|e| unreachable(&e))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout_at(task.deadline, body.collect())
        .await
        .map_err(|_| GatewayError::upstream_timeout("the forwarded answer came too late"))?
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok(TaskResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Checks a forwarded task's signature; returns its deadline. `Err` says why not.
pub fn verify(
    signing: &hmac::Key,
    key: &QueueKey,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Instant, String> {
    let value = headers
        .get(&SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .ok_or("no replica signature")?;
    let (deadline, tag) = value.split_once('.').ok_or("malformed replica signature")?;
    let deadline_ms: u64 = deadline
        .parse()
        .map_err(|_| "malformed replica signature")?;
    let tag = B64.decode(tag).map_err(|_| "malformed replica signature")?;
    hmac::verify(
        signing,
        &signed(key, deadline_ms, token_of(headers), body),
        &tag,
    )
    .map_err(|_| "the replica signature does not verify")?;
    let now = now_ms();
    if deadline_ms <= now || deadline_ms > now + MAX_AHEAD_MS {
        return Err("the forwarded task's deadline is past or too far ahead".into());
    }
    Ok(Instant::now() + std::time::Duration::from_millis(deadline_ms - now))
}
