//! The one place where errors become gRPC statuses.

use dalc_queue::QueueError;
use dalc_storage::StorageError;
use tonic::{Code, Status};
use tracing::error;

/// What can go wrong serving a call, by what the client should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong: fix it, do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A dependency is out of reach: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected answer from a dependency; logged, not shown.
    #[error("{0}")]
    Internal(String),
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        if err.is_unavailable() {
            // The driver's words stay in the log: they name hosts and internals.
            tracing::warn!(error = %err, "task database unavailable");
            ApiError::Unavailable("the task database is unavailable; try again later".into())
        } else {
            ApiError::Internal(err.to_string())
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        tracing::warn!(error = %err, "task queue unavailable");
        ApiError::Unavailable(format!("the task queue is unavailable: {}", err.public()))
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument(message) => Status::new(Code::InvalidArgument, message),
            ApiError::NotFound(message) => Status::new(Code::NotFound, message),
            ApiError::Unavailable(message) => {
                error!(error = %message, "dependency unavailable");
                Status::new(Code::Unavailable, message)
            }
            ApiError::Internal(message) => {
                // Internals stay in the log; the client gets a stable, safe message.
                error!(error = %message, "internal error");
                Status::new(Code::Internal, "internal error; see the gateway's log")
            }
        }
    }
}
