//! The floor under dalc's round trip: the least a request/reply over RabbitMQ costs with the
//! same guarantees dalc's task path asks of the broker, and nothing else (no database, no
//! gRPC, no evaluation). `benches/compare.sh` sets dalc's figures against it.
//!
//! One process, two connections:
//! * echo side: `--workers` consumers on a durable request queue, manual acks, `--prefetch`
//!   unacked each; for every request they publish the body back to its `reply_to` with its
//!   `correlation_id`, wait for the broker's confirm, then ack the request;
//! * client side: a closed loop (or `--rate`, open) of `--concurrency` calls, each publishing a
//!   persistent message (delivery mode 2) to the request queue, waiting for its confirm, then
//!   for the reply on the client's own reply queue, routed to it by correlation id. A reply
//!   whose body differs from the request is a `wrong result`.
//!
//! With `--task-messages`, each request carries what a dalc task message must (see
//! `task_message`): the floor of the same round trip once the contract's message features are
//! paid for.
//!
//! With `--database URL` (PostgreSQL), each call also pays for the two durable writes that
//! dalc's guarantees put on every task, group committed as dalc's writers do (see `durable`):
//! the client side commits the request's row before publishing it, and the echo side commits
//! its result before replying. No evaluation, no gRPC, no state machine: the floor of any
//! implementation of dalc's contract on the same broker and database.
//!
//! With `--serve ADDR`, it loads nothing itself: it serves dalc's gRPC API on ADDR, where each
//! SubmitTask that waits (the only call it answers) makes one round trip with the call's
//! expression, evaluated on the echo side, and returns the result as a task; `dalc bench`
//! loads it as it loads a gateway. With `--database` too, that is the floor of dalc's whole
//! sync path (a gRPC call in, two durable writes, a request and a reply over the broker), in
//! one process with no state machine, leases, events or retries. It serves until SIGINT or
//! SIGTERM, then cleans up as a run does.
//!
//! It prints the report `dalc bench` prints, in the same JSON shape with `--json`:
//!
//! ```sh
//! cargo run --release -p dalc-cli --example rpc_floor -- --concurrency 64 --total 20000 --json
//! ```
//!
//! Queue names are unique per run and both queues are gone at the end (the request queue is
//! deleted, the exclusive reply queue goes with its connection; a killed run's request queue
//! expires after ten idle minutes). So is the table of a run with `--database`
//! (`rpc_floor_<run id>`: dropped at the end; a killed run's stays).

// Shared with `dalc bench`, so that both tools load and report alike; not every item is used
// by this example.
#[allow(dead_code)]
#[path = "../src/duration.rs"]
mod duration;
#[allow(dead_code)]
#[path = "../src/bench/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../src/bench/report.rs"]
mod report;

use duration::parse_duration;
use std::{
    collections::HashMap,
    future::Future,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::oneshot,
};

use crate::{
    load::{Counters, Load},
    report::{Outcome, Report, Tally, WRONG_RESULT},
};

/// A broker-only request/reply echo: the floor for dalc's round trip.
#[derive(Debug, Parser)]
#[command(name = "rpc_floor")]
struct Args {
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Calls in flight at once (with --rate: at most).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Calls to measure; --duration wins when both are given.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    total: u64,
    /// Measure for this long instead of a count: 500ms, 30s, 2m (a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Open loop: calls per second; unset: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Calls made first and not counted.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Echo consumers (dalc: the worker processes).
    #[arg(long, default_value_t = 2)]
    workers: u16,
    /// Unacked requests per echo consumer (dalc: a worker's --concurrency).
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// The request body (dalc: the expression).
    #[arg(long, default_value = "1 + 1")]
    payload: String,
    /// How long a call may take before it counts as `DeadlineExceeded`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    deadline: Duration,
    /// Send each request as a gateway sends a sync call's task: on a priority queue with a
    /// dead-letter target, with the interactive priority, a per-message TTL, mandatory, a
    /// message id, a content type and a header table.
    #[arg(long)]
    task_messages: bool,
    /// Also commit each request's row to this PostgreSQL database before publishing it, and
    /// its result before replying: dalc's two durable writes per task, group committed.
    #[arg(long)]
    database: Option<String>,
    /// Serve dalc's SubmitTask (sync only) on this address instead of loading; each call is
    /// one round trip, its expression evaluated by the echo side.
    #[arg(long)]
    serve: Option<std::net::SocketAddr>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What a dalc task message has that a bare request does not (dalc_queue's `publish_task` and
/// its task queue's arguments), each paid for by the broker on every message: as a gateway
/// sends a sync call's task in `benches/compare.sh`, where no trace is exported and no caller
/// sends one (so its header table is empty).
mod task_message {
    use std::time::Duration;

    use dalc_domain::Priority;
    use lapin::{
        BasicProperties,
        types::{AMQPValue, FieldTable, ShortString},
    };

    /// A priority queue whose expired messages are dead-lettered.
    pub(crate) fn queue_arguments(queue: &str, args: &mut FieldTable) {
        args.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(Priority::MAX),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(format!("{queue}.dead").into()),
        );
    }

    /// A request with a content type, a message id, a header table, the priority of a call
    /// that waits, and a TTL (a task's comes from its call's deadline).
    pub(crate) fn request(
        properties: BasicProperties,
        id: &ShortString,
        ttl: Duration,
    ) -> BasicProperties {
        properties
            .with_content_type("application/json".into())
            .with_message_id(id.clone())
            .with_headers(FieldTable::default())
            .with_priority(Priority::for_submission(Priority::default(), true).get())
            .with_expiration(ttl.as_millis().to_string().into())
    }

    /// A reply with a content type.
    pub(crate) fn reply(properties: BasicProperties) -> BasicProperties {
        properties.with_content_type("application/json".into())
    }
}

/// The two durable writes dalc's guarantees put on every task, made as dalc's group-commit
/// writers make them (dalc_storage's `GroupCommit`: one writer per kind of write and process,
/// on a connection of its own, writing everything queued so far, up to 256 rows, in one
/// statement and one commit): a request's row before the request is published, so that an
/// accepted task is never lost; its result before the reply, so that an answer is never
/// forgotten. The rows are narrower than dalc's and have no other index than their key.
mod durable {
    use anyhow::{Context, Result};
    use sea_orm::sqlx::{
        self, AssertSqlSafe, ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions,
    };
    use tokio::sync::{mpsc, oneshot};

    /// The most rows one statement writes: dalc_storage's `MAX_BATCH`.
    const MOST_PER_STATEMENT: usize = 256;

    /// A row to write, and who waits for its commit.
    type Job = (i64, String, oneshot::Sender<bool>);

    /// The run's table.
    pub(crate) struct Table {
        url: String,
        name: String,
    }

    impl Table {
        pub(crate) async fn create(url: &str, run_id: &str) -> Result<Table> {
            let name = format!("rpc_floor_{run_id}");
            let mut connection = PgConnection::connect(url)
                .await
                .context("cannot connect to PostgreSQL")?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {name} (id bigint PRIMARY KEY, request text NOT NULL, \
                 result text, created_at timestamptz NOT NULL DEFAULT now(), \
                 finished_at timestamptz)"
            )))
            .execute(&mut connection)
            .await
            .context("create the floor's table")?;
            let _ = connection.close().await;
            Ok(Table {
                url: url.to_owned(),
                name,
            })
        }

        /// A writer of requests' rows.
        pub(crate) async fn inserts(&self) -> Result<Writer> {
            let name = &self.name;
            Writer::start(
                &self.url,
                format!(
                    "INSERT INTO {name} (id, request) \
                     SELECT * FROM UNNEST($1::bigint[], $2::text[])"
                ),
            )
            .await
        }

        /// A writer of results.
        pub(crate) async fn results(&self) -> Result<Writer> {
            let name = &self.name;
            Writer::start(
                &self.url,
                format!(
                    "UPDATE {name} SET result = done.result, finished_at = now() \
                     FROM UNNEST($1::bigint[], $2::text[]) AS done(id, result) \
                     WHERE {name}.id = done.id"
                ),
            )
            .await
        }

        pub(crate) async fn drop_table(self) {
            if let Ok(mut connection) = PgConnection::connect(&self.url).await {
                let drop = format!("DROP TABLE IF EXISTS {}", self.name);
                let _ = sqlx::query(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await;
                let _ = connection.close().await;
            }
        }
    }

    /// One group-commit writer: a task with its own connection, writing with one statement
    /// that takes the ids and texts as two arrays.
    #[derive(Clone)]
    pub(crate) struct Writer {
        jobs: mpsc::UnboundedSender<Job>,
    }

    impl Writer {
        async fn start(url: &str, statement: String) -> Result<Writer> {
            // The session settings of dalc's connections (dalc_storage's `TaskStore::connect`):
            // above all, a plan made while the table was small must not scan it once it grew.
            let options = url
                .parse::<PgConnectOptions>()
                .context("a PostgreSQL URL")?
                .options([
                    ("enable_seqscan", "off"),
                    ("plan_cache_mode", "force_generic_plan"),
                    ("jit", "off"),
                ]);
            let connection = options
                .connect()
                .await
                .context("cannot connect to PostgreSQL")?;
            let (jobs, queue) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(connection, statement, queue));
            Ok(Writer { jobs })
        }

        /// Whether the row was committed.
        pub(crate) async fn write(&self, id: i64, text: String) -> bool {
            let (done, committed) = oneshot::channel();
            self.jobs.send((id, text, done)).is_ok() && committed.await.unwrap_or(false)
        }
    }

    async fn write_groups(
        mut connection: PgConnection,
        statement: String,
        mut queue: mpsc::UnboundedReceiver<Job>,
    ) {
        let mut group = Vec::with_capacity(MOST_PER_STATEMENT);
        while queue.recv_many(&mut group, MOST_PER_STATEMENT).await > 0 {
            let (ids, texts): (Vec<i64>, Vec<String>) = group
                .iter_mut()
                .map(|(id, text, _)| (*id, std::mem::take(text)))
                .unzip();
            let rows = group.len() as u64;
            let written = match sqlx::query(AssertSqlSafe(statement.as_str()))
                .bind(ids)
                .bind(texts)
                .execute(&mut connection)
                .await
            {
                // Every row written: a result whose row is missing is not a round trip.
                Ok(done) if done.rows_affected() == rows => true,
                Ok(done) => {
                    eprintln!(
                        "rpc_floor: a group commit wrote {} of {rows} rows",
                        done.rows_affected()
                    );
                    false
                }
                Err(err) => {
                    eprintln!("rpc_floor: a group commit failed: {err}");
                    false
                }
            };
            for (_, _, done) in group.drain(..) {
                let _ = done.send(written);
            }
        }
    }
}

/// `--serve`: dalc's gRPC API in front of the floor's round trip.
mod front {
    use std::{pin::Pin, sync::Arc};

    use dalc_proto::v1::{
        CancelTaskRequest, CancelTaskResponse, GetStatsRequest, GetStatsResponse, GetTaskRequest,
        GetTaskResponse, ListTasksRequest, ListTasksResponse, SubmitBatchRequest,
        SubmitBatchResponse, SubmitTaskRequest, SubmitTaskResponse, Task, TaskStatus,
        WatchTaskRequest, WatchTaskResponse,
        task_service_server::{TaskService, TaskServiceServer},
    };
    use futures::Stream;
    use tokio::net::TcpListener;
    use tonic::{Request, Response, Status, transport::server::TcpIncoming};

    use crate::{Client, Reply};

    type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    struct Front {
        client: Arc<Client>,
    }

    /// Serves on `listener` until `stop` resolves. Prints the address it listens on first.
    pub(crate) async fn serve(
        client: Arc<Client>,
        listener: TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        println!("rpc_floor serving on {}", listener.local_addr()?);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TaskServiceServer<Front>>().await;
        // As a gateway's connections: Nagle's algorithm off (see dalc_gateway's `no_delay`).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(TaskServiceServer::new(Front { client }))
            .serve_with_incoming_shutdown(incoming, stop)
            .await?;
        Ok(())
    }

    fn only_sync_submissions() -> Status {
        Status::unimplemented("the floor answers only SubmitTask with wait")
    }

    #[tonic::async_trait]
    impl TaskService for Front {
        async fn submit_task(
            &self,
            request: Request<SubmitTaskRequest>,
        ) -> Result<Response<SubmitTaskResponse>, Status> {
            let request = request.into_inner();
            if !request.wait {
                return Err(only_sync_submissions());
            }
            let (status, result, error) = match self.client.call(request.expression.clone()).await {
                Reply::Value(result) => (TaskStatus::Succeeded, result, String::new()),
                Reply::Failed(reason) => (TaskStatus::Failed, String::new(), reason),
                Reply::Lost(reason) => return Err(Status::unavailable(reason)),
            };
            Ok(Response::new(SubmitTaskResponse {
                task: Some(Task {
                    expression: request.expression,
                    status: status.into(),
                    result,
                    error,
                    ..Task::default()
                }),
            }))
        }

        async fn get_task(
            &self,
            _: Request<GetTaskRequest>,
        ) -> Result<Response<GetTaskResponse>, Status> {
            Err(only_sync_submissions())
        }

        type WatchTaskStream = Streamed<WatchTaskResponse>;

        async fn watch_task(
            &self,
            _: Request<WatchTaskRequest>,
        ) -> Result<Response<Self::WatchTaskStream>, Status> {
            Err(only_sync_submissions())
        }

        async fn list_tasks(
            &self,
            _: Request<ListTasksRequest>,
        ) -> Result<Response<ListTasksResponse>, Status> {
            Err(only_sync_submissions())
        }

        async fn cancel_task(
            &self,
            _: Request<CancelTaskRequest>,
        ) -> Result<Response<CancelTaskResponse>, Status> {
            Err(only_sync_submissions())
        }

        type SubmitBatchStream = Streamed<SubmitBatchResponse>;

        async fn submit_batch(
            &self,
            _: Request<SubmitBatchRequest>,
        ) -> Result<Response<Self::SubmitBatchStream>, Status> {
            Err(only_sync_submissions())
        }

        async fn get_stats(
            &self,
            _: Request<GetStatsRequest>,
        ) -> Result<Response<GetStatsResponse>, Status> {
            Err(only_sync_submissions())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(report)) => {
            if report.json {
                println!("{}", report.report.to_json());
            } else {
                println!("{}", report.report.to_text());
            }
            ExitCode::from(u8::from(report.report.has_errors()))
        }
        Err(err) => {
            eprintln!("rpc_floor: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Finished {
    report: Report,
    json: bool,
}

/// Runs the load (or serves, with `--serve`), then cleans up; the report of a load.
async fn run(args: Args) -> Result<Option<Finished>> {
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of calls per second");
    }
    // Before anything is made: an address that cannot be bound fails the run before a queue
    // or a table exists, and a signal during the set-up still ends it through its clean-up.
    let serving = match args.serve {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some((listener, stop_signal()?))
        }
        None => None,
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let requests = format!("rpc-floor-{run_id}.requests");
    let replies = format!("rpc-floor-{run_id}.replies");

    let echo_side = connect(&args.amqp_url, "rpc_floor echo").await?;
    let client_side = connect(&args.amqp_url, "rpc_floor client").await?;

    let setup = echo_side.create_channel().await?;
    let mut queue_args = FieldTable::default();
    // A run killed before its clean-up leaves no queue for long.
    queue_args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    if args.task_messages {
        task_message::queue_arguments(&requests, &mut queue_args);
    }
    setup
        .queue_declare(
            requests.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        )
        .await
        .context("declare the request queue")?;
    let table = match &args.database {
        Some(url) => match durable::Table::create(url, &run_id).await {
            Ok(table) => Some(table),
            Err(err) => {
                let _ = setup
                    .queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
                    .await;
                return Err(err);
            }
        },
        None => None,
    };

    let measured = drive(
        &args,
        &echo_side,
        &client_side,
        &requests,
        replies,
        table.as_ref(),
        serving,
    )
    .await;

    // Whatever happened: deleting the queue cancels the echo consumers; closing the client's
    // connection removes its exclusive reply queue.
    let _ = setup
        .queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = client_side.close(200, "done".into()).await;
    let _ = echo_side.close(200, "done".into()).await;
    if let Some(table) = table {
        table.drop_table().await;
    }
    let measured = measured?;
    let Some((tally, elapsed)) = measured else {
        return Ok(None);
    };

    let mut setup: Vec<(&'static str, serde_json::Value)> = vec![
        ("concurrency", args.concurrency.into()),
        (
            "loop",
            if args.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
        ),
    ];
    if let Some(rate) = args.rate {
        setup.push(("rate", rate.into()));
    }
    setup.extend([
        ("warmup", args.warmup.into()),
        ("workers", args.workers.into()),
        ("prefetch", args.prefetch.into()),
        ("task_messages", args.task_messages.into()),
        ("database", args.database.is_some().into()),
        (
            "latency_of",
            if args.database.is_some() {
                "insert committed, persistent publish + confirm, echo with its result committed \
                 and a confirm, reply"
            } else {
                "persistent publish + confirm, echo with confirm, reply"
            }
            .into(),
        ),
    ]);
    Ok(Some(Finished {
        report: Report {
            tool: "rpc_floor",
            mode: "sync",
            setup,
            tally,
            elapsed,
            rates: Vec::new(),
        },
        json: args.json,
    }))
}

/// What a run does between its set-up and its clean-up: the echo consumers and the calling
/// side, then the load (its figures) or, with `serving`, the service until it is stopped.
async fn drive(
    args: &Args,
    echo_side: &Connection,
    client_side: &Connection,
    requests: &str,
    replies: String,
    table: Option<&durable::Table>,
    serving: Option<(TcpListener, impl Future<Output = ()>)>,
) -> Result<Option<(Tally, Duration)>> {
    for worker in 0..args.workers {
        let channel = echo_side.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(args.prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                requests.into(),
                format!("echo-{worker}").into(),
                // Manual acks: a request leaves the queue only once its reply is confirmed.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // A writer per consumer, as each dalc worker process has its own.
        let results = match table {
            Some(table) => Some(table.results().await?),
            None => None,
        };
        let echoes = Echo {
            task_messages: args.task_messages,
            evaluate: serving.is_some(),
            results,
        };
        tokio::spawn(echo(channel, consumer, echoes));
    }

    let inserts = match table {
        Some(table) => Some(table.inserts().await?),
        None => None,
    };
    let client =
        Arc::new(Client::start(client_side, requests.to_owned(), replies, inserts, args).await?);
    match serving {
        Some((listener, stop)) => {
            front::serve(client, listener, stop).await?;
            Ok(None)
        }
        None => Ok(Some(measure(&client, args).await)),
    }
}

/// The warm-up, then the measured load.
async fn measure(client: &Arc<Client>, args: &Args) -> (Tally, Duration) {
    let checked = |load| {
        let client = client.clone();
        load::run(load, Arc::new(Counters::default()), move |_| {
            let client = client.clone();
            async move { client.call_checked().await }
        })
    };
    if args.warmup > 0 {
        checked(Load {
            total: args.warmup,
            duration: None,
            concurrency: args.concurrency,
            rate: None,
        })
        .await;
    }
    checked(Load {
        total: args.total,
        duration: args.duration,
        concurrency: args.concurrency,
        rate: args.rate,
    })
    .await
}

/// SIGINT or SIGTERM, caught from the moment this returns.
fn stop_signal() -> Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

async fn connect(url: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ for the {name} side"))
}

/// One echo consumer. Each request is answered in a task of its own, so a consumer has up to
/// its prefetch in progress at once, as a dalc worker does.
/// What an echo consumer does with each request.
#[derive(Clone)]
struct Echo {
    /// Replies as a worker replies to a task (see `task_message`).
    task_messages: bool,
    /// Replies with the request evaluated (`--serve`) rather than the request itself.
    evaluate: bool,
    /// With --database: where each result is committed before its reply.
    results: Option<durable::Writer>,
}

async fn echo(channel: Channel, mut consumer: Consumer, echo: Echo) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let channel = channel.clone();
        let echo = echo.clone();
        tokio::spawn(async move {
            if let Err(err) = echo.answer(&channel, delivery).await {
                eprintln!("rpc_floor: echo failed: {err:#}");
            }
        });
    }
}

impl Echo {
    async fn answer(&self, channel: &Channel, delivery: Delivery) -> Result<()> {
        let request = &delivery.properties;
        let body = if self.evaluate {
            Reply::evaluate(&delivery.data)
        } else {
            delivery.data.clone()
        };
        if let Some(results) = &self.results {
            let id = request
                .correlation_id()
                .as_ref()
                .and_then(|id| id.as_str().parse::<i64>().ok());
            let result = String::from_utf8_lossy(&body).into_owned();
            let committed = match id {
                Some(id) => results.write(id, result).await,
                None => false,
            };
            if !committed {
                // Dropped, not requeued: its call counts as an error once its deadline passes.
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                bail!("the result of {id:?} was not committed");
            }
        }
        if let Some(reply_to) = request.reply_to() {
            let mut properties = BasicProperties::default()
                // Transient, as dalc's replies: the request is the durable part.
                .with_delivery_mode(1);
            if self.task_messages {
                properties = task_message::reply(properties);
            }
            if let Some(id) = request.correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            channel
                .basic_publish(
                    ShortString::default(),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

/// The calling side: one publishing channel with confirms, one reply queue, and the calls
/// waiting on it by correlation id.
struct Client {
    publish: Channel,
    requests: ShortString,
    reply_to: ShortString,
    waiters: Waiters,
    next_id: AtomicU64,
    payload: Vec<u8>,
    deadline: Duration,
    task_messages: bool,
    /// With --database: where each request's row is committed before it is published.
    inserts: Option<durable::Writer>,
}

impl Client {
    async fn start(
        connection: &Connection,
        requests: String,
        replies: String,
        inserts: Option<durable::Writer>,
        args: &Args,
    ) -> Result<Client> {
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = connection.create_channel().await?;
        consume
            .queue_declare(
                replies.as_str().into(),
                // Exclusive: the queue lives as long as this connection.
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declare the reply queue")?;
        let consumer = consume
            .basic_consume(
                replies.as_str().into(),
                "replies".into(),
                // Auto-ack: a lost reply would only time its call out.
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiters = Waiters::default();
        tokio::spawn(route_replies(consume, consumer, waiters.clone()));
        Ok(Client {
            publish,
            requests: requests.into(),
            reply_to: replies.into(),
            waiters,
            next_id: AtomicU64::new(0),
            payload: args.payload.clone().into_bytes(),
            deadline: args.deadline,
            task_messages: args.task_messages,
            inserts,
        })
    }

    /// One checked round trip of the load's payload: its echo must come back unchanged.
    async fn call_checked(&self) -> Outcome {
        match self.round_trip(self.payload.clone()).await {
            Ok(body) if body == self.payload => Outcome::Ok,
            Ok(_) => Outcome::Error(WRONG_RESULT.into()),
            Err(error) => Outcome::Error(error.into()),
        }
    }

    /// One round trip of an expression that the echo side evaluates (`--serve`).
    async fn call(&self, expression: String) -> Reply {
        match self.round_trip(expression.into_bytes()).await {
            Ok(body) => Reply::decode(&body),
            Err(error) => Reply::Lost(error),
        }
    }

    /// The reply's body, or why there was none, within the deadline.
    async fn round_trip(&self, payload: Vec<u8>) -> Result<Vec<u8>, &'static str> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, reply) = oneshot::channel();
        // Registered before publishing: the reply can beat the confirm back.
        lock(&self.waiters).insert(id, sender);
        let answer = tokio::time::timeout(self.deadline, self.publish_and_wait(id, payload, reply))
            .await
            .unwrap_or(Err("DeadlineExceeded"));
        lock(&self.waiters).remove(&id);
        answer
    }

    async fn publish_and_wait(
        &self,
        id: u64,
        payload: Vec<u8>,
        reply: oneshot::Receiver<Vec<u8>>,
    ) -> Result<Vec<u8>, &'static str> {
        if let Some(inserts) = &self.inserts {
            let request = String::from_utf8_lossy(&payload).into_owned();
            let committed = match i64::try_from(id) {
                Ok(id) => inserts.write(id, request).await,
                Err(_) => false,
            };
            if !committed {
                return Err("insert failed");
            }
        }
        let id: ShortString = id.to_string().into();
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_reply_to(self.reply_to.clone())
            .with_correlation_id(id.clone());
        let mut options = BasicPublishOptions::default();
        if self.task_messages {
            properties = task_message::request(properties, &id, self.deadline);
            // As every task is published: a missing queue must not swallow it.
            options.mandatory = true;
        }
        let confirmed = self
            .publish
            .basic_publish(
                ShortString::default(),
                self.requests.clone(),
                options,
                &payload,
                properties,
            )
            .await
            .map_err(|_| "publish failed")?
            .await
            .map_err(|_| "publish failed")?;
        if confirmed.is_nack() {
            return Err("nack");
        }
        reply.await.map_err(|_| "reply lost")
    }
}

/// What the echo side answers an expression with (`--serve`): its value, or why it has none.
enum Reply {
    Value(String),
    Failed(String),
    /// No answer: the round trip failed.
    Lost(&'static str),
}

impl Reply {
    const VALUE: u8 = b'=';
    const FAILED: u8 = b'!';

    fn evaluate(expression: &[u8]) -> Vec<u8> {
        let evaluated = std::str::from_utf8(expression)
            .map_err(|_| "the expression is not UTF-8".to_owned())
            .and_then(|expression| {
                dalc_calc::evaluate(expression, &dalc_calc::Limits::default())
                    .map_err(|err| err.to_string())
            });
        let (mark, text) = match evaluated {
            Ok(value) => (Self::VALUE, value.to_string()),
            Err(reason) => (Self::FAILED, reason),
        };
        let mut body = vec![mark];
        body.extend_from_slice(text.as_bytes());
        body
    }

    fn decode(body: &[u8]) -> Reply {
        let text = |rest: &[u8]| String::from_utf8_lossy(rest).into_owned();
        match body.split_first() {
            Some((&Self::VALUE, rest)) => Reply::Value(text(rest)),
            Some((&Self::FAILED, rest)) => Reply::Failed(text(rest)),
            _ => Reply::Lost("an undecodable reply"),
        }
    }
}

/// Hands each reply to the call waiting for its correlation id. The channel is held here so it
/// stays open as long as its consumer runs.
async fn route_replies(_channel: Channel, mut consumer: Consumer, waiters: Waiters) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<u64>().ok());
        // A reply with no waiter belongs to a call that timed out: dropped.
        if let Some(waiter) = id.and_then(|id| lock(&waiters).remove(&id)) {
            let _ = waiter.send(delivery.data);
        }
    }
}

/// Held only for an insert or a remove; a poisoned map is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
