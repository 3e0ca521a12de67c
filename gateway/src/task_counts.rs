//! A tenant's tasks by status, for GetStats, without counting a million rows per call.
//!
//! Open tasks (PENDING, RUNNING) are counted each time through the status index: there are few.
//! A terminal task never changes again, so terminal counts only grow: each tenant's counts of
//! tasks that finished before a watermark are kept here, and each call counts only the tasks
//! that finished since (through the `finished_at` index), then moves the watermark up to a
//! little before the database's clock now. The one full count per tenant happens in the
//! background at start-up for the tenants the gateway knows of, and again now and then, so
//! retention's deletions are forgotten too.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use dalc_domain::TaskStatus;
use dalc_storage::{StorageError, TaskStore};
use tokio::time::Instant;

/// How far behind the database's clock the watermark stays at least; and at least a statement
/// timeout, so that a write still in flight does not finish a task below it. (A transaction
/// that takes longer than that to commit after its last statement is counted at the next
/// recount.) Short, because every call counts the tasks that finished in this window.
const MIN_SETTLE: Duration = Duration::from_secs(10);

fn settle(store: &TaskStore) -> Duration {
    MIN_SETTLE.max(store.statement_timeout())
}

/// How long settled counts are trusted before they are counted afresh (retention deletes old
/// finished tasks; the counts here would otherwise keep them).
const RECOUNT_EVERY: Duration = Duration::from_secs(600);

/// Settled terminal counts of one tenant.
#[derive(Debug, Clone)]
struct Settled {
    watermark: DateTime<Utc>,
    counts: BTreeMap<TaskStatus, u64>,
    counted_at: Instant,
}

/// One tenant's settled counts (none until first counted), updated by one caller at a time.
type Slot = Arc<tokio::sync::Mutex<Option<Settled>>>;

/// Every tenant's settled counts; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskCounts {
    tenants: Arc<Mutex<HashMap<String, Slot>>>,
}

impl TaskCounts {
    /// `tenant`'s tasks by status. Open and finished tasks are read one after the other, so a
    /// task that ends in between may be counted in both or neither: exact once it settles.
    pub(crate) async fn of(
        &self,
        store: &TaskStore,
        tenant: &str,
    ) -> Result<BTreeMap<TaskStatus, u64>, StorageError> {
        let slot = self.slot(tenant);
        // One caller per tenant at a time moves the watermark; the others wait for it rather
        // than count the same rows again.
        let mut settled = slot.lock().await;
        let since = settled.as_ref().map(|settled| settled.watermark);
        let (open, finished) = tokio::join!(
            store.count_open_for(tenant),
            store.count_finished_since(tenant, since, settle(store))
        );
        let (open, finished) = (open?, finished?);
        let mut base = settled.take().unwrap_or_else(|| Settled {
            watermark: finished.watermark,
            counts: BTreeMap::new(),
            counted_at: Instant::now(),
        });
        let mut now = base.counts.clone();
        for (status, (newly_settled, all)) in finished.counts {
            *base.counts.entry(status).or_default() += newly_settled;
            *now.entry(status).or_default() += all;
        }
        base.watermark = finished.watermark;
        for (status, count) in open {
            *now.entry(status).or_default() += count;
        }
        if base.counted_at.elapsed() >= RECOUNT_EVERY {
            // Once: the calls until the recount lands go on from this base.
            base.counted_at = Instant::now();
            self.recount_later(store, tenant);
        }
        *settled = Some(base);
        now.retain(|_, count| *count > 0);
        Ok(now)
    }

    /// Counts `tenant`'s finished tasks afresh in the background (forgetting those retention
    /// deleted), then puts that count in place of the incremental one.
    fn recount_later(&self, store: &TaskStore, tenant: &str) {
        let (slot, store, tenant) = (self.slot(tenant), store.clone(), tenant.to_owned());
        tokio::spawn(async move {
            match store
                .count_finished_since(&tenant, None, settle(&store))
                .await
            {
                Ok(finished) => {
                    let counts = finished
                        .counts
                        .into_iter()
                        .map(|(status, (settled, _))| (status, settled))
                        .collect();
                    *slot.lock().await = Some(Settled {
                        watermark: finished.watermark,
                        counts,
                        counted_at: Instant::now(),
                    });
                }
                Err(err) => tracing::warn!(error = %err, "cannot recount finished tasks"),
            }
        });
    }

    fn slot(&self, tenant: &str) -> Slot {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }
}
