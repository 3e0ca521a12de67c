//! Observability shared by every dalc process:
//!
//! - **logs** through `tracing`: to stderr (stdout belongs to command output), as text for humans
//!   or JSON lines; the level comes from `DALC_LOG`, else `RUST_LOG`, else `info`. Lines inside a
//!   task's span carry its `task_id` and `trace_id`.
//! - **traces** through `tracing-opentelemetry`, exported with OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: gRPC by
//!   default, `http/protobuf` when `OTEL_EXPORTER_OTLP_PROTOCOL` says so. With no endpoint no
//!   OpenTelemetry layer is installed at all, so tracing costs nothing extra. The standard
//!   `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` are honoured.
//! - **context propagation** in W3C `traceparent`/`tracestate` form ([`propagation`]).
//! - **metrics** in the Prometheus text format ([`metrics`]).

pub mod metrics;
pub mod propagation;

use std::{io::IsTerminal, str::FromStr};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, LevelFilter, filter_fn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use metrics::Metrics;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("logging was already initialised")]
    AlreadyInitialised,
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("unknown OTLP protocol {0:?}: expected grpc or http/protobuf")]
    Protocol(String),
}

/// The log filter directive in force: `DALC_LOG`, else `RUST_LOG`, else `info`.
pub fn log_filter() -> String {
    std::env::var("DALC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
}

/// The spans that give a log line its context: a gateway's server span of a call (`rpc`) and a
/// worker's consumer span of a task (`process`), which carry the task's id and its trace's. The
/// log layer leaves out the steps nested in them (insert, publish, evaluate, reply…), which
/// only repeat the task's id: at the default level, recording them for the log lines cost
/// `dalc up` about 15 µs of CPU per task. Traces keep every span.
pub const LOG_CONTEXT_SPANS: [&str; 2] = ["rpc", "process"];

/// Whether the log layer takes this callsite: every event, and of the spans only
/// [`LOG_CONTEXT_SPANS`]. Decided once per callsite, so a span no layer takes costs nothing.
fn logged(metadata: &tracing::Metadata<'_>) -> bool {
    !metadata.is_span() || LOG_CONTEXT_SPANS.contains(&metadata.name())
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
#[must_use = "dropping it without shutdown loses the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered, then stops the pipeline.
    pub fn shutdown(self) {
        if let Some(Err(err)) = self.provider.map(|provider| provider.shutdown()) {
            eprintln!("dalc: could not flush traces: {err}");
        }
    }
}

/// Installs logging and, when an OTLP endpoint is configured, trace export, for a process whose
/// service name is `service_name` unless `OTEL_SERVICE_NAME` says otherwise. Call once, early,
/// inside the Tokio runtime (the gRPC exporter runs on it).
pub fn init(format: LogFormat, service_name: &str) -> Result<Telemetry, TelemetryError> {
    let directive = log_filter();
    let filter = EnvFilter::try_new(&directive).map_err(|e| TelemetryError::Filter {
        filter: directive,
        reason: e.to_string(),
    })?;
    let colours = std::io::stderr().is_terminal();
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(colours)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The log level filters log lines only: traces keep every span at INFO and above, so
    // quieting the logs (say DALC_LOG=warn) does not cut spans out of traces. The level hint
    // keeps the log level's: without one, `and` would leave no hint, and every disabled
    // DEBUG and TRACE callsite of every library would be looked up again at each use.
    let context = filter_fn(logged).with_max_level_hint(LevelFilter::TRACE);
    let logs = logs.with_filter(filter.and(context));
    // W3C trace context, whether or not we export: incoming context is still passed on.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let provider = tracer_provider(service_name)?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("dalc"))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(Telemetry { provider })
}

/// The OTLP pipeline, or `None` when no endpoint is configured (or the SDK is disabled).
fn tracer_provider(service_name: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    // The exporters read the endpoint (and headers, timeout) from the standard variables.
    let exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder().with_tonic().build(),
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => return Err(TelemetryError::Protocol(other.to_owned())),
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = match env("OTEL_SERVICE_NAME") {
        Some(_) => Resource::builder().build(),
        None => Resource::builder()
            .with_service_name(service_name.to_owned())
            .build(),
    };
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), parent-based always-on by default.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    Ok(Some(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
