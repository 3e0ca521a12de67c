//! `dalc up`, `dalc gateway` and `dalc worker`: wire the pieces together and run until a signal.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use dalc_gateway::GatewayConfig;
use dalc_queue::{
    QueueNames, TaskConsumer, TaskPublisher, UpdateConsumer, UpdatePublisher,
    amqp::{AmqpBroker, AmqpConfig, redact_url as redact},
    memory::MemoryBroker,
};
use dalc_storage::TaskStore;
use dalc_telemetry::Metrics;
use dalc_worker::WorkerConfig;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::args::{
    ApiArgs, CommonArgs, GatewayArgs, StoreArgs, TopologyArgs, UpArgs, WorkArgs, WorkerArgs,
};

pub async fn up(args: UpArgs, shutdown: CancellationToken, metrics: Arc<Metrics>) -> Result<()> {
    let store = open_store(&args.store).await?;
    let listener = bind(&args.api.listen).await?;
    match &args.amqp_url {
        Some(url) => {
            let broker =
                connect_broker(url, &args.topology, "dalc-up", &metrics, &shutdown).await?;
            let result =
                run_all_in_one(&args, broker.clone(), store, listener, shutdown, metrics).await;
            broker.close().await;
            result
        }
        None => {
            info!("using the in-process queue (set --amqp-url for RabbitMQ)");
            let broker = Arc::new(MemoryBroker::new());
            requeue_open_tasks(&store, broker.as_ref()).await?;
            let depth = metrics.clone();
            let queue = broker.clone();
            tokio::spawn(async move {
                loop {
                    depth
                        .request_queue_depth
                        .set(i64::try_from(queue.depth()).unwrap_or(i64::MAX));
                    tokio::time::sleep(QUEUE_DEPTH_INTERVAL).await;
                }
            });
            run_all_in_one(&args, broker, store, listener, shutdown, metrics).await
        }
    }
}

/// The in-process queue died with the previous process: queue its open tasks again.
async fn requeue_open_tasks(store: &TaskStore, queue: &MemoryBroker) -> Result<()> {
    let open = store
        .forget_publishes_of_open_tasks()
        .await
        .context("cannot read open tasks")?;
    if open > 0 {
        let report = dalc_gateway::sweep_once(store, queue, Duration::ZERO)
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

/// A gateway and `--workers` worker loops sharing one broker and one database.
async fn run_all_in_one<B>(
    args: &UpArgs,
    broker: Arc<B>,
    store: TaskStore,
    listener: TcpListener,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<()>
where
    B: TaskPublisher + TaskConsumer + UpdatePublisher + UpdateConsumer + 'static,
{
    let mut services = JoinSet::new();
    for n in 0..args.workers.max(1) {
        let config = worker_config(&args.work, &args.common, Some(n), &metrics);
        let worker = dalc_worker::run(
            config,
            store.clone(),
            broker.clone(),
            broker.clone(),
            shutdown.clone(),
        );
        services.spawn(async move {
            worker.await;
            Ok(())
        });
    }
    let config = gateway_config(&args.api, &args.common, &metrics);
    let gateway = dalc_gateway::run(
        config,
        listener,
        store,
        broker.clone(),
        broker,
        shutdown.clone(),
    );
    services.spawn(async move { gateway.await.context("gateway") });
    wait_all(services, shutdown).await
}

pub async fn gateway(
    args: GatewayArgs,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let store = open_store(&args.store).await?;
    let broker = &args.broker;
    let broker = connect_broker(
        &broker.amqp_url,
        &broker.topology,
        "dalc-gateway",
        &metrics,
        &shutdown,
    )
    .await?;
    let listener = bind(&args.api.listen).await?;
    let config = gateway_config(&args.api, &args.common, &metrics);
    let result = dalc_gateway::run(
        config,
        listener,
        store,
        broker.clone(),
        broker.clone(),
        shutdown,
    )
    .await;
    broker.close().await;
    result.context("gateway")
}

pub async fn worker(
    args: WorkerArgs,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let store = open_store(&args.store).await?;
    let broker = &args.broker;
    let broker = connect_broker(
        &broker.amqp_url,
        &broker.topology,
        "dalc-worker",
        &metrics,
        &shutdown,
    )
    .await?;
    let config = worker_config(&args.work, &args.common, None, &metrics);
    dalc_worker::run(config, store, broker.clone(), broker.clone(), shutdown).await;
    broker.close().await;
    Ok(())
}

async fn open_store(args: &StoreArgs) -> Result<TaskStore> {
    let store = TaskStore::connect(&args.database_url)
        .await
        .with_context(|| format!("cannot open the database at {}", redact(&args.database_url)))?;
    if !args.skip_migrations {
        store
            .migrate()
            .await
            .context("cannot apply database migrations")?;
    }
    Ok(store)
}

/// Connects to RabbitMQ, and samples the request queue's depth for the metrics until
/// `shutdown`.
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
    config.connection_name = format!("{role}@{}", host_name());
    let broker = AmqpBroker::connect(config)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", redact(url)))?;
    let broker = Arc::new(broker);
    sample_queue_depth(broker.clone(), metrics.clone(), shutdown.clone());
    Ok(broker)
}

/// Binds the gRPC listener and prints the bound address on stdout, so scripts and tests that
/// asked for port 0 learn the port.
async fn bind(listen: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dalc gateway listening on {addr}")?;
    stdout.flush()?;
    Ok(listener)
}

fn gateway_config(args: &ApiArgs, common: &CommonArgs, metrics: &Arc<Metrics>) -> GatewayConfig {
    let id = args.gateway_id.clone().unwrap_or_else(|| unique_name("gw"));
    let mut config = GatewayConfig::new(id);
    config.limits.max_expression_bytes = args.max_expression_bytes;
    config.default_wait = args.default_wait;
    config.max_wait = args.max_wait;
    config.task_ttl = args.task_ttl;
    config.shutdown_grace = common.shutdown_grace;
    config.sweep_interval = args.sweep_interval;
    config.sweep_grace = args.sweep_grace;
    config.fault_abort_before_publish = args.fault_abort_before_publish;
    config.metrics = metrics.clone();
    config
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
    config.shutdown_grace = common.shutdown_grace;
    config.fault_crash_on = args.fault_crash_on.clone();
    config.metrics = metrics.clone();
    config
}

/// How often the request queue's depth is sampled for `dalc_request_queue_depth`.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

fn sample_queue_depth(broker: Arc<AmqpBroker>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let queue = broker.config().names.tasks();
        while !shutdown.is_cancelled() {
            if let Ok(depth) = broker.queue_depth(&queue).await {
                metrics.request_queue_depth.set(i64::from(depth));
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(QUEUE_DEPTH_INTERVAL) => {}
            }
        }
    });
}

/// Serves Prometheus metrics on `listen`, printing the bound address like the gRPC listener.
pub async fn metrics(
    listen: &str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dalc metrics listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);
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
