//! The recovery sweeper: no task is stranded, and none stays past its bounds.
//!
//! Every gateway sweeps every `sweep_interval`:
//! - it claims (briefly, on the database's clock) tasks that need a message: PENDING tasks whose
//!   publish was never confirmed once their gateway's grace is over (it died between insert and
//!   publish), and RUNNING tasks whose attempt's lease ran out a lease ago (the worker and the
//!   message may both be gone); it republishes them with no row lock held across the broker's
//!   round trips, then records the confirms. Gateways sweeping at once claim disjoint tasks.
//! - it ends tasks past their deadline that no live attempt holds, as EXPIRED;
//! - it deletes finished tasks older than the retention period.

use std::{sync::Arc, time::Duration};

use dalc_domain::{Task, TaskId};
use dalc_queue::{TaskMessage, TaskPublisher};
use dalc_storage::{StorageError, TaskStore};
use dalc_telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Waiters;

/// Tasks claimed (and republished, confirms pipelined) per round trip.
const BATCH: u64 = 200;
/// Finished tasks deleted per statement, so retention never holds a long lock.
const DELETE_BATCH: u64 = 1000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub republished: usize,
    pub expired: usize,
    pub deleted: u64,
}

/// How a sweeper behaves.
#[derive(Debug, Clone, Copy)]
pub struct SweepPolicy {
    /// How long a claim keeps other sweepers off a task (also how long after a republish the
    /// task may be republished again).
    pub claim: Duration,
    /// Finished tasks older than this are deleted; `None` keeps them.
    pub retention: Option<Duration>,
}

/// Sweeps every `interval` until `shutdown`.
pub(crate) async fn run(
    store: TaskStore,
    publisher: Arc<dyn TaskPublisher>,
    waiters: Waiters,
    metrics: Arc<Metrics>,
    interval: Duration,
    policy: SweepPolicy,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match sweep(&store, publisher.as_ref(), policy).await {
            Ok((report, expired)) => {
                for task in expired {
                    metrics.task_finished(task.status.as_str());
                    waiters.deliver(task);
                }
                metrics.tasks_deleted.inc_by(report.deleted);
                if report != SweepReport::default() {
                    info!(
                        republished = report.republished,
                        expired = report.expired,
                        deleted = report.deleted,
                        "recovery sweep"
                    );
                }
            }
            Err(err) => warn!(error = %err, "recovery sweep failed; retrying next round"),
        }
    }
}

/// One sweep; for `dalc up` at start-up and for tests.
pub async fn sweep_once(
    store: &TaskStore,
    publisher: &dyn TaskPublisher,
    policy: SweepPolicy,
) -> Result<SweepReport, StorageError> {
    sweep(store, publisher, policy)
        .await
        .map(|(report, _)| report)
}

async fn sweep(
    store: &TaskStore,
    publisher: &dyn TaskPublisher,
    policy: SweepPolicy,
) -> Result<(SweepReport, Vec<Task>), StorageError> {
    let mut report = SweepReport::default();
    loop {
        let claimed = store.claim_for_sweep(BATCH, policy.claim).await?;
        let (confirmed, failed) = republish(publisher, &claimed).await;
        store.mark_published(&confirmed).await?;
        report.republished += confirmed.len();
        if failed || claimed.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            break;
        }
    }
    let expired = store.expire_overdue().await?;
    report.expired = expired.len();
    if let Some(retention) = policy.retention {
        // Housekeeping: a failure here must not keep the expired tasks from their waiters.
        match forget_older_than(store, retention).await {
            Ok(deleted) => report.deleted = deleted,
            Err(err) => warn!(error = %err, "deleting old tasks failed; retrying next round"),
        }
    }
    Ok((report, expired))
}

/// Deletes the tasks finished longer than `retention` ago, in short steps, and the workers
/// unseen that long (each run of a worker has its own id); returns the tasks deleted.
async fn forget_older_than(store: &TaskStore, retention: Duration) -> Result<u64, StorageError> {
    let mut deleted = 0;
    loop {
        let step = store.delete_finished(retention, DELETE_BATCH).await?;
        deleted += step;
        if step < DELETE_BATCH {
            break;
        }
    }
    store.forget_workers_unseen_for(retention).await?;
    Ok(deleted)
}

/// Publishes every claimed task at once (their confirms are pipelined on one channel); returns
/// the ids confirmed, and whether any publish failed (the broker is likely away: stop for now;
/// the claims run out and the next sweep retries).
async fn republish(publisher: &dyn TaskPublisher, tasks: &[Task]) -> (Vec<TaskId>, bool) {
    // No reply_to: the caller that waited is gone; waiters anywhere hear the status event, or
    // read the database.
    let messages: Vec<TaskMessage> = tasks
        .iter()
        .map(|task| TaskMessage::for_task(task, None))
        .collect();
    let publishes = messages
        .iter()
        .map(|message| publisher.publish_task(message));
    let results = futures::future::join_all(publishes).await;
    let mut confirmed = Vec::with_capacity(tasks.len());
    let mut failed = false;
    for (task, result) in tasks.iter().zip(results) {
        match result {
            Ok(()) => confirmed.push(task.id),
            Err(err) => {
                warn!(task_id = %task.id, status = %task.status, error = %err, "cannot republish; a later sweep retries");
                failed = true;
            }
        }
    }
    (confirmed, failed)
}
