//! The proto3 JSON mapping of the response messages, written by hand so that a task reads the
//! same over HTTP as over gRPC (grpcurl) and in `dalc get --json`: lowerCamelCase names, enum
//! names, uint64 as decimal strings, RFC 3339 UTC timestamps, Durations as `"1.500s"`, and
//! a task's fields holding their default value left out, as grpcurl prints them. The counts and
//! positions around tasks (a batch item's `index`, the queue depth, a worker's counts) are
//! always written, zero too, as proto3 JSON allows: a client reading `results[0].index` or
//! `queueDepth` should not have to know that zero is written as nothing.

use dalc_proto::v1::{
    GetStatsResponse, ListTasksResponse, SubmitBatchResponse, Task, TaskStatus, WorkerStats,
};
use serde_json::{Map, Value};

/// A task as a JSON object, field for field as `render_json` in the CLI (plus `priority`, which
/// the proto gained later). `status` is always present, as the CLI prints it.
pub fn task(task: &Task) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), task.id.clone().into());
    object.insert("expression".into(), task.expression.clone().into());
    object.insert("status".into(), status_name(task.status).into());
    for (key, text) in [
        ("result", &task.result),
        ("error", &task.error),
        ("workerId", &task.worker_id),
    ] {
        if !text.is_empty() {
            object.insert(key.into(), text.clone().into());
        }
    }
    for (key, at) in [
        ("createdAt", &task.created_at),
        ("startedAt", &task.started_at),
        ("finishedAt", &task.finished_at),
    ] {
        if let Some(at) = at.as_ref().and_then(timestamp) {
            object.insert(key.into(), at.into());
        }
    }
    if task.attempts > 0 {
        object.insert("attempts".into(), task.attempts.into());
    }
    if task.priority > 0 {
        object.insert("priority".into(), task.priority.into());
    }
    Value::Object(object)
}

/// `{"task": ...}`: the body of SubmitTask, GetTask, CancelTask and one WatchTask event. An
/// absent task (never sent by the gateway) is left out, as proto3 JSON does.
pub fn task_envelope(value: Option<&Task>) -> Value {
    let mut object = Map::new();
    if let Some(value) = value {
        object.insert("task".into(), task(value));
    }
    Value::Object(object)
}

/// The ListTasks body: `{"tasks": [...], "nextPageToken": "..."}`, each omitted when empty.
pub fn list(response: &ListTasksResponse) -> Value {
    let mut object = Map::new();
    if !response.tasks.is_empty() {
        object.insert(
            "tasks".into(),
            Value::Array(response.tasks.iter().map(task).collect()),
        );
    }
    if !response.next_page_token.is_empty() {
        object.insert(
            "nextPageToken".into(),
            response.next_page_token.clone().into(),
        );
    }
    Value::Object(object)
}

/// One SubmitBatch item: `{"index": n, "task": ...}`.
pub fn batch_item(item: &SubmitBatchResponse) -> Value {
    let mut object = Map::new();
    object.insert("index".into(), item.index.into());
    if let Some(value) = &item.task {
        object.insert("task".into(), task(value));
    }
    Value::Object(object)
}

/// The GetStats body.
pub fn stats(response: &GetStatsResponse) -> Value {
    let mut object = Map::new();
    if !response.workers.is_empty() {
        object.insert(
            "workers".into(),
            Value::Array(response.workers.iter().map(worker).collect()),
        );
    }
    if let Some(totals) = &response.totals {
        object.insert("totals".into(), worker(totals));
    }
    object.insert("queueDepth".into(), response.queue_depth.to_string().into());
    if !response.tasks_by_status.is_empty() {
        // Map entries are always written, zero or not; sorted so the output is stable.
        let mut entries: Vec<_> = response.tasks_by_status.iter().collect();
        entries.sort();
        let map = entries
            .into_iter()
            .map(|(key, count)| (key.clone(), Value::from(count.to_string())))
            .collect();
        object.insert("tasksByStatus".into(), Value::Object(map));
    }
    Value::Object(object)
}

fn worker(stats: &WorkerStats) -> Value {
    let mut object = Map::new();
    if !stats.worker_id.is_empty() {
        object.insert("workerId".into(), stats.worker_id.clone().into());
    }
    for (key, count) in [
        ("succeeded", stats.succeeded),
        ("failed", stats.failed),
        ("total", stats.total),
    ] {
        object.insert(key.into(), count.to_string().into());
    }
    for (key, value) in [
        ("meanRunTime", &stats.mean_run_time),
        ("p99RunTime", &stats.p99_run_time),
    ] {
        if let Some(text) = value.as_ref().and_then(dalc_proto::duration_json) {
            object.insert(key.into(), text.into());
        }
    }
    if let Some(at) = stats.last_seen.as_ref().and_then(timestamp) {
        object.insert("lastSeen".into(), at.into());
    }
    Value::Object(object)
}

/// The enum value's name; a number this build does not know reads as UNSPECIFIED, as
/// `Task::status()` does in the CLI.
pub fn status_name(status: i32) -> &'static str {
    TaskStatus::try_from(status)
        .unwrap_or(TaskStatus::Unspecified)
        .as_str_name()
}

/// RFC 3339 in UTC with `Z` and 0, 3, 6 or 9 fractional digits; `None` when out of range.
pub fn timestamp(at: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(at.nanos).ok()?;
    let at = chrono::DateTime::from_timestamp(at.seconds, nanos)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Duration, Timestamp};

    #[test]
    fn a_task_reads_as_the_cli_prints_it() {
        let value = task(&Task {
            id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            expression: "1 + 1".into(),
            status: TaskStatus::Succeeded.into(),
            result: "2".into(),
            worker_id: "w1".into(),
            attempts: 1,
            created_at: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            started_at: Some(Timestamp {
                seconds: 1,
                nanos: 5_000_000,
            }),
            ..Task::default()
        });
        assert_eq!(
            value,
            serde_json::json!({
                "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                "expression": "1 + 1",
                "status": "TASK_STATUS_SUCCEEDED",
                "result": "2",
                "workerId": "w1",
                "createdAt": "1970-01-01T00:00:00Z",
                "startedAt": "1970-01-01T00:00:01.005Z",
                "attempts": 1,
            })
        );
    }

    #[test]
    fn stats_write_uint64_as_strings_and_every_count() {
        let mut response = GetStatsResponse {
            workers: vec![WorkerStats {
                worker_id: "w1".into(),
                succeeded: 3,
                total: 3,
                mean_run_time: Some(Duration {
                    seconds: 0,
                    nanos: 2_000_000,
                }),
                ..WorkerStats::default()
            }],
            totals: Some(WorkerStats::default()),
            queue_depth: 0,
            ..GetStatsResponse::default()
        };
        response
            .tasks_by_status
            .insert("TASK_STATUS_PENDING".into(), 0);
        assert_eq!(
            stats(&response),
            serde_json::json!({
                "workers": [{"workerId": "w1", "succeeded": "3", "failed": "0", "total": "3", "meanRunTime": "0.002s"}],
                "totals": {"succeeded": "0", "failed": "0", "total": "0"},
                "queueDepth": "0",
                "tasksByStatus": {"TASK_STATUS_PENDING": "0"},
            })
        );
    }
}
