//! End to end: the real `dalc` binary as separate processes, driven by a tonic client and by
//! grpcurl. Two gateways and two workers over RabbitMQ and PostgreSQL, and `dalc up` with its
//! defaults (SQLite and the in-process queue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use dalc_proto::v1::{
    GetTaskRequest, SubmitTaskRequest, Task, TaskStatus, task_service_client::TaskServiceClient,
};
use dalc_testkit::process::{DalcProcess, run_grpcurl};
use tonic::{Code, transport::Channel};

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

const SUBMIT: &str = "dalc.v1.TaskService/SubmitTask";
const GET: &str = "dalc.v1.TaskService/GetTask";

/// Two gateways and two workers sharing one broker (own queue prefix) and one database.
struct Cluster {
    gateways: Vec<DalcProcess>,
    _workers: Vec<DalcProcess>,
}

async fn cluster() -> Cluster {
    let stack = dalc_testkit::StackEnv::fresh().await;
    let env = stack.vars();
    let gateways = ["gw-a", "gw-b"]
        .map(|id| {
            let args = ["gateway", "--listen", "127.0.0.1:0", "--gateway-id", id];
            DalcProcess::start(id, dalc(), &args, &env, true)
        })
        .into();
    let workers = ["worker-1", "worker-2"]
        .map(|id| {
            let args = ["worker", "--worker-id", id, "--concurrency", "8"];
            DalcProcess::start(id, dalc(), &args, &env, false)
        })
        .into();
    Cluster {
        gateways,
        _workers: workers,
    }
}

async fn client(process: &DalcProcess) -> TaskServiceClient<Channel> {
    TaskServiceClient::connect(process.url())
        .await
        .expect("gateway accepts connections")
}

fn submit(expression: &str, wait: bool) -> SubmitTaskRequest {
    SubmitTaskRequest {
        expression: expression.into(),
        wait,
        timeout: None,
        ..Default::default()
    }
}

fn get(id: &str, wait: bool) -> GetTaskRequest {
    GetTaskRequest {
        id: id.into(),
        wait,
        timeout: None,
    }
}

async fn submitted(client: &mut TaskServiceClient<Channel>, request: SubmitTaskRequest) -> Task {
    client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

/// The checks of the issue, through a tonic client, against any deployment.
async fn tonic_checks(
    mut a: TaskServiceClient<Channel>,
    mut b: TaskServiceClient<Channel>,
    workers: &[&str],
) {
    // Sync: 1 + 1 = 2, by a known worker, first attempt.
    let task = submitted(&mut a, submit("1 + 1", true)).await;
    assert_eq!(task.status(), TaskStatus::Succeeded);
    assert_eq!(task.result, "2");
    assert!(
        workers.iter().any(|w| task.worker_id.starts_with(w)),
        "{}",
        task.worker_id
    );
    assert_eq!(task.attempts, 1);

    // Async: PENDING at once, then polling reaches SUCCEEDED.
    let task = submitted(&mut a, submit("6 / 3", false)).await;
    assert_eq!(task.status(), TaskStatus::Pending);
    let mut polled = task.clone();
    for _ in 0..500 {
        polled = a
            .get_task(get(&task.id, false))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        if polled.status() == TaskStatus::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (polled.status(), polled.result.as_str()),
        (TaskStatus::Succeeded, "2")
    );

    // Long-poll on the other gateway for a task accepted by this one.
    let task = submitted(&mut a, submit("2^10", false)).await;
    let waited = b
        .get_task(get(&task.id, true))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        (waited.status(), waited.result.as_str()),
        (TaskStatus::Succeeded, "1024")
    );

    // Evaluation errors fail the task.
    let task = submitted(&mut b, submit("1 / 0", true)).await;
    assert_eq!(task.status(), TaskStatus::Failed);
    assert!(task.error.contains("division by zero"), "{}", task.error);

    // Bad requests.
    let status = a.submit_task(submit("1 +", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("column 4"),
        "{}",
        status.message()
    );
    let status = a.submit_task(submit("", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = a.get_task(get("not-a-uuid", false)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = b
        .get_task(get("67e55044-10b1-426f-9247-bb680e5fe0c8", false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// The same checks through grpcurl, with reflection only (no proto files).
fn grpcurl_checks(a: &str, b: &str) {
    let (ok, out, err) = run_grpcurl(a, SUBMIT, r#"{"expression": "1 + 1", "wait": true}"#);
    assert!(ok, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["task"]["status"], "TASK_STATUS_SUCCEEDED", "{out}");
    assert_eq!(reply["task"]["result"], "2", "{out}");

    let (ok, out, err) = run_grpcurl(a, SUBMIT, r#"{"expression": "0.1 + 0.2"}"#);
    assert!(ok, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["task"]["status"], "TASK_STATUS_PENDING", "{out}");
    let id = reply["task"]["id"].as_str().unwrap();
    let (ok, out, err) = run_grpcurl(
        b,
        GET,
        &format!(r#"{{"id": "{id}", "wait": true, "timeout": "20s"}}"#),
    );
    assert!(ok, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["task"]["status"], "TASK_STATUS_SUCCEEDED", "{out}");
    assert_eq!(reply["task"]["result"], "0.3", "{out}");

    let (ok, _, err) = run_grpcurl(a, SUBMIT, r#"{"expression": "1 +"}"#);
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("column 4"),
        "{err}"
    );
    let (ok, _, err) = run_grpcurl(a, GET, r#"{"id": "67e55044-10b1-426f-9247-bb680e5fe0c8"}"#);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_two_workers_over_rabbitmq_and_postgres() {
    let cluster = cluster().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    tonic_checks(client(a).await, client(b).await, &["worker-1", "worker-2"]).await;
    grpcurl_checks(&a.authority(), &b.authority());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_sync_calls_each_get_their_own_answer() {
    let cluster = cluster().await;
    let clients = [
        client(&cluster.gateways[0]).await,
        client(&cluster.gateways[1]).await,
    ];
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..500u64)
        .map(|n| {
            let mut client = clients[(n % 2) as usize].clone();
            tokio::spawn(async move {
                let task = submitted(&mut client, submit(&format!("{n} * 3 + 1"), true)).await;
                (n, task)
            })
        })
        .collect();
    let mut workers = std::collections::BTreeSet::new();
    for call in calls {
        let (n, task) = call.await.unwrap();
        assert_eq!(task.status(), TaskStatus::Succeeded, "task {n}: {task:?}");
        assert_eq!(task.result, (n * 3 + 1).to_string(), "task {n}");
        assert_eq!(task.expression, format!("{n} * 3 + 1"));
        workers.insert(task.worker_id);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "500 concurrent sync calls over RabbitMQ + PostgreSQL: {elapsed:?} ({:.0} tasks/s)",
        500.0 / elapsed.as_secs_f64()
    );
    assert_eq!(workers.len(), 2, "both workers took a share: {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dalc_up_with_its_defaults() {
    // Defaults throughout (SQLite file in the working directory, in-process queue), except a
    // free port so tests can run beside a real `dalc up`.
    let dir = std::env::temp_dir().join(format!("dalc-up-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = ["up", "--listen", "127.0.0.1:0"];
    let up = DalcProcess::start_in("dalc up", dalc(), &args, &[], true, Some(&dir));
    tonic_checks(client(&up).await, client(&up).await, &["worker"]).await;
    grpcurl_checks(&up.authority(), &up.authority());
    assert!(
        dir.join("dalc.db").exists(),
        "the SQLite file is in the working directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_and_gets() {
    let dir = std::env::temp_dir().join(format!("dalc-cli-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let up = DalcProcess::start_in(
        "dalc up",
        dalc(),
        &["up", "--listen", "127.0.0.1:0"],
        &[],
        true,
        Some(&dir),
    );
    let addr = up.url();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(dalc())
            .args(args)
            .env("DALC_ADDR", &addr)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["submit", "1 + 1"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("SUCCEEDED") && out.contains("result:      2"),
        "{out}"
    );

    let (code, out, _) = run(&["submit", "--no-wait", "--json", "2 * 21"]);
    assert_eq!(code, Some(0));
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(task["status"], "TASK_STATUS_PENDING");
    let id = task["id"].as_str().unwrap();
    let (code, out, _) = run(&["get", id, "--wait", "--json"]);
    assert_eq!(code, Some(0));
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (task["status"].as_str(), task["result"].as_str()),
        (Some("TASK_STATUS_SUCCEEDED"), Some("42"))
    );

    let (code, out, _) = run(&["submit", "1 / 0"]);
    assert_eq!(code, Some(3), "a FAILED task exits 3: {out}");
    let (code, _, err) = run(&["submit", "1 +"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("InvalidArgument") && err.contains("column 4"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_dalc_up_cleanly() {
    let dir = std::env::temp_dir().join(format!("dalc-term-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut up = DalcProcess::start_in(
        "dalc up",
        dalc(),
        &["up", "--listen", "127.0.0.1:0"],
        &[],
        true,
        Some(&dir),
    );
    let mut client = client(&up).await;
    assert_eq!(submitted(&mut client, submit("1", true)).await.result, "1");
    assert_eq!(up.signal_and_wait("TERM", Duration::from_secs(30)), Some(0));
}

/// `dalc up` in a fresh directory, with `extra` flags.
fn up_with(name: &str, extra: &[&str]) -> DalcProcess {
    let dir = std::env::temp_dir().join(format!("dalc-{name}-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec!["up", "--listen", "127.0.0.1:0"];
    args.extend(extra);
    DalcProcess::start_in(name, dalc(), &args, &[], true, Some(&dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_expression_limit_reaches_the_workers_too() {
    let up = up_with("limits", &["--max-expression-bytes", "20000"]);
    let mut client = client(&up).await;
    // 6,000 bytes: over the default 4 KiB, under the raised limit.
    let expression = vec!["1"; 3000].join("+");
    let task = submitted(&mut client, submit(&expression, true)).await;
    assert_eq!(task.status(), TaskStatus::Succeeded, "{}", task.error);
    assert_eq!(task.result, "3000");
}

/// A message limit that cannot hold the largest task these limits allow is a start-up error,
/// not a task that can never be answered or listed.
#[test]
fn a_message_limit_too_small_for_one_task_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("dalc-small-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let start = |limit: &str| {
        std::process::Command::new(dalc())
            .args(["up", "--listen", "127.0.0.1:0", "--http-listen", "off"])
            .args(["--max-message-bytes", limit])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let refused = start("10000");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--max-message-bytes 10000 is too small")
            && stderr.contains("needs at least 20844"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_health_turns_not_serving_while_calls_are_still_accepted() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut up = up_with("drain", &["--drain-delay", "3s"]);
    let channel = Channel::from_shared(up.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut tasks = TaskServiceClient::new(channel);
    let check = HealthCheckRequest {
        service: String::new(),
    };
    let status = health
        .check(check.clone())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.pid().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Balancers are told first...
    let status = health.check(check).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::NotServing);
    // ...while calls still work, for the drain window.
    assert_eq!(
        submitted(&mut tasks, submit("2 + 2", true)).await.result,
        "4"
    );
    assert_eq!(up.signal_and_wait("TERM", Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_never_hang_on_a_gateway_that_does_not_answer() {
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let _holder = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let started = std::time::Instant::now();
    let output = std::process::Command::new(dalc())
        .args(["submit", "--timeout", "1s", "--addr", &addr, "1 + 1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up in {:?}",
        started.elapsed()
    );
}
