//! What the gateway does with tasks, apart from gRPC: validate, store, publish, wait.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use dalc_domain::{Backoff, Outcome, Task, TaskId};
use dalc_queue::{TaskMessage, TaskPublisher};
use dalc_storage::TaskStore;
use dalc_telemetry::metrics::GaugeGuard;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, instrument, warn};

use crate::{
    ApiError, GatewayConfig, events::Events, marks::PublishMarks, wait::CallBudget,
    waiters::Waiters,
};

/// The longest pause between database reads while waiting: the fallback for a lost reply.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(4);

/// A waiting call's last read starts this long before its wait ends, so it can finish in time.
const LAST_READ_ALLOWANCE: Duration = Duration::from_millis(50);

/// The gateway's task logic, shared by all calls.
pub(crate) struct Tasks {
    pub(crate) config: GatewayConfig,
    pub(crate) store: TaskStore,
    pub(crate) publisher: Arc<dyn TaskPublisher>,
    pub(crate) waiters: Waiters,
    /// Status events, for callers waiting for tasks other gateways accepted.
    pub(crate) events: Arc<Events>,
    pub(crate) marks: PublishMarks,
    /// This gateway's reply queue: where workers send the results of tasks it accepted.
    pub(crate) reply_to: String,
    /// Cancelled near the end of the shutdown grace period: waits answer at once.
    pub(crate) draining: CancellationToken,
}

impl Tasks {
    /// Validates, stores and queues an expression; with a wait in `budget`, waits until then for
    /// the task to end and returns it as it then stands. Every step ends by the call's deadline.
    #[instrument(skip_all, fields(task_id))]
    pub(crate) async fn submit(
        &self,
        expression: String,
        timeout: Option<Duration>,
        budget: CallBudget,
        caller_context: BTreeMap<String, String>,
    ) -> Result<Task, ApiError> {
        dalc_calc::parse(&expression, &self.config.limits)
            .map_err(|err| ApiError::InvalidArgument(format!("invalid expression: {err}")))?;
        // The broker is known to be away or refusing publishes: refuse before writing anything.
        self.publisher.ready()?;
        let ttl = timeout.unwrap_or(self.config.task_ttl);
        let deadline = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl));
        let task = Task::new(expression, deadline);
        tracing::Span::current().record("task_id", tracing::field::display(task.id));

        // Subscribe before publishing: the reply can beat us back.
        let subscription = budget
            .wait_until
            .map(|until| (until, self.waiters.subscribe(task.id)));
        let insert = async { Ok(self.store.insert(&task, self.config.sweep_grace).await?) };
        if let Err(err) = budget.bound("the task database", insert).await {
            // Cut off at the call's deadline, the row may still land (its write had begun):
            // end it then, rather than run a task whose caller heard UNAVAILABLE.
            self.abandon(&task, &err.to_string());
            return Err(err);
        }
        #[cfg(feature = "fault-injection")]
        if self.config.fault_abort_before_publish {
            // Test-only fault: die like `kill -9` in the gap the sweeper exists for.
            std::process::abort();
        }
        let publish = async { Ok(self.publish(&task, caller_context).await?) };
        if let Err(err) = budget.bound("the task queue", publish).await {
            self.abandon(&task, &err.to_string());
            return Err(err);
        }
        self.config.metrics.tasks_submitted.inc();
        self.marks.record(task.id);

        match subscription {
            Some((until, subscription)) => Ok(self.wait_for(task, subscription, until).await),
            None => Ok(task),
        }
    }

    /// Reads a task; with a wait in `budget`, long-polls until it is terminal or the wait ends.
    #[instrument(skip_all, fields(task_id = %id))]
    pub(crate) async fn get(&self, id: TaskId, budget: CallBudget) -> Result<Task, ApiError> {
        // Another gateway may have accepted the task: its status events must flow here, from
        // before the read on.
        // A broker slow to bind must not make the call late: past the wait, it just polls.
        let _listening = match budget.wait_until {
            None => None,
            Some(until) => {
                let by = budget
                    .answer_by
                    .map_or(until, |answer_by| answer_by.min(until));
                tokio::time::timeout_at(by, self.events.listen()).await.ok()
            }
        };
        // Subscribe before reading, so an update landing in between is not missed.
        let subscription = budget
            .wait_until
            .map(|until| (until, self.waiters.subscribe(id)));
        let read = async { Ok(self.store.get(id).await?) };
        let task = budget
            .bound("the task database", read)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))?;
        match subscription {
            Some((until, subscription)) if !task.is_terminal() => {
                Ok(self.wait_for(task, subscription, until).await)
            }
            _ => Ok(task),
        }
    }

    /// Publishes in a producer span (OpenTelemetry messaging conventions) whose context rides
    /// in the message headers, so the worker's span continues this trace.
    async fn publish(
        &self,
        task: &Task,
        caller_context: BTreeMap<String, String>,
    ) -> Result<(), dalc_queue::QueueError> {
        let destination = self.publisher.destination();
        let span = info_span!(
            "publish",
            otel.name = format!("{} publish", destination.queue),
            otel.kind = "producer",
            messaging.system = destination.system,
            messaging.destination.name = %destination.queue,
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.message.id = %task.id,
            messaging.message.conversation_id = %task.id,
            messaging.rabbitmq.destination.routing_key = %destination.queue,
        );
        async {
            let mut message = TaskMessage::for_task(task, Some(self.reply_to.clone()));
            message.headers = dalc_telemetry::propagation::current_context_headers();
            if message.headers.is_empty() {
                // Not exporting traces: still pass the caller's context on, so the worker's
                // log lines name the caller's trace.
                message.headers = caller_context;
            }
            self.publisher.publish_task(&message).await
        }
        .instrument(span)
        .await
    }

    /// Waits for `task` to end, until `until`; never fails: at the end of the wait or on a
    /// database fault it returns the task as last seen, and the client can poll on. Every read
    /// is bounded by `until`, so the answer is never late.
    #[instrument(name = "wait for result", skip_all)]
    async fn wait_for(
        &self,
        mut task: Task,
        mut subscription: crate::waiters::Subscription,
        until: Instant,
    ) -> Task {
        let _waiting = GaugeGuard::inc(&self.config.metrics.waiting_calls);
        let mut polls = Backoff::new(self.config.poll_interval, MAX_POLL_INTERVAL);
        let last_read = until.checked_sub(LAST_READ_ALLOWANCE).unwrap_or(until);
        while !task.is_terminal() {
            let next_poll = (Instant::now() + polls.peek()).min(last_read);
            tokio::select! {
                () = self.draining.cancelled() => return task,
                update = subscription.next() => {
                    if update.is_terminal() {
                        return update;
                    }
                    // RUNNING: what the caller sees if the wait ends now.
                    task = update;
                }
                () = tokio::time::sleep_until(next_poll) => {
                    // A lost reply or event must not make us wait for nothing: the database
                    // has the truth.
                    match tokio::time::timeout_at(until, self.store.get(task.id)).await {
                        Ok(Ok(Some(stored))) => task = stored,
                        Ok(Ok(None)) => {}
                        Ok(Err(err)) => warn!(error = %err, "cannot re-read a waited-for task"),
                        Err(_) => return task,
                    }
                    if Instant::now() >= last_read {
                        return task;
                    }
                    polls.next_delay();
                }
            }
        }
        task
    }

    /// The publish failed, so no worker will see the task: end it rather than strand it (in the
    /// background: the client hears UNAVAILABLE now). Only a task still PENDING is ended: if
    /// the confirm was lost but the message landed and a worker started it, the attempt stands.
    fn abandon(&self, task: &Task, reason: &str) {
        let failed = Outcome::Failed {
            error: format!("could not be queued: {reason}"),
        };
        let (store, id) = (self.store.clone(), task.id);
        let record = async move {
            if let Err(err) = store.finish_unstarted(id, &failed).await {
                warn!(task_id = %id, error = %err, "cannot mark an unqueued task FAILED; the sweeper retries its publish");
            }
        };
        tokio::spawn(record.in_current_span());
    }
}
