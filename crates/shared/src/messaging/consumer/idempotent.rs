//! The consumer's loop and its transaction: pull a batch, prepare each message, apply the new
//! ones in one transaction beside their processed IDs, commit (see the [module docs](super)).

use std::{
    collections::HashSet,
    future::Future,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use contract::headers;
use opentelemetry::trace::TraceContextExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{ConsumerError, ConsumerSettings, Delivery, Disposition, Handler, Incoming, Processed, Verdict};
use crate::{
    db,
    messaging::{envelope::Envelope, outbox::OutboxWaker, puller::Puller},
    telemetry::{self, propagation},
};

/// Runs a [`Handler`] over a durable pull consumer. See the module docs.
#[derive(Debug)]
pub struct IdempotentConsumer<H> {
    pub(super) puller: Puller,
    pub(super) pool: PgPool,
    pub(super) handler: H,
    pub(super) settings: ConsumerSettings,
    pub(super) outbox: Option<OutboxWaker>,
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
            let (attempt, stream_sequence, published) = match message.info() {
                Ok(info) => {
                    (u64::try_from(info.delivered).unwrap_or(1), info.stream_sequence, info.published)
                }
                Err(_) => (1, 0, chrono::Utc::now()),
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
            let delivery = Delivery { message, envelope, attempt, stream_sequence, published, span };
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
