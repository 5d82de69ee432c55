//! The order status projection: order-api's own view of what happened to each order.
//!
//! order-api never reads the workers' tables. It consumes the outcome events on
//! `order_events.>` (durable consumer `order-api-projection`) and updates its `orders` table,
//! idempotently, with the same [`IdempotentConsumer`](shared::consumer::IdempotentConsumer) the
//! inventory-worker uses: a redelivered event finds its ID in `processed_messages` and changes
//! nothing.
//!
//! `order_events` is pub/sub, open to any publisher: an event type this projection does not know
//! is acknowledged and counted (`outcome="ignored"`), not treated as poison, so a new event type
//! added elsewhere cannot dead-letter its messages here.

use shared::telemetry;
use shared::{
    consumer::{Delivery, Handler, Incoming, Verdict},
    messages::{DecodeError, OrderEvent},
};
use sqlx::PgConnection;
use tracing::Instrument;

use crate::orders::OrderStatus;

/// Applies outcome events to `orders.status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusProjection;

/// What one event did to the order it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Updated(OrderStatus),
    /// The order is unknown here or already in a final state.
    Unchanged,
}

impl Handler for StatusProjection {
    type Message = OrderEvent;
    type Outcome = StatusChange;

    fn outcome_label(change: &StatusChange) -> &'static str {
        match change {
            StatusChange::Updated(_) => "updated",
            StatusChange::Unchanged => "unchanged",
        }
    }

    fn prepare(&self, delivery: &Delivery) -> Verdict<OrderEvent> {
        match OrderEvent::decode(&delivery.envelope.event_type, &delivery.message.payload) {
            Ok(event) => Verdict::Process(event),
            // `order_events` is pub/sub: another service may publish event types this projection
            // has no use for. Acknowledged and counted (outcome "ignored"), never dead-lettered.
            Err(err @ DecodeError::UnknownType(_)) => Verdict::Ignore(err.to_string()),
            Err(err) => Verdict::Poison(err.to_string()),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Incoming<'_, OrderEvent>],
    ) -> Result<Vec<StatusChange>, sqlx::Error> {
        let mut changes = Vec::with_capacity(events.len());
        for incoming in events {
            let event = incoming.message;
            let (status, reason) = match event {
                OrderEvent::Reserved(_) => (OrderStatus::Reserved, None),
                OrderEvent::Rejected(e) => (OrderStatus::Rejected, Some(e.reason.as_str())),
                OrderEvent::DeadLettered(e) => (OrderStatus::DeadLettered, Some(e.reason.as_str())),
            };
            // Allowed moves: from pending to any outcome, and from dead_lettered to any outcome
            // (a replayed order is processed again). reserved and rejected are final.
            let updated = sqlx::query(
                "UPDATE orders SET status = $2, reason = $3, updated_at = now()
                 WHERE id = $1 AND status IN ('pending', 'dead_lettered')",
            )
            .bind(event.order_id())
            .bind(status)
            .bind(reason)
            .execute(&mut *tx)
            // The status update, as a span in the order's trace.
            .instrument(incoming.span.in_scope(|| telemetry::db_span("UPDATE orders")))
            .await?;
            changes.push(if updated.rows_affected() == 1 {
                StatusChange::Updated(status)
            } else {
                StatusChange::Unchanged
            });
        }
        Ok(changes)
    }
}
