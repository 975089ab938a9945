//! `[tracing]`: where spans go and how many requests are traced.

use std::time::Duration;

/// Distributed tracing: W3C trace context in and out, the gateway's
/// spans exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP traces URL (see [`otlp_traces_url`]). `None` (default): tracing
    /// is off and the request path does no tracing work; callers' `traceparent` and
    /// `tracestate` still reach handlers unchanged.
    pub otlp_endpoint: Option<http::Uri>,
    /// Share of requests traced when the caller did not ask for it (no `traceparent`, or its
    /// sampled flag unset), decided on the trace id (default 0.01). A caller that asks is
    /// always traced, so a traced caller sees whole traces at any ratio; 1 % bounds what the
    /// gateway itself adds to the collector's load and to its own CPU (BENCHMARKS.md).
    pub sampling_ratio: f64,
    /// `service.name` of the exported spans (default `nexus-gateway`).
    pub service_name: String,
    /// How often finished spans are sent, at the latest (default 5 s, OpenTelemetry's
    /// `OTEL_BSP_SCHEDULE_DELAY`); a full batch of 512 goes at once.
    pub export_interval: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            sampling_ratio: 0.01,
            service_name: "nexus-gateway".into(),
            export_interval: Duration::from_secs(5),
        }
    }
}

/// The traces URL of an OTLP/HTTP collector: an `http://` or `https://` URL; one without a path
/// gets `/v1/traces` (as `OTEL_EXPORTER_OTLP_ENDPOINT` does), one with a path is used as it is
/// (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). No credentials or query: the URL is logged.
pub fn otlp_traces_url(text: &str) -> Result<http::Uri, String> {
    let wrong = || {
        format!(
            "{text:?} is not the http:// or https:// URL of an OTLP/HTTP collector, like \"http://127.0.0.1:4318\""
        )
    };
    let uri: http::Uri = text.parse().map_err(|_| wrong())?;
    let authority = uri.authority().ok_or_else(wrong)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || authority.host().is_empty() {
        return Err(wrong());
    }
    if authority.as_str().contains('@') || uri.query().is_some() {
        return Err(format!(
            "{text:?} must not carry credentials or a query: it is logged"
        ));
    }
    if !matches!(uri.path(), "" | "/") {
        return Ok(uri);
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    format!("{scheme}://{authority}/v1/traces")
        .parse()
        .map_err(|_| wrong())
}
