//! Domain types to their `dalc.v1` wire form.

use chrono::{DateTime, Utc};
use dalc_domain::{Task, TaskStatus};
use dalc_proto::v1;
use dalc_storage::WorkerFigures;

use crate::{ApiError, tasks::Stats};

pub(crate) fn task_to_proto(task: &Task) -> v1::Task {
    v1::Task {
        id: task.id.to_string(),
        expression: task.expression.clone(),
        status: status_to_proto(task.status).into(),
        result: task.result.clone().unwrap_or_default(),
        error: task.error.clone().unwrap_or_default(),
        created_at: Some(timestamp(task.created_at)),
        started_at: task.started_at.map(timestamp),
        finished_at: task.finished_at.map(timestamp),
        worker_id: task.worker_id.clone().unwrap_or_default(),
        attempts: task.attempts,
        priority: u32::from(task.priority.get()),
    }
}

fn status_to_proto(status: TaskStatus) -> v1::TaskStatus {
    match status {
        TaskStatus::Pending => v1::TaskStatus::Pending,
        TaskStatus::Running => v1::TaskStatus::Running,
        TaskStatus::Succeeded => v1::TaskStatus::Succeeded,
        TaskStatus::Failed => v1::TaskStatus::Failed,
        TaskStatus::Cancelled => v1::TaskStatus::Cancelled,
        TaskStatus::Expired => v1::TaskStatus::Expired,
    }
}

/// A request's status filter: UNSPECIFIED is none; a number no status has is refused.
pub(crate) fn status_filter(raw: i32) -> Result<Option<TaskStatus>, ApiError> {
    if raw == i32::from(v1::TaskStatus::Unspecified) {
        return Ok(None);
    }
    TaskStatus::ALL
        .into_iter()
        .find(|&status| i32::from(status_to_proto(status)) == raw)
        .map(Some)
        .ok_or_else(|| ApiError::InvalidArgument(format!("unknown task status {raw}")))
}

pub(crate) fn stats_to_proto(stats: &Stats) -> v1::GetStatsResponse {
    let mut totals = WorkerFigures::default();
    let workers = stats
        .workers
        .iter()
        .map(|record| {
            let figures = &record.figures;
            // Figures read from the database: never trusted not to overflow.
            totals.succeeded = totals.succeeded.saturating_add(figures.succeeded);
            totals.failed = totals.failed.saturating_add(figures.failed);
            totals.total = totals.total.saturating_add(figures.total);
            totals.run_times.merge(&figures.run_times);
            let mut wire = worker_stats(&record.worker_id, figures);
            wire.last_seen = Some(timestamp(record.last_seen));
            wire
        })
        .collect();
    let mut totals = worker_stats("", &totals);
    totals.last_seen = stats
        .workers
        .iter()
        .map(|record| record.last_seen)
        .max()
        .map(timestamp);
    v1::GetStatsResponse {
        workers,
        totals: Some(totals),
        queue_depth: stats.queue_depth,
        tasks_by_status: stats
            .by_status
            .iter()
            .map(|(&status, &count)| (status_to_proto(status).as_str_name().to_owned(), count))
            .collect(),
    }
}

fn worker_stats(worker_id: &str, figures: &WorkerFigures) -> v1::WorkerStats {
    v1::WorkerStats {
        worker_id: worker_id.to_owned(),
        succeeded: figures.succeeded,
        failed: figures.failed,
        total: figures.total,
        mean_run_time: Some(dalc_proto::duration_of(figures.run_times.mean())),
        p99_run_time: Some(dalc_proto::duration_of(figures.run_times.quantile(0.99))),
        last_seen: None,
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_wire_name() {
        for status in TaskStatus::ALL {
            let wire = status_to_proto(status).as_str_name();
            assert_eq!(wire, format!("TASK_STATUS_{}", status.as_str()));
        }
    }

    #[test]
    fn unset_fields_are_empty() {
        let task = Task::new("1 + 1", None);
        let wire = task_to_proto(&task);
        assert_eq!(wire.id, task.id.to_string());
        assert_eq!(wire.status, i32::from(v1::TaskStatus::Pending));
        assert_eq!((wire.result.as_str(), wire.error.as_str()), ("", ""));
        assert!(wire.created_at.is_some() && wire.started_at.is_none());
    }
}
