//! Sync callers waiting for a task, keyed by task id.
//!
//! Replies and events are routed here by correlation id; an update for a task nobody waits for
//! is dropped. A caller subscribes *before* it publishes or reads the database, so an update that
//! lands in between is not missed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use dalc_domain::{Task, TaskId};
use tokio::sync::watch;

/// The registry of waiting callers. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Waiters {
    by_task: Arc<Mutex<HashMap<TaskId, Entry>>>,
}

/// One task's updates and how many subscriptions hold them: counted under the map's lock, so
/// the last subscription to go removes the entry, exactly once, however drops interleave.
#[derive(Debug)]
struct Entry {
    updates: watch::Sender<Option<Task>>,
    subscriptions: usize,
}

impl Waiters {
    /// Starts listening for updates to `id`; stops when the subscription is dropped.
    pub fn subscribe(&self, id: TaskId) -> Subscription {
        let mut by_task = self.lock();
        let entry = by_task.entry(id).or_insert_with(|| Entry {
            updates: watch::channel(None).0,
            subscriptions: 0,
        });
        entry.subscriptions += 1;
        let updates = entry.updates.subscribe();
        Subscription {
            id,
            updates,
            waiters: self.clone(),
        }
    }

    /// Hands `task` to whoever waits for it; drops it if nobody does, or if they already have
    /// a later state (a RUNNING event arriving after the result).
    pub fn deliver(&self, task: Task) {
        if let Some(entry) = self.lock().get(&task.id) {
            entry.updates.send_if_modified(|current| {
                let newer = current.as_ref().is_none_or(|seen| task.supersedes(seen));
                if newer {
                    *current = Some(task);
                }
                newer
            });
        }
    }

    /// How many tasks have someone waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Entry>> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.by_task.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One caller's interest in one task.
#[derive(Debug)]
pub struct Subscription {
    id: TaskId,
    updates: watch::Receiver<Option<Task>>,
    waiters: Waiters,
}

impl Subscription {
    /// The next update to the task; pending forever if none comes (callers bound the wait).
    pub async fn next(&mut self) -> Task {
        loop {
            if self.updates.changed().await.is_err() {
                // The sender lives as long as any subscription to this id, ours included.
                std::future::pending::<()>().await;
            }
            if let Some(task) = self.updates.borrow_and_update().clone() {
                return task;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut by_task = self.waiters.lock();
        if let Some(entry) = by_task.get_mut(&self.id) {
            entry.subscriptions = entry.subscriptions.saturating_sub(1);
            if entry.subscriptions == 0 {
                by_task.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dalc_domain::TaskStatus;

    use super::*;

    fn done(id: TaskId) -> Task {
        let mut task = Task::new("1", None);
        task.id = id;
        task.status = TaskStatus::Succeeded;
        task
    }

    #[tokio::test]
    async fn updates_reach_every_subscriber_of_their_task() {
        let waiters = Waiters::default();
        let id = TaskId::new();
        let mut first = waiters.subscribe(id);
        let mut second = waiters.subscribe(id);
        let mut other = waiters.subscribe(TaskId::new());
        waiters.deliver(done(id));
        assert_eq!(first.next().await.id, id);
        assert_eq!(second.next().await.id, id);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_late_running_event_never_hides_the_result() {
        let waiters = Waiters::default();
        let id = TaskId::new();
        let mut subscription = waiters.subscribe(id);
        waiters.deliver(done(id));
        let mut late = done(id);
        late.status = TaskStatus::Running;
        waiters.deliver(late);
        assert_eq!(subscription.next().await.status, TaskStatus::Succeeded);
    }

    #[test]
    fn updates_nobody_waits_for_are_dropped() {
        let waiters = Waiters::default();
        waiters.deliver(done(TaskId::new()));
        assert!(waiters.is_empty());
    }

    #[test]
    fn concurrent_drops_of_one_tasks_subscriptions_leave_nothing_behind() {
        let waiters = Waiters::default();
        for _ in 0..200 {
            let id = TaskId::new();
            let pairs: Vec<_> = (0..4).map(|_| waiters.subscribe(id)).collect();
            let threads: Vec<_> = pairs
                .into_iter()
                .map(|subscription| std::thread::spawn(move || drop(subscription)))
                .collect();
            for thread in threads {
                thread.join().unwrap_or_default();
            }
        }
        assert!(waiters.is_empty(), "{} entries leaked", waiters.len());
    }

    #[test]
    fn the_last_subscription_cleans_up() {
        let waiters = Waiters::default();
        let id = TaskId::new();
        let first = waiters.subscribe(id);
        let second = waiters.subscribe(id);
        drop(first);
        assert_eq!(waiters.len(), 1);
        drop(second);
        assert!(waiters.is_empty());
    }
}
