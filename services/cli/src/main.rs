//! `dalc`: run the service (`up`, `gateway`, `worker`) or talk to it (`submit`, `get`).

mod args;
mod client;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::args::{Cli, Command, CommonArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("dalc: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Up(args) => serve_until_signal(&args.common.clone(), |s| serve::up(args, s)).await,
        Command::Gateway(args) => {
            serve_until_signal(&args.common.clone(), |s| serve::gateway(args, s)).await
        }
        Command::Worker(args) => {
            serve_until_signal(&args.common.clone(), |s| serve::worker(args, s)).await
        }
        Command::Submit(args) => client::submit(args).await,
        Command::Get(args) => client::get(args).await,
    }
}

/// Sets up logging, runs a service, and cancels it on SIGINT or SIGTERM.
async fn serve_until_signal<F, Fut>(common: &CommonArgs, service: F) -> anyhow::Result<u8>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    dalc_telemetry::init(common.log_format)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    service(shutdown).await?;
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
