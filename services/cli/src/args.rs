//! Command-line interface. Every option is a flag with a `DALC_*` environment variable and a
//! default; `dalc <command> --help` lists them.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use dalc_gateway::GatewayConfig;
use dalc_queue::amqp::{AmqpConfig, QueueType};
use dalc_storage::StoreOptions;
use dalc_telemetry::LogFormat;
use dalc_worker::WorkerConfig;

pub use crate::duration::{HumanDuration, parse_duration};

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Parser)]
#[command(
    name = "dalc",
    version,
    about = "dalc: a distributed calculator over gRPC and RabbitMQ"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway and workers in one process (SQLite and an in-process queue by default).
    Up(UpArgs),
    /// Run a gateway: the gRPC API, publishing tasks to RabbitMQ.
    Gateway(GatewayArgs),
    /// Run a worker: evaluate tasks from RabbitMQ.
    Worker(WorkerArgs),
    /// Submit an expression (waits for the result unless --no-wait).
    Submit(SubmitArgs),
    /// Show a task by id (with --wait, until it ends).
    Get(GetArgs),
    /// Follow a task: print each status as it arrives, until it ends.
    Watch(WatchArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Cancel a PENDING task.
    Cancel(CancelArgs),
    /// Per-worker figures, queue depth and tasks by status.
    Stats(StatsArgs),
    /// Make a new API key for a tenant, and the line that adds it to the API keys file.
    Keygen(KeygenArgs),
    /// Load gateways with sync or async submissions, check every answer, and report
    /// throughput, latency percentiles and errors.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub work: WorkArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// RabbitMQ URL; unset: an in-process queue.
    #[arg(long, env = "DALC_AMQP_URL")]
    pub amqp_url: Option<String>,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Worker loops to run in this process. 0: none, so tasks stay PENDING until workers of
    /// the same broker take them (or, on the in-process queue, until a restart with workers).
    #[arg(long, env = "DALC_WORKERS", default_value_t = 2)]
    pub workers: u16,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub work: WorkArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The gRPC API. Defaults come from [`GatewayConfig`]'s `DEFAULT_*` constants.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to serve gRPC on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "DALC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Unique name of this gateway; names its reply queue. Default: host name + random suffix.
    #[arg(long, env = "DALC_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// How long a sync call waits when the request sets no timeout.
    #[arg(long, env = "DALC_DEFAULT_WAIT", default_value_t = HumanDuration(GatewayConfig::DEFAULT_WAIT))]
    pub default_wait: HumanDuration,
    /// The longest any call may wait, whatever it asks for.
    #[arg(long, env = "DALC_MAX_WAIT", default_value_t = HumanDuration(GatewayConfig::DEFAULT_MAX_WAIT))]
    pub max_wait: HumanDuration,
    /// Deadline of a task whose request sets no timeout: past it, the task ends EXPIRED.
    #[arg(long, env = "DALC_TASK_TTL", default_value_t = HumanDuration(GatewayConfig::DEFAULT_TASK_TTL))]
    pub task_ttl: HumanDuration,
    /// The longest timeout (task deadline) a request may set; past it: INVALID_ARGUMENT.
    /// At most 49 days (RabbitMQ's longest message TTL).
    #[arg(long, env = "DALC_MAX_TASK_TTL", default_value_t = HumanDuration(GatewayConfig::DEFAULT_MAX_TASK_TTL), value_parser = parse_max_task_ttl)]
    pub max_task_ttl: HumanDuration,
    /// How often the recovery sweeper republishes tasks whose publish was never confirmed or
    /// whose worker vanished, expires tasks past their deadline and deletes old ones.
    #[arg(long, env = "DALC_SWEEP_INTERVAL", default_value_t = HumanDuration(GatewayConfig::DEFAULT_SWEEP_INTERVAL), value_parser = parse_positive_duration)]
    pub sweep_interval: HumanDuration,
    /// How long a new task's gateway has to confirm its publish before the sweeper
    /// republishes it.
    #[arg(long, env = "DALC_SWEEP_GRACE", default_value_t = HumanDuration(GatewayConfig::DEFAULT_SWEEP_GRACE))]
    pub sweep_grace: HumanDuration,
    /// Finished tasks are deleted this long after they ended (0 keeps them for ever).
    #[arg(long, env = "DALC_RETENTION", default_value_t = HumanDuration(GatewayConfig::DEFAULT_RETENTION))]
    pub retention: HumanDuration,
    /// On SIGTERM, how long the gateway keeps accepting calls after reporting NOT_SERVING, so
    /// load balancers stop sending before the listener closes.
    #[arg(long, env = "DALC_DRAIN_DELAY", default_value_t = HumanDuration(GatewayConfig::DEFAULT_DRAIN_DELAY))]
    pub drain_delay: HumanDuration,
    /// Address to serve the HTTP/JSON API and the web dashboard on (port 0 picks a free port;
    /// the bound address is printed); `off` disables it. Unset: 127.0.0.1:8080, or a free port
    /// (with a warning) when another process holds 8080, e.g. a second gateway on this host.
    #[arg(long, env = "DALC_HTTP_LISTEN", value_name = "ADDR|off")]
    pub http_listen: Option<String>,
    /// API keys file: one key a line as `TENANT SHA256-HEX-OF-KEY` (`dalc keygen` makes
    /// them). With it, every TaskService call needs `authorization: Bearer <key>` and sees only
    /// its tenant's tasks; without it, no authentication.
    #[arg(long, env = "DALC_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// PEM certificate (chain) to serve gRPC over TLS; needs --tls-key.
    #[arg(long, env = "DALC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DALC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The most expressions one SubmitBatch may hold.
    #[arg(long, env = "DALC_MAX_BATCH_SIZE", default_value_t = GatewayConfig::DEFAULT_MAX_BATCH_SIZE)]
    pub max_batch_size: usize,
    /// The most calls waiting at once on this gateway (sync submissions, long polls, watches,
    /// batches); past it calls are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "DALC_MAX_WAITING_CALLS", default_value_t = GatewayConfig::DEFAULT_MAX_WAITING_CALLS)]
    pub max_waiting_calls: usize,
    /// The largest gRPC message accepted or sent, in bytes (larger: RESOURCE_EXHAUSTED). At
    /// least the largest task the limits allow (20,844 with the default expression limit).
    #[arg(long, env = "DALC_MAX_MESSAGE_BYTES", default_value_t = GatewayConfig::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// TEST ONLY: abort after storing a task, before publishing it (proves the sweeper).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub fault_abort_before_publish: bool,
}

/// Task execution. Defaults come from [`WorkerConfig`]'s `DEFAULT_*` constants.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Tasks a worker holds at once (its prefetch). Expressions that take more than
    /// microseconds evaluate one per CPU core at a time.
    #[arg(long, env = "DALC_CONCURRENCY", default_value_t = WorkerConfig::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Unique name of this worker, recorded on the tasks it runs. Default: host name + random.
    #[arg(long, env = "DALC_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Attempts before a task is given up on (FAILED, dead-lettered).
    #[arg(long, env = "DALC_MAX_ATTEMPTS", default_value_t = WorkerConfig::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// How long a running attempt owns its task, renewed while its worker evaluates; a duplicate
    /// or redelivered message takes the task over only after this (its worker died). Bounds how
    /// late a dead worker's task ends.
    #[arg(long, env = "DALC_LEASE", default_value_t = HumanDuration(WorkerConfig::DEFAULT_LEASE), value_parser = parse_positive_duration)]
    pub lease: HumanDuration,
    /// TEST ONLY: evaluation panics for expressions containing this text (proves that a
    /// poison task ends).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub fault_crash_on: Option<String>,
    /// TEST ONLY: evaluation of expressions containing this text first sleeps
    /// --fault-stall-for (holds a task RUNNING).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub fault_stall_on: Option<String>,
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true, default_value = "60s")]
    pub fault_stall_for: HumanDuration,
}

/// The task database.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// postgres://user@host/db or sqlite://path?mode=rwc
    #[arg(
        long,
        env = "DALC_DATABASE_URL",
        default_value = "sqlite://dalc.db?mode=rwc"
    )]
    pub database_url: String,
    /// Do not apply database migrations at start-up.
    #[arg(long, env = "DALC_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// PostgreSQL cancels a statement that runs longer (SQLite waits this long for its lock).
    #[arg(long, env = "DALC_STATEMENT_TIMEOUT", default_value_t = HumanDuration(StoreOptions::DEFAULT_STATEMENT_TIMEOUT))]
    pub statement_timeout: HumanDuration,
}

/// RabbitMQ, for the distributed processes.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL.
    #[arg(long, env = "DALC_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Prefix of every queue and exchange name, so deployments can share a broker.
    #[arg(long, env = "DALC_QUEUE_PREFIX", default_value = "")]
    pub queue_prefix: String,
    /// Request queue type: classic (priorities) or quorum (replicated, delivery limit).
    #[arg(long, env = "DALC_QUEUE_TYPE", default_value = "classic", value_parser = parse_queue_type)]
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message before it is dead-lettered.
    #[arg(long, env = "DALC_DELIVERY_LIMIT", default_value_t = AmqpConfig::DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
    /// The most messages the dead-letter queue holds (the oldest go first); the gateways
    /// finalise and remove dead letters as they arrive.
    #[arg(long, env = "DALC_DEAD_LETTER_MAX_LENGTH", default_value_t = AmqpConfig::DEFAULT_DEAD_LETTER_MAX_LENGTH)]
    pub dead_letter_max_length: u32,
    /// The most tasks the request queue holds; past it submissions are refused with
    /// RESOURCE_EXHAUSTED (RabbitMQ: `x-max-length` with `x-overflow: reject-publish`). Give
    /// every gateway and worker the same value. Unset: no bound.
    #[arg(long, env = "DALC_MAX_QUEUE_LENGTH")]
    pub max_queue_length: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Serve Prometheus metrics on this address at /metrics (port 0 picks a free port, and the
    /// bound address is printed); off when unset, empty or `off`.
    #[arg(long, env = "DALC_METRICS_LISTEN", value_name = "ADDR|off")]
    pub metrics_listen: Option<String>,
    /// On SIGTERM, how long in-flight calls and tasks may take to finish.
    #[arg(long, env = "DALC_SHUTDOWN_GRACE", default_value_t = HumanDuration(GatewayConfig::DEFAULT_SHUTDOWN_GRACE))]
    pub shutdown_grace: HumanDuration,
    /// Longest accepted expression, in bytes of UTF-8: enforced by gateways at submit and by
    /// workers (give both the same value).
    #[arg(long, env = "DALC_MAX_EXPRESSION_BYTES", default_value_t = dalc_calc::DEFAULT_MAX_EXPRESSION_BYTES)]
    pub max_expression_bytes: usize,
    /// Log format: text or json (level: DALC_LOG or RUST_LOG, default info).
    #[arg(long, env = "DALC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How client commands reach the gateways (see the dalc-client crate).
#[derive(Clone, Args)]
pub struct ConnectArgs {
    /// Gateway address: http://HOST:PORT (plaintext), https://HOST:PORT (TLS), or
    /// dns:///HOST:PORT (every address the name resolves to; TLS when --ca-cert is given).
    /// Several, comma-separated: calls go round-robin to the healthy ones.
    #[arg(
        long = "addr",
        value_name = "URL",
        env = "DALC_ADDR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub addrs: Vec<String>,
    /// API key, sent as `authorization: Bearer KEY` (see `dalc keygen`).
    #[arg(long, env = "DALC_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM file of the CA certificate that signed the gateways' TLS certificates.
    #[arg(long, value_name = "FILE", env = "DALC_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON (the proto3 JSON mapping, one object a line) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: arguments end up in logs.
        f.debug_struct("ConnectArgs")
            .field("addrs", &self.addrs)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("json", &self.json)
            .finish()
    }
}

/// The client commands' connection, and how long a waiting call may wait.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How long to wait for the task to end (unset: the gateway's own default, 30s unless it
    /// was changed); the call's gRPC deadline is this plus a few seconds. With submit -f: how
    /// long the whole run may take (unset: 5m).
    #[arg(long)]
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The expression, e.g. "1 + 1" or "sqrt(2) * pi".
    #[arg(required_unless_present = "file")]
    pub expression: Option<String>,
    /// Submit every expression of FILE (one a line; blank lines and # comments skipped; -
    /// reads standard input) with SubmitBatch, and print the results in input order.
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with_all = ["expression", "no_wait"])]
    pub file: Option<PathBuf>,
    /// Return the PENDING task at once instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
    /// 0-9, higher runs first; 0: the server's default (sync above async).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub priority: u32,
    /// A retry with the same key returns the same task and never runs it twice. With -f: the
    /// run's key (each chunk's is KEY/cN), so the whole command can be re-run safely.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// -f: expressions per SubmitBatch call.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk_size: u32,
    /// -f: SubmitBatch calls in flight at once (spread over the gateways).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub chunks_in_flight: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task ends (or the timeout).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The task id.
    pub id: String,
    /// Stop watching after this long, showing the task as it stands (exit 0 if it is still
    /// under way); unset: until the task ends.
    #[arg(long)]
    pub timeout: Option<HumanDuration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks of this status: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED or EXPIRED
    /// (any case, TASK_STATUS_ prefix optional).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<dalc_proto::v1::TaskStatus>,
    /// The most tasks to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The task id.
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The tenant the key belongs to: 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: String,
    /// Print {"tenant", "key", "line"} as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// An expression to submit, as with --expr (kept for older scripts).
    #[arg(value_name = "EXPR")]
    pub expression: Option<String>,
    /// sync: each call is a SubmitTask that waits for the result (latency: that call).
    /// async: submit every task without waiting, then long-poll each until it ends.
    /// get: submit --total tasks and wait until all are over (not measured), then measure
    /// GetTask without waiting on those ids, round-robin, checking every answer.
    #[arg(long, value_enum, default_value_t = BenchMode::Sync)]
    pub mode: BenchMode,
    /// Tasks to measure [default: 2000]; --duration wins when both are given. get: the tasks
    /// submitted first, and the GetTask calls (unless --duration).
    #[arg(long, visible_alias = "requests", value_parser = clap::value_parser!(u64).range(1..))]
    pub total: Option<u64>,
    /// Measure for this long instead of a count, e.g. 30s.
    #[arg(long)]
    pub duration: Option<HumanDuration>,
    /// Calls in flight at once (with --rate: at most).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Open loop: start this many tasks per second whatever the answers; each latency counts
    /// from when its task was due. Unset: closed loop (the next call when one answers).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Calls made first and not counted (sync submissions, in every mode).
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// An expression to submit; repeat for a mix, used round-robin [default: "1 + 1"]. Each
    /// answer must match a local evaluation: a wrong one is an error.
    #[arg(long = "expr", value_name = "EXPR")]
    pub exprs: Vec<String>,
    /// A file of expressions to add to the mix: one per line, `#` comments, blank lines skipped.
    #[arg(long, value_name = "FILE")]
    pub expr_file: Option<PathBuf>,
    /// Gateways (--addr, as for every client command), API key and CA certificate. Calls go
    /// round-robin over the gateways (every address of a dns:/// name), one connection each.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// HTTP/2 connections to each address; calls go round-robin over all of them. Thousands
    /// of calls in flight need several: a gateway ends a connection (GOAWAY, ENHANCE_YOUR_CALM)
    /// that sends it more small frames at once than it can buffer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,
    /// The gRPC deadline of every call; waiting calls ask the server for 5 s less.
    #[arg(long, default_value_t = HumanDuration(Duration::from_secs(60)))]
    pub deadline: HumanDuration,
    /// async and get: GetTask long polls in flight at once while waiting for the tasks.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub poll_concurrency: u32,
    /// async and get: the longest the polling may take; tasks not over by then are errors.
    #[arg(long, default_value_t = HumanDuration(Duration::from_secs(600)))]
    pub drain_timeout: HumanDuration,
}

/// How `dalc bench` submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Sync,
    Async,
    Get,
}

impl BenchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchMode::Sync => "sync",
            BenchMode::Async => "async",
            BenchMode::Get => "get",
        }
    }
}

/// A `--*-listen` setting: one reading for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen<'a> {
    /// Not set, or set empty: the setting's default.
    Unset,
    /// `off`: not served.
    Off,
    At(&'a str),
}

impl<'a> Listen<'a> {
    pub fn of(setting: Option<&'a str>) -> Self {
        match setting {
            None | Some("") => Listen::Unset,
            Some("off") => Listen::Off,
            Some(address) => Listen::At(address),
        }
    }
}

/// A task status as users write it: `pending`, `PENDING` or `TASK_STATUS_PENDING`.
pub fn parse_status(text: &str) -> Result<dalc_proto::v1::TaskStatus, String> {
    let status = dalc_proto::status_by_name(text)
        .filter(|status| *status != dalc_proto::v1::TaskStatus::Unspecified);
    status.ok_or_else(|| {
        format!(
            "unknown status {text:?}: expected PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED or EXPIRED"
        )
    })
}

/// Tenant names go into the API keys file, one `NAME HASH` a line: no spaces, nothing odd.
pub fn parse_tenant(text: &str) -> Result<String, String> {
    if dalc_gateway::valid_tenant(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid tenant name {text:?}: 1 to 64 characters, each a letter, a digit, '.', '_' or '-'"
        ))
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "invalid rate {text:?}: expected tasks per second, e.g. 500"
        )),
    }
}

fn parse_queue_type(s: &str) -> Result<QueueType, String> {
    s.parse()
}

/// A period or a term that must pass between two things: zero would make a sweeper spin, or
/// leases that end as they start.
fn parse_positive_duration(text: &str) -> Result<HumanDuration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("{text} must be longer than zero"));
    }
    Ok(HumanDuration(duration))
}

/// RabbitMQ refuses a message TTL above 2^32 - 1 ms (about 49.7 days).
fn parse_max_task_ttl(text: &str) -> Result<HumanDuration, String> {
    let ttl = parse_duration(text)?;
    if ttl.as_millis() > u128::from(u32::MAX) {
        return Err(format!(
            "{text} is longer than RabbitMQ's longest message TTL (49 days)"
        ));
    }
    Ok(HumanDuration(ttl))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_listen_setting_is_an_address_off_or_unset() {
        assert_eq!(Listen::of(None), Listen::Unset);
        assert_eq!(Listen::of(Some("")), Listen::Unset);
        assert_eq!(Listen::of(Some("off")), Listen::Off);
        assert_eq!(Listen::of(Some("127.0.0.1:0")), Listen::At("127.0.0.1:0"));
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
        // Longer than any setting: refused, so no deadline built from it can overflow.
        assert!(parse_duration("999999999d").is_err());
        assert!(parse_duration("3650d").is_ok());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn durations_print_as_they_parse() {
        for text in ["500ms", "30s", "5m", "1h", "7d", "90s", "1500ms"] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0ms");
    }

    #[test]
    fn statuses_parse_in_any_spelling() {
        use dalc_proto::v1::TaskStatus;
        for text in [
            "PENDING",
            "pending",
            "TASK_STATUS_PENDING",
            "task_status_pending",
        ] {
            assert_eq!(parse_status(text), Ok(TaskStatus::Pending), "{text}");
        }
        assert_eq!(parse_status("Expired"), Ok(TaskStatus::Expired));
        for bad in ["", "UNSPECIFIED", "TASK_STATUS_UNSPECIFIED", "done"] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["acme", "a", "team-1.prod_x", &"t".repeat(64)] {
            assert_eq!(parse_tenant(good).as_deref(), Ok(good));
        }
        for bad in ["", "two words", "a/b", "é", &"t".repeat(65), "a\nb"] {
            let err = parse_tenant(bad).unwrap_err();
            assert!(err.contains("invalid tenant name"), "{err}");
        }
    }

    #[test]
    fn client_commands_take_address_lists() {
        let cli = Cli::try_parse_from([
            "dalc",
            "list",
            "--addr",
            "http://a:1,http://b:2",
            "--status",
            "pending",
        ])
        .unwrap();
        let Command::List(args) = cli.command else {
            panic!("not list")
        };
        assert_eq!(args.connect.addrs, ["http://a:1", "http://b:2"]);
        assert_eq!(args.limit, 20);
        // -f and an expression exclude each other; one of them is needed.
        assert!(Cli::try_parse_from(["dalc", "submit"]).is_err());
        assert!(Cli::try_parse_from(["dalc", "submit", "-f", "x", "1 + 1"]).is_err());
        assert!(Cli::try_parse_from(["dalc", "submit", "-f", "-"]).is_ok());
        assert!(Cli::try_parse_from(["dalc", "submit", "--priority", "10", "1"]).is_err());
    }

    #[test]
    fn connection_arguments_print_without_the_key() {
        let cli = Cli::parse_from(["dalc", "list", "--api-key", "s3cret-key"]);
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn periods_and_leases_must_be_longer_than_zero() {
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("500ms").is_ok());
    }

    #[test]
    fn the_max_task_ttl_fits_rabbitmq() {
        assert!(parse_max_task_ttl("49d").is_ok());
        assert!(parse_max_task_ttl("50d").is_err());
        assert!(parse_max_task_ttl("2000h").is_err());
    }
}
