//! The task path's batched writes on PostgreSQL, as statements of one fixed text each.
//!
//! A batch's rows travel as arrays bound to parameters (`unnest($1::uuid[], …)`), so every batch
//! size shares one statement text: each pooled connection prepares and plans it once, instead
//! of once per distinct size, which for multi-row `VALUES` lists and `IN (…)` lists cost the
//! database more than the writes themselves.
//!
//! Every multi-row write first locks its rows in id order (`ARRAY(SELECT … ORDER BY id FOR
//! UPDATE)`): two batches never deadlock, and the rows are then found by their primary key.
//!
//! An outcome travels as its status and one text, the result of a SUCCEEDED task and the reason
//! of any other ([`dalc_domain::Outcome`] carries exactly one of them): arrays of text bind no
//! NULL elements.

use std::sync::{Arc, LazyLock};

use dalc_domain::{Outcome, TaskId, TaskStatus};
use sea_orm::{DatabaseBackend, Statement, Value};

/// Its rows, locked in id order: the condition every multi-row write here starts from.
const LOCKED_IN_ID_ORDER: &str =
    "tasks.id = ANY(ARRAY(SELECT id FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE))";

/// The result and reason columns of `outcome(status, detail)`.
const OUTCOME_COLUMNS: &str = "status = outcome.status, \
     result = CASE WHEN outcome.status = 'SUCCEEDED' THEN outcome.detail END, \
     error = CASE WHEN outcome.status = 'SUCCEEDED' THEN NULL ELSE outcome.detail END";

/// Ends attempts: (id, attempt, outcome), each only while the task is still RUNNING under that
/// attempt.
pub(crate) fn finish_attempts(items: &[(TaskId, u32, Outcome)]) -> Statement {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE tasks SET {OUTCOME_COLUMNS}, finished_at = statement_timestamp() \
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[]) \
           AS outcome(id, attempt, status, detail) \
         WHERE {LOCKED_IN_ID_ORDER} AND tasks.id = outcome.id \
           AND (tasks.status || '') = 'RUNNING' AND tasks.attempts = outcome.attempt \
         RETURNING tasks.*"
        )
    });
    let ids = items.iter().map(|(id, _, _)| id.as_uuid()).collect();
    let attempts = items
        .iter()
        .map(|(_, attempt, _)| i32::try_from(*attempt).unwrap_or(i32::MAX))
        .collect();
    let (statuses, details) = outcome_arrays(items.iter().map(|(_, _, outcome)| outcome));
    statement(&SQL, vec![array(ids), array(attempts), statuses, details])
}

/// Records quick attempts: (id, worker, outcome), each a PENDING task started and ended at once
/// by that worker, its attempt counted in the same write.
pub(crate) fn record_quick_attempts(items: &[(TaskId, Arc<str>, Outcome)]) -> Statement {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE tasks SET {OUTCOME_COLUMNS}, attempts = tasks.attempts + 1, \
           worker_id = outcome.worker_id, started_at = statement_timestamp(), \
           finished_at = statement_timestamp(), lease_until = NULL, \
           published_at = COALESCE(tasks.published_at, statement_timestamp()) \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) \
           AS outcome(id, worker_id, status, detail) \
         WHERE {LOCKED_IN_ID_ORDER} AND tasks.id = outcome.id \
           AND (tasks.status || '') = '{pending}' \
         RETURNING tasks.*",
            pending = TaskStatus::Pending.as_str(),
        )
    });
    let ids = items.iter().map(|(id, _, _)| id.as_uuid()).collect();
    let workers = items
        .iter()
        .map(|(_, worker, _)| worker.to_string())
        .collect();
    let (statuses, details) = outcome_arrays(items.iter().map(|(_, _, outcome)| outcome));
    statement(&SQL, vec![array(ids), array(workers), statuses, details])
}

/// `outcomes` as two parallel arrays: statuses, and each one's result or reason.
fn outcome_arrays<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> (Value, Value) {
    let (statuses, details): (Vec<String>, Vec<String>) = outcomes
        .map(|outcome| {
            let detail = outcome.result().or(outcome.error()).unwrap_or_default();
            (outcome.status().as_str().to_owned(), detail.to_owned())
        })
        .unzip();
    (array(statuses), array(details))
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
