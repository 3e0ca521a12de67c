//! The PostgreSQL connection a group-commit writer keeps for its own statements.
//!
//! A pooled connection costs a round trip every time it goes back: sqlx tests each returned
//! connection with a ping before anyone may take it again, and the ping is a spawned task and
//! a wake-up of the server's backend. A writer runs its statements one after another, so it
//! keeps one connection instead, taken from the pool on first use. Measured side by side
//! (gateway + 2 workers, sync calls at 64 in flight, 4 alternating rounds): PostgreSQL's
//! backends used 78–83 instead of 89–95 µs of CPU per task, for 4,432–4,624 against
//! 4,058–4,530 calls/s; at 1 in flight the median was 1.64–1.66 against 1.66–1.72 ms.
//!
//! The pool's safeguards hold for it too: a connection unused for a while is tested before a
//! statement (for no longer than the pool's acquire timeout); one whose statement failed other
//! than by the server refusing it (a broken socket, the server ending the session) is closed;
//! none is kept longer than the pool lets a connection live (counted from when the writer took
//! it). And a statement that outlasts the server's own statement timeout by a second fails, its
//! connection closed: a server gone silent must not hold a writer, and with it every caller of
//! its kind, until TCP gives up. Closed, not handed back: the pool would test a connection
//! handed back with a ping of no time limit, and count it against its size until that ended.

use std::time::{Duration, Instant};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement, Values,
    sqlx::{
        self, Connection, Executor, PgPool, Postgres,
        pool::PoolConnection,
        postgres::{PgDatabaseError, PgSeverity},
    },
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::{Mutex, MutexGuard};

/// A connection unused this long is tested before a statement (the pool's own rule, see
/// `TaskStore::connect_with`): the server or a proxy may have dropped it meanwhile.
pub(crate) const TEST_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// How much longer than the server's statement timeout a statement may take before its
/// connection is taken for dead: time for the server's own cancellation to arrive.
const CANCELLATION_GRACE: Duration = Duration::from_secs(1);

/// One writer's connection, taken from `pool` when first needed and again after a fault.
#[derive(Debug)]
pub(crate) struct HeldConnection {
    pool: PgPool,
    /// The longest one statement may take (see `CANCELLATION_GRACE`); none when the server's
    /// statement timeout is off.
    statement_limit: Option<Duration>,
    slot: Mutex<Slot>,
}

#[derive(Debug)]
struct Slot {
    connection: Option<PoolConnection<Postgres>>,
    taken_at: Instant,
    used_at: Instant,
}

impl HeldConnection {
    /// `statement_timeout`: the server's, set on every connection of `pool` in whole
    /// milliseconds, where 0 turns it off.
    pub(crate) fn new(pool: PgPool, statement_timeout: Duration) -> Self {
        let now = Instant::now();
        let timeout_is_on = statement_timeout.as_millis() > 0;
        HeldConnection {
            pool,
            statement_limit: timeout_is_on.then(|| statement_timeout + CANCELLATION_GRACE),
            slot: Mutex::new(Slot {
                connection: None,
                taken_at: now,
                used_at: now,
            }),
        }
    }

    /// The kept connection (tested first when it sat idle), or a new one when there is none.
    async fn checkout(&self) -> Result<Checkout<'_>, DbErr> {
        let mut slot = self.slot.lock().await;
        let now = Instant::now();
        let options = self.pool.options();
        let lived_out = |taken_at: Instant| {
            options
                .get_max_lifetime()
                .is_some_and(|lifetime| now.duration_since(taken_at) >= lifetime)
        };
        let kept = match slot.connection.take() {
            // Back to the pool, which retires it if it is old by its own count.
            Some(_) if lived_out(slot.taken_at) => None,
            Some(mut connection) if now.duration_since(slot.used_at) >= TEST_IF_IDLE_FOR => {
                // As long as the pool's own test may take (its acquire timeout): a connection
                // to a server gone silent must not hold the writer.
                let patience = options.get_acquire_timeout();
                match within(Some(patience), connection.ping()).await {
                    Ok(()) => Some(connection),
                    Err(_) => {
                        connection.close_on_drop();
                        None
                    }
                }
            }
            kept => kept,
        };
        let connection = match kept {
            Some(connection) => connection,
            None => {
                let connection = self.pool.acquire().await.map_err(connect_error)?;
                slot.taken_at = Instant::now();
                connection
            }
        };
        slot.used_at = now;
        Ok(Checkout { slot, connection })
    }
}

/// The connection out of its slot for one statement. Dropped without [`Checkout::settle`] (a
/// statement cut off half way), it goes back to the pool, which tests it, and the slot stays
/// empty.
struct Checkout<'a> {
    slot: MutexGuard<'a, Slot>,
    connection: PoolConnection<Postgres>,
}

impl Checkout<'_> {
    /// Keeps the connection for the next statement unless `result` ended it.
    fn settle<T>(self, result: &Result<T, sqlx::Error>) {
        let Checkout {
            mut slot,
            mut connection,
        } = self;
        let sound = match result {
            Ok(_) => true,
            Err(err) => statement_refused(err),
        };
        if sound {
            slot.connection = Some(connection);
        } else {
            connection.close_on_drop();
        }
    }
}

/// The server refused the statement (a duplicate key, a bad value) and the session goes on.
/// Anything else ends the connection: a broken socket or protocol, or an error the server sends
/// as it closes the session (FATAL, e.g. when an administrator ends it or the server shuts
/// down).
fn statement_refused(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(err) => err
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|err| matches!(err.severity(), PgSeverity::Error)),
        _ => false,
    }
}

/// `work` on a connection, failed as an I/O timeout (a connection fault: the connection is
/// closed, and the caller hears UNAVAILABLE) past `limit`, if any.
async fn within<T>(
    limit: Option<Duration>,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let Some(limit) = limit else {
        return work.await;
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the database within {limit:?}"),
        )))
    })
}

/// `statement` as sqlx runs it, its values moved rather than copied (a batch's arrays).
fn query(statement: Statement) -> sqlx::query::Query<'static, Postgres, SqlxValues> {
    let values = statement.values.unwrap_or_else(|| Values(Vec::new()));
    sqlx::query_with(sqlx::AssertSqlSafe(statement.sql), SqlxValues(values))
}

// sqlx's errors as SeaORM's pool reports them, so `StorageError` sorts them the same way.
fn connect_error(err: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(err.into()))
}

fn exec_error(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(err.into()))
}

fn query_error(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(err.into()))
}

#[async_trait::async_trait]
impl ConnectionTrait for HeldConnection {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        let mut checkout = self.checkout().await?;
        let run = query(statement).execute(&mut *checkout.connection);
        let result = within(self.statement_limit, run).await;
        checkout.settle(&result);
        result.map(Into::into).map_err(exec_error)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut checkout = self.checkout().await?;
        let run = checkout.connection.execute(sqlx::AssertSqlSafe(sql));
        let result = within(self.statement_limit, run).await;
        checkout.settle(&result);
        result.map(Into::into).map_err(exec_error)
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut checkout = self.checkout().await?;
        let run = query(statement).fetch_optional(&mut *checkout.connection);
        let result = within(self.statement_limit, run).await;
        checkout.settle(&result);
        result.map(|row| row.map(Into::into)).map_err(query_error)
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut checkout = self.checkout().await?;
        let run = query(statement).fetch_all(&mut *checkout.connection);
        let result = within(self.statement_limit, run).await;
        checkout.settle(&result);
        result
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_error)
    }
}

/// Where a store handle's statements go: the pool, or the connection its writer keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Conn<'a> {
    Pool(&'a DatabaseConnection),
    Held(&'a HeldConnection),
}

#[async_trait::async_trait]
impl ConnectionTrait for Conn<'_> {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Conn::Pool(pool) => pool.get_database_backend(),
            Conn::Held(held) => held.get_database_backend(),
        }
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Conn::Pool(pool) => pool.execute_raw(statement).await,
            Conn::Held(held) => held.execute_raw(statement).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Conn::Pool(pool) => pool.execute_unprepared(sql).await,
            Conn::Held(held) => held.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Conn::Pool(pool) => pool.query_one_raw(statement).await,
            Conn::Held(held) => held.query_one_raw(statement).await,
        }
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Conn::Pool(pool) => pool.query_all_raw(statement).await,
            Conn::Held(held) => held.query_all_raw(statement).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    async fn backend_pid(conn: &impl ConnectionTrait) -> Result<i32, DbErr> {
        let row = conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await?;
        row.unwrap().try_get("", "pid")
    }

    async fn held() -> (HeldConnection, PgPool) {
        let url = dalc_testkit::fresh_postgres_database().await;
        let pool = PgPool::connect(&url).await.unwrap();
        (
            HeldConnection::new(pool.clone(), Duration::from_secs(10)),
            pool,
        )
    }

    async fn terminate(pool: &PgPool, pid: i32) {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(pool)
            .await
            .unwrap();
    }

    /// A kept connection through a proxy that can go silent; the pool's acquire timeout and
    /// the server's statement timeout are half a second each.
    async fn held_through_proxy() -> (HeldConnection, dalc_testkit::proxy::TcpProxy) {
        use std::str::FromStr;
        let url = dalc_testkit::fresh_postgres_database().await;
        let options = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = dalc_testkit::proxy::TcpProxy::start_new(upstream).await;
        let through_proxy = options
            .host(&proxy.addr().ip().to_string())
            .port(proxy.addr().port());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_with(through_proxy)
            .await
            .unwrap();
        let held = HeldConnection::new(pool, Duration::from_millis(500));
        backend_pid(&held).await.unwrap();
        (held, proxy)
    }

    /// A statement's error, which must come (within 10 s) and be an outage to retry.
    async fn fails_as_unavailable(held: &HeldConnection) {
        let statement = tokio::time::timeout(Duration::from_secs(10), backend_pid(held));
        let failed = statement.await.expect("the statement hung").unwrap_err();
        assert!(
            crate::StorageError::from(failed.clone()).is_unavailable(),
            "{failed}"
        );
    }

    /// The connection given up on is closed, not handed back to the pool: the pool would test
    /// it with a ping that waits as long as the server stays silent, and count it against its
    /// size all the while.
    async fn given_back_its_place_in_the_pool(held: &HeldConnection) {
        let closed = async {
            while held.pool.size() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the connection given up on still counts against the pool");
    }

    #[tokio::test]
    async fn a_server_gone_silent_while_the_connection_is_idle_fails_its_test_in_time() {
        let (held, proxy) = held_through_proxy().await;
        // The server stops answering without closing anything: only a timeout can tell.
        proxy.blackhole();
        tokio::time::sleep(TEST_IF_IDLE_FOR + Duration::from_millis(100)).await;
        fails_as_unavailable(&held).await;
        given_back_its_place_in_the_pool(&held).await;
    }

    #[tokio::test]
    async fn a_server_gone_silent_during_a_statement_fails_it_in_time() {
        let (held, proxy) = held_through_proxy().await;
        // Straight away: the connection is fresh, so no test comes first.
        proxy.blackhole();
        fails_as_unavailable(&held).await;
        given_back_its_place_in_the_pool(&held).await;
        // The connection that timed out is not kept: once the server answers, so does this.
        proxy.restore();
        backend_pid(&held).await.unwrap();
    }

    #[tokio::test]
    async fn with_the_servers_statement_timeout_off_no_statement_is_cut_off() {
        let url = dalc_testkit::fresh_postgres_database().await;
        let pool = PgPool::connect(&url).await.unwrap();
        // PostgreSQL's `statement_timeout = 0`: no limit, so none here either.
        let held = HeldConnection::new(pool, Duration::ZERO);
        let longer_than_the_grace = format!(
            "SELECT pg_sleep({})",
            (CANCELLATION_GRACE + Duration::from_millis(300)).as_secs_f64()
        );
        held.execute_unprepared(&longer_than_the_grace)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn statements_one_after_another_share_one_server_backend() {
        let (held, _pool) = held().await;
        let first = backend_pid(&held).await.unwrap();
        for _ in 0..5 {
            assert_eq!(backend_pid(&held).await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn a_refused_statement_leaves_the_connection_kept() {
        let (held, _pool) = held().await;
        let before = backend_pid(&held).await.unwrap();
        let refused = held.execute_unprepared("SELECT 1 / 0").await.unwrap_err();
        assert!(
            refused.to_string().contains("division by zero"),
            "{refused}"
        );
        assert_eq!(backend_pid(&held).await.unwrap(), before);
    }

    #[tokio::test]
    async fn a_connection_dropped_by_the_server_while_idle_is_replaced_unseen() {
        let (held, pool) = held().await;
        let before = backend_pid(&held).await.unwrap();
        terminate(&pool, before).await;
        // Idle long enough to be tested first: the next statement never sees the dead socket.
        tokio::time::sleep(TEST_IF_IDLE_FOR + Duration::from_millis(100)).await;
        let after = backend_pid(&held).await.unwrap();
        assert_ne!(after, before);
    }

    #[tokio::test]
    async fn a_broken_connection_fails_one_statement_and_the_next_gets_a_new_one() {
        let (held, pool) = held().await;
        let before = backend_pid(&held).await.unwrap();
        terminate(&pool, before).await;
        // Straight away (not idle): the statement meets the closed connection, a connection
        // fault a caller may retry, and the connection is not kept.
        let broken = backend_pid(&held).await.unwrap_err();
        assert!(
            crate::StorageError::from(broken.clone()).is_unavailable(),
            "{broken}"
        );
        let after = backend_pid(&held).await.unwrap();
        assert_ne!(after, before);
    }
}
