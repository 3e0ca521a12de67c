//! The `tasks` table as a SeaORM entity, and its translation to and from [`dalc_domain::Task`].

use chrono::{DateTime, Utc};
use dalc_domain::{Priority, Task, TaskStatus, task_instant};
use sea_orm::entity::prelude::*;

use crate::StorageError;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub expression: String,
    /// One of [`TaskStatus::as_str`]: text, so the table reads well in `psql` and `sqlite3`.
    pub status: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub result: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub attempts: i32,
    pub deadline: Option<DateTime<Utc>>,
    /// When the broker confirmed the task's publish; NULL means it may never have reached the
    /// queue, which is what the recovery sweeper looks for.
    pub published_at: Option<DateTime<Utc>>,
    /// RUNNING: until when the current attempt owns the task (the database's clock). Only a
    /// new attempt after this instant may take the task over.
    pub lease_until: Option<DateTime<Utc>>,
    /// No recovery sweeper looks at the task before this instant (the database's clock): the
    /// accepting gateway's grace to confirm its publish, a sweeper's claim, or a running
    /// attempt's lease plus a margin.
    pub sweep_after: Option<DateTime<Utc>>,
    /// Who submitted the task ('' without API keys).
    pub tenant: String,
    pub idempotency_key: Option<String>,
    /// 0-9, higher first.
    pub priority: i16,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    pub(crate) fn into_task(self) -> Result<Task, StorageError> {
        let status: TaskStatus = self
            .status
            .parse()
            .map_err(|e| StorageError::Corrupt(format!("task {}: {e}", self.id)))?;
        Ok(Task {
            id: self.id.into(),
            expression: self.expression,
            status,
            result: self.result,
            error: self.error,
            // Already to the microsecond since `Task::new` made it (and exact as stored: page
            // cursors are made from it); the attempt's instants come from SQLite's clock finer.
            created_at: self.created_at,
            started_at: self.started_at.map(task_instant),
            finished_at: self.finished_at.map(task_instant),
            worker_id: self.worker_id,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            deadline: self.deadline,
            tenant: self.tenant,
            priority: u32::try_from(self.priority)
                .ok()
                .and_then(Priority::new)
                .unwrap_or_default(),
            idempotency_key: self.idempotency_key,
        })
    }
}

/// The `workers` table: each worker's running figures, as the worker last stored them.
pub mod worker {
    use chrono::{DateTime, Utc};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "workers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: String,
        pub succeeded: i64,
        pub failed: i64,
        pub total: i64,
        /// [`dalc_domain::RunTimes`] as JSON.
        #[sea_orm(column_type = "Text")]
        pub run_times: String,
        pub last_seen: DateTime<Utc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
