//! `dalc submit -f` across three gateways while one of them is killed: every expression is
//! answered exactly once, correctly, and no task is made or run twice. Three `dalc gateway`
//! and two `dalc worker` processes over RabbitMQ and PostgreSQL (own queue prefix, fresh
//! database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashSet,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dalc_testkit::process::DalcProcess;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::Value;

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

const TASKS: usize = 3000;

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_expressions_survives_a_gateway_killed_mid_run() {
    let stack = dalc_testkit::StackEnv::fresh().await;
    let mut env = stack.vars();
    env.extend([
        // The killed gateway's stored but unpublished tasks are republished soon.
        ("DALC_SWEEP_INTERVAL", "1s"),
        ("DALC_SWEEP_GRACE", "2s"),
    ]);
    let mut gateways: Vec<DalcProcess> = ["gw-a", "gw-b", "gw-c"]
        .map(|id| {
            let args = ["gateway", "--listen", "127.0.0.1:0", "--gateway-id", id];
            DalcProcess::start(id, dalc(), &args, &env, true)
        })
        .into();
    let _workers: Vec<DalcProcess> = ["worker-1", "worker-2"]
        .map(|id| {
            let args = ["worker", "--worker-id", id, "--concurrency", "8"];
            DalcProcess::start(id, dalc(), &args, &env, false)
        })
        .into();

    let dir = std::env::temp_dir().join(format!("dalc-balanced-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("expressions.txt");
    let mut text = String::from("# n + 1 for every n, one a line\n\n");
    for n in 0..TASKS {
        text.push_str(&format!("{n} + 1\n"));
    }
    std::fs::write(&file, text).unwrap();

    let addrs = gateways
        .iter()
        .map(DalcProcess::url)
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(dalc())
        .args([
            "submit",
            "--json",
            "--timeout",
            "180s",
            "--chunk-size",
            "250",
        ])
        .arg("-f")
        .arg(&file)
        .args(["--addr", &addrs])
        .env_remove("DALC_ADDR")
        .env_remove("DALC_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    // Drained as it comes, so that a full pipe never stalls the client.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });

    // The middle of the run: tasks are stored and some have ended, streams are open.
    let db = Database::connect(&stack.database).await.unwrap();
    let started = Instant::now();
    loop {
        let ended = count(
            &db,
            "SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL",
        )
        .await;
        if ended >= 500 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not get going: {ended} tasks ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateways[1].signal_and_wait("KILL", Duration::from_secs(10));

    let waiting = std::thread::spawn(move || child.wait().unwrap());
    let started = Instant::now();
    while !waiting.is_finished() {
        if started.elapsed() > Duration::from_secs(240) {
            let _ = Command::new("kill")
                .args(["-KILL", &child_pid.to_string()])
                .status();
            panic!("dalc submit -f did not end within 240 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = waiting.join().unwrap();
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{TASKS} tasks: {TASKS} succeeded")),
        "{stderr}"
    );

    // Every index once, in input order, with its own right answer.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), TASKS, "stderr: {stderr}");
    let mut ids = HashSet::new();
    for (n, line) in lines.iter().enumerate() {
        let answer: Value = serde_json::from_str(line).unwrap();
        assert_eq!(answer["index"].as_u64(), Some(n as u64), "{line}");
        let task = &answer["task"];
        assert_eq!(task["status"], "TASK_STATUS_SUCCEEDED", "{line}");
        assert_eq!(task["expression"], format!("{n} + 1"), "{line}");
        assert_eq!(task["result"], (n + 1).to_string(), "{line}");
        assert_eq!(task["attempts"], 1, "{line}");
        assert!(
            ids.insert(task["id"].as_str().unwrap().to_owned()),
            "{line}"
        );
    }

    // Nothing made twice, nothing run twice.
    assert_eq!(count(&db, "SELECT count(*) FROM tasks").await, TASKS as i64);
    assert_eq!(
        count(&db, "SELECT count(*) FROM tasks WHERE attempts <> 1").await,
        0
    );
    db.close().await.ok();
}
