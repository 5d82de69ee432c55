//! `inventory-worker`: telemetry, configuration from the environment, then run until SIGTERM or Ctrl-C
//! (see [`shared::service::main`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::service::main("inventory-worker", inventory_worker::Config::from_env, inventory_worker::run).await
}
