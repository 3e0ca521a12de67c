//! Command-line interface. Every option is a flag with a `DALC_*` environment variable and a
//! default; `dalc <command> --help` lists them.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dalc_queue::amqp::QueueType;
use dalc_telemetry::LogFormat;

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
    /// Load a running gateway with concurrent submissions and report throughput and latency.
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
    /// Worker loops to run in this process.
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

/// The gRPC API.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to serve gRPC on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "DALC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Unique name of this gateway; names its reply queue. Default: host name + random suffix.
    #[arg(long, env = "DALC_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Longest accepted expression, in bytes of UTF-8.
    #[arg(long, env = "DALC_MAX_EXPRESSION_BYTES", default_value_t = dalc_calc::DEFAULT_MAX_EXPRESSION_BYTES)]
    pub max_expression_bytes: usize,
    /// How long a sync call waits when the request sets no timeout.
    #[arg(long, env = "DALC_DEFAULT_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub default_wait: Duration,
    /// The longest any call may wait, whatever it asks for.
    #[arg(long, env = "DALC_MAX_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Deadline of a task whose request sets no timeout: past it, a worker marks it EXPIRED.
    #[arg(long, env = "DALC_TASK_TTL", default_value = "1h", value_parser = parse_duration)]
    pub task_ttl: Duration,
    /// How often the recovery sweeper republishes tasks whose publish was never confirmed
    /// (and expires PENDING tasks past their deadline).
    #[arg(long, env = "DALC_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// How old an unconfirmed task must be before the sweeper republishes it.
    #[arg(long, env = "DALC_SWEEP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub sweep_grace: Duration,
    /// TEST ONLY: abort after storing a task, before publishing it (proves the sweeper).
    #[arg(long, hide = true)]
    pub fault_abort_before_publish: bool,
}

/// Task execution.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Tasks a worker evaluates at once (also its prefetch).
    #[arg(long, env = "DALC_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Unique name of this worker, recorded on the tasks it runs. Default: host name + random.
    #[arg(long, env = "DALC_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Attempts before a task is given up on (FAILED, dead-lettered).
    #[arg(long, env = "DALC_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// TEST ONLY: evaluation panics for expressions containing this text (proves that a
    /// poison task ends).
    #[arg(long, hide = true)]
    pub fault_crash_on: Option<String>,
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
    #[arg(long, env = "DALC_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Serve Prometheus metrics on this address at /metrics (off when unset; port 0 picks a
    /// free port, and the bound address is printed).
    #[arg(long, env = "DALC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// On SIGTERM, how long in-flight calls and tasks may take to finish.
    #[arg(long, env = "DALC_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json (level: DALC_LOG or RUST_LOG, default info).
    #[arg(long, env = "DALC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// The client commands' connection.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway address.
    #[arg(long, env = "DALC_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Print the task as JSON (the proto3 JSON mapping) instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the task to end (server default 30s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The expression, e.g. "1 + 1" or "sqrt(2) * pi".
    pub expression: String,
    /// Return the PENDING task at once instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
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
pub struct BenchArgs {
    /// The expression every request submits.
    #[arg(default_value = "1 + 1")]
    pub expression: String,
    /// Requests in all.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Submit asynchronously (measure acceptance only) instead of waiting for results.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_queue_type(s: &str) -> Result<QueueType, String> {
    s.parse()
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s"))?;
    let seconds = |n: u64| Ok(Duration::from_secs(n));
    match unit {
        "ms" => Ok(Duration::from_millis(amount)),
        "" | "s" => seconds(amount),
        "m" => seconds(amount.saturating_mul(60)),
        "h" => seconds(amount.saturating_mul(3600)),
        _ => Err(format!(
            "invalid duration unit in {text:?}: use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

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
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
