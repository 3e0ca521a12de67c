//! Each worker's running figures (tasks ended by outcome, run times), stored by the worker
//! itself now and then: statistics read from here cost the same with a million tasks stored as
//! with none, and they outlive the retention of the tasks they count.

use chrono::{DateTime, Utc};
use dalc_domain::{RunTimes, TaskStatus};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, OnConflict, Query},
};

use crate::{
    StorageError, TaskStore,
    entity::worker::{self, Column, Entity as Workers},
};

/// What one worker has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFigures {
    pub succeeded: u64,
    pub failed: u64,
    /// Every task it ended, whatever the outcome.
    pub total: u64,
    pub run_times: RunTimes,
}

impl WorkerFigures {
    /// Counts a task the worker ended; `run_time` from its attempt's start, if it started one.
    pub fn record(&mut self, status: TaskStatus, run_time: Option<std::time::Duration>) {
        self.total += 1;
        match status {
            TaskStatus::Succeeded => self.succeeded += 1,
            TaskStatus::Failed => self.failed += 1,
            _ => {}
        }
        if let Some(run_time) = run_time {
            self.run_times.record(run_time);
        }
    }
}

/// A worker's figures as last stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub figures: WorkerFigures,
    pub last_seen: DateTime<Utc>,
}

impl TaskStore {
    /// Stores `worker_id`'s figures (replacing what it stored before: they are cumulative) and
    /// marks it seen now.
    pub async fn record_worker(
        &self,
        worker_id: &str,
        figures: &WorkerFigures,
    ) -> Result<(), StorageError> {
        let run_times = serde_json::to_string(&figures.run_times)
            .map_err(|err| StorageError::Corrupt(format!("cannot encode run times: {err}")))?;
        let count = |n: u64| Expr::value(i64::try_from(n).unwrap_or(i64::MAX));
        let mut upsert = Query::insert();
        upsert
            .into_table(Workers)
            .columns([
                Column::WorkerId,
                Column::Succeeded,
                Column::Failed,
                Column::Total,
                Column::RunTimes,
                Column::LastSeen,
            ])
            .values([
                Expr::value(worker_id),
                count(figures.succeeded),
                count(figures.failed),
                count(figures.total),
                Expr::value(run_times),
                Expr::value(Utc::now()),
            ])
            .map_err(|err| StorageError::Corrupt(format!("cannot build an upsert: {err}")))?
            .on_conflict(
                OnConflict::column(Column::WorkerId)
                    .update_columns([
                        Column::Succeeded,
                        Column::Failed,
                        Column::Total,
                        Column::RunTimes,
                        Column::LastSeen,
                    ])
                    .to_owned(),
            );
        self.db.execute(&upsert).await?;
        Ok(())
    }

    /// Deletes the figures of workers that have not reported for `horizon` (they stopped).
    pub async fn forget_workers_unseen_for(
        &self,
        horizon: std::time::Duration,
    ) -> Result<u64, StorageError> {
        let horizon = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX);
        let Some(cutoff) = Utc::now().checked_sub_signed(horizon) else {
            return Ok(0);
        };
        let deleted = Workers::delete_many()
            .filter(Column::LastSeen.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }

    /// Every worker's figures, by worker id.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        let rows = Workers::find()
            .order_by_asc(Column::WorkerId)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(into_record).collect())
    }
}

/// A stored row as figures. Run times that do not decode (a row written by another version)
/// read as none: one worker's row must not fail every GetStats.
fn into_record(row: worker::Model) -> WorkerRecord {
    let run_times = serde_json::from_str(&row.run_times).unwrap_or_else(|err| {
        tracing::warn!(worker_id = %row.worker_id, error = %err, "unreadable run times; counted as none");
        Default::default()
    });
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    WorkerRecord {
        figures: WorkerFigures {
            succeeded: count(row.succeeded),
            failed: count(row.failed),
            total: count(row.total),
            run_times,
        },
        worker_id: row.worker_id,
        last_seen: row.last_seen,
    }
}
