//! `dalc up`, `dalc gateway` and `dalc worker`: open the backends once (the composition root),
//! wire the pieces together and run until a signal.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use dalc_domain::Backoff;
use dalc_gateway::{ApiKeys, GatewayBackends, GatewayConfig, Listeners, SweepPolicy, TlsIdentity};
use dalc_queue::{
    DeadLetterConsumer, QueueError, QueueNames, TaskConsumer, TaskPublisher, UpdateConsumer,
    UpdatePublisher,
    amqp::{AmqpBroker, AmqpConfig, redact_url as redact},
    memory::MemoryBroker,
};
use dalc_storage::{StorageError, StoreOptions, TaskStore};
use dalc_telemetry::Metrics;
use dalc_worker::WorkerConfig;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::{
    ApiArgs, BrokerArgs, CommonArgs, GatewayArgs, Listen, StoreArgs, TopologyArgs, UpArgs,
    WorkArgs, WorkerArgs,
};

/// Every queue role at once: what the in-process queue and RabbitMQ both are.
trait Broker:
    TaskPublisher + TaskConsumer + UpdatePublisher + UpdateConsumer + DeadLetterConsumer + 'static
{
}
impl<B> Broker for B where
    B: TaskPublisher
        + TaskConsumer
        + UpdatePublisher
        + UpdateConsumer
        + DeadLetterConsumer
        + 'static
{
}

/// The opened backends: the task database and the queue.
struct Backends {
    store: TaskStore,
    broker: Arc<dyn Broker>,
    /// The same queue by its concrete kind: for its depth, and to close RabbitMQ politely.
    queue: Queue,
}

#[derive(Clone)]
enum Queue {
    RabbitMq(Arc<AmqpBroker>),
    InProcess(Arc<MemoryBroker>),
}

impl Backends {
    /// Opens the database (migrating it unless told not to) and the queue: RabbitMQ at
    /// `amqp_url`, or the in-process queue. Waits, with backoff, for either to come up (pods
    /// start before their dependencies); a configuration error fails at once.
    async fn open(
        store: &StoreArgs,
        amqp_url: Option<&str>,
        topology: &TopologyArgs,
        role: &str,
        metrics: &Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<Backends> {
        let store = open_store(store, shutdown).await?;
        let backends = match amqp_url {
            Some(url) => {
                let broker = connect_broker(url, topology, role, metrics, shutdown).await?;
                Backends {
                    store,
                    broker: broker.clone(),
                    queue: Queue::RabbitMq(broker),
                }
            }
            None => {
                info!("using the in-process queue (set --amqp-url for RabbitMQ)");
                let max_length = topology
                    .max_queue_length
                    .and_then(|max| usize::try_from(max).ok());
                let broker = Arc::new(MemoryBroker::with_max_length(max_length));
                requeue_open_tasks(&store, broker.as_ref()).await?;
                Backends {
                    store,
                    broker: broker.clone(),
                    queue: Queue::InProcess(broker),
                }
            }
        };
        backends.sample_queue_depth(metrics.clone(), shutdown.clone());
        Ok(backends)
    }

    fn gateway(&self) -> GatewayBackends {
        GatewayBackends {
            store: self.store.clone(),
            publisher: self.broker.clone(),
            updates: self.broker.clone(),
            dead_letters: self.broker.clone(),
            notifier: self.broker.clone(),
        }
    }

    async fn worker(&self, config: WorkerConfig, shutdown: CancellationToken) {
        dalc_worker::run(
            config,
            self.store.clone(),
            self.broker.clone(),
            self.broker.clone(),
            shutdown,
        )
        .await;
    }

    /// Samples the request queue's depth for `dalc_request_queue_depth` until `shutdown`.
    fn sample_queue_depth(&self, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                // Every request queue (quorum: the interactive lane too), as GetStats counts.
                let depth = match &queue {
                    Queue::RabbitMq(broker) => TaskPublisher::depth(&**broker).await,
                    Queue::InProcess(broker) => TaskPublisher::depth(&**broker).await,
                };
                if let Ok(Some(depth)) = depth
                    && let Ok(depth) = i64::try_from(depth)
                {
                    metrics.request_queue_depth.set(depth);
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(QUEUE_DEPTH_INTERVAL) => {}
                }
            }
        });
    }

    async fn close(&self) {
        if let Queue::RabbitMq(broker) = &self.queue {
            broker.close().await;
        }
    }
}

pub async fn up(args: UpArgs, shutdown: CancellationToken, metrics: Arc<Metrics>) -> Result<()> {
    let config = gateway_config(&args.api, &args.common, &metrics)?;
    let backends = Backends::open(
        &args.store,
        args.amqp_url.as_deref(),
        &args.topology,
        "dalc-up",
        &metrics,
        &shutdown,
    )
    .await?;
    let listeners = bind_listeners(&args.api).await?;
    let backends = Arc::new(backends);
    let mut services = JoinSet::new();
    // The workers stop after the gateway: calls it accepts while draining still get run.
    let workers_stop = CancellationToken::new();
    for n in 0..args.workers {
        let config = worker_config(&args.work, &args.common, Some(n), &metrics);
        let (backends, stop) = (backends.clone(), workers_stop.clone());
        services.spawn(async move {
            backends.worker(config, stop).await;
            Ok(())
        });
    }
    let gateway = dalc_gateway::run(config, listeners, backends.gateway(), shutdown.clone());
    services.spawn(async move {
        let served = gateway.await;
        workers_stop.cancel();
        served.context("gateway")
    });
    let result = wait_all(services, shutdown).await;
    backends.close().await;
    result
}

pub async fn gateway(
    args: GatewayArgs,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let config = gateway_config(&args.api, &args.common, &metrics)?;
    let backends = open_distributed(
        &args.store,
        &args.broker,
        "dalc-gateway",
        &metrics,
        &shutdown,
    )
    .await?;
    let listeners = bind_listeners(&args.api).await?;
    let result = dalc_gateway::run(config, listeners, backends.gateway(), shutdown).await;
    backends.close().await;
    result.context("gateway")
}

pub async fn worker(
    args: WorkerArgs,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let backends = open_distributed(
        &args.store,
        &args.broker,
        "dalc-worker",
        &metrics,
        &shutdown,
    )
    .await?;
    let config = worker_config(&args.work, &args.common, None, &metrics);
    backends.worker(config, shutdown).await;
    backends.close().await;
    Ok(())
}

async fn open_distributed(
    store: &StoreArgs,
    broker: &BrokerArgs,
    role: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Backends> {
    let url = Some(broker.amqp_url.as_str());
    Backends::open(store, url, &broker.topology, role, metrics, shutdown).await
}

/// Retries `attempt` with backoff while it fails with an outage (`is_outage`), until it
/// succeeds or `shutdown`; any other error is returned at once.
async fn wait_for<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    is_outage: impl Fn(&E) -> bool,
    attempt: F,
) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut backoff = Backoff::reconnect();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if is_outage(&err) => {
                let pause = backoff.next_delay();
                warn!(error = %err, retry_in = ?pause, "waiting for {what}");
                tokio::select! {
                    () = shutdown.cancelled() => {
                        return Err(err).with_context(|| format!("gave up waiting for {what}"));
                    }
                    () = tokio::time::sleep(pause) => {}
                }
            }
            Err(err) => return Err(err).with_context(|| format!("cannot use {what}")),
        }
    }
}

async fn open_store(args: &StoreArgs, shutdown: &CancellationToken) -> Result<TaskStore> {
    let options = StoreOptions {
        statement_timeout: args.statement_timeout.0,
        ..StoreOptions::default()
    };
    let what = format!("the database at {}", redact(&args.database_url));
    let skip_migrations = args.skip_migrations;
    wait_for(&what, shutdown, StorageError::is_unavailable, || async {
        let store = TaskStore::connect_with(&args.database_url, &options).await?;
        if !skip_migrations {
            store.migrate().await?;
        }
        Ok::<_, StorageError>(store)
    })
    .await
}

/// The in-process queue died with the previous process: queue its open tasks again.
async fn requeue_open_tasks(store: &TaskStore, queue: &MemoryBroker) -> Result<()> {
    let open = store
        .forget_publishes_of_open_tasks()
        .await
        .context("cannot read open tasks")?;
    if open > 0 {
        let policy = SweepPolicy {
            claim: GatewayConfig::DEFAULT_SWEEP_GRACE,
            retention: None,
        };
        let report = dalc_gateway::sweep_once(store, queue, policy)
            .await
            .context("cannot requeue open tasks")?;
        info!(
            requeued = report.republished,
            expired = report.expired,
            "resumed tasks left open by the last run"
        );
    }
    Ok(())
}

/// Connects to RabbitMQ, waiting for it to come up.
async fn connect_broker(
    url: &str,
    topology: &TopologyArgs,
    role: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Arc<AmqpBroker>> {
    let mut config = AmqpConfig::new(url, QueueNames::new(topology.queue_prefix.clone()));
    config.metrics = metrics.clone();
    config.queue_type = topology.queue_type;
    config.delivery_limit = topology.delivery_limit;
    config.dead_letter_max_length = topology.dead_letter_max_length;
    config.max_queue_length = topology.max_queue_length;
    // Host and pid: tells this process's connections apart in the management UI (and lets an
    // operator, or a fault test, close exactly one of them).
    config.connection_name = format!("{role}@{} pid {}", host_name(), std::process::id());
    let what = format!("RabbitMQ at {}", redact(url));
    let is_outage = QueueError::is_outage;
    let broker = wait_for(&what, shutdown, is_outage, || {
        AmqpBroker::connect(config.clone())
    })
    .await?;
    Ok(Arc::new(broker))
}

/// The HTTP/JSON API's address when none is given.
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// Binds the gRPC listener and (unless `off`) the HTTP one.
async fn bind_listeners(args: &ApiArgs) -> Result<Listeners> {
    let grpc = bind(&args.listen, "dalc gateway").await?;
    let http = match Listen::of(args.http_listen.as_deref()) {
        Listen::Off => None,
        Listen::At(listen) => Some(bind(listen, "dalc http").await?),
        // The default port is a convenience, not a requirement: a second gateway on this host
        // (or anything else on 8080) must not stop this one from starting.
        Listen::Unset => match bind(DEFAULT_HTTP_LISTEN, "dalc http").await {
            Ok(listener) => Some(listener),
            Err(err) => {
                warn!(error = %format!("{err:#}"), "the default HTTP port is taken; serving HTTP on a free port (set --http-listen to choose)");
                Some(bind("127.0.0.1:0", "dalc http").await?)
            }
        },
    };
    Ok(Listeners { grpc, http })
}

/// Binds a listener and prints the bound address on stdout (`<what> listening on ADDR`), so
/// scripts and tests that asked for port 0 learn the port.
async fn bind(listen: &str, what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    announce(&format!("{what} listening on {addr}"));
    Ok(listener)
}

/// Prints a line on stdout for scripts and tests to read. Best effort: a reader that stopped
/// reading (a closed pipe) must not stop the service.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn gateway_config(
    args: &ApiArgs,
    common: &CommonArgs,
    metrics: &Arc<Metrics>,
) -> Result<GatewayConfig> {
    let id = args.gateway_id.clone().unwrap_or_else(|| unique_name("gw"));
    let mut config = GatewayConfig::new(id);
    config.limits.max_expression_bytes = common.max_expression_bytes;
    config.default_wait = args.default_wait.0;
    config.max_wait = args.max_wait.0;
    config.task_ttl = args.task_ttl.0.min(args.max_task_ttl.0);
    config.max_task_ttl = args.max_task_ttl.0;
    config.shutdown_grace = common.shutdown_grace.0;
    config.drain_delay = args.drain_delay.0;
    config.sweep_interval = args.sweep_interval.0;
    config.sweep_grace = args.sweep_grace.0;
    config.retention = (!args.retention.0.is_zero()).then_some(args.retention.0);
    config.max_batch_size = args.max_batch_size;
    config.max_waiting_calls = args.max_waiting_calls;
    config.max_message_bytes = args.max_message_bytes;
    anyhow::ensure!(
        config.max_message_bytes >= config.min_message_bytes(),
        "--max-message-bytes {} is too small: the largest task (an expression of \
         --max-expression-bytes {}, a result of up to {} digits) needs at least {}",
        config.max_message_bytes,
        config.limits.max_expression_bytes,
        config.limits.max_integer_digits,
        config.min_message_bytes()
    );
    if let Some(path) = &args.api_keys_file {
        config.api_keys = Some(ApiKeys::load(path)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        config.tls = Some(TlsIdentity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        });
    }
    #[cfg(feature = "fault-injection")]
    {
        config.fault_abort_before_publish = args.fault_abort_before_publish;
    }
    config.metrics = metrics.clone();
    Ok(config)
}

fn worker_config(
    args: &WorkArgs,
    common: &CommonArgs,
    index: Option<u16>,
    metrics: &Arc<Metrics>,
) -> WorkerConfig {
    let id = args
        .worker_id
        .clone()
        .unwrap_or_else(|| unique_name("worker"));
    let id = match index {
        Some(n) => format!("{id}-{n}"),
        None => id,
    };
    let mut config = WorkerConfig::new(id);
    config.concurrency = args.concurrency.max(1);
    config.max_attempts = args.max_attempts;
    config.lease = args.lease.0;
    config.limits.max_expression_bytes = common.max_expression_bytes;
    config.shutdown_grace = common.shutdown_grace.0;
    #[cfg(feature = "fault-injection")]
    {
        config.fault_crash_on = args.fault_crash_on.clone();
        config.fault_stall_on = args
            .fault_stall_on
            .clone()
            .map(|marker| (marker, args.fault_stall_for.0));
    }
    config.metrics = metrics.clone();
    config
}

/// How often the request queue's depth is sampled for `dalc_request_queue_depth`.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Serves Prometheus metrics on `listen`, printing the bound address like the gRPC listener.
pub async fn metrics(
    listen: &str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = bind(listen, "dalc metrics").await?;
    tokio::spawn(async move {
        if let Err(err) =
            dalc_telemetry::metrics::serve(listener, metrics, shutdown.cancelled_owned()).await
        {
            tracing::warn!(error = %err, "metrics endpoint failed");
        }
    });
    Ok(())
}

/// Runs until every service ends; the first failure stops the others.
async fn wait_all(mut services: JoinSet<Result<()>>, shutdown: CancellationToken) -> Result<()> {
    let mut outcome = Ok(());
    while let Some(joined) = services.join_next().await {
        let result = joined.context("a service panicked").and_then(|r| r);
        if let Err(err) = result {
            shutdown.cancel();
            if outcome.is_ok() {
                outcome = Err(err);
            }
        }
    }
    outcome
}

/// `<host>-<random>`: unique across restarts, recognisable in logs and the RabbitMQ UI.
fn unique_name(role: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{role}-{}-{suffix}", host_name())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
