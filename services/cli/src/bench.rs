//! `dalc bench`: a load tool for running gateways. It reports figures (throughput, latency
//! percentiles, errors by kind) and checks every answer against a local evaluation; it
//! asserts no timing.
//!
//! * sync: every call is a `SubmitTask` with `wait`, and its latency is that call's.
//! * async: every task is submitted without `wait` (the submit rate), then long-polled with
//!   `GetTask` until it is over (the completion rate: first submit to last task over).
//! * get: as async, unmeasured, to have `--total` tasks over; then `GetTask` without `wait` on
//!   those ids, round-robin, and its latency is that call's: the read path alone.
//!
//! Calls go round-robin over `--connections` balanced clients (default 1), each with a connection to every `--addr`. The load loop and the report are
//! shared with the `rpc_floor` example (the broker's own round trip), which
//! `benches/compare.sh` measures side by side.

// `load` and `progress` also serve `dalc submit -f` (its progress bar).
pub(crate) mod load;
mod mix;
pub(crate) mod progress;
mod report;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use dalc_client::DalcClient;
use dalc_proto::v1::{GetTaskRequest, SubmitTaskRequest, TaskStatus};
use serde_json::Value;

use self::{
    load::{Counters, Load},
    mix::{Expected, Mix, code_name},
    progress::{Goal, Progress},
    report::{Outcome, Report, Tally},
};
use crate::{
    args::{BenchArgs, BenchMode, ConnectArgs},
    render::is_terminal,
};

/// Waiting calls ask the server for this much less than their deadline, so that the server's
/// answer ("still pending") arrives before the client gives up on the call.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

pub async fn bench(args: BenchArgs) -> Result<u8> {
    let mut given = Vec::new();
    given.extend(args.expression.clone());
    given.extend(args.exprs.iter().cloned());
    let mix = Mix::new(given, args.expr_file.as_deref())?;
    let target = Arc::new(Target {
        clients: connect_all(&args.connect, args.connections).await?,
        mix,
        deadline: args.deadline.0,
    });
    let load = Load {
        total: args.total.unwrap_or(2000),
        duration: args.duration.map(|d| d.0),
        concurrency: args.concurrency,
        rate: args.rate,
    };

    if args.warmup > 0 {
        // Connections, the server's pools and caches warm up before anything counts; sync in
        // both modes, so that no warm-up task is still queued when the measurement starts.
        let warmup = Load {
            total: args.warmup,
            duration: None,
            rate: None,
            ..load
        };
        let counters = Arc::new(Counters::default());
        let progress = Progress::start("warm-up", Goal::Calls(args.warmup), counters.clone());
        let target = target.clone();
        load::run(warmup, counters, move |seq| {
            let target = target.clone();
            async move { target.submit_sync(seq).await }
        })
        .await;
        progress.finish().await;
    }

    let report = match args.mode {
        BenchMode::Sync => run_sync(target, load).await,
        BenchMode::Async => run_async(target, load, &args).await,
        BenchMode::Get => run_get(target, load, &args).await,
    };
    let report = Report {
        setup: setup(&args, &report),
        ..report
    };
    if args.connect.json {
        say!("{}", report.to_json());
    } else {
        say!("{}", report.to_text());
    }
    Ok(u8::from(report.has_errors()))
}

/// What the report says about the run before its figures.
fn setup(args: &BenchArgs, report: &Report) -> Vec<(&'static str, Value)> {
    let mut setup: Vec<(&'static str, Value)> = vec![
        ("addresses", args.connect.addrs.clone().into()),
        ("connections_per_address", args.connections.into()),
        ("concurrency", args.concurrency.into()),
        (
            "loop",
            match args.rate {
                Some(_) => "open",
                None => "closed",
            }
            .into(),
        ),
    ];
    if let Some(rate) = args.rate {
        setup.push(("rate", rate.into()));
    }
    setup.push(("warmup", args.warmup.into()));
    setup.extend(report.setup.iter().cloned());
    setup
}

async fn run_sync(target: Arc<Target>, load: Load) -> Report {
    let counters = Arc::new(Counters::default());
    let progress = Progress::start("sync", goal(&load), counters.clone());
    let (tally, elapsed) = load::run(load, counters, move |seq| {
        let target = target.clone();
        async move { target.submit_sync(seq).await }
    })
    .await;
    progress.finish().await;
    Report {
        tool: "dalc bench",
        mode: BenchMode::Sync.as_str(),
        setup: vec![("latency_of", "SubmitTask wait=true".into())],
        tally,
        elapsed,
        rates: Vec::new(),
    }
}

async fn run_async(target: Arc<Target>, load: Load, args: &BenchArgs) -> Report {
    let Drained {
        submitted,
        submit_elapsed,
        ended,
        completion_elapsed,
        ..
    } = submit_and_drain(target, load, args, "submit").await;

    let submit_throughput = report::per_second(submitted.answered(), submit_elapsed);
    // Successes are only known at the end; refusals (expected or not) at submission. The
    // latency samples are the submissions'.
    let mut tally = Tally {
        ok: ended.ok,
        ..submitted
    };
    tally.merge(Tally {
        ok: 0,
        latencies: Vec::new(),
        ..ended
    });
    let completion_throughput = report::per_second(tally.answered(), completion_elapsed);
    Report {
        tool: "dalc bench",
        mode: BenchMode::Async.as_str(),
        setup: vec![
            ("poll_concurrency", args.poll_concurrency.into()),
            ("latency_of", "SubmitTask wait=false".into()),
        ],
        tally,
        elapsed: completion_elapsed,
        rates: vec![
            ("submit_throughput", submit_throughput),
            ("completion_throughput", completion_throughput),
        ],
    }
}

/// Submits `load.total` tasks without waiting and waits until they are all over, unmeasured;
/// then measures `GetTask` (no wait) on the ones that ended as they should, round-robin, under
/// `load` (its rate and duration apply to the reads only). A task that did not end as it
/// should is an error named `prepare: KIND`; the reads are checked like any answer.
async fn run_get(target: Arc<Target>, load: Load, args: &BenchArgs) -> Report {
    let prepare = Load {
        duration: None,
        rate: None,
        ..load
    };
    let drained = submit_and_drain(target.clone(), prepare, args, "prepare").await;
    let mut tally = Tally::default();
    for (kind, count) in drained
        .submitted
        .errors
        .into_iter()
        .chain(drained.ended.errors)
    {
        *tally.errors.entry(format!("prepare: {kind}")).or_default() += count;
    }
    let tasks = Arc::new(drained.over);
    let setup = vec![
        ("tasks", (tasks.len() as u64).into()),
        ("poll_concurrency", args.poll_concurrency.into()),
        ("latency_of", "GetTask wait=false".into()),
    ];
    if tasks.is_empty() {
        tally.record(Outcome::Error("no task to get".into()), Duration::ZERO);
        return Report {
            tool: "dalc bench",
            mode: BenchMode::Get.as_str(),
            setup,
            tally,
            elapsed: Duration::ZERO,
            rates: Vec::new(),
        };
    }

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("get", goal(&load), counters.clone());
    let (got, elapsed) = load::run(load, counters, move |seq| {
        let (target, tasks) = (target.clone(), tasks.clone());
        async move {
            let task = &tasks[(seq % tasks.len() as u64) as usize];
            target.get(seq, task).await
        }
    })
    .await;
    progress.finish().await;
    tally.merge(got);
    Report {
        tool: "dalc bench",
        mode: BenchMode::Get.as_str(),
        setup,
        tally,
        elapsed,
        rates: Vec::new(),
    }
}

/// What [`submit_and_drain`] saw.
struct Drained {
    /// The submissions' outcomes and latencies (successes: accepted).
    submitted: Tally,
    /// From the first submission to the last answer to one.
    submit_elapsed: Duration,
    /// The accepted tasks' ends (no latencies).
    ended: Tally,
    /// From the first submission to the last task seen over (at least `submit_elapsed`).
    completion_elapsed: Duration,
    /// The tasks that ended as they should, in the order they were seen over.
    over: Vec<Pending>,
}

/// Submits every task of `load` without waiting, then long-polls each accepted one until it is
/// over (or `--drain-timeout` passes).
async fn submit_and_drain(
    target: Arc<Target>,
    load: Load,
    args: &BenchArgs,
    label: &'static str,
) -> Drained {
    let started = Instant::now();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(label, goal(&load), counters.clone());
    let (submitted, submit_elapsed) = {
        let (target, accepted) = (target.clone(), accepted.clone());
        load::run(load, counters, move |seq| {
            let (target, accepted) = (target.clone(), accepted.clone());
            async move { target.submit_async(seq, &accepted).await }
        })
        .await
    };
    progress.finish().await;

    let pending: VecDeque<Pending> = std::mem::take(&mut *lock(&accepted)).into();
    let drain_until = Instant::now() + args.drain_timeout.0;
    let (ended, last_end, over) =
        poll_all(target, pending, args.poll_concurrency, drain_until).await;
    let completion_elapsed = last_end
        .map(|at| at.saturating_duration_since(started))
        .unwrap_or(submit_elapsed)
        .max(submit_elapsed);
    Drained {
        submitted,
        submit_elapsed,
        ended,
        completion_elapsed,
        over,
    }
}

/// Long-polls every accepted task until it is over, `concurrency` at a time, in submission
/// order (roughly the order they end in). Returns their outcomes, when the last one was seen
/// over, and the tasks that ended as they should.
async fn poll_all(
    target: Arc<Target>,
    pending: VecDeque<Pending>,
    concurrency: u32,
    drain_until: Instant,
) -> (Tally, Option<Instant>, Vec<Pending>) {
    let total = pending.len() as u64;
    let queue = Arc::new(Mutex::new(pending));
    let counters = Arc::new(Counters::default());
    let progress = Progress::start("poll", Goal::Calls(total), counters.clone());
    let mut pollers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (target, queue, counters) = (target.clone(), queue.clone(), counters.clone());
        pollers.spawn(async move {
            let mut tally = Tally::default();
            let mut last_end = None;
            let mut over = Vec::new();
            loop {
                // A poller leaves when the queue is empty; one that puts a task back always
                // comes round to take it again, so no task is left behind.
                let Some(mut task) = lock(&queue).pop_front() else {
                    break;
                };
                let outcome = if Instant::now() >= drain_until {
                    // Out of time: the task counts as what it was last seen as.
                    Outcome::Error(task.last_seen.as_str_name().into())
                } else {
                    match target.poll(&task).await {
                        Ok(status) if !is_terminal(status.status()) => {
                            task.last_seen = status.status();
                            lock(&queue).push_back(task);
                            continue;
                        }
                        Ok(ended) => {
                            last_end = Some(Instant::now());
                            task.last_seen = ended.status();
                            task.expected(&target.mix).check_task(&ended)
                        }
                        Err(outcome) => outcome,
                    }
                };
                counters.count(&outcome);
                if !matches!(outcome, Outcome::Error(_)) {
                    over.push(task);
                }
                tally.record(outcome, Duration::ZERO);
            }
            (tally, last_end, over)
        });
    }
    let mut tally = Tally::default();
    let mut last_end: Option<Instant> = None;
    let mut over = Vec::new();
    while let Some(joined) = pollers.join_next().await {
        match joined {
            Ok((part, end, part_over)) => {
                tally.merge(part);
                last_end = last_end.max(end);
                over.extend(part_over);
            }
            Err(err) => tally.record(
                Outcome::Error(format!("poller died: {err}")),
                Duration::ZERO,
            ),
        }
    }
    progress.finish().await;
    (tally, last_end, over)
}

fn goal(load: &Load) -> Goal {
    match load.duration {
        Some(limit) => Goal::Time(limit),
        None => Goal::Calls(load.total),
    }
}

/// The pollers' queue and the accepted list are only held for a push or a pop; a poisoned lock
/// (a panicking holder) still holds consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An accepted asynchronous task, waiting to be seen over (or seen over, by `get`).
#[derive(Debug)]
struct Pending {
    seq: u64,
    id: String,
    last_seen: TaskStatus,
}

impl Pending {
    fn expected<'m>(&self, mix: &'m Mix) -> &'m Expected {
        &mix.pick(self.seq).1
    }
}

/// The gateways and what to send them.
#[derive(Debug)]
struct Target {
    clients: Vec<DalcClient>,
    mix: Mix,
    deadline: Duration,
}

impl Target {
    /// Round-robin over the connections, in runs of one full mix, so that with several
    /// addresses and several expressions every address gets every expression.
    fn client(&self, seq: u64) -> DalcClient {
        let turn = seq / self.mix.len() as u64;
        self.clients[(turn % self.clients.len() as u64) as usize].clone()
    }

    fn wait(&self) -> prost_types::Duration {
        let wait = self
            .deadline
            .saturating_sub(WAIT_MARGIN)
            .max(Duration::from_secs(1));
        dalc_proto::duration_of(wait)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        request
    }

    async fn submit_sync(&self, seq: u64) -> Outcome {
        let (expression, expected) = self.mix.pick(seq);
        let request = self.request(SubmitTaskRequest {
            expression: expression.clone(),
            wait: true,
            // Also the task's deadline: fine here, the call waits no longer than that anyway.
            timeout: Some(self.wait()),
            ..Default::default()
        });
        match self.client(seq).submit_task(request).await {
            Ok(response) => match response.into_inner().task {
                Some(task) => expected.check_task(&task),
                None => Outcome::Error("no task in the answer".into()),
            },
            Err(status) => expected.check_refusal(&status),
        }
    }

    async fn submit_async(&self, seq: u64, accepted: &Mutex<Vec<Pending>>) -> Outcome {
        let (expression, expected) = self.mix.pick(seq);
        let request = self.request(SubmitTaskRequest {
            expression: expression.clone(),
            wait: false,
            // The server's default task deadline: a long backlog must not expire on its own.
            timeout: None,
            ..Default::default()
        });
        match self.client(seq).submit_task(request).await {
            Ok(response) => match response.into_inner().task {
                Some(task) => {
                    let outcome = expected.check_accepted();
                    if outcome == Outcome::Ok {
                        let last_seen = task.status();
                        lock(accepted).push(Pending {
                            seq,
                            id: task.id,
                            last_seen,
                        });
                    }
                    outcome
                }
                None => Outcome::Error("no task in the answer".into()),
            },
            Err(status) => expected.check_refusal(&status),
        }
    }

    /// One `GetTask` without waiting, call `seq` of the reads, checked: the task must be over
    /// with its expected answer.
    async fn get(&self, seq: u64, task: &Pending) -> Outcome {
        let request = self.request(GetTaskRequest {
            id: task.id.clone(),
            wait: false,
            timeout: None,
        });
        match self.client(seq).get_task(request).await {
            Ok(response) => match response.into_inner().task {
                Some(got) => task.expected(&self.mix).check_task(&got),
                None => Outcome::Error("no task in the answer".into()),
            },
            Err(status) => Outcome::Error(code_name(status.code())),
        }
    }

    /// One long poll: the task as it stands when it ends or the wait does.
    async fn poll(&self, task: &Pending) -> Result<dalc_proto::v1::Task, Outcome> {
        let request = self.request(GetTaskRequest {
            id: task.id.clone(),
            wait: true,
            timeout: Some(self.wait()),
        });
        match self.client(task.seq).get_task(request).await {
            Ok(response) => response
                .into_inner()
                .task
                .ok_or_else(|| Outcome::Error("no task in the answer".into())),
            Err(status) => Err(Outcome::Error(code_name(status.code()))),
        }
    }
}

/// `per_address` balanced clients, each with its own HTTP/2 connection to every gateway (every
/// address of a `dns:///` name), made up front (a wrong address fails the run at once rather
/// than as thousands of errors). Each goes round-robin over the gateways that answer their
/// health checks, so a gateway that dies mid-run stops getting calls until it recovers, as for
/// every `dalc` client.
async fn connect_all(connect: &ConnectArgs, per_address: u32) -> Result<Vec<DalcClient>> {
    let options = crate::client::client_options(connect);
    // At once: each waits for its first round of health checks.
    let clients = (0..per_address).map(|_| dalc_client::connect(&options));
    Ok(futures::future::try_join_all(clients).await?)
}
