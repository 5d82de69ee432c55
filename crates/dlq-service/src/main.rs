//! `dlq-service`: without arguments, the service; with one, a review command (see `--help`).

use std::process::ExitCode;

use clap::Parser;
use dlq_service::cli::Cli;
use shared::{config::Env, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init("dlq-service") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let config = match dlq_service::Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(command) => dlq_service::cli::run(command, &config).await,
        None => {
            let stop = CancellationToken::new();
            shutdown::cancel_on_signal(stop.clone());
            dlq_service::run(config, stop).await
        }
    };
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "dlq-service failed");
    }
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
