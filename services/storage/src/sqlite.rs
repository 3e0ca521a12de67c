//! The task path's batched writes on SQLite, each one statement of one fixed text.
//!
//! A batch's rows travel as one JSON array bound to one parameter and unpacked by `json_each`.
//! One statement per batch, not one per row: sqlx runs SQLite on a thread of its own, and every
//! statement is a round trip to that thread (a batch of 30 one-row updates was 32 of them). One
//! text for every batch size: the connection prepares it once.
//!
//! Values are stored as sqlx stores them everywhere else, so that comparisons with them still
//! hold: ids as 16-byte blobs (`unhex` of the simple hex form) and instants as RFC 3339 text
//! ([`instant`]).

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use dalc_domain::{Task, TaskId, TaskStatus};
use sea_orm::{DatabaseBackend, Statement, Value};
use serde_json::json;

use crate::{
    pg::{OUTCOME_COLUMNS, status_and_detail},
    store::{MAX_CLOCK_OFFSET, QuickItem},
};

/// Records quick attempts, each a PENDING task (with the expression the worker evaluated) started
/// and ended at once by that worker at `now`, its attempt counted in the same write.
pub(crate) fn record_quick_attempts(items: &[QuickItem], now: DateTime<Utc>) -> Statement {
    // `+tasks.status`: the rows are found by their ids, never through the status index.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE tasks SET {OUTCOME_COLUMNS}, attempts = tasks.attempts + 1, \
           worker_id = outcome.worker_id, started_at = outcome.started_at, finished_at = ?, \
           lease_until = NULL, published_at = COALESCE(tasks.published_at, ?) \
         FROM (SELECT unhex(value ->> 0) AS id, value ->> 1 AS worker_id, value ->> 2 AS status, \
             value ->> 3 AS detail, value ->> 4 AS expression, value ->> 5 AS started_at \
           FROM json_each(?)) AS outcome \
         WHERE tasks.id = outcome.id AND +tasks.status = '{pending}' \
           AND tasks.expression = outcome.expression \
         RETURNING *",
            pending = TaskStatus::Pending.as_str(),
        )
    });
    let rows: Vec<_> = items
        .iter()
        .map(|item| {
            let (status, detail) = status_and_detail(&item.outcome);
            json!([
                hex(item.id),
                &*item.worker_id,
                status,
                detail,
                item.expression,
                instant(now - item.ran_for)
            ])
        })
        .collect();
    let now = instant(now);
    statement(&SQL, vec![now.clone().into(), now.into(), json_text(rows)])
}

/// Inserts new PENDING tasks created at `now`: (task, the grace its gateway has to confirm the
/// publish).
pub(crate) fn insert_tasks(items: &[(Task, Duration)], now: DateTime<Utc>) -> Statement {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO tasks (id, expression, status, created_at, attempts, deadline, \
           sweep_after, tenant, idempotency_key, priority) \
         SELECT unhex(value ->> 0), value ->> 1, '{pending}', value ->> 2, 0, value ->> 3, \
           value ->> 4, value ->> 5, value ->> 6, value ->> 7 \
         FROM json_each(?)",
            pending = TaskStatus::Pending.as_str(),
        )
    });
    let rows: Vec<_> = items
        .iter()
        .map(|(task, grace)| {
            let sweep_after = clock_offset(now, *grace, true);
            json!([
                hex(task.id),
                task.expression,
                instant(task.created_at),
                task.deadline.map(instant),
                instant(sweep_after),
                task.tenant,
                task.idempotency_key,
                task.priority.get(),
            ])
        })
        .collect();
    statement(&SQL, vec![json_text(rows)])
}

/// `now` moved `offset` (at most [`MAX_CLOCK_OFFSET`]) ahead or back: a SQLite file is on this
/// host, so this process's clock is the database's.
pub(crate) fn clock_offset(now: DateTime<Utc>, offset: Duration, ahead: bool) -> DateTime<Utc> {
    let offset = chrono::Duration::from_std(offset.min(MAX_CLOCK_OFFSET)).unwrap_or_default();
    let moved = if ahead {
        now.checked_add_signed(offset)
    } else {
        now.checked_sub_signed(offset)
    };
    moved.unwrap_or(now)
}

/// An instant as sqlx writes one to SQLite.
fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn hex(id: TaskId) -> String {
    id.as_uuid().simple().to_string()
}

fn json_text(rows: Vec<serde_json::Value>) -> Value {
    Value::from(serde_json::Value::Array(rows).to_string())
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DatabaseBackend::Sqlite, sql, values)
}
