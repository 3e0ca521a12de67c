//! The dead-letter consumer: every message the broker dead-letters is recorded (a log line and
//! `dalc_dead_letters_total{reason}`), its task is finalised by why it died, and it is acked, so
//! `dalc.tasks.dead` stays near empty and no task behind a dead letter stays open.

use std::{sync::Arc, time::Duration};

use dalc_domain::{Backoff, Outcome};
use dalc_queue::{DeadLetterConsumer, Delivery};
use dalc_storage::TaskStore;
use dalc_telemetry::Metrics;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Waiters;

/// Dead letters handled at once.
const PREFETCH: u16 = 32;

/// What a task whose message was dead-lettered for `reason` becomes. Only tasks nobody works on
/// are finalised (PENDING, or RUNNING with a lapsed lease): a live attempt keeps its task.
fn outcome_for(reason: &str) -> Outcome {
    match reason {
        "expired" => Outcome::expired_unstarted(),
        "delivery_limit" => Outcome::Failed {
            error: "gave up: delivered more often than the broker's delivery limit".into(),
        },
        "maxlen" => Outcome::Failed {
            error: "dropped by the broker: the request queue was full".into(),
        },
        other => Outcome::Failed {
            error: format!("dead-lettered by the broker ({other})"),
        },
    }
}

/// Consumes dead letters until `shutdown`, resubscribing with backoff after a broker fault.
pub(crate) async fn run(
    store: TaskStore,
    dead_letters: Arc<dyn DeadLetterConsumer>,
    waiters: Waiters,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::reconnect();
    while !shutdown.is_cancelled() {
        let mut letters = match dead_letters.consume_dead_letters(PREFETCH).await {
            Ok(letters) => letters,
            Err(err) => {
                let pause = backoff.next_delay();
                warn!(error = %err, retry_in = ?pause, "cannot consume dead letters");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = letters.next() => next,
            };
            match next {
                Some(Ok(letter)) => {
                    // Only a consumer that delivers has recovered (no hot resubscribe loop).
                    backoff.reset();
                    finalise(&store, &waiters, &metrics, letter).await;
                }
                _ => break,
            }
        }
    }
}

async fn finalise(store: &TaskStore, waiters: &Waiters, metrics: &Metrics, letter: Delivery) {
    let reason = letter
        .dead_letter_reason
        .clone()
        .unwrap_or_else(|| "unknown".to_owned());
    let message = match &letter.message {
        Ok(message) => message,
        Err(malformed) => {
            warn!(%reason, error = %malformed, "recorded a dead letter that is not a task");
            metrics.dead_letter(&reason);
            settle(letter, false).await;
            return;
        }
    };
    let id = message.task_id;
    match end_task(store, id, &reason).await {
        Ok(Some(task)) => {
            info!(task_id = %id, %reason, status = %task.status, "dead letter finalised its task");
            metrics.task_finished(task.status.as_str());
            waiters.deliver(task);
        }
        Ok(None) => info!(task_id = %id, %reason, "recorded a dead letter; its task stands"),
        Err(err) if err.is_unavailable() => {
            // Try again later: back to the dead-letter queue, after a pause so an outage is not
            // a hot loop.
            warn!(task_id = %id, error = %err, "cannot finalise a dead letter's task yet");
            tokio::time::sleep(Duration::from_secs(1)).await;
            settle(letter, true).await;
            return;
        }
        Err(err) => warn!(task_id = %id, error = %err, "cannot finalise a dead letter's task"),
    }
    metrics.dead_letter(&reason);
    settle(letter, false).await;
}

/// Ends the task behind a dead letter if nobody works on it: never started (PENDING), or its
/// attempt's lease lapsed (the attempt died and its requeued message then died too).
async fn end_task(
    store: &TaskStore,
    id: dalc_domain::TaskId,
    reason: &str,
) -> Result<Option<dalc_domain::Task>, dalc_storage::StorageError> {
    let outcome = outcome_for(reason);
    if let Some(task) = store.finish_unstarted(id, &outcome).await? {
        return Ok(Some(task));
    }
    let outcome = match outcome {
        Outcome::Expired { .. } => Outcome::expired_abandoned(),
        other => other,
    };
    store.finish_abandoned(id, &outcome).await
}

async fn settle(letter: Delivery, requeue: bool) {
    let settled = if requeue {
        letter.reject(true).await
    } else {
        letter.ack().await
    };
    if let Err(err) = settled {
        warn!(error = %err, "cannot settle a dead letter; the broker redelivers it");
    }
}
