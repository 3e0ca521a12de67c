//! `dalc`: run the service (`up`, `gateway`, `worker`) or talk to it (`submit`, `get`, `watch`,
//! `list`, `cancel`, `stats`, `bench`); `keygen` makes API keys.

/// `println!` that never panics: what is printed to a reader that went away (`dalc list |
/// head -1`) is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod args;
mod batch;
mod bench;
mod client;
mod duration;
mod keygen;
mod render;
mod serve;

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use dalc_telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::args::{Cli, Command, CommonArgs, Listen};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // On a worker thread of the runtime, not on the main thread that `block_on` polls: a
    // worker's consume loop runs in this future, and every task it spawned from the main
    // thread had to wake a worker thread first (one more thread hop per delivery).
    match tokio::spawn(run(cli)).await {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(err)) => {
            eprintln!("dalc: {err:#}");
            ExitCode::FAILURE
        }
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => ExitCode::FAILURE,
        },
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Up(args) => {
            let common = args.common.clone();
            serve_until_signal(&common, "dalc", |s, m| serve::up(args, s, m)).await
        }
        Command::Gateway(args) => {
            let common = args.common.clone();
            serve_until_signal(&common, "dalc-gateway", |s, m| serve::gateway(args, s, m)).await
        }
        Command::Worker(args) => {
            let common = args.common.clone();
            serve_until_signal(&common, "dalc-worker", |s, m| serve::worker(args, s, m)).await
        }
        Command::Submit(args) => client::submit(args).await,
        Command::Get(args) => client::get(args).await,
        Command::Watch(args) => client::watch(args).await,
        Command::List(args) => client::list(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Stats(args) => client::stats(args).await,
        Command::Keygen(args) => keygen::keygen(args),
        Command::Bench(args) => bench::bench(args).await,
    }
}

/// Sets up logs, traces and metrics, runs a service, and cancels it on SIGINT or SIGTERM.
async fn serve_until_signal<F, Fut>(
    common: &CommonArgs,
    service_name: &str,
    service: F,
) -> anyhow::Result<u8>
where
    F: FnOnce(CancellationToken, Arc<Metrics>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = dalc_telemetry::init(common.log_format, service_name)?;
    if telemetry.exporting() {
        info!("exporting traces with OTLP");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    // Off unless an address is given.
    if let Listen::At(listen) = Listen::of(common.metrics_listen.as_deref()) {
        serve::metrics(listen, metrics.clone(), shutdown.clone()).await?;
    }
    let result = service(shutdown, metrics).await;
    // Export the last spans before exiting (the exporter blocks, so off the reactor).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result?;
    Ok(0)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => info!("SIGINT received; shutting down"),
        () = terminate => info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}
