//! The task path's batched writes on PostgreSQL, as statements of one fixed text each.
//!
//! A batch's rows travel as arrays bound to parameters (`unnest($1::uuid[], …)`), so every batch
//! size shares one statement text: each pooled connection prepares and plans it once, instead
//! of once per distinct size, which for multi-row `VALUES` lists and `IN (…)` lists cost the
//! database more than the writes themselves.
//!
//! Every multi-row write first locks its rows in id order (`ARRAY(SELECT … ORDER BY id FOR
//! UPDATE)`): two batches never deadlock, and the rows are then found by their primary key. A
//! write of one row skips that lock (see [`ByRows`]).
//!
//! An outcome travels as its status and one text, the result of a SUCCEEDED task and the reason
//! of any other ([`dalc_domain::Outcome`] carries exactly one of them): arrays of text bind no
//! NULL elements.

use std::sync::LazyLock;

use std::time::Duration;

use chrono::SecondsFormat;
use dalc_domain::{Outcome, Task, TaskId, TaskStatus};
use sea_orm::{DatabaseBackend, Statement, Value};

use crate::store::{MAX_CLOCK_OFFSET, QuickItem};

/// Its rows, locked in id order: the condition every multi-row write here starts from.
const LOCKED_IN_ID_ORDER: &str =
    "tasks.id = ANY(ARRAY(SELECT id FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE))";

/// A write's text in two forms, by how many rows it writes. Several rows are locked in id order
/// first ([`LOCKED_IN_ID_ORDER`]); one row is not: a write that waits for a single row lock
/// holds no other, so it cannot be part of a deadlock, and the extra lock cost a one-row write
/// (every write at one call in flight) about a tenth of its time (`pgbench`, this table: 0.44–0.50
/// against 0.39–0.42 ms with its commit).
struct ByRows {
    one: String,
    many: String,
}

impl ByRows {
    /// `text` of the condition the write starts from.
    fn new(text: impl Fn(&str) -> String) -> Self {
        ByRows {
            one: text("TRUE"),
            many: text(LOCKED_IN_ID_ORDER),
        }
    }

    fn for_rows(&self, rows: usize) -> &str {
        if rows > 1 { &self.many } else { &self.one }
    }
}

/// The result and reason columns of `outcome(status, detail)` (the same text on SQLite).
pub(crate) const OUTCOME_COLUMNS: &str = "status = outcome.status, \
     result = CASE WHEN outcome.status = 'SUCCEEDED' THEN outcome.detail END, \
     error = CASE WHEN outcome.status = 'SUCCEEDED' THEN NULL ELSE outcome.detail END";

/// Ends attempts: (id, attempt, outcome), each only while the task is still RUNNING under that
/// attempt.
pub(crate) fn finish_attempts(items: &[(TaskId, u32, Outcome)]) -> Statement {
    static SQL: LazyLock<ByRows> = LazyLock::new(|| {
        ByRows::new(|locks| {
            format!(
                "UPDATE tasks SET {OUTCOME_COLUMNS}, finished_at = statement_timestamp() \
             FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[]) \
               AS outcome(id, attempt, status, detail) \
             WHERE {locks} AND tasks.id = outcome.id \
               AND (tasks.status || '') = 'RUNNING' AND tasks.attempts = outcome.attempt \
             RETURNING tasks.*"
            )
        })
    });
    let ids = items.iter().map(|(id, _, _)| id.as_uuid()).collect();
    let attempts = items
        .iter()
        .map(|(_, attempt, _)| i32::try_from(*attempt).unwrap_or(i32::MAX))
        .collect();
    let (statuses, details) = outcome_arrays(items.iter().map(|(_, _, outcome)| outcome));
    statement(
        SQL.for_rows(items.len()),
        vec![array(ids), array(attempts), statuses, details],
    )
}

/// Records quick attempts, each a PENDING task (with the expression the worker evaluated) started
/// and ended at once by that worker, its attempt counted in the same write.
pub(crate) fn record_quick_attempts(items: &[QuickItem]) -> Statement {
    static SQL: LazyLock<ByRows> = LazyLock::new(|| {
        ByRows::new(|locks| {
            format!(
                "UPDATE tasks SET {OUTCOME_COLUMNS}, attempts = tasks.attempts + 1, \
               worker_id = outcome.worker_id, \
               started_at = statement_timestamp() - outcome.ran_us * interval '1 microsecond', \
               finished_at = statement_timestamp(), lease_until = NULL, \
               published_at = COALESCE(tasks.published_at, statement_timestamp()) \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
               AS outcome(id, worker_id, status, detail, expression, ran_us) \
             WHERE {locks} AND tasks.id = outcome.id \
               AND (tasks.status || '') = '{pending}' AND tasks.expression = outcome.expression \
             RETURNING tasks.*",
                pending = TaskStatus::Pending.as_str(),
            )
        })
    });
    let ids = items.iter().map(|item| item.id.as_uuid()).collect();
    let workers = items
        .iter()
        .map(|item| item.worker_id.to_string())
        .collect();
    let expressions = items.iter().map(|item| item.expression.clone()).collect();
    let (statuses, details) = outcome_arrays(items.iter().map(|item| &item.outcome));
    let ran_us = items
        .iter()
        .map(|item| i64::try_from(item.ran_for.as_micros()).unwrap_or(i64::MAX))
        .collect();
    statement(
        SQL.for_rows(items.len()),
        vec![
            array(ids),
            array(workers),
            statuses,
            details,
            array(expressions),
            array(ran_us),
        ],
    )
}

/// Inserts new PENDING tasks: (task, the grace its gateway has to confirm the publish). A
/// missing deadline or idempotency key travels as an empty text.
pub(crate) fn insert_tasks(items: &[(Task, Duration)]) -> Statement {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO tasks (id, expression, status, created_at, attempts, deadline, \
               sweep_after, tenant, idempotency_key, priority) \
             SELECT id, expression, '{pending}', created_at, 0, \
               NULLIF(deadline, '')::timestamptz, \
               statement_timestamp() + grace_ms * interval '1 millisecond', \
               tenant, NULLIF(idempotency_key, ''), priority \
             FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::int8[], \
               $6::text[], $7::text[], $8::int2[]) \
               AS task(id, expression, created_at, deadline, grace_ms, tenant, \
                 idempotency_key, priority)",
            pending = TaskStatus::Pending.as_str(),
        )
    });
    let tasks = || items.iter().map(|(task, _)| task);
    let ids: Vec<_> = tasks().map(|task| task.id.as_uuid()).collect();
    let expressions: Vec<_> = tasks().map(|task| task.expression.clone()).collect();
    let created: Vec<_> = tasks().map(|task| task.created_at).collect();
    let deadlines: Vec<_> = tasks()
        .map(|task| {
            task.deadline
                .map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))
                .unwrap_or_default()
        })
        .collect();
    // The same bound as every other offset from the database's clock.
    let graces: Vec<_> = items
        .iter()
        .map(|(_, grace)| i64::try_from(grace.min(&MAX_CLOCK_OFFSET).as_millis()).unwrap_or(0))
        .collect();
    let tenants: Vec<_> = tasks().map(|task| task.tenant.clone()).collect();
    let keys: Vec<_> = tasks()
        .map(|task| task.idempotency_key.clone().unwrap_or_default())
        .collect();
    let priorities: Vec<_> = tasks().map(|task| i16::from(task.priority.get())).collect();
    statement(
        &SQL,
        vec![
            array(ids),
            array(expressions),
            array(created),
            array(deadlines),
            array(graces),
            array(tenants),
            array(keys),
            array(priorities),
        ],
    )
}

/// `outcomes` as two parallel arrays: statuses, and each one's result or reason.
fn outcome_arrays<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> (Value, Value) {
    let (statuses, details): (Vec<String>, Vec<String>) = outcomes
        .map(|outcome| {
            let (status, detail) = status_and_detail(outcome);
            (status.to_owned(), detail.to_owned())
        })
        .unzip();
    (array(statuses), array(details))
}

/// An outcome as its status and one text: the result of a SUCCEEDED task, the reason of any
/// other ([`Outcome`] carries exactly one of them).
pub(crate) fn status_and_detail(outcome: &Outcome) -> (&'static str, &str) {
    let detail = outcome.result().or(outcome.error()).unwrap_or_default();
    (outcome.status().as_str(), detail)
}

fn array<T>(items: Vec<T>) -> Value
where
    Value: From<Vec<T>>,
{
    Value::from(items)
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
}
