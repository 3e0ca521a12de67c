//! Confirmed publishes, recorded in batches: one UPDATE for every confirm of a short while
//! (group commit), retried until it lands, off the call's path.
//!
//! A task a worker starts is marked by the start itself, and most tasks start within
//! milliseconds: so a mark waits a little (a quarter of the sweep grace, at most 1 s) and then
//! touches only the tasks still PENDING, usually none, which costs the database lookups rather
//! than row writes. A mark that never lands costs a duplicate message at worst (the sweeper
//! republishes the task after its grace, and workers run a task once whatever number of messages
//! carry it).

use std::time::Duration;

use dalc_domain::{Backoff, TaskId};
use dalc_storage::TaskStore;
use tokio::{sync::mpsc, time::Instant};
use tracing::warn;

/// Marks waiting to be written; past it, new ones are dropped (see the module's note).
const MAX_PENDING_MARKS: usize = 100_000;
/// Marks written per statement.
const BATCH: usize = 1000;
/// The longest a mark waits before it is written.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Where the gateway drops confirmed task ids.
#[derive(Debug, Clone)]
pub(crate) struct PublishMarks {
    confirmed: mpsc::Sender<(TaskId, Instant)>,
}

impl PublishMarks {
    /// Starts the writer; once every handle is dropped it writes what it holds and exits.
    /// `sweep_grace` is how long a sweeper leaves an unmarked task alone.
    pub(crate) fn start(store: TaskStore, sweep_grace: Duration) -> Self {
        let (confirmed, receiver) = mpsc::channel(MAX_PENDING_MARKS);
        let delay = (sweep_grace / 4).min(MAX_DELAY);
        tokio::spawn(write_marks(store, receiver, delay));
        PublishMarks { confirmed }
    }

    /// Records that the broker confirmed `id`'s publish.
    pub(crate) fn record(&self, id: TaskId) {
        if self.confirmed.try_send((id, Instant::now())).is_err() {
            warn!(task_id = %id, "too many publish marks waiting; the sweeper may republish it");
        }
    }
}

async fn write_marks(
    store: TaskStore,
    mut receiver: mpsc::Receiver<(TaskId, Instant)>,
    delay: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // Give the workers time to start (and so mark) the tasks first.
        if let Some((_, confirmed_at)) = batch.first() {
            tokio::time::sleep_until(*confirmed_at + delay).await;
        }
        let ids: Vec<TaskId> = batch.drain(..).map(|(id, _)| id).collect();
        // Retried until it lands: a lost mark would cost a needless republish.
        while let Err(err) = store.mark_published(&ids).await {
            let pause = backoff.next_delay();
            warn!(error = %err, retry_in = ?pause, marks = ids.len(), "cannot record publish marks");
            tokio::time::sleep(pause).await;
        }
        backoff.reset();
    }
}
