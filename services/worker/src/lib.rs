//! The worker: takes tasks off the request queue and sees each through to one terminal state.
//!
//! For every delivery: PENDING→RUNNING as a compare-and-set in the database (a new attempt),
//! evaluate with [`dalc_calc`], store the terminal state (compare-and-set on the attempt), publish
//! the reply and a status event, and only then ack. A crash anywhere before the ack leaves the
//! message unacked, so the broker redelivers it and the task runs again as a new attempt; a
//! redelivered task that is already terminal is only re-replied, never run twice.

mod process;

use std::{
    num::NonZero,
    sync::{Arc, LazyLock},
    time::Duration,
};

use dalc_domain::Backoff;
use dalc_queue::{TaskConsumer, UpdatePublisher};
use dalc_storage::TaskStore;
use futures::StreamExt;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use process::{Processor, Settlement};

/// What a worker needs to know. The `DEFAULT_*` constants are the documented defaults (the CLI
/// takes them from here).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Recorded on every task this worker starts.
    pub worker_id: String,
    /// Tasks held at once: the broker prefetch. Most of a task's time in a worker is spent
    /// waiting on the database and the broker, so a worker overlaps many (their writes share
    /// group commits); attempts that evaluate for longer take turns (`attempt_slots`).
    pub concurrency: u16,
    /// Attempts that start and evaluate at once (quick attempts need no turn). By default
    /// one per CPU core of the process, shared by every worker loop in it: an evaluation may
    /// take a quarter of a second of CPU.
    pub attempt_slots: Arc<Semaphore>,
    /// Attempts before a task is given up on as FAILED and dead-lettered.
    pub max_attempts: u32,
    /// How long an attempt owns its task: a duplicate or redelivered message may only take the
    /// task over once this has run out (the attempt's worker died). Far above the longest
    /// evaluation the engine accepts (about 0.25 s).
    pub lease: Duration,
    /// The expression engine's limits; the gateway's `max_expression_bytes` must not exceed
    /// this worker's, or accepted tasks would fail here.
    pub limits: dalc_calc::Limits,
    /// The first pause before handing a task back after a fault (doubling while faults
    /// persist, up to 10 s), so an outage does not turn into a hot redelivery loop.
    pub retry_delay: Duration,
    /// On shutdown, how long held tasks may take to finish before the worker exits anyway
    /// (unsettled tasks then go back to the queue).
    pub shutdown_grace: Duration,
    /// TEST ONLY (`fault-injection` feature): evaluation panics for expressions containing
    /// this text, to prove that a poison task ends.
    #[cfg(feature = "fault-injection")]
    pub fault_crash_on: Option<String>,
    /// TEST ONLY (`fault-injection` feature): evaluation of expressions containing this text
    /// takes this long first, to hold a task RUNNING (e.g. while its worker is killed).
    #[cfg(feature = "fault-injection")]
    pub fault_stall_on: Option<(String, Duration)>,
    /// Where finished tasks, latencies and tasks in flight are counted.
    pub metrics: Arc<dalc_telemetry::Metrics>,
}

impl WorkerConfig {
    pub const DEFAULT_CONCURRENCY: u16 = 32;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

    pub fn new(worker_id: impl Into<String>) -> Self {
        WorkerConfig {
            worker_id: worker_id.into(),
            concurrency: Self::DEFAULT_CONCURRENCY,
            attempt_slots: PROCESS_ATTEMPT_SLOTS.clone(),
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            lease: Self::DEFAULT_LEASE,
            limits: dalc_calc::Limits::default(),
            retry_delay: Duration::from_millis(500),
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            #[cfg(feature = "fault-injection")]
            fault_crash_on: None,
            #[cfg(feature = "fault-injection")]
            fault_stall_on: None,
            metrics: Arc::default(),
        }
    }
}

/// One attempt slot per CPU core, shared by every worker of this process.
static PROCESS_ATTEMPT_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
    Arc::new(Semaphore::new(cores))
});

/// Consumes tasks until `shutdown` is cancelled, then finishes and settles what it holds.
pub async fn run(
    config: WorkerConfig,
    store: TaskStore,
    tasks: Arc<dyn TaskConsumer>,
    updates: Arc<dyn UpdatePublisher>,
    shutdown: CancellationToken,
) {
    let concurrency = config.concurrency.max(1);
    let grace = config.shutdown_grace;
    let processor =
        Arc::new(Processor::new(config, store.clone(), updates).with_source(tasks.source()));
    let figures_stop = CancellationToken::new();
    let figures = tokio::spawn(store_figures(
        processor.clone(),
        store,
        figures_stop.clone(),
    ));
    let permits = Arc::new(Semaphore::new(usize::from(concurrency)));
    let mut in_flight = JoinSet::new();
    let mut reconnect = Backoff::reconnect();
    info!(worker_id = %processor.worker_id(), concurrency, "worker started");

    while !shutdown.is_cancelled() {
        let mut deliveries = match tasks.consume_tasks(concurrency).await {
            Ok(deliveries) => deliveries,
            Err(err) => {
                let delay = reconnect.next_delay();
                warn!(error = %err, retry_in = ?delay, "cannot consume tasks");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                delivery = deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    // Only a consumer that delivers has recovered: one that ends at once must
                    // not resubscribe in a hot loop.
                    reconnect.reset();
                    let processor = Arc::clone(&processor);
                    in_flight.spawn(async move {
                        processor.handle(delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) => {
                    warn!(error = %err, "task consumer failed; resubscribing");
                    break;
                }
                None => {
                    warn!("task consumer ended; resubscribing");
                    break;
                }
            }
            // Reap finished handlers so the set does not grow without bound.
            while in_flight.try_join_next().is_some() {}
        }
        drop(deliveries);
        // The consumer ended (or shutdown): pause before resubscribing, longer each time until
        // one delivers again.
        let delay = reconnect.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    info!(
        in_flight = in_flight.len(),
        "worker stopping; finishing held tasks"
    );
    let grace_ends = tokio::time::Instant::now() + grace;
    let drain = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout_at(grace_ends, drain).await.is_err() {
        warn!(
            ?grace,
            "grace period over; unfinished tasks go back to the queue"
        );
    }
    figures_stop.cancel();
    // The last figures get what is left of the grace period: a database that does not answer
    // must not keep the worker past it (where Kubernetes kills it).
    if tokio::time::timeout_at(grace_ends, figures).await.is_err() {
        info!("no time left in the grace period to store the worker's last figures");
    }
    info!("worker stopped");
}

/// How often a worker stores its figures when it has finished tasks since the last time.
const FIGURES_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle worker stores them anyway: GetStats' `last_seen` says it is alive.
const FIGURES_HEARTBEAT: Duration = Duration::from_secs(10);

/// Stores the worker's figures now and then, and once more when `stop` is cancelled.
async fn store_figures(processor: Arc<Processor>, store: TaskStore, stop: CancellationToken) {
    let mut stored: Option<(dalc_storage::WorkerFigures, tokio::time::Instant)> = None;
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(FIGURES_INTERVAL) => false,
        };
        let figures = processor.figures();
        let due = match &stored {
            None => true,
            Some((last, at)) => *last != figures || at.elapsed() >= FIGURES_HEARTBEAT,
        };
        if due || stopping {
            match store.record_worker(processor.worker_id(), &figures).await {
                Ok(()) => stored = Some((figures, tokio::time::Instant::now())),
                Err(err) => debug!(error = %err, "cannot store the worker's figures; retrying"),
            }
        }
        if stopping {
            return;
        }
    }
}
