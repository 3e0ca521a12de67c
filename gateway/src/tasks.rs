//! What the gateway does with tasks, apart from gRPC: validate, store, publish, wait.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use dalc_domain::{Task, TaskId};
use dalc_queue::{TaskMessage, TaskPublisher};
use dalc_storage::{Outcome, TaskStore};
use dalc_telemetry::metrics::GaugeGuard;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, instrument, warn};

use crate::{ApiError, GatewayConfig, waiters::Waiters};

/// The longest pause between database reads while waiting: the fallback for a lost reply.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(4);

/// The gateway's task logic, shared by all calls.
pub(crate) struct Tasks {
    pub(crate) config: GatewayConfig,
    pub(crate) store: TaskStore,
    pub(crate) publisher: Arc<dyn TaskPublisher>,
    pub(crate) waiters: Waiters,
    /// This gateway's reply queue: where workers send the results of tasks it accepted.
    pub(crate) reply_to: String,
    /// Cancelled near the end of the shutdown grace period: waits answer at once.
    pub(crate) draining: CancellationToken,
}

impl Tasks {
    /// Validates, stores and queues an expression; with `wait`, waits up to that long for the
    /// task to end and returns it as it then stands.
    #[instrument(skip_all, fields(task_id))]
    pub(crate) async fn submit(
        &self,
        expression: String,
        timeout: Option<Duration>,
        wait: Option<Duration>,
        caller_context: BTreeMap<String, String>,
    ) -> Result<Task, ApiError> {
        dalc_calc::parse(&expression, &self.config.limits)
            .map_err(|err| ApiError::InvalidArgument(format!("invalid expression: {err}")))?;
        let ttl = timeout.unwrap_or(self.config.task_ttl);
        let deadline = chrono::Duration::from_std(ttl)
            .ok()
            .map(|ttl| Utc::now() + ttl);
        let task = Task::new(expression, deadline);
        tracing::Span::current().record("task_id", tracing::field::display(task.id));

        // Subscribe before publishing: the reply can beat us back.
        let waiting = wait.map(|budget| (budget, self.waiters.subscribe(task.id)));
        self.store.insert(&task).await?;
        if self.config.fault_abort_before_publish {
            // Test-only fault: die like `kill -9` in the gap the sweeper exists for.
            std::process::abort();
        }
        if let Err(err) = self.publish(&task, caller_context).await {
            self.abandon(&task, &err.to_string()).await;
            return Err(err.into());
        }
        self.config.metrics.tasks_submitted.inc();
        self.mark_published(task.id);

        match waiting {
            Some((budget, subscription)) => Ok(self.wait_for(task, subscription, budget).await),
            None => Ok(task),
        }
    }

    /// Reads a task; with `wait`, long-polls until it is terminal or the wait ends.
    #[instrument(skip_all, fields(task_id = %id))]
    pub(crate) async fn get(&self, id: TaskId, wait: Option<Duration>) -> Result<Task, ApiError> {
        // Subscribe before reading, so an update landing in between is not missed.
        let waiting = wait.map(|budget| (budget, self.waiters.subscribe(id)));
        let task = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))?;
        match waiting {
            Some((budget, subscription)) if !task.is_terminal() => {
                Ok(self.wait_for(task, subscription, budget).await)
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

    /// Waits for `task` to end, for at most `budget`; never fails: on timeout or a database
    /// fault it returns the task as last seen, and the client can poll on.
    #[instrument(name = "wait for result", skip_all)]
    async fn wait_for(
        &self,
        mut task: Task,
        mut subscription: crate::waiters::Subscription,
        budget: Duration,
    ) -> Task {
        let _waiting = GaugeGuard::inc(&self.config.metrics.waiting_calls);
        let until = Instant::now() + budget;
        let mut poll = self.config.poll_interval;
        while !task.is_terminal() {
            let next_poll = (Instant::now() + poll).min(until);
            tokio::select! {
                () = self.draining.cancelled() => return task,
                update = subscription.next() => {
                    if update.is_terminal() {
                        return update;
                    }
                }
                () = tokio::time::sleep_until(next_poll) => {
                    // A lost reply or event must not make us wait for nothing: the database
                    // has the truth.
                    match self.store.get(task.id).await {
                        Ok(Some(stored)) => task = stored,
                        Ok(None) => {}
                        Err(err) => warn!(error = %err, "cannot re-read a waited-for task"),
                    }
                    if Instant::now() >= until {
                        return task;
                    }
                    poll = (poll * 2).min(MAX_POLL_INTERVAL);
                }
            }
        }
        task
    }

    /// The publish failed, so no worker will see the task: end it rather than strand it. The
    /// client hears UNAVAILABLE and never learns the id.
    async fn abandon(&self, task: &Task, reason: &str) {
        let failed = Outcome::Failed {
            error: format!("could not be queued: {reason}"),
        };
        if let Err(err) = self
            .store
            .finish_unstarted(task.id, &failed, Utc::now())
            .await
        {
            warn!(task_id = %task.id, error = %err, "cannot mark an unqueued task FAILED");
        }
    }

    /// Records the confirmed publish off the request path; if it is lost, the task is only
    /// republished by the recovery sweeper, which workers handle idempotently.
    fn mark_published(&self, id: TaskId) {
        let store = self.store.clone();
        let record = async move {
            if let Err(err) = store.mark_published(id, Utc::now()).await {
                warn!(task_id = %id, error = %err, "cannot record a confirmed publish");
            }
        };
        tokio::spawn(record.in_current_span());
    }
}
