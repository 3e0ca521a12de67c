//! How a task ends.

use crate::TaskStatus;

/// The terminal state a task is brought to, with its result or its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Evaluated: the canonical decimal text of the value.
    Succeeded { result: String },
    /// Evaluation failed, the task could not be queued, or it was given up on.
    Failed { error: String },
    /// Its deadline passed before an attempt could finish it.
    Expired { error: String },
    /// A client cancelled it before any worker started it.
    Cancelled { error: String },
}

impl Outcome {
    /// EXPIRED, for a task whose deadline passed before any attempt could start it.
    pub fn expired_unstarted() -> Self {
        Outcome::Expired {
            error: "the task's deadline passed before a worker could start it".into(),
        }
    }

    /// FAILED, for a task whose `max_attempts` attempts all ended without a result (each
    /// crashed its handler, or died with its worker).
    pub fn gave_up(max_attempts: u32) -> Self {
        Outcome::Failed {
            error: format!("gave up after {max_attempts} attempts"),
        }
    }

    /// EXPIRED, for a task whose attempt stopped answering and whose deadline then passed.
    pub fn expired_abandoned() -> Self {
        Outcome::Expired {
            error: "the task's deadline passed while its worker stopped responding".into(),
        }
    }

    /// CANCELLED, at a client's request.
    pub fn cancelled() -> Self {
        Outcome::Cancelled {
            error: "cancelled by a client before it ran".into(),
        }
    }

    /// The status this outcome stores.
    pub fn status(&self) -> TaskStatus {
        match self {
            Outcome::Succeeded { .. } => TaskStatus::Succeeded,
            Outcome::Failed { .. } => TaskStatus::Failed,
            Outcome::Expired { .. } => TaskStatus::Expired,
            Outcome::Cancelled { .. } => TaskStatus::Cancelled,
        }
    }

    /// The result, when there is one.
    pub fn result(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { result } => Some(result),
            Outcome::Failed { .. } | Outcome::Expired { .. } | Outcome::Cancelled { .. } => None,
        }
    }

    /// The reason, when the task did not succeed.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { error }
            | Outcome::Expired { error }
            | Outcome::Cancelled { error } => Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_terminal_and_carries_one_of_result_or_error() {
        for outcome in [
            Outcome::Succeeded { result: "2".into() },
            Outcome::Failed { error: "x".into() },
            Outcome::expired_unstarted(),
            Outcome::expired_abandoned(),
            Outcome::cancelled(),
        ] {
            assert!(outcome.status().is_terminal());
            assert_ne!(outcome.result().is_some(), outcome.error().is_some());
        }
    }
}
