//! SQLite's WAL checkpoints, copied on a connection of their own.
//!
//! A process serves SQLite through one connection (see `TaskStore::connect_with`). Left to
//! itself, SQLite checkpoints on that connection after a commit whenever the write-ahead log
//! passes 1,000 pages: it copies them into the database file and syncs both files, and every
//! statement of the process waits meanwhile. Under `dalc up`'s benchmark load that was a stall
//! of tens of milliseconds every few hundred, and a tenth of its calls took 35–45 ms against
//! a median of 13–17 ms.
//!
//! So the serving connection never checkpoints by itself (`wal_autocheckpoint = 0`), and a
//! second connection copies the log beside it, every [`Checkpoints::every`] (PASSIVE: it never
//! waits for a lock, and the serving connection goes on writing meanwhile).
//!
//! The log starts over (its next write goes to its start) only once all of it has been copied,
//! which a steady stream of commits never leaves time for. So once it holds more than
//! [`Checkpoints::restart_above`] pages, the serving connection copies what is left itself,
//! a PASSIVE checkpoint between two of its own statements: only the pages written since the
//! second connection's pass, so a stall of a few milliseconds, and after it the log starts
//! over (unless another process's reader still needs it, which this never waits for).

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};
use tracing::{debug, warn};

use crate::StorageError;

/// When the log is copied, and when it is made to start over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoints {
    /// The pause between two copies of the log on the second connection.
    pub(crate) every: Duration,
    /// A log of more pages than this is finished by the serving connection, so that it starts
    /// over: about the most the log holds under a steady load.
    pub(crate) restart_above: i64,
}

impl Checkpoints {
    /// Every 200 ms; a log started over past 4,096 pages (16 MiB of 4 KiB pages).
    pub(crate) const DEFAULT: Checkpoints = Checkpoints {
        every: Duration::from_millis(200),
        restart_above: 4096,
    };
}

/// Checkpoints the database on `own` (a connection of its own), and on `serving` when the log
/// must start over, until the task is dropped. A failed checkpoint is retried at the next
/// turn: it only lets the log grow a little longer.
pub(crate) async fn run(
    own: DatabaseConnection,
    serving: DatabaseConnection,
    checkpoints: Checkpoints,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(checkpoints.every).await;
        let copied = match checkpoint(&own).await {
            Ok(log) if log.pages > checkpoints.restart_above => checkpoint(&serving).await,
            other => other,
        };
        match copied {
            Ok(log) => {
                if log.copied < log.pages {
                    // Another connection's reader still needs the rest (or another process
                    // is checkpointing): the next turn copies it.
                    debug!(
                        pages = log.pages,
                        copied = log.copied,
                        "write-ahead log partly copied"
                    );
                }
                failing = false;
            }
            // Once per spell of failures: a read-only file or a full disk fails every turn.
            Err(err) if !failing => {
                warn!(error = %err, "cannot checkpoint the SQLite write-ahead log");
                failing = true;
            }
            Err(err) => debug!(error = %err, "still cannot checkpoint the SQLite write-ahead log"),
        }
    }
}

/// The write-ahead log after a checkpoint.
#[derive(Debug, Clone, Copy)]
struct Log {
    /// Pages it holds (-1 when the database is not in WAL mode, or another checkpoint ran).
    pages: i64,
    /// Of those, pages copied into the database file.
    copied: i64,
}

/// One PASSIVE checkpoint on `db`: it copies what no reader still needs, and never waits.
async fn checkpoint(db: &DatabaseConnection) -> Result<Log, StorageError> {
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    // One row: (busy, pages in the log, pages copied).
    let column = |index| {
        row.as_ref()
            .and_then(|row| row.try_get_by_index::<i64>(index).ok())
            .unwrap_or(-1)
    };
    Ok(Log {
        pages: column(1),
        copied: column(2),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sea_orm::{ConnectOptions, Database};

    use super::*;
    use crate::store::sqlite_connection;

    /// A connection as the store opens one.
    async fn open(url: &str) -> DatabaseConnection {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| sqlite_connection(opts, Duration::from_secs(10)));
        Database::connect(options).await.unwrap()
    }

    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
    }

    // Threads of its own, as in the service: on a test's single thread, the loop of writes
    // left the checkpointer no turn for seconds at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steady_stream_of_writes_keeps_the_log_short_and_the_file_current() {
        let (url, file) = dalc_testkit::fresh_sqlite_file();
        let serving = open(&url).await;
        serving
            .execute_unprepared("CREATE TABLE pages (body BLOB NOT NULL)")
            .await
            .unwrap();
        let checkpoints = Checkpoints {
            every: Duration::from_millis(20),
            restart_above: 64,
        };
        let checkpointer = tokio::spawn(run(open(&url).await, serving.clone(), checkpoints));
        // Writes without a pause, each a page or so of log: about 20 MiB of log were nothing
        // ever checkpointed.
        const WRITES: u64 = 5000;
        for _ in 0..WRITES {
            serving
                .execute_unprepared("INSERT INTO pages VALUES (randomblob(3000))")
                .await
                .unwrap();
        }
        checkpointer.abort();
        // The log started over again and again (its file is reused from its start), and what
        // it held reached the database file. (Copied on the second connection alone, it grew
        // to 60 MiB; started over, it stayed at 4–12 MiB on a busy machine.)
        let log = size(&file.with_extension("db-wal"));
        assert!(log < 24 << 20, "{WRITES} writes left a log of {log} bytes");
        let copied = size(&file);
        assert!(
            copied > WRITES / 2 * 3000,
            "{WRITES} writes of 3,000 bytes, and a database file of {copied} bytes"
        );
        let counted = serving
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT count(*) FROM pages",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(counted, i64::try_from(WRITES).unwrap());
    }
}
