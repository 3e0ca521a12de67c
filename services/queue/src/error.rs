//! Queue errors.

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The broker cannot be reached, or did not answer in time; retrying later may succeed.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (a negative confirm, or no queue to route it to).
    #[error("message broker refused the message: {0}")]
    Refused(String),
    /// The broker rejected our topology or an operation, e.g. a queue declared with other
    /// arguments by another deployment.
    #[error("message broker error: {0}")]
    Broker(String),
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
