//! The worker's per-task logic against a real database (SQLite) and the in-process queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use dalc_domain::{Outcome, Task, TaskStatus};
use dalc_queue::{TaskMessage, TaskPublisher, UpdateConsumer, memory::MemoryBroker};
use dalc_storage::{StartOutcome, TaskStore};
use dalc_worker::{Processor, Settlement, WorkerConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Attempts a task gets before it is given up on.
const ATTEMPTS: u32 = WorkerConfig::DEFAULT_MAX_ATTEMPTS;

struct Setup {
    store: TaskStore,
    broker: Arc<MemoryBroker>,
    processor: Processor,
}

async fn setup() -> Setup {
    setup_with(WorkerConfig::new("w1")).await
}

async fn setup_with(config: WorkerConfig) -> Setup {
    let store = TaskStore::connect(&dalc_testkit::fresh_sqlite_database())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let processor = Processor::new(config, store.clone(), broker.clone());
    Setup {
        store,
        broker,
        processor,
    }
}

async fn stored(store: &TaskStore, expression: &str) -> (Task, TaskMessage) {
    let task = Task::new(expression, None);
    store.insert(&task, Duration::ZERO).await.unwrap();
    let message = TaskMessage::for_task(&task, Some("memory.dalc.reply.gw".into()));
    (task, message)
}

#[tokio::test]
async fn a_task_is_run_stored_and_replied_to() {
    let Setup {
        store,
        broker,
        processor,
    } = setup().await;
    let mut updates = broker.consume_updates("gw", true).await.unwrap();
    let (task, message) = stored(&store, "1 + 1").await;
    assert_eq!(processor.process(&message, false).await, Settlement::Ack);

    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result.as_deref(), Some("2"));
    assert_eq!(done.worker_id.as_deref(), Some("w1"));
    assert_eq!(done.attempts, 1);
    let reply = tokio::time::timeout(Duration::from_secs(5), updates.stream.next())
        .await
        .unwrap();
    assert_eq!(reply, Some(done));
}

#[tokio::test]
async fn evaluation_errors_are_failed_tasks() {
    let Setup {
        store, processor, ..
    } = setup().await;
    let (task, message) = stored(&store, "ln(0)").await;
    assert_eq!(processor.process(&message, false).await, Settlement::Ack);
    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(done.error.unwrap().contains("domain"));
}

#[tokio::test]
async fn a_redelivered_finished_task_is_replied_to_again_not_rerun() {
    let Setup {
        store,
        broker,
        processor,
    } = setup().await;
    let (task, message) = stored(&store, "2 * 3").await;
    processor.process(&message, false).await;
    let mut updates = broker.consume_updates("gw", true).await.unwrap();
    assert_eq!(processor.process(&message, false).await, Settlement::Ack);
    let reply = tokio::time::timeout(Duration::from_secs(5), updates.stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.result.as_deref(), Some("6"));
    assert_eq!(
        store.get(task.id).await.unwrap().unwrap().attempts,
        1,
        "not run twice"
    );
}

#[tokio::test]
async fn a_task_past_its_deadline_expires_unrun() {
    let Setup {
        store, processor, ..
    } = setup().await;
    let task = Task::new("1", Some(Utc::now() - chrono::Duration::seconds(1)));
    store.insert(&task, Duration::ZERO).await.unwrap();
    let message = TaskMessage::for_task(&task, None);
    assert_eq!(processor.process(&message, false).await, Settlement::Ack);
    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Expired);
    assert_eq!(done.attempts, 0);
    assert!(done.error.unwrap().contains("deadline"));
}

#[tokio::test]
async fn a_duplicate_message_never_runs_a_task_a_live_attempt_holds() {
    let Setup {
        store, processor, ..
    } = setup().await;
    let (task, message) = stored(&store, "1 + 1").await;
    store
        .start_attempt(task.id, "alive", Duration::from_secs(60), ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(processor.process(&message, false).await, Settlement::Ack);
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts, stored.worker_id.as_deref()),
        (TaskStatus::Running, 1, Some("alive")),
        "one attempt; the duplicate is dropped"
    );
}

#[tokio::test]
async fn a_redelivery_waits_for_the_live_attempt_and_never_reruns_its_result() {
    let mut config = WorkerConfig::new("w2");
    config.lease = Duration::from_millis(400);
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let (task, message) = stored(&store, "3 + 4").await;
    store
        .start_attempt(task.id, "alive", Duration::from_secs(5), ATTEMPTS)
        .await
        .unwrap();
    // The first worker lost the broker, not its life: it finishes while the redelivery waits.
    let finisher = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let done = Outcome::Succeeded { result: "7".into() };
            store.finish_attempt(task.id, 1, &done).await.unwrap()
        })
    };
    assert_eq!(processor.process(&message, true).await, Settlement::Ack);
    assert!(finisher.await.unwrap().is_some());
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!((stored.attempts, stored.result.as_deref()), (1, Some("7")));
}

#[tokio::test]
async fn a_redelivery_takes_over_once_the_dead_attempts_lease_runs_out() {
    let mut config = WorkerConfig::new("w2");
    config.lease = Duration::from_millis(200);
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let (task, message) = stored(&store, "3 + 4").await;
    store
        .start_attempt(task.id, "killed", Duration::from_millis(200), ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(processor.process(&message, true).await, Settlement::Ack);
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts, stored.worker_id.as_deref()),
        (TaskStatus::Succeeded, 2, Some("w2"))
    );
}

#[tokio::test]
async fn a_late_message_past_its_deadline_leaves_a_live_attempt_alone() {
    let Setup {
        store, processor, ..
    } = setup().await;
    let task = Task::new("1", Some(Utc::now() + chrono::Duration::milliseconds(100)));
    store.insert(&task, Duration::ZERO).await.unwrap();
    store
        .start_attempt(task.id, "alive", Duration::from_secs(60), ATTEMPTS)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let late = TaskMessage::for_task(&task, None);
    assert_eq!(processor.process(&late, false).await, Settlement::Ack);
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Running, "not overwritten");
    let done = Outcome::Succeeded { result: "1".into() };
    assert!(
        store
            .finish_attempt(task.id, 1, &done)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_task_that_keeps_crashing_its_workers_is_given_up_on() {
    let Setup {
        store, processor, ..
    } = setup().await;
    let (task, message) = stored(&store, "1").await;
    // Three workers started it and died (their leases ran out at once).
    for worker in ["a", "b", "c"] {
        assert!(matches!(
            store
                .start_attempt(task.id, worker, Duration::ZERO, ATTEMPTS)
                .await
                .unwrap(),
            StartOutcome::Started(_)
        ));
    }
    assert_eq!(
        processor.process(&message, false).await,
        Settlement::DeadLetter
    );
    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("gave up after 3 attempts"));
    assert_eq!(done.attempts, 3, "giving up is not an attempt");
}

#[tokio::test]
async fn a_database_fault_hands_the_task_back() {
    let url = dalc_testkit::fresh_postgres_database().await;
    let store = TaskStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let processor = Processor::new(WorkerConfig::new("w1"), store.clone(), broker);
    let (_, message) = stored(&store, "1").await;
    dalc_testkit::drop_postgres_database(&url).await;
    assert_eq!(
        processor.process(&message, false).await,
        Settlement::Requeue
    );
}

#[tokio::test]
async fn the_worker_loop_drains_the_queue_and_stops_on_shutdown() {
    let Setup { store, broker, .. } = setup().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let (task, message) = stored(&store, &format!("{n} + 1")).await;
        broker.publish_task(&message).await.unwrap();
        ids.push((n, task.id));
    }
    let shutdown = CancellationToken::new();
    let mut config = WorkerConfig::new("loop");
    config.concurrency = 3;
    let worker = tokio::spawn(dalc_worker::run(
        config,
        store.clone(),
        broker.clone(),
        broker.clone(),
        shutdown.clone(),
    ));
    for (n, id) in ids {
        let mut task = store.get(id).await.unwrap().unwrap();
        for _ in 0..500 {
            if task.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            task = store.get(id).await.unwrap().unwrap();
        }
        assert_eq!(task.result, Some((n + 1).to_string()));
    }
    assert_eq!(broker.depth(), 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
}

/// Every update the broker carries within `window`, in order.
async fn updates_within(updates: &mut dalc_queue::Updates, window: Duration) -> Vec<Task> {
    let mut seen = Vec::new();
    while let Ok(Some(update)) = tokio::time::timeout(window, updates.stream.next()).await {
        seen.push(update);
    }
    seen
}

/// Stores a task of `expression`, processes its message (a redelivery or not) to an ack, and
/// returns the task as stored then, and the updates the broker carried meanwhile.
async fn processed(expression: &str, redelivered: bool) -> (Task, Vec<Task>) {
    let Setup {
        store,
        broker,
        processor,
    } = setup().await;
    let mut updates = broker.consume_updates("gw", true).await.unwrap();
    let (task, message) = stored(&store, expression).await;
    assert_eq!(
        processor.process(&message, redelivered).await,
        Settlement::Ack
    );
    let seen = updates_within(&mut updates, Duration::from_millis(300)).await;
    let done = store.get(task.id).await.unwrap().unwrap();
    (done, seen)
}

fn statuses(updates: &[Task]) -> Vec<TaskStatus> {
    updates.iter().map(|update| update.status).collect()
}

#[tokio::test]
async fn a_cheap_task_first_delivered_is_counted_and_recorded_in_one_write() {
    let (done, seen) = processed("6 * 7", false).await;
    assert_eq!(
        (done.status, done.result.as_deref(), done.attempts),
        (TaskStatus::Succeeded, Some("42"), 1)
    );
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    // Straight from PENDING to its result: no RUNNING state, so no RUNNING event (a watch shows
    // the task RUNNING from its end: see the gateway's tests).
    assert!(!statuses(&seen).contains(&TaskStatus::Running), "{seen:?}");
    assert!(
        seen.contains(&done),
        "the reply carries the result: {seen:?}"
    );
}

#[tokio::test]
async fn a_redelivered_cheap_task_counts_its_attempt_before_it_is_evaluated() {
    // A redelivery may follow a crash the task caused: it goes the long way, RUNNING first.
    let (done, seen) = processed("1 + 2", true).await;
    let statuses = statuses(&seen);
    assert!(statuses.contains(&TaskStatus::Running), "{statuses:?}");
    assert_eq!((done.result.as_deref(), done.attempts), (Some("3"), 1));
}

#[tokio::test]
async fn a_costly_task_is_started_before_it_is_evaluated() {
    let (done, seen) = processed("factorial(20)", false).await;
    let statuses = statuses(&seen);
    assert!(statuses.contains(&TaskStatus::Running), "{statuses:?}");
    assert_eq!(
        (done.result.as_deref(), done.attempts),
        (Some("2432902008176640000"), 1)
    );
}

/// Attempts that evaluate for longer take turns (one per attempt slot), and a task waits for
/// its turn before its attempt starts, so the wait never eats into its lease; a quick attempt
/// needs no turn.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_attempts_take_turns_and_quick_ones_never_wait() {
    const STALL: &str = "4242424242";
    const SLOTS: usize = 2;
    let mut config = WorkerConfig::new("w1");
    config.fault_stall_on = Some((STALL.into(), Duration::from_millis(1500)));
    config.attempt_slots = Arc::new(tokio::sync::Semaphore::new(SLOTS));
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let processor = Arc::new(processor);
    let mut costly = Vec::new();
    for n in 0..=SLOTS {
        let (task, message) = stored(&store, &format!("{STALL} * 0 + {n}")).await;
        let processor = processor.clone();
        let handler = tokio::spawn(async move { processor.process(&message, false).await });
        costly.push((task.id, handler));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (quick, message) = stored(&store, "1 + 1").await;
    let answered = tokio::time::timeout(
        Duration::from_millis(500),
        processor.process(&message, false),
    )
    .await;
    assert_eq!(
        answered.ok(),
        Some(Settlement::Ack),
        "a quick attempt never waits"
    );
    let quick = store.get(quick.id).await.unwrap().unwrap();
    assert_eq!(quick.result.as_deref(), Some("2"));

    let running = store.count_by_status(TaskStatus::Running).await.unwrap();
    let pending = store.count_by_status(TaskStatus::Pending).await.unwrap();
    assert_eq!(
        (running, pending),
        (SLOTS as u64, 1),
        "one attempt per slot; the last one not started yet"
    );
    for (id, handler) in costly {
        assert_eq!(handler.await.unwrap(), Settlement::Ack);
        let done = store.get(id).await.unwrap().unwrap();
        assert_eq!((done.status, done.attempts), (TaskStatus::Succeeded, 1));
    }
}

/// A task whose deadline passes while it waits for its turn expires unrun.
#[tokio::test]
async fn a_task_whose_deadline_passes_while_it_waits_for_its_turn_expires_unrun() {
    let mut config = WorkerConfig::new("w1");
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    config.attempt_slots = slots.clone();
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let task = Task::new(
        "2 ^ 10",
        Some(Utc::now() + chrono::Duration::milliseconds(300)),
    );
    store.insert(&task, Duration::ZERO).await.unwrap();
    let message = TaskMessage::for_task(&task, None);
    let turn = slots.acquire_owned().await.unwrap();
    let processing = tokio::spawn(async move { processor.process(&message, false).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(turn);
    assert_eq!(processing.await.unwrap(), Settlement::Ack);
    let ended = store.get(task.id).await.unwrap().unwrap();
    assert_eq!((ended.status, ended.attempts), (TaskStatus::Expired, 0));
}

/// Every delivery's handler is spawned as a task of its own, as large as its future. Kept under
/// a kilobyte with the runtime's bookkeeping: glibc serves that from its per-thread caches,
/// while every larger allocation first sorts all its free lists (`malloc_consolidate`), and
/// the future is copied on each spawn. It was 4.5 KB, as large as the long way's steps.
#[tokio::test]
async fn a_delivery_in_hand_holds_little() {
    let Setup {
        store,
        broker,
        processor,
    } = setup().await;
    let (task, message) = stored(&store, "1 + 1").await;
    broker.publish_task(&message).await.unwrap();
    let mut deliveries = dalc_queue::TaskConsumer::consume_tasks(&*broker, 1)
        .await
        .unwrap();
    let delivery = deliveries.next().await.unwrap().unwrap();
    let handler = processor.handle(delivery);
    let size = std::mem::size_of_val(&handler);
    eprintln!("a delivery's handler: {size} bytes");
    assert!(size <= 896, "a delivery's handler is {size} bytes");
    handler.await;
    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(done.result.as_deref(), Some("2"));
}

/// An evaluation that outlasts its lease keeps its task: its worker renews the lease while it
/// evaluates, so another worker's start finds the attempt live, and the task runs once.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluation_longer_than_its_lease_keeps_its_task() {
    const STALL: &str = "4242424242";
    let lease = Duration::from_millis(800);
    let mut config = WorkerConfig::new("w1");
    config.lease = lease;
    config.fault_stall_on = Some((STALL.into(), lease * 5));
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let (task, message) = stored(&store, &format!("{STALL} * 0 + 7")).await;
    let evaluating = tokio::spawn(async move { processor.process(&message, false).await });

    tokio::time::sleep(lease * 4).await;
    let other = store
        .start_attempt(task.id, "w2", lease, ATTEMPTS)
        .await
        .unwrap();
    assert!(
        matches!(other, StartOutcome::Busy(_)),
        "four leases into its evaluation the attempt still holds the task: {other:?}"
    );
    assert_eq!(evaluating.await.unwrap(), Settlement::Ack);
    let done = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(
        (
            done.status,
            done.attempts,
            done.worker_id.as_deref(),
            done.result.as_deref()
        ),
        (TaskStatus::Succeeded, 1, Some("w1"), Some("7"))
    );
}

/// ...but only up to the task's deadline: past it the lease runs out, however long the
/// evaluation goes on, so the task can be ended (EXPIRED by a sweeper) within its bound.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_not_renewed_past_the_tasks_deadline() {
    const STALL: &str = "4242424242";
    let lease = Duration::from_millis(400);
    let mut config = WorkerConfig::new("w1");
    config.lease = lease;
    config.fault_stall_on = Some((STALL.into(), lease * 10));
    let Setup {
        store, processor, ..
    } = setup_with(config).await;
    let deadline = Utc::now() + chrono::Duration::milliseconds(800);
    let task = Task::new(format!("{STALL} * 0 + 7"), Some(deadline));
    store.insert(&task, Duration::ZERO).await.unwrap();
    let message = TaskMessage::for_task(&task, None);
    let evaluating = tokio::spawn(async move { processor.process(&message, false).await });

    // Renewed up to the deadline, then left to run out.
    let lapsed = dalc_testkit::eventually(lease * 8, async || {
        matches!(
            store.start_attempt(task.id, "w2", lease, ATTEMPTS).await,
            Ok(StartOutcome::Started(_))
        )
    })
    .await;
    assert!(lapsed, "the lease ran out after the deadline");
    evaluating.abort();
}

/// A worker told to stop exits within its grace period even when its database goes silent: the
/// last figures it stores get what is left of the grace, not as long as the database takes
/// (it overran a 25 s grace by 5 to 9 s, where Kubernetes kills it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_keeps_its_grace_period_when_the_database_goes_silent() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let proxy =
        dalc_testkit::proxy::TcpProxy::start_new(dalc_testkit::postgres_server_addr()).await;
    let store = TaskStore::connect(&dalc_testkit::postgres_url_at(&database, proxy.addr()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let grace = Duration::from_secs(1);
    let mut config = WorkerConfig::new("w1");
    config.shutdown_grace = grace;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(dalc_worker::run(
        config,
        store,
        broker.clone(),
        broker,
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.blackhole();
    shutdown.cancel();
    let stopped = tokio::time::timeout(grace * 4, running).await;
    assert!(stopped.is_ok(), "the worker outlived its grace period");
    drop(proxy);
    dalc_testkit::drop_postgres_database(&database).await;
}
