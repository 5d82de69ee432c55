//! `order-api`: telemetry, configuration from the environment, then run until SIGTERM or Ctrl-C
//! (see [`shared::service::main`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::service::main("order-api", order_api::Config::from_env, order_api::run).await
}
