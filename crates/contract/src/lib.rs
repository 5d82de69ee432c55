//! The contract between the services of the orders system: what every program that talks to it
//! must agree on, and nothing else.
//!
//! A service reads this crate to know which subject to publish on and what a payload looks like;
//! so does loadgen, the test support, and anyone writing a client in another language (the values
//! here are the protocol). It holds no I/O: no NATS client, no database, no HTTP, no telemetry,
//! so depending on it costs a few plain crates.
//!
//! # Layout
//! - [`subjects`], [`streams`]: where messages go and the JetStream streams that keep them.
//! - [`schemas`]: the Postgres schema each service owns (provisioning and tests name them too).
//! - [`headers`]: the CloudEvents attributes every message carries in its NATS headers.
//! - [`dead_letter`]: the subjects and headers of messages a consumer gave up on.
//! - [`events`]: the versioned JSON payloads and their CloudEvents types.
//! - [`identifier`]: the rule for customer IDs and SKUs.
//! - [`duration`]: the `2s`, `250ms`, `7d` syntax every setting and tool accepts.

pub mod dead_letter;
pub mod duration;
pub mod events;
pub mod identifier;

/// Subjects the services publish on.
pub mod subjects {
    /// New orders, consumed from the `orders_stream` work queue by inventory-workers.
    pub const ORDERS_NEW: &str = "orders.new";
    pub const ORDER_RESERVED: &str = "order_events.reserved";
    pub const ORDER_REJECTED: &str = "order_events.rejected";
    pub const ORDER_DEAD_LETTERED: &str = "order_events.dead_lettered";
}

/// The JetStream streams that keep the messages (declared by `shared::messaging::topology`).
pub mod streams {
    /// A work queue: each order is handed to one worker and removed once acknowledged.
    pub const ORDERS_STREAM: &str = "orders_stream";
    pub const ORDERS_SUBJECTS: &str = "orders.*";
    /// Outcome events, kept for a week, read by any number of consumers (pub/sub).
    pub const EVENTS_STREAM: &str = "order_events";
    pub const EVENTS_SUBJECTS: &str = "order_events.>";
    /// The dead-letter queue: advisories and copies of messages a consumer gave up on.
    pub const UNPROCESSED_STREAM: &str = "orders_unprocessed";
    /// JetStream publishes `<prefix><stream>.<consumer>` when a message reached its consumer's
    /// `max_deliver`.
    pub const MAX_DELIVERIES_ADVISORY_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.";
    /// The streams whose durable consumers can give up on a message, so whose MAX_DELIVERIES
    /// advisories `orders_unprocessed` captures, so that no consumer can drop a message without
    /// a dead letter. (The projection gives up on an event itself and sends a copy; a consumer
    /// someone adds to `order_events` may leave it to JetStream. The dead-letter service's own
    /// consumer of `orders_unprocessed` never gives up.)
    pub const DEAD_LETTER_SOURCES: [&str; 2] = [ORDERS_STREAM, EVENTS_STREAM];

    /// The advisory subject of every consumer of `stream`.
    pub fn max_deliveries_advisories(stream: &str) -> String {
        format!("{MAX_DELIVERIES_ADVISORY_PREFIX}{stream}.*")
    }
}

/// The Postgres schema each service owns. No service reads another's, but provisioning
/// (`scripts/provision-db`), its grants and the tests must name the same ones.
pub mod schemas {
    pub const ORDER_API: &str = "order_api";
    pub const INVENTORY: &str = "inventory";
    pub const DLQ: &str = "dlq";
}

/// CloudEvents attribute headers (binary content mode), and the broker's dedupe header.
///
/// Two identifiers, two jobs:
/// - `ce-id` is the **logical message ID**. It is fixed when the message is first written to an
///   outbox and never changes, whoever re-sends it. Consumers record it to stay idempotent.
/// - `Nats-Msg-Id` is the **broker's dedupe key**: JetStream drops a second publish with the same
///   value inside the stream's duplicate window. The relay sets it to the logical ID, so a relay
///   that re-sends after a crash is deduplicated by the broker; a deliberate replay (dead-letter
///   review) keeps the logical ID but needs a fresh dedupe key, or the broker would drop it.
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
