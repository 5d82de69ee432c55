//! order-api's configuration: environment variables with local defaults.

use std::time::Duration;

use shared::{
    config::{ConfigError, Env},
    messaging::consumer::{ConsumerSettings, GivesUp},
    service::ServiceSettings,
};

use crate::writer::WriterSettings;

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8080`), Postgres, NATS, `OUTBOX_*` (the relay that
    /// publishes accepted orders) and `LAG_POLL_INTERVAL` (how often the workers' consumer lag
    /// is read from JetStream).
    pub service: ServiceSettings,
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
    /// `REQUEST_TIMEOUT`: a request not answered within it gets 503 with `Retry-After` (except
    /// an order a writer has taken: that one is answered with its outcome).
    pub request_timeout: Duration,
    /// `ORDER_WRITERS` (default 4) and `ORDER_BATCH_SIZE` (default 256): the group commit of
    /// `POST /orders` (see [`crate::writer`]).
    pub writer: WriterSettings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceSettings::from_env(env, "127.0.0.1:8080")?,
            // The projection reads a limits stream, where a lost MAX_DELIVERIES advisory could
            // not be made good afterwards: it gives up on an event itself (see `GivesUp`).
            projection: ConsumerSettings {
                gives_up: GivesUp::Consumer,
                ..ConsumerSettings::from_env(env, "PROJECTION", "order-api-projection")?
            },
            max_outbox_backlog: env.number("OUTBOX_MAX_BACKLOG", 10_000, 1..=10_000_000)?,
            max_consumer_lag: env.number("MAX_CONSUMER_LAG", 10_000, 1..=10_000_000)?,
            worker_consumer: env.string("WORKER_CONSUMER", "inventory-worker"),
            request_timeout: env.duration("REQUEST_TIMEOUT", Duration::from_secs(10))?,
            writer: WriterSettings {
                writers: env.number("ORDER_WRITERS", 4, 1..=64)?,
                batch_size: env.number("ORDER_BATCH_SIZE", 256, 1..=5_000)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let config = Config::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.service.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.projection.name, "order-api-projection");
    }

    #[test]
    fn a_bad_address_names_the_variable() {
        let err = Config::from_env(&Env::from_pairs([("HTTP_ADDR", "localhost")])).unwrap_err();
        assert_eq!(err.variable, "HTTP_ADDR");
    }
}
