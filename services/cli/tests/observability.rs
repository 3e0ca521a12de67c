//! Traces and metrics from real gateway and worker processes over RabbitMQ and PostgreSQL:
//! an OTLP collector inside the test receives their spans, and their Prometheus endpoints are
//! scraped after a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dalc_proto::v1::{SubmitTaskRequest, TaskStatus, task_service_client::TaskServiceClient};
use dalc_testkit::{metric as value, process::DalcProcess};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tonic::{Request, Response, Status};

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

/// One received span, flattened.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP trace collector: records every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = attributes(&resource.attributes)
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, endpoint)
}

/// A gateway and a worker sharing a fresh database and queue prefix, with `extra_env`.
async fn gateway_and_worker(
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
) -> (DalcProcess, DalcProcess) {
    let stack = dalc_testkit::StackEnv::fresh().await;
    let mut env = stack.vars();
    env.extend_from_slice(extra_env);
    let mut gateway_args = vec!["gateway", "--listen", "127.0.0.1:0"];
    gateway_args.extend_from_slice(extra_args);
    let gateway = DalcProcess::start("gateway", dalc(), &gateway_args, &env, true);
    let mut worker_args = vec!["worker", "--worker-id", "traced-worker"];
    worker_args.extend_from_slice(extra_args);
    let worker = DalcProcess::start("worker", dalc(), &worker_args, &env, false);
    (gateway, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_grpc_call_through_rabbitmq_to_the_worker() {
    let (collector, endpoint) = start_collector().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export promptly, so the test need not wait for the default 5 s batches.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (gateway, _worker) = gateway_and_worker(&env, &[]).await;
    let mut client = TaskServiceClient::connect(gateway.url()).await.unwrap();

    // A call that carries the client's own trace context.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut request = Request::new(SubmitTaskRequest {
        expression: "1 + 1".into(),
        wait: true,
        timeout: None,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{client_trace}-{client_span}-01")
            .parse()
            .unwrap(),
    );
    let task = client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.status(), TaskStatus::Succeeded);

    // A call without one starts a trace of its own.
    let request = SubmitTaskRequest {
        expression: "2 + 2".into(),
        wait: true,
        timeout: None,
        ..Default::default()
    };
    let other = client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();

    let spans = wait_for_spans(&collector, &[&task.id, &other.id]).await;
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == client_trace)
        .collect();
    print_trace(&trace);

    let find = |service: &str, name: &str| {
        trace
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span from {service} in {trace:#?}"))
    };
    let server = find("dalc-gateway", "dalc.v1.TaskService/SubmitTask");
    let insert = find("dalc-gateway", "insert");
    let publish = trace
        .iter()
        .find(|s| s.service == "dalc-gateway" && s.name.ends_with("dalc.tasks publish"))
        .expect("publish span");
    let wait = find("dalc-gateway", "wait for result");
    let process = trace
        .iter()
        .find(|s| s.service == "dalc-worker" && s.name.ends_with("dalc.tasks process"))
        .expect("the worker's consumer span");
    // `1 + 1` is a quick attempt: evaluated, then its attempt and result recorded in one write.
    let record = find("dalc-worker", "record_quick_attempt");
    let evaluate = find("dalc-worker", "evaluate");
    let reply = trace
        .iter()
        .find(|s| s.service == "dalc-worker" && s.name.contains("dalc.reply"))
        .expect("reply span");

    // The client's traceparent is continued: the server span is the child of the client's span.
    assert_eq!(server.parent_span_id, client_span);
    // The gateway's work hangs off its server span (through the submit span).
    let submit = find("dalc-gateway", "submit");
    assert_eq!(submit.parent_span_id, server.span_id);
    for child in [insert, publish, wait] {
        assert_eq!(child.parent_span_id, submit.span_id, "{child:?}");
    }
    assert_eq!(
        publish
            .attributes
            .get("messaging.system")
            .map(String::as_str),
        Some("rabbitmq")
    );
    assert_eq!(
        publish.attributes.get("messaging.message.conversation_id"),
        Some(&task.id)
    );
    // The worker continues the trace from the message headers: its consumer span is the child
    // of the gateway's producer span, and the worker's steps are children of it.
    assert_eq!(process.parent_span_id, publish.span_id);
    for child in [evaluate, record, reply] {
        assert_eq!(child.parent_span_id, process.span_id, "{child:?}");
    }
    assert_eq!(process.attributes.get("task_id"), Some(&task.id));
    assert_eq!(
        process.attributes.get("worker_id").map(String::as_str),
        Some("traced-worker")
    );
    assert_eq!(
        process.attributes.get("attempt").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        process.attributes.get("status").map(String::as_str),
        Some("SUCCEEDED")
    );

    // The second call: one fresh trace covers the gateway's and the worker's spans.
    let server = spans
        .iter()
        .find(|s| {
            s.name == "dalc.v1.TaskService/SubmitTask"
                && s.attributes.get("task_id") == Some(&other.id)
        })
        .expect("server span of the second call");
    assert_ne!(server.trace_id, client_trace);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert!(spans.iter().any(|s| s.service == "dalc-worker"
        && s.trace_id == server.trace_id
        && s.name.ends_with("dalc.tasks process")));
}

/// Waits until the worker's consumer spans of all `task_ids` (and their gateways' server
/// spans) have arrived.
async fn wait_for_spans(collector: &Collector, task_ids: &[&str]) -> Vec<ReceivedSpan> {
    let started = Instant::now();
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        let done = task_ids.iter().all(|id| {
            let has = |service: &str, name: &str| {
                spans.iter().any(|s| {
                    s.service == service
                        && s.name.ends_with(name)
                        && s.attributes.get("task_id").map(String::as_str) == Some(*id)
                })
            };
            has("dalc-worker", "dalc.tasks process")
                && has("dalc-gateway", "dalc.v1.TaskService/SubmitTask")
        });
        let replies = spans
            .iter()
            .filter(|s| s.name.contains("dalc.reply"))
            .count();
        if done && replies >= task_ids.len() {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans never arrived: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the trace as a tree, where CI logs show it.
fn print_trace(trace: &[&ReceivedSpan]) {
    use std::io::Write;
    fn walk(trace: &[&ReceivedSpan], parent: &str, depth: usize, out: &mut String) {
        for span in trace.iter().filter(|s| s.parent_span_id == parent) {
            out.push_str(&format!(
                "{}{} [{}] span={}\n",
                "  ".repeat(depth + 1),
                span.name,
                span.service,
                span.span_id
            ));
            walk(trace, &span.span_id, depth + 1, out);
        }
    }
    let mut out = format!(
        "TRACE {}\n",
        trace.first().map_or("", |s| s.trace_id.as_str())
    );
    let roots: Vec<&str> = trace
        .iter()
        .map(|s| s.parent_span_id.as_str())
        .filter(|p| !trace.iter().any(|s| s.span_id == *p))
        .collect();
    for root in roots.into_iter().collect::<std::collections::BTreeSet<_>>() {
        out.push_str(&format!("  (parent {root})\n"));
        walk(trace, root, 1, &mut out);
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_done() {
    let (gateway, worker) = gateway_and_worker(&[], &["--metrics-listen", "127.0.0.1:0"]).await;
    let mut client = TaskServiceClient::connect(gateway.url()).await.unwrap();
    for n in 0..20 {
        let expression = if n % 4 == 0 {
            format!("{n} / 0")
        } else {
            format!("{n} + 1")
        };
        let request = SubmitTaskRequest {
            expression,
            wait: true,
            timeout: None,
            ..Default::default()
        };
        client.submit_task(request).await.unwrap();
    }
    // Rejected input is not a submission.
    let bad = SubmitTaskRequest {
        expression: "1 +".into(),
        wait: true,
        timeout: None,
        ..Default::default()
    };
    assert!(client.submit_task(bad).await.is_err());

    // A call's answer can outrun what is counted after it (the publish's confirm, the worker's
    // own confirms and ack): each process's figures are read once enough are in (the gateway's
    // health probes' confirms count too, so its wait is a floor, as its assertion is).
    let gateway_metrics = metrics_once(&gateway, |text| {
        value(text, "dalc_publish_confirm_seconds_count") >= 20.0
    })
    .await;
    let worker_metrics = metrics_once(&worker, |text| {
        value(text, "dalc_tasks_in_flight") == 0.0
            && value(text, "dalc_publish_confirm_seconds_count") >= 40.0
    })
    .await;
    assert_eq!(value(&gateway_metrics, "dalc_tasks_submitted_total"), 20.0);
    assert_eq!(value(&gateway_metrics, "dalc_waiting_calls"), 0.0);
    assert!(value(&gateway_metrics, "dalc_publish_confirm_seconds_count") >= 20.0);
    assert_eq!(value(&gateway_metrics, "dalc_broker_reconnects_total"), 0.0);
    assert_eq!(
        value(
            &worker_metrics,
            "dalc_tasks_finished_total{status=\"SUCCEEDED\"}"
        ),
        15.0
    );
    assert_eq!(
        value(
            &worker_metrics,
            "dalc_tasks_finished_total{status=\"FAILED\"}"
        ),
        5.0
    );
    assert_eq!(
        value(&worker_metrics, "dalc_task_evaluation_seconds_count"),
        20.0
    );
    assert_eq!(
        value(&worker_metrics, "dalc_task_end_to_end_seconds_count"),
        20.0
    );
    assert_eq!(value(&worker_metrics, "dalc_tasks_in_flight"), 0.0);
    // Replies and events are confirmed too.
    assert!(value(&worker_metrics, "dalc_publish_confirm_seconds_count") >= 40.0);
    // Sampled every few seconds, so only its presence is certain here.
    assert!(value(&worker_metrics, "dalc_request_queue_depth") >= 0.0);
}

/// `process`'s metrics once `settled` holds of them, or as they are after 5 s.
async fn metrics_once(process: &DalcProcess, settled: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    dalc_testkit::eventually(Duration::from_secs(5), async || {
        text = process.scrape_metrics();
        settled(&text)
    })
    .await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_task_and_the_trace() {
    let dir = std::env::temp_dir().join(format!("dalc-logs-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("up.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(dalc())
        .args(["up", "--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--log-format", "json"])
        .current_dir(&dir)
        .env("DALC_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("dalc gateway listening on ")
        .unwrap()
        .to_owned();
    let mut client = TaskServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = Request::new(SubmitTaskRequest {
        expression: "1 + 1".into(),
        wait: true,
        timeout: None,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let task = client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    let finished: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["message"] == "task finished")
        .collect();
    assert_eq!(finished.len(), 1, "{text}");
    let entry = &finished[0];
    let spans = entry["spans"].as_array().expect("the span list");
    let field = |name: &str| spans.iter().find_map(|span| span.get(name)).cloned();
    assert_eq!(
        field("task_id"),
        Some(serde_json::Value::String(task.id.clone())),
        "{entry}"
    );
    assert_eq!(
        field("trace_id"),
        Some(serde_json::Value::String(trace.to_owned())),
        "{entry}"
    );
}
