//! The repository against real databases: every test runs once on SQLite and once on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use dalc_domain::{Outcome, Task, TaskId, TaskStatus};
use dalc_storage::{StartOutcome, StoreOptions, TaskStore};

/// Long enough that nothing runs out during a test.
const LEASE: StdDuration = StdDuration::from_secs(60);
/// Attempts a task gets before it is given up on (the workers' default).
const ATTEMPTS: u32 = 3;
/// No grace: the sweeper may claim at once.
const NOW: StdDuration = StdDuration::ZERO;

async fn sqlite() -> TaskStore {
    store(&dalc_testkit::fresh_sqlite_database()).await
}

async fn postgres() -> TaskStore {
    store(&dalc_testkit::fresh_postgres_database().await).await
}

async fn store(url: &str) -> TaskStore {
    store_with(url, &StoreOptions::default()).await
}

async fn store_with(url: &str, options: &StoreOptions) -> TaskStore {
    let store = TaskStore::connect_with(url, options)
        .await
        .expect("connect");
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
    finished_tasks_are_counted_since_a_watermark_and_open_ones_by_status,
    insert_then_get_round_trips,
    unknown_id_is_none,
    many_reads_at_once_each_get_their_own_task,
    start_moves_pending_to_running,
    a_live_lease_keeps_duplicates_out,
    an_attempt_whose_lease_ran_out_is_taken_over,
    a_released_lease_is_taken_over_at_once,
    a_renewed_lease_holds_the_task_past_its_first_term,
    a_task_whose_attempts_ran_out_is_given_up_not_started,
    terminal_tasks_are_never_started_again,
    only_the_current_attempt_may_finish,
    unstarted_tasks_can_expire_once,
    finishing_from_outside_never_overwrites_a_live_attempt,
    missing_tasks_cannot_start,
    published_tasks_are_marked,
    the_sweeper_claims_unpublished_open_tasks_past_the_grace_period,
    the_sweeper_claims_running_tasks_whose_attempt_vanished,
    overdue_pending_tasks_expire,
    overdue_running_tasks_expire_only_once_their_lease_ran_out,
    open_tasks_can_be_queued_again_after_a_restart,
    retention_deletes_only_old_finished_tasks,
    the_state_machine_is_enforced_by_the_store,
    many_attempts_start_and_end_at_once_each_with_its_own_outcome,
    a_quick_attempt_counts_and_records_in_one_write,
    a_quick_attempt_only_ends_a_pending_task,
    many_quick_attempts_at_once_each_get_their_own_row,
);

/// Task `n`'s outcome in the many-at-once tests: every third fails with `e{n}`, the others
/// succeed with `n`.
fn numbered_outcome(n: usize) -> Outcome {
    if n.is_multiple_of(3) {
        Outcome::Failed {
            error: format!("e{n}"),
        }
    } else {
        Outcome::Succeeded {
            result: n.to_string(),
        }
    }
}

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
    store.insert(&task, NOW).await.unwrap();
    assert_eq!(store.get(task.id).await.unwrap(), Some(task));
}

async fn unknown_id_is_none(store: TaskStore) {
    assert_eq!(store.get(TaskId::new()).await.unwrap(), None);
}

async fn many_reads_at_once_each_get_their_own_task(store: TaskStore) {
    let mut stored = Vec::new();
    for n in 0..40 {
        stored.push(stored_pending(&store, &n.to_string()).await);
    }
    // Each stored task read three times at once (as by three waiting calls), and unknown ids.
    let wanted: Vec<Option<&Task>> = stored
        .iter()
        .flat_map(|task| [Some(task), Some(task), Some(task), None])
        .collect();
    let reads = wanted.iter().map(|task| {
        let store = store.clone();
        let id = task.map_or_else(TaskId::new, |task| task.id);
        async move { store.read(id).await.unwrap() }
    });
    let read = futures::future::join_all(reads).await;
    for (got, want) in read.iter().zip(&wanted) {
        assert_eq!(
            got.as_ref().map(|task| (task.id, &task.expression)),
            want.map(|task| (task.id, &task.expression))
        );
    }
}

async fn start_moves_pending_to_running(store: TaskStore) {
    let task = Task::new("2 * 3", None);
    store.insert(&task, NOW).await.unwrap();
    let StartOutcome::Started(running) = store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
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
        .finish_attempt(task.id, 1, &Outcome::Succeeded { result: "6".into() })
        .await
        .unwrap()
        .expect("the current attempt finishes the task");
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result.as_deref(), Some("6"));
    assert_eq!(done.error, None);
    assert!(done.finished_at.is_some());
    assert_eq!(store.get(task.id).await.unwrap(), Some(done));
}

async fn a_live_lease_keeps_duplicates_out(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    // A duplicate message reaches w2 while w1's attempt is alive: it must not run.
    let StartOutcome::Busy(busy) = store
        .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
        .await
        .unwrap()
    else {
        panic!("a live attempt is not superseded");
    };
    assert_eq!((busy.attempts, busy.worker_id.as_deref()), (1, Some("w1")));
}

async fn an_attempt_whose_lease_ran_out_is_taken_over(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", StdDuration::from_millis(50), ATTEMPTS)
        .await
        .unwrap();
    // w1 dies; once its lease runs out, the redelivery to w2 takes over.
    tokio::time::sleep(StdDuration::from_millis(120)).await;
    let StartOutcome::Started(second) = store
        .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
        .await
        .unwrap()
    else {
        panic!("a RUNNING task whose lease ran out is taken over");
    };
    assert_eq!(second.attempts, 2);
    assert_eq!(second.worker_id.as_deref(), Some("w2"));
}

async fn a_released_lease_is_taken_over_at_once(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    // A stale attempt number releases nothing.
    store.release_lease(task.id, 7).await.unwrap();
    assert!(matches!(
        store
            .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
            .await
            .unwrap(),
        StartOutcome::Busy(_)
    ));
    store.release_lease(task.id, 1).await.unwrap();
    assert!(matches!(
        store.start_attempt(task.id, "w2", LEASE, ATTEMPTS).await.unwrap(),
        StartOutcome::Started(t) if t.attempts == 2
    ));
}

async fn a_renewed_lease_holds_the_task_past_its_first_term(store: TaskStore) {
    let short = StdDuration::from_millis(400);
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", short, ATTEMPTS)
        .await
        .unwrap();
    tokio::time::sleep(short / 2).await;
    assert!(store.renew_lease(task.id, 1, LEASE).await.unwrap());
    tokio::time::sleep(short).await;
    assert!(
        matches!(
            store
                .start_attempt(task.id, "w2", short, ATTEMPTS)
                .await
                .unwrap(),
            StartOutcome::Busy(_)
        ),
        "the first term is over, the renewed one is not"
    );
    // A stale attempt number renews nothing.
    assert!(!store.renew_lease(task.id, 7, LEASE).await.unwrap());
    store.release_lease(task.id, 1).await.unwrap();
    store
        .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
        .await
        .unwrap();
    assert!(
        !store.renew_lease(task.id, 1, LEASE).await.unwrap(),
        "an attempt taken over renews nothing"
    );
}

async fn a_task_whose_attempts_ran_out_is_given_up_not_started(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    for attempt in 1..=ATTEMPTS {
        let worker = format!("w{attempt}");
        let started = store.start_attempt(task.id, &worker, LEASE, ATTEMPTS).await;
        assert!(matches!(started.unwrap(), StartOutcome::Started(t) if t.attempts == attempt));
        if attempt < ATTEMPTS {
            // Its worker died: the lease ran out.
            store.release_lease(task.id, attempt).await.unwrap();
        }
    }
    // The last attempt is live: a duplicate neither starts a fourth nor gives up on it.
    assert!(matches!(
        store.start_attempt(task.id, "w4", LEASE, ATTEMPTS).await.unwrap(),
        StartOutcome::Busy(t) if t.attempts == ATTEMPTS
    ));
    // It dies too: the next message gives up on the task, without counting another attempt.
    store.release_lease(task.id, ATTEMPTS).await.unwrap();
    let StartOutcome::GaveUp(given_up) = store
        .start_attempt(task.id, "w4", LEASE, ATTEMPTS)
        .await
        .unwrap()
    else {
        panic!("the attempts ran out");
    };
    assert_eq!(
        (
            given_up.status,
            given_up.attempts,
            given_up.error.as_deref()
        ),
        (
            TaskStatus::Failed,
            ATTEMPTS,
            Some("gave up after 3 attempts")
        )
    );
    assert_eq!(store.get(task.id).await.unwrap(), Some(given_up.clone()));
    assert_eq!(
        store
            .start_attempt(task.id, "w5", LEASE, ATTEMPTS)
            .await
            .unwrap(),
        StartOutcome::AlreadyTerminal(given_up)
    );
}

async fn terminal_tasks_are_never_started_again(store: TaskStore) {
    let task = Task::new("1 / 0", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    let failed = Outcome::Failed {
        error: "division by zero".into(),
    };
    let done = store
        .finish_attempt(task.id, 1, &failed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
            .await
            .unwrap(),
        StartOutcome::AlreadyTerminal(done.clone())
    );
    assert_eq!(store.get(task.id).await.unwrap().unwrap().attempts, 1);
}

async fn only_the_current_attempt_may_finish(store: TaskStore) {
    let task = Task::new("7", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "slow", LEASE, ATTEMPTS)
        .await
        .unwrap();
    // The slow attempt is presumed dead (its lease released) and a second one takes over.
    store.release_lease(task.id, 1).await.unwrap();
    store
        .start_attempt(task.id, "fast", LEASE, ATTEMPTS)
        .await
        .unwrap();
    let fast = Outcome::Succeeded { result: "7".into() };
    let stale = Outcome::Failed {
        error: "stale".into(),
    };
    // The stale first attempt cannot record anything...
    assert_eq!(
        store.finish_attempt(task.id, 1, &stale).await.unwrap(),
        None
    );
    // ...the current one can, exactly once.
    assert!(
        store
            .finish_attempt(task.id, 2, &fast)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.finish_attempt(task.id, 2, &stale).await.unwrap(),
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
    store.insert(&task, NOW).await.unwrap();
    let expired = Outcome::Expired {
        error: "deadline passed".into(),
    };
    let done = store
        .finish_unstarted(task.id, &expired)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, TaskStatus::Expired);
    assert_eq!(done.error.as_deref(), Some("deadline passed"));
    assert_eq!(
        store.finish_unstarted(task.id, &expired).await.unwrap(),
        None
    );
}

async fn finishing_from_outside_never_overwrites_a_live_attempt(store: TaskStore) {
    let task = Task::new("6 * 7", Some(Utc::now() - Duration::seconds(1)));
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    let late = Outcome::expired_unstarted();
    // A late duplicate past its deadline, a gateway abandoning a publish, a dead letter, the
    // sweeper: none of them may end a task a live attempt is running.
    assert_eq!(store.finish_unstarted(task.id, &late).await.unwrap(), None);
    assert_eq!(store.finish_abandoned(task.id, &late).await.unwrap(), None);
    assert!(store.expire_overdue().await.unwrap().is_empty());
    let done = Outcome::Succeeded {
        result: "42".into(),
    };
    let finished = store.finish_attempt(task.id, 1, &done).await.unwrap();
    assert_eq!(finished.unwrap().result.as_deref(), Some("42"));
}

async fn missing_tasks_cannot_start(store: TaskStore) {
    assert_eq!(
        store
            .start_attempt(TaskId::new(), "w1", LEASE, ATTEMPTS)
            .await
            .unwrap(),
        StartOutcome::Missing
    );
}

async fn published_tasks_are_marked(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store.mark_published(&[task.id]).await.unwrap();
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
    let overdue = Task::new("4", Some(Utc::now() - Duration::seconds(1)));
    for task in [&stranded, &published, &finished, &overdue] {
        store.insert(task, NOW).await.unwrap();
    }
    let fresh = Task::new("5", None);
    store.insert(&fresh, LEASE).await.unwrap();
    store.mark_published(&[published.id]).await.unwrap();
    let done = Outcome::Failed { error: "x".into() };
    store.finish_unstarted(finished.id, &done).await.unwrap();

    // Only the stranded one: not the one within its gateway's grace, nor the published, the
    // finished or the overdue one (that one expires instead).
    let claimed = store.claim_for_sweep(10, LEASE).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|t| t.id).collect();
    assert_eq!(ids, [stranded.id]);
    // Claimed: no other sweeper takes it until the claim runs out, published or not.
    assert!(store.claim_for_sweep(10, LEASE).await.unwrap().is_empty());
    store.mark_published(&ids).await.unwrap();
}

async fn the_sweeper_claims_running_tasks_whose_attempt_vanished(store: TaskStore) {
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", StdDuration::from_millis(50), ATTEMPTS)
        .await
        .unwrap();
    assert!(
        store.claim_for_sweep(10, LEASE).await.unwrap().is_empty(),
        "a live attempt is left alone"
    );
    // The lease ran out a lease ago: the attempt and its message may both be gone.
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    let claimed = store.claim_for_sweep(10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].status, TaskStatus::Running);
}

async fn overdue_pending_tasks_expire(store: TaskStore) {
    let overdue = Task::new("1", Some(Utc::now() - Duration::seconds(5)));
    let in_time = Task::new("2", Some(Utc::now() + Duration::seconds(60)));
    let no_deadline = Task::new("3", None);
    for task in [&overdue, &in_time, &no_deadline] {
        store.insert(task, NOW).await.unwrap();
    }
    let expired = store.expire_overdue().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id, expired[0].status),
        (overdue.id, TaskStatus::Expired)
    );
    assert!(expired[0].error.as_deref().unwrap().contains("deadline"));
    assert!(store.expire_overdue().await.unwrap().is_empty());
}

async fn overdue_running_tasks_expire_only_once_their_lease_ran_out(store: TaskStore) {
    let task = Task::new("1", Some(Utc::now() + Duration::milliseconds(100)));
    store.insert(&task, NOW).await.unwrap();
    store
        .start_attempt(task.id, "w1", StdDuration::from_millis(300), ATTEMPTS)
        .await
        .unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        store.expire_overdue().await.unwrap().is_empty(),
        "past its deadline, but its attempt may still finish"
    );
    // The worker died: its lease runs out and the task ends, not RUNNING forever.
    tokio::time::sleep(StdDuration::from_millis(250)).await;
    let expired = store.expire_overdue().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].status, TaskStatus::Expired);
    assert!(
        expired[0]
            .error
            .as_deref()
            .unwrap()
            .contains("stopped responding")
    );
}

async fn open_tasks_can_be_queued_again_after_a_restart(store: TaskStore) {
    let pending = Task::new("1", None);
    store.insert(&pending, LEASE).await.unwrap();
    store.mark_published(&[pending.id]).await.unwrap();
    assert_eq!(store.forget_publishes_of_open_tasks().await.unwrap(), 1);
    assert_eq!(store.claim_for_sweep(10, LEASE).await.unwrap().len(), 1);
}

async fn retention_deletes_only_old_finished_tasks(store: TaskStore) {
    let old = Task::new("1", None);
    let open = Task::new("2", None);
    for task in [&old, &open] {
        store.insert(task, NOW).await.unwrap();
    }
    let failed = Outcome::Failed { error: "x".into() };
    store.finish_unstarted(old.id, &failed).await.unwrap();
    assert_eq!(store.delete_finished(LEASE, 100).await.unwrap(), 0);
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    let retention = StdDuration::from_millis(10);
    assert_eq!(store.delete_finished(retention, 100).await.unwrap(), 1);
    assert_eq!(store.get(old.id).await.unwrap(), None);
    assert!(
        store.get(open.id).await.unwrap().is_some(),
        "open tasks stay"
    );
}

async fn the_state_machine_is_enforced_by_the_store(store: TaskStore) {
    // Every write the store offers, tried from every reachable state: the stored transition is
    // always one TaskStatus::can_become allows.
    let task = Task::new("1", None);
    store.insert(&task, NOW).await.unwrap();
    let mut seen = vec![TaskStatus::Pending];
    store
        .start_attempt(task.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    seen.push(store.get(task.id).await.unwrap().unwrap().status);
    let ok = Outcome::Succeeded { result: "1".into() };
    store.finish_attempt(task.id, 1, &ok).await.unwrap();
    seen.push(store.get(task.id).await.unwrap().unwrap().status);
    for outcome in [
        Outcome::Failed { error: "x".into() },
        Outcome::expired_unstarted(),
    ] {
        store.finish_unstarted(task.id, &outcome).await.unwrap();
        store.finish_abandoned(task.id, &outcome).await.unwrap();
        store.finish_attempt(task.id, 1, &outcome).await.unwrap();
    }
    store
        .start_attempt(task.id, "w2", LEASE, ATTEMPTS)
        .await
        .unwrap();
    seen.push(store.get(task.id).await.unwrap().unwrap().status);
    for pair in seen.windows(2) {
        assert!(
            pair[0] == pair[1] || pair[0].can_become(pair[1]),
            "{pair:?}"
        );
    }
    assert_eq!(
        seen.last(),
        Some(&TaskStatus::Succeeded),
        "terminal stays terminal"
    );
}

#[tokio::test]
async fn concurrent_sweepers_never_claim_the_same_task_on_postgres() {
    let store = postgres().await;
    let tasks: Vec<Task> = (0..200).map(|n| Task::new(n.to_string(), None)).collect();
    store.insert_all(&tasks, NOW).await.unwrap();
    let mut sweeps = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        sweeps.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_for_sweep(7, LEASE).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|t| t.id));
            }
        }));
    }
    let mut all = Vec::new();
    for sweep in sweeps {
        all.extend(sweep.await.unwrap());
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every task claimed");
    assert_eq!(distinct.len(), 200, "none claimed twice");
}

/// Two workers (each its own store, as two processes) take every task at the same moment, one
/// task at a time: each write is a batch of one row, which takes no lock before its own (see
/// `pg::ByRows`). Exactly one of each pair records the task, and its own outcome stands.
#[tokio::test]
async fn two_workers_racing_one_row_at_a_time_record_each_task_once_on_postgres() {
    let url = dalc_testkit::fresh_postgres_database().await;
    let stores = [store(&url).await, store(&url).await];
    let tasks: Vec<Task> = (0..100).map(|n| Task::new(n.to_string(), None)).collect();
    stores[0].insert_all(&tasks, NOW).await.unwrap();
    let ids: Vec<TaskId> = tasks.iter().map(|task| task.id).collect();
    let racers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(worker, store)| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let mut won = Vec::new();
                for (n, id) in ids.into_iter().enumerate() {
                    let outcome = Outcome::Succeeded {
                        result: format!("{n} by w{worker}"),
                    };
                    let name = format!("w{worker}");
                    let ran = store
                        .record_quick_attempt(
                            id,
                            &name,
                            &n.to_string(),
                            &outcome,
                            StdDuration::ZERO,
                        )
                        .await
                        .unwrap();
                    won.extend(ran.map(|task| (n, name, task)));
                }
                won
            })
        })
        .collect();
    let mut recorded = vec![0; tasks.len()];
    for racer in racers {
        for (n, worker, task) in racer.await.unwrap() {
            recorded[n] += 1;
            assert_eq!(task.worker_id.as_deref(), Some(worker.as_str()));
            assert_eq!(task.result, Some(format!("{n} by {worker}")));
            assert_eq!(task.attempts, 1);
            assert_eq!(stores[0].get(task.id).await.unwrap(), Some(task));
        }
    }
    assert!(recorded.iter().all(|&count| count == 1), "{recorded:?}");
}

#[tokio::test]
async fn a_statement_timeout_on_postgres_is_an_outage_not_a_bug() {
    let options = StoreOptions {
        statement_timeout: StdDuration::from_millis(100),
        ..StoreOptions::default()
    };
    let store = store_with(&dalc_testkit::fresh_postgres_database().await, &options).await;
    let err = store
        .execute_unprepared("SELECT pg_sleep(2)")
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = store
        .execute_unprepared("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
}

/// One setting as a connection of the store's pool sees it (`SHOW` or `PRAGMA`).
async fn setting(store: &TaskStore, query: &str) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = store.backend();
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(backend, query))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<String>(0)
        .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
        .unwrap()
}

#[tokio::test]
async fn postgres_connections_plan_for_short_statements() {
    let store = postgres().await;
    // No plan compiled to machine code (with sequential scans off, a statement with no index
    // to use looks expensive enough for it, at every execution), no table scans, plans kept.
    assert_eq!(setting(&store, "SHOW jit").await, "off");
    assert_eq!(setting(&store, "SHOW enable_seqscan").await, "off");
    assert_eq!(
        setting(&store, "SHOW plan_cache_mode").await,
        "force_generic_plan"
    );
}

#[tokio::test]
async fn sqlite_checkpoints_happen_beside_the_serving_connection() {
    let (url, file) = dalc_testkit::fresh_sqlite_file();
    let store = store(&url).await;
    // The serving connection never stops to checkpoint...
    assert_eq!(setting(&store, "PRAGMA wal_autocheckpoint").await, "0");
    let tasks: Vec<Task> = (0..3000).map(|n| Task::new(n.to_string(), None)).collect();
    store.insert_all(&tasks, NOW).await.unwrap();
    // ...and yet what it wrote reaches the database file, not only its log.
    let size = || std::fs::metadata(&file).map(|meta| meta.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while size() < 512 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert!(size() >= 512 * 1024, "a database file of {} bytes", size());
    assert_eq!(store.all().await.unwrap().len(), 3000);
}

#[tokio::test]
async fn a_locked_sqlite_database_is_an_outage_not_a_bug() {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let url = dalc_testkit::fresh_sqlite_database();
    let options = StoreOptions {
        statement_timeout: StdDuration::from_millis(100),
        ..StoreOptions::default()
    };
    let store = store_with(&url, &options).await;
    // Another process holds the write lock (SQLite allows one writer at a time).
    let other = Database::connect(&url).await.unwrap();
    let holding = other.begin().await.unwrap();
    holding
        .execute_unprepared("UPDATE tasks SET attempts = attempts")
        .await
        .unwrap();
    let err = store.insert(&Task::new("1", None), NOW).await.unwrap_err();
    assert!(err.is_unavailable(), "SQLITE_BUSY is transient: {err}");
    holding.rollback().await.unwrap();
    store.insert(&Task::new("1", None), NOW).await.unwrap();
}

async fn many_attempts_start_and_end_at_once_each_with_its_own_outcome(store: TaskStore) {
    // Enough at once that the group commit batches them: each caller still gets its own row.
    let tasks: Vec<Task> = (0..120).map(|n| Task::new(n.to_string(), None)).collect();
    let inserts: Vec<_> = tasks
        .iter()
        .map(|task| {
            let (store, task) = (store.clone(), task.clone());
            tokio::spawn(async move { store.insert(&task, NOW).await })
        })
        .collect();
    for insert in inserts {
        insert.await.unwrap().unwrap();
    }
    let starts: Vec<_> = tasks
        .iter()
        .map(|task| {
            let (store, id) = (store.clone(), task.id);
            tokio::spawn(async move { store.start_attempt(id, "w1", LEASE, ATTEMPTS).await })
        })
        .collect();
    for start in starts {
        assert!(matches!(
            start.await.unwrap().unwrap(),
            StartOutcome::Started(_)
        ));
    }
    let finishes: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(n, task)| {
            let (store, id) = (store.clone(), task.id);
            tokio::spawn(async move {
                let outcome = numbered_outcome(n);
                // Every fifth caller names a stale attempt: it must record nothing.
                let attempt = if n % 5 == 0 { 7 } else { 1 };
                (
                    n,
                    attempt,
                    store.finish_attempt(id, attempt, &outcome).await,
                )
            })
        })
        .collect();
    for finish in finishes {
        let (n, attempt, finished) = finish.await.unwrap();
        let finished = finished.unwrap();
        if attempt != 1 {
            assert_eq!(finished, None, "a stale attempt records nothing");
            continue;
        }
        let task = finished.expect("the current attempt ends its task");
        assert_eq!(task.expression, n.to_string());
        if n % 3 == 0 {
            assert_eq!(task.error, Some(format!("e{n}")));
        } else {
            assert_eq!(task.result, Some(n.to_string()));
        }
    }
}

async fn a_quick_attempt_counts_and_records_in_one_write(store: TaskStore) {
    let task = stored_pending(&store, "1 + 1").await;
    let ok = Outcome::Succeeded { result: "2".into() };
    let done = quick(&store, task.id, "w1", "1 + 1", &ok)
        .await
        .expect("a PENDING task takes a quick attempt");
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result.as_deref(), Some("2"));
    assert_eq!(done.error, None);
    assert_eq!(done.attempts, 1, "the attempt is counted in the same write");
    assert_eq!(done.worker_id.as_deref(), Some("w1"));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(store.get(task.id).await.unwrap(), Some(done));

    let failed = stored_pending(&store, "1 / 0").await;
    let division = Outcome::Failed {
        error: "division by zero".into(),
    };
    let done = quick(&store, failed.id, "w1", "1 / 0", &division)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.result, None);
    assert_eq!(done.error.as_deref(), Some("division by zero"));
}

/// A new PENDING task of `expression`, stored.
async fn stored_pending(store: &TaskStore, expression: &str) -> Task {
    let task = Task::new(expression, None);
    store.insert(&task, NOW).await.unwrap();
    task
}

/// A quick attempt by `worker` at `id`, having evaluated `expression` to `outcome`.
async fn quick(
    store: &TaskStore,
    id: TaskId,
    worker: &str,
    expression: &str,
    outcome: &Outcome,
) -> Option<Task> {
    store
        .record_quick_attempt(
            id,
            worker,
            expression,
            outcome,
            std::time::Duration::from_micros(250),
        )
        .await
        .unwrap()
}

async fn a_quick_attempt_only_ends_a_pending_task(store: TaskStore) {
    let ok = Outcome::Succeeded { result: "2".into() };
    let status = |task: Option<Task>| task.unwrap().status;
    // Finished already: the duplicate records nothing, the first result stands.
    let task = stored_pending(&store, "1 + 1").await;
    quick(&store, task.id, "w1", "1 + 1", &ok).await;
    let other = Outcome::Succeeded { result: "3".into() };
    assert_eq!(quick(&store, task.id, "w2", "1 + 1", &other).await, None);
    let stored = store.get(task.id).await.unwrap().unwrap();
    assert_eq!((stored.result.as_deref(), stored.attempts), (Some("2"), 1));
    // Its run time is the evaluation's, not zero.
    let ran = stored.finished_at.unwrap() - stored.started_at.unwrap();
    assert_eq!(ran, chrono::TimeDelta::microseconds(250));
    // RUNNING under a live attempt: left to that attempt.
    let running = stored_pending(&store, "1 + 1").await;
    store
        .start_attempt(running.id, "w1", LEASE, ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(quick(&store, running.id, "w2", "1 + 1", &ok).await, None);
    assert_eq!(
        status(store.get(running.id).await.unwrap()),
        TaskStatus::Running
    );
    // Cancelled: never run.
    let cancelled = stored_pending(&store, "1 + 1").await;
    store
        .finish_unstarted(cancelled.id, &Outcome::cancelled())
        .await
        .unwrap();
    assert_eq!(quick(&store, cancelled.id, "w1", "1 + 1", &ok).await, None);
    // A message whose expression is not the stored one: the database is the truth.
    let mismatched = stored_pending(&store, "1 + 1").await;
    assert_eq!(
        quick(&store, mismatched.id, "w1", "1 + 2", &other).await,
        None
    );
    assert_eq!(
        status(store.get(mismatched.id).await.unwrap()),
        TaskStatus::Pending
    );
    // Missing: nothing to write.
    assert_eq!(quick(&store, TaskId::new(), "w1", "1 + 1", &ok).await, None);
}

async fn many_quick_attempts_at_once_each_get_their_own_row(store: TaskStore) {
    // Enough at once that the group commit batches them, with every tenth task twice (two
    // copies of one message, taken by two workers): exactly one copy records it.
    let tasks: Vec<Task> = (0..150).map(|n| Task::new(n.to_string(), None)).collect();
    store.insert_all(&tasks, NOW).await.unwrap();
    let copies = tasks
        .iter()
        .enumerate()
        .flat_map(|(n, task)| {
            let twice = if n % 10 == 0 { 2 } else { 1 };
            (0..twice).map(move |copy| (n, copy, task.id))
        })
        .map(|(n, copy, id)| {
            let store = store.clone();
            tokio::spawn(async move {
                let outcome = numbered_outcome(n);
                let worker = format!("w{copy}");
                let expression = n.to_string();
                let ran = store
                    .record_quick_attempt(
                        id,
                        &worker,
                        &expression,
                        &outcome,
                        std::time::Duration::ZERO,
                    )
                    .await;
                (n, worker, ran.unwrap())
            })
        })
        .collect::<Vec<_>>();
    let mut recorded = vec![0; tasks.len()];
    for copy in copies {
        let (n, worker, ran) = copy.await.unwrap();
        let Some(task) = ran else { continue };
        recorded[n] += 1;
        assert_eq!(task.id, tasks[n].id);
        assert_eq!(task.worker_id.as_deref(), Some(worker.as_str()));
        assert_eq!(task.attempts, 1);
        if n % 3 == 0 {
            assert_eq!(task.error, Some(format!("e{n}")));
        } else {
            assert_eq!(task.result, Some(n.to_string()));
        }
    }
    assert!(recorded.iter().all(|&count| count == 1), "{recorded:?}");
}

async fn finished_tasks_are_counted_since_a_watermark_and_open_ones_by_status(store: TaskStore) {
    let mut ids = Vec::new();
    for n in 0..5 {
        let mut task = Task::new(format!("{n}"), None);
        task.tenant = if n == 4 {
            "other".into()
        } else {
            String::new()
        };
        store.insert(&task, NOW).await.unwrap();
        ids.push(task.id);
    }
    store
        .start_attempt(ids[0], "w", LEASE, ATTEMPTS)
        .await
        .unwrap();
    store
        .start_attempt(ids[1], "w", LEASE, ATTEMPTS)
        .await
        .unwrap();
    let done = Outcome::Succeeded { result: "1".into() };
    store.finish_attempt(ids[1], 1, &done).await.unwrap();
    store.cancel(ids[2]).await.unwrap();

    let open = store.count_open_for("").await.unwrap();
    assert_eq!(open.get(&TaskStatus::Pending), Some(&1));
    assert_eq!(open.get(&TaskStatus::Running), Some(&1));
    // Settled right away (no margin): both finished tasks are below the watermark.
    let all = store.count_finished_since("", None, NOW).await.unwrap();
    assert_eq!(all.counts.get(&TaskStatus::Succeeded), Some(&(1, 1)));
    assert_eq!(all.counts.get(&TaskStatus::Cancelled), Some(&(1, 1)));
    // A long margin: nothing is settled yet, everything is counted.
    let recent = store
        .count_finished_since("", None, StdDuration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(recent.counts.get(&TaskStatus::Succeeded), Some(&(0, 1)));
    // Since the last watermark: only what finished after it.
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    store.finish_attempt(ids[0], 1, &done).await.unwrap();
    let since = store
        .count_finished_since("", Some(all.watermark), NOW)
        .await
        .unwrap();
    assert_eq!(since.counts.get(&TaskStatus::Succeeded), Some(&(1, 1)));
    assert_eq!(since.counts.get(&TaskStatus::Cancelled), None);
    assert!(since.watermark >= all.watermark);
    // Another tenant's tasks are not counted.
    let other = store.count_open_for("other").await.unwrap();
    assert_eq!(other.get(&TaskStatus::Pending), Some(&1));
}
