//! Storage errors, split by what a caller can do about them.
//!
//! The split is made on the drivers' own codes (PostgreSQL's SQLSTATE, SQLite's result codes,
//! sqlx's connection errors), never on message text: a server that is starting up, in recovery
//! or read-only, a statement timeout, a lock or a busy SQLite file are outages to wait out, not
//! bugs to report.

use sea_orm::{
    DbErr, RuntimeErr,
    sqlx::{self, error::DatabaseError, postgres::PgDatabaseError, sqlite::SqliteError},
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The database cannot serve us right now; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// The database answered with an error: a bug or a schema mismatch, not a transient fault.
    #[error("database error: {0}")]
    Query(#[source] DbErr),
    /// A row with the same unique key (an idempotency key) exists already.
    #[error("a task with the same key exists: {0}")]
    Duplicate(#[source] DbErr),
    /// A row holds a value this version of dalc cannot read.
    #[error("corrupt task row: {0}")]
    Corrupt(String),
    /// The store is shutting down: its batch writers are gone.
    #[error("the task store is shutting down")]
    Closed,
}

impl StorageError {
    /// True when the fault is transient (connection, server state, contention): callers back off
    /// and retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_) | StorageError::Closed)
    }
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            StorageError::Unavailable(err)
        } else if is_unique_violation(&err) {
            StorageError::Duplicate(err)
        } else {
            StorageError::Query(err)
        }
    }
}

fn is_transient(err: &DbErr) -> bool {
    match err {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            sqlx_is_transient(err)
        }
        _ => false,
    }
}

fn is_unique_violation(err: &DbErr) -> bool {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            matches!(&**err, sqlx::Error::Database(err) if err.is_unique_violation())
        }
        _ => false,
    }
}

fn sqlx_is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(err) => {
            if let Some(pg) = err.try_downcast_ref::<PgDatabaseError>() {
                sqlstate_is_transient(pg.code())
            } else if let Some(sqlite) = err.try_downcast_ref::<SqliteError>() {
                DatabaseError::code(sqlite).is_some_and(|code| sqlite_code_is_transient(&code))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs that say "not now" rather than "never".
fn sqlstate_is_transient(code: &str) -> bool {
    matches!(
        code,
        // Class 08: connection exceptions.
        c if c.starts_with("08")
    ) || matches!(
        code,
        // 25006 read_only_sql_transaction: a standby, or a primary demoted during failover.
        "25006"
        // 40001 serialization_failure, 40P01 deadlock_detected: retry the transaction.
        | "40001" | "40P01"
        // 53xxx insufficient resources (too many connections, out of memory or disk).
        | "53000" | "53100" | "53200" | "53300" | "53400"
        // 55P03 lock_not_available (lock timeout).
        | "55P03"
        // 57014 query_canceled (our statement timeout), 57P01..57P05: shutting down, crash
        // recovery, "the database system is starting up", idle session timeout.
        | "57014" | "57P01" | "57P02" | "57P03" | "57P04" | "57P05"
        // 58000 system_error, 58030 io_error.
        | "58000" | "58030"
    )
}

/// SQLite result codes (extended codes carry the primary code in their low byte) that say
/// another connection holds the file: SQLITE_BUSY (5) and SQLITE_LOCKED (6), and the I/O and
/// full-disk codes (10, 13) that a retry after an operator's fix cures.
fn sqlite_code_is_transient(code: &str) -> bool {
    code.parse::<i32>()
        .is_ok_and(|extended| matches!(extended & 0xff, 5 | 6 | 10 | 13))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_outages_are_transient_and_bugs_are_not() {
        for code in [
            "08006", "57P03", "57P01", "25006", "40001", "53300", "57014",
        ] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in ["42P01", "42601", "23505", "22P02"] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
    }

    #[test]
    fn sqlite_busy_and_locked_are_transient() {
        // 5 SQLITE_BUSY, 517 SQLITE_BUSY_SNAPSHOT, 6 SQLITE_LOCKED, 262 SQLITE_LOCKED_SHAREDCACHE.
        for code in ["5", "517", "6", "262", "13"] {
            assert!(sqlite_code_is_transient(code), "{code}");
        }
        // 1 SQLITE_ERROR, 19 SQLITE_CONSTRAINT, 2067 SQLITE_CONSTRAINT_UNIQUE.
        for code in ["1", "19", "2067", "x"] {
            assert!(!sqlite_code_is_transient(code), "{code}");
        }
    }
}
