//! The gateway: serves `dalc.v1.TaskService` (plus `grpc.health.v1` and server reflection v1 and
//! v1alpha), stores each task, publishes it with `reply_to` = this gateway's reply queue, and
//! routes replies and status events to waiting callers by task id.
//!
//! [`run`] is what the binary and the tests call, on a listener they bound (port 0 in tests).

mod auth;
mod batch;
mod convert;
mod dead_letters;
mod error;
mod events;
mod health;
mod marks;
mod service;
mod size_limit;
mod sweeper;
mod task_counts;
mod tasks;
mod wait;
mod waiters;

use std::{sync::Arc, time::Duration};

use axum::serve::ListenerExt;
use dalc_domain::Backoff;
use dalc_proto::v1::task_service_server::TaskServiceServer;
use dalc_queue::{DeadLetterConsumer, TaskPublisher, UpdateConsumer, UpdatePublisher};
use dalc_storage::TaskStore;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

pub use auth::{ApiKeys, KeysFileError, Tenant, keys_file_line, valid_tenant};
pub use error::ApiError;
pub use sweeper::{SweepPolicy, SweepReport, sweep_once};
pub use waiters::Waiters;

use crate::{events::Events, marks::PublishMarks, service::TaskServiceImpl, tasks::Tasks};

/// How a gateway behaves. The `DEFAULT_*` constants are the documented defaults (`dalc gateway
/// --help` shows them; the CLI takes them from here).
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
    /// The longest `timeout` a request may give; past it the call is INVALID_ARGUMENT.
    pub max_task_ttl: Duration,
    /// First pause between database reads while waiting (doubles up to 4 s): the fallback
    /// for a lost reply.
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight calls may take to finish.
    pub shutdown_grace: Duration,
    /// On shutdown, how long the gateway keeps accepting calls after reporting NOT_SERVING, so
    /// load balancers and readiness probes stop sending before the listener closes.
    pub drain_delay: Duration,
    /// How often the database and the broker are checked for the health service.
    pub health_interval: Duration,
    /// How often the recovery sweeper runs.
    pub sweep_interval: Duration,
    /// How long a new task's gateway has to confirm its publish before a sweeper republishes
    /// it; also how long a sweeper's claim lasts.
    pub sweep_grace: Duration,
    /// Finished tasks are deleted this long after they ended; `None` keeps them for ever.
    pub retention: Option<Duration>,
    /// TEST ONLY: abort the process after storing a task and before publishing it, to prove
    /// the sweeper recovers it. Compiled in only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fault_abort_before_publish: bool,
    /// Where submissions and waiting calls are counted.
    pub metrics: Arc<dalc_telemetry::Metrics>,
    /// With keys, every TaskService call needs one, and belongs to its tenant; `None`: no
    /// authentication, one tenant.
    pub api_keys: Option<ApiKeys>,
    /// The most expressions one SubmitBatch may hold.
    pub max_batch_size: usize,
    /// The most calls waiting at once (sync submissions, long polls, watches, batches); past
    /// it calls are RESOURCE_EXHAUSTED.
    pub max_waiting_calls: usize,
    /// The largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// PEM certificate chain and private key: serve gRPC over TLS.
    pub tls: Option<TlsIdentity>,
}

/// A server certificate and its key, as PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl GatewayConfig {
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(300);
    pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MAX_TASK_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
    pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(2);
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_SWEEP_GRACE: Duration = Duration::from_secs(10);
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_MAX_BATCH_SIZE: usize = 10_000;
    pub const DEFAULT_MAX_WAITING_CALLS: usize = 10_000;
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

    /// The smallest `max_message_bytes` that holds any one task these limits allow: below it
    /// some task could be neither answered nor listed.
    pub fn min_message_bytes(&self) -> usize {
        tasks::min_message_bytes(&self.limits)
    }

    pub fn new(gateway_id: impl Into<String>) -> Self {
        GatewayConfig {
            gateway_id: gateway_id.into(),
            limits: dalc_calc::Limits::default(),
            default_wait: Self::DEFAULT_WAIT,
            max_wait: Self::DEFAULT_MAX_WAIT,
            task_ttl: Self::DEFAULT_TASK_TTL,
            max_task_ttl: Self::DEFAULT_MAX_TASK_TTL,
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            drain_delay: Self::DEFAULT_DRAIN_DELAY,
            health_interval: Self::DEFAULT_HEALTH_INTERVAL,
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
            sweep_grace: Self::DEFAULT_SWEEP_GRACE,
            retention: Some(Self::DEFAULT_RETENTION),
            #[cfg(feature = "fault-injection")]
            fault_abort_before_publish: false,
            metrics: Arc::default(),
            api_keys: None,
            max_batch_size: Self::DEFAULT_MAX_BATCH_SIZE,
            max_waiting_calls: Self::DEFAULT_MAX_WAITING_CALLS,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
        }
    }
}

/// What a gateway talks to.
#[derive(Clone)]
pub struct GatewayBackends {
    pub store: TaskStore,
    pub publisher: Arc<dyn TaskPublisher>,
    pub updates: Arc<dyn UpdateConsumer>,
    pub dead_letters: Arc<dyn DeadLetterConsumer>,
    /// Announces changes made at the gateway (cancellations) to other gateways' watchers.
    pub notifier: Arc<dyn UpdatePublisher>,
}

impl std::fmt::Debug for GatewayBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBackends")
            .field("store", &self.store)
            .field("queue", &self.publisher.destination())
            .finish_non_exhaustive()
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
    /// API keys would travel in clear text next to a TLS gRPC listener.
    #[error(
        "the HTTP listener on {0} has no TLS while gRPC has: keep it on a loopback address (for a TLS-terminating proxy) or turn it off (--http-listen off)"
    )]
    PlainHttpBesideTls(std::net::SocketAddr),
}

/// Where a gateway serves: gRPC, and optionally the HTTP/JSON API and dashboard.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Listeners { grpc, http: None }
    }
}

/// Serves on `listeners` until `shutdown` is cancelled; then reports NOT_SERVING, keeps
/// accepting for `drain_delay`, stops accepting and gives in-flight calls the rest of
/// `shutdown_grace`.
pub async fn run(
    config: GatewayConfig,
    listeners: impl Into<Listeners>,
    backends: GatewayBackends,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let Listeners {
        grpc: listener,
        http: http_listener,
    } = listeners.into();
    let GatewayBackends {
        store,
        publisher,
        updates,
        dead_letters,
        notifier,
    } = backends;
    // Configuration first: refused before anything starts in the background.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        if let Some(http) = &http_listener
            && let Ok(addr) = http.local_addr()
            && !addr.ip().is_loopback()
        {
            return Err(GatewayError::PlainHttpBesideTls(addr));
        }
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let waiters = Waiters::default();
    let first = updates.consume_updates(&config.gateway_id, false).await?;
    let reply_to = first.reply_to.clone();
    let events = Events::new(updates.clone(), config.gateway_id.clone());
    // Routing runs for the life of the process, past shutdown: calls still draining need it.
    tokio::spawn(route_updates(first, events.clone(), waiters.clone()));
    let policy = SweepPolicy {
        claim: config.sweep_grace,
        retention: config.retention,
    };
    tokio::spawn(sweeper::run(
        store.clone(),
        publisher.clone(),
        waiters.clone(),
        config.metrics.clone(),
        config.sweep_interval,
        policy,
        shutdown.clone(),
    ));
    tokio::spawn(dead_letters::run(
        store.clone(),
        dead_letters,
        waiters.clone(),
        config.metrics.clone(),
        shutdown.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health::report(&health, tonic_health::ServingStatus::Serving).await;
    health
        .set_service_status(health::LIVENESS, tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(health::watch(
        health.clone(),
        store.clone(),
        publisher.clone(),
        config.health_interval,
        shutdown.clone(),
    ));

    let grace = config.shutdown_grace;
    let drain_delay = config.drain_delay.min(grace);
    // Cancelled shortly before the grace period ends: waiting calls then answer with the task
    // as it stands instead of being cut off.
    let draining = CancellationToken::new();
    let marks = PublishMarks::start(store.clone(), config.sweep_grace);
    let waiting = Arc::new(tokio::sync::Semaphore::new(config.max_waiting_calls));
    let max_message_bytes = config.max_message_bytes;
    let counts = task_counts::TaskCounts::default();
    warm_up_counts(&counts, &store, &config);
    let tasks = Arc::new(Tasks {
        counts,
        config,
        store,
        publisher,
        notifier,
        waiting,
        accepting: tokio::sync::Semaphore::new(tasks::MAX_ACCEPTING),
        waiters,
        events,
        marks,
        reply_to,
        draining: draining.clone(),
    });
    let service = Arc::new(TaskServiceImpl { tasks });
    let http = match http_listener {
        Some(http_listener) => {
            // The same handlers as gRPC, so HTTP has the same rules, keys and limits.
            let options = dalc_http::RouterOptions::default().max_body_bytes(max_message_bytes);
            let router = dalc_http::router_with(service.clone(), options);
            Some(tokio::spawn(serve_http(
                http_listener,
                router,
                shutdown.clone(),
                drain_delay,
            )))
        }
        None => None,
    };
    let task_service = TaskServiceServer::from_arc(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dalc_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "gateway listening");
    }
    let stopping = shutdown.clone();
    let serve = server
        .layer(tower::util::MapResponseLayer::new(
            size_limit::too_large_is_resource_exhausted,
        ))
        // Detect dead clients holding long waits.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(task_service)
        .serve_with_incoming_shutdown(no_delay(listener), async move {
            stopping.cancelled().await;
            info!(
                ?drain_delay,
                "gateway stopping: NOT_SERVING, still accepting while balancers notice"
            );
            health::report(&health, tonic_health::ServingStatus::NotServing).await;
            tokio::time::sleep(drain_delay).await;
            info!("gateway no longer accepting calls");
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
    if let Some(http) = http {
        // Its calls had the same grace; streams still open are dropped with the process.
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    }
    info!("gateway stopped");
    Ok(())
}

/// Counts the known tenants' finished tasks in the background, so the first GetStats of each
/// does not wait for a count of the whole table.
fn warm_up_counts(counts: &task_counts::TaskCounts, store: &TaskStore, config: &GatewayConfig) {
    let tenants = match &config.api_keys {
        Some(keys) => keys.tenants(),
        None => vec![String::new()],
    };
    let (counts, store) = (counts.clone(), store.clone());
    tokio::spawn(async move {
        for tenant in tenants {
            if let Err(err) = counts.of(&store, &tenant).await {
                warn!(error = %err, "cannot count tasks ahead of GetStats");
            }
        }
    });
}

/// The gRPC listener's connections, each with Nagle's algorithm off. (tonic's `tcp_nodelay`
/// applies only to listeners it binds itself.) With it on, a response written in pieces (HEADERS,
/// DATA, trailers) held its last piece back until the client acknowledged the first, and a client
/// may delay that acknowledgement 40 ms: that was the p99 of sync calls at 64 in flight.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves the HTTP/JSON API and dashboard until shutdown (after the same drain delay as gRPC).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    drain_delay: Duration,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP/JSON API and dashboard listening");
    }
    let stopping = async move {
        shutdown.cancelled().await;
        tokio::time::sleep(drain_delay).await;
    };
    // Nagle's algorithm off, as for gRPC (see `no_delay`).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            debug!(error = %err, "cannot set TCP_NODELAY on an HTTP connection");
        }
    });
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(stopping)
        .await
    {
        warn!(error = %err, "the HTTP listener failed");
    }
}

/// The one long-lived update consumer: routes replies and events to waiters by task id, and
/// resubscribes (with backoff, re-declaring its queues) whenever the stream ends: the broker
/// connection dropped, or the broker cancelled either consumer.
async fn route_updates(mut current: dalc_queue::Updates, events: Arc<Events>, waiters: Waiters) {
    let mut backoff = Backoff::reconnect();
    loop {
        while let Some(task) = current.stream.next().await {
            // Only a stream that delivers has recovered: one that ends at once backs off.
            backoff.reset();
            waiters.deliver(task);
        }
        warn!("task update stream ended; resubscribing");
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match events.resubscribe().await {
                Ok(next) => {
                    info!("task updates resubscribed");
                    current = next;
                    break;
                }
                Err(err) => {
                    warn!(error = %err, retry_in = ?backoff.peek(), "cannot resubscribe to task updates");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn grpc_connections_are_accepted_with_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = no_delay(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
