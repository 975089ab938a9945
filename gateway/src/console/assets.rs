//! The console's page: one HTML file, one JavaScript module and one stylesheet, built into the
//! binary so that there is nothing to install or build beside it.

use http::{HeaderValue, Method, Request, Response, header};

use crate::body::{Body, RequestBody, full};
use crate::error::GatewayError;

/// (path below `/console`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "/console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/console.js"),
    ),
    (
        "/console.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/console.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

/// The asset at `path` (below `/console`).
pub fn get(path: &str, request: &Request<RequestBody>) -> Result<Response<Body>, GatewayError> {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, ..)| *p == path) else {
        return Err(GatewayError::not_found(format!(
            "no console page at /console{path}"
        )));
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Err(GatewayError::bad_request(format!(
            "invalid request method {} for /console{path}: expected GET",
            request.method()
        )));
    }
    let mut response = Response::new(full(*bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}
