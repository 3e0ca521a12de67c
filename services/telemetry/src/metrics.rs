//! Prometheus metrics: one [`Metrics`] per process, served as text on `/metrics` by [`serve`].
//!
//! Gateways count submissions and waiting calls; workers time evaluations and end-to-end latency
//! and track tasks in flight; both count broker reconnects and time publisher confirms; the
//! request queue's depth is sampled periodically. Finished tasks are counted, by status, by the
//! process that ended them: a worker for the tasks it ran, a gateway for those it ended itself
//! (cancelled, expired by its sweeper or a dead letter, failed to queue), so the sum over all
//! processes counts every terminal task once.

use std::sync::Arc;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

/// Labels of `dalc_tasks_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// Labels of `dalc_dead_letters_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric dalc exports. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Tasks accepted by SubmitTask.
    pub tasks_submitted: Counter,
    /// Tasks that reached a terminal state, by status.
    pub tasks_finished: Family<StatusLabel, Counter>,
    /// From submission to the terminal state being stored.
    pub end_to_end_seconds: Histogram,
    /// Time spent evaluating expressions.
    pub evaluation_seconds: Histogram,
    /// Tasks a worker holds right now.
    pub tasks_in_flight: Gauge,
    /// Calls waiting for a task to end (sync submits, long-polls).
    pub waiting_calls: Gauge,
    /// Connections to the broker re-established after a loss.
    pub broker_reconnects: Counter,
    /// From publish to the broker's ack or nack, whether or not its caller still waits for it.
    pub publish_confirm_seconds: Histogram,
    /// Messages ready in the request queue, as last sampled.
    pub request_queue_depth: Gauge,
    /// Dead letters recorded and settled, by why the broker dead-lettered them.
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Finished tasks deleted after the retention period.
    pub tasks_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dalc");
        // 100 µs to ~100 s: a `1 + 1` round trip and the slowest accepted evaluation both fit.
        let latency = || Histogram::new(exponential_buckets(0.0001, 2.5, 16));
        let metrics = Metrics {
            tasks_submitted: Counter::default(),
            tasks_finished: Family::default(),
            end_to_end_seconds: latency(),
            evaluation_seconds: latency(),
            tasks_in_flight: Gauge::default(),
            waiting_calls: Gauge::default(),
            broker_reconnects: Counter::default(),
            publish_confirm_seconds: latency(),
            request_queue_depth: Gauge::default(),
            dead_letters: Family::default(),
            tasks_deleted: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tasks_submitted",
            "Tasks accepted by SubmitTask",
            metrics.tasks_submitted.clone(),
        );
        registry.register(
            "tasks_finished",
            "Tasks that reached a terminal state, by status",
            metrics.tasks_finished.clone(),
        );
        registry.register(
            "task_end_to_end_seconds",
            "From submission to the stored terminal state",
            metrics.end_to_end_seconds.clone(),
        );
        registry.register(
            "task_evaluation_seconds",
            "Time spent evaluating expressions",
            metrics.evaluation_seconds.clone(),
        );
        registry.register(
            "tasks_in_flight",
            "Tasks a worker holds right now",
            metrics.tasks_in_flight.clone(),
        );
        registry.register(
            "waiting_calls",
            "Calls waiting for a task to end",
            metrics.waiting_calls.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker connections re-established after a loss",
            metrics.broker_reconnects.clone(),
        );
        registry.register(
            "publish_confirm_seconds",
            "From publish to the broker's ack or nack, waited for or not",
            metrics.publish_confirm_seconds.clone(),
        );
        registry.register(
            "request_queue_depth",
            "Messages ready in the request queue, as last sampled",
            metrics.request_queue_depth.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters recorded and settled, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "tasks_deleted",
            "Finished tasks deleted after the retention period",
            metrics.tasks_deleted.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a task that reached `status`.
    pub fn task_finished(&self, status: &str) {
        self.tasks_finished
            .get_or_create(&StatusLabel {
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts a dead letter, by `reason`.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus (OpenMetrics) text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Holds a gauge one higher while alive (in-flight tasks, waiting calls), even on early return.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub fn inc(gauge: &'a Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metrics_render_with_their_names() {
        let metrics = Metrics::new();
        metrics.tasks_submitted.inc();
        metrics.task_finished("SUCCEEDED");
        metrics.evaluation_seconds.observe(0.001);
        let text = metrics.render();
        assert!(text.contains("dalc_tasks_submitted_total 1"), "{text}");
        assert!(
            text.contains("dalc_tasks_finished_total{status=\"SUCCEEDED\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dalc_task_evaluation_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("dalc_request_queue_depth 0"), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.tasks_submitted.inc();
        tokio::spawn(serve(listener, metrics, std::future::pending()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains("dalc_tasks_submitted_total 1"),
            "{response}"
        );
    }
}
