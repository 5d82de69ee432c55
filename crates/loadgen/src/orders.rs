//! What loadgen sends (`POST /orders` bodies, one per [`Kind`]) and what it reads back
//! (`GET /orders/{id}`).
//!
//! The SKUs are the demo catalogue of `migrations/inventory-worker/0001_inventory.sql`; the
//! workers' failure injection reacts to the `FLAKY-` and `FAIL-` prefixes.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::mix::Kind;

/// Well-stocked SKUs: ordinary orders are reserved, at least until a long run uses the stock up.
pub const ORDINARY_SKUS: [&str; 4] = ["WIDGET-1", "WIDGET-2", "GADGET-1", "GIZMO-1"];
/// The order in which ordinary orders pick their SKU: in proportion to the demo stock (1000,
/// 1000, 500 and 250 units, so 4 : 4 : 2 : 1). The four then run low together, and late, rather
/// than GIZMO-1 first; neighbours differ, so an order's two lines never name one SKU twice.
const SKU_CYCLE: [&str; 11] = [
    "WIDGET-1", "WIDGET-2", "GADGET-1", "WIDGET-1", "WIDGET-2", "GIZMO-1", "WIDGET-1", "WIDGET-2",
    "GADGET-1", "WIDGET-1", "WIDGET-2",
];
/// 10 units in stock: it runs out after a few orders, and later ones are rejected.
pub const SCARCE_SKU: &str = "SCARCE-1";
/// Fails its first delivery, then is reserved.
pub const FLAKY_SKU: &str = "FLAKY-1";
/// Fails every delivery, then is dead-lettered.
pub const FAIL_SKU: &str = "FAIL-1";

/// Each scarce order asks for this many of the 10 `SCARCE-1`: two are reserved, then the
/// stock is gone and the rest are rejected, so even a short run shows rejections.
const SCARCE_QUANTITY: u32 = 5;

/// The body of the `n`-th order (0-based, counted per kind) of a kind.
///
/// Variety without random numbers: the SKU, the quantity (1 to 3) and whether a second item
/// is added all follow from `n`, so the same run sends the same orders. Customers repeat
/// every 100 orders, as real customers come back.
pub fn order_body(kind: Kind, n: u64) -> Value {
    let customer = format!("loadgen-{}", n % 100);
    let items = match kind {
        Kind::Ordinary | Kind::Repeat => ordinary_items(n),
        Kind::Scarce => vec![item(SCARCE_SKU, SCARCE_QUANTITY)],
        Kind::Flaky => vec![item(FLAKY_SKU, 1)],
        Kind::Fail => vec![item(FAIL_SKU, 1)],
    };
    json!({ "customer_id": customer, "items": items })
}

/// One or two lines for well-stocked SKUs: on every third order a second line, one unit of the
/// next SKU of the cycle, like an add-on at the checkout (order-api refuses the same SKU twice
/// in one order).
fn ordinary_items(n: u64) -> Vec<Value> {
    let cycle = SKU_CYCLE.len() as u64;
    let sku = |i: u64| SKU_CYCLE[(i % cycle) as usize];
    // Quantities 1, 2, 3, changing once per pass of the cycle, so each SKU gets every quantity.
    let quantity = |i: u64| (1 + (i / cycle) % 3) as u32;
    let mut items = vec![item(sku(n), quantity(n))];
    if n % 3 == 2 {
        items.push(item(sku(n + 1), 1));
    }
    items
}

fn item(sku: &str, quantity: u32) -> Value {
    json!({ "sku": sku, "quantity": quantity })
}

/// Where an order is in its lifecycle, as order-api reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Reserved,
    Rejected,
    DeadLettered,
}

impl Status {
    /// Whether the order has reached an outcome that will not change by itself.
    pub fn is_final(self) -> bool {
        self != Status::Pending
    }
}

/// The fields of an order (`POST /orders` answer, `GET /orders/{id}`) that loadgen reads;
/// serde ignores the rest.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: Status,
    /// When order-api accepted the order, by its clock.
    pub created_at: DateTime<Utc>,
    /// When the status last changed, by the same clock.
    pub updated_at: DateTime<Utc>,
}

impl OrderView {
    /// From accepted to the current status, measured by the server's own timestamps: free of
    /// loadgen's polling interval and of any clock difference between the two machines.
    pub fn time_to_status(&self) -> std::time::Duration {
        (self.updated_at - self.created_at).to_std().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skus(body: &Value) -> Vec<&str> {
        body["items"].as_array().unwrap().iter().map(|item| item["sku"].as_str().unwrap()).collect()
    }

    #[test]
    fn ordinary_orders_vary_sku_quantity_and_number_of_items() {
        let bodies: Vec<Value> = (0..33).map(|n| order_body(Kind::Ordinary, n)).collect();
        for body in &bodies {
            let skus = skus(body);
            assert!(skus.iter().all(|sku| ORDINARY_SKUS.contains(sku)), "{body}");
            assert!(skus.len() == 1 || skus[0] != skus[1], "one SKU twice: {body}");
            for item in body["items"].as_array().unwrap() {
                assert!((1..=3).contains(&item["quantity"].as_u64().unwrap()), "{body}");
            }
        }
        let two_items = bodies.iter().filter(|b| skus(b).len() == 2).count();
        assert_eq!(two_items, 11);
        let quantities: std::collections::BTreeSet<u64> =
            bodies.iter().map(|b| b["items"][0]["quantity"].as_u64().unwrap()).collect();
        assert_eq!(quantities.len(), 3);
    }

    #[test]
    fn ordinary_orders_use_each_sku_in_proportion_to_its_stock() {
        let mut units = std::collections::BTreeMap::new();
        for n in 0..33 * 100 {
            for item in order_body(Kind::Ordinary, n)["items"].as_array().unwrap() {
                *units.entry(item["sku"].as_str().unwrap().to_owned()).or_insert(0u64) +=
                    item["quantity"].as_u64().unwrap();
            }
        }
        let share = |sku: &str| units[sku] as f64 / units["GIZMO-1"] as f64;
        // Stock is 1000 : 1000 : 500 : 250.
        for (sku, expected) in [("WIDGET-1", 4.0), ("WIDGET-2", 4.0), ("GADGET-1", 2.0)] {
            assert!((share(sku) - expected).abs() < 0.01, "{sku}: {units:?}");
        }
    }

    #[test]
    fn each_special_kind_orders_its_own_sku() {
        assert_eq!(skus(&order_body(Kind::Scarce, 0)), [SCARCE_SKU]);
        assert_eq!(skus(&order_body(Kind::Flaky, 7)), [FLAKY_SKU]);
        assert_eq!(skus(&order_body(Kind::Fail, 3)), [FAIL_SKU]);
        assert_eq!(order_body(Kind::Repeat, 5), order_body(Kind::Ordinary, 5));
    }

    #[test]
    fn an_order_view_reads_the_server_timestamps_and_ignores_other_fields() {
        let view: OrderView = serde_json::from_value(json!({
            "order_id": "01a202dc-078a-74cc-b54f-c57681ad863b",
            "status": "dead_lettered",
            "customer_id": "c-42",
            "items": [],
            "reason": "delivery limit reached",
            "created_at": "2026-11-22T11:05:00.903748Z",
            "updated_at": "2026-11-22T11:05:23.923640Z",
        }))
        .unwrap();
        assert_eq!(view.status, Status::DeadLettered);
        assert!(view.status.is_final());
        assert_eq!(view.time_to_status().as_micros(), 23_019_892);
    }
}
