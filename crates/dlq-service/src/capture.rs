//! Capture: turns what arrives on `orders_unprocessed` into `dead_letters` rows.
//!
//! Four kinds of message arrive there:
//!
//! - **MAX_DELIVERIES advisories** (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`),
//!   for the consumers of both `orders_stream` and `order_events`: JetStream gave up on a
//!   message. An advisory is only a pointer (stream, consumer, `stream_seq`, deliveries), so the
//!   original, payload and headers, is read back by sequence. The row is committed, **then**
//!   (work queue only, see below) the original is deleted, **then** the advisory is
//!   acknowledged. A crash anywhere in between repeats the steps, harmlessly: the row is unique
//!   on stream and sequence.
//! - **Copies** of messages a consumer gave up on itself, with the reason, stored before it
//!   terminated the original: poison messages it could not read (`orders_unprocessed.poison`),
//!   and messages whose every attempt failed, from a consumer that has JetStream keep no
//!   delivery limit for it (`orders_unprocessed.gave_up`: the projection, see
//!   [`shared::messaging::consumer::GivesUp`]).
//! - **Last errors** (`orders_unprocessed.last_error`): why a message's last attempt failed, sent
//!   just before JetStream gives up on it.
//!
//! # Which advisories are believed
//! An advisory makes capture *delete* a message, so it is checked first (see [`vet`]): its
//! subject must name a stream of [`DEAD_LETTER_SOURCES`] and a consumer, and its body must be a
//! max-deliver advisory naming that same stream and consumer; for the work queue, the message
//! must also be one its consumer has delivered (`contradiction`). Anything else (a stray or forged
//! message) is recorded as `unrecognised` for a person to look at, and nothing is deleted.
//! Publishing on `$JS.EVENT.>` at all is for the server alone: NATS permissions keep clients out.
//!
//! # The two source streams differ
//! - `orders_stream` is a work queue: a max-delivered message would stay in it forever, so once
//!   its row is committed it is deleted. The dead message *is* the order, so the row also
//!   announces `order_events.dead_lettered` (in the same transaction): the order's status
//!   becomes `dead_lettered`, which is the truth about it.
//! - `order_events` is a limits stream with any number of readers: a message the projection
//!   gave up on (it sends a copy) is still good for the others, so it is **not** deleted. No `dead_lettered` event
//!   is announced either: the order's outcome did happen (it was reserved or rejected); what
//!   failed is order-api's *view* of it, and calling the order dead would be false. The order
//!   shows its last projected status (usually `pending`) while the dead letter, with its
//!   `order_id`, waits in review. Replaying it republishes the event to its subject with the
//!   same `ce-id`: the projection applies it, and other readers, idempotent on `ce-id` as every
//!   consumer here must be, ignore it.
//!
//! Capture also recovers what it cannot be told: advisories are best effort, and
//! [`crate::sweep`] finds the messages whose advisory never arrived.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, context::ConsumerInfoErrorKind, stream::RawMessageErrorKind},
};
use chrono::{DateTime, Utc};
use contract::{
    dead_letter,
    streams::{DEAD_LETTER_SOURCES, MAX_DELIVERIES_ADVISORY_PREFIX, ORDERS_STREAM, UNPROCESSED_STREAM},
};
use opentelemetry::trace::TraceContextExt;
use serde::Deserialize;
use shared::{
    db,
    messaging::{envelope, outbox::OutboxWaker, puller::Puller},
    telemetry::propagation,
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

/// Checks an advisory before capture acts on it (see the module docs): `Err` says why it is
/// not believed.
pub fn vet(subject: &str, payload: &[u8]) -> Result<MaxDeliveriesAdvisory, String> {
    let tokens = subject.strip_prefix(MAX_DELIVERIES_ADVISORY_PREFIX).unwrap_or_default();
    let Some((stream, consumer)) = tokens.split_once('.').filter(|(_, c)| !c.is_empty() && !c.contains('.'))
    else {
        return Err(format!("advisory subject {subject:?} does not name a stream and a consumer"));
    };
    if !DEAD_LETTER_SOURCES.contains(&stream) {
        return Err(format!("advisory for stream {stream:?}, which is not one this service captures"));
    }
    let advisory = serde_json::from_slice::<MaxDeliveriesAdvisory>(payload)
        .ok()
        .filter(|a| a.kind == MAX_DELIVERIES_TYPE)
        .ok_or_else(|| "unreadable MAX_DELIVERIES advisory".to_owned())?;
    if advisory.stream != stream || advisory.consumer != consumer {
        return Err(format!(
            "advisory body names {}/{} but its subject {stream}/{consumer}",
            advisory.stream, advisory.consumer
        ));
    }
    Ok(advisory)
}

/// What capture did with one message of `orders_unprocessed`: recorded a new dead-letter row,
/// found its row already there, or kept a last-error note for a row to come. Any of them means
/// the message is handled, and it is acknowledged; tests and logs tell them apart.
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
        if subject.starts_with(MAX_DELIVERIES_ADVISORY_PREFIX) {
            let advisory = match vet(subject, &message.payload) {
                Ok(advisory) => advisory,
                Err(why) => return self.unrecognised(message, &why).await,
            };
            match self.contradiction(&advisory).await? {
                Some(why) => self.unrecognised(message, &why).await,
                None => self.exhausted(&advisory, message.headers.as_ref(), None).await,
            }
        } else if subject == dead_letter::POISON_SUBJECT {
            self.copy(message, Copy::Poison).await
        } else if subject == dead_letter::GAVE_UP_SUBJECT {
            self.copy(message, Copy::GaveUp).await
        } else if subject == dead_letter::LAST_ERROR_SUBJECT {
            self.last_error(message).await
        } else {
            self.unrecognised(message, "unrecognised message on orders_unprocessed").await
        }
    }

    /// For the work queue, whose message capture is about to delete: an advisory naming a
    /// message its consumer has not even delivered yet is not believed. (A consumer that no
    /// longer exists cannot be asked; then the subject and body checks of [`vet`] stand.)
    async fn contradiction(&self, advisory: &MaxDeliveriesAdvisory) -> Result<Option<String>, CaptureError> {
        if advisory.stream != ORDERS_STREAM {
            return Ok(None);
        }
        let stream = self.jetstream.get_stream(ORDERS_STREAM).await.map_err(async_nats::Error::from)?;
        let info = match stream.consumer_info(&advisory.consumer).await {
            Ok(info) => info,
            Err(err) if matches!(err.kind(), ConsumerInfoErrorKind::NotFound) => return Ok(None),
            Err(err) => return Err(CaptureError::Nats(err.into())),
        };
        Ok((advisory.stream_seq > info.delivered.stream_sequence).then(|| {
            format!(
                "advisory names message {} of {ORDERS_STREAM}, which {} has not delivered yet",
                advisory.stream_seq, advisory.consumer
            )
        }))
    }

    /// A message JetStream gave up on: read it back, record it, and remove it from the stream
    /// if it is the work queue. `found_by` replaces the reason when the advisory was not
    /// received but reconstructed (by the sweep).
    pub(crate) async fn exhausted(
        &self,
        advisory: &MaxDeliveriesAdvisory,
        link: Option<&HeaderMap>,
        found_by: Option<&str>,
    ) -> Result<Captured, CaptureError> {
        let sequence = i64::try_from(advisory.stream_seq).unwrap_or(i64::MAX);
        let stream = self.jetstream.get_stream(&advisory.stream).await.map_err(async_nats::Error::from)?;
        // From the leader, as the sweep reads (see its module docs): a replica catching up
        // could answer with a message already removed, or "not found" for one it has not
        // received yet.
        let original = match stream.get_raw_message(advisory.stream_seq).await {
            Ok(original) => Some(original),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => None,
            Err(err) => return Err(CaptureError::Nats(err.into())),
        };
        let mut letter = NewDeadLetter {
            source_stream: advisory.stream.clone(),
            source_sequence: sequence,
            consumer: Some(advisory.consumer.clone()),
            deliveries: i32::try_from(advisory.deliveries).ok(),
            failed_at: advisory.timestamp,
            reason: match found_by {
                Some(found_by) => format!("delivery limit reached ({found_by})"),
                None => format!("delivery limit reached: {} attempts failed", advisory.deliveries),
            },
            kind: "exhausted",
            ..Default::default()
        };
        match &original {
            Some(original) => {
                letter.subject = Some(original.subject.to_string());
                letter.headers = envelope::stored_headers(&original.headers);
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
        if original.is_some() && advisory.stream == ORDERS_STREAM {
            // Committed: now the work queue may forget it. If this fails, the advisory is
            // retried and finds its row already recorded. (`order_events` keeps its messages
            // for its other readers.)
            stream.delete_message(advisory.stream_seq).await.map_err(async_nats::Error::from)?;
        }
        Ok(captured)
    }

    /// A copy of a message a consumer gave up on (it could not read it, or every attempt
    /// failed), stored before it terminated the original.
    async fn copy(&self, message: &jetstream::Message, copy: Copy) -> Result<Captured, CaptureError> {
        let headers = message.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let own_sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        let published = message.info().map(|i| i.published).unwrap_or_else(|_| Utc::now());
        let mut original_headers = envelope::stored_headers(&headers);
        original_headers.retain(|name, _| !name.starts_with("Dlq-"));
        let deliveries = get(dead_letter::DELIVERIES).and_then(|d| d.parse().ok());
        let why = get(dead_letter::REASON).unwrap_or_default();
        let letter = NewDeadLetter {
            kind: match copy {
                Copy::Poison => "poison",
                Copy::GaveUp => "exhausted",
            },
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
            deliveries,
            reason: match copy {
                Copy::Poison => format!("unprocessable message: {why}"),
                Copy::GaveUp => format!(
                    "delivery limit reached: {} attempts failed",
                    deliveries.map_or("all".to_owned(), |d: i32| d.to_string())
                ),
            },
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
            headers: message.headers.as_ref().map(envelope::stored_headers).unwrap_or_default(),
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
    ///
    /// Messages are handled one after another, so the last of a batch may wait longer than
    /// `ack_wait`: while the batch is worked on, the messages not reached yet are marked in
    /// progress every `ack_wait / 2`, or JetStream would redeliver them to another replica
    /// (harmless, capture is idempotent, but it wastes one of their deliveries).
    pub async fn run(self, mut puller: Puller, ack_wait: Duration, shutdown: CancellationToken) {
        // The pulling (when ready, healing a deleted consumer, finishing a pull at shutdown) is
        // the idempotent consumer's: see `shared::messaging::puller`.
        while let Some(messages) = puller.next_batch(&shutdown).await {
            let reached = AtomicUsize::new(0);
            let work = async {
                for (index, message) in messages.iter().enumerate() {
                    reached.store(index, Ordering::Relaxed);
                    match self.handle(message).await {
                        Ok(_) => {
                            message.ack().await.ok();
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, subject = %message.subject, "capture failed; will retry");
                            if matches!(&err, CaptureError::Database(e) if db::is_unavailable(e)) {
                                // The rest of the batch would fail too: leave it for later.
                                return true;
                            }
                        }
                    }
                }
                false
            };
            let keep_alive = async {
                let mut tick = tokio::time::interval(ack_wait / 2);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for message in &messages[reached.load(Ordering::Relaxed)..] {
                        message.ack_with(AckKind::Progress).await.ok();
                    }
                }
            };
            let database_down = tokio::select! {
                down = work => down,
                never = keep_alive => never,
            };
            if database_down {
                db::wait_until_available(&self.pool, &shutdown).await;
            }
        }
    }
}

/// What a consumer's copy of a message it gave up on says about it.
#[derive(Debug, Clone, Copy)]
enum Copy {
    /// On [`dead_letter::POISON_SUBJECT`]: no attempt could ever succeed.
    Poison,
    /// On [`dead_letter::GAVE_UP_SUBJECT`]: every attempt failed, up to its consumer's limit.
    GaveUp,
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

pub(crate) fn ce_id(headers: &HeaderMap) -> Option<Uuid> {
    envelope::Envelope::from_headers(Some(headers)).ok().map(|e| e.id)
}

/// The order a payload is about, read leniently: the `order_id` field of any JSON object,
/// whatever its version, so that an order whose payload this build cannot decode still gets
/// its dead letter tied to it (and its status told).
fn order_id(payload: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct AboutAnOrder {
        order_id: Uuid,
    }
    serde_json::from_slice::<AboutAnOrder>(payload).ok().map(|about| about.order_id)
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
    fn only_orders_have_an_order_id() {
        assert_eq!(order_id(b"not json"), None);
        assert_eq!(order_id(br#"{"version": 1, "something": "else"}"#), None);
        let id = Uuid::now_v7();
        let future = format!(r#"{{"version": 99, "order_id": "{id}", "lines": "changed shape"}}"#);
        assert_eq!(order_id(future.as_bytes()), Some(id), "a version this build cannot decode");
    }

    #[test]
    fn only_advisories_of_our_streams_matching_their_subject_are_believed() {
        let body = |stream: &str, consumer: &str| {
            format!(
                r#"{{"type":"{MAX_DELIVERIES_TYPE}","timestamp":"2026-11-22T10:00:00Z","stream":"{stream}","consumer":"{consumer}","stream_seq":7,"deliveries":5}}"#
            )
        };
        let subject = |tokens: &str| format!("{MAX_DELIVERIES_ADVISORY_PREFIX}{tokens}");
        assert!(
            vet(
                &subject("orders_stream.inventory-worker"),
                body("orders_stream", "inventory-worker").as_bytes()
            )
            .is_ok()
        );
        assert!(
            vet(
                &subject("order_events.order-api-projection"),
                body("order_events", "order-api-projection").as_bytes()
            )
            .is_ok()
        );
        for (tokens, stream, consumer) in [
            ("orders_stream.inventory-worker", "order_events", "inventory-worker"),
            ("orders_stream.inventory-worker", "orders_stream", "someone-else"),
            ("other_stream.x", "other_stream", "x"),
            ("orders_stream", "orders_stream", ""),
        ] {
            assert!(
                vet(&subject(tokens), body(stream, consumer).as_bytes()).is_err(),
                "{tokens} {stream} {consumer}"
            );
        }
    }
}
