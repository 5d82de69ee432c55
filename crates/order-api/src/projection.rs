//! The order status projection: order-api's own view of what happened to each order.
//!
//! order-api never reads the workers' tables. It consumes the outcome events on
//! `order_events.>` (durable consumer `order-api-projection`) and updates its `orders` table,
//! idempotently, with the same [`IdempotentConsumer`](shared::messaging::consumer::IdempotentConsumer) the
//! inventory-worker uses: a redelivered event finds its ID in `processed_messages` and changes
//! nothing.
//!
//! `order_events` is pub/sub, open to any publisher: an event type this projection does not know
//! is acknowledged and counted (`outcome="ignored"`), not treated as poison, so a new event type
//! added elsewhere cannot dead-letter its messages here.

use contract::events::{DecodeError, OrderEvent};
use shared::messaging::consumer::{Delivery, Handler, Incoming, Verdict};
use shared::telemetry;
use sqlx::PgConnection;
use std::collections::HashSet;
use uuid::Uuid;

use crate::orders::OrderStatus;

/// Applies outcome events to `orders.status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusProjection;

/// What one outcome event did to the order it names: its status changed, or nothing (an
/// unknown order, or one already final). The projection's `Handler::Outcome`, the `outcome`
/// label of its metrics.
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
        // One statement for the batch, unless an order has two events in it: those must be
        // applied in their order (dead-lettered, then reserved after a replay).
        let mut orders = HashSet::with_capacity(events.len());
        if events.iter().all(|incoming| orders.insert(incoming.message.order_id())) {
            update_all(tx, events).await
        } else {
            let mut changes = Vec::with_capacity(events.len());
            for incoming in events {
                changes.extend(update_all(tx, std::slice::from_ref(incoming)).await?);
            }
            Ok(changes)
        }
    }
}

/// Applies events to distinct orders with one `UPDATE`. Allowed moves: from pending to any
/// outcome, and from dead_lettered to any outcome (a replayed order is processed again);
/// reserved and rejected are final.
async fn update_all(
    tx: &mut PgConnection,
    events: &[Incoming<'_, OrderEvent>],
) -> Result<Vec<StatusChange>, sqlx::Error> {
    let moves: Vec<(Uuid, OrderStatus, Option<&str>)> = events
        .iter()
        .map(|incoming| match incoming.message {
            OrderEvent::Reserved(e) => (e.order_id, OrderStatus::Reserved, None),
            OrderEvent::Rejected(e) => (e.order_id, OrderStatus::Rejected, Some(e.reason.as_str())),
            OrderEvent::DeadLettered(e) => (e.order_id, OrderStatus::DeadLettered, Some(e.reason.as_str())),
        })
        .collect();
    // The status update, as a span in each order's trace (all of them cover the one statement).
    let spans: Vec<tracing::Span> = events
        .iter()
        .map(|incoming| incoming.span.in_scope(|| telemetry::db_span("UPDATE orders")))
        .collect();
    let updated: HashSet<Uuid> = sqlx::query_scalar(
        "UPDATE orders o SET status = e.status, reason = e.reason, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS e (id, status, reason)
         WHERE o.id = e.id AND o.status IN ('pending', 'dead_lettered')
         RETURNING o.id",
    )
    .bind(moves.iter().map(|m| m.0).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.1).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.2).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .map(HashSet::from_iter)
    .inspect_err(|err| spans.iter().for_each(|span| telemetry::record_error(span, "db", &err.to_string())))?;
    drop(spans);
    Ok(moves
        .iter()
        .map(
            |(id, status, _)| {
                if updated.contains(id) { StatusChange::Updated(*status) } else { StatusChange::Unchanged }
            },
        )
        .collect())
}
