//! A minimal OTLP/gRPC trace sink for measuring tracing overhead without a real Jaeger:
//! `cargo run --release -p dalc-cli --example otlp_sink -- 127.0.0.1:4317` accepts spans,
//! counts them, and prints the count every few seconds. With `--spans` after the address it
//! also prints each span as a tab-separated line (`span`, trace id, span id, parent span id,
//! name, start and end in Unix nanoseconds), which `benches/span_breakdown.py` turns into
//! where a call's time goes.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
struct Sink {
    spans: Arc<AtomicU64>,
    /// Print every span, not only the count.
    print: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans);
        let mut count = 0;
        for span in spans {
            count += 1;
            if self.print {
                println!(
                    "span\t{}\t{}\t{}\t{}\t{}\t{}",
                    hex(&span.trace_id),
                    hex(&span.span_id),
                    hex(&span.parent_span_id),
                    span.name.replace(['\t', '\n'], " "),
                    span.start_time_unix_nano,
                    span.end_time_unix_nano
                );
            }
        }
        self.spans.fetch_add(count as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned())
        .parse()?;
    let sink = Sink {
        print: std::env::args().nth(2).as_deref() == Some("--spans"),
        ..Sink::default()
    };
    let spans = sink.spans.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            println!("spans received: {}", spans.load(Ordering::Relaxed));
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(addr)
        .await?;
    Ok(())
}
