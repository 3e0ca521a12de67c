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
    /// The same idempotency key was used for something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// The task is not in a state that allows this (e.g. cancelling a RUNNING task).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit is reached (a full queue, too many waiting calls): retry later, more slowly.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No API key, or one this gateway does not know.
    #[error("{0}")]
    Unauthenticated(String),
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
        if matches!(err, QueueError::Full) {
            return ApiError::ResourceExhausted(err.public().into());
        }
        tracing::warn!(error = %err, "task queue unavailable");
        ApiError::Unavailable(format!("the task queue is unavailable: {}", err.public()))
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument(message) => Status::new(Code::InvalidArgument, message),
            ApiError::NotFound(message) => Status::new(Code::NotFound, message),
            ApiError::AlreadyExists(message) => Status::new(Code::AlreadyExists, message),
            ApiError::FailedPrecondition(message) => Status::new(Code::FailedPrecondition, message),
            ApiError::ResourceExhausted(message) => Status::new(Code::ResourceExhausted, message),
            ApiError::Unauthenticated(message) => Status::new(Code::Unauthenticated, message),
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
