//! The versioned JSON payloads on NATS, and the CloudEvents type of each.
//!
//! Every payload carries a `version`. A reader checks it first ([`decode`]), so a payload written
//! by a newer publisher is refused by name ("version 2 is not supported") rather than misread.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{
    identifier::{CustomerId, Sku},
    subjects,
};

/// The version every payload written today carries in its `version` field.
pub const PAYLOAD_VERSION: u32 = 1;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: Sku,
    pub quantity: u32,
}

impl OrderItem {
    /// An item of a SKU known to follow the identifier rule (fixtures, tests).
    ///
    /// # Panics
    /// If `sku` breaks the rule: text from outside goes through [`Sku::parse`].
    pub fn new(sku: &str, quantity: u32) -> Self {
        let sku = Sku::parse(sku).unwrap_or_else(|rule| panic!("SKU {sku:?} {rule}"));
        Self { sku, quantity }
    }
}

/// `orders.new`: an order was accepted and needs stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub version: u32,
    pub order_id: Uuid,
    pub customer_id: CustomerId,
    pub items: Vec<OrderItem>,
    pub placed_at: DateTime<Utc>,
}

impl OrderPlaced {
    /// An order placed now, under a new time-ordered ID, in the current payload version.
    ///
    /// # Panics
    /// If `customer_id` breaks the identifier rule, as [`OrderItem::new`] does.
    pub fn new(customer_id: &str, items: Vec<OrderItem>) -> Self {
        let customer_id = CustomerId::parse(customer_id)
            .unwrap_or_else(|rule| panic!("customer ID {customer_id:?} {rule}"));
        Self::of(customer_id, items)
    }

    /// [`OrderPlaced::new`] for a customer ID already checked.
    pub fn of(customer_id: CustomerId, items: Vec<OrderItem>) -> Self {
        Self { version: PAYLOAD_VERSION, order_id: Uuid::now_v7(), customer_id, items, placed_at: Utc::now() }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_versioned_json() {
        let json =
            serde_json::to_value(OrderPlaced::new("c-42", vec![OrderItem::new("WIDGET-1", 2)])).unwrap();
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
    fn outcome_events_are_decoded_by_type() {
        let rejected = OrderRejected {
            version: 1,
            order_id: Uuid::now_v7(),
            reason: "out of stock".into(),
            rejected_at: Utc::now(),
        };
        let payload = serde_json::to_vec(&rejected).unwrap();
        assert_eq!(OrderRejected::SUBJECT, "order_events.rejected");
        assert_eq!(OrderEvent::decode(OrderRejected::TYPE, &payload), Ok(OrderEvent::Rejected(rejected)));
        assert!(matches!(
            OrderEvent::decode("order_events.shipped.v1", &payload),
            Err(DecodeError::UnknownType(_))
        ));
    }
}
