//! The client commands (`submit`, `get`, `watch`, `list`, `cancel`, `stats`): calls through
//! `dalc-client` (address lists, dns:///, health-checked round-robin, TLS, API keys), with
//! text or JSON output (see [`crate::render`]).
//!
//! Exit codes: 0 when the call worked, [`EXIT_TASK_UNSUCCESSFUL`] when the task ended FAILED,
//! EXPIRED or CANCELLED, 1 on an RPC error, printed as `Code: message`.

use std::time::Duration;

use anyhow::{Context, Result};
use dalc_client::{ClientOptions, DalcClient};
use dalc_proto::v1::{
    CancelTaskRequest, GetStatsRequest, GetTaskRequest, ListTasksRequest, SubmitTaskRequest, Task,
    TaskStatus, WatchTaskRequest,
};

use crate::{
    args::{CancelArgs, ConnectArgs, GetArgs, ListArgs, StatsArgs, SubmitArgs, WatchArgs},
    batch,
    duration::HumanDuration,
    render::{self, render_change, render_json, render_text},
};

/// Exit code when the call worked but the task ended FAILED, EXPIRED or CANCELLED.
pub const EXIT_TASK_UNSUCCESSFUL: u8 = 3;

/// The longest a gateway lets any call wait (its `--max-wait` default): a waiting call that names
/// no timeout gets a deadline past it, so the gateway's own default wait applies, whatever it is.
const LONGEST_SERVER_WAIT: Duration = dalc_gateway::GatewayConfig::DEFAULT_MAX_WAIT;
/// How much longer than its wait a call may take: the round trip and the server's own steps.
pub const CALL_MARGIN: Duration = Duration::from_secs(5);
/// The deadline of a call that does not wait.
const QUICK_CALL: Duration = Duration::from_secs(10);

/// A request with a gRPC deadline: no CLI call can hang, whatever the server does.
fn with_deadline<T>(message: T, wait: bool, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let deadline = match wait {
        true => timeout
            .unwrap_or(LONGEST_SERVER_WAIT)
            .saturating_add(CALL_MARGIN),
        false => QUICK_CALL,
    };
    request.set_timeout(deadline);
    request
}

pub async fn submit(args: SubmitArgs) -> Result<u8> {
    let Some(expression) = args.expression.clone() else {
        return batch::submit_file(args).await;
    };
    let mut client = connect(&args.client.connect).await?;
    let timeout = args.client.timeout.map(|t| t.0);
    let wait = !args.no_wait;
    let request = SubmitTaskRequest {
        expression,
        wait,
        timeout: timeout.map(dalc_proto::duration_of),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        priority: args.priority,
    };
    let response = client
        .submit_task(with_deadline(request, wait, timeout))
        .await
        .map_err(status_error)?;
    report(response.into_inner().task, args.client.connect.json)
}

pub async fn get(args: GetArgs) -> Result<u8> {
    let mut client = connect(&args.client.connect).await?;
    let timeout = args.client.timeout.map(|t| t.0);
    let request = GetTaskRequest {
        id: args.id,
        wait: args.wait,
        timeout: timeout.map(dalc_proto::duration_of),
    };
    let response = client
        .get_task(with_deadline(request, args.wait, timeout))
        .await
        .map_err(status_error)?;
    report(response.into_inner().task, args.client.connect.json)
}

/// Prints each state of the task as it arrives (text: a line per change; JSON: every message)
/// until the stream ends; exits as `get` would on the last state.
pub async fn watch(args: WatchArgs) -> Result<u8> {
    let mut client = connect(&args.connect).await?;
    let timeout = args.timeout.map(|timeout| timeout.0);
    let mut request = tonic::Request::new(WatchTaskRequest { id: args.id });
    if let Some(timeout) = timeout {
        // The gateway ends the stream by then too (a backstop: the watch stops here first).
        request.set_timeout(timeout.saturating_add(CALL_MARGIN));
    }
    let mut last: Option<Task> = None;
    let watching = async {
        let mut stream = client
            .watch_task(request)
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(message) = stream.message().await.map_err(status_error)? {
            let Some(task) = message.task else {
                continue;
            };
            if args.connect.json {
                say!("{}", render_json(&task));
            } else if last.as_ref().is_none_or(|l| l.status != task.status) {
                say!("{}", render_change(&task));
            }
            last = Some(task);
        }
        anyhow::Ok(())
    };
    match timeout {
        // Out of time: the task as last shown, as `get --wait` answers one still under way.
        Some(timeout) => match tokio::time::timeout(timeout, watching).await {
            Ok(watched) => watched?,
            Err(_) if last.is_some() => {}
            Err(_) => anyhow::bail!(
                "no answer from the gateway within {}",
                HumanDuration(timeout)
            ),
        },
        None => watching.await?,
    }
    let task = last.context("the watch ended without a task")?;
    Ok(exit_code(&task))
}

/// Pages through ListTasks until `--limit` tasks (or no more).
pub async fn list(args: ListArgs) -> Result<u8> {
    let mut client = connect(&args.connect).await?;
    let limit = args.limit as usize;
    let mut tasks: Vec<Task> = Vec::new();
    let mut page_token = String::new();
    loop {
        // The rest wanted; the server caps a page at its own maximum.
        let wanted = args
            .limit
            .saturating_sub(u32::try_from(tasks.len()).unwrap_or(u32::MAX));
        let request = ListTasksRequest {
            page_size: wanted,
            page_token,
            status: args.status.map_or(0, |s| s as i32),
        };
        let page = client
            .list_tasks(with_deadline(request, false, None))
            .await
            .map_err(status_error)?
            .into_inner();
        let got_none = page.tasks.is_empty();
        tasks.extend(page.tasks);
        // An empty page with a token would loop for ever on a confused server.
        if tasks.len() >= limit || page.next_page_token.is_empty() || got_none {
            break;
        }
        page_token = page.next_page_token;
    }
    tasks.truncate(limit);
    if args.connect.json {
        for task in &tasks {
            say!("{}", render_json(task));
        }
    } else if tasks.is_empty() {
        say!("no tasks");
    } else {
        say!("{}", render::tasks_text(&tasks));
    }
    Ok(0)
}

/// Cancels a PENDING task and prints it: CANCELLED is what was asked for, so it exits 0.
pub async fn cancel(args: CancelArgs) -> Result<u8> {
    let mut client = connect(&args.connect).await?;
    let request = CancelTaskRequest { id: args.id };
    let task = client
        .cancel_task(with_deadline(request, false, None))
        .await
        .map_err(status_error)?
        .into_inner()
        .task
        .context("the gateway answered without a task")?;
    print_task(&task, args.connect.json);
    Ok(match task.status() {
        TaskStatus::Cancelled => 0,
        _ => exit_code(&task),
    })
}

pub async fn stats(args: StatsArgs) -> Result<u8> {
    let mut client = connect(&args.connect).await?;
    let stats = client
        .get_stats(with_deadline(GetStatsRequest {}, false, None))
        .await
        .map_err(status_error)?
        .into_inner();
    if args.connect.json {
        say!("{}", render::stats_json(&stats));
    } else {
        say!("{}", render::stats_text(&stats));
    }
    Ok(0)
}

/// The options every client command connects with.
pub fn client_options(args: &ConnectArgs) -> ClientOptions {
    ClientOptions {
        api_key: args.api_key.clone(),
        ca_cert: args.ca_cert.clone(),
        ..ClientOptions::new(args.addrs.iter().cloned())
    }
}

pub async fn connect(args: &ConnectArgs) -> Result<DalcClient> {
    // The error names the addresses and why; it never holds the API key.
    Ok(dalc_client::connect(&client_options(args)).await?)
}

/// `Code: message`, as every client command prints an RPC error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    // tonic says CANCELLED "Timeout expired" of a call its own deadline ended.
    if status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
    {
        return anyhow::anyhow!(
            "{:?}: no answer from the gateway before the call's deadline",
            tonic::Code::DeadlineExceeded
        );
    }
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn report(task: Option<Task>, json: bool) -> Result<u8> {
    let task = task.context("the gateway answered without a task")?;
    print_task(&task, json);
    Ok(exit_code(&task))
}

fn print_task(task: &Task, json: bool) {
    let text = if json {
        render_json(task)
    } else {
        render_text(task)
    };
    say!("{text}");
}

fn exit_code(task: &Task) -> u8 {
    let unsuccessful = matches!(
        task.status(),
        TaskStatus::Failed | TaskStatus::Expired | TaskStatus::Cancelled
    );
    if unsuccessful {
        EXIT_TASK_UNSUCCESSFUL
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_its_deadline_ended_is_said_to_be_out_of_time() {
        let ended = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(
            status_error(ended).to_string(),
            "DeadlineExceeded: no answer from the gateway before the call's deadline"
        );
        let cancelled = tonic::Status::cancelled("the server went away");
        assert_eq!(
            status_error(cancelled).to_string(),
            "Cancelled: the server went away"
        );
    }
}
