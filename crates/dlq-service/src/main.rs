//! `dlq-service`: without arguments, the service; with one, a review command (see `--help`).

use std::process::ExitCode;

use clap::Parser;
use dlq_service::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        None => shared::service::main("dlq-service", dlq_service::Config::from_env, dlq_service::run).await,
        Some(command) => dlq_service::cli::main(command).await,
    }
}
