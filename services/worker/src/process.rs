//! One delivery, from the queue to its settlement.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::Utc;
use dalc_domain::{Backoff, Outcome, Task};
use dalc_queue::{Delivery, Destination, QueueError, TaskMessage, UpdatePublisher};
use dalc_storage::{StartOutcome, StorageError, TaskStore, WorkerFigures};
use dalc_telemetry::metrics::GaugeGuard;
use futures::{FutureExt, future::Either};
use tokio::sync::OwnedSemaphorePermit;
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
    /// The pause before a requeue: doubles while faults persist, so an outage slows the worker
    /// down instead of spinning deliveries; back to the base on success.
    requeue_backoff: Mutex<Backoff>,
    /// What this worker has done, for GetStats; stored now and then by [`crate::run`].
    figures: Mutex<WorkerFigures>,
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
        let requeue_backoff = Mutex::new(Backoff::new(config.retry_delay, MAX_RETRY_DELAY));
        Processor {
            config,
            store,
            updates,
            source: Destination::in_process(),
            requeue_backoff,
            figures: Mutex::default(),
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

    /// What this worker has done so far.
    pub fn figures(&self) -> WorkerFigures {
        self.figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Processes one delivery and settles it. Never drops it unsettled, even if processing
    /// panics: a panic is a crash of this attempt, and the task goes back to the queue.
    /// A plain function returning its future: an `async fn` would hold the delivery twice (as
    /// passed and as bound) in every spawned handler.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its argument twice in its future"
    )]
    pub fn handle(&self, delivery: Delivery) -> impl Future<Output = ()> + Send + '_ {
        async move {
            let _in_flight = GaugeGuard::inc(&self.config.metrics.tasks_in_flight);
            let settlement = match &delivery.message {
                Ok(message) => match AssertUnwindSafe(self.process(message, delivery.redelivered))
                    .catch_unwind()
                    .await
                {
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
                let pause = self.requeue_backoff().next_delay();
                // Boxed: a timer is large, and only a delivery handed back needs one.
                Box::pin(tokio::time::sleep(pause)).await;
            } else {
                self.requeue_backoff().reset();
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
    }

    fn requeue_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        // A plain value: a panic elsewhere cannot leave it half-updated.
        self.requeue_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides what to do with one task message, in a consumer span that continues the trace
    /// of the call that submitted it (its context rides in the message headers).
    pub async fn process(&self, message: &TaskMessage, redelivered: bool) -> Settlement {
        // Its name is one of dalc_telemetry::LOG_CONTEXT_SPANS: log lines inside show its fields.
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
        let outcome = self
            .try_process(message, redelivered)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match outcome {
            Ok(settlement) => settlement,
            Err(fault) => {
                warn!(error = %fault, "transient fault; the task goes back to the queue");
                Settlement::Requeue
            }
        }
    }

    async fn try_process(
        &self,
        message: &TaskMessage,
        redelivered: bool,
    ) -> Result<Settlement, Transient> {
        // The other ways are boxed: every delivery's future is as large as its largest step,
        // and most deliveries take the quick way, whose steps are small. A spawned future of
        // kilobytes is copied on each spawn and kept for the task's life, and glibc sorts its
        // free lists before each allocation that large (`malloc_consolidate`).
        if past_deadline(message) {
            return Box::pin(self.end_unstarted(message, &Outcome::expired_unstarted())).await;
        }
        // A redelivery may follow a crash this task caused: its attempt is counted first.
        if !redelivered && let Some(settlement) = self.quick_attempt(message).await? {
            return Ok(settlement);
        }
        Box::pin(self.long_way(message, redelivered)).await
    }

    /// An attempt counted (and leased) before it is evaluated: a redelivery, a task that takes
    /// more than microseconds, or one that is no longer PENDING.
    async fn long_way(
        &self,
        message: &TaskMessage,
        redelivered: bool,
    ) -> Result<Settlement, Transient> {
        let reply_to = message.reply_to.as_deref();
        let Some((started, slot)) = self.start(message, redelivered).await? else {
            // Its deadline passed while it waited for its turn.
            return self
                .end_unstarted(message, &Outcome::expired_unstarted())
                .await;
        };
        let task = match started {
            StartOutcome::Started(task) => {
                tracing::Span::current().record("attempt", task.attempts);
                // Watchers hear it RUNNING, off the task's path.
                dalc_queue::announce(self.updates.clone(), task.clone());
                task
            }
            StartOutcome::AlreadyTerminal(task) => {
                drop(slot);
                // A redelivery or a duplicate of finished work: only the reply may have been lost.
                debug!(status = %task.status, "already terminal; replying again");
                self.updates.publish_update(reply_to, &task).await?;
                return Ok(Settlement::Ack);
            }
            StartOutcome::Busy(task) => {
                // A duplicate message while a live attempt holds the task: that attempt still
                // has its own message, and finishes (or, should it die, is redelivered).
                debug!(attempt = task.attempts, worker = ?task.worker_id, "a live attempt holds the task; dropping the duplicate");
                return Ok(Settlement::Ack);
            }
            StartOutcome::GaveUp(task) => {
                drop(slot);
                // Its attempts ran out (each crashed its handler or died with its worker).
                warn!(
                    attempts = task.attempts,
                    "giving up on the task; dead-lettering its message"
                );
                self.announce_end(&task, reply_to).await?;
                return Ok(Settlement::DeadLetter);
            }
            StartOutcome::Missing => {
                warn!("no such task in the database; dropping the message");
                return Ok(Settlement::Ack);
            }
        };
        let attempt = self.run_attempt(&task, reply_to, slot).await;
        if attempt.is_err() {
            // Handing the message back: let its next delivery take over at once rather than
            // wait out our lease. Best effort; an unreleased lease simply runs out.
            if let Err(err) = self.store.release_lease(task.id, task.attempts).await {
                debug!(error = %err, "cannot release the lease; it runs out by itself");
            }
        }
        attempt
    }

    /// Starts an attempt once it has its turn (one of `attempt_slots`, for its evaluation):
    /// waiting for the turn first, the wait never eats into the attempt's lease. `None`: the
    /// task's deadline passed meanwhile. A redelivered message whose task a live lease holds
    /// came back because its first worker lost the broker, not necessarily its life: wait
    /// (without a turn) for that attempt to end, or for its lease to run out, and only then
    /// decide.
    async fn start(
        &self,
        message: &TaskMessage,
        redelivered: bool,
    ) -> Result<Option<(StartOutcome, Option<OwnedSemaphorePermit>)>, Transient> {
        let lease = self.config.lease;
        let pause = (lease / 4).max(Duration::from_millis(20));
        let patience = lease.saturating_mul(2);
        let mut waited = Duration::ZERO;
        loop {
            // The semaphore is never closed; were it, the attempt would simply run unslotted.
            let slot = self.config.attempt_slots.clone().acquire_owned().await.ok();
            if past_deadline(message) {
                return Ok(None);
            }
            let started = self
                .store
                .start_attempt(
                    message.task_id,
                    &self.config.worker_id,
                    lease,
                    self.config.max_attempts,
                )
                .await?;
            match started {
                StartOutcome::Busy(_) if redelivered && waited < patience => {
                    drop(slot);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                other => return Ok(Some((other, slot))),
            }
        }
    }

    /// Evaluates a started attempt in its turn (`slot`, given back once evaluated) and records
    /// how it ended.
    async fn run_attempt(
        &self,
        task: &Task,
        reply_to: Option<&str>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Settlement, Transient> {
        let outcome = self.holding_lease(task, self.evaluate(task)).await;
        drop(slot);
        self.end_attempt(task, &outcome?, reply_to).await
    }

    /// Runs `work` (the attempt's evaluation) while renewing the attempt's lease every third of
    /// it: an evaluation that outlasts one lease (possible with a raised
    /// `--max-expression-bytes`) is not taken over while this worker lives. Should this
    /// worker die, or lose the database, the lease runs out as before.
    async fn holding_lease<T>(&self, task: &Task, work: impl Future<Output = T>) -> T {
        let work = std::pin::pin!(work);
        let renewing = std::pin::pin!(self.renew_lease(task));
        match futures::future::select(work, renewing).await {
            Either::Left((done, _)) => done,
            // The attempt lost the task (another took over after a lapse): its result will be
            // refused by the compare-and-set, but the evaluation still runs to its end.
            Either::Right(((), work)) => work.await,
        }
    }

    /// Renews `task`'s lease every third of it, until the attempt no longer holds the task or
    /// the task's deadline has passed: past it the lease runs out, and the sweeper ends the
    /// task EXPIRED within the documented bound even if this evaluation never ends. A failed
    /// renewal is tried again at the next turn (the lease has two more thirds to go). Not
    /// group-committed: only evaluations longer than a third of a lease renew at all.
    async fn renew_lease(&self, task: &Task) {
        let lease = self.config.lease;
        let mut turns = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now, when the lease is fresh.
        turns.tick().await;
        loop {
            turns.tick().await;
            if task.deadline.is_some_and(|deadline| Utc::now() >= deadline) {
                return;
            }
            match self.store.renew_lease(task.id, task.attempts, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => debug!(error = %err, "cannot renew the lease; trying again"),
            }
        }
    }

    /// The first delivery of a task the engine predicts takes microseconds: evaluated at once,
    /// then its attempt and result recorded in one write, with no RUNNING state stored in
    /// between (so no lease and no RUNNING event: a watch shows the task RUNNING from its end,
    /// see the gateway's `Watch`). Nothing can die between evaluating and counting; a delivery
    /// that does not finish here is redelivered, and a redelivery counts its attempt before
    /// evaluating. `None`: not such a task, or no longer PENDING (a duplicate, a cancel, an
    /// attempt that holds it): the long way decides.
    async fn quick_attempt(&self, message: &TaskMessage) -> Result<Option<Settlement>, Transient> {
        // In a block: the parsed expression and the outcome (the write takes a copy) are gone
        // before the awaits.
        let recorded = {
            let limits = &self.config.limits;
            let started = std::time::Instant::now();
            let quick = match dalc_calc::parse(&message.expression, limits) {
                Ok(expr) if expr.is_cheap() && !self.fault_hooks_apply(&message.expression) => expr,
                _ => return Ok(None),
            };
            let outcome = info_span!("evaluate", task_id = %message.task_id, attempt = Empty)
                .in_scope(|| outcome_of(quick.evaluate(limits)));
            self.observe_evaluation(started);
            self.store.record_quick_attempt(
                message.task_id,
                &self.config.worker_id,
                &message.expression,
                &outcome,
                started.elapsed(),
            )
        }
        .await?;
        let Some(finished) = recorded else {
            return Ok(None);
        };
        tracing::Span::current().record("attempt", finished.attempts);
        // Boxed, with the finished task: inline, the publishes would double the size of this
        // way's future.
        let reply_to = message.reply_to.as_deref();
        Box::pin(async move { self.announce_end(&finished, reply_to).await }).await?;
        Ok(Some(Settlement::Ack))
    }

    async fn evaluate(&self, task: &Task) -> Result<Outcome, Transient> {
        let limits = self.config.limits.clone();
        let span = info_span!("evaluate", task_id = %task.id, attempt = task.attempts);
        let started = std::time::Instant::now();
        let evaluated = match dalc_calc::parse(&task.expression, &limits) {
            Err(err) => Ok(Err(err)),
            // Microseconds of work (the engine says so): a thread hop would cost more.
            Ok(expr) if expr.is_cheap() && !self.fault_hooks_apply(&task.expression) => {
                let _entered = span.enter();
                Ok(expr.evaluate(&limits))
            }
            // CPU-bound, bounded but up to a fraction of a second: off the reactor.
            Ok(expr) => {
                #[cfg(feature = "fault-injection")]
                let (expression, faults) = (
                    task.expression.clone(),
                    (
                        self.config.fault_crash_on.clone(),
                        self.config.fault_stall_on.clone(),
                    ),
                );
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    #[cfg(feature = "fault-injection")]
                    inject_faults(&expression, faults);
                    expr.evaluate(&limits)
                })
                .await
            }
        };
        self.observe_evaluation(started);
        match evaluated {
            Ok(evaluated) => Ok(outcome_of(evaluated)),
            // A crash is not an answer: retry it as a new attempt, until the attempts run out.
            Err(join_error) => Err(Transient::Crash(join_error.to_string())),
        }
    }

    fn observe_evaluation(&self, started: std::time::Instant) {
        self.config
            .metrics
            .evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// TEST ONLY: whether a fault hook targets this expression (it then runs on the blocking
    /// pool, where a crash is caught like any evaluation crash, and never as a quick attempt).
    fn fault_hooks_apply(&self, expression: &str) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            let marked = |marker: &str| expression.contains(marker);
            self.config.fault_crash_on.as_deref().is_some_and(marked)
                || self
                    .config
                    .fault_stall_on
                    .as_ref()
                    .is_some_and(|(marker, _)| marked(marker))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = expression;
            false
        }
    }

    /// Records the end of this attempt and replies (then the message is acked). The work is done, so
    /// a database or broker outage here is waited out in place rather than redoing the task.
    async fn end_attempt(
        &self,
        task: &Task,
        outcome: &Outcome,
        reply_to: Option<&str>,
    ) -> Result<Settlement, Transient> {
        let recorded = self
            .hold_through_outage(|| self.store.finish_attempt(task.id, task.attempts, outcome))
            .await?;
        match recorded {
            Some(finished) => {
                self.announce_end(&finished, reply_to).await?;
                Ok(Settlement::Ack)
            }
            None => {
                // A newer attempt owns the task now; its worker records and replies.
                debug!(
                    attempt = task.attempts,
                    "no longer this attempt's to end (taken over or expired)"
                );
                Ok(Settlement::Ack)
            }
        }
    }

    /// Counts a task this worker just ended and replies with it. The work is done and recorded,
    /// so a broker outage is waited out in place.
    async fn announce_end(&self, finished: &Task, reply_to: Option<&str>) -> Result<(), Transient> {
        info!(status = %finished.status, attempt = finished.attempts, "task finished");
        self.count_finished(finished);
        self.hold_through_outage(|| self.updates.publish_update(reply_to, finished))
            .instrument(reply_span(self.source.system, reply_to, finished))
            .await
    }

    async fn end_unstarted(
        &self,
        message: &TaskMessage,
        outcome: &Outcome,
    ) -> Result<Settlement, Transient> {
        let reply_to = message.reply_to.as_deref();
        let ended = match self
            .store
            .finish_unstarted(message.task_id, outcome)
            .await?
        {
            Some(task) => {
                // Only what this worker ended counts as its work.
                self.count_finished(&task);
                Some(task)
            }
            // Already terminal: re-reply what stands, as for any redelivery of finished work.
            // RUNNING: an attempt holds it, or held it and vanished; the sweeper ends that one
            // once its lease runs out.
            None => self
                .store
                .get(message.task_id)
                .await?
                .filter(Task::is_terminal),
        };
        if let Some(task) = ended {
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
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_outage() && started.elapsed() < MAX_HOLD => {
                    let pause = backoff.next_delay();
                    warn!(retry_in = ?pause, "dependency unavailable; holding the result");
                    // Boxed: a timer is large, and only an outage needs one.
                    Box::pin(tokio::time::sleep(pause)).await;
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
        let run_time = task
            .started_at
            .zip(task.finished_at)
            .and_then(|(started, finished)| (finished - started).to_std().ok());
        self.figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(task.status, run_time);
        let metrics = &self.config.metrics;
        metrics.task_finished(task.status.as_str());
        if let Some(finished_at) = task.finished_at {
            let latency = (finished_at - task.created_at).to_std().unwrap_or_default();
            metrics.end_to_end_seconds.observe(latency.as_secs_f64());
        }
    }
}

/// The task's deadline has passed: it must not start.
fn past_deadline(message: &TaskMessage) -> bool {
    message
        .deadline
        .is_some_and(|deadline| deadline <= Utc::now())
}

/// What an evaluation comes to: a result, or the engine's reason for none.
fn outcome_of(evaluated: Result<dalc_calc::Value, dalc_calc::CalcError>) -> Outcome {
    match evaluated {
        Ok(value) => Outcome::Succeeded {
            result: value.to_string(),
        },
        Err(err) => Outcome::Failed {
            error: err.to_string(),
        },
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
        QueueError::is_outage(self)
    }
}

/// TEST ONLY: the `--fault-crash-on` and `--fault-stall-on` hooks.
#[cfg(feature = "fault-injection")]
fn inject_faults(
    expression: &str,
    (crash_on, stall_on): (Option<String>, Option<(String, Duration)>),
) {
    if let Some((marker, stall)) = stall_on
        && expression.contains(&marker)
    {
        std::thread::sleep(stall);
    }
    if crash_on.is_some_and(|marker| expression.contains(&marker)) {
        panic!("injected fault: evaluation crashed (test-only --fault-crash-on)");
    }
}
