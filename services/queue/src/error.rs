//! Queue errors.

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The broker cannot be reached, or did not answer in time; retrying later may succeed.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// The broker is blocking publishes (a memory or disk alarm) until the alarm clears.
    #[error("the message broker is refusing publishes (a memory or disk alarm)")]
    Blocked,
    /// The broker refused the message (a negative confirm, or no queue to route it to).
    #[error("message broker refused the message: {0}")]
    Refused(String),
    /// The broker answered a publish with a negative confirm.
    #[error("message broker nacked the message: {0}")]
    Nacked(String),
    /// The request queue is at its maximum length: the broker refuses new tasks until workers
    /// catch up (backpressure, not an outage).
    #[error("the request queue is full")]
    Full,
    /// The broker rejected our topology or an operation, e.g. a queue declared with other
    /// arguments by another deployment.
    #[error("message broker error: {0}")]
    Broker(String),
}

impl QueueError {
    /// A fault to wait out: the broker is away, slow or blocking publishes.
    pub fn is_outage(&self) -> bool {
        matches!(self, QueueError::Unavailable(_) | QueueError::Blocked)
    }

    /// What a client may be told: the kind of fault, without the broker's own words (hosts,
    /// internals); those go to the log.
    pub fn public(&self) -> &'static str {
        match self {
            QueueError::Blocked => {
                "the broker is refusing publishes (a memory or disk alarm); try again later"
            }
            QueueError::Unavailable(_) => {
                "the broker cannot be reached or did not answer in time; try again later"
            }
            QueueError::Refused(_) | QueueError::Nacked(_) => {
                "the broker refused the task; try again later"
            }
            QueueError::Full => "the request queue is full; try again later",
            QueueError::Broker(_) => "the broker rejected an operation; see the gateway's log",
        }
    }
}

impl From<lapin::Error> for QueueError {
    fn from(err: lapin::Error) -> Self {
        use lapin::ErrorKind;
        match err.kind() {
            ErrorKind::ProtocolError(_) => QueueError::Broker(err.to_string()),
            _ => QueueError::Unavailable(err.to_string()),
        }
    }
}
