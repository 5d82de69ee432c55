//! order-api's configuration: environment variables with local defaults.

use std::{net::SocketAddr, time::Duration};

use shared::config::{
    ConfigError, ConsumerSettings, DatabaseConfig, Env, GivesUp, NatsConfig, RelaySettings,
};

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// `OUTBOX_*`: the relay that publishes accepted orders.
    pub relay: RelaySettings,
    /// `PROJECTION_*`: the durable consumer of `order_events.>` that keeps order statuses.
    pub projection: ConsumerSettings,
    /// `OUTBOX_MAX_BACKLOG`: above this many unsent orders, `POST /orders` answers 503 with
    /// `Retry-After` instead of letting the backlog grow without bound.
    pub max_outbox_backlog: u64,
    /// `MAX_CONSUMER_LAG`: above this many orders waiting for the workers (JetStream's
    /// `num_pending` + `num_ack_pending` of their consumer), `POST /orders` answers 503 too.
    pub max_consumer_lag: u64,
    /// `WORKER_CONSUMER`: the workers' consumer, whose lag is watched.
    pub worker_consumer: String,
    /// `LAG_POLL_INTERVAL`: how often consumer lag is read from JetStream.
    pub lag_poll_interval: Duration,
    /// `REQUEST_TIMEOUT`: a request not answered within it gets 503 with `Retry-After` (except
    /// an order whose `COMMIT` has started: that one is answered with its outcome).
    pub request_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: env.socket_addr("HTTP_ADDR", "127.0.0.1:8080")?,
            database: DatabaseConfig::from_env(env)?,
            nats: NatsConfig::from_env(env)?,
            relay: RelaySettings::from_env(env)?,
            // The projection reads a limits stream, where a lost MAX_DELIVERIES advisory could
            // not be made good afterwards: it gives up on an event itself (see `GivesUp`).
            projection: ConsumerSettings {
                gives_up: GivesUp::Consumer,
                ..ConsumerSettings::from_env(env, "PROJECTION", "order-api-projection")?
            },
            max_outbox_backlog: env.number("OUTBOX_MAX_BACKLOG", 10_000, 1..=10_000_000)?,
            max_consumer_lag: env.number("MAX_CONSUMER_LAG", 10_000, 1..=10_000_000)?,
            worker_consumer: env.string("WORKER_CONSUMER", "inventory-worker"),
            lag_poll_interval: env.duration("LAG_POLL_INTERVAL", Duration::from_secs(2))?,
            request_timeout: env.duration("REQUEST_TIMEOUT", Duration::from_secs(10))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let config = Config::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.projection.name, "order-api-projection");
    }

    #[test]
    fn a_bad_address_names_the_variable() {
        let err = Config::from_env(&Env::from_pairs([("HTTP_ADDR", "localhost")])).unwrap_err();
        assert_eq!(err.variable, "HTTP_ADDR");
    }
}
