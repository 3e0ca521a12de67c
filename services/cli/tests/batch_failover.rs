//! `dalc submit -f` against fake gateways in this process (no broker, no database): three
//! TaskService servers sharing one idempotency table, one of which dies mid-run, breaking its
//! streams. Every expression must come back once, in order, and no task be made twice. The
//! real-service version of this is `balanced.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dalc_proto::v1::{
    CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitTaskRequest, SubmitTaskResponse, Task, TaskStatus, WatchTaskRequest, WatchTaskResponse,
    task_service_server::{TaskService, TaskServiceServer},
};
use serde_json::Value;
use tokio_stream::{
    Stream,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The "database" the fake gateways share: tasks by idempotency key `KEY/INDEX`.
#[derive(Clone, Default)]
struct Tasks {
    by_key: Arc<Mutex<HashMap<String, Task>>>,
    made: Arc<AtomicUsize>,
}

struct Fake {
    name: String,
    tasks: Tasks,
    /// Cancelled: the gateway dies; its open streams break.
    dying: CancellationToken,
}

#[tonic::async_trait]
impl TaskService for Fake {
    type SubmitBatchStream = Boxed<SubmitBatchResponse>;
    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        let request = request.into_inner();
        if request.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("this fake wants a key"));
        }
        let mut answers = Vec::new();
        {
            let mut by_key = self.tasks.by_key.lock().unwrap();
            for (index, expression) in request.expressions.into_iter().enumerate() {
                let key = format!("{}/{index}", request.idempotency_key);
                let task = by_key.entry(key).or_insert_with(|| {
                    self.tasks.made.fetch_add(1, Ordering::Relaxed);
                    Task {
                        id: uuid::Uuid::new_v4().to_string(),
                        result: expression.clone(),
                        expression,
                        status: TaskStatus::Succeeded.into(),
                        worker_id: self.name.clone(),
                        attempts: 1,
                        ..Task::default()
                    }
                });
                answers.push((index as u32, task.clone()));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let dying = self.dying.clone();
        tokio::spawn(async move {
            for (index, task) in answers {
                tokio::select! {
                    () = dying.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("gateway died"))).await;
                        return;
                    }
                    () = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
                let answer = SubmitBatchResponse {
                    index,
                    task: Some(task),
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn submit_task(
        &self,
        _: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_task(
        &self,
        _: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchTaskStream = Boxed<WatchTaskResponse>;
    async fn watch_task(
        &self,
        _: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cancel_task(
        &self,
        _: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_stats(
        &self,
        _: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Starts a fake gateway; cancelling the token breaks its streams and stops it.
async fn start(name: &str, tasks: Tasks) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("dalc.v1.TaskService", tonic_health::ServingStatus::Serving)
        .await;
    let dying = CancellationToken::new();
    let fake = Fake {
        name: name.into(),
        tasks,
        dying: dying.clone(),
    };
    let stopped = dying.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(TaskServiceServer::new(fake))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stopped.cancelled().await;
            })
            .await;
    });
    (addr, dying)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_broken_by_a_dying_gateway_are_sent_again_elsewhere_and_made_once() {
    const TASKS: usize = 3000;
    let tasks = Tasks::default();
    let mut gateways = Vec::new();
    for name in ["a", "b", "c"] {
        gateways.push(start(name, tasks.clone()).await);
    }
    let dir = std::env::temp_dir().join(format!("dalc-failover-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("expressions.txt");
    let text: String = (0..TASKS).map(|n| format!("{n} + 1\n")).collect();
    std::fs::write(&file, text).unwrap();
    let addrs = gateways
        .iter()
        .map(|(addr, _)| format!("http://{addr}"))
        .collect::<Vec<_>>()
        .join(",");

    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(Path::new(env!("CARGO_BIN_EXE_dalc")))
            .args([
                "submit",
                "--json",
                "--chunk-size",
                "100",
                "--timeout",
                "60s",
            ])
            .arg("-f")
            .arg(&file)
            .args(["--addr", &addrs])
            .env_remove("DALC_API_KEY")
            .output()
    });
    // Mid-run: b dies with streams open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateways[1].1.cancel();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("dalc submit -f ends")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("3000 tasks: 3000 succeeded"), "{stderr}");
    assert!(
        stderr.contains("calls sent again"),
        "the kill came too late to break a stream: {stderr}"
    );

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), TASKS);
    let mut ids = HashSet::new();
    let mut by_gateway: HashMap<String, usize> = HashMap::new();
    for (n, line) in lines.iter().enumerate() {
        let answer: Value = serde_json::from_str(line).unwrap();
        assert_eq!(answer["index"].as_u64(), Some(n as u64), "{line}");
        assert_eq!(answer["task"]["expression"], format!("{n} + 1"), "{line}");
        assert!(ids.insert(answer["task"]["id"].as_str().unwrap().to_owned()));
        *by_gateway
            .entry(answer["task"]["workerId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        tasks.made.load(Ordering::Relaxed),
        TASKS,
        "a task made twice"
    );
    assert_eq!(
        by_gateway.len(),
        3,
        "every gateway took chunks: {by_gateway:?}"
    );
}
