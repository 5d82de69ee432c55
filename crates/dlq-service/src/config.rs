//! dlq-service's configuration: environment variables with local defaults.

use std::time::Duration;

use crate::console::ConsoleSettings;
use shared::{
    config::{ConfigError, Env},
    http::OperatorAuth,
    messaging::consumer::{ConsumerSettings, GivesUp},
    service::ServiceSettings,
};

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR` (default `127.0.0.1:8082`: the review API and health), Postgres, NATS,
    /// `OUTBOX_*` (the relay that publishes `order_events.dead_lettered` and replays) and
    /// `LAG_POLL_INTERVAL` (how often the capture consumer's lag and the number of dead
    /// letters waiting for review are refreshed for /metrics).
    pub service: ServiceSettings,
    /// `DLQ_*`: the durable consumer of `orders_unprocessed`. It never gives up on a message
    /// ([`GivesUp::Never`]): what it cannot read it records as it is, so what fails is Postgres
    /// or NATS, and a dead letter must not be lost because they were away for a while. There
    /// is no `DLQ_MAX_DELIVER`.
    pub capture: ConsumerSettings,
    /// `DLQ_SWEEP_INTERVAL` (default `60s`): how often the sweep looks for messages whose
    /// deliveries ran out but whose advisory never arrived (see [`crate::sweep`]), and prunes
    /// old last-error notes.
    pub sweep_interval: Duration,
    /// `DLQ_LAST_ERROR_RETENTION` (default `14d`, as long as `orders_unprocessed` keeps
    /// advisories): a last-error note that no dead letter claimed by then is deleted.
    pub last_error_retention: Duration,
    /// `OPERATOR_TOKENS`, `OPERATOR_TOKENS_FILE` or `OPERATOR_AUTH=disabled`: who may use the
    /// review API (see [`shared::http::auth`]). Unset is allowed here, for the command line,
    /// which does not serve it; the service refuses to start without it.
    pub operator_auth: OperatorAuth,
    /// `CONSOLE_*`: the review console's sessions and links (see [`ConsoleSettings`]).
    pub console: ConsoleSettings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        if let Some(value) = env.raw("DLQ_MAX_DELIVER") {
            return Err(ConfigError::new(
                "DLQ_MAX_DELIVER",
                &value,
                "capture never gives up on a message, so it has no delivery limit: unset it",
            ));
        }
        // Capture's own pauses, 5 s then every 30 s; the delivery limit given here only bounds
        // how many pauses `DLQ_BACKOFF` may list.
        let capture = ConsumerSettings {
            gives_up: GivesUp::Never,
            ..ConsumerSettings::from_env_with_defaults(
                env,
                "DLQ",
                "dlq-service",
                1_000,
                &[Duration::from_secs(5), Duration::from_secs(30)],
            )?
        };
        Ok(Self {
            service: ServiceSettings::from_env(env, "127.0.0.1:8082")?,
            capture,
            sweep_interval: positive(env, "DLQ_SWEEP_INTERVAL", Duration::from_secs(60))?,
            last_error_retention: positive(
                env,
                "DLQ_LAST_ERROR_RETENTION",
                Duration::from_secs(14 * 24 * 3600),
            )?,
            operator_auth: OperatorAuth::from_env(env)?,
            console: ConsoleSettings::from_env(env)?,
        })
    }
}

fn positive(env: &Env, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration(name, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(name, &env.string(name, ""), "must be longer than zero"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_never_gives_up() {
        let config = Config::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.service.http_addr.port(), 8082);
        assert_eq!(config.capture.name, "dlq-service");
        assert_eq!(config.capture.gives_up, GivesUp::Never);
        assert_eq!(config.capture.jetstream_max_deliver(), -1, "no MAX_DELIVERIES advisory, ever");
        assert!(!config.capture.is_last_attempt(1_000_000));
    }

    #[test]
    fn dlq_backoff_can_be_set_and_dlq_max_deliver_is_refused() {
        let config = Config::from_env(&Env::from_pairs([("DLQ_BACKOFF", "1s,2s,3s,4s,5s,6s")])).unwrap();
        assert_eq!(config.capture.backoff.len(), 6);
        let err = Config::from_env(&Env::from_pairs([("DLQ_MAX_DELIVER", "3")])).unwrap_err();
        assert_eq!(err.variable, "DLQ_MAX_DELIVER");
        assert!(err.to_string().contains("never gives up"), "{err}");
        let err = Config::from_env(&Env::from_pairs([("DLQ_SWEEP_INTERVAL", "0s")])).unwrap_err();
        assert!(err.to_string().contains("DLQ_SWEEP_INTERVAL"), "{err}");
    }
}
