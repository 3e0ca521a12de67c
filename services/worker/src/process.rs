//! One delivery, from the queue to its settlement.

use std::sync::Arc;

use chrono::Utc;
use dalc_domain::Task;
use dalc_queue::{Delivery, QueueError, TaskMessage, UpdatePublisher};
use dalc_storage::{Outcome, StartOutcome, StorageError, TaskStore};
use tracing::{debug, info, instrument, warn};

use crate::WorkerConfig;

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Finished (or nothing left to do): the broker forgets the message.
    Ack,
    /// A transient fault (database or broker): hand the message back for a later try.
    Requeue,
    /// The message can never succeed: to the dead-letter queue.
    DeadLetter,
}

/// Faults that make a delivery worth retrying later: the task itself is fine.
#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Runs tasks: shared by all of a worker's concurrent handlers.
pub struct Processor {
    config: WorkerConfig,
    store: TaskStore,
    updates: Arc<dyn UpdatePublisher>,
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
        Processor {
            config,
            store,
            updates,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Processes one delivery and settles it. Never panics, never drops it unsettled.
    pub async fn handle(&self, delivery: Delivery) {
        let settlement = match &delivery.message {
            Ok(message) => self.process(message).await,
            Err(malformed) => {
                warn!(error = %malformed, "dead-lettering a message that is not a task");
                Settlement::DeadLetter
            }
        };
        if settlement == Settlement::Requeue {
            // Pause before handing it back, so an outage is not a hot redelivery loop.
            tokio::time::sleep(self.config.retry_delay).await;
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

    /// Decides what to do with one task message.
    #[instrument(skip_all, fields(task_id = %message.task_id, worker_id = %self.config.worker_id))]
    pub async fn process(&self, message: &TaskMessage) -> Settlement {
        match self.try_process(message).await {
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
            return self.end_unstarted(message, &expired, Settlement::Ack).await;
        }
        let task = match self
            .store
            .start_attempt(message.task_id, &self.config.worker_id, Utc::now())
            .await?
        {
            StartOutcome::Started(task) => task,
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
        let outcome = self.evaluate(&task).await;
        self.end_attempt(&task, &outcome, reply_to, Settlement::Ack)
            .await
    }

    async fn evaluate(&self, task: &Task) -> Outcome {
        let expression = task.expression.clone();
        let limits = self.config.limits.clone();
        // Evaluation is CPU-bound (bounded, but up to milliseconds): keep it off the reactor.
        let evaluated =
            tokio::task::spawn_blocking(move || dalc_calc::evaluate(&expression, &limits)).await;
        match evaluated {
            Ok(Ok(value)) => Outcome::Succeeded {
                result: value.to_string(),
            },
            Ok(Err(err)) => Outcome::Failed {
                error: err.to_string(),
            },
            Err(join_error) => {
                warn!(error = %join_error, "evaluation crashed");
                Outcome::Failed {
                    error: "internal error while evaluating the expression".into(),
                }
            }
        }
    }

    /// Records the end of this attempt, replies, and settles as `then`.
    async fn end_attempt(
        &self,
        task: &Task,
        outcome: &Outcome,
        reply_to: Option<&str>,
        then: Settlement,
    ) -> Result<Settlement, Transient> {
        match self
            .store
            .finish_attempt(task.id, task.attempts, outcome, Utc::now())
            .await?
        {
            Some(finished) => {
                info!(status = %finished.status, attempt = finished.attempts, "task finished");
                self.updates.publish_update(reply_to, &finished).await?;
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
        then: Settlement,
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
            self.updates.publish_update(reply_to, &task).await?;
        }
        Ok(then)
    }
}
