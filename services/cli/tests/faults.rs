//! Fault scenarios: real gateway and worker processes under load while something dies, then a
//! check of every task in the database. Each scenario reports submitted / terminal / lost /
//! wrong / run-twice counts and the recovery time, and asserts nothing lost and nothing wrong.
//!
//! Some scenarios stop the machine's shared RabbitMQ or PostgreSQL, so this binary runs on its
//! own, after the rest of the suite (`scripts/test.sh`), its scenarios one at a time, and every
//! stopped service is started again when the scenario ends, pass or fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use dalc_domain::{TaskId, TaskStatus as Status};
use dalc_proto::v1::{SubmitTaskRequest, task_service_client::TaskServiceClient};
use dalc_queue::{
    QueueNames,
    amqp::{AmqpBroker, AmqpConfig},
};
use dalc_storage::TaskStore;
use dalc_testkit::process::DalcProcess;
use tokio::sync::{Mutex, Semaphore};
use tonic::{Code, transport::Channel};

/// Scenarios run one at a time: some take the shared broker or database away.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How long the system gets to finish everything after a fault.
const SETTLE: Duration = Duration::from_secs(120);

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

/// One deployment: its own database and queue prefix on the shared services.
struct Deployment {
    database: String,
    names: QueueNames,
    env: Vec<(String, String)>,
    store: TaskStore,
}

impl Deployment {
    async fn new() -> Deployment {
        let database = dalc_testkit::fresh_postgres_database().await;
        let prefix = dalc_testkit::unique_queue_prefix();
        let env = vec![
            ("DALC_DATABASE_URL".to_owned(), database.clone()),
            ("DALC_AMQP_URL".to_owned(), dalc_testkit::amqp_url()),
            ("DALC_QUEUE_PREFIX".to_owned(), prefix.clone()),
        ];
        let store = TaskStore::connect(&database).await.unwrap();
        store.migrate().await.unwrap();
        Deployment {
            database,
            names: QueueNames::new(prefix),
            env,
            store,
        }
    }

    fn start(&self, role: &str, id: &str, extra: &[&str]) -> DalcProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut args = vec![role];
        match role {
            "gateway" => args.extend(["--listen", "127.0.0.1:0", "--gateway-id", id]),
            _ => args.extend(["--worker-id", id, "--concurrency", "8"]),
        }
        args.extend(extra);
        DalcProcess::start(id, dalc(), &args, &env, role == "gateway")
    }

    /// Waits until every submitted task is terminal (or [`SETTLE`] passes), then checks each.
    async fn settle(&self, submitted: &[(TaskId, String)]) -> Report {
        let started = Instant::now();
        loop {
            let open = self
                .store
                .count_by_status(Status::Pending)
                .await
                .unwrap_or(u64::MAX)
                + self
                    .store
                    .count_by_status(Status::Running)
                    .await
                    .unwrap_or(u64::MAX);
            if open == 0 || started.elapsed() > SETTLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut report = Report {
            submitted: submitted.len(),
            ..Report::default()
        };
        for (id, expected) in submitted {
            let task = self
                .store
                .get(*id)
                .await
                .unwrap()
                .expect("an accepted task is stored");
            if !task.is_terminal() {
                report.lost += 1;
                continue;
            }
            report.terminal += 1;
            if task.attempts > 1 {
                report.run_twice += 1;
            }
            let right = match expected.as_str() {
                POISON => task.status == Status::Failed,
                expected => {
                    task.status == Status::Succeeded && task.result.as_deref() == Some(expected)
                }
            };
            if !right {
                report.wrong += 1;
                eprintln!("wrong: {task:?}, expected {expected}");
            }
        }
        report
    }

    async fn dead_letters(&self) -> u32 {
        let config = AmqpConfig::new(dalc_testkit::amqp_url(), self.names.clone());
        let broker = AmqpBroker::connect(config).await.unwrap();
        broker
            .queue_depth(&self.names.dead_letters())
            .await
            .unwrap()
    }

    /// Deletes the deployment's queues and exchange, once its processes are gone (so they do
    /// not log the missing queues).
    async fn teardown(self, processes: impl IntoIterator<Item = DalcProcess>) {
        drop(processes.into_iter().collect::<Vec<_>>());
        let config = AmqpConfig::new(dalc_testkit::amqp_url(), self.names.clone());
        if let Ok(broker) = AmqpBroker::connect(config).await {
            broker.delete_topology().await.ok();
            broker.close().await;
        }
    }
}

const POISON: &str = "poison";

#[derive(Debug, Default)]
struct Report {
    submitted: usize,
    terminal: usize,
    lost: usize,
    wrong: usize,
    run_twice: usize,
    recovery: Option<Duration>,
}

impl Report {
    /// Prints the figures where CI logs show them (not captured by the test harness), then
    /// asserts that nothing was lost and nothing is wrong.
    fn conclude(&self, scenario: &str) {
        let line = format!(
            "FAULT SCENARIO {scenario}: submitted={} terminal={} lost={} wrong={} run_twice={} recovery={}\n",
            self.submitted,
            self.terminal,
            self.lost,
            self.wrong,
            self.run_twice,
            self.recovery
                .map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        assert_eq!(self.lost, 0, "{scenario}: lost tasks");
        assert_eq!(self.wrong, 0, "{scenario}: wrong results");
        assert_eq!(self.terminal, self.submitted, "{scenario}");
    }
}

async fn client(gateway: &DalcProcess) -> TaskServiceClient<Channel> {
    TaskServiceClient::connect(gateway.url()).await.unwrap()
}

/// `factorial(a) / factorial(a - 2)` = a·(a−1): a few hundred microseconds of real work.
fn workload(n: usize) -> (String, String) {
    let a = 1500 + (n % 200) as u64;
    (
        format!("factorial({a}) / factorial({})", a - 2),
        (a * (a - 1)).to_string(),
    )
}

/// Submits `count` async tasks, 32 at a time, through `clients` in turn; returns the accepted
/// ones with their expected results. Submissions refused with UNAVAILABLE are not counted:
/// the client was never told about them.
async fn submit_many(
    clients: &[TaskServiceClient<Channel>],
    count: usize,
    offset: usize,
) -> Vec<(TaskId, String)> {
    let limit = Arc::new(Semaphore::new(32));
    let mut calls = Vec::new();
    for n in offset..offset + count {
        let mut client = clients[n % clients.len()].clone();
        let permit = limit.clone().acquire_owned().await.unwrap();
        calls.push(tokio::spawn(async move {
            let (expression, expected) = workload(n);
            let request = SubmitTaskRequest {
                expression,
                wait: false,
                timeout: None,
            };
            let accepted = client.submit_task(request).await;
            drop(permit);
            match accepted {
                Ok(response) => Some((
                    response.into_inner().task.unwrap().id.parse().unwrap(),
                    expected,
                )),
                Err(status) if status.code() == Code::Unavailable => None,
                Err(status) => panic!("unexpected error: {status:?}"),
            }
        }));
    }
    let mut accepted = Vec::new();
    for call in calls {
        accepted.extend(call.await.unwrap());
    }
    accepted
}

/// Submits one task every few milliseconds until `stop`, recording what was accepted and when
/// submissions succeed again after `recovered_after` is set.
async fn submit_steadily(
    client: TaskServiceClient<Channel>,
    stop: Arc<tokio::sync::Notify>,
    service_back: Arc<std::sync::Mutex<Option<Instant>>>,
) -> (Vec<(TaskId, String)>, Option<Duration>, Duration) {
    let mut accepted = Vec::new();
    let mut recovery = None;
    let mut slowest_refusal = Duration::ZERO;
    for n in 0.. {
        let (expression, expected) = workload(n);
        let mut client = client.clone();
        let request = SubmitTaskRequest {
            expression,
            wait: false,
            timeout: None,
        };
        let sent = Instant::now();
        let stopped = stop.notified();
        tokio::select! {
            () = stopped => break,
            result = client.submit_task(request) => match result {
                Ok(response) => {
                    accepted.push((response.into_inner().task.unwrap().id.parse().unwrap(), expected));
                    let back = *service_back.lock().unwrap();
                    if let (None, Some(back)) = (recovery, back) {
                        recovery = Some(back.elapsed());
                    }
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    slowest_refusal = slowest_refusal.max(sent.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (accepted, recovery, slowest_refusal)
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// Stops RabbitMQ's application while alive; starts it again on drop, pass or fail.
struct BrokerStopped;

impl BrokerStopped {
    fn new() -> Self {
        run("rabbitmqctl", &["-q", "stop_app"]);
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "await_startup"])
            .status();
    }
}

/// Stops PostgreSQL while alive; starts it again on drop, pass or fail.
struct DatabaseStopped {
    version: String,
}

impl DatabaseStopped {
    fn new() -> Self {
        let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
        let mut versions: Vec<String> = versions
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        let version = versions.pop().expect("a cluster version");
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &version,
                "main",
                "stop",
                "--",
                "-m",
                "fast",
            ],
        );
        DatabaseStopped { version }
    }
}

impl Drop for DatabaseStopped {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", "start"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_kill_9_a_worker_with_2000_tasks_in_flight() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let clients = [client(&gateway).await];
    // All 2,000 are queued before any worker starts, so they are all in flight at the kill.
    let submitted = submit_many(&clients, 2000, 0).await;
    assert_eq!(submitted.len(), 2000);
    let mut doomed = deployment.start("worker", "doomed", &[]);
    let survivor = deployment.start("worker", "survivor", &[]);
    while deployment
        .store
        .count_by_status(Status::Succeeded)
        .await
        .unwrap()
        < 300
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = Instant::now();
    doomed.signal_and_wait("KILL", Duration::from_secs(10));
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(killed.elapsed());
    report.conclude("kill -9 one of two workers, 2000 tasks");
    deployment.teardown([gateway, doomed, survivor]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_restart_rabbitmq_while_tasks_flow() {
    let slowest_refusal =
        restart_while_tasks_flow("RabbitMQ", || Box::new(BrokerStopped::new())).await;
    assert!(
        slowest_refusal < Duration::from_secs(8),
        "refusals are fast: {slowest_refusal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_restart_postgres_while_tasks_flow() {
    restart_while_tasks_flow("PostgreSQL", || Box::new(DatabaseStopped::new())).await;
}

/// Submits steadily through one gateway to one worker while `stop` keeps a service down for
/// 3 s; then checks every accepted task. Returns the slowest refusal seen during the outage.
async fn restart_while_tasks_flow(service: &str, stop: impl FnOnce() -> Box<dyn Send>) -> Duration {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let worker = deployment.start("worker", "w1", &[]);
    let stopping = Arc::new(tokio::sync::Notify::new());
    let back = Arc::new(std::sync::Mutex::new(None));
    let submitter = tokio::spawn(submit_steadily(
        client(&gateway).await,
        stopping.clone(),
        back.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        // Restarted when this guard drops, pass or fail.
        let _stopped = stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    *back.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_secs(8)).await;
    stopping.notify_one();
    let (submitted, recovery, slowest_refusal) = submitter.await.unwrap();

    // The test's own pool may have seen a database restart too; check over a fresh one.
    let store = TaskStore::connect(&deployment.database).await.unwrap();
    let deployment = Deployment {
        store,
        ..deployment
    };
    let mut report = deployment.settle(&submitted).await;
    report.recovery = recovery;
    let _ = writeln!(
        std::io::stderr(),
        "  slowest UNAVAILABLE while {service} was away: {slowest_refusal:?}"
    );
    report.conclude(&format!("restart {service} while tasks flow"));
    assert!(
        recovery.is_some(),
        "submissions succeed again after {service} is back"
    );
    deployment.teardown([gateway, worker]).await;
    slowest_refusal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_gateway_dies_between_insert_and_publish() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let crashing = deployment.start("gateway", "crashing", &["--fault-abort-before-publish"]);
    let sweeping = deployment.start(
        "gateway",
        "sweeping",
        &["--sweep-interval", "500ms", "--sweep-grace", "2s"],
    );
    let worker = deployment.start("worker", "w1", &[]);

    let mut client = client(&crashing).await;
    let request = SubmitTaskRequest {
        expression: "6 * 7".into(),
        wait: true,
        timeout: None,
    };
    let died = Instant::now();
    assert!(
        client.submit_task(request).await.is_err(),
        "the gateway died mid-call"
    );
    assert_eq!(
        deployment
            .store
            .count_by_status(Status::Pending)
            .await
            .unwrap(),
        1,
        "stored, never published"
    );

    while deployment
        .store
        .count_by_status(Status::Succeeded)
        .await
        .unwrap()
        < 1
    {
        assert!(
            died.elapsed() < SETTLE,
            "the sweeper never finished the stranded task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = Report {
        submitted: 1,
        terminal: 1,
        recovery: Some(died.elapsed()),
        ..Report::default()
    };
    assert_eq!(
        deployment
            .store
            .count_by_status(Status::Pending)
            .await
            .unwrap(),
        0
    );
    report.conclude("gateway killed between insert and publish");
    deployment.teardown([crashing, sweeping, worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_a_poison_task_ends_while_others_complete() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let marker = ["--fault-crash-on", "7777777"];
    let workers = [
        deployment.start("worker", "w1", &marker),
        deployment.start("worker", "w2", &marker),
    ];
    let clients = [client(&gateway).await];

    let started = Instant::now();
    let mut poison_client = clients[0].clone();
    let poison = SubmitTaskRequest {
        expression: "7777777 + 1".into(),
        wait: false,
        timeout: None,
    };
    let poison = poison_client
        .submit_task(poison)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let mut submitted = submit_many(&clients, 100, 0).await;
    submitted.push((poison.id.parse().unwrap(), POISON.to_owned()));

    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(started.elapsed());
    let poisoned = deployment
        .store
        .get(poison.id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(poisoned.status, Status::Failed);
    assert_eq!(poisoned.error.as_deref(), Some("gave up after 3 attempts"));
    // Only the poison task was retried.
    report.run_twice -= 1;
    report.conclude("poison task among 100");
    assert_eq!(report.run_twice, 0);
    assert_eq!(
        deployment.dead_letters().await,
        1,
        "the poison message is dead-lettered"
    );
    let [w1, w2] = workers;
    deployment.teardown([gateway, w1, w2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_sigterm_a_worker_and_a_gateway_under_load() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let staying = deployment.start("gateway", "gw-staying", &[]);
    let mut leaving = deployment.start("gateway", "gw-leaving", &["--shutdown-grace", "10s"]);
    let mut retiring = deployment.start("worker", "w-retiring", &[]);
    let worker = deployment.start("worker", "w-staying", &[]);
    let clients = [client(&staying).await, client(&leaving).await];

    // Sync calls in flight on the gateway that is about to leave.
    let mut sync_calls = Vec::new();
    for n in 0..50 {
        let mut client = clients[1].clone();
        sync_calls.push(tokio::spawn(async move {
            let (expression, expected) = workload(10_000 + n);
            let request = SubmitTaskRequest {
                expression,
                wait: true,
                timeout: None,
            };
            (client.submit_task(request).await, expected)
        }));
    }
    let load = tokio::spawn({
        let clients = clients.clone();
        async move { submit_many(&clients[..1], 1000, 0).await }
    });
    while deployment
        .store
        .count_by_status(Status::Succeeded)
        .await
        .unwrap()
        < 200
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    let worker_exit = retiring.signal_and_wait("TERM", Duration::from_secs(30));
    let gateway_exit = leaving.signal_and_wait("TERM", Duration::from_secs(30));
    let mut submitted = load.await.unwrap();
    for call in sync_calls {
        let (result, expected) = call.await.unwrap();
        // A call the leaving gateway accepted is answered; none is cut off.
        let task = result
            .expect("in-flight calls finish during the grace period")
            .into_inner()
            .task
            .unwrap();
        submitted.push((task.id.parse().unwrap(), expected));
    }
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(signalled.elapsed());
    report.conclude("SIGTERM a worker and a gateway under load");
    assert_eq!(worker_exit, Some(0), "the worker exits 0");
    assert_eq!(gateway_exit, Some(0), "the gateway exits 0");
    assert_eq!(report.run_twice, 0, "nothing ran twice");
    deployment
        .teardown([staying, leaving, retiring, worker])
        .await;
}
