//! What a consumer publishes about messages it gives up on, for the dead-letter service.
//!
//! These subjects are captured by the `orders_unprocessed` stream, beside JetStream's
//! MAX_DELIVERIES advisories (see [`crate::streams`]).

/// A copy of a poison message (payload and headers), published before the original is
/// terminated: a work-queue stream deletes what is terminated.
pub const POISON_SUBJECT: &str = "orders_unprocessed.poison";
/// A copy of a message whose every attempt failed, published by a consumer that gives up on
/// such messages itself before it terminates the original.
pub const GAVE_UP_SUBJECT: &str = "orders_unprocessed.gave_up";
/// The error of a message's last delivery attempt, published just before the consumer gives up
/// on it, so the dead-letter record can say why it failed.
pub const LAST_ERROR_SUBJECT: &str = "orders_unprocessed.last_error";

/// Headers describing where a copied or annotated message came from, and why.
pub const REASON: &str = "Dlq-Reason";
pub const SOURCE_STREAM: &str = "Dlq-Source-Stream";
pub const SOURCE_SEQUENCE: &str = "Dlq-Source-Sequence";
pub const SOURCE_SUBJECT: &str = "Dlq-Source-Subject";
pub const CONSUMER: &str = "Dlq-Consumer";
pub const DELIVERIES: &str = "Dlq-Deliveries";
