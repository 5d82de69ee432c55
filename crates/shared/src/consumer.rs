//! The idempotent consumer: at-least-once delivery made safe.
//!
//! JetStream delivers every message *at least* once: a worker that crashes before acknowledging
//! gets its messages redelivered to another, and a publisher that retries may store a message
//! twice. Exactly-once delivery is not on offer, so exactly-once *effects* are built here:
//!
//! 1. Pull a batch of messages (several processes share one durable consumer: a work queue).
//!    Pull only when ready: wait for one message, then take whatever else is already there, up
//!    to the batch size. Nothing is prefetched, so nothing waits in this process's buffers
//!    while its ack timer runs.
//! 2. [`Handler::prepare`] each one without I/O: decode it, or decide it must be retried or is
//!    poison.
//! 3. In **one transaction**: insert the logical IDs (`ce-id`) into `processed_messages` with
//!    `ON CONFLICT DO NOTHING RETURNING`. IDs that come back are new; the others were applied
//!    before: duplicates. [`Handler::apply`] applies only the new ones, writing any outcome events
//!    to the outbox in the same transaction.
//! 4. Commit, **then** acknowledge. A crash before the commit means redelivery, never loss; a
//!    crash after it means a redelivery that step 3 recognises as a duplicate.
//!
//! A batch shares one commit (the expensive part of a Postgres write), so throughput scales with
//! batch size while each message keeps its own all-or-nothing effect.
//!
//! While a batch is being applied, the messages in hand are kept alive with "in progress" acks,
//! so a slow transaction does not get them redelivered to another worker.
//!
//! Failures: a message whose attempt fails is simply **not acknowledged**. JetStream redelivers
//! it when its ack wait runs out, and the consumer's `BackOff` list makes each wait longer
//! (1 s, 2 s, 4 s, 8 s by default): one retry schedule, the same for a failed attempt and for a
//! worker that crashed or hung. (A nak would need a delay of its own, and JetStream adds a
//! nak's delay to the BackOff step rather than replacing it.) After `max_deliver` attempts the
//! message is given up on, by whoever the settings say ([`GivesUp`]): JetStream, which emits a
//! MAX_DELIVERIES advisory that the dead-letter service captures (the last attempt's error is
//! published beside it), or the consumer itself, which copies the message to the dead-letter
//! stream and terminates it. A poison message, which no retry can fix, is copied and
//! terminated at once.
//!
//! If Postgres is down, in any way ([`db::is_unavailable`]: unreachable, read-only, out of disk,
//! too slow), the batch is left unacknowledged and the consumer **stops pulling** until Postgres
//! commits a probe write again, so an outage costs each message at most one delivery attempt.
//!
//! Every wait is bounded: a batch's work may keep its messages "in progress" for at most
//! `max_in_progress` (what is not done by then is left for redelivery), a row lock held by
//! someone else fails only the message that needs it (Postgres's `lock_timeout`, then that
//! message is retried alone), and a pull that fails (the durable consumer was deleted, the
//! stream re-created, NATS is away) is retried with a growing pause and the consumer is declared
//! again if it is gone.
//!
//! Acknowledgements go out as soon as the commit is done, before any slower work (dead-letter
//! copies, last-error notes). On a message's last allowed delivery the ack is confirmed by the
//! server (a "double ack"): there, a lost ack would not bring the message back but get it
//! dead-lettered although its work is committed.

use std::{
    collections::HashSet,
    fmt::Debug,
    future::Future,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::PullConsumer, message::PublishMessage},
};
use bytes::Bytes;
use opentelemetry::trace::TraceContextExt;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    config::{ConsumerSettings, GivesUp},
    db,
    messages::{
        Envelope,
        dead_letter::{self, GAVE_UP_SUBJECT, LAST_ERROR_SUBJECT, POISON_SUBJECT},
        headers,
    },
    outbox::OutboxWaker,
    propagation,
    puller::{NATS_REQUEST_TIMEOUT, Puller},
    telemetry,
};

/// One delivery of a message, with what the consumer needs to know about it.
#[derive(Debug)]
pub struct Delivery {
    pub message: jetstream::Message,
    /// The CloudEvents attributes; `envelope.id` is the idempotency key.
    pub envelope: Envelope,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub attempt: u64,
    pub stream_sequence: u64,
    /// The span of this delivery attempt, child of the context the message carries.
    pub span: tracing::Span,
}

/// A new message being applied, with the span of its delivery: work done for this message
/// (outcome events, statements) belongs under that span, in the message's own trace.
#[derive(Debug)]
pub struct Incoming<'a, M> {
    pub message: &'a M,
    pub span: &'a tracing::Span,
}

/// What [`Handler::prepare`] decides about a delivery before any database work.
#[derive(Debug)]
pub enum Verdict<M> {
    /// Decoded; apply it (unless it is a duplicate).
    Process(M),
    /// This attempt fails; try again after a pause.
    Retry(String),
    /// Cannot be processed, however often it is retried.
    Poison(String),
    /// Not meant for this consumer (for example an event type it does not know, which a newer
    /// publisher may add): acknowledged and counted, nothing changed.
    Ignore(String),
}

/// The service-specific part of a consumer.
pub trait Handler: Send + Sync + 'static {
    /// A decoded message.
    type Message: Send + Sync;
    /// What applying one message did, for logs, metrics and tests.
    type Outcome: Send + Debug;

    /// Decodes a delivery and decides whether to process it. Must not do I/O.
    fn prepare(&self, delivery: &Delivery) -> Verdict<Self::Message>;

    /// The `outcome` label of an applied message in metrics (e.g. `reserved`, `rejected`).
    fn outcome_label(_outcome: &Self::Outcome) -> &'static str {
        "applied"
    }

    /// Applies messages that have not been applied before, inside the batch's transaction.
    /// Returns one outcome per message, in order. May be called again with the same messages
    /// if the transaction hit a deadlock and was rolled back.
    fn apply(
        &self,
        tx: &mut PgConnection,
        messages: &[Incoming<'_, Self::Message>],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, sqlx::Error>> + Send;
}

/// What happened to one delivery.
#[derive(Debug)]
pub enum Disposition<O> {
    /// Applied in this batch's transaction, then acknowledged.
    Applied(O),
    /// Its logical ID was already recorded: acknowledged, nothing changed.
    Duplicate,
    /// This attempt failed: not acknowledged, redelivered after `delay` (the BackOff step).
    Retry { reason: String, delay: Duration },
    /// Unreadable: copied to the dead-letter stream with its reason, then terminated.
    Poison { reason: String },
    /// Not for this consumer: acknowledged, nothing changed.
    Ignored { reason: String },
}

impl<O> Disposition<O> {
    /// Whether this delivery is done with (its work committed, or nothing to do): it is
    /// acknowledged at once.
    fn is_settled_by_ack(&self) -> bool {
        matches!(self, Self::Applied(_) | Self::Duplicate | Self::Ignored { .. })
    }
}

#[derive(Debug)]
pub struct Processed<O> {
    pub stream_sequence: u64,
    pub message_id: Option<Uuid>,
    pub disposition: Disposition<O>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("Postgres is unavailable; the batch was left unacknowledged for redelivery")]
    DatabaseUnavailable(#[source] sqlx::Error),
}

/// Runs a [`Handler`] over a durable pull consumer. See the module docs.
#[derive(Debug)]
pub struct IdempotentConsumer<H> {
    puller: Puller,
    pool: PgPool,
    handler: H,
    settings: ConsumerSettings,
    outbox: Option<OutboxWaker>,
}

impl<H: Handler> IdempotentConsumer<H> {
    pub fn new(
        jetstream: jetstream::Context,
        consumer: PullConsumer,
        pool: PgPool,
        handler: H,
        settings: ConsumerSettings,
    ) -> Self {
        Self { puller: Puller::new(jetstream, consumer, &settings), pool, handler, settings, outbox: None }
    }

    /// Wake this outbox relay after every commit (the handler writes outcome events).
    pub fn with_outbox(mut self, waker: OutboxWaker) -> Self {
        self.outbox = Some(waker);
        self
    }

    /// Pulls and processes batches until `shutdown` is cancelled. The batch in hand when it is
    /// cancelled is finished and acknowledged first (see [`Puller::next_batch`] for a pull in
    /// flight).
    pub async fn run(mut self, shutdown: CancellationToken) {
        while let Some(messages) = self.puller.next_batch(&shutdown).await {
            if let Err(ConsumerError::DatabaseUnavailable(err)) = self.process(messages).await {
                tracing::warn!(
                    consumer = %self.settings.name,
                    error = %err,
                    "Postgres is unavailable: stopped pulling until it is back"
                );
                // Nothing is pulled meanwhile: queued messages stay in the stream and keep
                // their remaining delivery attempts.
                self.wait_for_database(&shutdown).await;
            }
        }
    }

    /// Processes one batch of received messages: prepare, apply in one transaction, commit,
    /// then acknowledge. Public so tests can drive the consumer one batch at a time.
    ///
    /// Tracing: each delivery gets its own CONSUMER span, whose parent is the context in the
    /// message's headers, so each order's trace stays one tree. The batch's transaction is one
    /// span under a batch span that *links* to every message it carries (a span has one parent;
    /// a batch serves many traces).
    pub async fn process(
        &self,
        received: Vec<jetstream::Message>,
    ) -> Result<Vec<Processed<H::Outcome>>, ConsumerError> {
        let started = std::time::Instant::now();
        metrics::histogram!(
            crate::metrics::BATCH_SIZE,
            "messaging_consumer_group_name" => self.settings.name.clone(),
        )
        .record(received.len() as f64);
        let batch_span = tracing::info_span!(
            "process batch",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.consumer.group.name = %self.settings.name,
            messaging.batch.message_count = received.len(),
        );
        let mut to_apply: Vec<(Delivery, H::Message)> = Vec::new();
        let mut done: Vec<(Delivery, Disposition<H::Outcome>)> = Vec::new();

        for message in received {
            let (attempt, stream_sequence) = match message.info() {
                Ok(info) => (u64::try_from(info.delivered).unwrap_or(1), info.stream_sequence),
                Err(_) => (1, 0),
            };
            let parent = propagation::extract(message.headers.as_ref());
            batch_span.add_link(parent.span().span_context().clone());
            let ce_id =
                message.headers.as_ref().and_then(|h| h.get(headers::ID)).map(|v| v.as_str().to_owned());
            let span = telemetry::process_span(
                &message.subject,
                ce_id.as_deref().unwrap_or(""),
                &self.settings.name,
                attempt,
                stream_sequence,
            );
            span.set_parent(parent).ok();
            let (envelope, unreadable) = match Envelope::from_headers(message.headers.as_ref()) {
                Ok(envelope) => (envelope, None),
                Err(err) => (Envelope::unknown(), Some(err)),
            };
            let delivery = Delivery { message, envelope, attempt, stream_sequence, span };
            let verdict = match unreadable {
                None => delivery.span.in_scope(|| self.handler.prepare(&delivery)),
                Some(err) => Verdict::Poison(err.to_string()),
            };
            match verdict {
                Verdict::Process(decoded) => to_apply.push((delivery, decoded)),
                Verdict::Retry(reason) => {
                    let delay = self.settings.delay_after(attempt);
                    done.push((delivery, Disposition::Retry { reason, delay }));
                }
                Verdict::Poison(reason) => done.push((delivery, Disposition::Poison { reason })),
                Verdict::Ignore(reason) => done.push((delivery, Disposition::Ignored { reason })),
            }
        }

        let applied = {
            // While the transaction runs (it may wait on locks or on a reconnecting pool), tell
            // JetStream the messages in hand are being worked on, so none is redelivered to
            // another worker meanwhile.
            let in_hand =
                to_apply.iter().map(|(d, _)| &d.message).chain(done.iter().map(|(d, _)| &d.message));
            let work = self.apply(&to_apply).instrument(batch_span.clone());
            keep_alive(work, in_hand, self.settings.backoff[0]).await
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(err) => {
                // Nothing was committed. The messages in hand are left unacknowledged: JetStream
                // hands them out again after their BackOff step, by when Postgres may be back.
                for (delivery, _) in &to_apply {
                    telemetry::record_error(&delivery.span, "database_unavailable", &err.to_string());
                }
                self.settle_all(&done).await;
                return Err(ConsumerError::DatabaseUnavailable(err));
            }
        };
        if let Some(waker) = &self.outbox
            && applied.iter().any(|d| matches!(d, Disposition::Applied(_)))
        {
            waker.wake();
        }

        // The transaction is committed: only now acknowledge.
        done.extend(to_apply.into_iter().map(|(delivery, _)| delivery).zip(applied));
        self.settle_all(&done).await;
        let report = done
            .into_iter()
            .map(|(delivery, disposition)| {
                self.count(&delivery, &disposition, started.elapsed());
                Processed {
                    stream_sequence: delivery.stream_sequence,
                    message_id: (!delivery.envelope.id.is_nil()).then_some(delivery.envelope.id),
                    disposition,
                }
            })
            .collect();
        Ok(report)
    }

    /// Settles a batch: every acknowledgement first, all at once, then the slower work (copies
    /// and notes sent to the dead-letter stream, each waiting for its PubAck). Committed
    /// messages must not wait behind that work: unacknowledged past their ack wait, they
    /// would be delivered again.
    async fn settle_all(&self, done: &[(Delivery, Disposition<H::Outcome>)]) {
        let (acks, rest): (Vec<_>, Vec<_>) = done.iter().partition(|(_, d)| d.is_settled_by_ack());
        futures::future::join_all(acks.into_iter().map(|(delivery, d)| self.settle(delivery, d))).await;
        futures::future::join_all(rest.into_iter().map(|(delivery, d)| self.settle(delivery, d))).await;
    }

    /// Records the batch's IDs and applies the new messages in one transaction, retrying on
    /// deadlocks. If the batch fails for another reason, each message is tried alone, so one
    /// message the database refuses (or whose rows someone else holds locked) cannot sink the
    /// others. All of it within `max_in_progress`: what is not done by then is left for
    /// redelivery.
    async fn apply(
        &self,
        batch: &[(Delivery, H::Message)],
    ) -> Result<Vec<Disposition<H::Outcome>>, sqlx::Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.settings.max_in_progress;
        let err = match self.apply_before(deadline, batch).await {
            Ok(dispositions) => return Ok(dispositions),
            Err(err) if db::is_unavailable(&err) => return Err(err),
            Err(err) => err,
        };
        if let [(delivery, _)] = batch {
            return Ok(vec![self.refused(delivery, &err)]);
        }
        tracing::warn!(error = %err, size = batch.len(), "batch failed; applying its messages one by one");
        let mut dispositions = Vec::with_capacity(batch.len());
        for one in batch.chunks(1) {
            if Instant::now() >= deadline {
                dispositions.push(Disposition::Retry {
                    reason: "not tried: the batch ran out of time".to_owned(),
                    delay: self.settings.delay_after(one[0].0.attempt),
                });
                continue;
            }
            match self.apply_before(deadline, one).await {
                Ok(mut applied) => dispositions.append(&mut applied),
                Err(err) if db::is_unavailable(&err) => return Err(err),
                Err(err) => dispositions.push(self.refused(&one[0].0, &err)),
            }
        }
        Ok(dispositions)
    }

    /// One transaction, given up at `deadline`. A server that has not answered by then counts as
    /// unavailable (a timed-out I/O error): nothing else bounds a wait on a host that vanished.
    async fn apply_before(
        &self,
        deadline: Instant,
        batch: &[(Delivery, H::Message)],
    ) -> Result<Vec<Disposition<H::Outcome>>, sqlx::Error> {
        match tokio::time::timeout_at(deadline.into(), self.apply_in_transaction(batch)).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("Postgres did not finish the transaction within {:?}", self.settings.max_in_progress),
            ))),
        }
    }

    /// A message the database refused: retried after a pause, like any failed attempt.
    fn refused(&self, delivery: &Delivery, err: &sqlx::Error) -> Disposition<H::Outcome> {
        Disposition::Retry {
            reason: format!("database refused the message: {err}"),
            delay: self.settings.delay_after(delivery.attempt),
        }
    }

    async fn apply_in_transaction(
        &self,
        batch: &[(Delivery, H::Message)],
    ) -> Result<Vec<Disposition<H::Outcome>>, sqlx::Error> {
        let mut ids: Vec<Uuid> = batch.iter().map(|(d, _)| d.envelope.id).collect();
        ids.sort_unstable(); // One lock order for every worker: no deadlocks between batches.
        ids.dedup();

        let mut tries = 0;
        loop {
            tries += 1;
            let transaction = async {
                let mut tx = self.pool.begin().await?;
                let new_ids: HashSet<Uuid> = sqlx::query_scalar(
                    "INSERT INTO processed_messages (consumer, message_id, processed_by)
                     SELECT $1, id, $3 FROM unnest($2::uuid[]) AS id
                     ON CONFLICT DO NOTHING
                     RETURNING message_id",
                )
                .bind(&self.settings.name)
                .bind(&ids)
                .bind(&self.settings.instance)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();

                // The first copy of a new ID is applied; any other copy is a duplicate.
                let mut first_seen = HashSet::new();
                let is_new: Vec<bool> = batch
                    .iter()
                    .map(|(d, _)| new_ids.contains(&d.envelope.id) && first_seen.insert(d.envelope.id))
                    .collect();
                let fresh: Vec<Incoming<'_, H::Message>> = batch
                    .iter()
                    .zip(&is_new)
                    .filter(|(_, new)| **new)
                    .map(|((delivery, message), _)| Incoming { message, span: &delivery.span })
                    .collect();
                let outcomes = self.handler.apply(&mut tx, &fresh).await?;
                assert_eq!(outcomes.len(), fresh.len(), "Handler::apply must return one outcome per message");
                tx.commit().await?;
                let mut outcomes = outcomes.into_iter();
                let mut dispositions = Vec::with_capacity(batch.len());
                for new in is_new {
                    dispositions.push(match new {
                        true => outcomes.next().map_or(Disposition::Duplicate, Disposition::Applied),
                        false => Disposition::Duplicate,
                    });
                }
                Ok::<_, sqlx::Error>(dispositions)
            }
            .instrument(telemetry::db_span("transaction"));
            match transaction.await {
                Ok(dispositions) => return Ok(dispositions),
                Err(err) if db::is_retryable_conflict(&err) && tries < 3 => {
                    tracing::debug!(error = %err, "transaction conflict; retrying the batch");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Tells JetStream what became of a delivery, and ends its span with the outcome.
    async fn settle(&self, delivery: &Delivery, disposition: &Disposition<H::Outcome>) {
        let consumer = &self.settings.name;
        let message = &delivery.message;
        let span = &delivery.span;
        match disposition {
            Disposition::Applied(outcome) => {
                span.record("outcome", format!("{outcome:?}"));
                self.ack(delivery).instrument(span.clone()).await;
            }
            Disposition::Duplicate => {
                span.record("outcome", "duplicate");
                self.ack(delivery).instrument(span.clone()).await;
            }
            Disposition::Ignored { reason } => {
                span.record("outcome", "ignored");
                span.in_scope(|| tracing::info!(%consumer, %reason, "message ignored"));
                self.ack(delivery).instrument(span.clone()).await;
            }
            Disposition::Retry { reason, delay } => {
                telemetry::record_error(span, "attempt_failed", reason);
                // Not acknowledged: JetStream redelivers it after `delay`, the next BackOff step.
                if !self.settings.is_last_attempt(delivery.attempt) {
                    span.in_scope(|| tracing::info!(%consumer, %reason, retry_in = ?delay, "attempt failed; will retry"));
                    return;
                }
                match self.settings.gives_up {
                    GivesUp::JetStream => {
                        span.in_scope(|| tracing::warn!(%consumer, %reason, gives_up_in = ?delay, "last attempt failed; JetStream will dead-letter the message"));
                        // Leave word of why, for the dead-letter record (the MAX_DELIVERIES
                        // advisory does not say).
                        self.publish_about(message, LAST_ERROR_SUBJECT, reason, Bytes::new())
                            .instrument(span.clone())
                            .await
                            .ok();
                    }
                    GivesUp::Consumer | GivesUp::Never => {
                        span.in_scope(|| tracing::error!(%consumer, stream_sequence = delivery.stream_sequence, %reason, "last attempt failed: copying the message to the dead-letter stream"));
                        self.copy_then_terminate(message, GAVE_UP_SUBJECT, reason)
                            .instrument(span.clone())
                            .await;
                    }
                }
            }
            Disposition::Poison { reason } => {
                telemetry::record_error(span, "poison", reason);
                span.in_scope(|| tracing::error!(%consumer, stream_sequence = delivery.stream_sequence, %reason, "poison message: copying it to the dead-letter stream"));
                self.copy_then_terminate(message, POISON_SUBJECT, reason).instrument(span.clone()).await;
            }
        }
    }

    /// Gives up on a message: stores a copy of it in the dead-letter stream, then terminates
    /// it. A work-queue stream deletes a terminated message, so it is terminated only once the
    /// copy is stored; if the copy fails, it is left unacknowledged and tried again on
    /// redelivery (a second copy is harmless: the dead-letter row is unique on stream and
    /// sequence).
    async fn copy_then_terminate(&self, message: &jetstream::Message, subject: &'static str, reason: &str) {
        let consumer = &self.settings.name;
        match self.publish_about(message, subject, reason, message.payload.clone()).await {
            Ok(()) => {
                if let Err(err) = terminate(message, reason).await {
                    tracing::warn!(%consumer, error = %err, "term failed; the message will be redelivered");
                }
            }
            Err(err) => {
                tracing::warn!(%consumer, error = %err, "could not store a copy of the message; not terminating it");
            }
        }
    }

    /// `messaging.client.consumed.messages` and `messaging.process.duration`, by outcome.
    fn count(&self, delivery: &Delivery, disposition: &Disposition<H::Outcome>, elapsed: Duration) {
        let outcome = match disposition {
            Disposition::Applied(outcome) => H::outcome_label(outcome),
            Disposition::Duplicate => "duplicate",
            Disposition::Retry { .. } => "failed",
            Disposition::Poison { .. } => "poison",
            Disposition::Ignored { .. } => "ignored",
        };
        let labels = [
            ("messaging_system", "nats".to_owned()),
            ("messaging_destination_name", delivery.message.subject.to_string()),
            ("messaging_consumer_group_name", self.settings.name.clone()),
            ("outcome", outcome.to_owned()),
        ];
        metrics::counter!(crate::metrics::CONSUMED_MESSAGES, &labels).increment(1);
        metrics::histogram!(crate::metrics::PROCESS_DURATION, &labels).record(elapsed.as_secs_f64());
    }

    async fn ack(&self, delivery: &Delivery) {
        let message = &delivery.message;
        let consumer = &self.settings.name;
        if !(self.settings.gives_up == GivesUp::JetStream && self.settings.is_last_attempt(delivery.attempt))
        {
            // Not waiting for the server's confirmation: if this ack is lost, the message comes
            // back and is recognised as a duplicate.
            if let Err(err) = message.ack().await {
                tracing::warn!(%consumer, error = %err, "ack failed; the message will be redelivered");
            }
            return;
        }
        // The last allowed delivery: a lost ack would not bring the message back, JetStream
        // would dead-letter it although its work is committed. Wait for the server to confirm.
        for _ in 0..3 {
            match tokio::time::timeout(NATS_REQUEST_TIMEOUT, message.double_ack()).await {
                Ok(Ok(())) => return,
                Ok(Err(err)) => {
                    tracing::warn!(%consumer, error = %err, "ack not confirmed; sending it again")
                }
                Err(_) => tracing::warn!(%consumer, "ack not confirmed in time; sending it again"),
            }
        }
        tracing::error!(
            %consumer,
            stream_sequence = delivery.stream_sequence,
            "could not confirm the ack of a committed message on its last delivery: it may be dead-lettered, and a replay will find it already applied"
        );
    }

    /// Publishes `payload` to a dead-letter subject with headers saying where `message` came
    /// from and why, and waits until JetStream has stored it.
    async fn publish_about(
        &self,
        message: &jetstream::Message,
        subject: &'static str,
        reason: &str,
        payload: Bytes,
    ) -> Result<(), async_nats::Error> {
        let info = message.info()?;
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
            // The original's broker headers (Nats-Msg-Id, …) do not belong to the copy.
            if !AsRef::<str>::as_ref(name).starts_with("Nats-") {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let one_line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        headers.insert(dead_letter::REASON, one_line.as_str());
        headers.insert(dead_letter::SOURCE_STREAM, info.stream);
        headers.insert(dead_letter::SOURCE_SEQUENCE, info.stream_sequence.to_string().as_str());
        headers.insert(dead_letter::SOURCE_SUBJECT, message.subject.as_str());
        headers.insert(dead_letter::CONSUMER, info.consumer);
        headers.insert(dead_letter::DELIVERIES, info.delivered.to_string().as_str());
        let dedupe = format!("{subject}:{}:{}:{}", info.stream, info.stream_sequence, info.delivered);
        let publish = PublishMessage::build().payload(payload).headers(headers).message_id(dedupe);
        message.context.send_publish(subject, publish).await?.await?;
        Ok(())
    }

    async fn wait_for_database(&self, shutdown: &CancellationToken) {
        db::wait_until_available(&self.pool, shutdown).await;
        if !shutdown.is_cancelled() {
            tracing::info!(consumer = %self.settings.name, "Postgres is back: pulling again");
        }
    }
}

/// Drives `work` to completion, sending "in progress" for `messages` every half ack wait.
async fn keep_alive<'a, T>(
    work: impl Future<Output = T>,
    messages: impl Iterator<Item = &'a jetstream::Message> + Clone,
    ack_wait: Duration,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + ack_wait / 2, ack_wait / 2);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticks.tick() => {
                for message in messages.clone() {
                    message.ack_with(AckKind::Progress).await.ok();
                }
            }
        }
    }
}

/// Terminates a message with a reason (`+TERM <reason>`, servers >= 2.10.4); async-nats has no
/// call that carries the reason, so the ack is published by hand to the message's reply subject.
async fn terminate(message: &jetstream::Message, reason: &str) -> Result<(), async_nats::Error> {
    let reply = message.reply.clone().ok_or("message has no reply subject")?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(200).collect();
    message.context.client().publish(reply, format!("+TERM {reason}").into()).await?;
    Ok(())
}
