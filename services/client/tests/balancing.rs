//! Real gRPC servers on 127.0.0.1 (a fake TaskService plus the health service), reached
//! through `dalc_client::connect`: round-robin over all, a NOT_SERVING or stopped gateway is
//! left out without a failed call once its health check notices, and a recovered one is used
//! again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, net::SocketAddr, pin::Pin, time::Duration};

use dalc_client::{ClientError, ClientOptions, DalcClient};
use dalc_proto::v1::{
    CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
    GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitTaskRequest, SubmitTaskResponse, Task, WatchTaskRequest, WatchTaskResponse,
    task_service_server::{TaskService, TaskServiceServer},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::{Stream, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers SubmitTask with its own name as `worker_id` and the `authorization` header it got
/// as `error`; nothing else.
struct Fake {
    name: String,
}

#[tonic::async_trait]
impl TaskService for Fake {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Response::new(SubmitTaskResponse {
            task: Some(Task {
                worker_id: self.name.clone(),
                expression: request.into_inner().expression,
                error: auth,
                ..Task::default()
            }),
        }))
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
    type SubmitBatchStream = Boxed<SubmitBatchResponse>;
    async fn submit_batch(
        &self,
        _: Request<SubmitBatchRequest>,
    ) -> Result<Response<Self::SubmitBatchStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_stats(
        &self,
        _: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A running fake gateway.
struct Gateway {
    addr: SocketAddr,
    health: HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Gateway {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the listener and every connection (as a gateway process exiting does).
    async fn stop(mut self) -> SocketAddr {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("the server stops")
            .unwrap();
        self.addr
    }
}

async fn start(name: &str, addr: SocketAddr) -> Gateway {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            dalc_client::HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let fake = TaskServiceServer::new(Fake { name: name.into() });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(fake)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    Gateway {
        addr,
        health,
        stop: Some(stop),
        server,
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn options(addrs: &[String]) -> ClientOptions {
    ClientOptions {
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::new(addrs.iter().cloned())
    }
}

/// `calls` SubmitTask calls one after the other; which gateway answered each. Any failed call
/// fails the test.
async fn tally(client: &mut DalcClient, calls: usize) -> BTreeMap<String, usize> {
    let mut by_gateway = BTreeMap::new();
    for n in 0..calls {
        let task = client
            .submit_task(SubmitTaskRequest {
                expression: format!("{n} + 1"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("call {n} failed: {status:?}"))
            .into_inner()
            .task
            .unwrap();
        *by_gateway.entry(task.worker_id).or_default() += 1;
    }
    by_gateway
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Waits out a few health checks.
async fn let_health_checks_notice() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_round_robin_to_the_healthy_gateways_only() {
    let a = start("a", any_port()).await;
    let b = start("b", any_port()).await;
    let c = start("c", any_port()).await;
    let addrs = [a.url(), b.url(), c.url()];
    let mut client = dalc_client::connect(&options(&addrs)).await.unwrap();

    // In turn: exactly a third each.
    assert_eq!(
        tally(&mut client, 30).await,
        counts(&[("a", 10), ("b", 10), ("c", 10)])
    );

    // b reports NOT_SERVING: once a check has seen it, nothing goes to b.
    b.health
        .set_service_status(
            dalc_client::HEALTH_SERVICE,
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    let_health_checks_notice().await;
    assert_eq!(
        tally(&mut client, 20).await,
        counts(&[("a", 10), ("c", 10)])
    );

    // c dies (listener and connections gone): no call fails once it is noticed.
    let c_addr = c.stop().await;
    let_health_checks_notice().await;
    assert_eq!(tally(&mut client, 10).await, counts(&[("a", 10)]));

    // Both recover (c on its old port): both are used again.
    b.health
        .set_service_status(
            dalc_client::HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let c = start("c", c_addr).await;
    let_health_checks_notice().await;
    assert_eq!(
        tally(&mut client, 30).await,
        counts(&[("a", 10), ("b", 10), ("c", 10)])
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_dies_between_checks_costs_at_most_the_call_that_found_out() {
    let a = start("a", any_port()).await;
    let b = start("b", any_port()).await;
    // Health checks too rare to notice within the test: only the failed call can tell.
    let options = ClientOptions {
        health_interval: Duration::from_secs(3600),
        ..options(&[a.url(), b.url()])
    };
    let mut client = dalc_client::connect(&options).await.unwrap();
    b.stop().await;
    let mut failures = 0;
    for _ in 0..10 {
        if client
            .submit_task(SubmitTaskRequest::default())
            .await
            .is_err()
        {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} calls failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_reach_every_address_they_resolve_to() {
    let a = start("a", any_port()).await;
    // localhost may also resolve to ::1, where nothing listens: left out, no call fails.
    let addrs = [format!("dns:///localhost:{}", a.addr.port())];
    let mut client = dalc_client::connect(&options(&addrs)).await.unwrap();
    assert_eq!(tally(&mut client, 5).await, counts(&[("a", 5)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_rides_on_every_call() {
    let a = start("a", any_port()).await;
    let b = start("b", any_port()).await;
    for addrs in [vec![a.url()], vec![a.url(), b.url()]] {
        let options = ClientOptions {
            api_key: Some("k3y".into()),
            ..options(&addrs)
        };
        let mut client = dalc_client::connect(&options).await.unwrap();
        for _ in 0..4 {
            let task = client
                .submit_task(SubmitTaskRequest::default())
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap();
            assert_eq!(task.error, "Bearer k3y");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_gateway_is_a_clear_error_naming_them() {
    // Ports that were free a moment ago: connections are refused.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (x, y) = (format!("http://{}", free()), format!("http://{}", free()));

    let err = dalc_client::connect(&options(std::slice::from_ref(&x)))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the gateway at {x}")),
        "{text}"
    );

    let err = dalc_client::connect(&options(&[x.clone(), y.clone()]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cannot reach any gateway at "), "{text}");
    assert!(text.contains(&x) && text.contains(&y), "{text}");

    let err = dalc_client::connect(&options(&["https://localhost:1".to_owned()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--ca-cert"), "{err}");
}

/// A listed gateway that accepts connections and never answers holds up a new client for one
/// health check's time at most, not the connect timeout: the client starts with the gateways
/// that answered, and the silent one gets no calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_holds_up_a_new_client_no_longer_than_a_health_check() {
    let a = start("a", any_port()).await;
    // Connections complete in the kernel's backlog; nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(20),
        ..options(&[format!("http://{}", silent.local_addr().unwrap()), a.url()])
    };
    let connecting = std::time::Instant::now();
    let mut client = dalc_client::connect(&options).await.unwrap();
    let took = connecting.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "connected in {took:?}: the silent gateway's connect timeout was waited out"
    );
    assert_eq!(tally(&mut client, 6).await, counts(&[("a", 6)]));
}

/// Each new client starts its turns anywhere: commands that make one call each (a `dalc
/// submit` per process) spread over the gateways instead of all calling the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_clients_spread_over_the_gateways() {
    let a = start("a", any_port()).await;
    let b = start("b", any_port()).await;
    let mut by_gateway = BTreeMap::new();
    for _ in 0..24 {
        let mut client = dalc_client::connect(&options(&[a.url(), b.url()]))
            .await
            .unwrap();
        for (gateway, calls) in tally(&mut client, 1).await {
            *by_gateway.entry(gateway).or_insert(0) += calls;
        }
    }
    assert_eq!(by_gateway.len(), 2, "{by_gateway:?}");
}
