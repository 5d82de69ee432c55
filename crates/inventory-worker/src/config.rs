//! inventory-worker's configuration: environment variables with local defaults.

use std::{net::SocketAddr, time::Duration};

use shared::{
    config::{ConfigError, ConsumerSettings, DatabaseConfig, Env, NatsConfig, RelaySettings},
    http::OperatorAuth,
};

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8081`): health and the stock API.
    pub http_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// `OUTBOX_*`: the relay that publishes outcome events.
    pub relay: RelaySettings,
    /// `WORKER_*`: the durable consumer of `orders.new` shared by every worker process.
    pub consumer: ConsumerSettings,
    /// `INVENTORY_FAILURE_RATE` (0.0–1.0): share of deliveries failed at random, to watch
    /// redelivery happen.
    pub failure_rate: f64,
    /// `LAG_POLL_INTERVAL`: how often the consumer's lag is read from JetStream for /metrics.
    pub lag_poll_interval: Duration,
    /// `OPERATOR_TOKENS`, `OPERATOR_TOKENS_FILE` or `OPERATOR_AUTH=disabled`: who may set stock
    /// with `PUT /inventory/{sku}` (see [`shared::http::auth`]). Required: the worker refuses
    /// to start without one of them.
    pub operator_auth: OperatorAuth,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: env.socket_addr("HTTP_ADDR", "127.0.0.1:8081")?,
            database: DatabaseConfig::from_env(env)?,
            nats: NatsConfig::from_env(env)?,
            relay: RelaySettings::from_env(env)?,
            consumer: ConsumerSettings::from_env(env, "WORKER", "inventory-worker")?,
            failure_rate: env.fraction("INVENTORY_FAILURE_RATE", 0.0)?,
            lag_poll_interval: env.duration("LAG_POLL_INTERVAL", Duration::from_secs(2))?,
            operator_auth: OperatorAuth::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_rate_outside_0_to_1_names_the_variable() {
        let err = Config::from_env(&Env::from_pairs([("INVENTORY_FAILURE_RATE", "1.5")])).unwrap_err();
        assert_eq!(err.variable, "INVENTORY_FAILURE_RATE");
    }

    #[test]
    fn defaults_work_locally() {
        let config = Config::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.http_addr.port(), 8081);
        assert_eq!(config.consumer.name, "inventory-worker");
        assert_eq!(config.failure_rate, 0.0);
    }
}
