//! The API contract, in process: a real gateway and worker over the in-process queue and SQLite,
//! driven by a tonic client. (Across processes, RabbitMQ and PostgreSQL: `services/cli/tests`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use dalc_domain::TaskStatus as DomainStatus;
use dalc_gateway::GatewayConfig;
use dalc_proto::v1::{GetTaskRequest, SubmitTaskRequest, Task, TaskStatus};
use dalc_queue::{QueueError, TaskMessage, TaskPublisher};
use tonic::{Code, transport::Channel};

mod common;
use common::{Stack, StackOptions};

/// A gateway, and a worker unless `workers` is false, sharing one queue and one database.
async fn stack(workers: bool) -> Stack {
    stack_with(&dalc_testkit::fresh_sqlite_database(), workers, None).await
}

async fn stack_with(
    database_url: &str,
    workers: bool,
    publisher: Option<Arc<dyn TaskPublisher>>,
) -> Stack {
    stack_configured(database_url, workers, publisher, |_| {}).await
}

async fn stack_configured(
    database_url: &str,
    workers: bool,
    publisher: Option<Arc<dyn TaskPublisher>>,
    configure: impl FnOnce(&mut GatewayConfig) + 'static,
) -> Stack {
    common::start(StackOptions {
        database_url: database_url.to_owned(),
        workers: usize::from(workers),
        publisher,
        configure: Box::new(configure),
        ..StackOptions::default()
    })
    .await
}

fn submit(expression: &str, wait: bool) -> SubmitTaskRequest {
    SubmitTaskRequest {
        expression: expression.into(),
        wait,
        timeout: None,
        ..Default::default()
    }
}

fn get(id: &str, wait: bool, timeout: Option<Duration>) -> GetTaskRequest {
    GetTaskRequest {
        id: id.into(),
        wait,
        timeout: timeout.map(|t| t.try_into().unwrap()),
    }
}

async fn submit_ok(stack: &mut Stack, request: SubmitTaskRequest) -> Task {
    stack.submitted(request).await
}

#[tokio::test]
async fn sync_one_plus_one_is_two() {
    let mut stack = stack(true).await;
    let task = submit_ok(&mut stack, submit("1 + 1", true)).await;
    assert_eq!(task.status(), TaskStatus::Succeeded);
    assert_eq!(task.result, "2");
    assert_eq!(task.error, "");
    assert_eq!(task.worker_id, "test-worker");
    assert_eq!(task.attempts, 1);
    assert!(task.created_at.is_some() && task.started_at.is_some() && task.finished_at.is_some());
    assert_eq!(task.id, task.id.to_lowercase());
    assert_eq!(task.id.len(), 36);
}

/// More sync calls at once than a gateway stores and queues at once: the rest wait for their
/// turn, and every call gets its own answer.
#[tokio::test]
async fn a_burst_of_sync_calls_past_the_admission_limit_all_answer() {
    let stack = stack(true).await;
    let calls: Vec<_> = (0..600)
        .map(|n| {
            let mut client = stack.client.clone();
            let request = submit(&format!("{n} + 1"), true);
            tokio::spawn(async move { (n, client.submit_task(request).await) })
        })
        .collect();
    for call in calls {
        let (n, answer) = call.await.unwrap();
        let task = answer.unwrap().into_inner().task.unwrap();
        assert_eq!(task.status(), TaskStatus::Succeeded, "{n}");
        assert_eq!(task.result, (n + 1).to_string());
    }
}

#[tokio::test]
async fn async_submit_is_pending_then_polling_reaches_the_result() {
    let mut stack = stack(true).await;
    let task = submit_ok(&mut stack, submit("7 / 2", false)).await;
    assert_eq!(task.status(), TaskStatus::Pending);
    let mut seen = task;
    for _ in 0..200 {
        seen = stack.got(get(&seen.id, false, None)).await;
        if seen.status() == TaskStatus::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.status(), TaskStatus::Succeeded);
    assert_eq!(seen.result, "3.5");
}

/// A task reads the same from the call that made it (async: as the gateway made it; sync: as
/// the worker's reply has it) as from every read after, and the same on both databases:
/// instants to the microsecond, as PostgreSQL keeps them.
#[tokio::test]
async fn a_task_reads_the_same_from_its_submit_as_from_the_database() {
    let postgres = dalc_testkit::fresh_postgres_database().await;
    for database in [dalc_testkit::fresh_sqlite_database(), postgres.clone()] {
        let mut stack = stack_with(&database, true, None).await;
        for n in 0..40 {
            let submitted = submit_ok(&mut stack, submit("6 * 7", n % 2 == 0)).await;
            let read = stack.got(get(&submitted.id, false, None)).await;
            if submitted.status() == TaskStatus::Succeeded {
                assert_eq!(submitted, read, "{database}");
            } else {
                // The worker may have moved on since: the submit's own fields stand.
                assert_eq!(submitted.created_at, read.created_at, "{database}");
            }
            for at in [read.created_at, read.started_at, read.finished_at]
                .iter()
                .flatten()
            {
                assert_eq!(at.nanos % 1000, 0, "{database}: {at:?}");
            }
        }
    }
    dalc_testkit::drop_postgres_database(&postgres).await;
}

#[tokio::test]
async fn get_with_wait_long_polls_to_the_end() {
    let mut stack = stack(true).await;
    let task = submit_ok(&mut stack, submit("2^100", false)).await;
    let done = stack.got(get(&task.id, true, None)).await;
    assert_eq!(done.status(), TaskStatus::Succeeded);
    assert_eq!(done.result, "1267650600228229401496703205376");
}

#[tokio::test]
async fn evaluation_errors_fail_the_task_not_the_call() {
    let mut stack = stack(true).await;
    for (expression, reason) in [
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "domain"),
        ("factorial(2.5)", "domain"),
    ] {
        let task = submit_ok(&mut stack, submit(expression, true)).await;
        assert_eq!(task.status(), TaskStatus::Failed, "{expression}");
        assert!(task.error.contains(reason), "{expression}: {}", task.error);
        assert_eq!(task.result, "");
    }
}

#[tokio::test]
async fn bad_expressions_are_invalid_arguments_with_a_position() {
    let mut stack = stack(true).await;
    let too_long = "1+".repeat(2048) + "1";
    let cases = [
        ("1 +", "column 4"),
        ("", "empty"),
        ("   ", "empty"),
        ("(1 + 2", "column 1"),
        ("2 * foo(3)", "foo"),
        ("1 $ 2", "column 3"),
        (too_long.as_str(), "long"),
    ];
    for (expression, needle) in cases {
        let status = stack
            .client
            .submit_task(submit(expression, true))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expression:.20}: {status:?}"
        );
        assert!(
            status.message().contains(needle),
            "{expression:.20}: {}",
            status.message()
        );
    }
    // Nothing was stored for rejected input.
    assert_eq!(
        stack
            .store
            .count_by_status(DomainStatus::Pending)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn ids_are_checked() {
    let mut stack = stack(true).await;
    for malformed in ["", "42", "not-a-uuid", "67e55044-10b1-426f-9247"] {
        let status = stack
            .client
            .get_task(get(malformed, false, None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed}");
    }
    let unknown = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let status = stack
        .client
        .get_task(get(unknown, true, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(unknown));
}

#[tokio::test]
async fn negative_timeouts_are_invalid() {
    let mut stack = stack(true).await;
    let mut request = submit("1", true);
    request.timeout = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let status = stack.client.submit_task(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_sync_call_ends_at_its_timeout_with_the_task_as_it_stands() {
    let mut stack = stack(false).await;
    let mut request = submit("1 + 1", true);
    request.timeout = Some(Duration::from_millis(300).try_into().unwrap());
    let started = std::time::Instant::now();
    let task = submit_ok(&mut stack, request).await;
    assert_eq!(task.status(), TaskStatus::Pending);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let waited = get(&task.id, true, Some(Duration::from_millis(300)));
    let again = stack
        .client
        .get_task(waited)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(again.status(), TaskStatus::Pending);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_sync_call_ends_before_its_grpc_deadline() {
    let mut stack = stack(false).await;
    let mut request = tonic::Request::new(submit("1 + 1", true));
    request.set_timeout(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let task = stack
        .client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.status(), TaskStatus::Pending);
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[tokio::test]
async fn a_broker_outage_is_unavailable_and_strands_nothing() {
    let database = dalc_testkit::fresh_sqlite_database();
    let mut stack = stack_with(&database, true, Some(Arc::new(FailingPublisher))).await;
    let status = stack
        .client
        .submit_task(submit("1 + 1", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // Marked FAILED in the background, right after the answer.
    let failed = eventually(|| async {
        stack
            .store
            .count_by_status(DomainStatus::Failed)
            .await
            .unwrap()
            == 1
    })
    .await;
    assert!(failed, "the unqueued task is FAILED");
    assert_eq!(
        stack
            .store
            .count_by_status(DomainStatus::Pending)
            .await
            .unwrap(),
        0
    );
}

/// Polls `check` for up to 5 s.
async fn eventually(check: impl AsyncFnMut() -> bool) -> bool {
    dalc_testkit::eventually(Duration::from_secs(5), check).await
}

#[tokio::test]
async fn a_broker_known_to_be_down_is_refused_before_anything_is_written() {
    let database = dalc_testkit::fresh_sqlite_database();
    let mut stack = stack_with(&database, true, Some(Arc::new(RefusingPublisher))).await;
    let status = stack
        .client
        .submit_task(submit("1 + 1", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        stack.store.all().await.unwrap().is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn timeouts_past_the_servers_maximum_are_invalid_and_never_panic() {
    let mut stack = stack(true).await;
    let done = submit_ok(&mut stack, submit("1 + 1", true)).await;
    for seconds in [2000 * 3600, 10_000_000_000_000, i64::MAX] {
        let mut request = submit("1 + 1", true);
        request.timeout = Some(prost_types::Duration { seconds, nanos: 0 });
        let status = stack.client.submit_task(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{seconds}: {status:?}"
        );
        assert!(status.message().contains("maximum"), "{}", status.message());
        // A GetTask's timeout is only a wait, capped at the server's longest: taken.
        let mut poll = get(&done.id, true, None);
        poll.timeout = Some(prost_types::Duration { seconds, nanos: 0 });
        let polled = stack.client.get_task(poll).await.unwrap().into_inner();
        assert_eq!(polled.task.unwrap().result, "2", "{seconds}");
    }
    // The gateway is unharmed: the next call works.
    let task = submit_ok(&mut stack, submit("1 + 1", true)).await;
    assert_eq!(task.result, "2");
}

#[tokio::test]
async fn a_publish_that_never_confirms_is_answered_before_the_calls_deadline() {
    let database = dalc_testkit::fresh_sqlite_database();
    let mut stack = stack_with(&database, false, Some(Arc::new(HangingPublisher))).await;
    for wait in [true, false] {
        let mut request = tonic::Request::new(submit("1 + 1", wait));
        request.set_timeout(Duration::from_millis(1500));
        let started = std::time::Instant::now();
        let status = stack.client.submit_task(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_sync_call_whose_task_ends_before_the_publish_is_confirmed_answers_then() {
    let broker = Arc::new(dalc_queue::memory::MemoryBroker::with_max_length(None));
    let mut stack = common::start(StackOptions {
        publisher: Some(Arc::new(UnconfirmedPublisher(broker.clone()))),
        broker: Some(broker),
        ..StackOptions::default()
    })
    .await;
    let mut request = tonic::Request::new(submit("6 * 7", true));
    request.set_timeout(Duration::from_secs(30));
    let task = stack
        .client
        .submit_task(request)
        .await
        .expect("the task's end answers the call, confirm or not")
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.status(), TaskStatus::Succeeded);
    assert_eq!(task.result, "42");
}

#[tokio::test]
async fn health_follows_the_database() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let stack = stack_configured(&database, false, None, |config| {
        config.health_interval = Duration::from_millis(100);
    })
    .await;
    let channel = Channel::from_shared(stack.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status_of = |mut health: tonic_health::pb::health_client::HealthClient<Channel>,
                     service: &'static str| async move {
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        health.check(request).await.unwrap().into_inner().status()
    };
    let status = |health| status_of(health, "");
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(status(health.clone()).await, ServingStatus::Serving);
    dalc_testkit::drop_postgres_database(&database).await;
    let not_serving = eventually(|| {
        let health = health.clone();
        async move { status(health).await == ServingStatus::NotServing }
    })
    .await;
    assert!(not_serving, "NOT_SERVING once the database is gone");
    assert_eq!(
        status_of(health.clone(), "liveness").await,
        ServingStatus::Serving,
        "alive all the same: no reason to restart the gateway"
    );
    let _ = &mut health;
}

#[tokio::test]
async fn a_database_outage_is_unavailable() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let mut stack = stack_with(&database, false, None).await;
    // Take the database away under the gateway's feet.
    dalc_testkit::drop_postgres_database(&database).await;

    let status = stack
        .client
        .submit_task(submit("1 + 1", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = stack
        .client
        .get_task(get("67e55044-10b1-426f-9247-bb680e5fe0c8", false, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn health_reports_serving() {
    let stack = stack(true).await;
    let channel = Channel::from_shared(stack.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: "dalc.v1.TaskService".into(),
    };
    let response = health.check(request).await.unwrap().into_inner();
    assert_eq!(
        response.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// A publisher that knows, before trying, that its broker is down.
struct RefusingPublisher;

#[async_trait::async_trait]
impl TaskPublisher for RefusingPublisher {
    fn ready(&self) -> Result<(), QueueError> {
        Err(QueueError::Unavailable(
            "broker is known to be down (test)".into(),
        ))
    }

    async fn publish_task(&self, _: &TaskMessage) -> Result<(), QueueError> {
        panic!("a publish was attempted although the broker is known to be down");
    }
}

/// A broker that accepts publishes and never confirms them.
struct HangingPublisher;

#[async_trait::async_trait]
impl TaskPublisher for HangingPublisher {
    async fn publish_task(&self, _: &TaskMessage) -> Result<(), QueueError> {
        std::future::pending().await
    }
}

/// A broker that queues every task but never confirms the publish: as RabbitMQ may confirm a
/// message only after the worker that took it has answered.
struct UnconfirmedPublisher(Arc<dalc_queue::memory::MemoryBroker>);

#[async_trait::async_trait]
impl TaskPublisher for UnconfirmedPublisher {
    async fn publish_task(&self, message: &TaskMessage) -> Result<(), QueueError> {
        self.0.publish_task(message).await?;
        std::future::pending().await
    }
}

/// A publisher whose broker is always down.
struct FailingPublisher;

#[async_trait::async_trait]
impl TaskPublisher for FailingPublisher {
    async fn publish_task(&self, _: &TaskMessage) -> Result<(), QueueError> {
        Err(QueueError::Unavailable("broker is down (test)".into()))
    }
}
