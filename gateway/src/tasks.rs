//! What the gateway does with tasks, apart from gRPC: validate, store, publish, wait.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use dalc_domain::{Backoff, Outcome, Priority, Task, TaskId, TaskStatus};
use dalc_queue::{TaskMessage, TaskPublisher, UpdatePublisher};
use dalc_storage::{Cancelled, PageCursor, StorageError, TaskStore, WorkerRecord};
use dalc_telemetry::metrics::GaugeGuard;
use futures::{FutureExt, StreamExt, future::BoxFuture, stream, stream::BoxStream};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, instrument, warn};

use crate::{
    ApiError, GatewayConfig,
    auth::Tenant,
    events::{Events, Listening},
    marks::PublishMarks,
    task_counts::TaskCounts,
    wait::CallBudget,
    waiters::{Subscription, Waiters},
};

/// The longest pause between database reads while waiting: the fallback for a lost reply.
pub(crate) const MAX_POLL_INTERVAL: Duration = Duration::from_secs(4);

/// A waiting call's last read starts this long before its wait ends, so it can finish in time.
pub(crate) const LAST_READ_ALLOWANCE: Duration = Duration::from_millis(50);

/// The longest idempotency key a client may send: it is stored with the task.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// How long a watch waits for the broker to route status events here before it relies on
/// re-reading the database alone.
const EVENTS_BIND_BOUND: Duration = Duration::from_secs(2);

/// ListTasks' page size when the request names none, and the largest it may ask for.
const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;

/// One expression to run, as a client submitted it.
#[derive(Debug, Clone)]
pub(crate) struct Submission {
    pub(crate) expression: String,
    /// The task's deadline (and a sync call's wait), when the request gives one.
    pub(crate) timeout: Option<Duration>,
    /// As requested; 0 takes the default for sync or async.
    pub(crate) priority: Priority,
    pub(crate) idempotency_key: Option<String>,
}

/// How [`Tasks::accept`] took a submission. Made once per call and taken apart at once, so the
/// variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Accepted {
    /// Stored and queued; with the wait that follows for a sync call: until when, the
    /// subscription made before publishing, and the call's place among waiting calls. (A sync
    /// call whose task ended while it was being queued has no wait left.)
    Queued {
        task: Task,
        wait: Option<(Instant, Subscription, Option<OwnedSemaphorePermit>)>,
    },
    /// An earlier try with the same idempotency key made this task: the call follows it, as
    /// the caller's tenant.
    Existing {
        id: TaskId,
        tenant: Tenant,
        waiting: Option<OwnedSemaphorePermit>,
    },
}

/// What GetStats reports, before its wire form.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) workers: Vec<WorkerRecord>,
    pub(crate) queue_depth: u64,
    pub(crate) by_status: BTreeMap<TaskStatus, u64>,
}

/// Submissions stored and queued at once. Beyond it, a burst of calls waits for a turn holding
/// only its request, rather than thousands at once holding an insert and a publish in flight
/// each (whose memory a gateway keeps once the burst is over); the database and the broker take
/// them in batches of this order anyway.
pub(crate) const MAX_ACCEPTING: usize = 256;

/// The gateway's task logic, shared by all calls.
pub(crate) struct Tasks {
    pub(crate) config: GatewayConfig,
    pub(crate) store: TaskStore,
    pub(crate) publisher: Arc<dyn TaskPublisher>,
    /// Tells other gateways' watchers about changes made here (a cancellation).
    pub(crate) notifier: Arc<dyn UpdatePublisher>,
    /// One permit per call that waits for tasks (sync calls, long polls, watches, batches):
    /// past `max_waiting_calls`, calls are refused instead of exhausting the gateway.
    pub(crate) waiting: Arc<Semaphore>,
    /// One permit per submission being stored and queued (see [`MAX_ACCEPTING`]).
    pub(crate) accepting: Semaphore,
    pub(crate) waiters: Waiters,
    /// Status events, for callers waiting for tasks other gateways accepted.
    pub(crate) events: Arc<Events>,
    pub(crate) marks: PublishMarks,
    /// This gateway's reply queue: where workers send the results of tasks it accepted.
    pub(crate) reply_to: String,
    /// The tenants' tasks by status, counted incrementally (GetStats).
    pub(crate) counts: TaskCounts,
    /// Cancelled near the end of the shutdown grace period: waits answer at once.
    pub(crate) draining: CancellationToken,
}

impl Tasks {
    /// Validates, stores and queues an expression; with a wait in `budget`, waits until then for
    /// the task to end and returns it as it then stands. Every step ends by the call's deadline.
    ///
    /// Thousands of sync calls may wait at once, so while one waits it holds the wait's state
    /// alone: the steps before it run in a box of their own, freed once done, and so does the
    /// wait. Not an `async fn`, whose future would keep a copy of every argument throughout.
    pub(crate) fn submit(
        &self,
        tenant: Tenant,
        submission: Submission,
        budget: CallBudget,
        caller_context: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Task, ApiError>> + Send + '_ {
        let accept = Box::pin(self.accept_in_turn(tenant, submission, budget, caller_context));
        async move {
            let (wait, _waiting): (BoxFuture<'_, Result<Task, ApiError>>, _) = match accept.await? {
                Accepted::Queued { task, wait: None } => return Ok(task),
                Accepted::Queued {
                    task,
                    wait: Some((until, subscription, waiting)),
                } => (
                    Box::pin(self.wait_for(task, subscription, until).map(Ok)),
                    waiting,
                ),
                Accepted::Existing {
                    id,
                    tenant,
                    waiting,
                } => {
                    let follow = async move { self.read_and_follow(&tenant, id, budget).await };
                    (Box::pin(follow), waiting)
                }
            };
            wait.await
        }
        .instrument(info_span!("submit", task_id = tracing::field::Empty))
    }

    /// [`Tasks::submit`] up to the wait: bad input refused at once, then in its turn
    /// [`Tasks::accept`], boxed: a burst waits for its turn without the state of the steps.
    async fn accept_in_turn(
        &self,
        tenant: Tenant,
        submission: Submission,
        budget: CallBudget,
        caller_context: BTreeMap<String, String>,
    ) -> Result<Accepted, ApiError> {
        // Bad input is refused at once, not after waiting for a turn.
        self.validate(&submission.expression)
            .map_err(|err| ApiError::InvalidArgument(format!("invalid expression: {err}")))?;
        check_idempotency_key(
            submission.idempotency_key.as_deref(),
            MAX_IDEMPOTENCY_KEY_LEN,
        )?;
        // Each permit's wait is as bounded as any step: a burst waits its turn here.
        let accepting = async {
            self.accepting
                .acquire()
                .await
                .map_err(|_| ApiError::Unavailable("the gateway is shutting down".into()))
        };
        let _turn = budget
            .bound("the task database and queue", accepting)
            .await?;
        Box::pin(self.accept(&tenant, submission, budget, caller_context)).await
    }

    /// [`Tasks::submit`] of a valid submission, in its turn, up to the wait: the task stored and
    /// queued, or the task an earlier try with the same idempotency key made.
    async fn accept(
        &self,
        tenant: &Tenant,
        submission: Submission,
        budget: CallBudget,
        caller_context: BTreeMap<String, String>,
    ) -> Result<Accepted, ApiError> {
        let Submission {
            expression,
            timeout,
            priority,
            idempotency_key,
        } = submission;
        let waiting = self.reserve_wait(&budget)?;
        if let Some(key) = &idempotency_key
            && let Some(existing) = Box::pin(self.keyed_task(tenant, key, &expression)).await?
        {
            // A retry: the task runs once, whichever gateway took the first try.
            return Ok(Accepted::Existing {
                id: existing.id,
                tenant: tenant.clone(),
                waiting,
            });
        }
        // The broker is known to be away or refusing publishes: refuse before writing anything.
        self.publisher.ready()?;
        let mut task = Task::new(expression, self.deadline_after(timeout));
        task.tenant.clone_from(&tenant.0);
        task.priority = Priority::for_submission(priority, budget.wait_until.is_some());
        task.idempotency_key = idempotency_key;
        tracing::Span::current().record("task_id", tracing::field::display(task.id));

        // Subscribe before publishing: the reply can beat us back.
        let subscription = budget
            .wait_until
            .map(|until| (until, self.waiters.subscribe(task.id)));
        // The steps' futures are boxed: each lives only for its step, and not both in the state
        // of every call of a burst of thousands.
        let insert = Box::pin(async {
            match self.store.insert(&task, self.config.sweep_grace).await {
                Ok(()) => Ok(true),
                // Another gateway stored this key's task first (a concurrent retry).
                Err(StorageError::Duplicate(_)) => Ok(false),
                Err(err) => Err(ApiError::from(err)),
            }
        });
        match budget.bound("the task database", insert).await {
            Ok(true) => {}
            Ok(false) => {
                let key = task.idempotency_key.as_deref().unwrap_or_default();
                let existing = Box::pin(self.keyed_task(tenant, key, &task.expression))
                    .await?
                    .ok_or_else(|| {
                        ApiError::Unavailable(
                            "a concurrent retry is still being stored; try again".into(),
                        )
                    })?;
                return Ok(Accepted::Existing {
                    id: existing.id,
                    tenant: tenant.clone(),
                    waiting,
                });
            }
            Err(err) => {
                // Cut off at the call's deadline, the row may still land (its write had begun):
                // end it then, rather than run a task whose caller heard UNAVAILABLE.
                return Err(self.abandoned(&task, err));
            }
        }
        #[cfg(feature = "fault-injection")]
        if self.config.fault_abort_before_publish {
            // Test-only fault: die like `kill -9` in the gap the sweeper exists for.
            std::process::abort();
        }
        let publish = async { Ok(self.publish(&task, caller_context).await?) };
        let mut publish = Box::pin(budget.bound("the task queue", publish));
        let mut subscription = subscription;
        // The latest update that came while queueing: the task's end, or RUNNING.
        let mut seen: Option<Task> = None;
        match &mut subscription {
            None => {
                (&mut publish)
                    .await
                    .map_err(|err| self.abandoned(&task, err))?;
            }
            // RabbitMQ confirms a message a consumer took only once the consumer acknowledges
            // it, so a sync call's result may come back before the confirm: the task's end is
            // proof enough that it was queued, and the call need not wait for more.
            Some((_, updates)) => loop {
                tokio::select! {
                    confirmed = &mut publish => {
                        confirmed.map_err(|err| self.abandoned(&task, err))?;
                        break;
                    }
                    update = updates.next() => {
                        let ended = update.is_terminal();
                        seen = Some(update);
                        if ended {
                            break;
                        }
                    }
                }
            },
        }
        drop(publish); // It borrows the task.
        self.config.metrics.tasks_submitted.inc();
        let task = match seen {
            Some(ended) if ended.is_terminal() => {
                return Ok(Accepted::Queued {
                    task: ended,
                    wait: None,
                });
            }
            Some(running) => running,
            None => task,
        };
        self.marks.record(task.id);
        let wait = subscription.map(|(until, subscription)| (until, subscription, waiting));
        Ok(Accepted::Queued { task, wait })
    }

    /// [`Tasks::abandon`] for one task whose publish failed with `err`, which is returned.
    fn abandoned(&self, task: &Task, err: ApiError) -> ApiError {
        self.abandon(std::slice::from_ref(task), &err.to_string());
        err
    }

    /// Reads a task; with a wait in `budget`, long-polls until it is terminal or the wait ends.
    #[instrument(skip_all, fields(task_id = %id))]
    pub(crate) async fn get(
        &self,
        tenant: &Tenant,
        id: TaskId,
        budget: CallBudget,
    ) -> Result<Task, ApiError> {
        let _waiting = self.reserve_wait(&budget)?;
        self.read_and_follow(tenant, id, budget).await
    }

    /// [`Tasks::get`], its waiting call already counted.
    async fn read_and_follow(
        &self,
        tenant: &Tenant,
        id: TaskId,
        budget: CallBudget,
    ) -> Result<Task, ApiError> {
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
        // Thousands of long polls may wait at once, and a future is as large as its largest
        // step: the read's (the database's, kilobytes) and the wait's are boxed, each freed
        // once done.
        let task = budget
            .bound("the task database", Box::pin(self.read_owned(tenant, id)))
            .await?;
        match subscription {
            Some((until, subscription)) if !task.is_terminal() => {
                Ok(Box::pin(self.wait_for(task, subscription, until)).await)
            }
            _ => Ok(task),
        }
    }

    /// Streams the task as it stands, then each change, until it is terminal.
    pub(crate) async fn watch(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: TaskId,
    ) -> Result<BoxStream<'static, Task>, ApiError> {
        let waiting = self.reserve_waiting()?;
        // Status events from every gateway's tasks: RUNNING comes only that way.
        let listening = tokio::time::timeout(EVENTS_BIND_BOUND, self.events.listen())
            .await
            .ok();
        let subscription = self.waiters.subscribe(id);
        let first = self.read_owned(tenant, id).await?;
        let watch = Watch {
            tasks: self.clone(),
            subscription,
            last: first,
            end: None,
            shown_first: false,
            polls: Backoff::new(self.config.poll_interval, MAX_POLL_INTERVAL),
            _held: (waiting, listening),
        };
        Ok(stream::unfold(watch, Watch::next_change).boxed())
    }

    /// A page of the tenant's tasks, newest first, and the token of the next page (empty
    /// when this is the last).
    pub(crate) async fn list(
        &self,
        tenant: &Tenant,
        page_size: u32,
        page_token: &str,
        status: Option<TaskStatus>,
    ) -> Result<(Vec<Task>, String), ApiError> {
        let cursor = match page_token {
            "" => None,
            token => Some(
                token
                    .parse::<PageCursor>()
                    .map_err(|err| ApiError::InvalidArgument(err.to_string()))?,
            ),
        };
        let size = match u64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        // One more than the page: whether another page follows.
        let mut tasks = self.store.list(&tenant.0, status, cursor, size + 1).await?;
        let mut more = u64::try_from(tasks.len()).unwrap_or(u64::MAX) > size;
        tasks.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        // A page of long expressions and results is cut short rather than refused: the response
        // must fit in one message, with room for the encoding's own bytes.
        let budget = page_budget(self.config.max_message_bytes);
        let mut used = 0usize;
        let fit = tasks
            .iter()
            .take_while(|task| {
                used = used.saturating_add(approximate_size(task));
                used <= budget
            })
            .count()
            .max(1);
        if fit < tasks.len() {
            tasks.truncate(fit);
            more = true;
        }
        let next = match tasks.last() {
            Some(last) if more => PageCursor::after(last).to_string(),
            _ => String::new(),
        };
        Ok((tasks, next))
    }

    /// Cancels a PENDING task; a CANCELLED one is returned as it is. Both steps are bounded by
    /// the call's deadline, but once the cancel is sent it runs to its end on a task of its own
    /// (the write, the metric, waiters here and watchers at other gateways), whether or not
    /// the call is still there to be told.
    #[instrument(skip_all, fields(task_id = %id))]
    pub(crate) async fn cancel(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: TaskId,
        budget: CallBudget,
    ) -> Result<Task, ApiError> {
        budget
            .bound("the task database", self.read_owned(tenant, id))
            .await?;
        let tasks = Arc::clone(self);
        let cancelling =
            tokio::spawn(async move { tasks.cancel_owned(id).await }.in_current_span());
        let cancelled = async {
            cancelling
                .await
                .unwrap_or_else(|err| Err(ApiError::Internal(format!("the cancel failed: {err}"))))
        };
        budget.bound("the task database", cancelled).await
    }

    /// [`Tasks::cancel`] of a task known to be the caller's.
    async fn cancel_owned(&self, id: TaskId) -> Result<Task, ApiError> {
        match self.store.cancel(id).await? {
            Cancelled::Now(task) => {
                self.config.metrics.task_finished(task.status.as_str());
                self.waiters.deliver(task.clone());
                // Watchers at other gateways.
                dalc_queue::announce(self.notifier.clone(), task.clone());
                Ok(task)
            }
            Cancelled::Not(task) if task.status == TaskStatus::Cancelled => Ok(task),
            Cancelled::Not(task) => Err(ApiError::FailedPrecondition(format!(
                "task {id} is {}: only a PENDING task can be cancelled",
                task.status
            ))),
            Cancelled::Missing => Err(not_found(id)),
        }
    }

    /// Every worker's figures, the request queue's depth and the tenant's tasks by status.
    pub(crate) async fn stats(&self, tenant: &Tenant) -> Result<Stats, ApiError> {
        let (workers, by_status, depth) = tokio::join!(
            self.store.workers(),
            self.counts.of(&self.store, &tenant.0),
            self.publisher.depth()
        );
        Ok(Stats {
            workers: workers?,
            by_status: by_status?,
            queue_depth: depth?.unwrap_or_default(),
        })
    }

    /// The task `id` if it is the tenant's: another tenant's task is as good as missing.
    pub(crate) async fn read_owned(&self, tenant: &Tenant, id: TaskId) -> Result<Task, ApiError> {
        match self.store.read(id).await? {
            Some(task) if task.tenant == tenant.0 => Ok(task),
            _ => Err(not_found(id)),
        }
    }

    /// The tenant's task submitted under `key`, if any; the same key for another expression
    /// is ALREADY_EXISTS.
    async fn keyed_task(
        &self,
        tenant: &Tenant,
        key: &str,
        expression: &str,
    ) -> Result<Option<Task>, ApiError> {
        let found = self
            .store
            .find_by_idempotency_keys(&tenant.0, &[key])
            .await?;
        match found.into_iter().next() {
            Some(task) if task.expression != expression => Err(ApiError::AlreadyExists(format!(
                "idempotency key {key:?} was used for another expression (task {})",
                task.id
            ))),
            found => Ok(found),
        }
    }

    /// Checks an expression the way a worker will parse it.
    pub(crate) fn validate(&self, expression: &str) -> Result<(), dalc_calc::CalcError> {
        dalc_calc::parse(expression, &self.config.limits).map(drop)
    }

    /// A task deadline `timeout` (or the default TTL) from now.
    pub(crate) fn deadline_after(
        &self,
        timeout: Option<Duration>,
    ) -> Option<chrono::DateTime<Utc>> {
        let ttl = timeout.unwrap_or(self.config.task_ttl);
        chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl))
    }

    /// Counts a call that will wait (its budget says so) against the gateway's cap.
    pub(crate) fn reserve_wait(
        &self,
        budget: &CallBudget,
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        budget
            .wait_until
            .map(|_| self.reserve_waiting())
            .transpose()
    }

    /// Counts a waiting call against the gateway's cap, or refuses it.
    pub(crate) fn reserve_waiting(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.waiting.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "this gateway already holds {} waiting calls; retry later or use another gateway",
                self.config.max_waiting_calls
            ))
        })
    }

    /// Publishes in a producer span (OpenTelemetry messaging conventions) whose context rides
    /// in the message headers, so the worker's span continues this trace.
    pub(crate) async fn publish(
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
    ///
    /// Thousands of calls may wait at once, and this is what each holds meanwhile. It is not an
    /// `async fn`, whose future would store its arguments twice (as passed, then as bound).
    pub(crate) fn wait_for(
        &self,
        mut task: Task,
        mut subscription: Subscription,
        until: Instant,
    ) -> impl Future<Output = Task> + Send + '_ {
        async move {
            let _waiting = GaugeGuard::inc(&self.config.metrics.waiting_calls);
            let mut polls = Backoff::new(self.config.poll_interval, MAX_POLL_INTERVAL);
            let last_read = until.checked_sub(LAST_READ_ALLOWANCE).unwrap_or(until);
            while !task.is_terminal() {
                let next_poll = (Instant::now() + polls.peek()).min(last_read);
                // No branch awaits, so what the select holds is gone before the read below.
                let poll_due = tokio::select! {
                    () = self.draining.cancelled() => return task,
                    update = subscription.next() => {
                        if update.is_terminal() {
                            return update;
                        }
                        // RUNNING: what the caller sees if the wait ends now.
                        task = update;
                        false
                    }
                    () = tokio::time::sleep_until(next_poll) => true,
                };
                if !poll_due {
                    continue;
                }
                // A lost reply or event must not make us wait for nothing: the database has
                // the truth. Boxed: rare, and kept out of the state every waiting call holds.
                let read = Box::pin(tokio::time::timeout_at(until, self.store.read(task.id)));
                match read.await {
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
            task
        }
        .instrument(info_span!("wait for result"))
    }

    /// The publish failed (or was cut off), so no worker may see the tasks: end them rather than
    /// strand them (in the background: the client hears the error now). Only tasks still PENDING
    /// are ended: if a confirm was lost but the message landed and a worker started it, the
    /// attempt stands.
    ///
    /// A task with an idempotency key is left PENDING instead: its client will retry with the
    /// key and must find it runnable, and the recovery sweeper queues it once the publish grace
    /// is over, so it is not stranded either.
    pub(crate) fn abandon(&self, tasks: &[Task], reason: &str) {
        let ids: Vec<TaskId> = tasks
            .iter()
            .filter(|task| task.idempotency_key.is_none())
            .map(|task| task.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let failed = Outcome::Failed {
            error: format!("could not be queued: {reason}"),
        };
        let (store, metrics) = (self.store.clone(), self.config.metrics.clone());
        let record = async move {
            match store.finish_all_unstarted(&ids, &failed).await {
                Ok(ended) => {
                    for task in ended {
                        metrics.task_finished(task.status.as_str());
                    }
                }
                Err(err) => {
                    warn!(error = %err, tasks = ids.len(), "cannot mark unqueued tasks FAILED; the sweeper retries their publish");
                }
            }
        };
        tokio::spawn(record.in_current_span());
    }
}

fn not_found(id: TaskId) -> ApiError {
    ApiError::NotFound(format!("no task with id {id}"))
}

/// An idempotency key is optional; a given one is 1 to `max` characters, none of them NUL.
pub(crate) fn check_idempotency_key(key: Option<&str>, max: usize) -> Result<(), ApiError> {
    match key {
        Some(key) if key.chars().count() > max => Err(ApiError::InvalidArgument(format!(
            "idempotency_key is {} characters long; at most {max} are allowed",
            key.chars().count()
        ))),
        // A key is stored as text, and PostgreSQL's text cannot hold a NUL: refused alike on
        // every database, so a key means the same on both.
        Some(key) if key.contains('\0') => Err(ApiError::InvalidArgument(
            "idempotency_key must not contain a NUL character".into(),
        )),
        _ => Ok(()),
    }
}

/// One WatchTask stream's state.
struct Watch {
    tasks: Arc<Tasks>,
    subscription: Subscription,
    /// The state the client saw last.
    last: Task,
    /// An end to show next, once the run it ended has been shown RUNNING.
    end: Option<Task>,
    shown_first: bool,
    polls: Backoff,
    /// Held for the life of the stream: its place among waiting calls, and the event routing.
    _held: (OwnedSemaphorePermit, Option<Listening>),
}

impl Watch {
    /// The next state to show, or `None` once the task is terminal (or the gateway drains).
    async fn next_change(mut self) -> Option<(Task, Self)> {
        if !self.shown_first {
            self.shown_first = true;
            return Some((self.last.clone(), self));
        }
        if let Some(end) = self.end.take() {
            self.last = end;
            return Some((self.last.clone(), self));
        }
        while !self.last.is_terminal() {
            let update = tokio::select! {
                () = self.tasks.draining.cancelled() => return None,
                update = self.subscription.next() => Some(update),
                () = tokio::time::sleep(self.polls.peek()) => {
                    self.polls.next_delay();
                    // A lost event must not stall the watch: the database has the truth.
                    match self.tasks.store.read(self.last.id).await {
                        Ok(stored) => stored,
                        Err(err) => {
                            warn!(error = %err, "cannot re-read a watched task");
                            None
                        }
                    }
                }
            };
            if let Some(update) = update
                && update.supersedes(&self.last)
            {
                self.polls.reset();
                // A run is shown RUNNING before its end even when no event or read caught it
                // running (a quick attempt never stores that state): a watch streams every step
                // the task took.
                self.last = if update.ends_a_run_unseen_in(&self.last) {
                    let running = update.while_running();
                    self.end = Some(update);
                    running
                } else {
                    update
                };
                return Some((self.last.clone(), self));
            }
        }
        None
    }
}

/// The bytes of a message of `max_message_bytes` that a list page fills with tasks: the rest
/// is room for the encoding's own bytes.
fn page_budget(max_message_bytes: usize) -> usize {
    max_message_bytes / 4 * 3
}

/// The smallest `max_message_bytes` whose page holds the largest task `limits` allow (by
/// [`approximate_size`]): its longest expression and result (an integer of the most digits,
/// and a sign), an error (a sentence, well under a KiB) and a worker id of up to 256 bytes.
/// Below it, some task could be neither answered nor listed.
pub(crate) fn min_message_bytes(limits: &dalc_calc::Limits) -> usize {
    const ERROR_AND_WORKER: usize = 1024 + 256;
    let largest = APPROXIMATE_FIXED_SIZE
        + limits.max_expression_bytes
        + limits.max_integer_digits
        + 1
        + ERROR_AND_WORKER;
    largest.div_ceil(3) * 4
}

/// [`approximate_size`]'s allowance for the id, timestamps and numbers.
const APPROXIMATE_FIXED_SIZE: usize = 256;

/// About how many bytes `task` takes in a response: its texts, and a generous allowance for the
/// id, timestamps, worker and numbers.
fn approximate_size(task: &Task) -> usize {
    let texts = [
        task.expression.len(),
        task.result.as_deref().map_or(0, str::len),
        task.error.as_deref().map_or(0, str::len),
        task.worker_id.as_deref().map_or(0, str::len),
    ];
    texts
        .iter()
        .fold(APPROXIMATE_FIXED_SIZE, |sum, len| sum.saturating_add(*len))
}
