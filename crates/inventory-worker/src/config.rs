//! inventory-worker's configuration: environment variables with local defaults.

use shared::{
    config::{ConfigError, Env},
    http::OperatorAuth,
    messaging::consumer::ConsumerSettings,
    service::ServiceSettings,
};

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8081`: health and the stock API), Postgres, NATS,
    /// `OUTBOX_*` (the relay that publishes outcome events) and `LAG_POLL_INTERVAL` (how often
    /// the consumer's lag is read from JetStream for /metrics).
    pub service: ServiceSettings,
    /// `WORKER_*`: the durable consumer of `orders.new` shared by every worker process.
    pub consumer: ConsumerSettings,
    /// `INVENTORY_FAILURE_RATE` (0.0–1.0): share of deliveries failed at random, to watch
    /// redelivery happen.
    pub failure_rate: f64,
    /// `OPERATOR_TOKENS`, `OPERATOR_TOKENS_FILE` or `OPERATOR_AUTH=disabled`: who may set stock
    /// with `PUT /inventory/{sku}` (see [`shared::http::auth`]). Required: the worker refuses
    /// to start without one of them.
    pub operator_auth: OperatorAuth,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceSettings::from_env(env, "127.0.0.1:8081")?,
            consumer: ConsumerSettings::from_env(env, "WORKER", "inventory-worker")?,
            failure_rate: env.fraction("INVENTORY_FAILURE_RATE", 0.0)?,
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
        assert_eq!(config.service.http_addr.port(), 8081);
        assert_eq!(config.consumer.name, "inventory-worker");
        assert_eq!(config.failure_rate, 0.0);
    }
}
