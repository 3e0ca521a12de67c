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
        self.start_with_env(role, id, extra, &[])
    }

    /// As [`Deployment::start`], with some of the deployment's environment replaced (e.g. the
    /// database or broker URL pointed at a proxy).
    fn start_with_env(
        &self,
        role: &str,
        id: &str,
        extra: &[&str],
        overrides: &[(&str, String)],
    ) -> DalcProcess {
        start_process(&self.env, role, id, extra, overrides)
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
                ANY_TERMINAL => true,
                EXPIRED => task.status == Status::Expired,
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
        self.depth(&self.names.dead_letters()).await
    }

    /// Messages ready in one of the deployment's queues.
    async fn depth(&self, queue: &str) -> u32 {
        let broker = self.broker().await;
        let depth = broker.queue_depth(queue).await.unwrap();
        broker.close().await;
        depth
    }

    /// A broker handle on the deployment's topology, as the test's own client.
    async fn broker(&self) -> AmqpBroker {
        let config = AmqpConfig::new(dalc_testkit::amqp_url(), self.names.clone());
        AmqpBroker::connect(config).await.unwrap()
    }

    /// Every task of the deployment, with its expected result: for scenarios whose tasks were
    /// not all submitted through the API.
    async fn all_tasks(&self, expected: impl Fn(&str) -> String) -> Vec<(TaskId, String)> {
        let tasks = self.store.all().await.unwrap();
        tasks
            .into_iter()
            .map(|task| (task.id, expected(&task.expression)))
            .collect()
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

/// Starts `dalc ROLE` with `env`, some of it replaced by `overrides`; blocks until a gateway
/// reports its address.
fn start_process(
    env: &[(String, String)],
    role: &str,
    id: &str,
    extra: &[&str],
    overrides: &[(&str, String)],
) -> DalcProcess {
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| {
            let replaced = overrides.iter().find(|(key, _)| key == k);
            (
                k.as_str(),
                replaced.map_or(v.as_str(), |(_, value)| value.as_str()),
            )
        })
        .collect();
    let mut args = vec![role];
    match role {
        "gateway" => args.extend(["--listen", "127.0.0.1:0", "--gateway-id", id]),
        _ => args.extend(["--worker-id", id, "--concurrency", "8"]),
    }
    args.extend(extra);
    DalcProcess::start(id, dalc(), &args, &env, role == "gateway")
}

const POISON: &str = "poison";
/// Expected of a task whose call was refused or cut off: it must end, in whatever state.
const ANY_TERMINAL: &str = "any terminal state";
const EXPIRED: &str = "expired";

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
                ..Default::default()
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
            ..Default::default()
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
        ..Default::default()
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
    let gateway = deployment.start("gateway", "gw", &["--metrics-listen", "127.0.0.1:0"]);
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
        ..Default::default()
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
    assert_eq!(poisoned.attempts, 3);
    // Only the poison task was retried.
    report.run_twice -= 1;
    report.conclude("poison task among 100");
    assert_eq!(report.run_twice, 0);
    // Dead-lettered, then recorded and settled by the gateway's dead-letter consumer.
    wait_until(
        "the poison dead letter recorded",
        Duration::from_secs(10),
        async || {
            gateway
                .scrape_metrics()
                .lines()
                .any(|line| line.starts_with("dalc_dead_letters_total{reason=\"rejected\"} 1"))
        },
    )
    .await;
    assert_eq!(
        deployment.dead_letters().await,
        0,
        "the dead-letter queue drains"
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
                ..Default::default()
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

// --- Hardening: deadlines, duplicates, bounds, broker and database states ---

/// The expression workers stall on (with `--fault-stall-on`), to hold a task RUNNING.
const STALL: &str = "4242424242";

fn sync_request(expression: &str, timeout: Option<Duration>) -> SubmitTaskRequest {
    SubmitTaskRequest {
        expression: expression.into(),
        wait: true,
        timeout: timeout.map(|t| prost_types::Duration {
            seconds: i64::try_from(t.as_secs()).unwrap(),
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Submits without waiting and returns the accepted task's id.
async fn submit_async(
    client: &mut TaskServiceClient<Channel>,
    expression: &str,
    timeout: Option<Duration>,
) -> TaskId {
    let mut request = sync_request(expression, timeout);
    request.wait = false;
    let task = client.submit_task(request).await.unwrap().into_inner();
    task.task.unwrap().id.parse().unwrap()
}

async fn wait_until(what: &str, patience: Duration, check: impl AsyncFnMut() -> bool) {
    let held = dalc_testkit::eventually(patience, check).await;
    assert!(held, "{what} within {patience:?}");
}

fn say(line: String) {
    let _ = std::io::stderr().write_all(format!("  {line}\n").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_kill_9_a_worker_whose_task_then_passes_its_deadline() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &["--sweep-interval", "500ms"]);
    let mut doomed = deployment.start(
        "worker",
        "doomed",
        &["--fault-stall-on", STALL, "--lease", "2s"],
    );
    let mut client = client(&gateway).await;
    let id = submit_async(
        &mut client,
        &format!("{STALL} + 1"),
        Some(Duration::from_secs(3)),
    )
    .await;
    wait_until("the task runs", Duration::from_secs(10), async || {
        deployment.store.get(id).await.unwrap().unwrap().status == Status::Running
    })
    .await;
    doomed.signal_and_wait("KILL", Duration::from_secs(10));
    let deadline = deployment
        .store
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .deadline
        .unwrap();
    // No worker is left: nothing can take the task over before its deadline passes.
    let mut report = deployment.settle(&[(id, EXPIRED.to_owned())]).await;
    let ended = deployment.store.get(id).await.unwrap().unwrap();
    let late = (ended.finished_at.unwrap() - deadline)
        .to_std()
        .unwrap_or_default();
    report.recovery = Some(late);
    say(format!(
        "ended {:?} after its deadline: {:?}",
        late, ended.error
    ));
    report.conclude("kill -9 a worker whose task then passes its deadline");
    // Bound: deadline + lease (2 s) + sweep interval + slack.
    assert!(late < Duration::from_secs(10), "{late:?}");
    deployment.teardown([gateway, doomed]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_duplicate_and_early_redelivered_messages_run_once() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let stall = ["--fault-stall-on", STALL, "--fault-stall-for", "300ms"];
    let workers = [
        deployment.start("worker", "w1", &stall),
        deployment.start("worker", "w2", &stall),
    ];
    // The same message twice, by hand, for 50 tasks that take 300 ms each: the copies meet.
    let broker = deployment.broker().await;
    let mut submitted = Vec::new();
    for n in 0..50 {
        let task = dalc_domain::Task::new(format!("{STALL} * 0 + {n}"), None);
        deployment
            .store
            .insert(&task, Duration::from_secs(600))
            .await
            .unwrap();
        let message = dalc_queue::TaskMessage::for_task(&task, None);
        for _ in 0..2 {
            dalc_queue::TaskPublisher::publish_task(&broker, &message)
                .await
                .unwrap();
        }
        submitted.push((task.id, n.to_string()));
    }
    let report = deployment.settle(&submitted).await;
    say(format!(
        "duplicates by hand: run twice {}",
        report.run_twice
    ));
    report.conclude("the same message published twice, 50 tasks");
    assert_eq!(report.run_twice, 0, "one attempt each");

    // A redelivery while the first attempt is alive: w3's consuming connection is closed
    // under a 3 s task, so RabbitMQ hands the message to w4 while w3 still computes.
    let slow = ["--fault-stall-on", STALL, "--fault-stall-for", "3s"];
    let w3 = deployment.start("worker", "w3", &slow);
    let gateway = deployment.start("gateway", "gw", &[]);
    let [w1, w2] = workers;
    drop((w1, w2));
    let mut client = client(&gateway).await;
    let id = submit_async(&mut client, &format!("{STALL} * 0 + 99"), None).await;
    wait_until("w3 runs the task", Duration::from_secs(10), async || {
        let task = deployment.store.get(id).await.unwrap().unwrap();
        task.worker_id.as_deref() == Some("w3")
    })
    .await;
    let w4 = deployment.start("worker", "w4", &[]);
    close_consuming_connection(w3.pid());
    let report = deployment.settle(&[(id, "99".to_owned())]).await;
    let stored = deployment.store.get(id).await.unwrap().unwrap();
    say(format!(
        "redelivered while alive: attempts {}, worker {:?}",
        stored.attempts, stored.worker_id
    ));
    report.conclude("a message redelivered while its first attempt is alive");
    assert_eq!(stored.attempts, 1, "one attempt, one result");
    broker.close().await;
    deployment.teardown([gateway, w3, w4]).await;
}

/// Closes the AMQP connection a dalc process consumes on, as a broker blip would.
fn close_consuming_connection(pid: u32) {
    let listing = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let wanted = format!("pid {pid} consume");
    let connection = listing
        .lines()
        .find(|line| line.contains(&wanted))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {wanted:?} in {listing}"));
    run(
        "rabbitmqctl",
        &["-q", "close_connection", connection.trim(), "fault test"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_a_broker_that_never_answers_is_reported_before_the_deadline() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let proxy = dalc_testkit::proxy::TcpProxy::start_new(rabbitmq_addr()).await;
    let via_proxy = [("DALC_AMQP_URL", amqp_url_via(proxy.addr()))];
    let gateway = deployment.start_with_env("gateway", "gw", &[], &via_proxy);
    let worker = deployment.start("worker", "w1", &[]);
    let mut client = client(&gateway).await;
    let first = client
        .submit_task(sync_request("1 + 1", None))
        .await
        .unwrap();
    let mut submitted = vec![(
        first.into_inner().task.unwrap().id.parse().unwrap(),
        "2".to_owned(),
    )];

    // The broker now accepts bytes and never answers.
    proxy.blackhole();
    let mut slowest = Duration::ZERO;
    for wait in [true, false, true] {
        let mut request = tonic::Request::new(sync_request("2 + 2", None));
        request.get_mut().wait = wait;
        request.set_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let status = client.submit_task(request).await.unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    say(format!(
        "answered UNAVAILABLE within {slowest:?} of a 2 s deadline"
    ));
    proxy.restore();
    // The refused calls' tasks may have been stored: each must still end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, _) in deployment.all_tasks(|_| ANY_TERMINAL.to_owned()).await {
        if !submitted.iter().any(|(known, _)| *known == id) {
            submitted.push((id, ANY_TERMINAL.to_owned()));
        }
    }
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(slowest);
    report.conclude("a broker that accepts connections but never answers");
    deployment.teardown([gateway, worker]).await;
}

fn rabbitmq_addr() -> std::net::SocketAddr {
    "127.0.0.1:5672".parse().unwrap()
}

fn amqp_url_via(addr: std::net::SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_absurd_timeouts_are_refused_beside_100_calls_in_flight() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let workers = [
        deployment.start("worker", "w1", &[]),
        deployment.start("worker", "w2", &[]),
    ];
    let client = client(&gateway).await;
    let mut calls = Vec::new();
    for n in 0..100 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let (expression, expected) = workload(n);
            let task = client
                .submit_task(sync_request(&expression, None))
                .await
                .map(|r| r.into_inner().task.unwrap());
            (task, expected)
        }));
    }
    for seconds in [2000 * 3600, 10_000_000_000_000_i64] {
        let mut client = client.clone();
        let mut request = sync_request("1 + 1", None);
        request.timeout = Some(prost_types::Duration { seconds, nanos: 0 });
        let status = client.submit_task(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{seconds} s: {status:?}"
        );
    }
    let mut submitted = Vec::new();
    for call in calls {
        let (task, expected) = call.await.unwrap();
        let task = task.expect("the calls beside the absurd ones all succeed");
        assert_eq!(task.result, expected);
        submitted.push((task.id.parse().unwrap(), expected));
    }
    deployment
        .settle(&submitted)
        .await
        .conclude("2,000 h and 10^13 s timeouts beside 100 calls");
    let [w1, w2] = workers;
    deployment.teardown([gateway, w1, w2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_malformed_and_future_messages_are_dead_lettered_and_recorded() {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &["--metrics-listen", "127.0.0.1:0"]);
    let worker = deployment.start("worker", "w1", &[]);
    let connection =
        Connection::connect(&dalc_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let future_version = format!(
        r#"{{"v":99,"id":"{}","expression":"1 + 1"}}"#,
        TaskId::new()
    );
    for body in [b"{not json at all".to_vec(), future_version.into_bytes()] {
        channel
            .basic_publish(
                "".into(),
                deployment.names.tasks().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    connection.close(200, "done".into()).await.ok();
    // Workers carry on.
    let clients = [client(&gateway).await];
    let submitted = submit_many(&clients, 20, 0).await;
    let report = deployment.settle(&submitted).await;
    wait_until(
        "both dead letters recorded",
        Duration::from_secs(10),
        async || {
            gateway
                .scrape_metrics()
                .lines()
                .any(|line| line.starts_with("dalc_dead_letters_total{reason=\"rejected\"} 2"))
        },
    )
    .await;
    wait_until(
        "the dead-letter queue drained",
        Duration::from_secs(10),
        async || deployment.dead_letters().await == 0,
    )
    .await;
    report.conclude("a malformed and a future-version message among 20 tasks");
    deployment.teardown([gateway, worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_sync_calls_wait_across_a_rabbitmq_restart() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let client = client(&gateway).await;
    let mut calls = Vec::new();
    for n in 0..30 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let (expression, expected) = workload(20_000 + n);
            let mut request =
                tonic::Request::new(sync_request(&expression, Some(Duration::from_secs(60))));
            request.set_timeout(Duration::from_secs(70));
            (client.submit_task(request).await, expected)
        }));
    }
    wait_until("30 tasks queued", Duration::from_secs(20), async || {
        deployment
            .store
            .count_by_status(Status::Pending)
            .await
            .unwrap()
            == 30
    })
    .await;
    let restarted = Instant::now();
    {
        let _stopped = BrokerStopped::new();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let worker = deployment.start("worker", "w1", &[]);
    let mut submitted = Vec::new();
    for call in calls {
        let (result, expected) = call.await.unwrap();
        let task = result
            .expect("the call is answered")
            .into_inner()
            .task
            .unwrap();
        assert_eq!(
            task.status(),
            dalc_proto::v1::TaskStatus::Succeeded,
            "{task:?}"
        );
        assert_eq!(task.result, expected);
        submitted.push((task.id.parse().unwrap(), expected));
    }
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(restarted.elapsed());
    report.conclude("30 sync calls waiting across a RabbitMQ restart");
    deployment.teardown([gateway, worker]).await;
}

/// Raises a RabbitMQ memory alarm while alive; clears it on drop, pass or fail.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> Self {
        run(
            "rabbitmqctl",
            &["-q", "set_vm_memory_high_watermark", "0.0000001"],
        );
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // RabbitMQ's default, as this machine's configuration also sets it.
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "set_vm_memory_high_watermark", "0.4"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_a_rabbitmq_memory_alarm_is_unavailable_fast() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    let gateway = deployment.start("gateway", "gw", &[]);
    let worker = deployment.start("worker", "w1", &[]);
    let clients = [client(&gateway).await];
    let mut submitted = submit_many(&clients, 50, 0).await;
    let mut refusals = Vec::new();
    {
        let _alarm = MemoryAlarm::raise();
        // Within one health interval (5 s) the gateway's probe notices the alarm.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut client = clients[0].clone();
        for n in 0..10 {
            let (expression, _) = workload(n);
            let mut request = tonic::Request::new(sync_request(&expression, None));
            request.set_timeout(Duration::from_secs(10));
            let started = Instant::now();
            let status = client.submit_task(request).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            refusals.push(started.elapsed());
        }
    }
    let first = refusals[0];
    let rest = refusals[1..].iter().max().copied().unwrap_or_default();
    say(format!(
        "during the alarm: first refusal {first:?}, later ones at most {rest:?}"
    ));
    assert!(
        rest < Duration::from_secs(1),
        "refusals are fast once blocked: {rest:?}"
    );
    // After it clears: everything accepted ends, and new calls work.
    wait_until(
        "publishes work again",
        Duration::from_secs(30),
        async || {
            let mut client = clients[0].clone();
            client
                .submit_task(sync_request("1 + 1", None))
                .await
                .is_ok()
        },
    )
    .await;
    for (id, _) in deployment.all_tasks(|_| ANY_TERMINAL.to_owned()).await {
        if !submitted.iter().any(|(known, _)| *known == id) {
            submitted.push((id, ANY_TERMINAL.to_owned()));
        }
    }
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(first);
    report.conclude("a RabbitMQ memory alarm");
    deployment.teardown([gateway, worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_two_gateways_sweeping_one_database_republish_each_task_once() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    // 1,000 tasks stored and never published, as if their gateway died.
    let tasks: Vec<_> = (0..1000)
        .map(|n| {
            let (expression, _) = workload(n);
            dalc_domain::Task::new(expression, None)
        })
        .collect();
    for chunk in tasks.chunks(250) {
        deployment
            .store
            .insert_all(chunk, Duration::ZERO)
            .await
            .unwrap();
    }
    let sweep = ["--sweep-interval", "100ms", "--sweep-grace", "60s"];
    let gateways = [
        deployment.start("gateway", "sweeper-a", &sweep),
        deployment.start("gateway", "sweeper-b", &sweep),
    ];
    let started = Instant::now();
    wait_until(
        "every task republished",
        Duration::from_secs(30),
        async || deployment.depth(&deployment.names.tasks()).await >= 1000,
    )
    .await;
    let swept_in = started.elapsed();
    // Both gateways keep sweeping for a while: nothing is published again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let depth = deployment.depth(&deployment.names.tasks()).await;
    say(format!(
        "1000 stranded tasks: {depth} messages after both swept, in {swept_in:?}"
    ));
    assert_eq!(depth, 1000, "no task republished twice");
    let worker = deployment.start("worker", "w1", &[]);
    let submitted: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(n, t)| (t.id, workload(n).1))
        .collect();
    let mut report = deployment.settle(&submitted).await;
    report.recovery = Some(swept_in);
    report.conclude("two gateways sweeping one PostgreSQL database");
    assert_eq!(report.run_twice, 0);
    let [a, b] = gateways;
    deployment.teardown([a, b, worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_scenario_gateway_and_worker_wait_for_postgres_and_rabbitmq() {
    use dalc_testkit::proxy::TcpProxy;
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::new().await;
    // Both dependencies "down": nothing listens on their addresses yet.
    let postgres = TcpProxy::reserve("127.0.0.1:5432".parse().unwrap());
    let rabbitmq = TcpProxy::reserve(rabbitmq_addr());
    let database_via = deployment
        .database
        .replace("127.0.0.1:5432", &postgres.addr().to_string());
    let overrides = vec![
        ("DALC_DATABASE_URL", database_via),
        ("DALC_AMQP_URL", amqp_url_via(rabbitmq.addr())),
    ];
    let starting = Instant::now();
    // Started before either dependency is up; each blocks until it serves.
    let start = |role: &'static str, id: &'static str| {
        let (env, overrides) = (deployment.env.clone(), overrides.clone());
        tokio::task::spawn_blocking(move || start_process(&env, role, id, &[], &overrides))
    };
    let gateway = start("gateway", "gw");
    let worker = start("worker", "w1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmq.start().await;
    let gateway = gateway.await.unwrap();
    let worker = worker.await.unwrap();
    let serving = starting.elapsed();
    let mut client = client(&gateway).await;
    let task = client
        .submit_task(sync_request("6 * 7", None))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.result, "42");
    say(format!(
        "dependencies up after 3 s and 5 s; serving after {serving:?}"
    ));
    let mut report = deployment
        .settle(&[(task.id.parse().unwrap(), "42".to_owned())])
        .await;
    report.recovery = Some(serving);
    report.conclude("gateway and worker started before PostgreSQL and RabbitMQ");
    deployment.teardown([gateway, worker]).await;
}
