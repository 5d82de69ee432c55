//! What travels over NATS: CloudEvents attributes in headers, a versioned JSON payload.
//!
//! Every message is a CloudEvent in *binary content mode*: the event's attributes are `ce-`
//! headers (`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`) and the payload is the
//! event data, as the CloudEvents SDKs map events onto NATS.
//!
//! Two identifiers, two jobs:
//! - `ce-id` is the **logical message ID**. It is fixed when the message is first written to an
//!   outbox and never changes, whoever re-sends it. Consumers record it to stay idempotent.
//! - `Nats-Msg-Id` is the **broker's dedupe key**: JetStream drops a second publish with the same
//!   value inside the stream's duplicate window. The relay sets it to the logical ID, so a relay
//!   that re-sends after a crash is deduplicated by the broker; a deliberate replay (dead-letter
//!   review) keeps the logical ID but needs a fresh dedupe key, or the broker would drop it.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// Subjects and CloudEvents types used by the system.
pub mod subjects {
    /// New orders, consumed from the `orders_stream` work queue by inventory-workers.
    pub const ORDERS_NEW: &str = "orders.new";
    pub const ORDER_RESERVED: &str = "order_events.reserved";
    pub const ORDER_REJECTED: &str = "order_events.rejected";
    pub const ORDER_DEAD_LETTERED: &str = "order_events.dead_lettered";
}

/// What a consumer publishes about messages it gives up on, for the dead-letter service.
///
/// These subjects are captured by the `orders_unprocessed` stream, beside JetStream's
/// MAX_DELIVERIES advisories (see [`crate::topology`]).
pub mod dead_letter {
    /// A copy of a poison message (payload and headers), published before the original is
    /// terminated: a work-queue stream deletes what is terminated.
    pub const POISON_SUBJECT: &str = "orders_unprocessed.poison";
    /// A copy of a message whose every attempt failed, published by a consumer that gives up on
    /// such messages itself ([`crate::config::GivesUp::Consumer`]) before it terminates the
    /// original.
    pub const GAVE_UP_SUBJECT: &str = "orders_unprocessed.gave_up";
    /// The error of a message's last delivery attempt, published just before the consumer
    /// gives up on it, so the dead-letter record can say why it failed.
    pub const LAST_ERROR_SUBJECT: &str = "orders_unprocessed.last_error";

    /// Headers describing where a copied or annotated message came from, and why.
    pub const REASON: &str = "Dlq-Reason";
    pub const SOURCE_STREAM: &str = "Dlq-Source-Stream";
    pub const SOURCE_SEQUENCE: &str = "Dlq-Source-Sequence";
    pub const SOURCE_SUBJECT: &str = "Dlq-Source-Subject";
    pub const CONSUMER: &str = "Dlq-Consumer";
    pub const DELIVERIES: &str = "Dlq-Deliveries";
}

/// CloudEvents attribute headers (binary content mode).
pub mod headers {
    pub const SPEC_VERSION: &str = "ce-specversion";
    pub const ID: &str = "ce-id";
    pub const TYPE: &str = "ce-type";
    pub const SOURCE: &str = "ce-source";
    pub const TIME: &str = "ce-time";
    /// `datacontenttype` maps onto the ordinary content-type header.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The broker's dedupe header (JetStream), distinct from the logical `ce-id`.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
}

/// The version every payload written today carries in its `version` field.
pub const PAYLOAD_VERSION: u32 = 1;

/// The rule for identifiers (customer IDs, SKUs): 1 to 64 characters from `A-Z a-z 0-9 . _ -`,
/// at least one of them a letter or digit (so `.` and `..`, which mean something else in a URL
/// path, are not identifiers).
pub fn check_identifier(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("must not be empty")
    } else if value.len() > 64 {
        Err("must be at most 64 characters")
    } else if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        Err("may contain only letters, digits, '.', '_' and '-'")
    } else if !value.chars().any(|c| c.is_ascii_alphanumeric()) {
        Err("must contain a letter or a digit")
    } else {
        Ok(())
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: u32,
}

impl OrderItem {
    pub fn new(sku: impl Into<String>, quantity: u32) -> Self {
        Self { sku: sku.into(), quantity }
    }
}

/// `orders.new`: an order was accepted and needs stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub version: u32,
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub placed_at: DateTime<Utc>,
}

impl OrderPlaced {
    /// An order placed now, under a new time-ordered ID, in the current payload version.
    pub fn new(customer_id: impl Into<String>, items: Vec<OrderItem>) -> Self {
        Self {
            version: PAYLOAD_VERSION,
            order_id: Uuid::now_v7(),
            customer_id: customer_id.into(),
            items,
            placed_at: Utc::now(),
        }
    }
}

/// `order_events.reserved`: every item of the order is set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReserved {
    pub version: u32,
    pub order_id: Uuid,
    pub items: Vec<OrderItem>,
    pub reserved_at: DateTime<Utc>,
}

/// `order_events.rejected`: the order cannot be filled (a business outcome, not a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub version: u32,
    pub order_id: Uuid,
    pub reason: String,
    pub rejected_at: DateTime<Utc>,
}

/// `order_events.dead_lettered`: processing failed on every attempt; the message waits in the
/// dead-letter table for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDeadLettered {
    pub version: u32,
    pub order_id: Uuid,
    pub reason: String,
    /// The row in the dead-letter service's table.
    pub dead_letter_id: Uuid,
    pub dead_lettered_at: DateTime<Utc>,
}

/// A payload type with its CloudEvents type and the subject it is published on.
pub trait Event: Serialize + DeserializeOwned {
    /// `ce-type`, e.g. `orders.placed.v1`.
    const TYPE: &'static str;
    const SUBJECT: &'static str;
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.placed.v1";
    const SUBJECT: &'static str = subjects::ORDERS_NEW;
}

impl Event for OrderReserved {
    const TYPE: &'static str = "order_events.reserved.v1";
    const SUBJECT: &'static str = subjects::ORDER_RESERVED;
}

impl Event for OrderRejected {
    const TYPE: &'static str = "order_events.rejected.v1";
    const SUBJECT: &'static str = subjects::ORDER_REJECTED;
}

impl Event for OrderDeadLettered {
    const TYPE: &'static str = "order_events.dead_lettered.v1";
    const SUBJECT: &'static str = subjects::ORDER_DEAD_LETTERED;
}

/// The outcome events on `order_events.>` that order-api projects into an order's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Reserved(OrderReserved),
    Rejected(OrderRejected),
    DeadLettered(OrderDeadLettered),
}

impl OrderEvent {
    /// Decodes by `ce-type`, so a new event type is refused by name rather than misread.
    pub fn decode(event_type: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        match event_type {
            OrderReserved::TYPE => decode(payload).map(Self::Reserved),
            OrderRejected::TYPE => decode(payload).map(Self::Rejected),
            OrderDeadLettered::TYPE => decode(payload).map(Self::DeadLettered),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }

    pub fn order_id(&self) -> Uuid {
        match self {
            Self::Reserved(e) => e.order_id,
            Self::Rejected(e) => e.order_id,
            Self::DeadLettered(e) => e.order_id,
        }
    }
}

/// Why a payload could not be read. Retrying cannot fix any of these: the message is poison.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("payload is not valid JSON for this event: {0}")]
    Malformed(String),
    #[error("payload version {0} is not supported (this build reads version {PAYLOAD_VERSION})")]
    UnsupportedVersion(u32),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("missing or invalid header {0}")]
    Header(&'static str),
}

/// Reads a versioned payload: the version first, so an unknown version is named as such
/// rather than reported as whatever field it happened to change.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let Versioned { version } =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version != PAYLOAD_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The CloudEvents attributes of a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `ce-id`: the logical message ID, the key of idempotent consumers.
    pub id: Uuid,
    pub event_type: String,
    pub source: String,
}

impl Envelope {
    /// The envelope of a message that has none (it is poison).
    pub fn unknown() -> Self {
        Self { id: Uuid::nil(), event_type: String::new(), source: String::new() }
    }

    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, DecodeError> {
        let get = |name: &'static str| {
            headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned()).ok_or(DecodeError::Header(name))
        };
        let id = get(headers::ID)?.parse().map_err(|_| DecodeError::Header(headers::ID))?;
        Ok(Self { id, event_type: get(headers::TYPE)?, source: get(headers::SOURCE).unwrap_or_default() })
    }
}

/// A message ready to be written to an outbox and, later, published by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub subject: String,
    /// `ce-id`, the logical ID.
    pub message_id: Uuid,
    /// `Nats-Msg-Id`, the broker's dedupe key.
    pub dedupe_id: String,
    /// Headers to publish with: the `ce-` attributes and, once tracing joins in, trace context.
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl OutgoingMessage {
    /// A new event from `source` (a service name), with a fresh logical ID that doubles as its
    /// dedupe key. The current span's trace context is captured into its headers now, so the
    /// trace continues through the outbox however late the relay publishes it.
    pub fn event<E: Event>(event: &E, source: &str) -> Self {
        let id = Uuid::now_v7();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut trace_context = HeaderMap::new();
        crate::propagation::inject_current(&mut trace_context);
        let mut headers = BTreeMap::from([
            (headers::SPEC_VERSION.to_owned(), "1.0".to_owned()),
            (headers::ID.to_owned(), id.to_string()),
            (headers::TYPE.to_owned(), E::TYPE.to_owned()),
            (headers::SOURCE.to_owned(), format!("/{source}")),
            (headers::TIME.to_owned(), now),
            (headers::CONTENT_TYPE.to_owned(), "application/json".to_owned()),
        ]);
        for (name, values) in trace_context.iter() {
            if let Some(value) = values.last() {
                headers.insert(name.to_string(), value.as_str().to_owned());
            }
        }
        Self {
            subject: E::SUBJECT.to_owned(),
            message_id: id,
            dedupe_id: id.to_string(),
            headers,
            // Serialising these plain structs cannot fail.
            payload: serde_json::to_vec(event).unwrap_or_default(),
        }
    }

    /// The NATS headers to publish with: the stored ones plus `Nats-Msg-Id`.
    pub fn nats_headers(&self) -> HeaderMap {
        nats_headers(&self.headers, &self.dedupe_id)
    }
}

/// Builds the NATS header map of a message from its stored headers and its dedupe key.
pub fn nats_headers(stored: &BTreeMap<String, String>, dedupe_id: &str) -> HeaderMap {
    let mut map = header_map(stored);
    map.insert(headers::NATS_MSG_ID, dedupe_id);
    map
}

/// Stored headers (name → value) as a NATS header map.
pub fn header_map(stored: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in stored {
        map.insert(name.as_str(), value.as_str());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> OrderPlaced {
        OrderPlaced::new("c-42", vec![OrderItem::new("WIDGET-1", 2)])
    }

    #[test]
    fn an_event_round_trips_through_headers_and_payload() {
        let event = placed();
        let message = OutgoingMessage::event(&event, "order-api");
        let headers = message.nats_headers();

        let envelope = Envelope::from_headers(Some(&headers)).unwrap();
        assert_eq!(envelope.id, message.message_id);
        assert_eq!(envelope.event_type, "orders.placed.v1");
        assert_eq!(envelope.source, "/order-api");
        assert_eq!(headers.get(headers::SPEC_VERSION).unwrap().as_str(), "1.0");
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), message.message_id.to_string());
        assert_eq!(decode::<OrderPlaced>(&message.payload).unwrap(), event);
    }

    #[test]
    fn the_payload_is_versioned_json() {
        let json: serde_json::Value =
            serde_json::from_slice(&OutgoingMessage::event(&placed(), "t").payload).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["items"][0]["sku"], "WIDGET-1");
    }

    #[test]
    fn an_unknown_version_is_named_not_misread() {
        let payload = br#"{"version": 2, "order": "shape changed"}"#;
        assert_eq!(decode::<OrderPlaced>(payload), Err(DecodeError::UnsupportedVersion(2)));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(decode::<OrderPlaced>(b"\xff\x00not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode::<OrderPlaced>(br#"{"version": 1, "order_id": "not-a-uuid"}"#),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_message_without_ce_id_has_no_envelope() {
        assert_eq!(Envelope::from_headers(None), Err(DecodeError::Header(headers::ID)));
        let mut h = HeaderMap::new();
        h.insert(headers::ID, "not-a-uuid");
        assert_eq!(Envelope::from_headers(Some(&h)), Err(DecodeError::Header(headers::ID)));
    }

    #[test]
    fn outcome_events_are_decoded_by_type() {
        let rejected = OrderRejected {
            version: 1,
            order_id: Uuid::now_v7(),
            reason: "out of stock".into(),
            rejected_at: Utc::now(),
        };
        let message = OutgoingMessage::event(&rejected, "inventory-worker");
        assert_eq!(message.subject, "order_events.rejected");
        assert_eq!(
            OrderEvent::decode(OrderRejected::TYPE, &message.payload),
            Ok(OrderEvent::Rejected(rejected))
        );
        assert!(matches!(
            OrderEvent::decode("order_events.shipped.v1", &message.payload),
            Err(DecodeError::UnknownType(_))
        ));
    }
}
