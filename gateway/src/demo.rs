//! The demo handler `nexus-gateway dev` serves on endpoint `demo`, so the printed example call
//! works on a fresh machine. Service `echo`: operation `echo` answers the input as a sync
//! result; a cancel is accepted; anything else is NOT_FOUND.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::error::GatewayError;
use crate::worker::failure_response;

pub async fn echo_handler(
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let response = match path.as_str() {
        "/echo/echo" => {
            let mut response = Response::new(body);
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        p if p.starts_with("/echo/") && p.ends_with("/cancel") => {
            let mut response = Response::new(Bytes::new());
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        _ => failure_response(GatewayError::not_found(format!(
            "the demo handler serves only service \"echo\", operation \"echo\"; got {path}"
        ))),
    };
    Ok(response.map(Full::new))
}
