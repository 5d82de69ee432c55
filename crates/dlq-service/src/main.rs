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
        // A review command talks to a person at a terminal: its error is a plain line.
        Some(command) => dlq_service::cli::run(command, &config).await.inspect_err(|err| {
            eprintln!("error: {}", telemetry::error_chain(err));
        }),
        None => {
            let stop = CancellationToken::new();
            shutdown::cancel_on_signal(stop.clone());
            let result = dlq_service::run(config, stop).await;
            if let Err(err) = &result {
                tracing::error!(error = telemetry::error_chain(err), "dlq-service failed");
            }
            result
        }
    };
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
