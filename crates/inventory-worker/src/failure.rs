//! Failure injection, as in the seed article's random failures: a way to watch redelivery,
//! backoff and dead-lettering happen on demand.
//!
//! - a SKU starting with `FAIL-` fails every delivery (the order ends in the dead-letter path);
//! - a SKU starting with `FLAKY-` fails its first delivery only (retried, then reserved);
//! - `INVENTORY_FAILURE_RATE` fails that share of all deliveries at random.

use contract::events::OrderPlaced;

#[derive(Debug, Clone, Copy, Default)]
pub struct FailureInjection {
    pub random_rate: f64,
}

impl FailureInjection {
    /// The reason this delivery (`attempt`, 1-based) must fail, if it must.
    pub fn check(&self, order: &OrderPlaced, attempt: u64) -> Option<String> {
        if let Some(item) = order.items.iter().find(|i| i.sku.as_str().starts_with("FAIL-")) {
            return Some(format!("injected failure: {} fails every delivery", item.sku));
        }
        if attempt == 1
            && let Some(item) = order.items.iter().find(|i| i.sku.as_str().starts_with("FLAKY-"))
        {
            return Some(format!("injected failure: {} fails its first delivery", item.sku));
        }
        if self.random_rate > 0.0 && rand::random_bool(self.random_rate) {
            return Some(format!("injected random failure (INVENTORY_FAILURE_RATE={})", self.random_rate));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::events::OrderItem;

    fn order(skus: &[&str]) -> OrderPlaced {
        OrderPlaced::new("c", skus.iter().map(|sku| OrderItem::new(sku, 1)).collect())
    }

    #[test]
    fn fail_skus_fail_every_delivery() {
        let none = FailureInjection::default();
        for attempt in 1..=10 {
            assert!(none.check(&order(&["WIDGET-1", "FAIL-1"]), attempt).is_some());
        }
    }

    #[test]
    fn flaky_skus_fail_only_the_first_delivery() {
        let none = FailureInjection::default();
        assert!(none.check(&order(&["FLAKY-1"]), 1).is_some());
        assert!(none.check(&order(&["FLAKY-1"]), 2).is_none());
    }

    #[test]
    fn ordinary_orders_never_fail_at_rate_zero_and_always_at_rate_one() {
        assert!(FailureInjection { random_rate: 0.0 }.check(&order(&["WIDGET-1"]), 1).is_none());
        assert!(FailureInjection { random_rate: 1.0 }.check(&order(&["WIDGET-1"]), 3).is_some());
    }
}
