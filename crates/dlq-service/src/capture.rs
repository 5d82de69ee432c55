//! Capture: turns what arrives on `orders_unprocessed` into `dead_letters` rows.
//!
//! Three kinds of message arrive there:
//!
//! - **MAX_DELIVERIES advisories** (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.orders_stream.<consumer>`):
//!   JetStream gave up on a message. An advisory is only a pointer (stream, consumer,
//!   `stream_seq`, deliveries), so the original, payload and headers, is read back from
//!   `orders_stream` by sequence. The row (and, for an order, an `order_events.dead_lettered`
//!   event in the outbox) is committed in one transaction, **then** the original is deleted from
//!   the work queue (which would otherwise keep a max-delivered message forever), **then** the
//!   advisory is acknowledged. A crash anywhere in between repeats the steps, harmlessly: the
//!   row is unique on stream and sequence.
//! - **Poison copies** (`orders_unprocessed.poison`): a consumer could not read a message, copied
//!   it here with the reason, and terminated the original.
//! - **Last errors** (`orders_unprocessed.last_error`): why a message's last attempt failed, sent
//!   just before JetStream gives up on it.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::PullConsumer, stream::DirectGetErrorKind},
};
use chrono::{DateTime, Utc};
use opentelemetry::trace::TraceContextExt;
use serde::Deserialize;
use shared::{
    db,
    messages::{self, OrderPlaced, dead_letter},
    outbox::OutboxWaker,
    propagation,
    puller::pull_batch,
    topology::UNPROCESSED_STREAM,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::store::{self, NewDeadLetter};

/// The advisory JetStream publishes when a message reached its consumer's `max_deliver`.
#[derive(Debug, Clone, Deserialize)]
pub struct MaxDeliveriesAdvisory {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: DateTime<Utc>,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

pub const MAX_DELIVERIES_TYPE: &str = "io.nats.jetstream.advisory.v1.max_deliver";
const ADVISORY_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.";

/// What capture did with one message of `orders_unprocessed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A new row.
    Recorded(Uuid),
    /// The row already existed (a redelivered or repeated advisory).
    AlreadyRecorded,
    /// A last error, kept for the row it belongs to.
    LastErrorNoted,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("NATS error")]
    Nats(#[from] async_nats::Error),
}

/// Records dead letters. See the module docs.
#[derive(Debug, Clone)]
pub struct Capture {
    pub pool: PgPool,
    pub jetstream: jetstream::Context,
    pub outbox: OutboxWaker,
}

impl Capture {
    /// Handles one message of `orders_unprocessed`. Errors are transient (the message is
    /// retried); anything unreadable is recorded, never dropped.
    pub async fn handle(&self, message: &jetstream::Message) -> Result<Captured, CaptureError> {
        let subject = message.subject.as_str();
        if subject.starts_with(ADVISORY_PREFIX) {
            match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Ok(advisory) if advisory.kind == MAX_DELIVERIES_TYPE => {
                    self.exhausted(&advisory, message.headers.as_ref()).await
                }
                _ => self.unrecognised(message, "unreadable MAX_DELIVERIES advisory").await,
            }
        } else if subject == dead_letter::POISON_SUBJECT {
            self.poison(message).await
        } else if subject == dead_letter::LAST_ERROR_SUBJECT {
            self.last_error(message).await
        } else {
            self.unrecognised(message, "unrecognised message on orders_unprocessed").await
        }
    }

    /// A message JetStream gave up on: read it back, record it, remove it from the work queue.
    async fn exhausted(
        &self,
        advisory: &MaxDeliveriesAdvisory,
        link: Option<&HeaderMap>,
    ) -> Result<Captured, CaptureError> {
        let sequence = i64::try_from(advisory.stream_seq).unwrap_or(i64::MAX);
        let stream = self.jetstream.get_stream(&advisory.stream).await.map_err(async_nats::Error::from)?;
        let original = match stream.direct_get(advisory.stream_seq).await {
            Ok(original) => Some(original),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => None,
            Err(err) => return Err(CaptureError::Nats(err.into())),
        };
        let mut letter = NewDeadLetter {
            source_stream: advisory.stream.clone(),
            source_sequence: sequence,
            consumer: Some(advisory.consumer.clone()),
            deliveries: i32::try_from(advisory.deliveries).ok(),
            failed_at: advisory.timestamp,
            reason: format!("delivery limit reached: {} attempts failed", advisory.deliveries),
            kind: "exhausted",
            ..Default::default()
        };
        match &original {
            Some(original) => {
                letter.subject = Some(original.subject.to_string());
                letter.headers = header_map(&original.headers);
                letter.message_id = ce_id(&original.headers);
                letter.order_id = order_id(&original.payload);
                letter.payload = Some(original.payload.to_vec());
                letter.first_seen_at = Some(original.time);
            }
            None => {
                letter.reason = "original message already gone from the stream".to_owned();
                letter.kind = "gone";
            }
        }
        letter.trace_id = original.as_ref().and_then(|o| propagation::trace_id(Some(&o.headers)));
        let span = capture_span(original.as_ref().map(|o| &o.headers), link);
        let captured = self.store(&letter).instrument(span).await?;
        if original.is_some() {
            // Committed: now the work queue may forget it. If this fails, the advisory is
            // retried and finds its row already recorded.
            stream.delete_message(advisory.stream_seq).await.map_err(async_nats::Error::from)?;
        }
        Ok(captured)
    }

    /// A copy of a message a consumer could not read, stored before it terminated the original.
    async fn poison(&self, message: &jetstream::Message) -> Result<Captured, CaptureError> {
        let headers = message.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let own_sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        let published = message.info().map(|i| i.published).unwrap_or_else(|_| Utc::now());
        let mut original_headers = header_map(&headers);
        original_headers.retain(|name, _| !name.starts_with("Dlq-"));
        let letter = NewDeadLetter {
            kind: "poison",
            source_stream: get(dead_letter::SOURCE_STREAM).unwrap_or_else(|| UNPROCESSED_STREAM.to_owned()),
            source_sequence: get(dead_letter::SOURCE_SEQUENCE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(i64::try_from(own_sequence).unwrap_or(i64::MAX)),
            subject: get(dead_letter::SOURCE_SUBJECT),
            message_id: ce_id(&headers),
            order_id: order_id(&message.payload),
            payload: Some(message.payload.to_vec()),
            headers: original_headers,
            consumer: get(dead_letter::CONSUMER),
            deliveries: get(dead_letter::DELIVERIES).and_then(|d| d.parse().ok()),
            reason: format!("unprocessable message: {}", get(dead_letter::REASON).unwrap_or_default()),
            last_error: get(dead_letter::REASON),
            first_seen_at: Some(published),
            failed_at: published,
            trace_id: propagation::trace_id(Some(&headers)),
        };
        // The copy carries the original's headers, trace context included.
        self.store(&letter).instrument(capture_span(Some(&headers), None)).await
    }

    async fn last_error(&self, message: &jetstream::Message) -> Result<Captured, CaptureError> {
        let headers = message.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let (Some(stream), Some(sequence), Some(error)) = (
            get(dead_letter::SOURCE_STREAM),
            get(dead_letter::SOURCE_SEQUENCE).and_then(|s| s.parse::<i64>().ok()),
            get(dead_letter::REASON),
        ) else {
            return self.unrecognised(message, "last-error note without its source").await;
        };
        let consumer = get(dead_letter::CONSUMER).unwrap_or_default();
        store::note_last_error(&self.pool, &stream, sequence, &consumer, &error).await?;
        Ok(Captured::LastErrorNoted)
    }

    /// Something capture cannot interpret: recorded as it is, keyed by its own place in
    /// `orders_unprocessed`, for a person to look at.
    async fn unrecognised(
        &self,
        message: &jetstream::Message,
        reason: &str,
    ) -> Result<Captured, CaptureError> {
        let info = message.info().map_err(|e| CaptureError::Nats(e.to_string().into()))?;
        let letter = NewDeadLetter {
            kind: "unrecognised",
            source_stream: UNPROCESSED_STREAM.to_owned(),
            source_sequence: i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
            subject: Some(message.subject.to_string()),
            payload: Some(message.payload.to_vec()),
            headers: message.headers.as_ref().map(header_map).unwrap_or_default(),
            reason: reason.to_owned(),
            failed_at: info.published,
            ..Default::default()
        };
        self.store(&letter).await
    }

    async fn store(&self, letter: &NewDeadLetter) -> Result<Captured, CaptureError> {
        let mut tx = self.pool.begin().await?;
        let inserted = store::record(&mut tx, letter).await?;
        tx.commit().await?;
        Ok(match inserted {
            Some(id) => {
                self.outbox.wake();
                metrics::counter!(store::CAPTURED, "kind" => letter.kind).increment(1);
                tracing::warn!(
                    dead_letter = %id,
                    stream = %letter.source_stream,
                    sequence = letter.source_sequence,
                    reason = %letter.reason,
                    "dead letter recorded"
                );
                Captured::Recorded(id)
            }
            None => Captured::AlreadyRecorded,
        })
    }

    /// Captures until `shutdown` is cancelled: pull a batch, handle each message, acknowledge
    /// it once handled. A message that could not be handled is left unacknowledged, so JetStream
    /// delivers it again after the consumer's BackOff step; while Postgres is unreachable
    /// nothing is pulled.
    pub async fn run(self, consumer: PullConsumer, batch_size: usize, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                batch = pull_batch(&consumer, batch_size) => batch,
            };
            let messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "could not pull from orders_unprocessed; retrying");
                    shared::shutdown::sleep_or_cancel(Duration::from_secs(1), &shutdown).await;
                    continue;
                }
            };
            let mut database_down = false;
            for message in messages {
                match self.handle(&message).await {
                    Ok(_) => {
                        message.ack().await.ok();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, subject = %message.subject, "capture failed; will retry");
                        if matches!(&err, CaptureError::Database(e) if db::is_unavailable(e)) {
                            // The rest of the batch would fail too: leave it for later.
                            database_down = true;
                            break;
                        }
                    }
                }
            }
            if database_down {
                db::wait_until_available(&self.pool, &shutdown).await;
            }
        }
    }
}

/// The span of capturing one dead letter. Its parent is the dead message's own context, so
/// the capture shows in the order's trace after the failed attempts; the message that brought
/// the news (the advisory) is a link, when it carries a context of its own.
fn capture_span(original: Option<&HeaderMap>, news: Option<&HeaderMap>) -> tracing::Span {
    let span = tracing::info_span!(
        "capture dead letter",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = UNPROCESSED_STREAM,
    );
    span.set_parent(propagation::extract(original)).ok();
    if let Some(news) = news {
        span.add_link(propagation::extract(Some(news)).span().span_context().clone());
    }
    span
}

/// Headers as a name → value map (the last value of a repeated header), without the broker's
/// own (`Nats-*`), which belong to the stored message, not to the message.
fn header_map(headers: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| !AsRef::<str>::as_ref(*name).starts_with("Nats-"))
        .filter_map(|(name, values)| Some((name.to_string(), values.last()?.as_str().to_owned())))
        .collect()
}

fn ce_id(headers: &HeaderMap) -> Option<Uuid> {
    messages::Envelope::from_headers(Some(headers)).ok().map(|e| e.id)
}

/// The order a payload is about, if it is an order at all.
fn order_id(payload: &[u8]) -> Option<Uuid> {
    messages::decode::<OrderPlaced>(payload).ok().map(|order| order.order_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advisory_as_the_server_sends_it_parses() {
        let json = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-11-22T10:00:00.123456789Z","stream":"orders_stream","consumer":"inventory-worker","stream_seq":42,"deliveries":5}"#;
        let advisory: MaxDeliveriesAdvisory = serde_json::from_slice(json).unwrap();
        assert_eq!(advisory.kind, MAX_DELIVERIES_TYPE);
        assert_eq!((advisory.stream_seq, advisory.deliveries), (42, 5));
        assert_eq!(advisory.consumer, "inventory-worker");
    }

    #[test]
    fn broker_headers_are_not_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "abc");
        headers.insert("ce-id", "0193f1b2-0000-7000-8000-000000000000");
        let map = header_map(&headers);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("ce-id"));
    }

    #[test]
    fn only_orders_have_an_order_id() {
        assert_eq!(order_id(b"not json"), None);
        assert_eq!(order_id(br#"{"version": 1, "something": "else"}"#), None);
    }
}
