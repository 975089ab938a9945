//! External targets: start and cancel proxied to a Nexus HTTP handler at a URL, through the
//! destination's outbound lane (bounded buffer, concurrency, rate limit, circuit breaker).

use std::time::Duration;

use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt;
use nexus_outbound_queue::{LaneRef, Rejection};
use tokio::time::Instant;

use crate::body::{Body, BodyFault, BodyWatch};
pub use crate::config::PlainHttp;
use crate::error::GatewayError;
use crate::nexus::{self, headers};
use crate::state::State;
use crate::upstream::{self, SendError};

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` may be used under the plain-http policy; why not if not.
pub fn check_plain_http(policy: PlainHttp, url: &str) -> Result<(), &'static str> {
    match url.parse::<Uri>() {
        Ok(uri) => plain_http_allowed(policy, &uri),
        Err(_) => Ok(()), // the registry's rules name what is wrong with it
    }
}

/// [`check_plain_http`] of a parsed URI (the request path parses it once).
fn plain_http_allowed(policy: PlainHttp, uri: &Uri) -> Result<(), &'static str> {
    if uri.scheme_str() != Some("http") {
        return Ok(());
    }
    let allowed = match policy {
        PlainHttp::Never => false,
        PlainHttp::Loopback => is_loopback(uri.host().unwrap_or_default()),
        PlainHttp::Always => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(match policy {
            PlainHttp::Never => {
                "plain http is not allowed (--plain-http-upstreams never; [upstream] plain_http)"
            }
            _ => {
                "plain http is allowed only to loopback hosts unless --plain-http-upstreams always ([upstream] plain_http = \"always\")"
            }
        })
    }
}

/// One request to forward.
pub struct Forward<'a> {
    pub kind: &'static str,
    pub caller: &'a str,
    pub endpoint_name: &'a str,
    pub base_url: &'a str,
    /// Raw path and query below the endpoint prefix (callback already rewritten).
    pub below_prefix: &'a str,
    /// Headers to send (already filtered), without `Request-Timeout`.
    pub headers: HeaderMap,
    /// The caller's body, capped ([`crate::body::CappedBody`]); `watch` says how it ended.
    pub body: Body,
    pub watch: std::sync::Arc<BodyWatch>,
    /// When the gateway stops waiting.
    pub deadline: Instant,
    /// Ends when the request gets its slot in the lane (recorded only when traced).
    pub lane_wait: crate::telemetry::Span,
}

pub async fn forward(state: &State, f: Forward<'_>) -> Result<Response<Body>, GatewayError> {
    let uri = upstream_uri(f.base_url, f.below_prefix)?;
    // Without any userinfo, so that no credential reaches a lane key, a metric or a message.
    let host = uri
        .authority()
        .and_then(|a| a.as_str().rsplit('@').next())
        .unwrap_or_default()
        .to_owned();
    if let Err(why) = plain_http_allowed(state.upstream.plain_http, &uri) {
        return Err(GatewayError::unavailable(format!(
            "endpoint {:?} targets {host} over plain http, which this gateway refuses: {why}",
            f.endpoint_name
        )));
    }
    let lane = LaneRef {
        kind: f.kind,
        source: f.caller,
        destination: &host,
    };
    let mut request = Request::post(uri).body(f.body).expect("valid request");
    *request.headers_mut() = f.headers;
    let left = f
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    request
        .headers_mut()
        .insert(headers::REQUEST_TIMEOUT, nexus::timeout_header(left));
    let watch = &f.watch;
    let sent = upstream::send(
        &state.outbound,
        lane,
        f.deadline,
        state.proxy.request(request),
        &CallerBody(watch),
        f.lane_wait,
    )
    .await;
    let response = match sent {
        Ok(response) => response,
        Err(SendError::Refused(rejection)) => return Err(rejected(&host, rejection)),
        Err(SendError::NoSlot) => {
            return Err(GatewayError::upstream_timeout(format!(
                "no slot to {host} before the deadline: its lane is saturated"
            )));
        }
        Err(SendError::NotTheDestination(_)) => {
            return Err(match watch.fault() {
                Some(fault) => caller_fault(fault),
                None => GatewayError::new(
                    crate::ErrorType::RequestTimeout,
                    "request body not received before the deadline",
                ),
            });
        }
        Err(SendError::Unreachable(error)) => {
            return Err(GatewayError::unavailable(format!(
                "external handler {host} unreachable: {}",
                upstream::root_cause(error.as_ref())
            ))
            .from_upstream());
        }
        Err(SendError::TimedOut) => {
            return Err(GatewayError::upstream_timeout(format!(
                "external handler {host} did not answer before the deadline"
            ))
            .from_upstream());
        }
    };
    if !crate::proxy_h1::transfer_coding_relayable(response.headers()) {
        // hyper's client (large bodies) takes the chunked layer off and leaves the rest.
        return Err(GatewayError::unavailable(format!(
            "external handler {host} answered with a transfer coding other than chunked, \
             which the gateway cannot relay"
        ))
        .from_upstream());
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    let mut out = Response::new(body.map_err(Into::into).boxed());
    *out.status_mut() = status;
    *out.headers_mut() = parts.headers;
    nexus::keep_relayed(out.headers_mut());
    Ok(out)
}

/// A send to an external target failed by the caller's doing when the caller's body broke
/// off, or was still arriving at the deadline.
struct CallerBody<'a>(&'a BodyWatch);

impl upstream::Fault for CallerBody<'_> {
    fn senders_fault(&self, timed_out: bool, _: Option<&crate::body::BoxError>) -> bool {
        self.0.fault().is_some() || (timed_out && !self.0.ended())
    }
}

fn caller_fault(fault: BodyFault) -> GatewayError {
    match fault {
        BodyFault::TooLarge { max } => {
            GatewayError::bad_request(format!("request body exceeds the limit of {max} bytes"))
        }
        BodyFault::Unreadable(error) => {
            GatewayError::bad_request(format!("request body could not be read: {error}"))
        }
    }
}

fn rejected(host: &str, rejection: Rejection) -> GatewayError {
    let after = rejection.retry_after();
    let error = match rejection {
        Rejection::LaneFull { .. } => GatewayError::resource_exhausted(format!(
            "too many requests waiting for {host}; retry later"
        )),
        Rejection::BreakerOpen { .. } => GatewayError::unavailable(format!(
            "{host} is failing; requests to it are paused (circuit breaker open)"
        )),
    };
    error.with_retry_after(after)
}

/// `base` (the endpoint's URL) with the path below the prefix appended.
pub fn upstream_uri(base: &str, below_prefix: &str) -> Result<Uri, GatewayError> {
    let base = base.trim_end_matches('/');
    let mut joined = String::with_capacity(base.len() + below_prefix.len());
    joined.push_str(base);
    joined.push_str(below_prefix);
    joined
        .parse()
        .map_err(|e| GatewayError::internal(format!("cannot build upstream URL {joined:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "[::2]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn joins_base_and_path() {
        let uri = upstream_uri(
            "https://h:7243/namespaces/n/task-queues/q/nexus-services/",
            "/svc/op?callback=x",
        )
        .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://h:7243/namespaces/n/task-queues/q/nexus-services/svc/op?callback=x"
        );
    }
}
