//! The recovery sweeper: no task is stranded between its insert and its publish.
//!
//! A gateway that dies after storing a task and before the broker confirmed its publish leaves
//! a PENDING task that no worker will ever see. Every gateway sweeps periodically: it claims open
//! tasks whose publish was never confirmed and that are older than a grace period (locked
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, so gateways never republish the same task at once),
//! republishes them, and records the confirms. It also ends PENDING tasks whose deadline passed
//! (their message expired in the queue) as EXPIRED.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use dalc_queue::{TaskMessage, TaskPublisher};
use dalc_storage::{StorageError, TaskStore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Waiters;

/// Tasks republished per database round trip.
const BATCH: u64 = 200;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub republished: usize,
    pub expired: usize,
}

/// Sweeps every `interval` until `shutdown`.
pub(crate) async fn run(
    store: TaskStore,
    publisher: Arc<dyn TaskPublisher>,
    waiters: Waiters,
    interval: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match sweep(&store, publisher.as_ref(), grace).await {
            Ok((report, expired)) => {
                for task in expired {
                    waiters.deliver(task);
                }
                if report != SweepReport::default() {
                    info!(
                        republished = report.republished,
                        expired = report.expired,
                        "recovery sweep"
                    );
                }
            }
            Err(err) => warn!(error = %err, "recovery sweep failed; retrying next round"),
        }
    }
}

/// One sweep: republish what was never confirmed (older than `grace`), expire what is overdue.
pub async fn sweep_once(
    store: &TaskStore,
    publisher: &dyn TaskPublisher,
    grace: Duration,
) -> Result<SweepReport, StorageError> {
    sweep(store, publisher, grace)
        .await
        .map(|(report, _)| report)
}

async fn sweep(
    store: &TaskStore,
    publisher: &dyn TaskPublisher,
    grace: Duration,
) -> Result<(SweepReport, Vec<dalc_domain::Task>), StorageError> {
    let mut report = SweepReport::default();
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    loop {
        let batch = store.claim_unpublished(cutoff, BATCH).await?;
        let claimed = batch.tasks.len();
        let mut published = Vec::with_capacity(claimed);
        for task in &batch.tasks {
            // No reply_to: the caller that waited for it is gone; waiters anywhere hear the
            // status event, or read the database.
            match publisher
                .publish_task(&TaskMessage::for_task(task, None))
                .await
            {
                Ok(()) => published.push(task.id),
                Err(err) => {
                    warn!(task_id = %task.id, error = %err, "cannot republish; next sweep retries");
                    break;
                }
            }
        }
        let done = published.len();
        batch.finish(&published, Utc::now()).await?;
        report.republished += done;
        if done < claimed || claimed < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            break;
        }
    }
    let expired = store.expire_overdue(Utc::now()).await?;
    report.expired = expired.len();
    Ok((report, expired))
}
