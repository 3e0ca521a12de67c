//! Whether this gateway receives every task's status events.
//!
//! Replies reach the gateway that accepted a task; only a caller here waiting for a task some
//! other gateway accepted (a long-polling GetTask) needs the status events. So the events queue
//! is bound to the events exchange only while such a caller waits, and unbound a while after
//! the last one left: otherwise the broker drops every event at once instead of queueing and
//! delivering it to gateways that throw it away.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dalc_queue::{QueueError, UpdateConsumer, Updates};
use tokio::sync::Mutex;
use tracing::warn;

/// How long the binding outlives its last listener: long polls come in bursts, and binding is a
/// broker round trip.
const UNBIND_AFTER: Duration = Duration::from_secs(30);

/// The events binding of one gateway, shared by its calls.
pub(crate) struct Events {
    updates: Arc<dyn UpdateConsumer>,
    gateway_id: String,
    listeners: AtomicUsize,
    /// Whether an unbinding is due: one timer at a time, however often the listeners come and
    /// go (long polls at a high rate would otherwise leave thousands of timers asleep).
    unbinding: AtomicBool,
    /// Whether the events queue is bound; changed only under this lock.
    bound: Mutex<bool>,
}

impl Events {
    pub(crate) fn new(updates: Arc<dyn UpdateConsumer>, gateway_id: String) -> Arc<Self> {
        Arc::new(Events {
            updates,
            gateway_id,
            listeners: AtomicUsize::new(0),
            unbinding: AtomicBool::new(false),
            bound: Mutex::new(false),
        })
    }

    /// Makes sure events flow here while the returned hold lives. Binding completes before this
    /// returns, so an event published after it is not missed; if the broker refuses, the
    /// caller still ends by re-reading the database.
    pub(crate) async fn listen(self: &Arc<Self>) -> Listening {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        let hold = Listening(self.clone());
        let mut bound = self.bound.lock().await;
        if !*bound {
            match self.updates.listen_for_events(&self.gateway_id, true).await {
                Ok(()) => *bound = true,
                Err(err) => warn!(error = %err, "cannot bind the events queue; polling instead"),
            }
        }
        hold
    }

    fn wanted(&self) -> bool {
        self.listeners.load(Ordering::SeqCst) > 0
    }

    /// Subscribes to this gateway's updates again (after the stream ended), its events queue
    /// bound if anyone listens. Under the binding's lock, so that no listener arriving and no
    /// unbinding meanwhile can leave the flag and the broker disagreeing.
    pub(crate) async fn resubscribe(&self) -> Result<Updates, QueueError> {
        let mut bound = self.bound.lock().await;
        let listen = self.wanted();
        let updates = self
            .updates
            .consume_updates(&self.gateway_id, listen)
            .await?;
        *bound = listen;
        Ok(updates)
    }

    /// Unbinds [`UNBIND_AFTER`] from now if nobody listens then.
    async fn unbind_if_idle(timer: UnbindTimer) {
        tokio::time::sleep(UNBIND_AFTER).await;
        let events = timer.0.clone();
        // From here on, the next listener to leave sets a timer of its own.
        drop(timer);
        let mut bound = events.bound.lock().await;
        if *bound && !events.wanted() {
            match events
                .updates
                .listen_for_events(&events.gateway_id, false)
                .await
            {
                Ok(()) => *bound = false,
                Err(err) => warn!(error = %err, "cannot unbind the events queue"),
            }
        }
    }
}

/// The one pending unbind timer's hold on [`Events::unbinding`], given back when the timer
/// fires, or when it never will (its runtime shutting down).
struct UnbindTimer(Arc<Events>);

impl Drop for UnbindTimer {
    fn drop(&mut self) {
        self.0.unbinding.store(false, Ordering::SeqCst);
    }
}

/// One caller's need for events; the last one to go unbinds (after [`UNBIND_AFTER`]).
pub(crate) struct Listening(Arc<Events>);

impl Drop for Listening {
    fn drop(&mut self) {
        if self.0.listeners.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.0.unbinding.swap(true, Ordering::SeqCst)
        {
            runtime.spawn(Events::unbind_if_idle(UnbindTimer(self.0.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use dalc_queue::memory::MemoryBroker;
    use tokio::runtime::Handle;

    use super::*;

    fn alive_tasks() -> usize {
        Handle::current().metrics().num_alive_tasks()
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_coming_and_going_set_one_unbind_timer_at_a_time() {
        let events = Events::new(Arc::new(MemoryBroker::new()), "gateway".into());
        let before = alive_tasks();
        for _ in 0..1000 {
            drop(events.listen().await);
        }
        assert_eq!(alive_tasks(), before + 1, "one timer for 1,000 leaves");
        tokio::time::sleep(UNBIND_AFTER + Duration::from_secs(1)).await;
        assert_eq!(alive_tasks(), before, "the timer ended");
        drop(events.listen().await);
        assert_eq!(alive_tasks(), before + 1, "the next leave sets a new one");
    }
}
