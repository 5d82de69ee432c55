//! `inventory-worker`: configuration from the environment, then run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use shared::{config::Env, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let config = match inventory_worker::Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone());
    match inventory_worker::run(config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "inventory-worker failed");
            ExitCode::FAILURE
        }
    }
}
