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

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::{PgConnection, PgPool, types::Json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{config::RelaySettings, messages::OutgoingMessage, propagation, telemetry};

/// Inserts messages into the outbox inside the caller's transaction. One statement for any
/// number of messages.
pub async fn enqueue(conn: &mut PgConnection, messages: &[OutgoingMessage]) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut subjects = Vec::with_capacity(messages.len());
    let mut ids = Vec::with_capacity(messages.len());
    let mut dedupe_ids = Vec::with_capacity(messages.len());
    let mut headers = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for m in messages {
        subjects.push(m.subject.as_str());
        ids.push(m.message_id);
        dedupe_ids.push(m.dedupe_id.as_str());
        headers.push(Json(&m.headers));
        payloads.push(m.payload.as_slice());
    }
    sqlx::query(
        "INSERT INTO outbox (subject, message_id, dedupe_id, headers, payload)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[], $5::bytea[])",
    )
    .bind(&subjects)
    .bind(&ids)
    .bind(&dedupe_ids)
    .bind(&headers)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
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

fn sent_counter(subject: &str, error_type: Option<&'static str>) -> metrics::Counter {
    let mut labels =
        vec![("messaging_system", "nats".to_owned()), ("messaging_destination_name", subject.to_owned())];
    if let Some(error_type) = error_type {
        labels.push(("error_type", error_type.to_owned()));
    }
    metrics::counter!(crate::metrics::SENT_MESSAGES, &labels)
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox query failed")]
    Database(#[from] sqlx::Error),
    #[error("publishing to JetStream failed")]
    Publish(#[from] jetstream::context::PublishError),
}

/// JetStream API errors that sending the same message again cannot cure: larger than the
/// stream's `max_message_size` (10054), headers too large (10097), stream sealed (10109).
const PERMANENT_ERROR_CODES: [jetstream::ErrorCode; 3] = [
    jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
    jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
    jetstream::ErrorCode::STREAM_SEALED,
];

/// Whether the broker refused a message for good, rather than for now: no stream listens on its
/// subject (NATS "no responders"), it is larger than the server's `max_payload`, or JetStream
/// answered with one of [`PERMANENT_ERROR_CODES`]. Everything else (timeouts, a broken
/// connection, a full stream, too many acks pending) is transient.
pub fn is_permanent(err: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    match err.kind() {
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|api| PERMANENT_ERROR_CODES.contains(&api.error_code())),
        _ => false,
    }
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    subject: String,
    dedupe_id: String,
    headers: Json<std::collections::BTreeMap<String, String>>,
    payload: Vec<u8>,
}

/// Publishes committed outbox rows to JetStream. See the module docs.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    jetstream: jetstream::Context,
    settings: RelaySettings,
    waker: OutboxWaker,
    backlog: OutboxBacklog,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, jetstream: jetstream::Context, settings: RelaySettings) -> Self {
        Self { pool, jetstream, settings, waker: OutboxWaker::default(), backlog: OutboxBacklog::default() }
    }

    /// The handle writers use to wake this relay after they commit.
    pub fn waker(&self) -> OutboxWaker {
        self.waker.clone()
    }

    /// The backlog gauge this relay keeps up to date.
    pub fn backlog(&self) -> OutboxBacklog {
        self.backlog.clone()
    }

    /// Relays until `shutdown` is cancelled. Transient errors are logged and retried with a
    /// growing pause; a row refused for good is set aside (see the module docs).
    ///
    /// Also prunes the messaging tables ([`crate::retention`]): every service that has an
    /// outbox runs this relay, so every service's tables are pruned.
    pub async fn run(self, shutdown: CancellationToken) {
        // The backlog is counted on its own clock: while NATS is down a relay round can wait
        // seconds for PubAcks, and that is when the count matters most (it drives shedding).
        let pruner = crate::retention::Pruner::new(self.pool.clone(), self.settings.clone());
        tokio::join!(self.relay(&shutdown), self.count_backlog(&shutdown), pruner.run(shutdown.clone()));
    }

    async fn count_backlog(&self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.backlog.refresh(&self.pool).await {
                tracing::debug!(error = %err, "could not count the outbox backlog");
            }
            crate::shutdown::sleep_or_cancel(self.settings.poll_interval, shutdown).await;
        }
    }

    async fn relay(&self, shutdown: &CancellationToken) {
        let mut pause = Duration::ZERO;
        loop {
            let outcome = self.relay_batch().await;
            let wait = match outcome {
                // A full batch: there is probably more, go again at once.
                Ok(sent) if sent >= self.settings.batch_size as usize => {
                    pause = Duration::ZERO;
                    continue;
                }
                Ok(_) => {
                    pause = Duration::ZERO;
                    self.settings.poll_interval
                }
                Err(err) => {
                    pause = (pause * 2).clamp(Duration::from_millis(100), self.settings.retry_max);
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        retry_in = ?pause,
                        "outbox relay failed; rows stay in the outbox and will be retried"
                    );
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.waker.0.notified(), if pause.is_zero() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims, publishes and marks one batch. Returns how many rows it claimed.
    pub async fn relay_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, subject, dedupe_id, headers, payload FROM outbox
             WHERE sent_at IS NULL AND quarantined_at IS NULL AND (retry_at IS NULL OR retry_at <= now())
             ORDER BY id LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(self.settings.batch_size))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // First await of a JetStream publish: the message is handed to the connection.
        let started = Instant::now();
        let mut in_flight = Vec::with_capacity(rows.len());
        let mut failures = Failures::default();
        for row in &rows {
            let mut headers = crate::messages::nats_headers(&row.headers, &row.dedupe_id);
            let message_id = row.headers.get(crate::messages::headers::ID).map_or("", String::as_str);
            // One PRODUCER span per message, in the message's own trace: its parent is the
            // context captured when the row was written (the HTTP request, the consumer's
            // attempt), and its own context goes out with the message, so consumers are its
            // children.
            let span = telemetry::publish_span(&row.subject, message_id);
            span.set_parent(propagation::extract(Some(&headers))).ok();
            propagation::inject(&span.context(), &mut headers);
            let message = PublishMessage::build().payload(row.payload.clone().into()).headers(headers);
            match self.jetstream.send_publish(row.subject.clone(), message).await {
                Ok(ack) => in_flight.push((row, ack, span)),
                // Keep going: one row the server refuses must not hold up the others.
                Err(err) => failures.record(row, &span, err),
            }
        }
        // Second await: the stream has stored it (or recognised a duplicate). Only then is the
        // row sent. All acks are awaited together: each one's timeout starts when it is first
        // polled, so awaiting them in turn would add up the timeouts of acks lost in a disconnect.
        let (rows_in_flight, acks): (Vec<_>, Vec<_>) =
            in_flight.into_iter().map(|(row, ack, span)| ((row, span), ack)).unzip();
        let results = futures::future::join_all(acks.into_iter().map(|ack| ack.into_future())).await;
        let latency = started.elapsed().as_secs_f64();
        let mut sent = Vec::with_capacity(rows_in_flight.len());
        for ((row, span), result) in rows_in_flight.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    sent.push(row.id);
                    sent_counter(&row.subject, None).increment(1);
                    metrics::histogram!(
                        crate::metrics::OPERATION_DURATION,
                        "messaging_system" => "nats",
                        "messaging_operation_name" => "publish",
                        "messaging_destination_name" => row.subject.clone(),
                    )
                    .record(latency);
                }
                Err(err) => failures.record(row, &span, err),
            }
        }
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        if !failures.refused.is_empty() {
            self.set_aside(&mut tx, &failures.refused).await?;
        }
        tx.commit().await?;

        tracing::debug!(sent = sent.len(), claimed = rows.len(), "relayed outbox rows");
        match failures.transient {
            Some(err) => Err(err.into()),
            None => Ok(rows.len()),
        }
    }

    /// Records the broker's permanent refusal of these rows: each is tried again after
    /// `retry_max`, and quarantined once it has been refused for `quarantine_after`.
    async fn set_aside(
        &self,
        tx: &mut PgConnection,
        refused: &[(&OutboxRow, String)],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = refused.iter().map(|(row, _)| row.id).collect();
        let errors: Vec<&str> = refused.iter().map(|(_, error)| error.as_str()).collect();
        let quarantined: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
            "UPDATE outbox SET
                 last_error = refused.error,
                 first_refused_at = coalesce(first_refused_at, now()),
                 retry_at = now() + make_interval(secs => $3),
                 quarantined_at = CASE WHEN coalesce(first_refused_at, now()) <= now() - make_interval(secs => $4)
                                       THEN now() END
             FROM unnest($1::int8[], $2::text[]) AS refused (id, error)
             WHERE outbox.id = refused.id
             RETURNING CASE WHEN outbox.quarantined_at IS NOT NULL THEN outbox.id END",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(self.settings.retry_max.as_secs_f64())
        .bind(self.settings.quarantine_after.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect();
        for (row, error) in refused.iter().filter(|(row, _)| quarantined.contains(&row.id)) {
            tracing::error!(
                row = row.id,
                subject = %row.subject,
                dedupe_id = %row.dedupe_id,
                error = %error,
                "outbox row quarantined: the broker refuses it for good; fix the cause, then release it"
            );
        }
        Ok(())
    }
}

/// The rows of one round that were not sent: the first transient error (which fails the round),
/// and the rows refused for good, with the broker's reason.
#[derive(Default)]
struct Failures<'a> {
    transient: Option<jetstream::context::PublishError>,
    refused: Vec<(&'a OutboxRow, String)>,
}

impl<'a> Failures<'a> {
    fn record(&mut self, row: &'a OutboxRow, span: &tracing::Span, err: jetstream::context::PublishError) {
        let permanent = is_permanent(&err);
        let error_type = if permanent { "refused" } else { "publish_failed" };
        telemetry::record_error(span, error_type, &err.to_string());
        sent_counter(&row.subject, Some(error_type)).increment(1);
        span.in_scope(
            || tracing::warn!(row = row.id, error = %err, permanent, "could not publish outbox row"),
        );
        if permanent {
            self.refused.push((row, err.to_string()));
        } else {
            self.transient.get_or_insert(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

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
}
