//! Storage errors, split by what a caller can do about them.

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database cannot be reached right now; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// The database answered with an error: a bug or a schema mismatch, not a transient fault.
    #[error("database error: {0}")]
    Query(#[source] DbErr),
    /// A row holds a value this version of dalc cannot read.
    #[error("corrupt task row: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// True when the fault is the connection, not the query: callers back off and retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        match err {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => StorageError::Unavailable(err),
            // sqlx reports a dropped connection mid-query as an I/O error inside a query error.
            DbErr::Exec(ref e) | DbErr::Query(ref e) if is_io(&e.to_string()) => {
                StorageError::Unavailable(err)
            }
            other => StorageError::Query(other),
        }
    }
}

fn is_io(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "io error",
        "connection",
        "broken pipe",
        "pool timed out",
        "terminating",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
