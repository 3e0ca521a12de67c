//! How the client commands print what gateways answer: the proto3 JSON mapping (as grpcurl
//! prints it) and the text forms. The one place that knows the JSON field names.

use std::{fmt::Write as _, time::Duration};

use dalc_proto::v1::{GetStatsResponse, Task, TaskStatus, WorkerStats};
use serde_json::{Map, Value};

/// `SUCCEEDED` for `TASK_STATUS_SUCCEEDED`.
pub fn short_status(status: TaskStatus) -> &'static str {
    status.as_str_name().trim_start_matches("TASK_STATUS_")
}

pub fn is_terminal(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired
    )
}

/// The task for people: one field a line.
pub fn render_text(task: &Task) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", task.id);
    let _ = writeln!(out, "expression:  {}", task.expression);
    let _ = write!(out, "status:      {}", short_status(task.status()));
    if !task.result.is_empty() {
        let _ = write!(out, "\nresult:      {}", task.result);
    }
    if !task.error.is_empty() {
        let _ = write!(out, "\nerror:       {}", task.error);
    }
    if !task.worker_id.is_empty() {
        let _ = write!(
            out,
            "\nworker:      {} (attempt {})",
            task.worker_id, task.attempts
        );
    }
    if task.priority > 0 {
        let _ = write!(out, "\npriority:    {}", task.priority);
    }
    out
}

/// One line per state, for `dalc watch`: `RUNNING    worker w1 (attempt 1)`.
pub fn render_change(task: &Task) -> String {
    let status = short_status(task.status());
    let detail = match task.status() {
        TaskStatus::Succeeded => format!("result {}", task.result),
        TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired => {
            format!("error {}", task.error)
        }
        TaskStatus::Running => format!("worker {} (attempt {})", task.worker_id, task.attempts),
        TaskStatus::Pending | TaskStatus::Unspecified => format!("id {}", task.id),
    };
    format!("{status:<10} {detail}")
}

/// The task in the proto3 JSON mapping, as one line of text.
pub fn render_json(task: &Task) -> String {
    task_json(task).to_string()
}

/// The proto3 JSON mapping (as grpcurl prints it), the one the HTTP API uses.
pub fn task_json(task: &Task) -> Value {
    dalc_http::json::task(task)
}

/// `{"index": n, "task": {…}}`, one line of `dalc submit -f --json`.
pub fn batch_json(index: usize, task: &Task) -> String {
    let mut object = Map::new();
    object.insert("index".into(), index.into());
    object.insert("task".into(), task_json(task));
    Value::Object(object).to_string()
}

/// GetStats in the proto3 JSON mapping (64-bit integers as strings, as the mapping says).
pub fn stats_json(stats: &GetStatsResponse) -> Value {
    dalc_http::json::stats(stats)
}

/// The stats for people: a table of workers, the totals, the queue and the tasks by status.
pub fn stats_text(stats: &GetStatsResponse) -> String {
    let header = [
        "WORKER",
        "SUCCEEDED",
        "FAILED",
        "TOTAL",
        "MEAN",
        "P99",
        "LAST SEEN",
    ];
    let mut rows: Vec<Vec<String>> = stats.workers.iter().map(worker_row).collect();
    if let Some(totals) = &stats.totals {
        let mut row = worker_row(totals);
        row[0] = "(all)".into();
        row[6] = String::new();
        rows.push(row);
    }
    let mut out = table(&header, &rows);
    let _ = write!(out, "\nqueue depth: {}", stats.queue_depth);
    let mut by_status: Vec<(&String, &u64)> = stats.tasks_by_status.iter().collect();
    by_status.sort_by_key(|(status, _)| {
        TaskStatus::from_str_name(status).map_or(i32::MAX, |s| s as i32)
    });
    let by_status: Vec<String> = by_status
        .into_iter()
        .map(|(status, count)| format!("{} {count}", status.trim_start_matches("TASK_STATUS_")))
        .collect();
    let _ = write!(
        out,
        "\ntasks:       {}",
        if by_status.is_empty() {
            "none".to_owned()
        } else {
            by_status.join(", ")
        }
    );
    out
}

fn worker_row(worker: &WorkerStats) -> Vec<String> {
    vec![
        worker.worker_id.clone(),
        worker.succeeded.to_string(),
        worker.failed.to_string(),
        worker.total.to_string(),
        worker
            .mean_run_time
            .as_ref()
            .map_or_else(|| "-".into(), human_duration),
        worker
            .p99_run_time
            .as_ref()
            .map_or_else(|| "-".into(), human_duration),
        worker
            .last_seen
            .as_ref()
            .and_then(rfc3339_seconds)
            .unwrap_or_else(|| "-".into()),
    ]
}

/// `dalc list`: one task a row.
pub fn tasks_text(tasks: &[Task]) -> String {
    let header = ["ID", "STATUS", "CREATED", "EXPRESSION", "RESULT / ERROR"];
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|task| {
            let outcome = if task.result.is_empty() {
                &task.error
            } else {
                &task.result
            };
            vec![
                task.id.clone(),
                short_status(task.status()).to_owned(),
                task.created_at
                    .as_ref()
                    .and_then(rfc3339_seconds)
                    .unwrap_or_else(|| "-".into()),
                clip(&task.expression, 40),
                clip(outcome, 60),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// Left-aligned columns two spaces apart; no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for (n, row) in std::iter::once(&header).chain(rows).enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
    }
    out
}

/// At most `max` characters, an ellipsis marking the cut; newlines shown as spaces, so that
/// one task stays one row.
fn clip(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn rfc3339_seconds(at: &prost_types::Timestamp) -> Option<String> {
    let at = chrono::DateTime::from_timestamp(at.seconds, 0)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `12.3ms`, `1.20s`: a run time for a table.
fn human_duration(duration: &prost_types::Duration) -> String {
    let Ok(duration) = Duration::try_from(*duration) else {
        return "-".into();
    };
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn succeeded() -> Task {
        Task {
            id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            expression: "1 + 1".into(),
            status: TaskStatus::Succeeded.into(),
            result: "2".into(),
            worker_id: "w1".into(),
            attempts: 1,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Task::default()
        }
    }

    #[test]
    fn text_output_reads_well() {
        let text = render_text(&succeeded());
        assert!(text.contains("status:      SUCCEEDED"), "{text}");
        assert!(text.contains("result:      2"), "{text}");
        assert!(!text.contains("error"), "{text}");
        assert!(!text.contains("priority"), "{text}");
    }

    #[test]
    fn json_output_follows_the_proto3_mapping() {
        let json: Value = serde_json::from_str(&render_json(&succeeded())).unwrap();
        assert_eq!(json["status"], "TASK_STATUS_SUCCEEDED");
        assert_eq!(json["result"], "2");
        assert_eq!(json["workerId"], "w1");
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["createdAt"], "1970-01-01T00:00:00Z");
        assert!(json.get("error").is_none());
        assert!(json.get("priority").is_none());
        let urgent = Task {
            priority: 7,
            ..succeeded()
        };
        assert_eq!(task_json(&urgent)["priority"], 7);
        let line: Value = serde_json::from_str(&batch_json(4, &urgent)).unwrap();
        assert_eq!(
            (line["index"].as_u64(), &line["task"]["priority"]),
            (Some(4), &Value::from(7))
        );
    }

    #[test]
    fn watch_lines_say_what_changed() {
        assert_eq!(render_change(&succeeded()), "SUCCEEDED  result 2");
        let running = Task {
            status: TaskStatus::Running.into(),
            ..succeeded()
        };
        assert_eq!(render_change(&running), "RUNNING    worker w1 (attempt 1)");
    }

    #[test]
    fn stats_render_as_json_and_as_a_table() {
        let worker = WorkerStats {
            worker_id: "w1".into(),
            succeeded: 9,
            failed: 1,
            total: 10,
            mean_run_time: Some(prost_types::Duration {
                seconds: 0,
                nanos: 2_500_000,
            }),
            p99_run_time: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            last_seen: Some(prost_types::Timestamp {
                seconds: 60,
                nanos: 5,
            }),
        };
        let stats = GetStatsResponse {
            workers: vec![worker.clone()],
            totals: Some(WorkerStats {
                worker_id: String::new(),
                ..worker
            }),
            queue_depth: 3,
            tasks_by_status: [
                ("TASK_STATUS_SUCCEEDED".to_owned(), 9),
                ("TASK_STATUS_PENDING".to_owned(), 3),
            ]
            .into(),
        };
        let json = stats_json(&stats);
        assert_eq!(json["workers"][0]["workerId"], "w1");
        assert_eq!(json["workers"][0]["succeeded"], "9");
        assert_eq!(json["workers"][0]["meanRunTime"], "0.002500s");
        assert_eq!(
            json["workers"][0]["lastSeen"],
            "1970-01-01T00:01:00.000000005Z"
        );
        assert!(json["totals"].get("workerId").is_none());
        assert_eq!(json["queueDepth"], "3");
        assert_eq!(json["tasksByStatus"]["TASK_STATUS_PENDING"], "3");

        let text = stats_text(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("WORKER  SUCCEEDED  FAILED  TOTAL"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("w1      9          1       10     2.5ms"),
            "{text}"
        );
        assert!(lines[2].starts_with("(all)"), "{text}");
        assert!(text.contains("queue depth: 3"), "{text}");
        assert!(
            text.contains("tasks:       PENDING 3, SUCCEEDED 9"),
            "{text}"
        );
    }

    #[test]
    fn task_tables_keep_one_task_a_row() {
        let odd = Task {
            expression: format!("1 +\n{}", "2 + ".repeat(30)),
            ..succeeded()
        };
        let text = tasks_text(&[succeeded(), odd]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[2].contains('…'), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
    }
}
