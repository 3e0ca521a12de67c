//! A real gateway (and workers) over the in-process queue, in this test process, driven by a
//! tonic client: what the gateway's API tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use dalc_gateway::{GatewayBackends, GatewayConfig};
use dalc_proto::v1::{
    GetTaskRequest, SubmitTaskRequest, Task, task_service_client::TaskServiceClient,
};
use dalc_queue::{TaskPublisher, memory::MemoryBroker};
use dalc_storage::TaskStore;
use dalc_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Stack {
    pub client: TaskServiceClient<Channel>,
    pub store: TaskStore,
    pub broker: Arc<MemoryBroker>,
    pub url: String,
    pub shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct StackOptions {
    pub database_url: String,
    /// Workers sharing the queue (`test-worker-N`; one is plain `test-worker`).
    pub workers: usize,
    pub worker_concurrency: u16,
    /// Instead of the in-process queue, for the gateway's publishes.
    pub publisher: Option<Arc<dyn TaskPublisher>>,
    /// The in-process queue to use (a test may wrap it as `publisher`).
    pub broker: Option<Arc<MemoryBroker>>,
    pub max_queue_length: Option<usize>,
    pub configure: Box<dyn FnOnce(&mut GatewayConfig)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            database_url: dalc_testkit::fresh_sqlite_database(),
            workers: 1,
            worker_concurrency: WorkerConfig::DEFAULT_CONCURRENCY,
            publisher: None,
            broker: None,
            max_queue_length: None,
            configure: Box::new(|_| {}),
        }
    }
}

pub async fn start(options: StackOptions) -> Stack {
    let store = TaskStore::connect(&options.database_url).await.unwrap();
    store.migrate().await.unwrap();
    let broker = options
        .broker
        .unwrap_or_else(|| Arc::new(MemoryBroker::with_max_length(options.max_queue_length)));
    let shutdown = CancellationToken::new();
    for n in 0..options.workers {
        let id = match n {
            0 => "test-worker".to_owned(),
            n => format!("test-worker-{n}"),
        };
        let mut config = WorkerConfig::new(id);
        config.concurrency = options.worker_concurrency;
        let worker = dalc_worker::run(
            config,
            store.clone(),
            broker.clone(),
            broker.clone(),
            shutdown.clone(),
        );
        tokio::spawn(worker);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = GatewayConfig::new("test-gateway");
    config.poll_interval = Duration::from_millis(100);
    (options.configure)(&mut config);
    let publisher = options.publisher.unwrap_or_else(|| broker.clone());
    let backends = GatewayBackends {
        store: store.clone(),
        publisher,
        updates: broker.clone(),
        dead_letters: broker.clone(),
        notifier: broker.clone(),
    };
    tokio::spawn(dalc_gateway::run(
        config,
        listener,
        backends,
        shutdown.clone(),
    ));
    let client = connect(&url).await;
    Stack {
        client,
        store,
        broker,
        url,
        shutdown,
    }
}

impl Stack {
    /// The task a SubmitTask call that must succeed returns.
    pub async fn submitted(&mut self, request: SubmitTaskRequest) -> Task {
        let response = self.client.submit_task(request).await.unwrap();
        response.into_inner().task.unwrap()
    }

    /// The task a GetTask call that must succeed returns.
    pub async fn got(&mut self, request: GetTaskRequest) -> Task {
        let response = self.client.get_task(request).await.unwrap();
        response.into_inner().task.unwrap()
    }

    /// Starts one more worker on the stack's queue and database.
    pub fn start_worker(&self, id: &str, concurrency: u16) {
        let mut config = WorkerConfig::new(id);
        config.concurrency = concurrency;
        tokio::spawn(dalc_worker::run(
            config,
            self.store.clone(),
            self.broker.clone(),
            self.broker.clone(),
            self.shutdown.clone(),
        ));
    }
}

pub async fn connect(url: &str) -> TaskServiceClient<Channel> {
    for _ in 0..100 {
        if let Ok(client) = TaskServiceClient::connect(url.to_owned()).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gateway at {url} never came up");
}
