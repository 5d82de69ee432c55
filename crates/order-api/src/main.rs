//! `order-api`: telemetry, configuration from the environment, then run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use shared::{config::Env, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match telemetry::init("order-api") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let config = match order_api::Config::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone());
    let result = order_api::run(config, stop).await;
    if let Err(err) = &result {
        tracing::error!(error = telemetry::error_chain(err), "order-api failed");
    }
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
