//! [`TaskStore`]: every read and write of task state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dalc_domain::{Task, TaskId, TaskStatus};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType},
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use tracing::instrument;

use crate::{
    StorageError,
    entity::{self, Column, Entity as Tasks},
    migration::Migrator,
};

/// How long to wait for a connection before calling the database unavailable. Short, so that a
/// client hears `UNAVAILABLE` promptly instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Any fixed number, the same in every dalc process: the PostgreSQL advisory lock that serialises
/// concurrent migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6461_6c63; // "dalc"

/// The result of trying to start an attempt at a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The task is RUNNING under this attempt; `task.attempts` is the attempt's number.
    Started(Task),
    /// The task was already terminal: it must not run again.
    AlreadyTerminal(Task),
    /// No such task (e.g. its row was never committed).
    Missing,
}

/// How an attempt (or a task that never ran) ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded { result: String },
    Failed { error: String },
    Expired { error: String },
}

impl Outcome {
    fn error(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { error } | Outcome::Expired { error } => Some(error),
        }
    }

    fn status(&self) -> TaskStatus {
        match self {
            Outcome::Succeeded { .. } => TaskStatus::Succeeded,
            Outcome::Failed { .. } => TaskStatus::Failed,
            Outcome::Expired { .. } => TaskStatus::Expired,
        }
    }
}

/// Open tasks claimed by the recovery sweeper, locked until [`UnpublishedBatch::finish`].
#[derive(Debug)]
pub struct UnpublishedBatch {
    transaction: DatabaseTransaction,
    pub tasks: Vec<Task>,
}

impl UnpublishedBatch {
    /// Records the confirmed republishes of `published` and releases the batch.
    pub async fn finish(self, published: &[TaskId], at: DateTime<Utc>) -> Result<(), StorageError> {
        if !published.is_empty() {
            Tasks::update_many()
                .col_expr(Column::PublishedAt, Expr::value(at))
                .filter(Column::Id.is_in(published.iter().map(TaskId::as_uuid)))
                .exec(&self.transaction)
                .await?;
        }
        self.transaction.commit().await?;
        Ok(())
    }
}

/// The repository over the `tasks` table. Cheap to clone: it shares one connection pool.
#[derive(Debug, Clone)]
pub struct TaskStore {
    db: DatabaseConnection,
}

impl TaskStore {
    /// Connects to `url`: `postgres://…` or `sqlite://path?mode=rwc` (or `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .connect_timeout(CONNECT_TIMEOUT)
            .acquire_timeout(CONNECT_TIMEOUT)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| {
                // WAL lets readers (GetTask) run while a worker writes; NORMAL sync is durable
                // across process crashes, which is what the embedded default promises.
                opts.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
            });
        let db = Database::connect(options).await?;
        Ok(TaskStore { db })
    }

    /// Applies pending migrations. Safe when several gateways and workers start at once: on
    /// PostgreSQL they take turns under an advisory lock, inside one transaction (DDL is
    /// transactional there); SQLite serialises writers by itself.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        if self.backend() != DatabaseBackend::Postgres {
            Migrator::up(&self.db, None).await?;
            return Ok(());
        }
        let transaction = self.db.begin().await?;
        transaction
            .execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
        Migrator::up(&transaction, None).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await?;
        Ok(())
    }

    #[instrument(skip_all, fields(task_id = %task.id))]
    pub async fn insert(&self, task: &Task) -> Result<(), StorageError> {
        let model: entity::ActiveModel = entity::Model::from_new_task(task).into();
        Tasks::insert(model)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        Tasks::find_by_id(id.as_uuid())
            .one(&self.db)
            .await?
            .map(entity::Model::into_task)
            .transpose()
    }

    /// Records that the broker confirmed the task's publish, so the sweeper leaves it alone.
    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn mark_published(&self, id: TaskId, at: DateTime<Utc>) -> Result<(), StorageError> {
        Tasks::update_many()
            .col_expr(Column::PublishedAt, Expr::value(at))
            .filter(Column::Id.eq(id.as_uuid()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Starts a new attempt: PENDING or RUNNING → RUNNING with `attempts + 1`, as one
    /// compare-and-set. RUNNING is accepted because a worker that died mid-task leaves it so,
    /// and the broker's redelivery is exactly the retry we want.
    #[instrument(skip_all, fields(task_id = %id, worker_id))]
    pub async fn start_attempt(
        &self,
        id: TaskId,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<StartOutcome, StorageError> {
        let updated = Tasks::update_many()
            .col_expr(Column::Status, Expr::value(TaskStatus::Running.as_str()))
            .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
            .col_expr(Column::WorkerId, Expr::value(worker_id))
            .col_expr(Column::StartedAt, Expr::value(now))
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(Column::Status.is_in(open_statuses()))
            .exec_with_returning(&self.db)
            .await?;
        if let Some(model) = updated.into_iter().next() {
            return Ok(StartOutcome::Started(model.into_task()?));
        }
        match self.get(id).await? {
            None => Ok(StartOutcome::Missing),
            Some(task) if task.is_terminal() => Ok(StartOutcome::AlreadyTerminal(task)),
            // The filter matched no open task, yet the task is open: it changed in between.
            Some(task) => Err(StorageError::Corrupt(format!(
                "task {} is {} but could not be started",
                task.id, task.status
            ))),
        }
    }

    /// Ends attempt number `attempt` with `outcome`, as one compare-and-set: it only succeeds if
    /// the task is still RUNNING under that same attempt. Returns the stored task when this call
    /// made the change, `None` when another attempt got there first (its result stands).
    #[instrument(skip_all, fields(task_id = %id, attempt, status = %outcome.status()))]
    pub async fn finish_attempt(
        &self,
        id: TaskId,
        attempt: u32,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StorageError> {
        self.set_terminal(id, outcome, now, |update| {
            update
                .filter(Column::Status.eq(TaskStatus::Running.as_str()))
                .filter(Column::Attempts.eq(i32::try_from(attempt).unwrap_or(i32::MAX)))
        })
        .await
    }

    /// Ends a task that no attempt will run (deadline passed, publish failed, gave up): any
    /// open state → `outcome`. Returns `None` when the task was already terminal.
    #[instrument(skip_all, fields(task_id = %id, status = %outcome.status()))]
    pub async fn finish_unstarted(
        &self,
        id: TaskId,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StorageError> {
        self.set_terminal(id, outcome, now, |update| {
            update.filter(Column::Status.is_in(open_statuses()))
        })
        .await
    }

    async fn set_terminal(
        &self,
        id: TaskId,
        outcome: &Outcome,
        now: DateTime<Utc>,
        guard: impl FnOnce(sea_orm::UpdateMany<Tasks>) -> sea_orm::UpdateMany<Tasks>,
    ) -> Result<Option<Task>, StorageError> {
        let (result, error) = match outcome {
            Outcome::Succeeded { result } => (Some(result.as_str()), None),
            Outcome::Failed { error } | Outcome::Expired { error } => (None, Some(error.as_str())),
        };
        let update = Tasks::update_many()
            .col_expr(Column::Status, Expr::value(outcome.status().as_str()))
            .col_expr(Column::Result, Expr::value(result))
            .col_expr(Column::Error, Expr::value(error))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .filter(Column::Id.eq(id.as_uuid()));
        let updated = guard(update).exec_with_returning(&self.db).await?;
        updated
            .into_iter()
            .next()
            .map(entity::Model::into_task)
            .transpose()
    }

    /// Locks up to `limit` open tasks whose publish was never confirmed and that were created
    /// before `created_before` (the grace period), for the recovery sweeper to republish. On
    /// PostgreSQL the rows are locked `FOR UPDATE SKIP LOCKED`, so several gateways can sweep at
    /// once without republishing the same task twice; the lock holds until the batch is done.
    pub async fn claim_unpublished(
        &self,
        created_before: DateTime<Utc>,
        limit: u64,
    ) -> Result<UnpublishedBatch, StorageError> {
        let transaction = self.db.begin().await?;
        let models = Tasks::find()
            .filter(Column::Status.is_in(open_statuses()))
            .filter(Column::PublishedAt.is_null())
            .filter(Column::CreatedAt.lt(created_before))
            .order_by_asc(Column::CreatedAt)
            .limit(limit)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .all(&transaction)
            .await?;
        let tasks = models
            .into_iter()
            .map(entity::Model::into_task)
            .collect::<Result<_, _>>()?;
        Ok(UnpublishedBatch { transaction, tasks })
    }

    /// Ends every PENDING task whose deadline passed before `now` as EXPIRED: its message
    /// expired in the queue (or was never delivered), so no worker will see it. Returns them.
    pub async fn expire_overdue(&self, now: DateTime<Utc>) -> Result<Vec<Task>, StorageError> {
        let expired = Outcome::Expired {
            error: "the task's deadline passed before a worker could start it".into(),
        };
        let models = Tasks::update_many()
            .col_expr(Column::Status, Expr::value(expired.status().as_str()))
            .col_expr(Column::Error, Expr::value(expired.error()))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .filter(Column::Status.eq(TaskStatus::Pending.as_str()))
            .filter(Column::Deadline.lt(now))
            .exec_with_returning(&self.db)
            .await?;
        models.into_iter().map(entity::Model::into_task).collect()
    }

    /// Forgets that open tasks were ever published, so the sweeper queues them again. For an
    /// in-process queue after a restart: whatever it held died with the process.
    pub async fn forget_publishes_of_open_tasks(&self) -> Result<u64, StorageError> {
        let result = Tasks::update_many()
            .col_expr(
                Column::PublishedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(Column::Status.is_in(open_statuses()))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// How many tasks are in `status`; for health reports, tests and operators.
    pub async fn count_by_status(&self, status: TaskStatus) -> Result<u64, StorageError> {
        Ok(Tasks::find()
            .filter(Column::Status.eq(status.as_str()))
            .count(&self.db)
            .await?)
    }

    /// Runs a raw statement; for tests and operational tooling.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<(), StorageError> {
        self.db.execute_unprepared(sql).await?;
        Ok(())
    }
}

fn open_statuses() -> [&'static str; 2] {
    [TaskStatus::Pending.as_str(), TaskStatus::Running.as_str()]
}
