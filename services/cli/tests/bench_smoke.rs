//! The load tools, a few hundred calls a run, so that they cannot rot: `dalc bench` against a
//! real `dalc up`, and the floor `benches/compare.sh` measures dalc against
//! (`examples/rpc_floor.rs`) over the real RabbitMQ, plain, sending task messages, with its
//! durable writes on the real PostgreSQL, and serving dalc's SubmitTask to `dalc bench`.
//! Counts only: no test here asserts a timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use dalc_testkit::process::DalcProcess;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::Value;

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

/// `dalc up` with its defaults in a fresh directory, on a free port.
fn up(name: &str) -> DalcProcess {
    let dir = std::env::temp_dir().join(format!("dalc-{name}-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = ["up", "--listen", "127.0.0.1:0"];
    DalcProcess::start_in(name, dalc(), &args, &[], true, Some(&dir))
}

/// Runs `dalc bench ARGS --json`; its exit code and report.
fn bench(args: &[&str]) -> (Option<i32>, Value) {
    let output = Command::new(dalc())
        .arg("bench")
        .args(args)
        .args(["--json", "--warmup", "20"])
        .env_remove("DALC_ADDR")
        .output()
        .unwrap();
    (output.status.code(), report_of(&output))
}

/// The one JSON object a load tool printed.
fn report_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "not one JSON object ({err}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

const MIX: [&str; 6] = ["--expr", "1 + 1", "--expr", "1 / 0", "--expr", "2^10"];

/// 300 tasks of the three-expression mix: 200 right values, 100 FAILED as they must be.
fn assert_mix_answered(report: &Value) {
    assert_eq!(report["total"], 300, "{report}");
    assert_eq!(report["ok"], 200, "{report}");
    assert_eq!(
        report["expected_failures"]["TASK_STATUS_FAILED"], 100,
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].is_number(), "{report}");
    }
    assert!(report["throughput"].is_number(), "{report}");
}

#[test]
fn sync_mode_checks_every_answer() {
    let up = up("bench-sync");
    let url = up.url();
    let mut args = vec!["--total", "300", "--concurrency", "8", "--addr", &url];
    args.extend(MIX);
    let (code, report) = bench(&args);
    assert_eq!(report["mode"], "sync");
    assert_mix_answered(&report);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn async_mode_submits_then_waits_for_every_task() {
    let up = up("bench-async");
    let url = up.url();
    let mut args = vec![
        "--mode",
        "async",
        "--total",
        "300",
        "--concurrency",
        "8",
        "--addr",
        &url,
    ];
    args.extend(MIX);
    let (code, report) = bench(&args);
    assert_eq!(report["mode"], "async");
    assert_mix_answered(&report);
    assert!(report["submit_throughput"].is_number(), "{report}");
    assert!(report["completion_throughput"].is_number(), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn get_mode_reads_every_task_it_submitted() {
    let up = up("bench-get");
    let url = up.url();
    let mut args = vec![
        "--mode",
        "get",
        "--total",
        "300",
        "--concurrency",
        "8",
        "--addr",
        &url,
    ];
    args.extend(MIX);
    let (code, report) = bench(&args);
    assert_eq!(report["mode"], "get");
    assert_eq!(report["latency_of"], "GetTask wait=false", "{report}");
    // 300 tasks over, then 300 reads: each task read once, with its answer checked.
    assert_eq!(report["tasks"], 300, "{report}");
    assert_mix_answered(&report);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn get_mode_reads_round_robin_over_several_connections_and_skips_refused_expressions() {
    let up = up("bench-get-rr");
    let url = up.url();
    let args = [
        "--mode",
        "get",
        "--total",
        "200",
        "--concurrency",
        "4",
        "--addr",
        &url,
        "--connections",
        "3",
        "--expr",
        "1 + 1",
        "--expr",
        "1 +",
    ];
    let (code, report) = bench(&args);
    assert_eq!(report["connections_per_address"], 3, "{report}");
    // Half the submissions are refused as they must be, so 100 tasks, each read twice.
    assert_eq!(report["tasks"], 100, "{report}");
    assert_eq!(report["total"], 200, "{report}");
    assert_eq!(report["ok"], 200, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn several_addresses_share_the_load_and_refusals_are_expected_where_due() {
    let up = up("bench-addrs");
    let url = up.url();
    let both = format!("{url},{url}");
    let args = [
        "--total",
        "200",
        "--concurrency",
        "4",
        "--addr",
        &both,
        "--expr",
        "1 + 1",
        "--expr",
        "1 +",
    ];
    let (code, report) = bench(&args);
    assert_eq!(
        report["addresses"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["ok"], 100, "{report}");
    assert_eq!(
        report["expected_failures"]["InvalidArgument"], 100,
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn an_unreachable_gateway_fails_the_run_at_once() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let output = Command::new(dalc())
        .args(["bench", "--total", "10", "--addr", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
}

/// The floor's binary: `cargo test` builds a package's examples beside its test binaries.
fn rpc_floor() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).unwrap();
    let floor = profile_dir
        .join("examples")
        .join(format!("rpc_floor{}", std::env::consts::EXE_SUFFIX));
    let build = "cargo test builds it with the package's other targets \
                 (alone: cargo build -p dalc-cli --example rpc_floor)";
    let built = std::fs::metadata(&floor)
        .and_then(|binary| binary.modified())
        .unwrap_or_else(|err| panic!("{}: {err}: {build}", floor.display()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpc_floor.rs");
    let edited = std::fs::metadata(&source).unwrap().modified().unwrap();
    assert!(
        built >= edited,
        "{} is older than its source: {build}",
        floor.display()
    );
    floor
}

/// 300 round trips of the floor at 8 in flight, with `extra` arguments; its report.
fn run_floor(extra: &[&str]) -> Value {
    let amqp_url = dalc_testkit::amqp_url();
    let output = Command::new(rpc_floor())
        .args(["--amqp-url", &amqp_url])
        .args(["--total", "300", "--concurrency", "8"])
        .args(["--warmup", "20", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let report = report_of(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["tool"], "rpc_floor", "{report}");
    assert_eq!(report["ok"], 300, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["latency_ms"][key].is_number(), "{report}");
    }
    report
}

#[test]
fn the_floor_echoes_every_request() {
    let report = run_floor(&[]);
    assert_eq!(report["task_messages"], false, "{report}");
}

#[test]
fn the_floor_echoes_every_request_sent_as_a_task_message() {
    let report = run_floor(&["--task-messages"]);
    assert_eq!(report["task_messages"], true, "{report}");
}

#[tokio::test]
async fn the_floor_commits_every_request_and_its_result_with_a_database() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let report = run_floor(&["--database", &database]);
    assert_eq!(report["database"], true, "{report}");

    // Every call (the warm-up's 20 and the 300 measured) wrote its row and then its result:
    // counted by the server once the floor's connections ended with its process.
    let rows_of = |column: &str| {
        format!("SELECT {column} FROM pg_stat_database WHERE datname = current_database()")
    };
    let written = dalc_testkit::eventually(std::time::Duration::from_secs(10), async || {
        number_from(&database, &rows_of("tup_inserted")).await >= 320
            && number_from(&database, &rows_of("tup_updated")).await >= 320
    })
    .await;
    assert!(written, "the floor did not write its 320 rows and results");
    assert_eq!(floor_tables_left(&database).await, 0);
    dalc_testkit::drop_postgres_database(&database).await;
}

/// The floor's tables in `database`: none once a run ended.
async fn floor_tables_left(database: &str) -> i64 {
    number_from(
        database,
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'rpc\\_floor\\_%'",
    )
    .await
}

/// The one number `sql` answers in `database`.
async fn number_from(database: &str, sql: &str) -> i64 {
    let db = Database::connect(database).await.unwrap();
    let number = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    db.close().await.ok();
    number
}

/// A process killed when the test ends, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_floor_serves_dalc_bench_the_whole_path() {
    let database = dalc_testkit::fresh_postgres_database().await;
    let amqp_url = dalc_testkit::amqp_url();
    let mut floor = KillOnDrop(
        Command::new(rpc_floor())
            .args(["--amqp-url", &amqp_url, "--serve", "127.0.0.1:0"])
            .args(["--database", &database, "--task-messages"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(floor.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("rpc_floor serving on ")
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .to_owned();

    // Every answer is checked against a local evaluation: a value, and a failure.
    let (code, report) = bench(&[
        "--addr",
        &format!("http://{addr}"),
        "--total",
        "300",
        "--concurrency",
        "8",
        "--expr",
        "2 * 21",
        "--expr",
        "1 / 0",
    ]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], 150, "{report}");
    assert_eq!(
        report["expected_failures"],
        serde_json::json!({"TASK_STATUS_FAILED": 150}),
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");

    // SIGTERM ends it cleanly, its table dropped.
    let pid = floor.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(floor.0.wait().unwrap().success());
    assert_eq!(floor_tables_left(&database).await, 0);
    dalc_testkit::drop_postgres_database(&database).await;
}
