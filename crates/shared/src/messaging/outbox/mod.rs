//! The transactional outbox and its relay.
//!
//! **Why:** a service that commits to Postgres and then publishes to NATS loses the message if it
//! crashes in between; one that publishes first announces changes that may roll back. Instead the
//! message is inserted into the `outbox` table *in the same transaction* as the change
//! ([`enqueue`]), and the [`OutboxRelay`] publishes committed rows afterwards. While NATS is down,
//! rows simply wait; nothing is lost and the HTTP caller is not made to wait.
//!
//! **How the relay works:** claim a batch of unsent rows with `FOR UPDATE SKIP LOCKED` (so several
//! replicas share the work without sending a row twice at the same time), publish them all without
//! waiting, then await every PubAck (pipelining: one round trip per batch, not per row), mark the
//! acknowledged rows sent and commit. A crash after publishing but before the commit re-sends the
//! rows later with the same `Nats-Msg-Id`: inside the stream's duplicate window the broker drops
//! them; after it, consumers' idempotency does.
//!
//! **The claim's plan:** sent rows stay in the table (for `OUTBOX_RETENTION`), and marking a row
//! sent leaves its entry in the `outbox_unsent` index until vacuum removes it. Left to itself,
//! the planner claims with a *bitmap* scan of that index, which visits every such entry and its
//! heap page on every claim: measured under load, 6,049 index entries and 525 heap pages read to
//! find 9 unsent rows, a claim's cost growing with the rows sent since the last vacuum (the
//! costliest statement that does work in docs/reference.md's profile). So the relay turns
//! bitmap scans off for its transaction: an index scan walks the entries in `id` order, stops
//! at the `LIMIT`, and marks the entries of rows it finds dead, so the next claim skips them
//! without reading the heap.
//!
//! **A row the broker refuses for good** (no stream for its subject, larger than the stream's
//! `max_message_size`: see [`is_permanent`]) must not hold up the rows behind it. Sending it
//! again cannot help, so such a refusal does not fail the round (no pause): the row records the
//! error and waits `OUTBOX_RETRY_MAX` before it is tried again, out of the way. If it is still
//! refused after `OUTBOX_QUARANTINE_AFTER` (5 min by default; the delay is there because "no
//! stream" can also be an operator re-creating a stream), it is **quarantined**: kept, never
//! sent, logged at error level and counted in `outbox_quarantined_messages`, until a person
//! fixes the cause and releases it (`migrations/shared/0002_*.sql` shows how). Transient failures
//! (timeouts, NATS down, a full stream) fail the round, and the relay pauses and retries as
//! before.
//!
//! **Waking up:** the code that committed rows calls [`OutboxWaker::wake`], an in-process signal.
//! A timer ([`RelaySettings::poll_interval`]) catches rows written by other processes or left by a
//! crash. (Postgres `LISTEN/NOTIFY` would also work, but `NOTIFY` takes a database-wide lock at
//! every commit: a cost paid per order, for a signal the process can give itself.)

mod relay;

pub use relay::{OutboxRelay, RelayError, is_permanent};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{PgConnection, PgPool, types::Json};
use tokio::sync::Notify;

use crate::{
    config::{ConfigError, Env},
    messaging::envelope::OutgoingMessage,
    nats::NatsConfig,
};

/// Inserts messages into the outbox inside the caller's transaction. One statement for any
/// number of messages.
pub async fn enqueue(conn: &mut PgConnection, messages: &[OutgoingMessage]) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let columns = Columns::of(messages);
    sqlx::query(
        "INSERT INTO outbox (subject, message_id, dedupe_id, headers, payload)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[], $5::bytea[])",
    )
    .bind(&columns.subjects)
    .bind(&columns.ids)
    .bind(&columns.dedupe_ids)
    .bind(&columns.headers)
    .bind(&columns.payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// Messages as the outbox's columns, one array each, for a set-based `INSERT … SELECT FROM
/// unnest(…)`: [`enqueue`] binds them, and so can a statement that inserts its messages beside
/// other rows (order-api's writer stores orders and their messages with one statement).
#[derive(Debug, Default)]
pub struct Columns<'a> {
    pub subjects: Vec<&'a str>,
    pub ids: Vec<uuid::Uuid>,
    pub dedupe_ids: Vec<&'a str>,
    pub headers: Vec<Json<&'a std::collections::BTreeMap<String, String>>>,
    pub payloads: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    pub fn of(messages: impl IntoIterator<Item = &'a OutgoingMessage>) -> Self {
        let mut columns = Self::default();
        for m in messages {
            columns.subjects.push(m.subject.as_str());
            columns.ids.push(m.message_id);
            columns.dedupe_ids.push(m.dedupe_id.as_str());
            columns.headers.push(Json(&m.headers));
            columns.payloads.push(m.payload.as_slice());
        }
        columns
    }
}

/// Tells the relay that rows were committed. Cheap; call it after every commit that enqueued.
#[derive(Debug, Clone, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    pub fn wake(&self) {
        // A stored permit: a wake that arrives while the relay is busy is not lost.
        self.0.notify_one();
    }
}

/// How many rows wait to be sent and how old the oldest is (quarantined rows apart: they wait
/// for a person, not for the relay), refreshed by the relay.
#[derive(Debug, Clone, Default)]
pub struct OutboxBacklog {
    pending: Arc<AtomicU64>,
}

impl OutboxBacklog {
    /// Unsent rows at the last count (at most one poll interval old).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts unsent rows now (and quarantined ones, for their gauge).
    pub async fn refresh(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let (count, oldest_age, quarantined): (i64, Option<f64>, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE quarantined_at IS NULL),
                    extract(epoch FROM now() - min(created_at) FILTER (WHERE quarantined_at IS NULL))::float8,
                    count(*) FILTER (WHERE quarantined_at IS NOT NULL)
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let count = u64::try_from(count).unwrap_or(0);
        self.pending.store(count, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::OUTBOX_PENDING).set(count as f64);
        metrics::gauge!(crate::metrics::OUTBOX_OLDEST_AGE).set(oldest_age.unwrap_or(0.0));
        metrics::gauge!(crate::metrics::OUTBOX_QUARANTINED).set(quarantined as f64);
        Ok(count)
    }
}

/// Settings of the outbox relay every service runs (see [`crate::messaging::outbox`]).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `OUTBOX_BATCH_SIZE`: rows claimed and published per round trip.
    pub batch_size: u32,
    /// `OUTBOX_POLL_INTERVAL`: how often the relay looks for rows nobody woke it for
    /// (rows left by a crashed replica, or written by another process).
    pub poll_interval: Duration,
    /// `OUTBOX_RETRY_MAX`: the longest pause between attempts while NATS is unreachable.
    pub retry_max: Duration,
    /// `OUTBOX_RETENTION`: how long sent rows are kept for inspection before they are pruned.
    pub retention: Duration,
    /// `OUTBOX_QUARANTINE_AFTER`: a row the broker keeps refusing with a permanent error (no
    /// stream, too large) for this long is quarantined (see [`crate::messaging::outbox`]).
    pub quarantine_after: Duration,
    /// `PROCESSED_MESSAGES_RETENTION`: how long a consumer remembers the IDs it processed (see
    /// [`crate::messaging::retention`]). At least `UNPROCESSED_STREAM_MAX_AGE`.
    pub processed_retention: Duration,
    /// `PRUNE_INTERVAL`: how often rows past their retention are deleted.
    pub prune_interval: Duration,
}

impl RelaySettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let processed_retention =
            env.duration("PROCESSED_MESSAGES_RETENTION", Duration::from_secs(30 * 24 * 3600))?;
        let unprocessed_max_age =
            env.duration("UNPROCESSED_STREAM_MAX_AGE", NatsConfig::DEFAULT_UNPROCESSED_MAX_AGE)?;
        if processed_retention < unprocessed_max_age {
            return Err(ConfigError::new(
                "PROCESSED_MESSAGES_RETENTION",
                &env.string("PROCESSED_MESSAGES_RETENTION", ""),
                format!(
                    "must be at least UNPROCESSED_STREAM_MAX_AGE ({unprocessed_max_age:?}): a dead letter captured from there can be replayed"
                ),
            ));
        }
        let prune_interval = env.duration("PRUNE_INTERVAL", Duration::from_secs(10))?;
        if prune_interval.is_zero() {
            return Err(ConfigError::new(
                "PRUNE_INTERVAL",
                &env.string("PRUNE_INTERVAL", ""),
                "must be longer than zero",
            ));
        }
        Ok(Self {
            batch_size: env.number("OUTBOX_BATCH_SIZE", 256, 1..=5_000)?,
            poll_interval: env.duration("OUTBOX_POLL_INTERVAL", Duration::from_secs(1))?,
            retry_max: env.duration("OUTBOX_RETRY_MAX", Duration::from_secs(5))?,
            retention: env.duration("OUTBOX_RETENTION", Duration::from_secs(24 * 3600))?,
            quarantine_after: env.duration("OUTBOX_QUARANTINE_AFTER", Duration::from_secs(300))?,
            processed_retention,
            prune_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::{
        self,
        context::{PublishError, PublishErrorKind},
    };

    use super::*;

    fn api_error(err_code: u64) -> PublishError {
        let error: jetstream::Error = serde_json::from_value(
            serde_json::json!({"code": 400, "err_code": err_code, "description": "refused"}),
        )
        .expect("a JetStream API error");
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    #[test]
    fn refusals_that_sending_again_cannot_cure_are_permanent_and_the_rest_transient() {
        for permanent in [
            PublishError::new(PublishErrorKind::StreamNotFound),
            PublishError::new(PublishErrorKind::MaxPayloadExceeded),
            api_error(10054), // message larger than the stream's max_message_size
        ] {
            assert!(is_permanent(&permanent), "{permanent}");
        }
        for transient in [
            PublishError::new(PublishErrorKind::TimedOut),
            PublishError::new(PublishErrorKind::BrokenPipe),
            PublishError::new(PublishErrorKind::MaxAckPending),
            api_error(10077), // stream full (discard new): backpressure, it drains
        ] {
            assert!(!is_permanent(&transient), "{transient}");
        }
    }

    #[test]
    fn processed_ids_are_kept_at_least_as_long_as_a_dead_letter_can_be_captured() {
        let err =
            RelaySettings::from_env(&Env::from_pairs([("PROCESSED_MESSAGES_RETENTION", "7d")])).unwrap_err();
        assert_eq!(err.variable, "PROCESSED_MESSAGES_RETENTION");
        let shorter = [("PROCESSED_MESSAGES_RETENTION", "7d"), ("UNPROCESSED_STREAM_MAX_AGE", "3d")];
        assert!(RelaySettings::from_env(&Env::from_pairs(shorter)).is_ok());
        let err = RelaySettings::from_env(&Env::from_pairs([("PRUNE_INTERVAL", "0s")])).unwrap_err();
        assert_eq!(err.variable, "PRUNE_INTERVAL");
    }
}
