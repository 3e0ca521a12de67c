//! SQLite's WAL checkpoints, on a connection of their own.
//!
//! A process serves SQLite through one connection (see `TaskStore::connect_with`). Left to
//! itself, SQLite checkpoints on that connection after a commit whenever the write-ahead log
//! passes 1,000 pages: it copies them into the database file and syncs both files, and every
//! statement of the process waits meanwhile. Under `dalc up`'s benchmark load that was a stall
//! of tens of milliseconds every few hundred, and a tenth of its calls took 35–45 ms against
//! a median of 13–17 ms.
//!
//! So the serving connection never checkpoints (`wal_autocheckpoint = 0`), and a second
//! connection does it beside it. A PASSIVE checkpoint copies the log while the serving
//! connection goes on writing. The log only starts over once a checkpoint has copied all of
//! it, which a steady stream of commits never leaves time for: once it passes a bound, a
//! RESTART checkpoint, right after a passive one, finishes the little that is left while
//! holding writers off for that short while, so the next write starts the log over.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};
use tracing::{debug, warn};

use crate::StorageError;

/// When and how much the checkpointer copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoints {
    /// The pause between passive checkpoints.
    pub(crate) every: Duration,
    /// A log of more pages than this is started over (a RESTART checkpoint): the most the
    /// log holds under a steady load, give or take what one pause adds.
    pub(crate) restart_above: i64,
    /// How long a RESTART checkpoint waits for the writer to finish and for readers to move
    /// on (it holds writers off meanwhile). Short: it gives up and tries again at the next turn
    /// rather than stall the serving connection behind another process's long read.
    pub(crate) patience: Duration,
}

impl Checkpoints {
    /// Every 200 ms; a log started over past 4,096 pages (16 MiB of 4 KiB pages), waiting up
    /// to 100 ms for its turn.
    pub(crate) const DEFAULT: Checkpoints = Checkpoints {
        every: Duration::from_millis(200),
        restart_above: 4096,
        patience: Duration::from_millis(100),
    };
}

/// Checkpoints the database of `db` (its own connection, not the serving one) until the task
/// is dropped. Errors are logged and retried at the next turn: a missed checkpoint only lets
/// the log grow a little longer.
pub(crate) async fn run(db: DatabaseConnection, checkpoints: Checkpoints) {
    loop {
        tokio::time::sleep(checkpoints.every).await;
        match checkpoint(&db, "PASSIVE").await {
            Ok(log) if log > checkpoints.restart_above => {
                if let Err(err) = checkpoint(&db, "RESTART").await {
                    debug!(error = %err, pages = log, "the write-ahead log could not start over yet");
                }
            }
            Ok(_) => {}
            Err(err) => warn!(error = %err, "cannot checkpoint the SQLite write-ahead log"),
        }
    }
}

/// One checkpoint in `mode`: the pages the log held.
async fn checkpoint(db: &DatabaseConnection, mode: &str) -> Result<i64, StorageError> {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let row = db
        .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, sql))
        .await?;
    // (busy, pages in the log, pages checkpointed): -1 pages when the database is not in WAL
    // mode.
    Ok(row
        .and_then(|row| row.try_get_by_index::<i64>(1).ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use sea_orm::{ConnectOptions, Database};

    use super::*;
    use crate::store::sqlite_connection;

    /// A connection as the store opens one, waiting up to `busy_timeout` for a lock.
    async fn open(url: &str, busy_timeout: Duration) -> DatabaseConnection {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |opts| sqlite_connection(opts, busy_timeout));
        Database::connect(options).await.unwrap()
    }

    fn size(path: &str) -> u64 {
        std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_steady_stream_of_writes_keeps_the_log_short_and_the_file_current() {
        let url = dalc_testkit::fresh_sqlite_database();
        let file = url
            .trim_start_matches("sqlite://")
            .trim_end_matches("?mode=rwc")
            .to_owned();
        let serving = open(&url, Duration::from_secs(10)).await;
        serving
            .execute_unprepared("CREATE TABLE pages (body BLOB NOT NULL)")
            .await
            .unwrap();
        let checkpoints = Checkpoints {
            every: Duration::from_millis(20),
            restart_above: 64,
            patience: Duration::from_millis(100),
        };
        let checkpointer = tokio::spawn(run(open(&url, checkpoints.patience).await, checkpoints));
        // Writes without a pause, each a page or so of log, for a while: about 100 MiB of log
        // were nothing ever checkpointed.
        let started = Instant::now();
        let mut writes = 0;
        let mut slowest = Duration::ZERO;
        while started.elapsed() < Duration::from_millis(1500) {
            let write = Instant::now();
            serving
                .execute_unprepared("INSERT INTO pages VALUES (randomblob(3000))")
                .await
                .unwrap();
            slowest = slowest.max(write.elapsed());
            writes += 1;
        }
        checkpointer.abort();
        let log = size(&format!("{file}-wal"));
        // The log started over again and again (its file never shrinks, it is reused from the
        // start), and what it held reached the database file.
        assert!(
            log < 16 << 20,
            "{writes} writes left a log of {log} bytes (slowest write {slowest:?})"
        );
        assert!(
            size(&file) > writes / 2 * 3000,
            "{writes} writes of 3,000 bytes, and a database file of {} bytes",
            size(&file)
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
        assert_eq!(counted, i64::try_from(writes).unwrap());
    }
}
