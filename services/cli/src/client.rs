//! `dalc submit` and `dalc get`: a tonic client, with text or JSON output.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, Result};
use dalc_proto::v1::{
    GetTaskRequest, SubmitTaskRequest, Task, TaskStatus, task_service_client::TaskServiceClient,
};
use tonic::transport::Channel;

use crate::args::{ClientArgs, GetArgs, SubmitArgs};

/// Exit code when the call worked but the task ended FAILED, EXPIRED or CANCELLED.
pub const EXIT_TASK_UNSUCCESSFUL: u8 = 3;

/// The server's wait when a request sets no timeout (see `dalc gateway --help`).
const SERVER_DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How much longer than its wait a call may take: the round trip and the server's own steps.
const CALL_MARGIN: Duration = Duration::from_secs(5);
/// The deadline of a call that does not wait.
const QUICK_CALL: Duration = Duration::from_secs(10);

/// A request with a gRPC deadline: no CLI call can hang, whatever the server does.
fn with_deadline<T>(message: T, wait: bool, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let deadline = match wait {
        true => timeout
            .unwrap_or(SERVER_DEFAULT_WAIT)
            .saturating_add(CALL_MARGIN),
        false => QUICK_CALL,
    };
    request.set_timeout(deadline);
    request
}

pub async fn submit(args: SubmitArgs) -> Result<u8> {
    let mut client = connect(&args.client).await?;
    let timeout = args.client.timeout.map(|t| t.0);
    let wait = !args.no_wait;
    let request = SubmitTaskRequest {
        expression: args.expression,
        wait,
        timeout: timeout.map(to_proto_duration),
        ..Default::default()
    };
    let response = client
        .submit_task(with_deadline(request, wait, timeout))
        .await
        .map_err(status_error)?;
    report(response.into_inner().task, &args.client)
}

pub async fn get(args: GetArgs) -> Result<u8> {
    let mut client = connect(&args.client).await?;
    let timeout = args.client.timeout.map(|t| t.0);
    let request = GetTaskRequest {
        id: args.id,
        wait: args.wait,
        timeout: timeout.map(to_proto_duration),
    };
    let response = client
        .get_task(with_deadline(request, args.wait, timeout))
        .await
        .map_err(status_error)?;
    report(response.into_inner().task, &args.client)
}

pub async fn connect(args: &ClientArgs) -> Result<TaskServiceClient<Channel>> {
    let endpoint = Channel::from_shared(args.addr.clone())
        .with_context(|| format!("invalid gateway address {:?}", args.addr))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", args.addr))?;
    Ok(TaskServiceClient::new(channel))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn report(task: Option<Task>, args: &ClientArgs) -> Result<u8> {
    let task = task.context("the gateway answered without a task")?;
    let text = if args.json {
        render_json(&task)
    } else {
        render_text(&task)
    };
    println!("{text}");
    let unsuccessful = matches!(
        task.status(),
        TaskStatus::Failed | TaskStatus::Expired | TaskStatus::Cancelled
    );
    Ok(if unsuccessful {
        EXIT_TASK_UNSUCCESSFUL
    } else {
        0
    })
}

fn render_text(task: &Task) -> String {
    let mut out = String::new();
    let status = task
        .status()
        .as_str_name()
        .trim_start_matches("TASK_STATUS_");
    let _ = writeln!(out, "id:          {}", task.id);
    let _ = writeln!(out, "expression:  {}", task.expression);
    let _ = write!(out, "status:      {status}");
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
    out
}

/// The proto3 JSON mapping (as grpcurl prints it): lowerCamelCase names, enum names,
/// RFC 3339 timestamps, default values omitted.
fn render_json(task: &Task) -> String {
    let mut object = serde_json::Map::new();
    let mut put = |key: &str, value: serde_json::Value| {
        object.insert(key.to_owned(), value);
    };
    put("id", task.id.clone().into());
    put("expression", task.expression.clone().into());
    put("status", task.status().as_str_name().into());
    for (key, text) in [
        ("result", &task.result),
        ("error", &task.error),
        ("workerId", &task.worker_id),
    ] {
        if !text.is_empty() {
            put(key, text.clone().into());
        }
    }
    for (key, at) in [
        ("createdAt", &task.created_at),
        ("startedAt", &task.started_at),
        ("finishedAt", &task.finished_at),
    ] {
        if let Some(at) = at.as_ref().and_then(rfc3339) {
            put(key, at.into());
        }
    }
    if task.attempts > 0 {
        put("attempts", task.attempts.into());
    }
    serde_json::Value::Object(object).to_string()
}

fn rfc3339(at: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(at.nanos).ok()?;
    let at = chrono::DateTime::from_timestamp(at.seconds, nanos)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
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
    }

    #[test]
    fn json_output_follows_the_proto3_mapping() {
        let json: serde_json::Value = serde_json::from_str(&render_json(&succeeded())).unwrap();
        assert_eq!(json["status"], "TASK_STATUS_SUCCEEDED");
        assert_eq!(json["result"], "2");
        assert_eq!(json["workerId"], "w1");
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["createdAt"], "1970-01-01T00:00:00Z");
        assert!(json.get("error").is_none());
    }
}
