//! Distributed tracing: a real OTLP/HTTP receiver in the test decodes what the gateway exports,
//! and the handlers and the caller's callback receiver show what was propagated to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nexus_e2e::*;
use nexus_gateway::config::TracingSettings;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{
    Span, span::SpanKind, status::StatusCode as SpanStatus,
};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(10);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on 127.0.0.1: takes `POST /v1/traces` as protobuf and keeps every
/// span with its resource's `service.name`. Stops on drop.
struct Collector {
    addr: SocketAddr,
    spans: watch::Receiver<Vec<Exported>>,
    /// The path and content type of every export request.
    requests: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: CancellationToken,
}

#[derive(Clone, Debug)]
struct Exported {
    service: String,
    span: Span,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, spans) = watch::channel(Vec::new());
        let sender = Arc::new(sender);
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (token, seen) = (stop.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    () = token.cancelled() => break,
                };
                let (sender, seen) = (sender.clone(), seen.clone());
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (sender, seen) = (sender.clone(), seen.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let content_type = parts
                                .headers
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            seen.lock()
                                .unwrap()
                                .push((parts.uri.path().to_owned(), content_type));
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(export) if parts.uri.path() == "/v1/traces" => {
                                    sender.send_modify(|spans| spans.extend(exported(export)));
                                    StatusCode::OK
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        Collector {
            addr,
            spans,
            requests,
            stop,
        }
    }

    /// Tracing settings exporting here at once, tracing `ratio` of the requests callers do not
    /// ask to trace.
    fn settings(&self, ratio: f64) -> TracingSettings {
        TracingSettings {
            otlp_endpoint: Some(
                nexus_gateway::config::otlp_traces_url(&format!("http://{}", self.addr)).unwrap(),
            ),
            sampling_ratio: ratio,
            service_name: "nexus-gateway".into(),
            export_interval: Duration::from_millis(100),
        }
    }

    /// The spans of `trace` once `done` holds for them, within [`BOUND`].
    async fn trace(&self, trace: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let of_trace = |all: &[Exported]| -> Vec<Span> {
            all.iter()
                .filter(|e| hex(&e.span.trace_id) == trace)
                .map(|e| e.span.clone())
                .collect()
        };
        let mut spans = self.spans.clone();
        let waited = tokio::time::timeout(BOUND, spans.wait_for(|all| done(&of_trace(all)))).await;
        let all = self.spans.borrow().clone();
        assert!(
            waited.is_ok(),
            "trace {trace} incomplete within {BOUND:?}: {:#?}",
            names(&of_trace(&all))
        );
        of_trace(&all)
    }

    fn all(&self) -> Vec<Exported> {
        self.spans.borrow().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn exported(export: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    out
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

fn has_all(spans: &[Span], expected: &[&str]) -> bool {
    expected
        .iter()
        .all(|name| spans.iter().any(|s| s.name == *name))
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} in {:?}", names(spans));
    found[0]
}

/// A span's attributes as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?)))
        .collect()
}

/// Asserts that `span` carries each `(key, value)` attribute.
fn assert_attributes(span: &Span, expected: &[(&str, &str)]) {
    let said = attributes(span);
    for (key, value) in expected {
        assert_eq!(
            said.get(*key).map(String::as_str),
            Some(*value),
            "{key}: {said:?}"
        );
    }
}

/// `(trace id, parent id, flags)` of a `traceparent` value.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn sampled_traceparent() -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-01")
}

/// What the reference handler's `svc/headers` saw: a header's value.
fn seen_header(reply: &Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name].as_str().map(str::to_owned)
}

fn assert_below(child: &Span, parent: &Span) {
    assert_eq!(
        hex(&child.parent_span_id),
        hex(&parent.span_id),
        "{} is a child of {}",
        child.name,
        parent.name
    );
    assert!(
        child.start_time_unix_nano >= parent.start_time_unix_nano,
        "{} starts within {}",
        child.name,
        parent.name
    );
}

#[tokio::test]
async fn a_sampled_call_to_an_external_handler_is_one_trace_from_caller_to_handler() {
    let collector = Collector::start().await;
    // Ratio 0: only what the caller asks to trace is traced.
    let gw = TestGateway::start_with(|c| c.tracing = collector.settings(0.0)).await;
    let (handler, _stop) = serve_reference_handler().await;
    gw.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let reply = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/quotes/services/svc/headers"),
            &[
                ("traceparent", &sampled_traceparent()),
                ("tracestate", "vendor=1"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (trace, parent, flags) = traceparent(&seen_header(&reply, "traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(
        parent, CALLER_SPAN,
        "the handler's parent is the gateway's span"
    );
    assert_eq!(
        seen_header(&reply, "tracestate").as_deref(),
        Some("vendor=1")
    );

    let expected = [
        "nexus.start",
        "nexus.route",
        "nexus.upstream",
        "nexus.lane_wait",
        "nexus.attribution",
    ];
    let spans = collector.trace(TRACE, |s| has_all(s, &expected)).await;
    let server = named(&spans, "nexus.start");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    let upstream = named(&spans, "nexus.upstream");
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(hex(&upstream.span_id), parent, "the handler's parent");
    for child in ["nexus.route", "nexus.upstream", "nexus.attribution"] {
        assert_below(named(&spans, child), server);
    }
    assert_below(named(&spans, "nexus.lane_wait"), upstream);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);
    assert_attributes(
        server,
        &[
            ("nexus.caller_namespace", "orders"),
            ("nexus.endpoint", "quotes"),
            ("nexus.target", handler.to_string().as_str()),
            ("nexus.service", "svc"),
            ("nexus.operation", "headers"),
            ("nexus.outcome", "succeeded"),
            ("http.response.status_code", "200"),
        ],
    );
    assert_eq!(
        attributes(upstream).get("nexus.target"),
        Some(&handler.to_string())
    );
    assert_eq!(
        attributes(upstream)
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    // The connection's handshake is a trace of its own, linked from the request.
    assert_eq!(server.links.len(), 1);
    let link = &server.links[0];
    let connection = collector
        .all()
        .into_iter()
        .find(|e| e.span.span_id == link.span_id)
        .expect("the linked connection span is exported");
    assert_eq!(connection.span.name, "nexus.connection");
    assert_eq!(connection.span.trace_id, link.trace_id);
    assert_ne!(hex(&link.trace_id), TRACE);
    assert!(connection.span.parent_span_id.is_empty());
    assert!(connection.span.end_time_unix_nano <= server.start_time_unix_nano);
    assert_eq!(
        attributes(&connection.span)
            .get("nexus.peer_identity")
            .map(String::as_str),
        Some("spiffe://nexus-gateway/ns/orders")
    );
    assert!(collector.all().iter().all(|e| e.service == "nexus-gateway"));
    let requests = collector.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(path, kind)| path == "/v1/traces" && kind == "application/x-protobuf"),
        "{requests:?}"
    );

    // A caller that does not ask is not traced at ratio 0: relayed as it came, nothing exported.
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    let reply = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/quotes/services/svc/headers"),
            &[("traceparent", &unsampled)],
            "",
        ),
    )
    .await;
    assert_eq!(seen_header(&reply, "traceparent"), Some(unsampled));
    // Spans are exported in the order they end: once a later sampled call's have arrived, any
    // of the unsampled call would have too.
    let second = format!("00-{}-{CALLER_SPAN}-01", "2".repeat(32));
    send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/quotes/services/svc/echo"),
            &[("traceparent", &second)],
            "",
        ),
    )
    .await;
    collector
        .trace(&"2".repeat(32), |s| has_all(s, &["nexus.attribution"]))
        .await;
    assert!(
        !collector
            .all()
            .iter()
            .any(|e| hex(&e.span.trace_id) == "1".repeat(32)),
        "an unsampled call exports nothing"
    );
}

#[tokio::test]
async fn across_the_worker_bridge_the_worker_gets_the_gateways_worker_span_as_parent() {
    let collector = Collector::start().await;
    // Ratio 1: a caller without a traceparent starts a new trace at the gateway.
    let gw = TestGateway::start_with(|c| c.tracing = collector.settings(1.0)).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let _worker = gw.start_worker("billing", "charges");
    let caller = gw.client(&ns("orders"));
    let reply = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/headers"),
            // Malformed (version ff): ignored, as if absent.
            &[(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (trace, parent, flags) = traceparent(&seen_header(&reply, "traceparent").unwrap());
    assert_ne!(trace, TRACE, "a malformed traceparent starts a new trace");
    assert_eq!(flags, "01");

    let expected = [
        "nexus.start",
        "nexus.route",
        "nexus.worker",
        "nexus.queue_wait",
        "nexus.attribution",
    ];
    let spans = collector.trace(&trace, |s| has_all(s, &expected)).await;
    let server = named(&spans, "nexus.start");
    assert!(server.parent_span_id.is_empty(), "a new trace's root");
    let worker = named(&spans, "nexus.worker");
    assert_eq!(hex(&worker.span_id), parent, "the worker's parent");
    assert_eq!(worker.kind, SpanKind::Client as i32);
    for child in ["nexus.route", "nexus.worker", "nexus.attribution"] {
        assert_below(named(&spans, child), server);
    }
    let queue_wait = named(&spans, "nexus.queue_wait");
    assert_below(queue_wait, worker);
    assert!(queue_wait.end_time_unix_nano <= worker.end_time_unix_nano);
    assert_attributes(
        server,
        &[
            ("nexus.caller_namespace", "orders"),
            ("nexus.endpoint", "payments"),
            ("nexus.target_namespace", "billing"),
            ("nexus.target", "charges"),
            ("nexus.service", "svc"),
            ("nexus.operation", "headers"),
            ("http.response.status_code", "200"),
        ],
    );
    assert_eq!(
        attributes(worker).get("nexus.target").map(String::as_str),
        Some("charges")
    );

    // A refused call is traced too: its route span says why, its server span the status.
    let refused = send(
        &gw.client(&ns("intruder")),
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[("traceparent", &sampled_traceparent())],
            "",
        ),
    )
    .await;
    assert_eq!(refused.status, 403);
    let spans = collector
        .trace(TRACE, |s| has_all(s, &["nexus.start", "nexus.route"]))
        .await;
    let route = named(&spans, "nexus.route");
    let status = route.status.clone().unwrap_or_default();
    assert_eq!(status.code, SpanStatus::Error as i32);
    assert_eq!(status.message, "rejected:unauthorized");
    assert!(!spans.iter().any(|s| s.name == "nexus.worker"));
    assert_eq!(
        attributes(named(&spans, "nexus.start"))
            .get("http.response.status_code")
            .map(String::as_str),
        Some("403")
    );
}

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn completion(url: &str) -> Request<Full<Bytes>> {
    post(
        url.parse().unwrap(),
        &[
            ("nexus-operation-state", "succeeded"),
            ("nexus-operation-token", "op-token-1"),
            ("content-type", "application/json"),
        ],
        "{}",
    )
}

#[tokio::test]
async fn a_completion_carries_the_operations_trace_to_the_caller_across_a_restart() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    let settings = collector.settings(0.0);
    let config = |c: &mut nexus_gateway::Config| {
        c.tracing = settings.clone();
        // After the receiver's refusal the next attempt would be an hour away: only the
        // restart brings it.
        c.callbacks.backoff.initial = Duration::from_secs(3600);
        c.callbacks.backoff.jitter_min = 1.0;
    };
    let mut gw = TestGateway::start_in(pki.clone(), dir.path(), config).await;
    gw.worker_endpoint("payments", "billing", "charges", &["orders"]);
    let worker = gw.start_worker("billing", "charges");
    let mut receiver = Receiver::start(503).await;
    let callback = format!("http://{}/callback", receiver.addr);
    let uri = gw.uri(&format!(
        "/nexus/endpoints/payments/services/svc/headers?callback={}",
        percent_encode(&callback)
    ));
    let started = send(
        &gw.client(&ns("orders")),
        post(
            uri,
            &[
                ("traceparent", &sampled_traceparent()),
                ("tracestate", "vendor=1"),
                // The caller's own callback headers never replace the operation's trace.
                (
                    "nexus-callback-traceparent",
                    "00-99999999999999999999999999999999-9999999999999999-01",
                ),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(started.status, 200);
    let sealed = sealed_callback_seen_by(&started);
    let ack = send(&gw.client(&ns("billing")), completion(&sealed)).await;
    assert_eq!(ack.status, 200);
    let first = receiver.next(BOUND).await.expect("first attempt");
    let (trace, first_parent, flags) = traceparent(first.header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(first.header("tracestate"), Some("vendor=1"));

    let spans = collector
        .trace(TRACE, |s| {
            has_all(
                s,
                &[
                    "nexus.start",
                    "nexus.completion",
                    "nexus.callback",
                    "nexus.lane_wait",
                    "nexus.attribution",
                ],
            )
        })
        .await;
    let server = named(&spans, "nexus.start");
    let intake = named(&spans, "nexus.completion");
    assert_eq!(hex(&intake.parent_span_id), hex(&server.span_id));
    assert_eq!(intake.kind, SpanKind::Server as i32);
    assert_eq!(
        attributes(intake)
            .get("nexus.target_namespace")
            .map(String::as_str),
        Some("billing")
    );
    let attempt = named(&spans, "nexus.callback");
    assert_eq!(hex(&attempt.parent_span_id), hex(&server.span_id));
    assert_eq!(hex(&attempt.span_id), first_parent, "the receiver's parent");
    assert_below(named(&spans, "nexus.lane_wait"), attempt);
    assert_eq!(
        attempt.status.clone().unwrap_or_default().code,
        SpanStatus::Error as i32,
        "the receiver answered 503"
    );
    let said = attributes(attempt);
    assert_eq!(
        said.get("http.response.status_code").map(String::as_str),
        Some("503")
    );
    assert_eq!(
        said.get("nexus.callback.attempt").map(String::as_str),
        Some("1")
    );

    // The completion waits in the spool; the gateway restarts; the trace comes back with it.
    worker.stop().await;
    gw.stop().await;
    drop(gw);
    receiver.set_status(200);
    let _gw = TestGateway::start_in(pki, dir.path(), config).await;
    let second = receiver
        .next(BOUND)
        .await
        .expect("delivered after the restart");
    let (trace, second_parent, _) = traceparent(second.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(second_parent, first_parent, "a span per attempt");
    let spans = collector
        .trace(TRACE, |s| {
            s.iter().filter(|s| s.name == "nexus.callback").count() == 2
        })
        .await;
    let retried = spans
        .iter()
        .find(|s| s.name == "nexus.callback" && hex(&s.span_id) == second_parent)
        .expect("the second attempt's span");
    assert_eq!(hex(&retried.parent_span_id), hex(&server.span_id));
    assert_eq!(
        attributes(retried)
            .get("nexus.callback.attempt")
            .map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn with_tracing_off_the_callers_context_passes_unchanged_and_nothing_is_exported() {
    let gw = TestGateway::start().await;
    let (_worker, _handler, _stop) = gw.both_targets().await;
    let caller = gw.client(&ns("orders"));
    let mut receiver = Receiver::start(200).await;
    for endpoint in ["payments", "quotes"] {
        let callback = format!("http://{}/callback", receiver.addr);
        let reply = send(
            &caller,
            post(
                gw.uri(&format!(
                    "/nexus/endpoints/{endpoint}/services/svc/headers?callback={}",
                    percent_encode(&callback)
                )),
                &[
                    ("traceparent", &sampled_traceparent()),
                    ("tracestate", "vendor=1"),
                ],
                "",
            ),
        )
        .await;
        assert_eq!(
            seen_header(&reply, "traceparent"),
            Some(sampled_traceparent()),
            "{endpoint}"
        );
        assert_eq!(
            seen_header(&reply, "tracestate").as_deref(),
            Some("vendor=1")
        );
        // Nothing of a trace is sealed: the completion goes without one.
        let sealed = sealed_callback_seen_by(&reply);
        let handler = gw.client(&ns(if endpoint == "payments" {
            "billing"
        } else {
            "orders"
        }));
        assert_eq!(send(&handler, completion(&sealed)).await.status, 200);
        let delivered = receiver.next(BOUND).await.expect("delivered");
        assert_eq!(delivered.header("traceparent"), None);
        assert_eq!(delivered.header("tracestate"), None);
    }
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(!metrics.contains("nexus_gateway_trace_"), "{metrics}");
}

#[tokio::test]
async fn with_tracing_on_an_unsampled_call_is_relayed_as_when_off_and_exports_nothing() {
    let collector = Collector::start().await;
    let mut gw = TestGateway::start_with(|c| c.tracing = collector.settings(0.0)).await;
    let (handler, _stop) = serve_reference_handler().await;
    gw.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    for traceparent in [Some(unsampled.as_str()), None] {
        let headers: Vec<(&str, &str)> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        let reply = send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/quotes/services/svc/headers"),
                &headers,
                "",
            ),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(seen_header(&reply, "traceparent").as_deref(), traceparent);
    }
    // Stopping flushes the export: whatever was queued would have reached the collector.
    gw.stop().await;
    assert!(collector.all().is_empty(), "{:?}", collector.all());
}

/// A gateway tracing every call and exporting to `endpoint` every `interval`, with an external
/// endpoint `quotes`; makes `calls` calls through it and returns it.
async fn traced_calls_exporting_to(
    endpoint: &str,
    interval: Duration,
    calls: usize,
) -> TestGateway {
    let gw = TestGateway::start_with(|c| {
        c.tracing = TracingSettings {
            otlp_endpoint: Some(nexus_gateway::config::otlp_traces_url(endpoint).unwrap()),
            sampling_ratio: 1.0,
            export_interval: interval,
            ..TracingSettings::default()
        }
    })
    .await;
    let (handler, _stop) = serve_reference_handler().await;
    gw.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);
    let caller = gw.client(&ns("orders"));
    for _ in 0..calls {
        let uri = gw.uri("/nexus/endpoints/quotes/services/svc/echo");
        assert_eq!(send(&caller, post(uri, &[], "x")).await.status, 200);
    }
    gw
}

#[tokio::test]
async fn a_dead_collector_never_slows_or_fails_a_request_and_its_losses_are_counted() {
    // A port nothing listens on: every export is refused.
    let refused = reserved_port();
    let endpoint = format!("http://{}", refused.local_addr().unwrap());
    let gw = traced_calls_exporting_to(&endpoint, Duration::from_millis(50), 20).await;
    eventually("the lost spans are counted", BOUND, async || {
        let (_, metrics) = gw.ops_get("/metrics").await;
        metric(&metrics, "nexus_gateway_trace_spans_dropped_total").unwrap_or(0.0) >= 100.0
            && metric(&metrics, "nexus_gateway_trace_export_failures_total").unwrap_or(0.0) >= 1.0
            && metric(&metrics, "nexus_gateway_trace_spans_exported_total") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_collector_that_never_answers_fills_the_bounded_queue_and_requests_go_on() {
    // Accepts and never answers: the first export waits out its timeout, and spans pile up.
    let (stalled, _accepted, _stop) = stalled_server().await;
    // Five spans a call: 3,000 spans, more than the batch in flight and the queue hold.
    let endpoint = format!("http://{stalled}");
    let gw = traced_calls_exporting_to(&endpoint, Duration::from_millis(10), 600).await;
    let (_, metrics) = gw.ops_get("/metrics").await;
    let dropped = metric(&metrics, "nexus_gateway_trace_spans_dropped_total").unwrap();
    assert!(dropped >= 3000.0 - 2048.0 - 512.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "nexus_gateway_trace_spans_exported_total"),
        Some(0.0)
    );
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn bad_tracing_settings_are_refused_naming_the_key() {
    let problems = nexus_gateway::config_file::parse(
        r#"
        [tracing]
        otlp_endpoint = "ftp://collector:4318"
        sampling_ratio = 1.5
        service_name = ""
        export_interval = "0s"
        endpoint = "http://collector:4318"
        "#,
    )
    .unwrap_err();
    for expected in [
        r#"[tracing] otlp_endpoint: "ftp://collector:4318" is not the http:// or https:// URL of an OTLP/HTTP collector, like "http://127.0.0.1:4318""#,
        "[tracing] sampling_ratio: must be between 0.0 and 1.0, got 1.5",
        "[tracing] service_name: must not be empty",
        "[tracing] export_interval: must be longer than zero",
        r#"[tracing] has unknown setting "endpoint" (known: otlp_endpoint, sampling_ratio, service_name, export_interval)"#,
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "missing {expected:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
    for (setting, expected) in [
        (
            r#"otlp_endpoint = "http://user:secret@collector:4318""#,
            r#"[tracing] otlp_endpoint: "http://user:secret@collector:4318" must not carry credentials or a query: it is logged"#,
        ),
        (
            "otlp_endpoint = 4318",
            "[tracing] otlp_endpoint: expected a string, got integer",
        ),
        (
            r#"sampling_ratio = "all""#,
            "[tracing] sampling_ratio: expected a number, got string",
        ),
        (
            "sampling_ratio = -0.5",
            "[tracing] sampling_ratio: must be between 0.0 and 1.0, got -0.5",
        ),
    ] {
        let problems =
            nexus_gateway::config_file::parse(&format!("[tracing]\n{setting}\n")).unwrap_err();
        assert_eq!(problems, [expected]);
    }
    // Off by default, and empty is off.
    for text in ["", "[tracing]\notlp_endpoint = \"\"\n"] {
        let parsed = nexus_gateway::config_file::parse(text).unwrap();
        assert_eq!(parsed.config.tracing.otlp_endpoint, None);
    }
}
