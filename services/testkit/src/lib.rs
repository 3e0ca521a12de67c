//! Helpers shared by dalc's tests. Never a dependency of production code.
//!
//! Tests talk to the real services of the machine: RabbitMQ at [`amqp_url`] and PostgreSQL at
//! [`postgres_server_url`], overridable with `DALC_TEST_AMQP_URL` and `DALC_TEST_POSTGRES_URL`.
//! Each test isolates itself with its own database and its own queue prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod process;
pub mod proxy;

use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("DALC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The PostgreSQL server tests use, without a database name.
pub fn postgres_server_url() -> String {
    std::env::var("DALC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The PostgreSQL server's address, for a fault proxy to forward to.
pub fn postgres_server_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&postgres_server_url()).expect("DALC_TEST_POSTGRES_URL is a URL");
    // PostgreSQL's own port when the URL names none.
    url.socket_addrs(|| Some(5432))
        .expect("the PostgreSQL server's address resolves")
        .into_iter()
        .next()
        .expect("an address")
}

/// `database_url` with its server's address replaced by `server` (a fault proxy's).
pub fn postgres_url_at(database_url: &str, server: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(database_url).expect("a database URL");
    url.set_ip_host(server.ip()).expect("a URL with a host");
    url.set_port(Some(server.port()))
        .expect("a URL with a host");
    url.into()
}

/// A short random token to keep names apart between tests and runs.
pub fn unique_token() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A queue prefix no other test uses, so tests can share one broker.
pub fn unique_queue_prefix() -> String {
    format!("test-{}.", unique_token())
}

/// Creates an empty PostgreSQL database for one test and returns its URL.
///
/// Databases are named `dalc_test_*`; the test script drops old ones before a run.
pub async fn fresh_postgres_database() -> String {
    let name = format!("dalc_test_{}", unique_token());
    let admin = Database::connect(format!("{}/postgres", postgres_server_url()))
        .await
        .expect("PostgreSQL is reachable (see README: the test command starts it)");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    format!("{}/{name}", postgres_server_url())
}

/// The settings of one isolated distributed deployment on the shared services: a fresh
/// database, the test broker, and a queue prefix of its own.
#[derive(Debug, Clone)]
pub struct StackEnv {
    pub database: String,
    pub amqp: String,
    pub prefix: String,
}

impl StackEnv {
    pub async fn fresh() -> Self {
        StackEnv {
            database: fresh_postgres_database().await,
            amqp: amqp_url(),
            prefix: unique_queue_prefix(),
        }
    }

    /// As the environment variables every `dalc` process reads.
    pub fn vars(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("DALC_DATABASE_URL", self.database.as_str()),
            ("DALC_AMQP_URL", self.amqp.as_str()),
            ("DALC_QUEUE_PREFIX", self.prefix.as_str()),
        ]
    }
}

/// Drops a database made by [`fresh_postgres_database`], closing its connections: a database
/// outage, as far as anyone connected to it can tell.
pub async fn drop_postgres_database(url: &str) {
    let name = url.rsplit('/').next().expect("a database URL");
    let admin = Database::connect(format!("{}/postgres", postgres_server_url()))
        .await
        .expect("PostgreSQL is reachable");
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop test database");
    admin.close().await.ok();
}

/// Whether `check` holds within `patience`, asked every 50 ms: for what a test sees a moment
/// after the call that caused it (a count made after an answer, a state written in the
/// background).
pub async fn eventually(
    patience: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> bool {
    let started = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() >= patience {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of `series` (a metric's name, with its labels if it has any) in a `/metrics`
/// scrape; panics if the scrape has none.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
}

/// A SQLite database file in a fresh temporary directory, as a URL that creates it.
pub fn fresh_sqlite_database() -> String {
    fresh_sqlite_file().0
}

/// [`fresh_sqlite_database`], with the path of its file (its write-ahead log is beside it, with
/// `-wal` appended).
pub fn fresh_sqlite_file() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("dalc-test-{}", unique_token()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let file = dir.join("dalc.db");
    (format!("sqlite://{}?mode=rwc", file.display()), file)
}
