//! The in-process queue: the same traits as AMQP, for `dalc up` and fast tests.
//!
//! It keeps AMQP's promises that matter to callers: a delivery dropped unsettled goes back to
//! the queue marked redelivered, prefetch bounds unsettled deliveries, higher priorities are
//! delivered first, a bounded queue refuses publishes when full, rejected messages without
//! requeue are dead-lettered, and updates to a vanished gateway are dropped. It is not durable:
//! tasks queued in memory die with the process (the database still has them as PENDING).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use async_trait::async_trait;
use dalc_domain::{Priority, Task};
use futures::{StreamExt, stream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use crate::{
    DeadLetterConsumer, Deliveries, Delivery, QueueError, QueueNames, Settle, TaskConsumer,
    TaskMessage, TaskPublisher, UpdateConsumer, UpdatePublisher, Updates,
};

/// How many events a slow gateway may fall behind before it skips some (its waiters then fall
/// back to reading the database).
const EVENT_BACKLOG: usize = 4096;

/// How many dead letters are kept for inspection; past it the oldest go. They are tasks a worker
/// already ended (FAILED), so dropping them loses nothing.
const DEAD_LETTERS_KEPT: usize = 1000;

/// An in-process broker. Clones share the same queues.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ready: Mutex<Ready>,
    /// The most messages `ready` holds before publishes are refused.
    max_length: Option<usize>,
    dead: Mutex<VecDeque<TaskMessage>>,
    available: Notify,
    reply_queues: Mutex<HashMap<String, mpsc::UnboundedSender<Task>>>,
    events: broadcast::Sender<Task>,
}

#[derive(Debug)]
struct Queued {
    message: TaskMessage,
    redelivered: bool,
}

/// Ready messages, one FIFO lane per priority; the highest non-empty lane is served first.
#[derive(Debug, Default)]
struct Ready {
    lanes: [VecDeque<Queued>; Priority::MAX as usize + 1],
}

impl Ready {
    fn lane(&mut self, priority: Priority) -> &mut VecDeque<Queued> {
        // Priorities are 0..=MAX by construction; the last lane is never out of range.
        let index = usize::from(priority.get()).min(self.lanes.len() - 1);
        &mut self.lanes[index]
    }

    fn push(&mut self, queued: Queued, front: bool) {
        let lane = self.lane(queued.message.priority);
        if front {
            lane.push_front(queued);
        } else {
            lane.push_back(queued);
        }
    }

    fn pop(&mut self) -> Option<Queued> {
        self.lanes.iter_mut().rev().find_map(VecDeque::pop_front)
    }

    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::with_max_length(None)
    }

    /// A broker whose queue refuses publishes ([`QueueError::Full`]) past `max_length` tasks.
    pub fn with_max_length(max_length: Option<usize>) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                ready: Mutex::default(),
                max_length,
                dead: Mutex::default(),
                available: Notify::new(),
                reply_queues: Mutex::default(),
                events: broadcast::channel(EVENT_BACKLOG).0,
            }),
        }
    }

    /// Messages waiting for a consumer.
    pub fn depth(&self) -> usize {
        lock(&self.inner.ready).len()
    }

    /// Messages rejected without requeue.
    pub fn dead_letters(&self) -> Vec<TaskMessage> {
        lock(&self.inner.dead).iter().cloned().collect()
    }
}

impl Inner {
    fn enqueue(&self, queued: Queued, front: bool) {
        lock(&self.ready).push(queued, front);
        self.available.notify_one();
    }

    async fn dequeue(&self) -> Queued {
        loop {
            let notified = self.available.notified();
            let (next, more) = {
                let mut ready = lock(&self.ready);
                (ready.pop(), !ready.is_empty())
            };
            if let Some(queued) = next {
                // Others may be waiting for the messages behind this one.
                if more {
                    self.available.notify_one();
                }
                return queued;
            }
            notified.await;
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a queue of plain values;
/// the data is still consistent, so keep going rather than cascade the panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl TaskPublisher for MemoryBroker {
    async fn publish_task(&self, message: &TaskMessage) -> Result<(), QueueError> {
        let queued = Queued {
            message: message.clone(),
            redelivered: false,
        };
        let mut ready = lock(&self.inner.ready);
        if self.inner.max_length.is_some_and(|max| ready.len() >= max) {
            return Err(QueueError::Full);
        }
        ready.push(queued, false);
        drop(ready);
        self.inner.available.notify_one();
        Ok(())
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        Ok(u64::try_from(self.depth()).ok())
    }
}

#[async_trait]
impl TaskConsumer for MemoryBroker {
    async fn consume_tasks(&self, prefetch: u16) -> Result<Deliveries, QueueError> {
        let permits = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        let inner = Arc::clone(&self.inner);
        let deliveries = stream::unfold((inner, permits), |(inner, permits)| async move {
            let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
            let queued = inner.dequeue().await;
            let settle = MemorySettle {
                inner: Arc::clone(&inner),
                message: Some(queued.message.clone()),
                _permit: permit,
            };
            let delivery = Delivery::new(Ok(queued.message), queued.redelivered, Box::new(settle));
            Some((Ok(delivery), (inner, permits)))
        });
        Ok(deliveries.boxed())
    }
}

/// Settles one in-memory delivery; holds a prefetch permit until then.
struct MemorySettle {
    inner: Arc<Inner>,
    /// `Some` until settled: dropping it unsettled requeues the message.
    message: Option<TaskMessage>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.message = None;
        Ok(())
    }

    async fn reject(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        if let Some(message) = self.message.take() {
            if requeue {
                self.inner.enqueue(
                    Queued {
                        message,
                        redelivered: true,
                    },
                    true,
                );
            } else {
                let mut dead = lock(&self.inner.dead);
                if dead.len() == DEAD_LETTERS_KEPT {
                    dead.pop_front();
                }
                dead.push_back(message);
            }
        }
        Ok(())
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        // Like a consumer whose channel closes: unsettled work goes back to the queue.
        if let Some(message) = self.message.take() {
            self.inner.enqueue(
                Queued {
                    message,
                    redelivered: true,
                },
                true,
            );
        }
    }
}

/// Its dead letters need no finalising: nothing to consume.
impl DeadLetterConsumer for MemoryBroker {}

#[async_trait]
impl UpdatePublisher for MemoryBroker {
    async fn publish_update(&self, reply_to: Option<&str>, task: &Task) -> Result<(), QueueError> {
        if let Some(reply_to) = reply_to {
            let mut queues = lock(&self.inner.reply_queues);
            // A reply to a gateway that is gone is dropped, as AMQP drops an unroutable reply.
            if queues
                .get(reply_to)
                .is_some_and(|tx| tx.send(task.clone()).is_err())
            {
                queues.remove(reply_to);
            }
        }
        // No subscriber is fine: events are best effort.
        let _ = self.inner.events.send(task.clone());
        Ok(())
    }
}

#[async_trait]
impl UpdateConsumer for MemoryBroker {
    async fn consume_updates(
        &self,
        gateway_id: &str,
        _listen_for_events: bool,
    ) -> Result<Updates, QueueError> {
        let reply_to = QueueNames::new("memory.").reply_queue(gateway_id);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.reply_queues).insert(reply_to.clone(), tx);

        let replies = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) });
        let events = stream::unfold(self.inner.events.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(task) => return Some((task, rx)),
                    // Fell behind: skip ahead; waiters re-read the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Updates {
            reply_to,
            stream: stream::select(replies, events).boxed(),
        })
    }
}
