//! The rest of the task API end to end: real `dalc` gateways and workers as separate processes
//! over RabbitMQ and PostgreSQL, driven by a tonic client, grpcurl and the `dalc` CLI. Watches
//! and cancellations across gateways, a full queue, an idempotent retry after a dropped
//! connection, priorities, tenants and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command, time::Duration};

use dalc_proto::v1::{
    CancelTaskRequest, GetStatsRequest, GetTaskRequest, SubmitTaskRequest, Task, TaskStatus,
    WatchTaskRequest, task_service_client::TaskServiceClient,
};
use dalc_testkit::{
    process::{DalcProcess, run_grpcurl_with},
    proxy::TcpProxy,
};
use futures::StreamExt;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

/// One deployment's settings: its own database and queue prefix on the shared services.
struct Deployment {
    stack: dalc_testkit::StackEnv,
    extra: Vec<(String, String)>,
}

impl Deployment {
    async fn new() -> Self {
        Deployment {
            stack: dalc_testkit::StackEnv::fresh().await,
            extra: Vec::new(),
        }
    }

    fn with(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }

    fn env(&self) -> Vec<(&str, &str)> {
        let mut env = self.stack.vars();
        env.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env
    }

    fn gateway(&self, id: &str, extra: &[&str]) -> DalcProcess {
        let mut args = vec!["gateway", "--listen", "127.0.0.1:0", "--gateway-id", id];
        args.extend_from_slice(extra);
        DalcProcess::start(id, dalc(), &args, &self.env(), true)
    }

    fn worker(&self, id: &str, concurrency: &str) -> DalcProcess {
        let args = ["worker", "--worker-id", id, "--concurrency", concurrency];
        DalcProcess::start(id, dalc(), &args, &self.env(), false)
    }
}

async fn client(process: &DalcProcess) -> TaskServiceClient<Channel> {
    TaskServiceClient::connect(process.url()).await.unwrap()
}

fn request(expression: &str, wait: bool) -> SubmitTaskRequest {
    SubmitTaskRequest {
        expression: expression.into(),
        wait,
        ..Default::default()
    }
}

async fn submit(client: &mut TaskServiceClient<Channel>, request: SubmitTaskRequest) -> Task {
    client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

async fn get(client: &mut TaskServiceClient<Channel>, id: &str) -> Task {
    let request = GetTaskRequest {
        id: id.into(),
        ..Default::default()
    };
    client
        .get_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

#[tokio::test]
async fn watches_and_cancellations_work_across_gateways() {
    let deployment = Deployment::new().await;
    let (a, b) = (
        deployment.gateway("gw-a", &[]),
        deployment.gateway("gw-b", &[]),
    );
    let (mut on_a, mut on_b) = (client(&a).await, client(&b).await);
    // Accepted by A with no worker running: PENDING until one starts. About a tenth of a
    // second of evaluation, so RUNNING is seen.
    let slow = submit(&mut on_a, request("tan(10^9999-1)", false)).await;
    let doomed = submit(&mut on_a, request("1 + 1", false)).await;
    let watch = WatchTaskRequest {
        id: slow.id.clone(),
    };
    let mut watched = on_b.watch_task(watch).await.unwrap().into_inner();
    let doomed_watch = WatchTaskRequest {
        id: doomed.id.clone(),
    };
    let mut doomed_watched = on_a.watch_task(doomed_watch).await.unwrap().into_inner();
    let first = watched.next().await.unwrap().unwrap().task.unwrap();
    assert_eq!(first.status(), TaskStatus::Pending);
    assert_eq!(
        doomed_watched
            .next()
            .await
            .unwrap()
            .unwrap()
            .task
            .unwrap()
            .status(),
        TaskStatus::Pending
    );

    // Cancelled at B, the gateway that did not accept it; A's watcher sees it.
    let cancel = CancelTaskRequest {
        id: doomed.id.clone(),
    };
    let cancelled = on_b
        .cancel_task(cancel)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(cancelled.status(), TaskStatus::Cancelled);
    let seen = tokio::time::timeout(Duration::from_secs(10), doomed_watched.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .task
        .unwrap();
    assert_eq!(seen.status(), TaskStatus::Cancelled);

    let _worker = deployment.worker("worker-1", "2");
    let mut statuses = vec![first.status()];
    let mut last = first;
    while let Some(change) = tokio::time::timeout(Duration::from_secs(30), watched.next())
        .await
        .expect("the watch ends once the task is terminal")
    {
        last = change.unwrap().task.unwrap();
        statuses.push(last.status());
    }
    assert_eq!(
        statuses,
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Succeeded
        ]
    );
    assert_eq!(last.worker_id, "worker-1");
    // The cancelled task never ran, though its message was in the queue.
    let after = get(&mut on_a, &doomed.id).await;
    assert_eq!(after.status(), TaskStatus::Cancelled);
    assert_eq!(after.attempts, 0);
    // Cancelling what ended is refused, naming its status.
    let cancel = CancelTaskRequest { id: slow.id };
    let status = on_a.cancel_task(cancel).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("SUCCEEDED"));
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
}

#[tokio::test]
async fn a_full_request_queue_is_resource_exhausted() {
    let deployment = Deployment::new().await.with("DALC_MAX_QUEUE_LENGTH", "3");
    let gateway = deployment.gateway("gw-full", &[]);
    let mut on = client(&gateway).await;
    for n in 0..3 {
        submit(&mut on, request(&n.to_string(), false)).await;
    }
    let started = std::time::Instant::now();
    let status = on.submit_task(request("4", false)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Once a worker drains the queue, submissions are accepted again, and every task ends.
    let _worker = deployment.worker("drainer", "4");
    let mut accepted = None;
    for _ in 0..100 {
        if let Ok(answer) = on.submit_task(request("5 + 5", true)).await {
            accepted = answer.into_inner().task;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.unwrap().result, "10");
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
}

#[tokio::test]
async fn an_idempotent_retry_after_a_dropped_connection_runs_once() {
    let deployment = Deployment::new().await;
    let gateway = deployment.gateway("gw-retry", &[]);
    let _worker = deployment.worker("worker-r", "2");
    let proxy = TcpProxy::start_new(gateway.addr.unwrap()).await;
    let mut through_proxy = TaskServiceClient::connect(format!("http://{}", proxy.addr()))
        .await
        .unwrap();
    // A sync call whose connection dies while it waits: the task is stored and queued, the
    // client hears only an error.
    let mut keyed = request("tan(10^9999-1) * 0 + 7", true);
    keyed.idempotency_key = "retry-after-drop".into();
    let call = tokio::spawn(async move { through_proxy.submit_task(keyed).await });
    tokio::time::sleep(Duration::from_millis(60)).await;
    proxy.sever();
    assert!(
        call.await.unwrap().is_err(),
        "the call saw its connection drop"
    );
    // The retry, over a new connection.
    let mut direct = client(&gateway).await;
    let mut retry = request("tan(10^9999-1) * 0 + 7", true);
    retry.idempotency_key = "retry-after-drop".into();
    let first = submit(&mut direct, retry.clone()).await;
    let second = submit(&mut direct, retry).await;
    assert_eq!(first.id, second.id);
    assert_eq!(second.status(), TaskStatus::Succeeded);
    assert_eq!(second.result, "7");
    assert_eq!(second.attempts, 1, "it ran once");
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
}

#[tokio::test]
async fn a_sync_call_overtakes_a_thousand_queued_async_ones() {
    let deployment = Deployment::new().await;
    let gateway = deployment.gateway("gw-prio", &[]);
    let mut on = client(&gateway).await;
    let mut backlog = Vec::new();
    for n in 0..1000 {
        backlog.push(
            submit(&mut on, request(&format!("{n} + 0"), false))
                .await
                .id,
        );
    }
    let mut interactive_client = on.clone();
    let interactive = tokio::spawn(async move {
        interactive_client
            .submit_task(request("40 + 2", true))
            .await
    });
    // The sync call is queued behind the backlog before any worker starts.
    let mut queued = 0;
    for _ in 0..200 {
        let stats = on.get_stats(GetStatsRequest {}).await.unwrap().into_inner();
        queued = stats.queue_depth;
        if queued == 1001 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 1001, "the sync call is queued");
    let _worker = deployment.worker("one-slot", "1");
    let answer = interactive
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(answer.result, "42");
    // Ran first: finished before the sync task did.
    let done_at = |task: &Task| task.finished_at.map(|at| (at.seconds, at.nanos));
    let mut ran_first = 0;
    for id in &backlog {
        let task = get(&mut on, id).await;
        if task.finished_at.is_some() && done_at(&task) < done_at(&answer) {
            ran_first += 1;
        }
    }
    assert!(
        ran_first < 100,
        "{ran_first} of 1,000 queued tasks ran first"
    );
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
}

/// Writes an API keys file for tenants alpha and beta; returns its path.
fn keys_file(dir: &Path) -> String {
    let mut text = String::from("# test keys\n");
    for (tenant, key) in [("alpha", "alpha-secret"), ("beta", "beta-secret")] {
        text.push_str(&dalc_gateway::keys_file_line(tenant, key));
        text.push('\n');
    }
    let path = dir.join("api-keys");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dalc-{name}-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn grpcurl_drives_every_new_rpc_with_api_keys_and_tenants_stay_apart() {
    let dir = scratch_dir("keys");
    let deployment = Deployment::new()
        .await
        .with("DALC_API_KEYS_FILE", &keys_file(&dir));
    let gateway = deployment.gateway("gw-keys", &[]);
    let _worker = deployment.worker("worker-k", "4");
    let authority = gateway.authority();
    let alpha = ["authorization: Bearer alpha-secret"];
    let beta = ["authorization: Bearer beta-secret"];
    let call = |method: &str, data: &str, headers: &[&str]| {
        run_grpcurl_with(
            &authority,
            &format!("dalc.v1.TaskService/{method}"),
            data,
            headers,
        )
    };

    // No key, a wrong key: UNAUTHENTICATED. Health and reflection stay open.
    let (ok, _, err) = call("SubmitTask", r#"{"expression": "1"}"#, &[]);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, _, err) = call("ListTasks", "{}", &["authorization: Bearer nope"]);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, out, err) = run_grpcurl_with(&authority, "grpc.health.v1.Health/Check", "{}", &[]);
    assert!(ok && out.contains("SERVING"), "{out}{err}");

    let (ok, out, err) = call(
        "SubmitTask",
        r#"{"expression": "6 * 7", "wait": true, "idempotencyKey": "k1", "priority": 3}"#,
        &alpha,
    );
    assert!(ok, "{err}");
    let task: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = task["task"]["id"].as_str().unwrap().to_owned();
    assert_eq!(task["task"]["result"], "42");
    assert_eq!(task["task"]["priority"], 3);

    let (ok, out, err) = call("WatchTask", &format!(r#"{{"id": "{id}"}}"#), &alpha);
    assert!(ok && out.contains("TASK_STATUS_SUCCEEDED"), "{out}{err}");
    let (ok, out, err) = call("ListTasks", r#"{"pageSize": 10}"#, &alpha);
    assert!(ok && out.contains(&id), "{out}{err}");
    let (ok, _, err) = call("CancelTask", &format!(r#"{{"id": "{id}"}}"#), &alpha);
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    let (ok, out, err) = call(
        "SubmitBatch",
        r#"{"expressions": ["1 + 1", "2 * 3", "1 / 0"], "timeout": "20s"}"#,
        &alpha,
    );
    assert!(ok, "{err}");
    let answers: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers.len(), 3, "{out}");
    let (ok, out, err) = call("GetStats", "{}", &alpha);
    assert!(ok && out.contains("tasksByStatus"), "{out}{err}");

    // Beta sees none of alpha's tasks, whichever way it asks.
    for (method, data) in [
        ("GetTask", format!(r#"{{"id": "{id}"}}"#)),
        ("WatchTask", format!(r#"{{"id": "{id}"}}"#)),
        ("CancelTask", format!(r#"{{"id": "{id}"}}"#)),
    ] {
        let (ok, _, err) = call(method, &data, &beta);
        assert!(!ok && err.contains("NotFound"), "{method}: {err}");
    }
    let (ok, out, _) = call("ListTasks", "{}", &beta);
    assert!(ok && !out.contains(&id), "{out}");
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn grpc_over_tls_with_a_test_certificate() {
    let dir = scratch_dir("tls");
    let (cert, key) = test_certificate(&dir);
    let deployment = Deployment::new().await;
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let gateway = deployment.gateway("gw-tls", &["--tls-cert", &cert_arg, "--tls-key", &key_arg]);
    let _worker = deployment.worker("worker-t", "2");
    let port = gateway.addr.unwrap().port();
    let pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut secure = TaskServiceClient::new(channel);
    let task = submit(&mut secure, request("2^10", true)).await;
    assert_eq!(task.result, "1024");
    // The CLI, with https:// and --ca-cert.
    let output = Command::new(dalc())
        .args([
            "submit",
            "--json",
            "--addr",
            &format!("https://localhost:{port}"),
        ])
        .args([
            "--ca-cert",
            &dir.join("ca.pem").display().to_string(),
            "3 * 3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""result":"9""#), "{stdout}");
    // Bearer keys must not travel in clear beside TLS: a plaintext HTTP listener off loopback
    // is refused at start-up.
    let refused = Command::new(dalc())
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .args(["--tls-cert", &cert_arg, "--tls-key", &key_arg])
        .envs(deployment.env())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("has no TLS while gRPC has"), "{stderr}");
    // Plaintext to a TLS listener fails rather than leaking anything.
    let plain = TaskServiceClient::connect(format!("http://127.0.0.1:{port}")).await;
    if let Ok(mut plain) = plain {
        assert!(plain.submit_task(request("1", false)).await.is_err());
    }
    dalc_testkit::drop_postgres_database(&deployment.stack.database).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A test CA (`DIR/ca.pem`) and a server certificate it signed for localhost and 127.0.0.1;
/// returns the server's certificate and key files.
fn test_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dalc test CA",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &path("key.pem"),
        "-out",
        &path("server.csr"),
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("cert.pem"),
    ]);
    (dir.join("cert.pem"), dir.join("key.pem"))
}
