//! The settings of a durable pull consumer: its name, batch size, retry schedule and who gives up
//! on a message that keeps failing.

use std::time::Duration;

use crate::config::{ConfigError, Env};

/// Who gives up on a message that keeps failing, and so who must tell the dead-letter service.
///
/// A consumer of this project never drops a message silently: whichever way it is given up on,
/// a `dead_letters` row records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivesUp {
    /// JetStream, after `max_deliver` deliveries: it emits a MAX_DELIVERIES advisory, which the
    /// dead-letter service captures (the seed article's design; the inventory worker's). An
    /// advisory is best effort, so on the work queue the dead-letter service's sweep finds a
    /// message whose advisory was lost: such a message stays in the stream.
    JetStream,
    /// The consumer itself, on its `max_deliver`th failed attempt: it stores a copy in the
    /// dead-letter stream, then terminates the message; JetStream has no delivery limit, so
    /// there is no advisory to lose. For a consumer of a limits stream (the projection of
    /// `order_events`), where nothing after the fact tells a message given up on from one
    /// processed, so a lost advisory could not be recovered.
    Consumer,
    /// Nobody: retried until it succeeds. For the dead-letter service's own capture, whose
    /// failures are the database's or NATS's, never the message's (what it cannot read it records
    /// as it is), and which has nobody to hand a message on to.
    Never,
}

/// Settings of a durable pull consumer run by [`crate::messaging::consumer::IdempotentConsumer`].
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable consumer name; also the key under which processed message IDs are recorded.
    pub name: String,
    /// Most messages handled in one database transaction.
    pub batch_size: usize,
    /// Attempts before a message that keeps failing is given up on (by whom: `gives_up`).
    pub max_deliver: i64,
    /// Who gives up on a message after `max_deliver` failed attempts.
    pub gives_up: GivesUp,
    /// The consumer's `BackOff`: how long JetStream waits, after each delivery, for an
    /// acknowledgement before it delivers the message again (a failed attempt, or a worker that
    /// crashed or hung). The first value is also the ack wait; the last repeats.
    pub backoff: Vec<Duration>,
    /// Most messages delivered and not yet acknowledged, across all processes sharing the consumer.
    pub max_ack_pending: i64,
    /// `{prefix}_MAX_IN_PROGRESS`: the longest a batch's work may keep its messages "in
    /// progress". Past it, what is not done is left for redelivery, and a database that has not
    /// answered by then counts as unavailable.
    pub max_in_progress: Duration,
    /// `INSTANCE_ID`: this process, among those sharing the consumer (default: host name and
    /// process ID). Recorded with each processed message.
    pub instance: String,
}

impl ConsumerSettings {
    /// Reads `{prefix}_CONSUMER`, `{prefix}_BATCH_SIZE`, `{prefix}_MAX_DELIVER`, `{prefix}_BACKOFF`,
    /// `{prefix}_MAX_ACK_PENDING` and `{prefix}_MAX_IN_PROGRESS`.
    pub fn from_env(env: &Env, prefix: &str, default_name: &str) -> Result<Self, ConfigError> {
        // Defaults: 5 deliveries, 1+2+4+8 s apart; JetStream gives up on a message that always
        // fails when the 5th wait (8 s again) runs out, about 23 s after its first delivery.
        Self::from_env_with_defaults(env, prefix, default_name, 5, &[1, 2, 4, 8].map(Duration::from_secs))
    }

    /// As [`Self::from_env`], with a service's own defaults for `{prefix}_MAX_DELIVER` and
    /// `{prefix}_BACKOFF`, applied *before* validation, so that setting either one alone is
    /// checked against the other's default.
    pub fn from_env_with_defaults(
        env: &Env,
        prefix: &str,
        default_name: &str,
        default_max_deliver: i64,
        default_backoff: &[Duration],
    ) -> Result<Self, ConfigError> {
        let var = |suffix: &str| format!("{prefix}_{suffix}");
        let name = env.string(&var("CONSUMER"), default_name);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::new(&var("CONSUMER"), &name, "use letters, digits, '-' and '_' only"));
        }
        let max_deliver = env.number(&var("MAX_DELIVER"), default_max_deliver, 1..=1_000)?;
        let backoff = env.durations(&var("BACKOFF"), default_backoff)?;
        if backoff.is_empty() || backoff.iter().any(Duration::is_zero) {
            return Err(ConfigError::new(
                &var("BACKOFF"),
                &env.string(&var("BACKOFF"), ""),
                "every pause must be longer than zero",
            ));
        }
        // JetStream rejects a backoff list that is not shorter than max_deliver.
        if backoff.len() as i64 >= max_deliver {
            return Err(ConfigError::new(
                &var("BACKOFF"),
                &env.string(&var("BACKOFF"), ""),
                format!("must list fewer pauses than {} ({max_deliver})", var("MAX_DELIVER")),
            ));
        }
        Ok(Self {
            name,
            batch_size: env.number(&var("BATCH_SIZE"), 100, 1..=1_000)?,
            max_deliver,
            gives_up: GivesUp::JetStream,
            backoff,
            max_ack_pending: env.number(&var("MAX_ACK_PENDING"), 1_000, 1..=100_000)?,
            max_in_progress: env.positive_duration(&var("MAX_IN_PROGRESS"), Duration::from_secs(30))?,
            instance: env.raw("INSTANCE_ID").unwrap_or_else(default_instance_id),
        })
    }

    /// Whether a failed delivery number `attempt` (1-based) is the last one.
    pub fn is_last_attempt(&self, attempt: u64) -> bool {
        self.gives_up != GivesUp::Never && attempt >= self.max_deliver.unsigned_abs()
    }

    /// The consumer's `max_deliver` as JetStream sees it: -1 (no limit) unless JetStream is the
    /// one that gives up.
    pub fn jetstream_max_deliver(&self) -> i64 {
        match self.gives_up {
            GivesUp::JetStream => self.max_deliver,
            GivesUp::Consumer | GivesUp::Never => -1,
        }
    }

    /// How long JetStream waits after delivery number `attempt` (1-based) before the next one.
    pub fn delay_after(&self, attempt: u64) -> Duration {
        let index = (attempt.max(1) - 1) as usize;
        self.backoff[index.min(self.backoff.len() - 1)]
    }
}

/// `<host name>-<process ID>`: distinct for replicas on one host and across containers.
fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_the_variable_and_the_rule() {
        let env = Env::from_pairs([("WORKER_MAX_DELIVER", "zero")]);
        let err = ConsumerSettings::from_env(&env, "WORKER", "w").unwrap_err();
        assert_eq!(err.variable, "WORKER_MAX_DELIVER");
        assert!(err.to_string().contains("WORKER_MAX_DELIVER=\"zero\""), "{err}");
    }

    #[test]
    fn a_backoff_list_must_be_shorter_than_max_deliver() {
        let env = Env::from_pairs([("WORKER_MAX_DELIVER", "3"), ("WORKER_BACKOFF", "1s,2s,3s")]);
        let err = ConsumerSettings::from_env(&env, "WORKER", "w").unwrap_err();
        assert_eq!(err.variable, "WORKER_BACKOFF");
    }

    #[test]
    fn default_retries_dead_letter_within_thirty_seconds() {
        let settings = ConsumerSettings::from_env(&Env::from_pairs([]), "WORKER", "w").unwrap();
        // Every delivery, the last included, waits its BackOff step before JetStream moves on.
        let until_given_up: Duration =
            (1..=settings.max_deliver as u64).map(|attempt| settings.delay_after(attempt)).sum();
        assert_eq!(until_given_up, Duration::from_secs(1 + 2 + 4 + 8 + 8));
        assert!(until_given_up < Duration::from_secs(30));
        // After the last listed pause, the last one repeats.
        assert_eq!(settings.delay_after(99), Duration::from_secs(8));
    }
}
