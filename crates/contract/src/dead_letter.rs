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

/// The question the dead-letter sweep asks a consumer before it takes a message still in a
/// work queue as dead: "did you apply the message with this `ce-id`?" (NATS request/reply,
/// answered by one of the consumer's processes).
///
/// The request's body is the `ce-id`; the reply is an [`AppliedAnswer`] in JSON. The sweep
/// asks because the broker cannot always tell: on a replicated stream, a message acknowledged
/// during a failover can stay in the work queue for minutes, looking exactly like one its
/// consumer gave up on (dlq-service's `sweep` module has the details). The consumer knows: it
/// records the ID of every message it applies, in the same transaction as the work.
pub fn applied_query(stream: &str, consumer: &str) -> String {
    format!("{APPLIED_QUERY_PREFIX}{stream}.{consumer}")
}

/// Every [`applied_query`] subject starts with this (outside every stream's subjects: a
/// request a stream stored would be answered by JetStream, not by the consumer).
pub const APPLIED_QUERY_PREFIX: &str = "dead_letter.applied.";

/// A consumer's reply to an [`applied_query`]: `{"applied": true}`, `{"applied": false}`, or
/// `{"error": "…"}` when it cannot say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliedAnswer {
    /// Whether the consumer applied the message (recorded its ID as processed).
    Applied(bool),
    /// Why it cannot say (the request was not a message ID, its database is unavailable).
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_answer_is_one_small_json_object() {
        let yes = serde_json::to_string(&AppliedAnswer::Applied(true)).unwrap();
        assert_eq!(yes, r#"{"applied":true}"#);
        let error: AppliedAnswer = serde_json::from_str(r#"{"error":"not a UUID"}"#).unwrap();
        assert_eq!(error, AppliedAnswer::Error("not a UUID".to_owned()));
        assert_eq!(
            applied_query("orders_stream", "inventory-worker"),
            "dead_letter.applied.orders_stream.inventory-worker"
        );
    }
}
