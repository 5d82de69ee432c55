//! What travels over NATS: CloudEvents attributes in headers, a versioned JSON payload.
//!
//! Every message is a CloudEvent in *binary content mode*: the event's attributes are `ce-`
//! headers (`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`) and the payload is the
//! event data, as the CloudEvents SDKs map events onto NATS. The names and payloads are the
//! contract between services ([`contract`]); this module turns them into NATS messages and back.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{SecondsFormat, Utc};
use contract::{
    events::{DecodeError, Event},
    headers,
};
use uuid::Uuid;

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
        crate::telemetry::propagation::inject_current(&mut trace_context);
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
    let mut map = nats_header_map(stored);
    map.insert(headers::NATS_MSG_ID, dedupe_id);
    map
}

/// Stored headers (name → value, as outboxes and dead letters keep them) as a NATS header map.
/// The inverse of [`stored_headers`].
pub fn nats_header_map(stored: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in stored {
        map.insert(name.as_str(), value.as_str());
    }
    map
}

/// A received message's headers as stored headers (name → value; the last value of a repeated
/// header), without the broker's own (`Nats-*`), which belong to the stored copy, not to the
/// message. The inverse of [`nats_header_map`].
pub fn stored_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| !AsRef::<str>::as_ref(*name).starts_with("Nats-"))
        .filter_map(|(name, values)| Some((name.to_string(), values.last()?.as_str().to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use contract::events::{OrderItem, OrderPlaced, decode};

    use super::*;

    #[test]
    fn an_event_round_trips_through_headers_and_payload() {
        let event = OrderPlaced::new("c-42", vec![OrderItem::new("WIDGET-1", 2)]);
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
    fn a_message_without_ce_id_has_no_envelope() {
        assert_eq!(Envelope::from_headers(None), Err(DecodeError::Header(headers::ID)));
        let mut h = HeaderMap::new();
        h.insert(headers::ID, "not-a-uuid");
        assert_eq!(Envelope::from_headers(Some(&h)), Err(DecodeError::Header(headers::ID)));
    }

    #[test]
    fn broker_headers_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "abc");
        headers.insert("ce-id", "0193f1b2-0000-7000-8000-000000000000");
        let map = stored_headers(&headers);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("ce-id"));
        assert_eq!(
            nats_header_map(&map).get("ce-id").map(|v| v.as_str()),
            Some("0193f1b2-0000-7000-8000-000000000000")
        );
    }
}
