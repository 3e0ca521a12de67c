//! SubmitBatch: many expressions validated, stored and queued together, then streamed back one
//! by one as they end (completion order), until the batch's wait ends; the rest then as they
//! stand.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use dalc_domain::{Backoff, Priority, Task, TaskId};
use dalc_storage::StorageError;
use futures::{
    StreamExt, stream,
    stream::{BoxStream, FuturesUnordered},
};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, warn};

use crate::{
    ApiError,
    auth::Tenant,
    tasks::{LAST_READ_ALLOWANCE, MAX_POLL_INTERVAL, Tasks, check_idempotency_key},
    wait::CallBudget,
    waiters::Subscription,
};

/// The longest batch idempotency key: each task's key is `<key>/<index>`, within the 128
/// characters a task's key may have.
pub(crate) const MAX_BATCH_KEY_LEN: usize = 120;

/// Publishes in flight at once: confirms are pipelined, never one round trip at a time.
const PUBLISHES_IN_FLIGHT: usize = 64;

/// Streamed answers buffered for a slow client before the batch waits for it.
const STREAM_BUFFER: usize = 256;

/// A batch as a client submitted it.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) expressions: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) priority: Priority,
    pub(crate) idempotency_key: Option<String>,
}

impl Tasks {
    /// Validates every expression, stores and queues them all, and streams `(index, task)` as
    /// each ends, until `budget`'s wait ends; then the rest as they stand.
    pub(crate) async fn submit_batch(
        self: &Arc<Self>,
        tenant: &Tenant,
        batch: Batch,
        budget: CallBudget,
        caller_context: BTreeMap<String, String>,
    ) -> Result<BoxStream<'static, (u32, Task)>, ApiError> {
        let count = batch.expressions.len();
        if count == 0 {
            return Err(ApiError::InvalidArgument(
                "a batch needs at least one expression".into(),
            ));
        }
        if count > self.config.max_batch_size {
            return Err(ApiError::InvalidArgument(format!(
                "a batch of {count} expressions exceeds this server's maximum of {}",
                self.config.max_batch_size
            )));
        }
        for (index, expression) in batch.expressions.iter().enumerate() {
            self.validate(expression).map_err(|err| {
                ApiError::InvalidArgument(format!("expression {index}: invalid expression: {err}"))
            })?;
        }
        check_idempotency_key(batch.idempotency_key.as_deref(), MAX_BATCH_KEY_LEN)?;
        let waiting = self.reserve_waiting()?;
        let keys: Option<Vec<String>> = batch
            .idempotency_key
            .as_ref()
            .map(|key| (0..count).map(|index| format!("{key}/{index}")).collect());

        // Each arm subscribes to its tasks' ends, and says whether they may have ended already
        // (a retry's tasks): then the database is read at once.
        let (subscriptions, tasks, read_at_once) =
            match self.stored_batch(tenant, &batch, keys.as_deref()).await? {
                // A retry: stream the tasks the first try stored; none runs twice.
                Some(tasks) => (self.subscribe_all(&tasks), tasks, true),
                None => {
                    self.publisher.ready()?;
                    let deadline = self.deadline_after(batch.timeout);
                    let priority = Priority::for_submission(batch.priority, false);
                    let mut tasks: Vec<Task> = Vec::with_capacity(count);
                    for (index, expression) in batch.expressions.iter().enumerate() {
                        let mut task = Task::new(expression.clone(), deadline);
                        task.tenant.clone_from(&tenant.0);
                        task.priority = priority;
                        task.idempotency_key =
                            keys.as_ref().and_then(|keys| keys.get(index).cloned());
                        tasks.push(task);
                    }
                    // Subscribe before publishing: replies can beat us back.
                    let subscriptions = self.subscribe_all(&tasks);
                    let insert = async {
                        match self.store.insert_all(&tasks, self.config.sweep_grace).await {
                            Ok(()) => Ok(true),
                            Err(StorageError::Duplicate(_)) => Ok(false),
                            Err(err) => Err(ApiError::from(err)),
                        }
                    };
                    let stored = match budget.bound("the task database", insert).await {
                        Ok(stored) => stored,
                        Err(err) => {
                            // Cut off at the call's deadline, the rows may still land: end them
                            // then, rather than run tasks whose client heard an error.
                            self.abandon(&tasks, &err.to_string());
                            return Err(err);
                        }
                    };
                    if !stored {
                        // A concurrent retry stored the batch first.
                        let tasks = self
                            .stored_batch(tenant, &batch, keys.as_deref())
                            .await?
                            .ok_or_else(|| {
                                ApiError::Unavailable(
                                    "a concurrent retry of this batch is still being stored".into(),
                                )
                            })?;
                        (self.subscribe_all(&tasks), tasks, true)
                    } else {
                        let publish = self.publish_batch(&tasks, caller_context);
                        if let Err(err) = budget.bound("the task queue", publish).await {
                            self.abandon(&tasks, &err.to_string());
                            return Err(err);
                        }
                        (subscriptions, tasks, false)
                    }
                }
            };

        let until = budget.wait_until.unwrap_or_else(Instant::now);
        let (answers, received) = mpsc::channel(STREAM_BUFFER);
        let follow = FollowBatch {
            tasks: self.clone(),
            pending: tasks
                .into_iter()
                .zip(0u32..)
                .map(|(t, i)| (t.id, (i, t)))
                .collect(),
            answers,
        };
        tokio::spawn(async move {
            let _waiting = waiting;
            follow.run(subscriptions, until, read_at_once).await;
        });
        Ok(stream::unfold(received, |mut received| async move {
            received.recv().await.map(|answer| (answer, received))
        })
        .boxed())
    }

    /// A subscription to each task's updates, with the task's index in the batch.
    fn subscribe_all(&self, tasks: &[Task]) -> Vec<(u32, Subscription)> {
        tasks
            .iter()
            .zip(0u32..)
            .map(|(task, index)| (index, self.waiters.subscribe(task.id)))
            .collect()
    }

    /// The tasks a previous try of this batch stored (by their keys), in index order; `None`
    /// when it stored none. The same keys for other expressions is ALREADY_EXISTS.
    async fn stored_batch(
        &self,
        tenant: &Tenant,
        batch: &Batch,
        keys: Option<&[String]>,
    ) -> Result<Option<Vec<Task>>, ApiError> {
        let Some(keys) = keys else {
            return Ok(None);
        };
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let stored = self
            .store
            .find_by_idempotency_keys(&tenant.0, &keys)
            .await?;
        if stored.is_empty() {
            return Ok(None);
        }
        let mut by_key: HashMap<String, Task> = stored
            .into_iter()
            .filter_map(|task| Some((task.idempotency_key.clone()?, task)))
            .collect();
        let mut tasks = Vec::with_capacity(keys.len());
        for (key, expression) in keys.iter().zip(&batch.expressions) {
            match by_key.remove(*key) {
                Some(task) if &task.expression == expression => tasks.push(task),
                _ => {
                    return Err(ApiError::AlreadyExists(format!(
                        "idempotency key {:?} was used for another batch",
                        batch.idempotency_key.as_deref().unwrap_or_default()
                    )));
                }
            }
        }
        Ok(Some(tasks))
    }

    /// Queues every task of a stored batch, confirms pipelined; stops at the first failure
    /// (the caller then ends the batch's tasks that no worker started).
    async fn publish_batch(
        &self,
        tasks: &[Task],
        caller_context: BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        // Collected first: a lazy map's closure makes the future's Send-ness unprovable.
        let publishes: Vec<_> = tasks
            .iter()
            .map(|task| {
                let context = caller_context.clone();
                async move { (task.id, self.publish(task, context).await) }
            })
            .collect();
        let mut publishes = stream::iter(publishes).buffer_unordered(PUBLISHES_IN_FLIGHT);
        while let Some((id, published)) = publishes.next().await {
            published?;
            self.marks.record(id);
        }
        self.config
            .metrics
            .tasks_submitted
            .inc_by(tasks.len() as u64);
        Ok(())
    }
}

/// Streams a batch's tasks to its client as they end.
struct FollowBatch {
    tasks: Arc<Tasks>,
    /// Tasks not yet streamed: their index and their state as last known.
    pending: HashMap<TaskId, (u32, Task)>,
    answers: mpsc::Sender<(u32, Task)>,
}

impl FollowBatch {
    /// Streams the tasks as they end, until `until`; then the rest as they stand. The database
    /// is read now and then (and at once when `read_at_once`: a retry's tasks may have ended).
    async fn run(
        mut self,
        subscriptions: Vec<(u32, Subscription)>,
        until: Instant,
        read_at_once: bool,
    ) {
        let mut ends: FuturesUnordered<_> = subscriptions
            .into_iter()
            .map(|(index, mut subscription)| async move {
                loop {
                    let update = subscription.next().await;
                    if update.is_terminal() {
                        return (index, update);
                    }
                }
            })
            .collect();
        let config = &self.tasks.config;
        let mut polls = Backoff::new(config.poll_interval, MAX_POLL_INTERVAL);
        let last_read = until.checked_sub(LAST_READ_ALLOWANCE).unwrap_or(until);
        let mut next_poll = if read_at_once {
            Instant::now()
        } else {
            Instant::now() + polls.next_delay()
        };
        while !self.pending.is_empty() {
            tokio::select! {
                () = self.tasks.draining.cancelled() => break,
                () = self.answers.closed() => return,
                Some((_, task)) = ends.next() => {
                    if !self.answer(task).await {
                        return;
                    }
                }
                () = tokio::time::sleep_until(next_poll.min(last_read)) => {
                    // Lost replies must not stall the batch: the database has the truth.
                    if !self.answer_from_database(true, until).await {
                        return;
                    }
                    if Instant::now() >= last_read {
                        break;
                    }
                    next_poll = Instant::now() + polls.next_delay();
                }
            }
        }
        // The wait is over: the rest as they stand.
        drop(ends);
        if self.answer_from_database(false, until).await {
            let rest: Vec<(u32, Task)> = self.pending.drain().map(|(_, answer)| answer).collect();
            for answer in rest {
                if self.answers.send(answer).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Streams `task` if it is still pending; false once the client is gone.
    async fn answer(&mut self, task: Task) -> bool {
        match self.pending.remove(&task.id) {
            Some((index, _)) => self.answers.send((index, task)).await.is_ok(),
            None => true,
        }
    }

    /// Re-reads the pending tasks, by `until` at the latest: streams those that ended (or,
    /// unless `only_ended`, all of them as they stand). False once the client is gone.
    async fn answer_from_database(&mut self, only_ended: bool, until: Instant) -> bool {
        let ids: Vec<TaskId> = self.pending.keys().copied().collect();
        let read = self.tasks.store.get_many(&ids);
        let stored = match tokio::time::timeout_at(until, read).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(err)) => {
                warn!(error = %err, "cannot re-read a batch's tasks");
                return true;
            }
            Err(_) => {
                // The client's deadline, however short it chose: the tasks stream as last known.
                debug!("re-reading a batch's tasks outlasted the call's deadline");
                return true;
            }
        };
        for task in stored {
            if task.is_terminal() || !only_ended {
                if !self.answer(task).await {
                    return false;
                }
            } else if let Some((_, known)) = self.pending.get_mut(&task.id) {
                *known = task;
            }
        }
        true
    }
}
