//! Settling each message once its batch is done: acknowledge what was committed, copy poison
//! and given-up messages to the dead-letter stream before terminating them, leave failures
//! for redelivery (see the [module docs](super)).

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, message::PublishMessage},
};
use bytes::Bytes;
use tracing::Instrument;

use super::{Delivery, Disposition, GivesUp, Handler, IdempotentConsumer};
use crate::{messaging::puller::NATS_REQUEST_TIMEOUT, telemetry};
use contract::dead_letter::{self, GAVE_UP_SUBJECT, LAST_ERROR_SUBJECT, POISON_SUBJECT};

impl<H: Handler> IdempotentConsumer<H> {
    /// Settles a batch: every acknowledgement first, all at once, then the slower work (copies
    /// and notes sent to the dead-letter stream, each waiting for its PubAck). Committed
    /// messages must not wait behind that work: unacknowledged past their ack wait, they
    /// would be delivered again.
    pub(super) async fn settle_all(&self, done: &[(Delivery, Disposition<H::Outcome>)]) {
        let (acks, rest): (Vec<_>, Vec<_>) = done.iter().partition(|(_, d)| d.is_settled_by_ack());
        futures::future::join_all(acks.into_iter().map(|(delivery, d)| self.settle(delivery, d))).await;
        futures::future::join_all(rest.into_iter().map(|(delivery, d)| self.settle(delivery, d))).await;
    }

    /// Tells JetStream what became of a delivery, and ends its span with the outcome.
    pub(super) async fn settle(&self, delivery: &Delivery, disposition: &Disposition<H::Outcome>) {
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

    /// `messaging.client.consumed.messages` and `messaging.process.duration`, by outcome, and
    /// `messaging.consumer.delay.duration` for the messages whose work was committed.
    pub(super) fn count(
        &self,
        delivery: &Delivery,
        disposition: &Disposition<H::Outcome>,
        elapsed: Duration,
    ) {
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
        // How long the message waited, from the stream storing it to its work being committed
        // (the stream's clock against this one: on one machine, or NTP-synchronised ones).
        if let Disposition::Applied(_) = disposition {
            let waited = (chrono::Utc::now() - delivery.published).as_seconds_f64().max(0.0);
            metrics::histogram!(
                crate::metrics::CONSUMER_DELAY,
                "messaging_destination_name" => delivery.message.subject.to_string(),
                "messaging_consumer_group_name" => self.settings.name.clone(),
            )
            .record(waited);
        }
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
}

/// Terminates a message with a reason (`+TERM <reason>`, servers >= 2.10.4); async-nats has no
/// call that carries the reason, so the ack is published by hand to the message's reply subject.
async fn terminate(message: &jetstream::Message, reason: &str) -> Result<(), async_nats::Error> {
    let reply = message.reply.clone().ok_or("message has no reply subject")?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(200).collect();
    message.context.client().publish(reply, format!("+TERM {reason}").into()).await?;
    Ok(())
}
