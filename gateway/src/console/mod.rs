//! The operator console at `/console/`: endpoints, traffic between namespaces, destinations
//! and completions, served by the gateway itself from assets built into the binary.
//!
//! The same console answers on both ports, and [`crate::authz::authorize_console`] decides
//! who may use it on each: on the ops port whoever reaches it (loopback by default), read-only
//! unless `[console] writable = true`; on the data port an admin certificate.
//!
//! | Path | What |
//! |---|---|
//! | `/console/` | the page ([`assets`]) |
//! | `/console/api/...` | its JSON ([`api`]), reusing the admin APIs' own logic and messages |
//!
//! Every answer carries a strict Content-Security-Policy (no inline script or style) and
//! `nosniff`; JSON is never cached.

mod api;
mod assets;
pub(crate) mod usage;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::authz::{self, CONSOLE_HEADER, ConsoleDoor, ConsoleRequest};
use crate::body::{Body, RequestBody, empty};
use crate::error::GatewayError;
use crate::state::State;

pub const PREFIX: &str = crate::request::CONSOLE_PREFIX;
const API_PREFIX: &str = "/console/api/";

/// Answers a request below [`PREFIX`] that came in through `door`.
pub async fn serve(
    state: &Arc<State>,
    door: ConsoleDoor<'_>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let is_api = path.starts_with(API_PREFIX);
    let mut response = match answer(state, door, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if is_api { "no-store" } else { "no-cache" }),
    );
    response
}

async fn answer(
    state: &Arc<State>,
    door: ConsoleDoor<'_>,
    request: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    if !state.console.enabled {
        return Err(GatewayError::not_found(
            "the console is turned off on this gateway ([console] enabled = false)",
        ));
    }
    let headers = request.headers();
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    authz::authorize_console(
        door,
        ConsoleRequest {
            write: !matches!(*request.method(), Method::GET | Method::HEAD),
            host,
            origin: headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
            from_console: headers
                .get(CONSOLE_HEADER)
                .is_some_and(|v| v.as_bytes() == b"1"),
        },
    )?;
    let path = request.uri().path();
    if path == PREFIX {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console/"));
        return Ok(response);
    }
    if let Some(rest) = path.strip_prefix(API_PREFIX) {
        let rest = rest.to_owned();
        let writable = match door {
            ConsoleDoor::OpsPort { writable } => writable,
            ConsoleDoor::DataPort(_) => true,
        };
        return api::handle(state, writable, &rest, request).await;
    }
    assets::get(path.strip_prefix(PREFIX).unwrap_or_default(), &request)
}
