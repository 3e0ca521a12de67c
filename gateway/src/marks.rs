//! Confirmed publishes, recorded in batches: one UPDATE for every confirm that arrived while the
//! previous one was being written (group commit), retried until it lands, off the call's path.
//!
//! A mark that never lands costs a duplicate message at worst (the sweeper republishes the task
//! after its grace, and workers run a task once whatever number of messages carry it), and a task
//! a worker starts is marked by the start itself.

use std::time::Duration;

use dalc_domain::{Backoff, TaskId};
use dalc_storage::TaskStore;
use tokio::sync::mpsc;
use tracing::warn;

/// Marks waiting to be written; past it, new ones are dropped (see the module's note).
const MAX_PENDING_MARKS: usize = 100_000;
/// Marks written per statement.
const BATCH: usize = 1000;

/// Where the gateway drops confirmed task ids.
#[derive(Debug, Clone)]
pub(crate) struct PublishMarks {
    confirmed: mpsc::Sender<TaskId>,
}

impl PublishMarks {
    /// Starts the writer; once every handle is dropped it writes what it holds and exits.
    pub(crate) fn start(store: TaskStore) -> Self {
        let (confirmed, receiver) = mpsc::channel(MAX_PENDING_MARKS);
        tokio::spawn(write_marks(store, receiver));
        PublishMarks { confirmed }
    }

    /// Records that the broker confirmed `id`'s publish.
    pub(crate) fn record(&self, id: TaskId) {
        if self.confirmed.try_send(id).is_err() {
            warn!(task_id = %id, "too many publish marks waiting; the sweeper may republish it");
        }
    }
}

async fn write_marks(store: TaskStore, mut receiver: mpsc::Receiver<TaskId>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // Retried until it lands: a lost mark would cost a needless republish.
        while let Err(err) = store.mark_published(&batch).await {
            let pause = backoff.next_delay();
            warn!(error = %err, retry_in = ?pause, marks = batch.len(), "cannot record publish marks");
            tokio::time::sleep(pause).await;
        }
        batch.clear();
        backoff.reset();
    }
}
