//! The JetStream streams and consumers, declared in one place.
//!
//! Services call these at start-up. Each call creates the stream or consumer if it is missing and
//! updates it to the configured values if it exists, so several services (or replicas) starting
//! at once converge on the same topology. Nothing here ever deletes a stream or a consumer.
//!
//! | what | kind | why |
//! |---|---|---|
//! | `orders_stream` on `orders.*` | work queue | each order is handed to exactly one worker and removed once acknowledged |
//! | `inventory-worker` on `orders.new` | durable pull consumer | shared by every worker process: they load-balance one queue |
//! | `order_events` on `order_events.>` | limits (a week) | pub/sub: any number of services read outcomes, each with its own consumer |
//! | `order-api-projection` on `order_events.>` | durable pull consumer | order-api's view of outcomes |
//! | `orders_unprocessed` on the MAX_DELIVERIES advisories of both streams' consumers and `orders_unprocessed.>` | limits (two weeks) | the dead-letter queue: advisories are dropped when nobody listens, so a stream keeps them |
//! | `dlq-service` on `orders_unprocessed` | durable pull consumer | the dead-letter service's capture |

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use contract::streams::{
    DEAD_LETTER_SOURCES, EVENTS_STREAM, EVENTS_SUBJECTS, ORDERS_STREAM, ORDERS_SUBJECTS, UNPROCESSED_STREAM,
    max_deliveries_advisories,
};

use crate::{
    config::{ConfigError, Env},
    messaging::consumer::ConsumerSettings,
    nats::NatsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("could not create or update stream {stream} with {replicas} replica(s){}", replicas_hint(*replicas))]
    Stream {
        stream: &'static str,
        /// `STREAM_REPLICAS`.
        replicas: usize,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("could not create or update consumer {consumer} on {stream}")]
    Consumer {
        stream: &'static str,
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
}

/// What to check when a replicated stream cannot be declared.
fn replicas_hint(replicas: usize) -> String {
    if replicas == 1 {
        return String::new();
    }
    format!(
        " (STREAM_REPLICAS={replicas}: it needs a NATS cluster with at least {replicas} JetStream servers up and routed together; a single server accepts 1 only)"
    )
}

/// `orders_stream`: the work queue of new orders (the seed article's `nats stream add`).
pub fn orders_stream_config(settings: &OrdersStreamSettings) -> stream::Config {
    stream::Config {
        name: ORDERS_STREAM.to_owned(),
        description: Some("New orders waiting for a stock reservation (work queue)".to_owned()),
        subjects: vec![ORDERS_SUBJECTS.to_owned()],
        // A work queue keeps a message until a consumer acknowledges it, then deletes it.
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        // When full, refuse new messages rather than silently dropping the oldest orders.
        discard: DiscardPolicy::New,
        max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
        max_message_size: i32::try_from(settings.max_message_size).unwrap_or(i32::MAX),
        duplicate_window: settings.duplicate_window,
        // Lets the dead-letter service read a message back by sequence cheaply.
        allow_direct: true,
        ..Default::default()
    }
}

/// `order_events`: outcomes, kept for a week for any service that wants to react to them.
pub fn events_stream_config(settings: &EventsStreamSettings) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Order outcomes (pub/sub: any number of readers)".to_owned()),
        subjects: vec![EVENTS_SUBJECTS.to_owned()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_age: settings.max_age,
        max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    }
}

/// `orders_unprocessed`: the seed article's dead-letter stream, capturing the MAX_DELIVERIES
/// advisories of the consumers of every [`DEAD_LETTER_SOURCES`] stream and what consumers publish about messages they give up on
/// (poison copies, last errors). Declared by every service, so nothing is missed while the
/// dead-letter service is down.
pub fn unprocessed_stream_config(max_age: Duration) -> stream::Config {
    stream::Config {
        name: UNPROCESSED_STREAM.to_owned(),
        description: Some("Orders that could not be processed: advisories and poison copies".to_owned()),
        subjects: DEAD_LETTER_SOURCES
            .iter()
            .map(|stream| max_deliveries_advisories(stream))
            .chain(["orders_unprocessed.>".to_owned()])
            .collect(),
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// A durable pull consumer that acknowledges explicitly and spaces out redeliveries.
pub fn durable_consumer_config(settings: &ConsumerSettings, filter_subject: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(settings.name.clone()),
        description: Some(format!("durable consumer of {filter_subject}")),
        filter_subject: filter_subject.to_owned(),
        deliver_policy: DeliverPolicy::All,
        // Acknowledge each message after its work is committed: at-least-once delivery.
        ack_policy: AckPolicy::Explicit,
        // After `max_deliver` deliveries JetStream stops and emits a MAX_DELIVERIES advisory;
        // -1 for a consumer that gives up itself, or never (see `GivesUp`).
        max_deliver: settings.jetstream_max_deliver(),
        // Applies to redeliveries after an ack timeout (a worker that died or hung); the first
        // value also becomes the ack wait. Naks carry their own delay (see `consumer`).
        backoff: settings.backoff.clone(),
        ack_wait: settings.backoff[0],
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Creates or updates the three streams, each with `STREAM_REPLICAS` copies.
///
/// An existing stream with another replica count is updated to this one: in a cluster,
/// JetStream adds or removes copies of it in the background (its consumers, whose replica
/// count is left at 0, "as the stream", follow it). The durable consumers declared by
/// [`ensure_consumer`] are not given a count of their own for the same reason.
pub async fn ensure_streams(js: &jetstream::Context, nats: &NatsConfig) -> Result<(), TopologyError> {
    let replicas = nats.stream_replicas;
    for (stream, config) in [
        (ORDERS_STREAM, orders_stream_config(&nats.orders_stream)),
        (EVENTS_STREAM, events_stream_config(&nats.events_stream)),
        (UNPROCESSED_STREAM, unprocessed_stream_config(nats.unprocessed_max_age)),
    ] {
        let config = stream::Config { num_replicas: replicas, ..config };
        let mut attempt: u32 = 1;
        loop {
            // In a cluster, a request can go unanswered while the meta leader changes; and when
            // several services declare the same stream at the same moment, none may be
            // answered (seen with nats-server 2.15.1: each waited out its timeout, though the
            // stream was created). Asking again is safe, the declaration being idempotent, so
            // the first waits are short: 2 s, then 4, 8, 16.
            let patience = Duration::from_secs(1 << attempt);
            let declared = tokio::time::timeout(patience, js.create_or_update_stream(config.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(jetstream::context::CreateStreamError::new(
                        jetstream::context::CreateStreamErrorKind::TimedOut,
                    ))
                });
            match declared {
                Ok(_) => break,
                Err(err) if attempt < UNANSWERED_ATTEMPTS && is_unanswered(&err) => {
                    tracing::warn!(stream, attempt, error = %err, "JetStream did not answer a stream declaration: asking again");
                    attempt += 1;
                }
                Err(source) => return Err(TopologyError::Stream { stream, replicas, source }),
            }
        }
    }
    Ok(())
}

/// How many times a declaration JetStream does not answer is sent (see [`is_unanswered`]).
const UNANSWERED_ATTEMPTS: u32 = 5;

/// Whether JetStream gave no answer (a timeout, or "temporarily unavailable" while a cluster
/// elects its meta leader), rather than refusing the declaration.
fn is_unanswered(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    match err.kind() {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(err) => err.code() == 503,
        _ => false,
    }
}

/// Creates or updates a durable pull consumer and returns a handle to it.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &'static str,
    filter_subject: &str,
    settings: &ConsumerSettings,
) -> Result<PullConsumer, TopologyError> {
    let err = |source: async_nats::Error| TopologyError::Consumer {
        stream,
        consumer: settings.name.clone(),
        source,
    };
    let wanted = durable_consumer_config(settings, filter_subject);
    let mut attempt = 1;
    loop {
        match declare_consumer(js, stream, &settings.name, &wanted).await {
            Ok(consumer) => return Ok(consumer),
            Err((source, unanswered)) if unanswered && attempt < UNANSWERED_ATTEMPTS => {
                tracing::warn!(stream, consumer = %settings.name, attempt, error = %source, "JetStream did not answer a consumer declaration: asking again");
                attempt += 1;
            }
            Err((source, _)) => return Err(err(source)),
        }
    }
}

/// One attempt of [`ensure_consumer`]; on failure, the error and whether it was a timeout.
async fn declare_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    wanted: &pull::Config,
) -> Result<PullConsumer, (async_nats::Error, bool)> {
    use jetstream::{context::GetStreamErrorKind, stream::ConsumerErrorKind};
    let stream_handle = js.get_stream(stream).await.map_err(|e| {
        let unanswered = matches!(e.kind(), GetStreamErrorKind::Request);
        (e.into(), unanswered)
    })?;
    // A consumer that is already as wanted is used as it is: an update is a write to the
    // server's store, and every replica of every service starting is no reason for one. (It
    // also sidesteps a nats-server fault seen by the chaos soak: after a consumer was deleted
    // and declared again, updating it failed with "meta.inf.tmp: no such file or directory".)
    if let Ok(existing) = stream_handle.get_consumer::<pull::Config>(name).await
        && is_as_wanted(&existing.cached_info().config, wanted)
    {
        return Ok(existing);
    }
    stream_handle
        // `create_consumer` is create-or-update on servers >= 2.10.
        .create_consumer(wanted.clone())
        .await
        .map_err(|e| {
            let unanswered = matches!(e.kind(), ConsumerErrorKind::TimedOut);
            (e.into(), unanswered)
        })
}

/// Whether a consumer's configuration already has every setting this project declares.
fn is_as_wanted(existing: &jetstream::consumer::Config, wanted: &pull::Config) -> bool {
    existing.durable_name == wanted.durable_name
        && existing.description == wanted.description
        && existing.filter_subject == wanted.filter_subject
        && existing.deliver_policy == wanted.deliver_policy
        && existing.ack_policy == wanted.ack_policy
        && existing.max_deliver == wanted.max_deliver
        && existing.backoff == wanted.backoff
        && existing.ack_wait == wanted.ack_wait
        && existing.max_ack_pending == wanted.max_ack_pending
}

/// Limits of the `orders_stream` work queue (the seed article's values by default).
///
/// All services that declare the stream must agree on these: each one updates the stream to its
/// own values at start-up.
#[derive(Debug, Clone)]
pub struct OrdersStreamSettings {
    /// `ORDERS_STREAM_MAX_BYTES`: with `discard: new`, a full stream refuses new orders instead of
    /// dropping old ones; the outbox then holds them (backpressure, not loss).
    pub max_bytes: u64,
    /// `ORDERS_STREAM_MAX_MSG_SIZE`.
    pub max_message_size: u64,
    /// `ORDERS_STREAM_DUPLICATE_WINDOW`: how long the broker remembers `Nats-Msg-Id`s.
    pub duplicate_window: Duration,
}

impl OrdersStreamSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_bytes: env.bytes("ORDERS_STREAM_MAX_BYTES", 256 << 20)?,
            max_message_size: env.bytes("ORDERS_STREAM_MAX_MSG_SIZE", 1 << 20)?,
            duplicate_window: env.duration("ORDERS_STREAM_DUPLICATE_WINDOW", Duration::from_secs(120))?,
        })
    }
}

/// Limits of the `order_events` stream.
#[derive(Debug, Clone)]
pub struct EventsStreamSettings {
    /// `EVENTS_STREAM_MAX_AGE`: events are history; a week of it is kept.
    pub max_age: Duration,
    /// `EVENTS_STREAM_MAX_BYTES`.
    pub max_bytes: u64,
}

impl EventsStreamSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_age: env.duration("EVENTS_STREAM_MAX_AGE", Duration::from_secs(7 * 24 * 3600))?,
            max_bytes: env.bytes("EVENTS_STREAM_MAX_BYTES", 1 << 30)?,
        })
    }
}

#[cfg(test)]
mod tests {}
