//! The rest of the task API, in process (a real gateway and workers over the in-process queue
//! and SQLite, some on PostgreSQL too): watch, list, cancel, batches, idempotency, priorities,
//! stats, limits and tenants. Across processes over RabbitMQ: `services/cli/tests`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashSet, sync::Arc, time::Duration};

use dalc_gateway::{ApiKeys, GatewayConfig, keys_file_line};
use dalc_proto::v1::{
    CancelTaskRequest, GetStatsRequest, GetTaskRequest, ListTasksRequest, SubmitBatchRequest,
    SubmitTaskRequest, Task, TaskStatus, WatchTaskRequest,
};
use futures::StreamExt;
use tonic::{Code, Request};

mod common;
use common::{Stack, StackOptions, start};

/// Runs each scenario (an `async fn(database_url)`) once on SQLite and once on PostgreSQL.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => { $(
        mod $scenario {
            #[tokio::test]
            async fn on_sqlite() {
                super::$scenario(dalc_testkit::fresh_sqlite_database()).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let url = dalc_testkit::fresh_postgres_database().await;
                super::$scenario(url.clone()).await;
                dalc_testkit::drop_postgres_database(&url).await;
            }
        }
    )* };
}

on_both_databases!(
    pages_list_every_task_exactly_once_while_new_ones_arrive,
    a_batch_of_five_thousand_answers_every_index_once_correctly,
    keys_with_a_nul_are_invalid_and_store_nothing,
);

async fn stack_without_workers() -> Stack {
    start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
}

fn request(expression: &str, wait: bool) -> SubmitTaskRequest {
    SubmitTaskRequest {
        expression: expression.into(),
        wait,
        ..Default::default()
    }
}

async fn submit(stack: &mut Stack, request: SubmitTaskRequest) -> Task {
    stack.submitted(request).await
}

async fn get(stack: &mut Stack, id: &str) -> Task {
    let request = GetTaskRequest {
        id: id.into(),
        ..Default::default()
    };
    stack.got(request).await
}

/// Waits (up to 20 s) until `id` is terminal.
async fn await_end(stack: &mut Stack, id: &str) -> Task {
    let request = GetTaskRequest {
        id: id.into(),
        wait: true,
        timeout: Some(Duration::from_secs(20).try_into().unwrap()),
    };
    stack.got(request).await
}

// ---------------------------------------------------------------------------------- WatchTask

#[tokio::test]
async fn a_watch_sees_pending_then_running_then_succeeded_and_ends() {
    // About a tenth of a second of evaluation (RUNNING is stored and announced), and plain
    // arithmetic (a quick attempt: RUNNING is never stored), which a watch must show alike.
    for expression in ["tan(10^9999-1)", "6 * 7"] {
        let mut stack = stack_without_workers().await;
        let task = submit(&mut stack, request(expression, false)).await;
        let watch = WatchTaskRequest {
            id: task.id.clone(),
        };
        let mut changes = stack.client.watch_task(watch).await.unwrap().into_inner();
        let first = changes.next().await.unwrap().unwrap().task.unwrap();
        assert_eq!(first.status(), TaskStatus::Pending);
        stack.start_worker("watched-worker", 1);
        let mut seen = vec![first];
        while let Some(change) = tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("the watch ends by itself")
        {
            seen.push(change.unwrap().task.unwrap());
        }
        let statuses: Vec<_> = seen.iter().map(Task::status).collect();
        assert_eq!(
            statuses,
            [
                TaskStatus::Pending,
                TaskStatus::Running,
                TaskStatus::Succeeded
            ],
            "{expression}"
        );
        let (running, last) = (&seen[1], &seen[2]);
        assert_eq!(
            (running.attempts, running.worker_id.as_str()),
            (1, "watched-worker"),
            "{expression}"
        );
        assert!(running.result.is_empty() && running.finished_at.is_none());
        assert_eq!(last.worker_id, "watched-worker");
        assert!(!last.result.is_empty());
    }
}

#[tokio::test]
async fn watching_a_finished_task_shows_it_once_and_ends() {
    let mut stack = start(StackOptions::default()).await;
    let task = submit(&mut stack, request("1 + 1", true)).await;
    let watch = WatchTaskRequest { id: task.id };
    let changes: Vec<_> = stack
        .client
        .watch_task(watch)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(changes.len(), 1);
    let only = changes[0].as_ref().unwrap().task.as_ref().unwrap();
    assert_eq!(only.status(), TaskStatus::Succeeded);
}

/// A watch ends at its call's deadline, with DEADLINE_EXCEEDED after what it showed (tonic
/// enforces a deadline only until a stream's first message: a watch of a task that stayed
/// PENDING went on for as long as the task did).
#[tokio::test]
async fn a_watch_ends_at_its_deadline() {
    let mut stack = stack_without_workers().await;
    let task = submit(&mut stack, request("1 + 1", false)).await;
    let mut watch = tonic::Request::new(WatchTaskRequest { id: task.id });
    watch.set_timeout(Duration::from_secs(2));
    let changes = stack.client.watch_task(watch).await.unwrap().into_inner();
    let changes: Vec<_> = tokio::time::timeout(Duration::from_secs(30), changes.collect())
        .await
        .expect("the watch ended");
    assert_eq!(changes.len(), 2, "{changes:?}");
    let shown = changes[0].as_ref().unwrap().task.as_ref().unwrap();
    assert_eq!(shown.status(), TaskStatus::Pending);
    let ended = changes[1].as_ref().unwrap_err();
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
}

#[tokio::test]
async fn watching_an_unknown_or_malformed_id_fails() {
    let mut stack = stack_without_workers().await;
    let unknown = WatchTaskRequest {
        id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
    };
    let status = stack.client.watch_task(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let malformed = WatchTaskRequest { id: "nope".into() };
    let status = stack.client.watch_task(malformed).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

// ---------------------------------------------------------------------------------- ListTasks

async fn list_page(
    stack: &mut Stack,
    page_size: u32,
    page_token: &str,
    status: TaskStatus,
) -> (Vec<Task>, String) {
    let request = ListTasksRequest {
        page_size,
        page_token: page_token.into(),
        status: status.into(),
    };
    let page = stack.client.list_tasks(request).await.unwrap().into_inner();
    (page.tasks, page.next_page_token)
}

async fn pages_list_every_task_exactly_once_while_new_ones_arrive(database_url: String) {
    let mut stack = start(StackOptions {
        database_url,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let mut before = HashSet::new();
    for n in 0..250 {
        before.insert(
            submit(&mut stack, request(&format!("{n} + 1"), false))
                .await
                .id,
        );
    }
    let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let (tasks, next) = list_page(&mut stack, 40, &token, TaskStatus::Unspecified).await;
        assert!(tasks.len() <= 40);
        listed.extend(tasks);
        pages += 1;
        // New tasks arrive between pages: they are newer than every cursor.
        for _ in 0..3 {
            submit(&mut stack, request("2 + 2", false)).await;
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let ids: Vec<&String> = listed.iter().map(|task| &task.id).collect();
    let unique: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a task was listed twice");
    assert_eq!(listed.len(), 250, "in {pages} pages");
    assert!(listed.iter().all(|task| before.contains(&task.id)));
    let created: Vec<_> = listed
        .iter()
        .map(|task| {
            let at = task.created_at.unwrap();
            (at.seconds, at.nanos)
        })
        .collect();
    assert!(
        created.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first"
    );
}

#[tokio::test]
async fn a_page_of_long_tasks_is_cut_to_fit_one_message() {
    // 60 tasks of 2 KiB expressions do not fit a 64 KiB message: the page ends early and
    // says where to go on, and the pages together hold every task.
    let mut stack = start(StackOptions {
        workers: 0,
        configure: Box::new(|config: &mut GatewayConfig| config.max_message_bytes = 64 * 1024),
        ..StackOptions::default()
    })
    .await;
    let long = vec!["1"; 1024].join("+");
    for _ in 0..60 {
        submit(&mut stack, request(&long, false)).await;
    }
    let (first, mut token) = list_page(&mut stack, 1000, "", TaskStatus::Unspecified).await;
    assert!(!first.is_empty() && first.len() < 60, "{}", first.len());
    assert!(!token.is_empty(), "a cut page says where to go on");
    let mut listed = first.len();
    while !token.is_empty() {
        let (page, next) = list_page(&mut stack, 1000, &token, TaskStatus::Unspecified).await;
        listed += page.len();
        token = next;
    }
    assert_eq!(listed, 60);
}

#[tokio::test]
async fn lists_filter_by_status_default_to_a_hundred_and_refuse_bad_tokens() {
    let mut stack = start(StackOptions::default()).await;
    let failed = submit(&mut stack, request("1 / 0", true)).await;
    for _ in 0..120 {
        submit(&mut stack, request("1 + 1", true)).await;
    }
    let (only_failed, next) = list_page(&mut stack, 0, "", TaskStatus::Failed).await;
    assert_eq!(only_failed.len(), 1);
    assert_eq!(only_failed[0].id, failed.id);
    assert!(next.is_empty());
    let (page, next) = list_page(&mut stack, 0, "", TaskStatus::Unspecified).await;
    assert_eq!(page.len(), 100, "the default page");
    assert!(!next.is_empty());
    let (huge, _) = list_page(&mut stack, 1_000_000, "", TaskStatus::Unspecified).await;
    assert_eq!(huge.len(), 121, "a page is capped, never refused");
    for bad in ["garbage", "1.2", "12345"] {
        let request = ListTasksRequest {
            page_token: bad.into(),
            ..Default::default()
        };
        let status = stack.client.list_tasks(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("page token"),
            "{}",
            status.message()
        );
    }
}

// --------------------------------------------------------------------------------- CancelTask

async fn cancel(stack: &mut Stack, id: &str) -> Result<Task, tonic::Status> {
    let request = CancelTaskRequest { id: id.into() };
    Ok(stack
        .client
        .cancel_task(request)
        .await?
        .into_inner()
        .task
        .unwrap())
}

/// A gateway with no workers, and the metrics it counts into; `configure` adjusts the rest.
async fn stack_without_workers_counting(
    configure: impl FnOnce(&mut GatewayConfig) + 'static,
) -> (Stack, Arc<dalc_telemetry::Metrics>) {
    let metrics = Arc::new(dalc_telemetry::Metrics::default());
    let gateway_metrics = metrics.clone();
    let stack = start(StackOptions {
        workers: 0,
        configure: Box::new(move |config: &mut GatewayConfig| {
            config.metrics = gateway_metrics;
            configure(config);
        }),
        ..StackOptions::default()
    })
    .await;
    (stack, metrics)
}

#[tokio::test]
async fn a_task_the_gateway_expires_is_counted_by_the_gateway() {
    let (mut stack, metrics) = stack_without_workers_counting(|config| {
        config.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let mut doomed = request("6 * 7", false);
    doomed.timeout = Some(Duration::from_millis(300).try_into().unwrap());
    let task = submit(&mut stack, doomed).await;
    // No worker: its deadline passes unrun, and the gateway ends it.
    let ended = await_end(&mut stack, &task.id).await;
    assert_eq!(ended.status(), TaskStatus::Expired);
    // The long poll may read the stored end (it polls the database too) a moment before the
    // gateway's own path counts it.
    let counted = "dalc_tasks_finished_total{status=\"EXPIRED\"} 1\n";
    let patience = Duration::from_secs(5);
    let seen = dalc_testkit::eventually(patience, async || metrics.render().contains(counted));
    assert!(seen.await, "{}", metrics.render());
}

#[tokio::test]
async fn a_cancelled_task_never_runs_even_behind_a_backlog() {
    let (mut stack, metrics) = stack_without_workers_counting(|_| {}).await;
    let mut backlog = Vec::new();
    for n in 0..200 {
        backlog.push(submit(&mut stack, request(&format!("{n} * 2"), false)).await);
    }
    let victim = backlog[150].id.clone();
    let cancelled = cancel(&mut stack, &victim).await.unwrap();
    assert_eq!(cancelled.status(), TaskStatus::Cancelled);
    assert!(!cancelled.error.is_empty());
    // Cancelling again answers the task unchanged.
    let again = cancel(&mut stack, &victim).await.unwrap();
    assert_eq!(again.status(), TaskStatus::Cancelled);
    assert_eq!(again.finished_at, cancelled.finished_at);
    // The gateway ended it, so the gateway counts it, once.
    let text = metrics.render();
    assert!(
        text.contains("dalc_tasks_finished_total{status=\"CANCELLED\"} 1\n"),
        "{text}"
    );

    stack.start_worker("late-worker", 4);
    for task in &backlog {
        let ended = await_end(&mut stack, &task.id).await;
        if task.id == victim {
            assert_eq!(ended.status(), TaskStatus::Cancelled);
            assert_eq!(ended.attempts, 0, "a cancelled task never runs");
        } else {
            assert_eq!(ended.status(), TaskStatus::Succeeded);
        }
    }
    // A finished task cannot be cancelled: the answer names its status.
    let done = &backlog[0].id;
    let status = cancel(&mut stack, done).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("SUCCEEDED"),
        "{}",
        status.message()
    );
    let unknown = cancel(&mut stack, "67e55044-10b1-426f-9247-bb680e5fe0c8").await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
}

// -------------------------------------------------------------------------------- SubmitBatch

fn batch(expressions: Vec<String>) -> SubmitBatchRequest {
    SubmitBatchRequest {
        expressions,
        ..Default::default()
    }
}

async fn run_batch(stack: &mut Stack, request: SubmitBatchRequest) -> Vec<(u32, Task)> {
    let stream = stack
        .client
        .submit_batch(request)
        .await
        .unwrap()
        .into_inner();
    stream
        .map(|answer| {
            let answer = answer.unwrap();
            (answer.index, answer.task.unwrap())
        })
        .collect()
        .await
}

async fn a_batch_of_five_thousand_answers_every_index_once_correctly(database_url: String) {
    let mut stack = start(StackOptions {
        database_url,
        workers: 2,
        worker_concurrency: 16,
        ..StackOptions::default()
    })
    .await;
    let expressions: Vec<String> = (0..5000).map(|n| format!("{n} + 1")).collect();
    let mut request = batch(expressions);
    request.timeout = Some(Duration::from_secs(120).try_into().unwrap());
    let answers = run_batch(&mut stack, request).await;
    assert_eq!(answers.len(), 5000);
    let mut seen = vec![false; 5000];
    for (index, task) in &answers {
        let slot = &mut seen[*index as usize];
        assert!(!*slot, "index {index} answered twice");
        *slot = true;
        assert_eq!(task.status(), TaskStatus::Succeeded, "index {index}");
        assert_eq!(task.result, (index + 1).to_string(), "index {index}");
        assert_eq!(task.expression, format!("{index} + 1"));
    }
    assert_eq!(stack.store.all().await.unwrap().len(), 5000);
}

#[tokio::test]
async fn one_bad_expression_refuses_the_whole_batch_and_stores_nothing() {
    let mut stack = start(StackOptions::default()).await;
    let expressions = vec!["1 + 1".into(), "2 + 2".into(), "3 +".into(), "4".into()];
    let status = stack
        .client
        .submit_batch(batch(expressions))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("expression 2"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("column 4"),
        "{}",
        status.message()
    );
    assert!(stack.store.all().await.unwrap().is_empty());
    let status = stack
        .client
        .submit_batch(batch(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn batches_larger_than_the_setting_are_refused() {
    let mut stack = start(StackOptions {
        configure: Box::new(|config: &mut GatewayConfig| config.max_batch_size = 10),
        ..StackOptions::default()
    })
    .await;
    let expressions = (0..11).map(|n| n.to_string()).collect();
    let status = stack
        .client
        .submit_batch(batch(expressions))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("maximum of 10"),
        "{}",
        status.message()
    );
    let fine = run_batch(&mut stack, batch((0..10).map(|n| n.to_string()).collect())).await;
    assert_eq!(fine.len(), 10);
}

#[tokio::test]
async fn at_the_timeout_the_rest_of_a_batch_is_streamed_as_it_stands() {
    let mut stack = stack_without_workers().await;
    let mut request = batch(vec!["1".into(), "2".into(), "3".into()]);
    request.timeout = Some(Duration::from_millis(700).try_into().unwrap());
    let started = std::time::Instant::now();
    let answers = run_batch(&mut stack, request).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(answers.len(), 3);
    assert!(
        answers
            .iter()
            .all(|(_, t)| t.status() == TaskStatus::Pending)
    );
}

#[tokio::test]
async fn a_retried_batch_returns_the_same_tasks_and_runs_none_twice() {
    let mut stack = start(StackOptions::default()).await;
    let mut request = batch((0..50).map(|n| format!("{n} * 3")).collect());
    request.idempotency_key = "nightly-run-7".into();
    let first = run_batch(&mut stack, request.clone()).await;
    let again = run_batch(&mut stack, request.clone()).await;
    let ids = |answers: &[(u32, Task)]| {
        let mut ids: Vec<(u32, String)> = answers.iter().map(|(i, t)| (*i, t.id.clone())).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(stack.store.all().await.unwrap().len(), 50);
    assert!(again.iter().all(|(_, t)| t.attempts == 1));
    request.expressions[3] = "1 + 1".into();
    let status = stack.client.submit_batch(request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

// ------------------------------------------------------------------------- idempotency keys

#[tokio::test]
async fn an_idempotent_retry_returns_the_same_task_and_runs_it_once() {
    let mut stack = start(StackOptions::default()).await;
    let mut keyed = request("6 * 7", true);
    keyed.idempotency_key = "order-42".into();
    let first = submit(&mut stack, keyed.clone()).await;
    let retry = submit(&mut stack, keyed.clone()).await;
    assert_eq!(first.id, retry.id);
    assert_eq!(retry.result, "42");
    assert_eq!(retry.attempts, 1);
    // Concurrent retries (a client that timed out and tried again, twice at once).
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (mut client, mut call) = (stack.client.clone(), keyed.clone());
        call.wait = false;
        calls.push(tokio::spawn(async move { client.submit_task(call).await }));
    }
    for call in calls {
        assert_eq!(
            call.await.unwrap().unwrap().into_inner().task.unwrap().id,
            first.id
        );
    }
    assert_eq!(stack.store.all().await.unwrap().len(), 1);

    let mut other = keyed.clone();
    other.expression = "6 * 8".into();
    let status = stack.client.submit_task(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let mut long = keyed;
    long.idempotency_key = "k".repeat(129);
    let status = stack.client.submit_task(long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// PostgreSQL's text cannot hold a NUL: such a key was an INTERNAL error there, and stored on
/// SQLite.
async fn keys_with_a_nul_are_invalid_and_store_nothing(database_url: String) {
    let mut stack = start(StackOptions {
        database_url,
        ..StackOptions::default()
    })
    .await;
    for key in ["a\0b", "\0"] {
        let mut keyed = request("1 + 1", true);
        keyed.idempotency_key = key.into();
        let status = stack.client.submit_task(keyed).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?}: {status:?}");
        let batch = SubmitBatchRequest {
            expressions: vec!["1 + 1".into()],
            idempotency_key: key.into(),
            ..Default::default()
        };
        let status = stack.client.submit_batch(batch).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?}: {status:?}");
    }
    assert!(stack.store.all().await.unwrap().is_empty());
    // Any other character, control characters too, makes a key like any other.
    for (n, key) in ["é/✓ key", "tab\tand\nline", "\u{7f}\u{1}"]
        .into_iter()
        .enumerate()
    {
        let mut keyed = request(&format!("{n} + 1"), true);
        keyed.idempotency_key = key.into();
        let first = submit(&mut stack, keyed.clone()).await;
        assert_eq!(first.result, (n + 1).to_string());
        assert_eq!(submit(&mut stack, keyed).await.id, first.id, "{key:?}");
    }
}

/// Refuses the first `failures` publishes, then hands them to the in-process queue.
struct FlakyPublisher {
    failures: std::sync::atomic::AtomicUsize,
    queue: Arc<dalc_queue::memory::MemoryBroker>,
}

#[async_trait::async_trait]
impl dalc_queue::TaskPublisher for FlakyPublisher {
    async fn publish_task(
        &self,
        message: &dalc_queue::TaskMessage,
    ) -> Result<(), dalc_queue::QueueError> {
        use std::sync::atomic::Ordering;
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(dalc_queue::QueueError::Unavailable(
                "broker away (test)".into(),
            ));
        }
        self.queue.publish_task(message).await
    }
}

#[tokio::test]
async fn a_keyed_task_whose_publish_failed_runs_once_on_retry() {
    let queue = std::sync::Arc::new(dalc_queue::memory::MemoryBroker::new());
    let flaky = FlakyPublisher {
        failures: 1.into(),
        queue: queue.clone(),
    };
    let mut stack = start(StackOptions {
        broker: Some(queue),
        publisher: Some(std::sync::Arc::new(flaky)),
        configure: Box::new(|config: &mut GatewayConfig| {
            config.sweep_interval = Duration::from_millis(200);
            config.sweep_grace = Duration::from_millis(500);
        }),
        ..StackOptions::default()
    })
    .await;
    let mut keyed = request("20 + 22", true);
    keyed.idempotency_key = "pay-once".into();
    let status = stack.client.submit_task(keyed.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // The retry finds the task runnable (not FAILED), and the sweeper queues it: it runs once.
    let retried = submit(&mut stack, keyed).await;
    assert_eq!(retried.status(), TaskStatus::Succeeded, "{retried:?}");
    assert_eq!(retried.result, "42");
    assert_eq!(retried.attempts, 1);
    assert_eq!(stack.store.all().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unknown_list_status_is_refused() {
    let mut stack = stack_without_workers().await;
    let request = ListTasksRequest {
        status: 42,
        ..Default::default()
    };
    let status = stack.client.list_tasks(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

// -------------------------------------------------------------------------------- priorities

#[tokio::test]
async fn a_sync_task_overtakes_a_thousand_queued_async_ones() {
    let mut stack = stack_without_workers().await;
    let mut backlog = Vec::new();
    for n in 0..1000 {
        backlog.push(
            submit(&mut stack, request(&format!("{n} + 0"), false))
                .await
                .id,
        );
    }
    let mut client = stack.client.clone();
    let interactive =
        tokio::spawn(async move { client.submit_task(request("40 + 2", true)).await });
    // The sync call is queued behind the backlog before any worker starts.
    for _ in 0..500 {
        if stack.broker.depth() == 1001 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.broker.depth(), 1001, "the sync call is queued");
    stack.start_worker("one-worker", 1);
    let answer = interactive
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(answer.result, "42");
    let done_at = |task: &Task| task.finished_at.map(|at| (at.seconds, at.nanos));
    let mut ran_first = 0;
    for id in &backlog {
        let task = get(&mut stack, id).await;
        if task.finished_at.is_some() && done_at(&task) < done_at(&answer) {
            ran_first += 1;
        }
    }
    assert!(ran_first < 100, "{ran_first} of the backlog ran first");
    assert_eq!(
        answer.priority, 5,
        "sync calls rank above deferred work by default"
    );
}

#[tokio::test]
async fn priorities_outside_zero_to_nine_are_refused() {
    let mut stack = stack_without_workers().await;
    let mut high = request("1", false);
    high.priority = 10;
    let status = stack.client.submit_task(high).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut nine = request("1", false);
    nine.priority = 9;
    assert_eq!(submit(&mut stack, nine).await.priority, 9);
}

// ---------------------------------------------------------------------------------- GetStats

#[tokio::test]
async fn stats_count_each_workers_tasks_and_match_the_database() {
    let mut stack = start(StackOptions::default()).await;
    for n in 0..15 {
        submit(&mut stack, request(&format!("{n} + 1"), true)).await;
    }
    for _ in 0..5 {
        submit(&mut stack, request("1 / 0", true)).await;
    }
    // Workers store their figures about once a second.
    let mut stats = None;
    for _ in 0..50 {
        let answer = stack
            .client
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if answer
            .totals
            .as_ref()
            .is_some_and(|totals| totals.total == 20)
        {
            stats = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = stats.expect("the worker's figures arrive");
    assert_eq!(stats.workers.len(), 1);
    let worker = &stats.workers[0];
    assert_eq!(worker.worker_id, "test-worker");
    assert_eq!((worker.succeeded, worker.failed, worker.total), (15, 5, 20));
    let mean = worker.mean_run_time.unwrap();
    let p99 = worker.p99_run_time.unwrap();
    assert!((p99.seconds, p99.nanos) >= (0, 0) && (mean.seconds, mean.nanos) >= (0, 0));
    assert!(worker.last_seen.is_some());
    assert_eq!(stats.queue_depth, 0);
    assert_eq!(
        stats.tasks_by_status.get("TASK_STATUS_SUCCEEDED"),
        Some(&15)
    );
    assert_eq!(stats.tasks_by_status.get("TASK_STATUS_FAILED"), Some(&5));
    let stored = stack.store.all().await.unwrap();
    let succeeded = stored
        .iter()
        .filter(|t| t.status == dalc_domain::TaskStatus::Succeeded);
    assert_eq!(succeeded.count(), 15);
}

// ------------------------------------------------------------------------------------ limits

#[tokio::test]
async fn a_full_queue_is_resource_exhausted_at_once() {
    let mut stack = start(StackOptions {
        workers: 0,
        max_queue_length: Some(5),
        ..StackOptions::default()
    })
    .await;
    for n in 0..5 {
        submit(&mut stack, request(&n.to_string(), false)).await;
    }
    let started = std::time::Instant::now();
    let status = stack
        .client
        .submit_task(request("6", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(2));
    let status = stack
        .client
        .submit_batch(batch(vec!["7".into(), "8".into()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Nothing stranded: what could not be queued is ended, never left PENDING.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = stack
        .store
        .all()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.status == dalc_domain::TaskStatus::Pending)
        .count();
    assert_eq!(pending, 5);
}

#[tokio::test]
async fn waiting_calls_past_the_cap_are_resource_exhausted_and_store_nothing() {
    let mut stack = start(StackOptions {
        workers: 0,
        configure: Box::new(|config: &mut GatewayConfig| config.max_waiting_calls = 2),
        ..StackOptions::default()
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut client = stack.client.clone();
        holders.push(tokio::spawn(async move {
            client.submit_task(request("1", true)).await
        }));
    }
    // Both holders are stored and waiting before the third call.
    for _ in 0..250 {
        if stack.store.all().await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = stack
        .client
        .submit_task(request("2", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(stack.store.all().await.unwrap().len(), 2);
    // Async calls do not wait, so they are not capped.
    submit(&mut stack, request("3", false)).await;
    for holder in holders {
        holder.abort();
    }
}

#[tokio::test]
async fn messages_past_the_size_limit_are_refused() {
    let mut stack = start(StackOptions {
        configure: Box::new(|config: &mut GatewayConfig| config.max_message_bytes = 1024),
        ..StackOptions::default()
    })
    .await;
    let big = vec!["1".to_owned(); 1000];
    let status = stack.client.submit_batch(batch(big)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    submit(&mut stack, request("1 + 1", true)).await;
}

// ----------------------------------------------------------------------------------- tenants

fn as_tenant<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn tenants_see_only_their_own_tasks() {
    let keys = format!(
        "{}\n{}\n",
        keys_file_line("alpha", "key-of-alpha"),
        keys_file_line("beta", "key-of-beta")
    );
    let keys = ApiKeys::parse(&keys).unwrap();
    let mut stack = start(StackOptions {
        configure: Box::new(move |config: &mut GatewayConfig| config.api_keys = Some(keys)),
        ..StackOptions::default()
    })
    .await;
    let client = &mut stack.client;
    // No key, or a wrong one: UNAUTHENTICATED, for every RPC.
    let status = client.submit_task(request("1", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .submit_task(as_tenant(request("1", true), "key-of-gamma"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("key-of-gamma"));
    let status = client.get_stats(GetStatsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut keyed = request("1 + 2", true);
    keyed.idempotency_key = "shared-key".into();
    let alpha = client
        .submit_task(as_tenant(keyed.clone(), "key-of-alpha"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(alpha.result, "3");
    let id = alpha.id.clone();

    let not_found = |status: tonic::Status| assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let get = GetTaskRequest {
        id: id.clone(),
        ..Default::default()
    };
    not_found(
        client
            .get_task(as_tenant(get.clone(), "key-of-beta"))
            .await
            .unwrap_err(),
    );
    let watch = WatchTaskRequest { id: id.clone() };
    not_found(
        client
            .watch_task(as_tenant(watch, "key-of-beta"))
            .await
            .unwrap_err(),
    );
    let cancel = CancelTaskRequest { id: id.clone() };
    not_found(
        client
            .cancel_task(as_tenant(cancel, "key-of-beta"))
            .await
            .unwrap_err(),
    );
    let listed = client
        .list_tasks(as_tenant(ListTasksRequest::default(), "key-of-beta"))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty());
    let stats = client
        .get_stats(as_tenant(GetStatsRequest {}, "key-of-beta"))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.tasks_by_status.is_empty());
    // The same idempotency key is another task for another tenant.
    let beta = client
        .submit_task(as_tenant(keyed, "key-of-beta"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_ne!(beta.id, alpha.id);

    let mine = client
        .get_task(as_tenant(get, "key-of-alpha"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(mine.id, id);
    let listed = client
        .list_tasks(as_tenant(ListTasksRequest::default(), "key-of-alpha"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);
}

/// Every call answers before its gRPC deadline when the database accepts connections and
/// then never answers: UNAVAILABLE, not the client's own DEADLINE_EXCEEDED after the gateway
/// went on waiting.
#[tokio::test]
async fn every_call_answers_before_its_deadline_when_the_database_goes_silent() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let proxy =
        dalc_testkit::proxy::TcpProxy::start_new(dalc_testkit::postgres_server_addr()).await;
    let mut stack = start(StackOptions {
        database_url: dalc_testkit::postgres_url_at(&database, proxy.addr()),
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let id = submit(&mut stack, request("1 + 1", false)).await.id;
    proxy.blackhole();

    const DEADLINE: Duration = Duration::from_secs(2);
    fn within_deadline<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(DEADLINE);
        request
    }
    // The gateway's own answer, UNAVAILABLE: past the deadline the client would have given up
    // with a code of its own (CANCELLED or DEADLINE_EXCEEDED).
    let unavailable = |name: &str, answer: Result<(), tonic::Status>| {
        let status = answer.expect_err(name);
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
    };
    let mut client = stack.client.clone();
    let sync = request("2 + 2", true);
    let answer = client.submit_task(within_deadline(sync)).await;
    unavailable("SubmitTask", answer.map(drop));
    let get = GetTaskRequest {
        id: id.clone(),
        ..Default::default()
    };
    unavailable(
        "GetTask",
        client.get_task(within_deadline(get)).await.map(drop),
    );
    let watch = WatchTaskRequest { id: id.clone() };
    unavailable(
        "WatchTask",
        client.watch_task(within_deadline(watch)).await.map(drop),
    );
    let list = ListTasksRequest::default();
    unavailable(
        "ListTasks",
        client.list_tasks(within_deadline(list)).await.map(drop),
    );
    let cancel = CancelTaskRequest { id: id.clone() };
    unavailable(
        "CancelTask",
        client.cancel_task(within_deadline(cancel)).await.map(drop),
    );
    let batch = SubmitBatchRequest {
        expressions: vec!["3 + 3".into()],
        ..Default::default()
    };
    let answers = async {
        let mut answers = client
            .submit_batch(within_deadline(batch))
            .await?
            .into_inner();
        while answers.message().await?.is_some() {}
        Ok(())
    };
    unavailable("SubmitBatch", answers.await);
    let stats = GetStatsRequest {};
    unavailable(
        "GetStats",
        client.get_stats(within_deadline(stats)).await.map(drop),
    );
    proxy.restore();
    drop(stack);
    dalc_testkit::drop_postgres_database(&database).await;
}
