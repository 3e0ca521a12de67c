//! The life cycle of a task: PENDING → RUNNING → one terminal state.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Where a task stands. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

    /// Whether a task may move from `self` to `next`: the one statement of the state machine.
    ///
    /// ```text
    /// PENDING ──▶ RUNNING ──▶ SUCCEEDED | FAILED | EXPIRED
    ///    │           ▲ │
    ///    │           └─┘ a new attempt takes over (only once the old one's lease ran out)
    ///    ├──▶ FAILED (could not be queued) | EXPIRED (deadline before any start) | CANCELLED
    ///    └──▶ SUCCEEDED | FAILED: a quick attempt, started and ended in one write
    /// ```
    ///
    /// A quick attempt is a first delivery of a task the engine predicts takes microseconds: it is
    /// evaluated before any write, and its attempt is counted in the write that records the
    /// result (nothing can die between the two; a redelivery always counts its attempt first).
    ///
    /// The store's compare-and-set updates filter on [`TaskStatus::sources_of`], so no write can
    /// make a move this function refuses.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Succeeded | Failed | Expired | Cancelled)
                | (Running, Running | Succeeded | Failed | Expired)
        )
    }

    /// Every status that may move to `next`: what a compare-and-set update to `next` accepts.
    pub fn sources_of(next: TaskStatus) -> Vec<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }

    /// The statuses that never change again.
    pub fn terminal() -> Vec<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .filter(|status| status.is_terminal())
            .collect()
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
        use TaskStatus::*;
        assert!(Pending.can_become(Running));
        assert!(Pending.can_become(Succeeded));
        assert!(Pending.can_become(Expired));
        assert!(Pending.can_become(Cancelled));
        assert!(Running.can_become(Running));
        assert!(Running.can_become(Succeeded));
        assert!(!Running.can_become(Pending));
        assert!(
            !Running.can_become(Cancelled),
            "a running task cannot be cancelled"
        );
    }

    #[test]
    fn sources_follow_the_transitions() {
        use TaskStatus::*;
        assert_eq!(TaskStatus::sources_of(Running), [Pending, Running]);
        assert_eq!(TaskStatus::sources_of(Succeeded), [Pending, Running]);
        assert_eq!(TaskStatus::sources_of(Expired), [Pending, Running]);
        assert_eq!(TaskStatus::sources_of(Cancelled), [Pending]);
        assert!(TaskStatus::sources_of(Pending).is_empty());
        assert_eq!(TaskStatus::terminal().len(), 4);
    }
}
