//! The relay: publishes committed outbox rows to JetStream, pipelined, and marks them sent (the
//! how and why are in the [module docs above](super)).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::{PgConnection, PgPool, types::Json};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{OutboxBacklog, OutboxWaker, RelaySettings};
use crate::telemetry::{self, propagation};

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
    /// Seconds since the row was written, by the database's clock, when it was claimed.
    waited: f64,
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
    /// Also prunes the messaging tables ([`crate::messaging::retention`]): every service that has an
    /// outbox runs this relay, so every service's tables are pruned.
    pub async fn run(self, shutdown: CancellationToken) {
        // The backlog is counted on its own clock: while NATS is down a relay round can wait
        // seconds for PubAcks, and that is when the count matters most (it drives shedding).
        let pruner = crate::messaging::retention::Pruner::new(self.pool.clone(), self.settings.clone());
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
        // No bitmap scans in this transaction: the claim must walk `outbox_unsent` in `id` order
        // (see "The claim's plan" in the module docs). Sent with `BEGIN`: no extra round trip.
        let mut tx = self.pool.begin_with("BEGIN; SET LOCAL enable_bitmapscan = off").await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, subject, dedupe_id, headers, payload,
                    extract(epoch FROM now() - created_at)::float8 AS waited
             FROM outbox
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
            let mut headers = crate::messaging::envelope::nats_headers(&row.headers, &row.dedupe_id);
            let message_id = row.headers.get(contract::headers::ID).map_or("", String::as_str);
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
                    metrics::histogram!(
                        crate::metrics::OUTBOX_DELAY,
                        "messaging_destination_name" => row.subject.clone(),
                    )
                    .record(row.waited + latency);
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
