//! Domain types to their `dalc.v1` wire form.

use chrono::{DateTime, Utc};
use dalc_domain::{Task, TaskStatus};
use dalc_proto::v1;

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
        priority: 0,
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
