//! W3C trace context across process boundaries: into and out of string maps (AMQP headers) and
//! any other carrier, and onto `tracing` spans.

use std::collections::BTreeMap;

use opentelemetry::{
    TraceId, global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The current span's trace context as headers (`traceparent`, and `tracestate` if any).
/// Empty when no trace is being recorded.
pub fn current_context_headers() -> BTreeMap<String, String> {
    let context = tracing::Span::current().context();
    let mut headers = MapCarrier(BTreeMap::new());
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut headers));
    headers.0
}

/// Makes `span` continue the trace whose context `carrier` holds (if any), and records the
/// trace id on the span's `trace_id` field, so every log line inside it names the trace.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    let parent_trace = parent.span().span_context().trace_id();
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    // With no exporter installed the span has no context of its own; the caller's trace id
    // still ties the log lines to the caller's trace.
    let own_trace = span.context().span().span_context().trace_id();
    let trace_id = if own_trace == TraceId::INVALID {
        parent_trace
    } else {
        own_trace
    };
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// [`continue_trace`] from a string map such as a message's headers.
pub fn continue_trace_from_headers(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    continue_trace(span, &MapCarrier(headers.clone()));
}

/// A string map as a propagation carrier.
struct MapCarrier(BTreeMap<String, String>);

impl Injector for MapCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for MapCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
