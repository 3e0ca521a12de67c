//! The life cycle of a task: PENDING → RUNNING → one terminal state.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Where a task stands. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Stored and queued; no worker has started it yet.
    Pending,
    /// A worker is evaluating it (or died doing so, and the broker will redeliver it).
    Running,
    /// Evaluated; the task carries its result.
    Succeeded,
    /// Evaluation failed (division by zero, domain error, ...) or was given up on.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
    /// Its deadline passed before a worker could start it.
    Expired,
}

impl TaskStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ];

    /// A terminal task is finished for good: no worker may change it again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }

    /// Whether a task may move from `self` to `next`.
    ///
    /// RUNNING → RUNNING is allowed: a worker that died mid-task leaves the task RUNNING, and the
    /// redelivered message starts it again as a new attempt.
    pub fn can_become(self, next: TaskStatus) -> bool {
        match (self, next) {
            (TaskStatus::Pending, _) => next != TaskStatus::Pending,
            (TaskStatus::Running, _) => next != TaskStatus::Pending,
            _ => false,
        }
    }

    /// The stable upper-case name used in the database, in messages and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Succeeded => "SUCCEEDED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
            TaskStatus::Expired => "EXPIRED",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`TaskStatus::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("pending".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn only_pending_and_running_are_open() {
        let open: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(open, [TaskStatus::Pending, TaskStatus::Running]);
    }

    #[test]
    fn terminal_states_never_change() {
        for from in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn open_states_move_forward() {
        assert!(TaskStatus::Pending.can_become(TaskStatus::Running));
        assert!(TaskStatus::Pending.can_become(TaskStatus::Expired));
        assert!(TaskStatus::Running.can_become(TaskStatus::Running));
        assert!(TaskStatus::Running.can_become(TaskStatus::Succeeded));
        assert!(!TaskStatus::Running.can_become(TaskStatus::Pending));
    }
}
