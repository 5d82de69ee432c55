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

/// How many rows wait to be sent and how old the oldest is, refreshed by the relay.
#[derive(Debug, Clone, Default)]
pub struct OutboxBacklog {
    pending: Arc<AtomicU64>,
}

impl OutboxBacklog {
    /// Unsent rows at the last count (at most one poll interval old).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts unsent rows now.
    pub async fn refresh(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let (count, oldest_age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let count = u64::try_from(count).unwrap_or(0);
        self.pending.store(count, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::OUTBOX_PENDING).set(count as f64);
        metrics::gauge!(crate::metrics::OUTBOX_OLDEST_AGE).set(oldest_age.unwrap_or(0.0));
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

    /// Relays until `shutdown` is cancelled. Errors are logged and retried with a growing pause:
    /// the relay never gives up on a row.
    pub async fn run(self, shutdown: CancellationToken) {
        // The backlog is counted on its own clock: while NATS is down a relay round can wait
        // seconds for PubAcks, and that is when the count matters most (it drives shedding).
        tokio::join!(self.relay(&shutdown), self.count_backlog(&shutdown));
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
        let mut last_prune = Instant::now();
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
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        last_prune = Instant::now();
                        self.prune().await;
                    }
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
             WHERE sent_at IS NULL ORDER BY id LIMIT $1
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
        let mut first_error: Option<jetstream::context::PublishError> = None;
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
                Err(err) => {
                    telemetry::record_error(&span, "publish_failed", &err.to_string());
                    span.in_scope(
                        || tracing::warn!(row = row.id, error = %err, "could not publish outbox row"),
                    );
                    sent_counter(&row.subject, Some("publish_failed")).increment(1);
                    first_error.get_or_insert(err);
                }
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
                Err(err) => {
                    telemetry::record_error(&span, "publish_failed", &err.to_string());
                    sent_counter(&row.subject, Some("publish_failed")).increment(1);
                    first_error.get_or_insert(err);
                }
            }
        }
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;

        tracing::debug!(sent = sent.len(), claimed = rows.len(), "relayed outbox rows");
        match first_error {
            Some(err) => Err(err.into()),
            None => Ok(rows.len()),
        }
    }

    /// Deletes sent rows older than the retention period, a bounded number at a time.
    async fn prune(&self) {
        let result = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
                 LIMIT 10000)",
        )
        .bind(self.settings.retention.as_secs_f64())
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(rows = done.rows_affected(), "pruned sent outbox rows")
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not prune the outbox"),
        }
    }
}
