//! `dlq-service`: without arguments, the service; with one, a review command (see `--help`).

use std::process::ExitCode;

use clap::Parser;
use dlq_service::cli::Cli;
use shared::{config::Env, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "dlq-service failed");
            ExitCode::FAILURE
        }
    }
}
