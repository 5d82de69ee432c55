//! dlq-service's configuration: environment variables with local defaults.

use std::{net::SocketAddr, time::Duration};

use shared::config::{ConfigError, ConsumerSettings, DatabaseConfig, Env, NatsConfig, RelaySettings};

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8082`): the review API and health.
    pub http_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// `OUTBOX_*`: the relay that publishes `order_events.dead_lettered` and replays.
    pub relay: RelaySettings,
    /// `DLQ_*`: the durable consumer of `orders_unprocessed`. Capture must not give up on a
    /// dead letter because Postgres was down for a while, so it retries many times.
    pub capture: ConsumerSettings,
    /// `LAG_POLL_INTERVAL`: how often the capture consumer's lag and the number of dead
    /// letters waiting for review are refreshed for /metrics.
    pub lag_poll_interval: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut capture = ConsumerSettings::from_env(env, "DLQ", "dlq-service")?;
        if env.raw("DLQ_MAX_DELIVER").is_none() {
            capture.max_deliver = 1_000;
        }
        if env.raw("DLQ_BACKOFF").is_none() {
            capture.backoff = vec![Duration::from_secs(5), Duration::from_secs(30)];
        }
        Ok(Self {
            http_addr: env.socket_addr("HTTP_ADDR", "127.0.0.1:8082")?,
            database: DatabaseConfig::from_env(env)?,
            nats: NatsConfig::from_env(env)?,
            relay: RelaySettings::from_env(env)?,
            capture,
            lag_poll_interval: env.duration("LAG_POLL_INTERVAL", Duration::from_secs(2))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_retries_for_a_long_time_by_default() {
        let config = Config::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.http_addr.port(), 8082);
        assert_eq!(config.capture.name, "dlq-service");
        assert_eq!(config.capture.max_deliver, 1_000);
    }
}
