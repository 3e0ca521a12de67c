//! The task API's reads beyond one task: pages of a tenant's tasks, counts by status, many tasks
//! by id or by idempotency key; and cancelling.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use dalc_domain::{Outcome, Task, TaskId, TaskStatus};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Query},
};
use uuid::Uuid;

use crate::{
    StorageError, TaskStore,
    entity::{self, Column, Entity as Tasks},
};

/// Ids or keys looked up in one statement at most.
const LOOKUP_CHUNK: usize = 500;

/// Where a page of [`TaskStore::list`] starts: after the task with this creation time and id.
/// Creation time then id is a total order, and new tasks are created after every cursor, so a
/// client paging on while tasks arrive sees every older task exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    created_at: DateTime<Utc>,
    id: Uuid,
}

impl PageCursor {
    /// The cursor just past `task`.
    pub fn after(task: &Task) -> Self {
        PageCursor {
            created_at: task.created_at,
            id: task.id.as_uuid(),
        }
    }
}

/// Opaque text for clients: `<unix nanoseconds>.<id without hyphens>`.
impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.created_at.timestamp_nanos_opt().unwrap_or_default();
        write!(f, "{nanos}.{}", self.id.simple())
    }
}

/// A page token that is not as this server writes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed page token: pass back a next_page_token exactly as a ListTasks response gave it"
)]
pub struct MalformedCursor;

impl FromStr for PageCursor {
    type Err = MalformedCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (nanos, id) = text.split_once('.').ok_or(MalformedCursor)?;
        let nanos: i64 = nanos.parse().map_err(|_| MalformedCursor)?;
        let id = Uuid::try_parse(id).map_err(|_| MalformedCursor)?;
        let cursor = PageCursor {
            created_at: DateTime::from_timestamp_nanos(nanos),
            id,
        };
        // Only the one spelling this server writes (no sign, lower-case hex without hyphens)
        // and no instant before any task: anything else was edited or made up.
        if nanos < 0 || cursor.to_string() != text {
            return Err(MalformedCursor);
        }
        Ok(cursor)
    }
}

/// Terminal tasks by status: `(settled, all)` (see [`TaskStore::count_finished_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCounts {
    /// Nothing still being written finishes before this instant (the database's clock).
    pub watermark: DateTime<Utc>,
    pub counts: BTreeMap<TaskStatus, (u64, u64)>,
}

/// A status column's value, refusing statuses this build does not know.
fn stored_status(text: &str) -> Result<TaskStatus, StorageError> {
    text.parse()
        .map_err(|err| StorageError::Corrupt(format!("{err}")))
}

/// A count the database gave (never negative).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// How a cancellation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was PENDING and is CANCELLED now: no worker will run it.
    Now(Task),
    /// It is not PENDING (any more): the task as it stands.
    Not(Task),
    Missing,
}

impl TaskStore {
    /// Up to `limit` of `tenant`'s tasks, newest first, of `status` if given, after `cursor`.
    pub async fn list(
        &self,
        tenant: &str,
        status: Option<TaskStatus>,
        cursor: Option<PageCursor>,
        limit: u64,
    ) -> Result<Vec<Task>, StorageError> {
        let mut query = Tasks::find().filter(Column::Tenant.eq(tenant));
        if let Some(status) = status {
            query = query.filter(Column::Status.eq(status.as_str()));
        }
        if let Some(cursor) = cursor {
            query = query.filter(
                Condition::any()
                    .add(Expr::col(Column::CreatedAt).lt(cursor.created_at))
                    .add(
                        Condition::all()
                            .add(Expr::col(Column::CreatedAt).eq(cursor.created_at))
                            .add(Expr::col(Column::Id).lt(cursor.id)),
                    ),
            );
        }
        query
            .order_by_desc(Column::CreatedAt)
            .order_by_desc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(entity::Model::into_task)
            .collect()
    }

    /// How many of `tenant`'s tasks are open (PENDING, RUNNING), by status: found through the
    /// status index, so it costs what the open tasks number, not the whole table.
    pub async fn count_open_for(
        &self,
        tenant: &str,
    ) -> Result<BTreeMap<TaskStatus, u64>, StorageError> {
        let open = [TaskStatus::Pending.as_str(), TaskStatus::Running.as_str()];
        let rows: Vec<(String, i64)> = Tasks::find()
            .select_only()
            .column(Column::Status)
            .column_as(Expr::col(Column::Id).count(), "tasks")
            .filter(Column::Status.is_in(open))
            .filter(Column::Tenant.eq(tenant))
            .group_by(Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|(status, tasks)| Ok((stored_status(&status)?, count(tasks))))
            .collect()
    }

    /// `tenant`'s terminal tasks that finished at or after `since` (all of them when `None`),
    /// by status, each count split in two: those that finished before the returned watermark
    /// (`settle` before the database's clock now: no write still in flight can add to them),
    /// and all of them.
    pub async fn count_finished_since(
        &self,
        tenant: &str,
        since: Option<DateTime<Utc>>,
        settle: std::time::Duration,
    ) -> Result<FinishedCounts, StorageError> {
        let watermark_query = Query::select()
            .expr_as(self.db_now_minus(settle), "watermark")
            .to_owned();
        let watermark: DateTime<Utc> = self
            .db
            .query_one(&watermark_query)
            .await?
            .ok_or_else(|| StorageError::Corrupt("the database's clock gave no answer".into()))?
            .try_get("", "watermark")?;
        let settled = Expr::case(Expr::col(Column::FinishedAt).lt(watermark), 1).finally(0);
        let mut query = Tasks::find()
            .select_only()
            .column(Column::Status)
            .column_as(Expr::expr(settled).sum(), "settled")
            .column_as(Expr::col(Column::Id).count(), "tasks")
            .filter(Column::Tenant.eq(tenant))
            .filter(Column::FinishedAt.is_not_null());
        if let Some(since) = since {
            query = query.filter(Expr::col(Column::FinishedAt).gte(since));
        }
        let rows: Vec<(String, Option<i64>, i64)> = query
            .group_by(Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let counts = rows
            .into_iter()
            .map(|(status, settled, all)| {
                let settled = count(settled.unwrap_or(0));
                Ok((stored_status(&status)?, (settled, count(all))))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(FinishedCounts { watermark, counts })
    }

    /// The tasks of `ids` that exist, in no particular order.
    pub async fn get_many(&self, ids: &[TaskId]) -> Result<Vec<Task>, StorageError> {
        let mut tasks = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let rows = Tasks::find()
                .filter(self.id_in(chunk))
                .all(&self.conn())
                .await?;
            for row in rows {
                tasks.push(row.into_task()?);
            }
        }
        Ok(tasks)
    }

    /// `tenant`'s tasks submitted with any of `keys`, in no particular order.
    pub async fn find_by_idempotency_keys(
        &self,
        tenant: &str,
        keys: &[&str],
    ) -> Result<Vec<Task>, StorageError> {
        let mut tasks = Vec::new();
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            let rows = Tasks::find()
                .filter(Column::Tenant.eq(tenant))
                .filter(Column::IdempotencyKey.is_in(chunk.iter().copied()))
                .all(&self.db)
                .await?;
            for row in rows {
                tasks.push(row.into_task()?);
            }
        }
        Ok(tasks)
    }

    /// PENDING → CANCELLED, as one compare-and-set: a task a worker has started is never
    /// cancelled, and a worker never starts a cancelled one (its start is a compare-and-set too).
    pub async fn cancel(&self, id: TaskId) -> Result<Cancelled, StorageError> {
        if let Some(task) = self.finish_unstarted(id, &Outcome::cancelled()).await? {
            return Ok(Cancelled::Now(task));
        }
        Ok(match self.get(id).await? {
            Some(task) => Cancelled::Not(task),
            None => Cancelled::Missing,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let task = Task::new("1", None);
        let cursor = PageCursor::after(&task);
        assert_eq!(cursor.to_string().parse::<PageCursor>(), Ok(cursor));
        let written = cursor.to_string();
        let (nanos, id) = written.split_once('.').unwrap();
        let hyphenated = Uuid::try_parse(id).unwrap().hyphenated().to_string();
        for bad in [
            "",
            "x",
            "1.2",
            "abc.67e5504410b1426f9247bb680e5fe0c8",
            "1",
            "-1.67e5504410b1426f9247bb680e5fe0c8",
            &format!("+{written}"),
            &format!("0{written}"),
            &format!("{nanos}.{}", id.to_uppercase()),
            &format!("{nanos}.{hyphenated}"),
            &format!("{written} "),
        ] {
            assert_eq!(bad.parse::<PageCursor>(), Err(MalformedCursor), "{bad}");
        }
    }
}
