//! `inventory-worker`: telemetry, configuration from the environment, then run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use shared::{config::Env, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match telemetry::init("inventory-worker") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let config = match inventory_worker::Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone());
    let result = inventory_worker::run(config, stop).await;
    if let Err(err) = &result {
        tracing::error!(error = telemetry::error_chain(err), "inventory-worker failed");
    }
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
