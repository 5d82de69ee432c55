//! What the soak sends: a seeded mix of orders, so that a failing run can be repeated exactly.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

/// SKUs ordinary orders draw from; stocked so that they never run out.
pub const PLENTIFUL: [&str; 4] = ["WIDGET-1", "WIDGET-2", "GADGET-1", "GIZMO-1"];
/// Fails its first delivery (inventory-worker's failure injection), then is reserved.
pub const FLAKY: &str = "FLAKY-1";
/// Fails every delivery: the order is dead-lettered.
pub const FAILING: &str = "FAIL-1";
/// Stocked for about half the orders that want it: the rest are rejected (insufficient stock).
pub const SCARCE: &str = "SCARCE-1";
/// Units of each plentiful, flaky and failing SKU at the start.
pub const PLENTY: i64 = 10_000_000;

/// One thing the load sends, and what must become of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Plentiful SKUs only: must end `reserved`.
    Ordinary,
    /// Has a `FLAKY-` item: fails once, must still end `reserved`.
    Flaky,
    /// Has a `FAIL-` item: must end `dead_lettered`, with exactly one dead letter.
    Failing,
    /// Wants the scarce SKU: ends `reserved` or `rejected`, whichever the stock allows.
    Scarce,
    /// Names a SKU the inventory does not have: must end `rejected`.
    UnknownSku,
    /// Published straight to `orders.new` (the API refuses invalid orders): a payload that is
    /// not an order. Must end as exactly one dead letter.
    PoisonPayload,
    /// Published straight to `orders.new`: an order's payload without its `ce-*` headers.
    PoisonHeaders,
    /// Published straight to `orders.new`: JSON that is not an order and holds `\u0000`, which
    /// Postgres cannot store in `jsonb` (the dead letter must keep it anyway).
    PoisonNul,
}

impl Kind {
    pub fn is_poison(self) -> bool {
        matches!(self, Kind::PoisonPayload | Kind::PoisonHeaders | Kind::PoisonNul)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ordinary => "ordinary",
            Kind::Flaky => "flaky",
            Kind::Failing => "failing",
            Kind::Scarce => "scarce (rejected if out of stock)",
            Kind::UnknownSku => "unknown SKU (rejected)",
            Kind::PoisonPayload => "poison: unreadable payload",
            Kind::PoisonHeaders => "poison: no ce-* headers",
            Kind::PoisonNul => "poison: JSON with \\u0000",
        }
    }

    /// Whether an order of this kind may end with `status`.
    pub fn allows(self, status: &str) -> bool {
        match self {
            Kind::Ordinary | Kind::Flaky => status == "reserved",
            Kind::Failing => status == "dead_lettered",
            Kind::Scarce => status == "reserved" || status == "rejected",
            Kind::UnknownSku => status == "rejected",
            Kind::PoisonPayload | Kind::PoisonHeaders | Kind::PoisonNul => false,
        }
    }
}

/// One planned order (or poison message).
#[derive(Debug, Clone)]
pub struct Planned {
    pub index: usize,
    pub kind: Kind,
    /// `POST /orders` body; for poison, the payload's source.
    pub body: Value,
    /// The `Idempotency-Key` every attempt of this order sends.
    pub key: String,
}

/// The whole run's orders, and the stock to start with.
#[derive(Debug)]
pub struct Plan {
    pub orders: Vec<Planned>,
    pub stock: BTreeMap<String, i64>,
}

impl Plan {
    /// `n` orders drawn from `seed`: about 79 % ordinary, 6 % flaky, 3 % failing, 5 % scarce,
    /// 4 % unknown SKU, 3 % poison (1 % of each kind).
    /// Without `nul_poison`, the poison messages that hold `\u0000` are unreadable payloads
    /// instead.
    pub fn new(n: usize, seed: u64, nul_poison: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut orders = Vec::with_capacity(n);
        for index in 0..n {
            let roll = rng.random_range(0..100u32);
            let kind = match roll {
                0..79 => Kind::Ordinary,
                79..85 => Kind::Flaky,
                85..88 => Kind::Failing,
                88..93 => Kind::Scarce,
                93..97 => Kind::UnknownSku,
                97 => Kind::PoisonPayload,
                98 => Kind::PoisonHeaders,
                _ if nul_poison => Kind::PoisonNul,
                _ => Kind::PoisonPayload,
            };
            let mut items: Vec<(String, u32)> = Vec::new();
            let plentiful = rng.random_range(1..=3usize);
            let first = rng.random_range(0..PLENTIFUL.len());
            for k in 0..plentiful {
                items.push((PLENTIFUL[(first + k) % PLENTIFUL.len()].to_owned(), rng.random_range(1..=5)));
            }
            match kind {
                Kind::Flaky => items.push((FLAKY.to_owned(), rng.random_range(1..=3))),
                Kind::Failing => items.push((FAILING.to_owned(), 1)),
                Kind::Scarce => items.push((SCARCE.to_owned(), rng.random_range(1..=3))),
                Kind::UnknownSku => items.push((format!("UNKNOWN-{}", rng.random_range(1..=9)), 1)),
                _ => {}
            }
            let body = json!({
                "customer_id": format!("chaos-{}", index % 97),
                "items": items.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
            });
            orders.push(Planned { index, kind, body, key: format!("chaos-{seed}-{index}") });
        }
        let scarce_orders = orders.iter().filter(|o| o.kind == Kind::Scarce).count();
        let mut stock: BTreeMap<String, i64> =
            PLENTIFUL.iter().chain(&[FLAKY, FAILING]).map(|sku| ((*sku).to_owned(), PLENTY)).collect();
        // Scarce orders want 2 units on average: stock for about half of them.
        stock.insert(SCARCE.to_owned(), i64::try_from(scarce_orders).unwrap_or(i64::MAX));
        Self { orders, stock }
    }

    /// How many of each kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        for order in &self.orders {
            *counts.entry(order.kind).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let (a, b) = (Plan::new(200, 7, true), Plan::new(200, 7, true));
        let bodies = |p: &Plan| p.orders.iter().map(|o| o.body.to_string()).collect::<Vec<_>>();
        assert_eq!(bodies(&a), bodies(&b));
        assert_ne!(bodies(&a), bodies(&Plan::new(200, 8, true)));
    }

    #[test]
    fn a_large_plan_has_every_kind() {
        assert_eq!(Plan::new(2_000, 1, true).counts().len(), 8);
    }
}
