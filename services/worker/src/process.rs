//! One delivery, from the queue to its settlement.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use dalc_domain::Task;
use dalc_queue::{Delivery, Destination, QueueError, TaskMessage, UpdatePublisher};
use dalc_storage::{Outcome, StartOutcome, StorageError, TaskStore};
use dalc_telemetry::metrics::GaugeGuard;
use futures::FutureExt;
use tracing::{Instrument, debug, field::Empty, info, info_span, warn};

use crate::WorkerConfig;

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Finished (or nothing left to do): the broker forgets the message.
    Ack,
    /// A transient fault (database, broker, a crash): hand the message back for a later try.
    Requeue,
    /// The message can never succeed: to the dead-letter queue.
    DeadLetter,
}

/// Faults that make a delivery worth retrying later: the task itself may be fine.
#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the task crashed its handler: {0}")]
    Crash(String),
}

/// The longest pause before handing a task back while the database or broker is out.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How long a finished result is held, retrying its write, before the task is handed back
/// (and so re-run) instead. Well under RabbitMQ's 30-minute delivery acknowledgement timeout.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// Runs tasks: shared by all of a worker's concurrent handlers.
pub struct Processor {
    config: WorkerConfig,
    /// The queue tasks come from, for the consumer span's messaging attributes.
    source: Destination,
    store: TaskStore,
    updates: Arc<dyn UpdatePublisher>,
    /// The current pause before a requeue, in ms: doubles while faults persist, so an outage
    /// slows the worker down instead of spinning deliveries; back to the base on success.
    retry_delay_ms: AtomicU64,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Processor {
    pub fn new(config: WorkerConfig, store: TaskStore, updates: Arc<dyn UpdatePublisher>) -> Self {
        let base = duration_ms(config.retry_delay);
        Processor {
            config,
            store,
            updates,
            source: Destination::in_process(),
            retry_delay_ms: AtomicU64::new(base),
        }
    }

    /// Names the queue tasks come from, in traces.
    pub fn with_source(mut self, source: Destination) -> Self {
        self.source = source;
        self
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Processes one delivery and settles it. Never drops it unsettled, even if processing
    /// panics: a panic is a crash of this attempt, and the task goes back to the queue.
    pub async fn handle(&self, delivery: Delivery) {
        let _in_flight = GaugeGuard::inc(&self.config.metrics.tasks_in_flight);
        let settlement = match &delivery.message {
            Ok(message) => match AssertUnwindSafe(self.process(message)).catch_unwind().await {
                Ok(settlement) => settlement,
                Err(_) => {
                    warn!(task_id = %message.task_id, "task handler panicked; requeueing");
                    Settlement::Requeue
                }
            },
            Err(malformed) => {
                warn!(error = %malformed, "dead-lettering a message that is not a task");
                Settlement::DeadLetter
            }
        };
        if settlement == Settlement::Requeue {
            // Pause before handing it back (holding our concurrency slot), so an outage is not
            // a hot redelivery loop and this worker takes no new work meanwhile.
            tokio::time::sleep(self.fault_delay()).await;
        } else {
            self.retry_delay_ms
                .store(duration_ms(self.config.retry_delay), Ordering::Relaxed);
        }
        let settled = match settlement {
            Settlement::Ack => delivery.ack().await,
            Settlement::Requeue => delivery.reject(true).await,
            Settlement::DeadLetter => delivery.reject(false).await,
        };
        if let Err(err) = settled {
            // The channel is gone; the broker will redeliver, and the task's state says what
            // is left to do.
            warn!(error = %err, "could not settle a delivery");
        }
    }

    /// The delay before this requeue; doubles the next one, up to a cap.
    fn fault_delay(&self) -> Duration {
        let cap = duration_ms(MAX_RETRY_DELAY);
        let current = self
            .retry_delay_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ms| {
                Some((ms * 2).min(cap))
            })
            .unwrap_or(cap);
        Duration::from_millis(current)
    }

    /// Decides what to do with one task message, in a consumer span that continues the trace
    /// of the call that submitted it (its context rides in the message headers).
    pub async fn process(&self, message: &TaskMessage) -> Settlement {
        let span = info_span!(
            "process",
            otel.name = format!("{} process", self.source.queue),
            otel.kind = "consumer",
            messaging.system = self.source.system,
            messaging.destination.name = %self.source.queue,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.message.conversation_id = %message.task_id,
            task_id = %message.task_id,
            worker_id = %self.config.worker_id,
            attempt = Empty,
            status = Empty,
            trace_id = Empty,
        );
        dalc_telemetry::propagation::continue_trace_from_headers(&span, &message.headers);
        let outcome = self.try_process(message).instrument(span.clone()).await;
        let _entered = span.enter();
        match outcome {
            Ok(settlement) => settlement,
            Err(fault) => {
                warn!(error = %fault, "transient fault; the task goes back to the queue");
                Settlement::Requeue
            }
        }
    }

    async fn try_process(&self, message: &TaskMessage) -> Result<Settlement, Transient> {
        let reply_to = message.reply_to.as_deref();
        if message
            .deadline
            .is_some_and(|deadline| deadline <= Utc::now())
        {
            let expired = Outcome::Expired {
                error: "the task's deadline passed before a worker could start it".into(),
            };
            return self.end_unstarted(message, &expired).await;
        }
        let started = self
            .store
            .start_attempt(message.task_id, &self.config.worker_id, Utc::now())
            .await?;
        let task = match started {
            StartOutcome::Started(task) => {
                tracing::Span::current().record("attempt", task.attempts);
                task
            }
            StartOutcome::AlreadyTerminal(task) => {
                // A redelivery of finished work: only the reply may have been lost.
                debug!(status = %task.status, "already terminal; replying again");
                self.updates.publish_update(reply_to, &task).await?;
                return Ok(Settlement::Ack);
            }
            StartOutcome::Missing => {
                warn!("no such task in the database; dropping the message");
                return Ok(Settlement::Ack);
            }
        };
        if task.attempts > self.config.max_attempts {
            let gave_up = Outcome::Failed {
                error: format!("gave up after {} attempts", self.config.max_attempts),
            };
            return self
                .end_attempt(&task, &gave_up, reply_to, Settlement::DeadLetter)
                .await;
        }
        let outcome = self.evaluate(&task).await?;
        self.end_attempt(&task, &outcome, reply_to, Settlement::Ack)
            .await
    }

    async fn evaluate(&self, task: &Task) -> Result<Outcome, Transient> {
        let expression = task.expression.clone();
        let limits = self.config.limits.clone();
        let crash_marker = self.config.fault_crash_on.clone();
        let span = info_span!("evaluate", task_id = %task.id, attempt = task.attempts);
        let started = std::time::Instant::now();
        // Evaluation is CPU-bound (bounded, but up to a fraction of a second): off the reactor.
        let evaluated = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            if crash_marker.is_some_and(|marker| expression.contains(&marker)) {
                panic!("injected fault: evaluation crashed (test-only --fault-crash-on)");
            }
            dalc_calc::evaluate(&expression, &limits)
        })
        .await;
        self.config
            .metrics
            .evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
        match evaluated {
            Ok(Ok(value)) => Ok(Outcome::Succeeded {
                result: value.to_string(),
            }),
            Ok(Err(err)) => Ok(Outcome::Failed {
                error: err.to_string(),
            }),
            // A crash is not an answer: retry it as a new attempt, until the attempts run out.
            Err(join_error) => Err(Transient::Crash(join_error.to_string())),
        }
    }

    /// Records the end of this attempt, replies, and settles as `then`. The work is done, so
    /// a database or broker outage here is waited out in place rather than redoing the task.
    async fn end_attempt(
        &self,
        task: &Task,
        outcome: &Outcome,
        reply_to: Option<&str>,
        then: Settlement,
    ) -> Result<Settlement, Transient> {
        let recorded = self
            .hold_through_outage(|| {
                self.store
                    .finish_attempt(task.id, task.attempts, outcome, Utc::now())
            })
            .await?;
        match recorded {
            Some(finished) => {
                info!(status = %finished.status, attempt = finished.attempts, "task finished");
                self.count_finished(&finished);
                self.hold_through_outage(|| self.updates.publish_update(reply_to, &finished))
                    .instrument(reply_span(self.source.system, reply_to, &finished))
                    .await?;
                Ok(then)
            }
            None => {
                // A newer attempt owns the task now; its worker records and replies.
                debug!(attempt = task.attempts, "superseded by a newer attempt");
                Ok(Settlement::Ack)
            }
        }
    }

    async fn end_unstarted(
        &self,
        message: &TaskMessage,
        outcome: &Outcome,
    ) -> Result<Settlement, Transient> {
        let reply_to = message.reply_to.as_deref();
        let ended = match self
            .store
            .finish_unstarted(message.task_id, outcome, Utc::now())
            .await?
        {
            Some(task) => Some(task),
            // Already terminal: re-reply what stands, as for any redelivery of finished work.
            None => self
                .store
                .get(message.task_id)
                .await?
                .filter(Task::is_terminal),
        };
        if let Some(task) = ended {
            self.count_finished(&task);
            let reply = reply_span(self.source.system, reply_to, &task);
            self.updates
                .publish_update(reply_to, &task)
                .instrument(reply)
                .await?;
        }
        Ok(Settlement::Ack)
    }

    /// Retries `operation` while its dependency is unreachable, with capped exponential backoff,
    /// for up to [`MAX_HOLD`]; other errors, and an outage that outlasts that, are returned.
    async fn hold_through_outage<T, E, F, Fut>(&self, operation: F) -> Result<T, Transient>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Transient> + RetryHint,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_outage() && started.elapsed() < MAX_HOLD => {
                    warn!(retry_in = ?pause, "dependency unavailable; holding the result");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
}

impl Processor {
    /// Counts a task this worker brought to a terminal state, and records it on the span.
    fn count_finished(&self, task: &Task) {
        tracing::Span::current().record("status", task.status.as_str());
        let metrics = &self.config.metrics;
        metrics.task_finished(task.status.as_str());
        if let Some(finished_at) = task.finished_at {
            let latency = (finished_at - task.created_at).to_std().unwrap_or_default();
            metrics.end_to_end_seconds.observe(latency.as_secs_f64());
        }
    }
}

/// The producer span of a reply (and its status event) over `system`.
fn reply_span(system: &'static str, reply_to: Option<&str>, task: &Task) -> tracing::Span {
    let destination = reply_to.unwrap_or("dalc.events");
    info_span!(
        "reply",
        otel.name = format!("{destination} publish"),
        otel.kind = "producer",
        messaging.system = system,
        messaging.destination.name = destination,
        messaging.operation.type = "send",
        messaging.message.conversation_id = %task.id,
        task_id = %task.id,
        status = task.status.as_str(),
    )
}

/// Whether an error is an outage worth waiting out.
trait RetryHint {
    fn is_outage(&self) -> bool;
}

impl RetryHint for StorageError {
    fn is_outage(&self) -> bool {
        self.is_unavailable()
    }
}

impl RetryHint for QueueError {
    fn is_outage(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
