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
        atomic::{AtomicUsize, Ordering},
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
    /// Whether the events queue is bound; changed only under this lock.
    bound: Mutex<bool>,
}

impl Events {
    pub(crate) fn new(updates: Arc<dyn UpdateConsumer>, gateway_id: String) -> Arc<Self> {
        Arc::new(Events {
            updates,
            gateway_id,
            listeners: AtomicUsize::new(0),
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

    async fn unbind_if_idle(&self) {
        tokio::time::sleep(UNBIND_AFTER).await;
        let mut bound = self.bound.lock().await;
        if *bound && !self.wanted() {
            match self
                .updates
                .listen_for_events(&self.gateway_id, false)
                .await
            {
                Ok(()) => *bound = false,
                Err(err) => warn!(error = %err, "cannot unbind the events queue"),
            }
        }
    }
}

/// One caller's need for events; the last one to go unbinds (after [`UNBIND_AFTER`]).
pub(crate) struct Listening(Arc<Events>);

impl Drop for Listening {
    fn drop(&mut self) {
        if self.0.listeners.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let events = self.0.clone();
            runtime.spawn(async move { events.unbind_if_idle().await });
        }
    }
}
