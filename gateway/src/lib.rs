//! The gateway: serves `dalc.v1.TaskService` (plus `grpc.health.v1` and server reflection v1 and
//! v1alpha), stores each task, publishes it with `reply_to` = this gateway's reply queue, and
//! routes replies and status events to waiting callers by task id.
//!
//! [`run`] is what the binary and the tests call, on a listener they bound (port 0 in tests).

mod convert;
mod error;
mod service;
mod sweeper;
mod tasks;
mod wait;
mod waiters;

use std::{sync::Arc, time::Duration};

use dalc_proto::v1::task_service_server::TaskServiceServer;
use dalc_queue::{TaskPublisher, UpdateConsumer};
use dalc_storage::TaskStore;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::ApiError;
pub use sweeper::{SweepReport, sweep_once};
pub use waiters::Waiters;

use crate::{service::TaskServiceImpl, tasks::Tasks};

/// How a gateway behaves. Every field has a documented default (see `dalc gateway --help`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Names this gateway's reply queue; unique per running gateway.
    pub gateway_id: String,
    /// The expression engine's limits; `max_expression_bytes` is enforced at submit.
    pub limits: dalc_calc::Limits,
    /// How long a sync call waits when the request gives no `timeout`.
    pub default_wait: Duration,
    /// The longest any call may wait, whatever it asks for.
    pub max_wait: Duration,
    /// The deadline of a task whose request gives no `timeout`.
    pub task_ttl: Duration,
    /// First pause between database reads while waiting (doubles up to 4 s): the fallback
    /// for a lost reply.
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight calls may take to finish.
    pub shutdown_grace: Duration,
    /// How often the recovery sweeper looks for tasks whose publish was never confirmed.
    pub sweep_interval: Duration,
    /// How old such a task must be before it is republished (its own gateway may still be
    /// about to confirm it).
    pub sweep_grace: Duration,
    /// TEST ONLY: abort the process after storing a task and before publishing it, to prove
    /// the sweeper recovers it. Never set in production.
    pub fault_abort_before_publish: bool,
    /// Where submissions and waiting calls are counted.
    pub metrics: Arc<dalc_telemetry::Metrics>,
}

impl GatewayConfig {
    pub fn new(gateway_id: impl Into<String>) -> Self {
        GatewayConfig {
            gateway_id: gateway_id.into(),
            limits: dalc_calc::Limits::default(),
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            task_ttl: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(25),
            sweep_interval: Duration::from_secs(5),
            sweep_grace: Duration::from_secs(10),
            fault_abort_before_publish: false,
            metrics: Arc::default(),
        }
    }
}

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot subscribe to task updates: {0}")]
    Updates(#[from] dalc_queue::QueueError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting calls and gives
/// in-flight ones `shutdown_grace` to finish.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    store: TaskStore,
    publisher: Arc<dyn TaskPublisher>,
    updates: Arc<dyn UpdateConsumer>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let waiters = Waiters::default();
    let first = updates.consume_updates(&config.gateway_id).await?;
    let reply_to = first.reply_to.clone();
    // Routing runs for the life of the process, past shutdown: calls still draining need it.
    tokio::spawn(route_updates(
        first,
        updates,
        config.gateway_id.clone(),
        waiters.clone(),
    ));

    tokio::spawn(sweeper::run(
        store.clone(),
        publisher.clone(),
        waiters.clone(),
        config.sweep_interval,
        config.sweep_grace,
        shutdown.clone(),
    ));

    let grace = config.shutdown_grace;
    // Cancelled shortly before the grace period ends: waiting calls then answer with the task
    // as it stands instead of being cut off.
    let draining = CancellationToken::new();
    let tasks = Arc::new(Tasks {
        config,
        store,
        publisher,
        waiters,
        reply_to,
        draining: draining.clone(),
    });
    let task_service = TaskServiceServer::new(TaskServiceImpl { tasks });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TaskServiceServer<TaskServiceImpl>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dalc_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "gateway listening");
    }
    let stopping = shutdown.clone();
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Detect dead clients holding long waits.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(task_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stopping.cancelled().await;
            info!("gateway stopping: NOT_SERVING, no new calls");
            health
                .set_not_serving::<TaskServiceServer<TaskServiceImpl>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        });
    // tonic waits for in-flight calls without a deadline; bound it.
    let bounded_drain = async {
        shutdown.cancelled().await;
        let answer_margin = (grace / 5).min(Duration::from_secs(2));
        tokio::time::sleep(grace.saturating_sub(answer_margin)).await;
        draining.cancel();
        tokio::time::sleep(answer_margin).await;
        warn!(
            ?grace,
            "gateway grace period over; dropping remaining calls"
        );
    };
    tokio::select! {
        served = serve => served?,
        () = bounded_drain => {}
    }
    info!("gateway stopped");
    Ok(())
}

/// The one long-lived update consumer: routes replies and events to waiters by task id, and
/// resubscribes (with backoff) whenever the broker connection drops.
async fn route_updates(
    mut current: dalc_queue::Updates,
    updates: Arc<dyn UpdateConsumer>,
    gateway_id: String,
    waiters: Waiters,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Some(task) = current.stream.next().await {
            waiters.deliver(task);
        }
        warn!("task update stream ended; resubscribing");
        loop {
            tokio::time::sleep(backoff).await;
            match updates.consume_updates(&gateway_id).await {
                Ok(next) => {
                    info!("task updates resubscribed");
                    current = next;
                    backoff = Duration::from_millis(100);
                    break;
                }
                Err(err) => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    warn!(error = %err, retry_in = ?backoff, "cannot resubscribe to task updates");
                }
            }
        }
    }
}
