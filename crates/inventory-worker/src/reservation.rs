//! Reserving stock for orders: the worker's business logic.
//!
//! [`Reservations`] is the [`Handler`] the shared idempotent consumer runs. For each batch of
//! new (not yet processed) orders it:
//!
//! 1. locks the stock rows of every SKU in the batch, **in SKU order** (two workers locking
//!    the same rows in different orders could deadlock);
//! 2. [`decide`]s each order in turn, all items or none, against the stock left by the orders
//!    before it: a pure function, so the rules are unit-tested without a database;
//! 3. writes the net change per SKU in one `UPDATE` and the outcome events in one outbox insert.
//!
//! A rejection (unknown SKU, not enough stock) is a business outcome: it is recorded, announced
//! and acknowledged like a reservation, never retried.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::Utc;
use contract::events::{self, OrderPlaced, OrderRejected, OrderReserved, PAYLOAD_VERSION};
use shared::messaging::{
    consumer::{Delivery, Handler, Incoming, Verdict},
    envelope::OutgoingMessage,
    outbox,
};
use sqlx::PgConnection;

use crate::failure::FailureInjection;

/// The name this service puts in `ce-source`.
pub const SOURCE: &str = "inventory-worker";

/// The business outcome of one order: every item reserved, or the order rejected with the
/// reason. It decides the event announced (`order_events.reserved` or `.rejected`); either way
/// the message is acknowledged, never retried. The worker's `Handler::Outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reserved,
    Rejected(String),
}

/// Decides one order against `stock` (SKU → available units), and takes the units from
/// `stock` if it is reserved. Every item or none.
pub fn decide(order: &OrderPlaced, stock: &mut HashMap<String, i64>) -> Decision {
    for item in &order.items {
        let wanted = i64::from(item.quantity);
        match stock.get(item.sku.as_str()) {
            None => return Decision::Rejected(format!("unknown SKU {}", item.sku)),
            Some(&available) if available < wanted => {
                return Decision::Rejected(format!(
                    "insufficient stock for {}: {wanted} requested, {available} available",
                    item.sku
                ));
            }
            Some(_) => {}
        }
    }
    for item in &order.items {
        if let Some(available) = stock.get_mut(item.sku.as_str()) {
            *available -= i64::from(item.quantity);
        }
    }
    Decision::Reserved
}

/// The orders-to-reservations handler. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reservations {
    pub failures: FailureInjection,
}

impl Handler for Reservations {
    type Message = OrderPlaced;
    type Outcome = Decision;

    fn outcome_label(decision: &Decision) -> &'static str {
        match decision {
            Decision::Reserved => "reserved",
            Decision::Rejected(_) => "rejected",
        }
    }

    fn prepare(&self, delivery: &Delivery) -> Verdict<OrderPlaced> {
        let order: OrderPlaced = match events::decode(&delivery.message.payload) {
            Ok(order) => order,
            Err(err) => return Verdict::Poison(err.to_string()),
        };
        if let Err(problem) = check_order(&order) {
            return Verdict::Poison(format!("invalid order: {problem}"));
        }
        match self.failures.check(&order, delivery.attempt) {
            Some(reason) => Verdict::Retry(reason),
            None => Verdict::Process(order),
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        orders: &[Incoming<'_, OrderPlaced>],
    ) -> Result<Vec<Decision>, sqlx::Error> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let skus: Vec<&str> = orders
            .iter()
            .flat_map(|o| o.message.items.iter().map(|i| i.sku.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT sku, available FROM inventory WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(&mut *tx)
        .await?;
        let mut stock: HashMap<String, i64> = rows.into_iter().collect();

        let now = Utc::now();
        let mut taken: BTreeMap<&str, i64> = BTreeMap::new();
        let mut events = Vec::with_capacity(orders.len());
        let mut decisions = Vec::with_capacity(orders.len());
        for incoming in orders {
            let order = incoming.message;
            let decision = decide(order, &mut stock);
            match &decision {
                Decision::Reserved => {
                    for item in &order.items {
                        *taken.entry(item.sku.as_str()).or_default() += i64::from(item.quantity);
                    }
                    let event = OrderReserved {
                        version: PAYLOAD_VERSION,
                        order_id: order.order_id,
                        items: order.items.clone(),
                        reserved_at: now,
                    };
                    // Made in the order's own span: the event carries the order's trace.
                    events.push(incoming.span.in_scope(|| OutgoingMessage::event(&event, SOURCE)));
                }
                Decision::Rejected(reason) => {
                    let event = OrderRejected {
                        version: PAYLOAD_VERSION,
                        order_id: order.order_id,
                        reason: reason.clone(),
                        rejected_at: now,
                    };
                    // Made in the order's own span: the event carries the order's trace.
                    events.push(incoming.span.in_scope(|| OutgoingMessage::event(&event, SOURCE)));
                }
            }
            decisions.push(decision);
        }

        if !taken.is_empty() {
            let (skus, quantities): (Vec<&str>, Vec<i64>) = taken.into_iter().unzip();
            sqlx::query(
                "UPDATE inventory AS i
                 SET available = i.available - t.quantity, reserved = i.reserved + t.quantity, updated_at = now()
                 FROM unnest($1::text[], $2::int8[]) AS t(sku, quantity)
                 WHERE i.sku = t.sku",
            )
            .bind(&skus)
            .bind(&quantities)
            .execute(&mut *tx)
            .await?;
        }
        outbox::enqueue(tx, &events).await?;
        Ok(decisions)
    }
}

/// What order-api guarantees, checked again: a message may come from anywhere. (Its
/// identifiers were checked when it was decoded: they are a `CustomerId` and `Sku`s.)
fn check_order(order: &OrderPlaced) -> Result<(), String> {
    if order.items.is_empty() {
        return Err("no items".into());
    }
    let mut seen = HashSet::new();
    for item in &order.items {
        if item.quantity == 0 {
            return Err(format!("quantity of {} is zero", item.sku));
        }
        if !seen.insert(item.sku.as_str()) {
            return Err(format!("SKU {} appears twice", item.sku));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::events::OrderItem;

    fn order(items: &[(&str, u32)]) -> OrderPlaced {
        OrderPlaced::new("c", items.iter().map(|(sku, quantity)| OrderItem::new(sku, *quantity)).collect())
    }

    fn stock(levels: &[(&str, i64)]) -> HashMap<String, i64> {
        levels.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    }

    #[test]
    fn an_order_in_stock_is_reserved_and_takes_its_units() {
        let mut levels = stock(&[("A", 5), ("B", 1)]);
        assert_eq!(decide(&order(&[("A", 2), ("B", 1)]), &mut levels), Decision::Reserved);
        assert_eq!(levels, stock(&[("A", 3), ("B", 0)]));
    }

    #[test]
    fn one_short_item_rejects_the_whole_order_and_takes_nothing() {
        let mut levels = stock(&[("A", 5), ("B", 1)]);
        let decision = decide(&order(&[("A", 2), ("B", 2)]), &mut levels);
        assert_eq!(decision, Decision::Rejected("insufficient stock for B: 2 requested, 1 available".into()));
        assert_eq!(levels, stock(&[("A", 5), ("B", 1)]));
    }

    #[test]
    fn an_unknown_sku_is_rejected() {
        let mut levels = stock(&[("A", 5)]);
        assert_eq!(decide(&order(&[("Z", 1)]), &mut levels), Decision::Rejected("unknown SKU Z".into()));
    }

    #[test]
    fn orders_in_a_batch_see_the_stock_left_by_earlier_ones() {
        let mut levels = stock(&[("A", 3)]);
        assert_eq!(decide(&order(&[("A", 2)]), &mut levels), Decision::Reserved);
        assert!(matches!(decide(&order(&[("A", 2)]), &mut levels), Decision::Rejected(_)));
        assert_eq!(decide(&order(&[("A", 1)]), &mut levels), Decision::Reserved);
        assert_eq!(levels["A"], 0);
    }

    #[test]
    fn orders_that_break_the_api_rules_are_refused() {
        assert!(check_order(&order(&[])).is_err());
        assert!(check_order(&order(&[("A", 0)])).is_err());
        assert!(check_order(&order(&[("A", 1), ("A", 1)])).is_err());
        // A SKU that breaks the identifier rule is refused sooner: it cannot be decoded.
        let bad_sku = serde_json::to_string(&order(&[("A", 1)])).unwrap().replace(r#""A""#, r#""bad sku""#);
        assert!(events::decode::<OrderPlaced>(bad_sku.as_bytes()).is_err());
        assert!(check_order(&order(&[("A", 1), ("B", 2)])).is_ok());
    }
}
