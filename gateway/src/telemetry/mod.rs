//! Distributed tracing: the caller's W3C trace context continued through the gateway to the
//! handler and back to the caller with the completion, the gateway's own spans, and their
//! export over OTLP/HTTP ([`export`]). Named `telemetry` so as not to be confused with the
//! `tracing` crate, which writes the logs.
//!
//! Off unless `[tracing] otlp_endpoint` is set: then `State::telemetry` is `None`, the request
//! path does no tracing work at all, and the caller's `traceparent` reaches handlers unchanged.
//! On, each Nexus start or cancel is sampled first ([`Telemetry::operation`]): traced when the
//! caller's `traceparent` says sampled, otherwise when its trace id (a random number without
//! one) falls within `sampling_ratio`. An unsampled request costs that one decision and is
//! relayed as when off. A sampled one gets these spans:
//!
//! | Span | Kind | From → to | Parent |
//! |---|---|---|---|
//! | `nexus.start`, `nexus.cancel` | server | arrival → answer | the caller's span, else none |
//! | `nexus.route` | internal | arrival → handed to the target (route, authorize, limits, callback sealing) | server |
//! | `nexus.upstream` | client | handed to the lane → the handler's answer (external target) | server |
//! | `nexus.lane_wait` | internal | handed to the lane → a slot in it | upstream, callback |
//! | `nexus.worker` | client | task queued → the worker's answer (worker target) | server |
//! | `nexus.queue_wait` | internal | task queued → a worker took it | worker |
//! | `nexus.attribution` | internal | the attribution record written | server |
//! | `nexus.completion` | server | a handler's completion accepted | the operation's server span |
//! | `nexus.callback` | client | one delivery attempt of a completion to the caller | the operation's server span |
//! | `nexus.connection` | server | TCP accept → TLS handshake done | none: its own trace |
//!
//! The handler gets a `traceparent` naming the `nexus.upstream` or `nexus.worker` span as its
//! parent, so its spans sit below the gateway's; `tracestate` is relayed as it came. The
//! server span's context is sealed in the callback token (and so in the spooled completion),
//! so a completion delivered after a restart still carries the operation's trace.
//!
//! A connection serves many requests of many traces, so its handshake is no request's child:
//! `nexus.connection` is recorded once, as a trace of its own, when the first sampled request
//! arrives on the connection, and every sampled request on it links to it.

mod context;
pub mod export;
mod settings;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use context::{TRACEPARENT, TRACESTATE, TraceParent};
pub use export::ExportCounts;
pub use settings::{TracingSettings, otlp_traces_url};

/// Tracing, when turned on: the sampler, the tracer and the export.
pub struct Telemetry {
    tracer: SdkTracer,
    /// Kept for its lifetime: spans end into its processor.
    _provider: SdkTracerProvider,
    /// A trace is sampled when its id's low 64 bits, shifted right by one, are below this.
    threshold: u64,
    export: export::Exporting,
}

impl Telemetry {
    /// Starts the export to `settings.otlp_endpoint` in the background (in a tokio runtime);
    /// `None` when tracing is off. `client` posts to the collector.
    pub fn start(
        settings: &TracingSettings,
        client: crate::client::HttpClient,
    ) -> Option<Arc<Telemetry>> {
        let endpoint = settings.otlp_endpoint.clone()?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let (queue, export) = export::start(export::Settings {
            endpoint,
            client,
            resource,
            interval: settings.export_interval,
        });
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build();
        // Sampling is decided before any span exists; the SDK records what it is given.
        Some(Arc::new(Telemetry {
            tracer: provider.tracer("nexus-gateway"),
            _provider: provider,
            threshold: threshold(settings.sampling_ratio),
            export,
        }))
    }

    /// The trace of a Nexus start or cancel (`name`: `nexus.start` or `nexus.cancel`), begun
    /// now with its server and route spans if sampled; an untraced one otherwise.
    pub fn operation(
        &self,
        name: &'static str,
        headers: &HeaderMap,
        connection: Option<&Connection>,
    ) -> Trace {
        let caller = context::caller_traceparent(headers);
        if !sampled(caller.as_ref(), self.threshold, rand::random) {
            return Trace::default();
        }
        let parent = caller.map_or_else(Context::new, |p| remote_parent(&p));
        let start = SystemTime::now();
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(start);
        if let Some(connection) = connection {
            builder = builder.with_links(vec![Link::with_context(connection.span(self))]);
        }
        let server = builder.start_with_context(&self.tracer, &parent);
        let below = Context::new().with_remote_span_context(server.span_context().clone());
        let route = self
            .tracer
            .span_builder("nexus.route")
            .with_start_time(start)
            .start_with_context(&self.tracer, &below);
        Trace(Some(Box::new(Traced {
            tracer: self.tracer.clone(),
            server,
            below,
            route: Some(route),
        })))
    }

    /// A span of an operation traced earlier: a child of the server span sealed with it (a
    /// `traceparent` from [`Trace::sealed`]); an unrecorded span if `sealed` is not valid.
    pub fn continue_operation(&self, name: &'static str, kind: SpanKind, sealed: &str) -> Span {
        let Some(parent) = context::parse(sealed.as_bytes()) else {
            return Span::default();
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, &remote_parent(&parent));
        Span::open(&self.tracer, span)
    }

    /// What is known of a connection for its `nexus.connection` span, recorded only if a
    /// sampled request arrives on it.
    pub fn connection(
        &self,
        accepted: SystemTime,
        remote: SocketAddr,
        tls: &rustls::ServerConnection,
        identity: Option<&str>,
    ) -> Connection {
        let version = match tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "",
        };
        Connection {
            accepted,
            established: SystemTime::now(),
            remote,
            tls_version: version,
            alpn: tls
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            identity: identity.map(str::to_owned),
            span: OnceLock::new(),
        }
    }

    /// What the export has done so far, for `/metrics`.
    pub fn counts(&self) -> ExportCounts {
        self.export.counts()
    }

    /// Sends every finished span now, waiting at most `within` (at shutdown).
    pub async fn flush(&self, within: Duration) {
        self.export.flush(within).await;
    }
}

/// What a trace id's randomness (its low 63 bits, as OpenTelemetry's ratio sampler reads it)
/// must be below to be sampled at `ratio`.
fn threshold(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

/// Whether a request is traced: always when its caller's `traceparent` says sampled;
/// otherwise when its trace id is within the ratio's `threshold`, so that every participant
/// with the same ratio decides alike for one trace; without one, a `random` number stands
/// for the new trace's id.
fn sampled(caller: Option<&TraceParent>, threshold: u64, random: impl FnOnce() -> u64) -> bool {
    let randomness = match caller {
        Some(parent) if parent.sampled() => return true,
        Some(parent) => parent.trace_id as u64,
        None => random(),
    };
    (randomness >> 1) < threshold
}

/// A context whose span is the caller's (or a sealed operation's): a remote parent.
fn remote_parent(parent: &TraceParent) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(parent.trace_id),
        SpanId::from(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::NONE,
    ))
}

/// The TLS connection a request came on, for its `nexus.connection` span.
pub struct Connection {
    accepted: SystemTime,
    established: SystemTime,
    remote: SocketAddr,
    tls_version: &'static str,
    alpn: Option<String>,
    identity: Option<String>,
    /// The span, once recorded (by the first sampled request).
    span: OnceLock<SpanContext>,
}

impl Connection {
    /// The connection's span, recorded now if no sampled request did before.
    fn span(&self, telemetry: &Telemetry) -> SpanContext {
        self.span
            .get_or_init(|| {
                let mut attributes = vec![
                    KeyValue::new("network.peer.address", self.remote.ip().to_string()),
                    KeyValue::new("network.peer.port", i64::from(self.remote.port())),
                    KeyValue::new("tls.protocol.version", self.tls_version),
                ];
                if let Some(alpn) = &self.alpn {
                    attributes.push(KeyValue::new("tls.alpn", alpn.clone()));
                }
                if let Some(identity) = &self.identity {
                    attributes.push(KeyValue::new("nexus.peer_identity", identity.clone()));
                }
                let mut span = telemetry
                    .tracer
                    .span_builder("nexus.connection")
                    .with_kind(SpanKind::Server)
                    .with_start_time(self.accepted)
                    .with_attributes(attributes)
                    .start_with_context(&telemetry.tracer, &Context::new());
                let context = span.span_context().clone();
                span.end_with_timestamp(self.established);
                context
            })
            .clone()
    }
}

/// A request's trace: the server span and what hangs below it. Untraced (the default), every
/// method does nothing.
#[derive(Default)]
pub struct Trace(Option<Box<Traced>>);

struct Traced {
    tracer: SdkTracer,
    server: opentelemetry_sdk::trace::Span,
    /// A context whose span is the server span: the parent of its children.
    below: Context,
    /// Open until the request is handed to its target.
    route: Option<opentelemetry_sdk::trace::Span>,
}

/// What the server span says of a start or cancel once it is answered.
pub struct Facts<'a> {
    pub caller_namespace: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub target_namespace: Option<&'a str>,
    /// The task queue, or the external handler's host.
    pub target: Option<&'a str>,
    pub service: Option<&'a str>,
    pub operation: Option<&'a str>,
    /// The attribution outcome (`succeeded`, `rejected:unauthorized`, ...).
    pub outcome: &'a str,
    pub status: StatusCode,
}

// The public methods of `Trace` and `Span` are inlined checks of whether anything is
// recorded: an untraced request pays a branch for each, not a call.
impl Trace {
    #[inline]
    pub fn is_sampled(&self) -> bool {
        self.0.is_some()
    }

    /// A child of the server span, begun now.
    #[inline]
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        match &self.0 {
            Some(traced) => traced.child(name, kind),
            None => Span::default(),
        }
    }

    /// The request is handed to its target: the route span ends.
    #[inline]
    pub fn routed(&mut self) {
        if let Some(traced) = &mut self.0 {
            traced.routed();
        }
    }

    /// The server span's `traceparent`, and the caller's `tracestate` (from `headers`,
    /// within its bound), to seal with an async operation so that its completion continues
    /// the trace.
    #[inline]
    pub fn sealed(&self, headers: &HeaderMap) -> Option<(String, Option<String>)> {
        self.0.as_ref().map(|traced| traced.sealed(headers))
    }

    /// Says on the server span what is known of the answered request; a route span the
    /// request never got past ends failed.
    #[inline]
    pub fn describe(&mut self, facts: &Facts<'_>) {
        if let Some(traced) = &mut self.0 {
            traced.describe(facts);
        }
    }

    /// Marks the server span failed, saying why.
    #[inline]
    pub fn fail(&mut self, why: &str) {
        if let Some(traced) = &mut self.0 {
            traced.server.set_status(Status::error(why.to_owned()));
        }
    }

    /// Ends the server span (and the route span, if still open).
    #[inline]
    pub fn end(self) {
        if let Some(traced) = self.0 {
            traced.end();
        }
    }
}

impl Traced {
    fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, &self.below);
        Span::open(&self.tracer, span)
    }

    fn routed(&mut self) {
        if let Some(mut route) = self.route.take() {
            route.end();
        }
    }

    fn sealed(&self, headers: &HeaderMap) -> (String, Option<String>) {
        let parent = traceparent_of(self.server.span_context()).to_text();
        (parent, context::tracestate_to_seal(headers))
    }

    fn describe(&mut self, facts: &Facts<'_>) {
        if let Some(mut route) = self.route.take() {
            // Refused, or failed, before it reached its target.
            route.set_status(Status::error(facts.outcome.to_owned()));
            route.end();
        }
        let mut attributes = vec![
            KeyValue::new(
                "http.response.status_code",
                i64::from(facts.status.as_u16()),
            ),
            KeyValue::new("nexus.outcome", facts.outcome.to_owned()),
        ];
        for (key, value) in [
            ("nexus.caller_namespace", facts.caller_namespace),
            ("nexus.endpoint", facts.endpoint),
            ("nexus.target_namespace", facts.target_namespace),
            ("nexus.target", facts.target),
            ("nexus.service", facts.service),
            ("nexus.operation", facts.operation),
        ] {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value.to_owned()));
            }
        }
        self.server.set_attributes(attributes);
        if facts.status.is_server_error() {
            self.server
                .set_status(Status::error(facts.outcome.to_owned()));
        }
    }

    fn end(mut self: Box<Self>) {
        if let Some(mut route) = self.route.take() {
            route.end();
        }
        self.server.end();
    }
}

/// One span below a request's (or a sealed operation's) trace; unrecorded (the default), every
/// method does nothing. Ends when dropped, if not before.
#[derive(Debug, Default)]
pub struct Span(Option<Box<OpenSpan>>);

#[derive(Debug)]
struct OpenSpan {
    tracer: SdkTracer,
    span: opentelemetry_sdk::trace::Span,
}

impl Span {
    fn open(tracer: &SdkTracer, span: opentelemetry_sdk::trace::Span) -> Span {
        Span(Some(Box::new(OpenSpan {
            tracer: tracer.clone(),
            span,
        })))
    }

    #[inline]
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// A child of this span, begun now.
    #[inline]
    pub fn child(&self, name: &'static str) -> Span {
        match &self.0 {
            Some(open) => open.child(name),
            None => Span::default(),
        }
    }

    /// Names this span as the parent in `headers`' `traceparent` (replacing the caller's), so
    /// that the receiver's spans sit below it.
    #[inline]
    pub fn propagate(&self, headers: &mut HeaderMap) {
        if let Some(open) = &self.0 {
            open.propagate(headers);
        }
    }

    #[inline]
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(open) = &mut self.0 {
            open.span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// The HTTP status that came back; a 5xx marks the span failed.
    #[inline]
    pub fn answered(&mut self, status: StatusCode) {
        if let Some(open) = &mut self.0 {
            open.answered(status);
        }
    }

    /// Marks the span failed, saying why.
    #[inline]
    pub fn fail(&mut self, why: &str) {
        if let Some(open) = &mut self.0 {
            open.span.set_status(Status::error(why.to_owned()));
        }
    }

    #[inline]
    pub fn end(self) {
        if let Some(open) = self.0 {
            open.end();
        }
    }
}

impl OpenSpan {
    fn child(&self, name: &'static str) -> Span {
        let parent = Context::new().with_remote_span_context(self.span.span_context().clone());
        let span = self
            .tracer
            .span_builder(name)
            .start_with_context(&self.tracer, &parent);
        Span::open(&self.tracer, span)
    }

    fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(
            TRACEPARENT,
            traceparent_of(self.span.span_context()).to_header(),
        );
    }

    fn answered(&mut self, status: StatusCode) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            self.span
                .set_status(Status::error(format!("answered {status}")));
        }
    }

    fn end(mut self: Box<Self>) {
        self.span.end();
    }
}

fn traceparent_of(span: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: u128::from_be_bytes(span.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(span.span_id().to_bytes()),
        flags: span.trace_flags().to_u8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(trace_id: u128, flags: u8) -> TraceParent {
        TraceParent {
            trace_id,
            span_id: 1,
            flags,
        }
    }

    #[test]
    fn a_caller_that_asks_is_traced_at_any_ratio() {
        let never = threshold(0.0);
        assert!(sampled(Some(&caller(u128::MAX, 1)), never, || 0));
        assert!(!sampled(Some(&caller(1, 0)), never, || 0));
        assert!(!sampled(None, never, || 0));
    }

    #[test]
    fn the_ratio_reads_the_low_bits_of_the_trace_id_or_draws_a_new_one() {
        let half = threshold(0.5);
        // Low 64 bits below 2^63 (shifted: below 2^62) are within half; the high bits do not count.
        assert!(sampled(
            Some(&caller(u128::MAX << 64, 0)),
            half,
            || unreachable!()
        ));
        assert!(sampled(
            Some(&caller((1u128 << 63) - 1, 0)),
            half,
            || unreachable!()
        ));
        assert!(!sampled(
            Some(&caller(1u128 << 63, 0)),
            half,
            || unreachable!()
        ));
        assert!(!sampled(
            Some(&caller(u64::MAX as u128, 0)),
            half,
            || unreachable!()
        ));
        assert!(sampled(None, half, || 0));
        assert!(!sampled(None, half, || u64::MAX));
        let all = threshold(1.0);
        assert!(sampled(None, all, || u64::MAX));
        assert!(sampled(Some(&caller(u128::MAX, 0)), all, || 0));
        // About 1 % of random ids at 0.01.
        let one_percent = threshold(0.01);
        let traced = (0..100_000)
            .filter(|_| sampled(None, one_percent, rand::random))
            .count();
        assert!((700..1300).contains(&traced), "{traced}");
    }
}
