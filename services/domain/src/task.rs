//! A task and its identifier.

use std::{fmt, str::FromStr};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TaskStatus;

/// A task's identity: a UUID, shown in canonical lowercase text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh id: a version 7 UUID, whose first 48 bits are the time in milliseconds and the
    /// rest a counter and random bits. Ids made one after another sort together, so a new
    /// task's entry lands beside the last one's in the primary-key index: a random (version 4)
    /// id puts every insert on a random page of it, and on SQLite, which writes whole pages to
    /// its log at each commit, that was 40 % of the bytes written per task.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        TaskId(uuid)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lowercase is the canonical form clients see and send back.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Text that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed task id {text:?}: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8")]
pub struct InvalidTaskId {
    text: String,
}

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Clients may send any case and any of the UUID text forms; we answer canonically.
        let shown: String = s.chars().take(64).collect();
        Uuid::try_parse(s.trim())
            .map(TaskId)
            .map_err(|_| InvalidTaskId { text: shown })
    }
}

/// One expression and where its evaluation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub expression: String,
    pub status: TaskStatus,
    /// Set when SUCCEEDED: the canonical decimal text of the value.
    pub result: Option<String>,
    /// Set when FAILED, EXPIRED or CANCELLED: why, for humans.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker of the latest attempt.
    pub worker_id: Option<String>,
    /// How many times a worker started the task.
    pub attempts: u32,
    /// After this instant the task is no longer worth starting: it becomes EXPIRED.
    pub deadline: Option<DateTime<Utc>>,
    /// Who submitted it; nobody else sees it. Empty when the gateway runs without API keys.
    #[serde(default)]
    pub tenant: String,
    /// 0-9: higher runs first.
    #[serde(default)]
    pub priority: Priority,
    /// A client's key for retrying the submission safely (unique per tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A task's rank in the queue: 0 (lowest) to [`Priority::MAX`]; higher runs first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

/// Read from a message or a stored task: out of range is refused, never carried along.
impl TryFrom<u8> for Priority {
    type Error = String;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Priority::new(u32::from(value))
            .ok_or_else(|| format!("priority {value} is out of range (0-{})", Priority::MAX))
    }
}

impl From<Priority> for u8 {
    fn from(priority: Priority) -> Self {
        priority.0
    }
}

impl Priority {
    pub const MAX: u8 = 9;
    /// What a sync call (a client waiting for the result) gets when it asks for no priority:
    /// interactive work overtakes a backlog of deferred work.
    pub const INTERACTIVE: Priority = Priority(5);

    /// `value` if it is a priority (0-9), else `None`.
    pub fn new(value: u32) -> Option<Self> {
        u8::try_from(value)
            .ok()
            .filter(|&value| value <= Self::MAX)
            .map(Priority)
    }

    /// The priority a submission gets: the requested one, or when it asked for none (0), the
    /// interactive rank for sync calls and the lowest for deferred work.
    pub fn for_submission(requested: Priority, waits: bool) -> Self {
        match (requested, waits) {
            (Priority(0), true) => Self::INTERACTIVE,
            (requested, _) => requested,
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// An instant of a task as every database keeps it and every answer shows it: to the
/// microsecond, PostgreSQL's precision. So a task reads the same from the call that made it,
/// from its reply and from the database afterwards, on PostgreSQL and on SQLite alike.
pub fn task_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

impl Task {
    /// A new PENDING task for `expression`, created now.
    pub fn new(expression: impl Into<String>, deadline: Option<DateTime<Utc>>) -> Self {
        Task {
            id: TaskId::new(),
            expression: expression.into(),
            status: TaskStatus::Pending,
            result: None,
            error: None,
            created_at: task_instant(Utc::now()),
            started_at: None,
            finished_at: None,
            worker_id: None,
            attempts: 0,
            deadline,
            tenant: String::new(),
            priority: Priority::default(),
            idempotency_key: None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// Whether `self` ends a run of an attempt that `seen`, an earlier state of the task, does
    /// not show running: whoever saw `seen` missed that attempt's RUNNING state (or it was
    /// never stored: a worker's quick attempt starts and ends in one write).
    pub fn ends_a_run_unseen_in(&self, seen: &Task) -> bool {
        let ends_a_run = matches!(
            self.status,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Expired
        ) && self.started_at.is_some()
            && self.attempts > 0;
        let seen_running = seen.status == TaskStatus::Running && seen.attempts == self.attempts;
        ends_a_run && !seen_running
    }

    /// The task as it stood while its latest attempt ran: RUNNING, without the attempt's end.
    pub fn while_running(&self) -> Task {
        Task {
            status: TaskStatus::Running,
            result: None,
            error: None,
            finished_at: None,
            ..self.clone()
        }
    }

    /// Whether `self` is a later state of the same task than `other`: updates travel by
    /// separate routes (replies, status events, database reads) and may arrive late or twice,
    /// and an older one must never replace a newer one.
    pub fn supersedes(&self, other: &Task) -> bool {
        if other.is_terminal() {
            return false;
        }
        self.is_terminal()
            || (self.status == TaskStatus::Running
                && (other.status == TaskStatus::Pending || self.attempts > other.attempts))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_made_one_after_another_sort_in_that_order() {
        let ids: Vec<TaskId> = (0..10_000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids[0].as_uuid().get_version_num(), 7);
    }

    #[test]
    fn a_finished_task_while_running_is_its_attempt_before_the_end() {
        let mut task = Task::new("1 + 1", None);
        task.status = TaskStatus::Succeeded;
        task.result = Some("2".into());
        task.attempts = 1;
        task.worker_id = Some("w".into());
        task.started_at = Some(Utc::now());
        task.finished_at = task.started_at;
        let running = task.while_running();
        assert_eq!(running.status, TaskStatus::Running);
        assert_eq!(
            (running.result.as_deref(), running.finished_at),
            (None, None)
        );
        assert_eq!(running.attempts, 1);
        assert_eq!(running.started_at, task.started_at);
        let pending = Task {
            status: TaskStatus::Pending,
            attempts: 0,
            ..Task::new("1 + 1", None)
        };
        assert!(running.supersedes(&pending));
        assert!(task.supersedes(&running));
        // Its run was unseen from PENDING, not from its own RUNNING state.
        assert!(task.ends_a_run_unseen_in(&pending));
        assert!(!task.ends_a_run_unseen_in(&running));
        // An attempt seen running is not this one.
        let earlier = Task {
            attempts: 0,
            ..running.clone()
        };
        assert!(task.ends_a_run_unseen_in(&earlier));
        // Ends that are not of a run: a cancel, an expiry before any start.
        for status in [TaskStatus::Cancelled, TaskStatus::Expired] {
            let unrun = Task {
                status,
                started_at: None,
                attempts: 0,
                ..pending.clone()
            };
            assert!(!unrun.ends_a_run_unseen_in(&pending), "{status:?}");
        }
    }

    #[test]
    fn ids_are_canonical_lowercase() {
        let id: TaskId = "67E55044-10B1-426F-9247-BB680E5FE0C8".parse().unwrap();
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(TaskId::new().to_string().len(), 36);
    }

    #[test]
    fn malformed_ids_are_rejected_with_a_clear_message() {
        for bad in [
            "",
            "42",
            "not-a-uuid",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
        ] {
            let err = bad.parse::<TaskId>().unwrap_err();
            assert!(err.to_string().contains("malformed task id"), "{err}");
        }
    }

    #[test]
    fn new_tasks_are_pending_with_no_attempts() {
        let task = Task::new("1 + 1", None);
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.attempts, 0);
        assert!(!task.is_terminal());
    }

    #[test]
    fn priorities_are_zero_to_nine_and_sync_calls_rank_above_deferred_work() {
        assert_eq!(Priority::new(9).map(Priority::get), Some(9));
        assert_eq!(Priority::new(10), None);
        assert_eq!(serde_json::from_str::<Priority>("9").ok(), Priority::new(9));
        assert!(serde_json::from_str::<Priority>("10").is_err());
        assert_eq!(
            serde_json::to_string(&Priority::INTERACTIVE).ok(),
            Some("5".into())
        );
        let unset = Priority::default();
        assert_eq!(Priority::for_submission(unset, true), Priority::INTERACTIVE);
        assert_eq!(Priority::for_submission(unset, false), unset);
        let high = Priority::new(8).unwrap();
        assert_eq!(Priority::for_submission(high, false), high);
    }

    #[test]
    fn late_updates_never_replace_newer_ones() {
        let pending = Task::new("1", None);
        let running = Task {
            status: TaskStatus::Running,
            attempts: 1,
            ..pending.clone()
        };
        let retried = Task {
            attempts: 2,
            ..running.clone()
        };
        let done = Task {
            status: TaskStatus::Succeeded,
            ..running.clone()
        };
        assert!(running.supersedes(&pending) && retried.supersedes(&running));
        assert!(done.supersedes(&running) && done.supersedes(&pending));
        assert!(
            !running.supersedes(&done),
            "a late RUNNING after the result"
        );
        assert!(!running.supersedes(&retried) && !pending.supersedes(&running));
        assert!(!done.supersedes(&done));
    }

    #[test]
    fn tasks_round_trip_through_json() {
        let task = Task::new("2 * 3", Some(Utc::now()));
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), task);
    }
}
