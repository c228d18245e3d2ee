//! W3C trace context across every hop: HTTP headers into the gateway, gRPC
//! metadata between services, and the `traceparent` of click events and AMQP
//! messages. With no exporter configured these are cheap no-ops that still
//! carry the caller's context along.

use std::collections::HashMap;

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the context in `headers` (HTTP or gRPC), and
/// records its trace id in the span's `trace_id` field for the logs.
/// A disabled span (its level filtered out, no exporter) keeps neither, so
/// the headers are not parsed for it: that was 1 % of a redirect's CPU at
/// the gateway's `warn` level.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
    record_ids(span);
}

/// Makes `span` a child of a `traceparent` string (events, AMQP headers).
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        record_ids(span);
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
    record_ids(span);
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The current span's context as a `traceparent` value ("" when none).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Fills the span's `trace_id` / `span_id` fields (declared as `Empty`)
/// so JSON log lines inside it carry them.
fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// A gRPC server span for `tonic::transport::Server::trace_fn`: named after
/// the RPC, following the RPC semantic conventions, continuing the caller's
/// trace from the request metadata.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    continue_from_headers(&span, request.headers());
    span
}

/// What a [`messaging_span`] does with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messaging {
    /// A producer handing the message to the broker.
    Publish,
    /// A consumer handling a message it received.
    Process,
}

/// The span of one message crossing the broker, continuing `traceparent`.
/// It is named `"<channel> <operation>"` after OpenTelemetry's messaging
/// conventions, where `channel` is the low-cardinality name of the
/// destination (its default, e.g. `amqp::CLICKS_EXCHANGE`) and
/// `destination` the exchange as configured, recorded as
/// `messaging.destination.name`. A `link.code` field is declared empty for
/// the caller to record.
pub fn messaging_span(
    channel: &str,
    destination: &str,
    operation: Messaging,
    message_id: &str,
    traceparent: &str,
) -> tracing::Span {
    let (operation, kind) = match operation {
        Messaging::Publish => ("publish", "producer"),
        Messaging::Process => ("process", "consumer"),
    };
    let span = tracing::info_span!(
        "messaging",
        otel.name = %format_args!("{channel} {operation}"),
        otel.kind = kind,
        messaging.system = "rabbitmq",
        messaging.operation.type = operation,
        messaging.destination.name = %destination,
        messaging.message.id = %message_id,
        link.code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    continue_from_traceparent(&span, traceparent);
    span
}
