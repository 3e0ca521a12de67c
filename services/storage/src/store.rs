//! [`TaskStore`]: every read and write of task state.
//!
//! Every state change is one compare-and-set UPDATE whose filter is the state machine's
//! ([`TaskStatus::sources_of`]) plus, where it matters, the lease: two writers can never both
//! move a task, and a write the state machine forbids matches no row. Every instant that decides
//! who may act (leases, sweep times, retention) is taken from the database's clock, so processes
//! whose clocks disagree still agree on who owns a task.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dalc_domain::{Outcome, Task, TaskId, TaskStatus};
use sea_orm::{
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseBackend,
    DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait,
    UpdateMany,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query, SimpleExpr},
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use tracing::{Instrument, instrument};

use crate::{
    StorageError,
    checkpoint::{self, Checkpoints},
    entity::{self, Column, Entity as Tasks},
    group::{GroupCommit, WriteBatch},
    held::{Conn, HeldConnection, TEST_IF_IDLE_FOR},
    migration::Migrator,
    pg, sqlite,
};

/// Connection settings. [`StoreOptions::default`] holds the documented defaults.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long to wait for a connection (new or from the pool) before calling the database
    /// unavailable. Short, so that a client hears `UNAVAILABLE` promptly instead of hanging.
    pub connect_timeout: Duration,
    /// PostgreSQL cancels any statement that runs longer (SQLite waits this long for a lock).
    pub statement_timeout: Duration,
    /// Connections in the PostgreSQL pool: enough for the group-commit writers (each of the
    /// five kinds keeps one once used: see `held`), the other reads and the sweeper. (A SQLite
    /// database gets one: see `connect_with`.)
    pub max_connections: u32,
}

impl StoreOptions {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Group-commit writers per kind of write. One: whatever arrives while a batch is written forms
/// the next, so batches are as large as the load makes them. (Two writers, each taking half, cost
/// PostgreSQL a third more CPU per task at 64 calls in flight, and gave 12 % less throughput.)
const BATCH_WRITERS: usize = 1;
/// The most rows one group-committed statement (or transaction) writes.
const MAX_BATCH: usize = 256;
/// The most rows one statement of [`TaskStore::insert_all`] inserts.
const INSERT_CHUNK: usize = 1000;
/// The most rows one sweeper statement expires, so a large backlog is ended in short steps.
const EXPIRE_BATCH: u64 = 1000;
/// The longest offset from the database's clock any lease, grace or retention may take.
pub(crate) const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// A RUNNING task the sweeper republished is left alone this many claims long: its new message
/// may wait behind a backlog before a worker takes it over.
const RUNNING_CLAIM_FACTOR: u32 = 6;

/// A new task to store, and the grace its gateway has to confirm the publish.
type InsertItem = (Task, Duration);

/// An attempt to start: the task, the worker and its lease.
#[derive(Debug, Clone)]
struct StartItem {
    id: TaskId,
    worker_id: Arc<str>,
    lease: Duration,
    max_attempts: u32,
}

/// An attempt that ended.
type FinishItem = (TaskId, u32, Outcome);

/// A quick attempt: a PENDING task a worker started and ended at once.
#[derive(Debug, Clone)]
pub(crate) struct QuickItem {
    pub(crate) id: TaskId,
    pub(crate) worker_id: Arc<str>,
    /// What the worker evaluated: the write matches only a task with this very expression.
    pub(crate) expression: String,
    pub(crate) outcome: Outcome,
    /// How long the evaluation took: the attempt is stored as started this long before it
    /// ended, so run times read true (a write's instant for both would make them all zero).
    pub(crate) ran_for: Duration,
}

/// The group-commit queues of the task path's writes, and of calls' reads.
#[derive(Debug)]
struct Batches {
    inserts: GroupCommit<InsertItem, ()>,
    starts: GroupCommit<StartItem, Option<Task>>,
    finishes: GroupCommit<FinishItem, Option<Task>>,
    quick_attempts: GroupCommit<QuickItem, Option<Task>>,
    reads: GroupCommit<TaskId, Option<Task>>,
}

impl Batches {
    /// `direct` writes each batch (it has no batches of its own).
    fn start(direct: &TaskStore) -> Self {
        let store = direct.keeping_a_connection();
        let inserts: WriteBatch<InsertItem, ()> = Arc::new(move |items| {
            let store = store.clone();
            Box::pin(async move { store.insert_batch(items).await })
        });
        let store = direct.keeping_a_connection();
        let starts: WriteBatch<StartItem, Option<Task>> = Arc::new(move |items| {
            let store = store.clone();
            Box::pin(async move { store.start_batch(items).await })
        });
        let store = direct.keeping_a_connection();
        let finishes: WriteBatch<FinishItem, Option<Task>> = Arc::new(move |items| {
            let store = store.clone();
            Box::pin(async move { store.finish_batch(items).await })
        });
        let store = direct.keeping_a_connection();
        let quick_attempts: WriteBatch<QuickItem, Option<Task>> = Arc::new(move |items| {
            let store = store.clone();
            Box::pin(async move { store.quick_attempt_batch(items).await })
        });
        let store = direct.keeping_a_connection();
        let reads: WriteBatch<TaskId, Option<Task>> = Arc::new(move |ids| {
            let store = store.clone();
            Box::pin(async move { store.read_batch(ids).await })
        });
        Batches {
            inserts: GroupCommit::start(BATCH_WRITERS, MAX_BATCH, inserts),
            starts: GroupCommit::start(BATCH_WRITERS, MAX_BATCH, starts),
            finishes: GroupCommit::start(BATCH_WRITERS, MAX_BATCH, finishes),
            quick_attempts: GroupCommit::start(BATCH_WRITERS, MAX_BATCH, quick_attempts),
            reads: GroupCommit::start(BATCH_WRITERS, MAX_BATCH, reads),
        }
    }
}

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
    /// Another attempt holds a live lease on the task: it must not run twice at once.
    Busy(Task),
    /// The task's attempts had run out (each ended without a result): it is now FAILED, given
    /// up on by this call, and its message belongs with the dead letters.
    GaveUp(Task),
    /// No such task (e.g. its row was never committed).
    Missing,
}

/// The repository over the `tasks` table. Cheap to clone: it shares one connection pool and
/// one set of group-commit queues.
#[derive(Debug, Clone)]
pub struct TaskStore {
    pub(crate) db: DatabaseConnection,
    /// Group commit for the task path's writes and re-reads; `None` in the writers' own
    /// handle. (Where a method goes to the database without it, that future is boxed: the
    /// batched way is what every call takes, and its state is what thousands of calls in
    /// flight hold.)
    batches: Option<Arc<Batches>>,
    /// A PostgreSQL group-commit writer's own connection (see `held`), for the statements of
    /// its batches; `None` elsewhere, where statements take a pooled connection.
    held: Option<Arc<HeldConnection>>,
    /// The longest any statement (so any write) may take.
    statement_timeout: Duration,
    /// SQLite on a file: the task that checkpoints its write-ahead log. Only held: it stops
    /// once the last handle on the store is gone.
    _checkpointer: Option<Arc<AbortOnDrop>>,
}

/// A task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How every SQLite connection is opened; `busy_timeout`: how long a statement waits for a lock
/// another connection holds.
pub(crate) fn sqlite_connection(
    opts: SqliteConnectOptions,
    busy_timeout: Duration,
) -> SqliteConnectOptions {
    // WAL lets other processes read while this one writes; NORMAL sync is durable across
    // process crashes, which is what the embedded default promises.
    opts.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(busy_timeout)
        // Checkpoints are copied on a connection of their own (`checkpoint`): on the serving
        // one, each would hold up every statement of the process while it copies and syncs.
        .pragma("wal_autocheckpoint", "0")
        // The log's file is reused from its start rather than shrunk; past a spike that grew
        // it, it is cut back to this size (64 MiB) when it starts over.
        .pragma("journal_size_limit", "67108864")
}

/// A SQLite database on a file: it keeps a write-ahead log (an in-memory one has none).
fn has_write_ahead_log(url: &str) -> bool {
    url.starts_with("sqlite:") && !url.contains(":memory:") && !url.contains("mode=memory")
}

impl TaskStore {
    /// Connects to `url` (`postgres://…` or `sqlite://path?mode=rwc`, or `sqlite::memory:`)
    /// with the default [`StoreOptions`].
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Self, StorageError> {
        let statement_timeout_ms = options.statement_timeout.as_millis().to_string();
        let sqlite_busy_timeout = options.statement_timeout;
        let mut connect = ConnectOptions::new(url.to_owned());
        connect
            .max_connections(options.max_connections)
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            // A connection is checked (a round trip) only after a second unused, when the
            // server or a proxy may have dropped it: not before every statement of a busy pool.
            .test_before_acquire_if_idle_for(TEST_IF_IDLE_FOR)
            .sqlx_logging(false)
            .map_sqlx_postgres_opts(move |opts| {
                opts.options([
                    // A query stuck behind a lock or a sick server must not hold a caller
                    // forever.
                    ("statement_timeout", statement_timeout_ms.as_str()),
                    // Every statement here finds its rows through an index. A connection keeps
                    // the plans of its prepared statements, and one planned while the table was
                    // small (or not yet analyzed) may scan the whole table; once it holds
                    // millions of rows, that plan would make each write scan them all.
                    ("enable_seqscan", "off"),
                    // And plans are made once per connection, not at every execution: a
                    // one-row attempt end spent more time (0.15 ms) being planned than run.
                    ("plan_cache_mode", "force_generic_plan"),
                    // Every statement here touches a few rows, where compiling a plan to
                    // machine code never pays. And with sequential scans off, a statement on
                    // a table with no index to use (the small `workers` table) is costed in
                    // the billions, so PostgreSQL compiled it at every execution: 200 ms of
                    // CPU for a one-row delete.
                    ("jit", "off"),
                ])
            })
            .map_sqlx_sqlite_opts(move |opts| sqlite_connection(opts, sqlite_busy_timeout));
        if url.starts_with("sqlite:") {
            // SQLite takes one writer at a time: connections that find its lock taken back
            // off in its busy handler (sleeps of 1 ms, then 2, 5, 10…), and each drops its page
            // cache whenever another wrote. So a process serves SQLite through one connection,
            // for good (an in-memory database lives as long as it), and its statements queue
            // for it in order, each waiting as long as it would have waited for the lock (and
            // at least as long as connecting may take: the pool opens the connection within
            // that wait). The checkpointer's connection (`checkpoint`) only reads and copies,
            // and never takes the write lock.
            connect
                .max_connections(1)
                .min_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(sqlite_busy_timeout.max(options.connect_timeout));
        }
        let db = Database::connect(connect.clone()).await?;
        let checkpointer = if has_write_ahead_log(url) {
            let own = Database::connect(connect).await?;
            let run = checkpoint::run(own, db.clone(), Checkpoints::DEFAULT);
            Some(Arc::new(AbortOnDrop(tokio::spawn(run))))
        } else {
            None
        };
        let direct = TaskStore {
            db,
            batches: None,
            held: None,
            statement_timeout: options.statement_timeout,
            _checkpointer: None,
        };
        let batches = Arc::new(Batches::start(&direct));
        Ok(TaskStore {
            batches: Some(batches),
            _checkpointer: checkpointer,
            ..direct
        })
    }

    /// A handle for one group-commit writer: on PostgreSQL its statements go to a connection
    /// of its own (see `held`); a SQLite database has one connection, which every statement
    /// of the process shares.
    fn keeping_a_connection(&self) -> TaskStore {
        let held = (self.backend() == DatabaseBackend::Postgres).then(|| {
            let pool = self.db.get_postgres_connection_pool().clone();
            Arc::new(HeldConnection::new(pool, self.statement_timeout))
        });
        TaskStore {
            held,
            ..self.clone()
        }
    }

    /// Where this handle's batched statements go: its writer's connection, or the pool.
    pub(crate) fn conn(&self) -> Conn<'_> {
        match &self.held {
            Some(held) => Conn::Held(held),
            None => Conn::Pool(&self.db),
        }
    }

    /// The connection pool, for tests and diagnostics (`SHOW`, `PRAGMA`): everything else goes
    /// through the store's methods.
    #[doc(hidden)]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
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
        // An index built over a large table may take longer than the statement timeout that
        // guards the task path; a cancelled migration would keep every process from starting.
        transaction
            .execute_unprepared("SET LOCAL statement_timeout = 0")
            .await?;
        transaction
            .execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
        Migrator::up(&transaction, None).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The longest any statement may take: a write that began has ended by then.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await?;
        Ok(())
    }

    /// The database's clock `after` from now: the clock every lease and sweep time is on.
    /// `statement_timestamp()` rather than `clock_timestamp()`: one value per statement, and
    /// STABLE, so an index can range-scan on it. SQLite is a file on this host, so this process's
    /// clock is the database's.
    fn db_now_plus(&self, after: Duration) -> SimpleExpr {
        self.db_now_offset(after, true)
    }

    pub(crate) fn db_now_minus(&self, before: Duration) -> SimpleExpr {
        self.db_now_offset(before, false)
    }

    fn db_now_offset(&self, offset: Duration, ahead: bool) -> SimpleExpr {
        // Far beyond any setting, and well inside both databases' timestamp range (and SQLite's
        // four-digit years, which its text comparisons rely on).
        let offset = offset.min(MAX_CLOCK_OFFSET);
        match self.backend() {
            DatabaseBackend::Postgres => {
                let sign = if ahead { '+' } else { '-' };
                let ms = offset.as_millis();
                Expr::cust(format!(
                    "(statement_timestamp() {sign} {ms} * interval '1 millisecond')"
                ))
            }
            _ => Expr::value(sqlite::clock_offset(Utc::now(), offset, ahead)),
        }
    }

    fn db_now(&self) -> SimpleExpr {
        self.db_now_plus(Duration::ZERO)
    }

    /// `column` is unset or earlier than the database's clock.
    fn passed(&self, column: Column) -> Condition {
        Condition::any()
            .add(column.is_null())
            .add(Expr::col(column).lt(self.db_now()))
    }

    /// Stores a new PENDING task. No sweeper republishes it for `publish_grace`: the accepting
    /// gateway is about to publish it and record the confirm.
    #[instrument(skip_all, fields(task_id = %task.id))]
    pub async fn insert(&self, task: &Task, publish_grace: Duration) -> Result<(), StorageError> {
        let item = (task.clone(), publish_grace);
        match &self.batches {
            Some(batches) => batches.inserts.submit(item).await,
            None => Box::pin(self.insert_batch(vec![item])).await.map(drop),
        }
    }

    /// Stores new PENDING tasks all together, in one transaction (one commit), as
    /// [`TaskStore::insert`] does one: all of them or none.
    pub async fn insert_all(
        &self,
        tasks: &[Task],
        publish_grace: Duration,
    ) -> Result<(), StorageError> {
        let transaction = self.db.begin().await?;
        // Statements of a bounded size: each row binds ten parameters, and PostgreSQL takes at
        // most 65,535 per statement.
        for chunk in tasks.chunks(INSERT_CHUNK) {
            let items: Vec<_> = chunk
                .iter()
                .map(|task| (task.clone(), publish_grace))
                .collect();
            transaction.execute_raw(self.insert_tasks(&items)).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// One group-committed batch of inserts: one statement.
    #[instrument(skip_all, fields(tasks = items.len()))]
    async fn insert_batch(&self, items: Vec<InsertItem>) -> Result<Vec<()>, StorageError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.conn().execute_raw(self.insert_tasks(&items)).await?;
        Ok(vec![(); items.len()])
    }

    /// One INSERT of `items`.
    fn insert_tasks(&self, items: &[InsertItem]) -> sea_orm::Statement {
        match self.backend() {
            DatabaseBackend::Postgres => pg::insert_tasks(items),
            // On the database's clock, like every instant a sweeper compares (see `db_now`).
            _ => sqlite::insert_tasks(items, Utc::now()),
        }
    }

    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        Tasks::find_by_id(id.as_uuid())
            .one(&self.db)
            .await?
            .map(entity::Model::into_task)
            .transpose()
    }

    /// [`TaskStore::get`], read together with the other reads waiting at the time (on
    /// PostgreSQL, on a connection kept for them): how calls (GetTask, long polls, watches)
    /// read their tasks, a few statements for thousands of them rather than one statement and
    /// one pooled connection each. Side by side, 64 GetTask calls in flight: 34,024–36,750
    /// against 13,409–16,345 calls/s on PostgreSQL, 30,861–33,815 against 7,603–7,952 on
    /// `dalc up`'s SQLite; one at a time (PostgreSQL): a median of 0.17–0.18 against
    /// 0.26–0.27 ms.
    pub async fn read(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        match &self.batches {
            Some(batches) => batches.reads.submit(id).await,
            None => Box::pin(self.get(id)).await,
        }
    }

    async fn read_batch(&self, ids: Vec<TaskId>) -> Result<Vec<Option<Task>>, StorageError> {
        let found: HashMap<TaskId, Task> = self
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|task| (task.id, task))
            .collect();
        // Every caller gets its task, however many wait for the same one.
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    /// Records that the broker confirmed the publishes of `ids`, so the sweeper leaves them
    /// alone: one statement for the whole batch.
    #[instrument(skip_all, fields(tasks = ids.len()))]
    pub async fn mark_published(&self, ids: &[TaskId]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Rows a worker holds locked are being started (which marks them) or finished: skip
        // them rather than wait, so a mark never takes part in a deadlock.
        // Only tasks still PENDING: a start marks its task itself.
        let unmarked = self.rows_locked(ids, true, |rows| {
            rows.and_where(Expr::col(Column::PublishedAt).is_null())
                .and_where(status_is(TaskStatus::Pending));
        });
        Tasks::update_many()
            .col_expr(Column::PublishedAt, self.db_now())
            .filter(self.id_among(unmarked))
            .filter(Column::PublishedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// `id` is one of the ids `rows` selects. On PostgreSQL as `id = ANY(ARRAY(rows))`: the rows
    /// are picked (and locked) first, once, and the write then finds each by its primary key.
    /// `id IN (rows)` with a LIMIT or a lock in `rows` is planned as a filter on a scan of the
    /// whole table, which a table of a million finished tasks makes slow.
    fn id_among(&self, rows: sea_orm::sea_query::SelectStatement) -> SimpleExpr {
        match self.backend() {
            // `$1` renders as the parenthesised subquery, its values bound as parameters (so
            // the statement's text, and its prepared plan, is the same for every batch size).
            DatabaseBackend::Postgres => {
                Expr::cust_with_expr("\"tasks\".\"id\" = ANY(ARRAY $1)", rows)
            }
            _ => Column::Id.in_subquery(rows),
        }
    }

    /// The id is one of `ids`. On PostgreSQL as `id = ANY($1)`, the ids bound as one array: the
    /// statement's text is the same for any number of them, so it is prepared once.
    pub(crate) fn id_in(&self, ids: &[TaskId]) -> SimpleExpr {
        let ids = ids.iter().map(TaskId::as_uuid);
        match self.backend() {
            DatabaseBackend::Postgres => Expr::cust_with_values(
                "\"tasks\".\"id\" = ANY($1)",
                [sea_orm::Value::from(ids.collect::<Vec<_>>())],
            ),
            _ => Expr::col(Column::Id).is_in(ids),
        }
    }

    /// `SELECT id FROM tasks WHERE id IN ids …`, locked in id order on PostgreSQL: every
    /// multi-row write takes its row locks in this one order (or skips locked rows), so two
    /// batches never deadlock. SQLite has one writer at a time and no row locks.
    fn rows_locked(
        &self,
        ids: &[TaskId],
        skip_locked: bool,
        narrow: impl FnOnce(&mut sea_orm::sea_query::SelectStatement),
    ) -> sea_orm::sea_query::SelectStatement {
        let mut rows = Query::select();
        rows.column(Column::Id)
            .from(Tasks)
            .and_where(self.id_in(ids))
            .order_by(Column::Id, sea_orm::Order::Asc);
        narrow(&mut rows);
        match (self.backend(), skip_locked) {
            (DatabaseBackend::Postgres, true) => {
                rows.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            }
            (DatabaseBackend::Postgres, false) => {
                rows.lock(LockType::Update);
            }
            _ => {}
        }
        rows
    }

    /// Starts a new attempt holding a `lease`: PENDING → RUNNING, or RUNNING → RUNNING when the
    /// previous attempt's lease ran out (its worker died), with `attempts + 1`, as one
    /// compare-and-set (group-committed with other workers' starts). A RUNNING task whose lease
    /// is live is [`StartOutcome::Busy`]: a duplicate message never runs a task twice at once.
    /// No attempt past `max_attempts` starts: a task whose attempts ran out is given up on
    /// instead ([`StartOutcome::GaveUp`]), so its `attempts` stays `max_attempts`.
    #[instrument(skip_all, fields(task_id = %id, worker_id))]
    pub async fn start_attempt(
        &self,
        id: TaskId,
        worker_id: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<StartOutcome, StorageError> {
        let item = StartItem {
            id,
            worker_id: worker_id.into(),
            lease,
            max_attempts,
        };
        let started = match &self.batches {
            Some(batches) => batches.starts.submit(item).await?,
            None => Box::pin(self.start_batch(vec![item]))
                .await?
                .pop()
                .flatten(),
        };
        if let Some(task) = started {
            return Ok(StartOutcome::Started(task));
        }
        let mut task = self.get(id).await?;
        if task
            .as_ref()
            .is_some_and(|task| !task.is_terminal() && task.attempts >= max_attempts)
        {
            // Unless an attempt is live: a worker may be running the last one right now.
            let guard = Condition::all()
                .add(self.abandoned())
                .add(Column::Attempts.gte(attempt_number(max_attempts)));
            let outcome = Outcome::gave_up(max_attempts);
            if let Some(given_up) = self.set_terminal(Some(id), &outcome, guard).await?.pop() {
                return Ok(StartOutcome::GaveUp(given_up));
            }
            // A live attempt holds it, or it ended meanwhile.
            task = self.get(id).await?;
        }
        match task {
            None => Ok(StartOutcome::Missing),
            Some(task) if task.is_terminal() => Ok(StartOutcome::AlreadyTerminal(task)),
            Some(task) if task.status == TaskStatus::Running => Ok(StartOutcome::Busy(task)),
            // PENDING, yet the filter matched nothing: it changed in between.
            Some(task) => Err(StorageError::Corrupt(format!(
                "task {} is {} but could not be started",
                task.id, task.status
            ))),
        }
    }

    /// One group-committed batch of starts: one UPDATE per worker (normally one; each its own
    /// compare-and-set, so no transaction need hold them together). An id twice in a batch (two
    /// copies of one message) starts once: only the copy of the worker the row now names gets the
    /// task, the other `None` (Busy).
    async fn start_batch(&self, items: Vec<StartItem>) -> Result<Vec<Option<Task>>, StorageError> {
        let mut by_worker: HashMap<(Arc<str>, Duration, u32), Vec<TaskId>> = HashMap::new();
        for item in &items {
            by_worker
                .entry((item.worker_id.clone(), item.lease, item.max_attempts))
                .or_default()
                .push(item.id);
        }
        let mut started = Vec::with_capacity(items.len());
        for ((worker_id, lease, max_attempts), ids) in by_worker {
            started.extend(
                self.start_all(&ids, &worker_id, lease, max_attempts)
                    .await?,
            );
        }
        Ok(answer_by_id(
            &items,
            |item| item.id,
            started,
            |item, task| task.worker_id.as_deref() == Some(&*item.worker_id),
        ))
    }

    /// Starts attempts at every takeable task of `ids` for one worker, in one statement.
    async fn start_all(
        &self,
        ids: &[TaskId],
        worker_id: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Task>, StorageError> {
        let attempt = self
            .new_attempt(Tasks::update_many(), worker_id)
            .col_expr(Column::Status, Expr::value(TaskStatus::Running.as_str()));
        let updated = self
            .leased(attempt, lease)
            .filter(self.id_among(self.rows_locked(ids, false, |_| {})))
            .filter(status_in(TaskStatus::sources_of(TaskStatus::Running)))
            // PENDING, or an attempt whose lease ran out: never a live attempt.
            .filter(self.abandoned())
            .filter(Column::Attempts.lt(attempt_number(max_attempts)))
            .exec_with_returning(&self.conn())
            .await?;
        updated.into_iter().map(entity::Model::into_task).collect()
    }

    /// What starting an attempt writes, whatever else the write does: the attempt counted, its
    /// worker and start time, and the publish marked (a worker has the task, so it was
    /// published, whatever became of the gateway's mark).
    fn new_attempt(&self, update: UpdateMany<Tasks>, worker_id: &str) -> UpdateMany<Tasks> {
        update
            .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
            .col_expr(Column::WorkerId, Expr::value(worker_id))
            .col_expr(Column::StartedAt, self.db_now())
            .col_expr(
                Column::PublishedAt,
                Expr::col(Column::PublishedAt).if_null(self.db_now()),
            )
    }

    /// What a lease of `lease` from now writes, for a new attempt or a renewed one.
    fn leased(&self, update: UpdateMany<Tasks>, lease: Duration) -> UpdateMany<Tasks> {
        update
            .col_expr(Column::LeaseUntil, self.db_now_plus(lease))
            // A sweeper looks again one lease after this one runs out, should the attempt
            // vanish with its message.
            .col_expr(
                Column::SweepAfter,
                self.db_now_plus(lease.saturating_mul(2)),
            )
    }

    /// What ending a task with `outcome` writes: its status, result or reason, and end time.
    fn ended(&self, update: UpdateMany<Tasks>, outcome: &Outcome) -> UpdateMany<Tasks> {
        update
            .col_expr(Column::Status, Expr::value(outcome.status().as_str()))
            .col_expr(Column::Result, Expr::value(outcome.result()))
            .col_expr(Column::Error, Expr::value(outcome.error()))
            .col_expr(Column::FinishedAt, self.db_now())
    }

    /// Renews the lease of attempt number `attempt` for `lease` from now, while its worker still
    /// evaluates: an evaluation longer than one lease is not taken over while its worker lives.
    /// `false`: the attempt no longer holds the task (another took over after a lapse).
    #[instrument(skip_all, fields(task_id = %id, attempt))]
    pub async fn renew_lease(
        &self,
        id: TaskId,
        attempt: u32,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let renewed = self
            .leased(Tasks::update_many(), lease)
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(status_is(TaskStatus::Running))
            .filter(Column::Attempts.eq(attempt_number(attempt)))
            .exec(&self.db)
            .await?;
        Ok(renewed.rows_affected == 1)
    }

    /// Gives up attempt number `attempt` without ending the task (its worker hands the message
    /// back after a fault): the next delivery may take over at once instead of waiting out the
    /// lease. Best effort: a lease that is not released simply runs out.
    #[instrument(skip_all, fields(task_id = %id, attempt))]
    pub async fn release_lease(&self, id: TaskId, attempt: u32) -> Result<(), StorageError> {
        Tasks::update_many()
            .col_expr(
                Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(status_is(TaskStatus::Running))
            .filter(Column::Attempts.eq(attempt_number(attempt)))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ends attempt number `attempt` with `outcome`, as one compare-and-set (group-committed
    /// with other attempts' ends): it only succeeds if the task is still RUNNING under that same
    /// attempt. Returns the stored task when this call made the change, `None` when another
    /// attempt got there first (its result stands).
    #[instrument(skip_all, fields(task_id = %id, attempt, status = %outcome.status()))]
    pub async fn finish_attempt(
        &self,
        id: TaskId,
        attempt: u32,
        outcome: &Outcome,
    ) -> Result<Option<Task>, StorageError> {
        if !TaskStatus::Running.can_become(outcome.status()) {
            return Ok(None);
        }
        let item = (id, attempt, outcome.clone());
        match &self.batches {
            Some(batches) => batches.finishes.submit(item).await,
            None => Ok(Box::pin(self.finish_batch(vec![item]))
                .await?
                .pop()
                .flatten()),
        }
    }

    /// One group-committed batch of attempt ends. On PostgreSQL one statement
    /// ([`pg::finish_attempts`]); on SQLite one transaction of single-row compare-and-sets.
    async fn finish_batch(
        &self,
        items: Vec<FinishItem>,
    ) -> Result<Vec<Option<Task>>, StorageError> {
        if self.backend() == DatabaseBackend::Postgres {
            let ended = self.returning(pg::finish_attempts(&items)).await?;
            // Two attempts at one task in a batch: the row names the attempt that ended it.
            return Ok(answer_by_id(
                &items,
                |(id, _, _)| *id,
                ended,
                |(_, attempt, _), task| task.attempts == *attempt,
            ));
        }
        // Rows locked in one order (by id) in every transaction: two batches never deadlock.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&index| items[index].0);
        let transaction = self.db.begin().await?;
        let mut finished = vec![None; items.len()];
        for index in order {
            let (id, attempt, outcome) = &items[index];
            let this_attempt = Condition::all()
                .add(status_is(TaskStatus::Running))
                .add(Column::Attempts.eq(attempt_number(*attempt)));
            let mut tasks = self
                .set_terminal_on(&transaction, Some(*id), outcome, this_attempt)
                .await?;
            finished[index] = tasks.pop();
        }
        transaction.commit().await?;
        Ok(finished)
    }

    /// Records a quick attempt by `worker_id`: a PENDING task whose `expression` the worker
    /// evaluated before any write (the engine predicts microseconds of work) goes straight to
    /// `outcome`, its attempt counted in the same write (group-committed with other quick
    /// attempts), as started `ran_for` (the evaluation's time) before it ended. Returns the
    /// stored task, or `None` when the task is not PENDING (a duplicate message, a cancel, a
    /// takeover) or its stored expression is not `expression`: the caller then goes the long
    /// way, starting an attempt first.
    ///
    /// A plain function returning its future, the item made at once: an `async fn` would keep
    /// its arguments beside the item, in every worker's future for every task.
    pub fn record_quick_attempt(
        &self,
        id: TaskId,
        worker_id: &str,
        expression: &str,
        outcome: &Outcome,
        ran_for: Duration,
    ) -> impl Future<Output = Result<Option<Task>, StorageError>> + Send + use<'_> {
        let span =
            tracing::info_span!("record_quick_attempt", task_id = %id, status = %outcome.status());
        let item = TaskStatus::Pending
            .can_become(outcome.status())
            .then(|| QuickItem {
                id,
                worker_id: worker_id.into(),
                expression: expression.to_owned(),
                outcome: outcome.clone(),
                // Bounded like every offset from a clock, so the start is a valid instant.
                ran_for: ran_for.min(MAX_CLOCK_OFFSET),
            });
        async move {
            let Some(item) = item else {
                return Ok(None);
            };
            match &self.batches {
                Some(batches) => batches.quick_attempts.submit(item).await,
                None => Ok(Box::pin(self.quick_attempt_batch(vec![item]))
                    .await?
                    .pop()
                    .flatten()),
            }
        }
        .instrument(span)
    }

    /// One group-committed batch of quick attempts: one statement.
    async fn quick_attempt_batch(
        &self,
        items: Vec<QuickItem>,
    ) -> Result<Vec<Option<Task>>, StorageError> {
        let update = match self.backend() {
            DatabaseBackend::Postgres => pg::record_quick_attempts(&items),
            _ => sqlite::record_quick_attempts(&items, Utc::now()),
        };
        let ran = self.returning(update).await?;
        // Two copies of one message in a batch: the row names the worker whose copy won.
        let ran_by =
            |item: &QuickItem, task: &Task| task.worker_id.as_deref() == Some(&*item.worker_id);
        Ok(answer_by_id(&items, |item| item.id, ran, ran_by))
    }

    /// The tasks a raw `UPDATE … RETURNING` statement changed.
    async fn returning(&self, statement: sea_orm::Statement) -> Result<Vec<Task>, StorageError> {
        Tasks::find()
            .from_raw_sql(statement)
            .all(&self.conn())
            .await?
            .into_iter()
            .map(entity::Model::into_task)
            .collect()
    }

    /// Ends a task that no attempt has started (deadline passed, publish failed): PENDING →
    /// `outcome`. Returns `None` when the task is not PENDING: a started attempt is never
    /// overwritten from outside.
    #[instrument(skip_all, fields(task_id = %id, status = %outcome.status()))]
    pub async fn finish_unstarted(
        &self,
        id: TaskId,
        outcome: &Outcome,
    ) -> Result<Option<Task>, StorageError> {
        let pending = Condition::all().add(status_is(TaskStatus::Pending));
        self.set_terminal(Some(id), outcome, pending)
            .await
            .map(|mut tasks| tasks.pop())
    }

    /// [`TaskStore::finish_unstarted`] for many tasks, a statement per few hundred.
    pub async fn finish_all_unstarted(
        &self,
        ids: &[TaskId],
        outcome: &Outcome,
    ) -> Result<Vec<Task>, StorageError> {
        let mut ended = Vec::new();
        for chunk in ids.chunks(MAX_BATCH) {
            let pending = Condition::all()
                .add(status_is(TaskStatus::Pending))
                .add(self.id_in(chunk));
            ended.extend(self.set_terminal(None, outcome, pending).await?);
        }
        Ok(ended)
    }

    /// Ends a task nobody works on any more (its message was dead-lettered): PENDING, or RUNNING
    /// whose attempt's lease ran out → `outcome`. A live attempt is left alone.
    #[instrument(skip_all, fields(task_id = %id, status = %outcome.status()))]
    pub async fn finish_abandoned(
        &self,
        id: TaskId,
        outcome: &Outcome,
    ) -> Result<Option<Task>, StorageError> {
        self.set_terminal(Some(id), outcome, self.abandoned())
            .await
            .map(|mut tasks| tasks.pop())
    }

    /// PENDING, or RUNNING with no live lease.
    fn abandoned(&self) -> Condition {
        Condition::any().add(status_is(TaskStatus::Pending)).add(
            Condition::all()
                .add(status_is(TaskStatus::Running))
                .add(self.passed(Column::LeaseUntil)),
        )
    }

    /// Moves the task `id` (every task matching `guard`, when `id` is `None`) to `outcome`,
    /// within what the state machine allows; returns the tasks it changed.
    async fn set_terminal(
        &self,
        id: Option<TaskId>,
        outcome: &Outcome,
        guard: Condition,
    ) -> Result<Vec<Task>, StorageError> {
        self.set_terminal_on(&self.db, id, outcome, guard).await
    }

    /// [`TaskStore::set_terminal`] on `connection` (the pool, or a batch's transaction).
    async fn set_terminal_on(
        &self,
        connection: &impl ConnectionTrait,
        id: Option<TaskId>,
        outcome: &Outcome,
        guard: Condition,
    ) -> Result<Vec<Task>, StorageError> {
        let mut update = self
            .ended(Tasks::update_many(), outcome)
            .filter(status_in(TaskStatus::sources_of(outcome.status())))
            .filter(guard);
        if let Some(id) = id {
            update = update.filter(Column::Id.eq(id.as_uuid()));
        }
        let updated = update.exec_with_returning(connection).await?;
        updated.into_iter().map(entity::Model::into_task).collect()
    }

    /// Claims up to `limit` tasks that need the recovery sweeper, for `claim` (the database's
    /// clock): PENDING tasks whose publish was never confirmed and whose accepting gateway's grace
    /// is over, and RUNNING tasks whose attempt's lease ran out a lease ago (the attempt and
    /// its message may both be gone). One short statement, no lock held afterwards: on
    /// PostgreSQL the rows are picked `FOR UPDATE SKIP LOCKED`, so gateways sweeping at once
    /// claim disjoint sets, and a claimed task is not claimed again until `claim` runs out.
    pub async fn claim_for_sweep(
        &self,
        limit: u64,
        claim: Duration,
    ) -> Result<Vec<Task>, StorageError> {
        let needs_sweep = Condition::any()
            .add(
                Condition::all()
                    .add(Column::Status.eq(TaskStatus::Pending.as_str()))
                    .add(Column::PublishedAt.is_null()),
            )
            .add(
                Condition::all()
                    .add(Column::Status.eq(TaskStatus::Running.as_str()))
                    .add(self.passed(Column::LeaseUntil)),
            );
        let not_overdue = Condition::any()
            .add(Column::Deadline.is_null())
            .add(Expr::col(Column::Deadline).gt(self.db_now()));
        let mut due = Query::select();
        due.column(Column::Id)
            .from(Tasks)
            .cond_where(
                Condition::all()
                    .add(needs_sweep)
                    .add(not_overdue)
                    .add(self.passed(Column::SweepAfter)),
            )
            .order_by(Column::SweepAfter, sea_orm::Order::Asc)
            .limit(limit);
        if self.backend() == DatabaseBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let running_claim = claim.saturating_mul(RUNNING_CLAIM_FACTOR);
        let claimed = Tasks::update_many()
            .col_expr(
                Column::SweepAfter,
                Expr::case(
                    Column::Status.eq(TaskStatus::Running.as_str()),
                    self.db_now_plus(running_claim),
                )
                .finally(self.db_now_plus(claim))
                .into(),
            )
            .filter(self.id_among(due))
            .exec_with_returning(&self.db)
            .await?;
        let mut tasks: Vec<Task> = claimed
            .into_iter()
            .map(entity::Model::into_task)
            .collect::<Result<_, _>>()?;
        tasks.sort_by_key(|task| task.created_at);
        Ok(tasks)
    }

    /// Ends every task whose deadline passed and that no live attempt holds: PENDING tasks
    /// (their message expired in the queue, or was never delivered) and RUNNING tasks whose
    /// attempt's lease ran out. In short steps of [`EXPIRE_BATCH`] rows, so a large backlog
    /// never makes one long statement. Returns them.
    pub async fn expire_overdue(&self) -> Result<Vec<Task>, StorageError> {
        let mut expired = Vec::new();
        let pending = Condition::all().add(Column::Status.eq(TaskStatus::Pending.as_str()));
        let abandoned = Condition::all()
            .add(Column::Status.eq(TaskStatus::Running.as_str()))
            .add(self.passed(Column::LeaseUntil));
        for (which, outcome) in [
            (pending, Outcome::expired_unstarted()),
            (abandoned, Outcome::expired_abandoned()),
        ] {
            loop {
                let mut overdue = Query::select();
                overdue
                    .column(Column::Id)
                    .from(Tasks)
                    .cond_where(
                        which
                            .clone()
                            .add(Expr::col(Column::Deadline).lt(self.db_now())),
                    )
                    .limit(EXPIRE_BATCH);
                if self.backend() == DatabaseBackend::Postgres {
                    overdue.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
                }
                let guard = Condition::all().add(self.id_among(overdue));
                let ended = self.set_terminal(None, &outcome, guard).await?;
                let done = u64::try_from(ended.len()).unwrap_or(u64::MAX) < EXPIRE_BATCH;
                expired.extend(ended);
                if done {
                    break;
                }
            }
        }
        Ok(expired)
    }

    /// Deletes up to `limit` terminal tasks that finished more than `retention` ago (the
    /// database's clock), oldest first; returns how many went.
    pub async fn delete_finished(
        &self,
        retention: Duration,
        limit: u64,
    ) -> Result<u64, StorageError> {
        let cutoff = self.db_now_minus(retention);
        let mut old = Query::select();
        old.column(Column::Id)
            .from(Tasks)
            .and_where(Expr::col(Column::FinishedAt).lt(cutoff))
            .and_where(Expr::col(Column::Status).is_in(status_names(TaskStatus::terminal())))
            .order_by(Column::FinishedAt, sea_orm::Order::Asc)
            .limit(limit);
        let deleted = Tasks::delete_many()
            .filter(self.id_among(old))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }

    /// Forgets that open tasks were ever published, so the sweeper queues them again at once.
    /// For an in-process queue after a restart: whatever it held died with the process.
    pub async fn forget_publishes_of_open_tasks(&self) -> Result<u64, StorageError> {
        let result = Tasks::update_many()
            .col_expr(
                Column::PublishedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                Column::SweepAfter,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(status_in(vec![TaskStatus::Pending, TaskStatus::Running]))
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

    /// Every task, oldest first; for tests and operational tooling on small databases.
    pub async fn all(&self) -> Result<Vec<Task>, StorageError> {
        Tasks::find()
            .order_by_asc(Column::CreatedAt)
            .all(&self.db)
            .await?
            .into_iter()
            .map(entity::Model::into_task)
            .collect()
    }

    /// Runs a raw statement; for tests and operational tooling.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<(), StorageError> {
        self.db.execute_unprepared(sql).await?;
        Ok(())
    }
}

fn status_names(statuses: Vec<TaskStatus>) -> Vec<&'static str> {
    statuses.into_iter().map(TaskStatus::as_str).collect()
}

/// The task's status, as an expression no index serves. A compare-and-set on rows picked by id
/// must find them by their primary key: offered an index on `status` (which finds all open
/// tasks, and whose statistics lag right behind a bulk change), the planner may walk that index
/// instead, which on a large table is slow.
fn status_text() -> SimpleExpr {
    Expr::cust("(\"tasks\".\"status\" || '')")
}

/// The status is `status` (a compare-and-set condition; see [`status_text`]).
fn status_is(status: TaskStatus) -> SimpleExpr {
    status_text().eq(status.as_str())
}

/// The status is one of `statuses` (a compare-and-set condition; see [`status_text`]).
fn status_in(statuses: Vec<TaskStatus>) -> SimpleExpr {
    status_text().is_in(status_names(statuses))
}

/// The answer of each batch item, in the items' order: the changed task with the item's id
/// (`id_of`), given to the first item with that id that `belongs` to it; `None` to every other.
fn answer_by_id<I>(
    items: &[I],
    id_of: impl Fn(&I) -> TaskId,
    changed: Vec<Task>,
    belongs: impl Fn(&I, &Task) -> bool,
) -> Vec<Option<Task>> {
    let mut changed: HashMap<TaskId, Task> =
        changed.into_iter().map(|task| (task.id, task)).collect();
    items
        .iter()
        .map(|item| {
            let id = id_of(item);
            let mine = changed.get(&id).is_some_and(|task| belongs(item, task));
            if mine { changed.remove(&id) } else { None }
        })
        .collect()
}

fn attempt_number(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}
