//! The queue between gateways and workers, behind four small traits:
//!
//! - [`TaskPublisher`]: a gateway puts a task on the request queue (publisher confirm awaited);
//! - [`TaskConsumer`]: a worker takes tasks off it, each a [`Delivery`] to ack or reject;
//! - [`UpdatePublisher`]: a worker sends a finished task to the gateway that waits for it
//!   (`reply_to`) and to every gateway's events feed;
//! - [`UpdateConsumer`]: a gateway receives those replies and events.
//!
//! Two implementations: [`amqp::AmqpBroker`] (RabbitMQ via lapin, the distributed deployment) and
//! [`memory::MemoryBroker`] (in-process, for `dalc up` and fast tests). Both keep the same
//! promises: tasks are settled explicitly, an unsettled delivery goes back to the queue, and
//! replies may be lost (the database holds the truth).

pub mod amqp;
mod error;
mod finish_on_drop;
pub mod memory;
mod message;
mod names;

use async_trait::async_trait;
use dalc_domain::Task;
use futures::{StreamExt, stream::BoxStream};

pub use error::QueueError;
pub use message::{MalformedMessage, PAYLOAD_VERSION, TaskMessage};
pub use names::QueueNames;

/// Where tasks go, for traces (OpenTelemetry messaging attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `messaging.system`, e.g. `rabbitmq`.
    pub system: &'static str,
    /// `messaging.destination.name`: the request queue.
    pub queue: String,
}

impl Destination {
    /// The in-process queue of `dalc up`.
    pub fn in_process() -> Self {
        Destination {
            system: "in-process",
            queue: QueueNames::default().tasks(),
        }
    }
}

/// Puts tasks on the request queue.
#[async_trait]
pub trait TaskPublisher: Send + Sync {
    /// Where [`TaskPublisher::publish_task`] sends tasks.
    fn destination(&self) -> Destination {
        Destination::in_process()
    }

    /// `Err` when a publish is known to fail right now (the broker is out of reach or refusing
    /// publishes), without waiting: lets a gateway refuse a call before writing anything.
    fn ready(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Makes sure the broker can take a publish now (reconnecting if needed), for health checks.
    async fn check(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Publishes `message` and returns once the broker has confirmed it is stored.
    /// [`QueueError::Full`] when the request queue is at its maximum length.
    async fn publish_task(&self, message: &TaskMessage) -> Result<(), QueueError>;

    /// Tasks waiting in the request queue, when the queue can tell.
    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        Ok(None)
    }
}

/// Takes tasks off the request queue.
#[async_trait]
pub trait TaskConsumer: Send + Sync {
    /// Where [`TaskConsumer::consume_tasks`] takes tasks from.
    fn source(&self) -> Destination {
        Destination::in_process()
    }

    /// Starts a consumer with at most `prefetch` unsettled deliveries at a time. The stream ends
    /// when the connection is lost; call again (with backoff) to resume.
    async fn consume_tasks(&self, prefetch: u16) -> Result<Deliveries, QueueError>;
}

/// Sends a task's new state to whoever waits for it.
#[async_trait]
pub trait UpdatePublisher: Send + Sync {
    /// Replies to `reply_to` (when there is one) and publishes a status event, awaiting the
    /// broker's confirms for both.
    async fn publish_update(&self, reply_to: Option<&str>, task: &Task) -> Result<(), QueueError>;
}

/// Publishes a status event for `task` off the caller's path, in the current span: nobody waits
/// for it, and a lost one only means a watcher at another gateway sees the change a little later
/// (watchers re-read the database too).
pub fn announce(updates: std::sync::Arc<dyn UpdatePublisher>, task: Task) {
    use tracing::Instrument;
    tokio::spawn(
        async move {
            if let Err(err) = updates.publish_update(None, &task).await {
                tracing::debug!(error = %err, status = %task.status, "cannot publish a status event");
            }
        }
        .in_current_span(),
    );
}

/// Takes messages off the dead-letter queue, each with why it was dead-lettered
/// ([`Delivery::dead_letter_reason`]), so that their tasks can be finalised.
#[async_trait]
pub trait DeadLetterConsumer: Send + Sync {
    /// Starts a consumer with at most `prefetch` unsettled dead letters. The in-process queue
    /// has nothing to finalise (its dead letters are tasks a worker already ended), so by default
    /// the stream never yields.
    async fn consume_dead_letters(&self, _prefetch: u16) -> Result<Deliveries, QueueError> {
        Ok(futures::stream::pending().boxed())
    }
}

/// Receives task updates at a gateway.
#[async_trait]
pub trait UpdateConsumer: Send + Sync {
    /// Declares this gateway's reply queue and its events queue, and starts consuming both;
    /// with `listen_for_events`, the events queue is bound to the status events of every task.
    /// The stream ends when the connection is lost; call again to resume.
    async fn consume_updates(
        &self,
        gateway_id: &str,
        listen_for_events: bool,
    ) -> Result<Updates, QueueError>;

    /// Starts or stops routing every task's status events to this gateway. Only a gateway with
    /// a caller waiting for a task it did not accept needs them: replies reach the accepting
    /// gateway anyway, and an event nobody listens to is then dropped by the broker at once,
    /// never queued and delivered. The in-process queue always delivers them (it costs nothing).
    async fn listen_for_events(&self, _gateway_id: &str, _listen: bool) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Task deliveries from the request queue.
pub type Deliveries = BoxStream<'static, Result<Delivery, QueueError>>;

/// A gateway's incoming updates, and the `reply_to` address that reaches it.
pub struct Updates {
    pub reply_to: String,
    pub stream: BoxStream<'static, Task>,
}

impl std::fmt::Debug for Updates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updates")
            .field("reply_to", &self.reply_to)
            .finish_non_exhaustive()
    }
}

/// One task taken off the request queue. It must be settled with [`Delivery::ack`] or
/// [`Delivery::reject`]; if it is dropped unsettled, it goes back to the queue.
pub struct Delivery {
    /// The task, or why its payload could not be read.
    pub message: Result<TaskMessage, MalformedMessage>,
    /// Whether the broker delivered this message before (its consumer died unsettled).
    pub redelivered: bool,
    /// For a dead letter: why the broker dead-lettered it (`rejected`, `expired`, `maxlen`,
    /// `delivery_limit`).
    pub dead_letter_reason: Option<String>,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .field("dead_letter_reason", &self.dead_letter_reason)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(
        message: Result<TaskMessage, MalformedMessage>,
        redelivered: bool,
        settle: Box<dyn Settle>,
    ) -> Self {
        Delivery {
            message,
            redelivered,
            dead_letter_reason: None,
            settle,
        }
    }

    pub(crate) fn dead_lettered_for(mut self, reason: Option<String>) -> Self {
        self.dead_letter_reason = reason;
        self
    }

    /// Done with: the broker forgets the message.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }

    /// Not done: back to the queue with `requeue`, else to the dead-letter queue.
    pub async fn reject(self, requeue: bool) -> Result<(), QueueError> {
        self.settle.reject(requeue).await
    }
}

/// How an implementation settles one delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), QueueError>;
}
