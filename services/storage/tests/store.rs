//! The repository against real databases: every test runs once on SQLite and once on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use dalc_domain::{Task, TaskId, TaskStatus};
use dalc_storage::{Outcome, StartOutcome, TaskStore};

async fn sqlite() -> TaskStore {
    store(&dalc_testkit::fresh_sqlite_database()).await
}

async fn postgres() -> TaskStore {
    store(&dalc_testkit::fresh_postgres_database().await).await
}

async fn store(url: &str) -> TaskStore {
    let store = TaskStore::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    // A second run finds nothing to do: start-up migrations are idempotent.
    store.migrate().await.expect("migrate again");
    store
}

/// Runs one scenario on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend { $( #[tokio::test] async fn $name() { super::$name(super::sqlite().await).await } )* }
        mod postgres_backend { $( #[tokio::test] async fn $name() { super::$name(super::postgres().await).await } )* }
    };
}

on_both_backends!(
    insert_then_get_round_trips,
    unknown_id_is_none,
    start_moves_pending_to_running,
    redelivery_after_a_crash_is_a_new_attempt,
    terminal_tasks_are_never_started_again,
    only_the_current_attempt_may_finish,
    unstarted_tasks_can_expire_once,
    missing_tasks_cannot_start,
    published_tasks_are_marked,
    the_sweeper_claims_unpublished_open_tasks_past_the_grace_period,
    overdue_pending_tasks_expire,
    open_tasks_can_be_queued_again_after_a_restart,
);

/// What a database can hold: PostgreSQL keeps microseconds.
fn to_micros(at: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap()
}

fn truncate_to_micros(task: &mut Task) {
    task.created_at = to_micros(task.created_at);
    task.deadline = task.deadline.map(to_micros);
}

async fn insert_then_get_round_trips(store: TaskStore) {
    let mut task = Task::new("1 + 1", Some(Utc::now() + Duration::seconds(30)));
    truncate_to_micros(&mut task);
    store.insert(&task).await.unwrap();
    assert_eq!(store.get(task.id).await.unwrap(), Some(task));
}

async fn unknown_id_is_none(store: TaskStore) {
    assert_eq!(store.get(TaskId::new()).await.unwrap(), None);
}

async fn start_moves_pending_to_running(store: TaskStore) {
    let task = Task::new("2 * 3", None);
    store.insert(&task).await.unwrap();
    let StartOutcome::Started(running) = store
        .start_attempt(task.id, "w1", Utc::now())
        .await
        .unwrap()
    else {
        panic!("expected the task to start");
    };
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.attempts, 1);
    assert_eq!(running.worker_id.as_deref(), Some("w1"));
    assert!(running.started_at.is_some());

    let done = store
        .finish_attempt(
            task.id,
            1,
            &Outcome::Succeeded { result: "6".into() },
            Utc::now(),
        )
        .await
        .unwrap()
        .expect("the current attempt finishes the task");
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result.as_deref(), Some("6"));
    assert_eq!(done.error, None);
    assert!(done.finished_at.is_some());
    assert_eq!(store.get(task.id).await.unwrap(), Some(done));
}

async fn redelivery_after_a_crash_is_a_new_attempt(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task).await.unwrap();
    store
        .start_attempt(task.id, "w1", Utc::now())
        .await
        .unwrap();
    // w1 dies; the broker redelivers to w2.
    let StartOutcome::Started(second) = store
        .start_attempt(task.id, "w2", Utc::now())
        .await
        .unwrap()
    else {
        panic!("a RUNNING task is restarted on redelivery");
    };
    assert_eq!(second.attempts, 2);
    assert_eq!(second.worker_id.as_deref(), Some("w2"));
}

async fn terminal_tasks_are_never_started_again(store: TaskStore) {
    let task = Task::new("1 / 0", None);
    store.insert(&task).await.unwrap();
    store
        .start_attempt(task.id, "w1", Utc::now())
        .await
        .unwrap();
    let failed = Outcome::Failed {
        error: "division by zero".into(),
    };
    let done = store
        .finish_attempt(task.id, 1, &failed, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .start_attempt(task.id, "w2", Utc::now())
            .await
            .unwrap(),
        StartOutcome::AlreadyTerminal(done.clone())
    );
    assert_eq!(store.get(task.id).await.unwrap().unwrap().attempts, 1);
}

async fn only_the_current_attempt_may_finish(store: TaskStore) {
    let task = Task::new("7", None);
    store.insert(&task).await.unwrap();
    store
        .start_attempt(task.id, "slow", Utc::now())
        .await
        .unwrap();
    store
        .start_attempt(task.id, "fast", Utc::now())
        .await
        .unwrap();
    let fast = Outcome::Succeeded { result: "7".into() };
    let stale = Outcome::Failed {
        error: "stale".into(),
    };
    // The stale first attempt cannot record anything...
    assert_eq!(
        store
            .finish_attempt(task.id, 1, &stale, Utc::now())
            .await
            .unwrap(),
        None
    );
    // ...the current one can, exactly once.
    assert!(
        store
            .finish_attempt(task.id, 2, &fast, Utc::now())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .finish_attempt(task.id, 2, &stale, Utc::now())
            .await
            .unwrap(),
        None
    );
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.result.as_deref()),
        (TaskStatus::Succeeded, Some("7"))
    );
}

async fn unstarted_tasks_can_expire_once(store: TaskStore) {
    let task = Task::new("1", Some(Utc::now()));
    store.insert(&task).await.unwrap();
    let expired = Outcome::Expired {
        error: "deadline passed".into(),
    };
    let done = store
        .finish_unstarted(task.id, &expired, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, TaskStatus::Expired);
    assert_eq!(done.error.as_deref(), Some("deadline passed"));
    assert_eq!(
        store
            .finish_unstarted(task.id, &expired, Utc::now())
            .await
            .unwrap(),
        None
    );
}

async fn missing_tasks_cannot_start(store: TaskStore) {
    assert_eq!(
        store
            .start_attempt(TaskId::new(), "w1", Utc::now())
            .await
            .unwrap(),
        StartOutcome::Missing
    );
}

async fn published_tasks_are_marked(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task).await.unwrap();
    store.mark_published(task.id, Utc::now()).await.unwrap();
    // Marking changes nothing a client sees.
    assert_eq!(
        store.get(task.id).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
}

#[tokio::test]
async fn concurrent_start_ups_migrate_once_on_postgres() {
    let url = dalc_testkit::fresh_postgres_database().await;
    let mut starts = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            let store = TaskStore::connect(&url).await.unwrap();
            store.migrate().await
        }));
    }
    for start in starts {
        start
            .await
            .unwrap()
            .expect("every process migrates or finds it done");
    }
}

async fn the_sweeper_claims_unpublished_open_tasks_past_the_grace_period(store: TaskStore) {
    let stranded = Task::new("1", None);
    let published = Task::new("2", None);
    let finished = Task::new("3", None);
    for task in [&stranded, &published, &finished] {
        store.insert(task).await.unwrap();
    }
    store
        .mark_published(published.id, Utc::now())
        .await
        .unwrap();
    let done = Outcome::Failed { error: "x".into() };
    store
        .finish_unstarted(finished.id, &done, Utc::now())
        .await
        .unwrap();

    // Within the grace period nothing is claimed.
    let early = store
        .claim_unpublished(Utc::now() - Duration::seconds(60), 10)
        .await
        .unwrap();
    assert!(early.tasks.is_empty());
    early.finish(&[], Utc::now()).await.unwrap();

    let batch = store
        .claim_unpublished(Utc::now() + Duration::seconds(1), 10)
        .await
        .unwrap();
    let ids: Vec<_> = batch.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, [stranded.id]);
    batch.finish(&ids, Utc::now()).await.unwrap();
    let again = store
        .claim_unpublished(Utc::now() + Duration::seconds(1), 10)
        .await
        .unwrap();
    assert!(
        again.tasks.is_empty(),
        "republished tasks are not claimed again"
    );
}

async fn overdue_pending_tasks_expire(store: TaskStore) {
    let overdue = Task::new("1", Some(Utc::now() - Duration::seconds(5)));
    let in_time = Task::new("2", Some(Utc::now() + Duration::seconds(60)));
    let no_deadline = Task::new("3", None);
    for task in [&overdue, &in_time, &no_deadline] {
        store.insert(task).await.unwrap();
    }
    let expired = store.expire_overdue(Utc::now()).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id, expired[0].status),
        (overdue.id, TaskStatus::Expired)
    );
    assert!(expired[0].error.as_deref().unwrap().contains("deadline"));
    assert!(store.expire_overdue(Utc::now()).await.unwrap().is_empty());
}

async fn open_tasks_can_be_queued_again_after_a_restart(store: TaskStore) {
    let pending = Task::new("1", None);
    store.insert(&pending).await.unwrap();
    store.mark_published(pending.id, Utc::now()).await.unwrap();
    assert_eq!(store.forget_publishes_of_open_tasks().await.unwrap(), 1);
    let batch = store
        .claim_unpublished(Utc::now() + Duration::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(batch.tasks.len(), 1);
    batch.finish(&[], Utc::now()).await.unwrap();
}

#[tokio::test]
async fn concurrent_sweepers_never_claim_the_same_task_on_postgres() {
    let store = postgres().await;
    for n in 0..4 {
        store.insert(&Task::new(n.to_string(), None)).await.unwrap();
    }
    let cutoff = Utc::now() + Duration::seconds(1);
    let first = store.claim_unpublished(cutoff, 2).await.unwrap();
    let second = store.claim_unpublished(cutoff, 10).await.unwrap();
    assert_eq!(first.tasks.len(), 2);
    assert_eq!(
        second.tasks.len(),
        2,
        "locked rows are skipped, not waited for"
    );
    for task in &first.tasks {
        assert!(second.tasks.iter().all(|other| other.id != task.id));
    }
    first.finish(&[], Utc::now()).await.unwrap();
    second.finish(&[], Utc::now()).await.unwrap();
}
