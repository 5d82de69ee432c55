//! The invariants, checked against the database, JetStream and /proc once the system has settled.
//! Each prints its figures; any breach makes the run fail.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    load::Outcome,
    plan::{Kind, Plan},
};

/// The schemas that have an outbox (one per service).
pub const SCHEMAS: [&str; 3] = ["order_api", "inventory", "dlq"];

/// The verdicts, in the order they were checked.
#[derive(Debug, Default)]
pub struct Verdicts {
    pub lines: Vec<(bool, String, String)>,
}

impl Verdicts {
    pub fn check(&mut self, ok: bool, name: &str, figures: String) {
        println!("{}  {name}: {figures}", if ok { "PASS" } else { "FAIL" });
        self.lines.push((ok, name.to_owned(), figures));
    }

    pub fn breaches(&self) -> Vec<&str> {
        self.lines.iter().filter(|(ok, ..)| !ok).map(|(_, name, _)| name.as_str()).collect()
    }
}

/// What the database holds about orders, read once.
#[derive(Debug)]
pub struct Snapshot {
    /// Every order row: status and items.
    pub orders: HashMap<Uuid, (String, Vec<(String, i64)>)>,
    /// `dead_letters` rows: (order_id, source stream, source sequence, reason).
    pub dead_letters: Vec<(Option<Uuid>, String, i64, String)>,
    /// Per SKU: (available, reserved).
    pub stock: BTreeMap<String, (i64, i64)>,
    /// `processed_messages` rows per consumer, in the inventory schema.
    pub processed: BTreeMap<String, i64>,
    /// Unsent outbox rows per schema.
    pub unsent: BTreeMap<&'static str, i64>,
}

impl Snapshot {
    pub async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let rows: Vec<(Uuid, String, serde_json::Value)> =
            sqlx::query_as("SELECT id, status, items FROM order_api.orders").fetch_all(pool).await?;
        let orders = rows
            .into_iter()
            .map(|(id, status, items)| {
                let items = items
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|i| {
                                (
                                    i["sku"].as_str().unwrap_or_default().to_owned(),
                                    i["quantity"].as_i64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (id, (status, items))
            })
            .collect();
        let dead_letters =
            sqlx::query_as("SELECT order_id, source_stream, source_sequence, reason FROM dlq.dead_letters")
                .fetch_all(pool)
                .await?;
        let stock = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT sku, available, reserved FROM inventory.inventory",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(sku, a, r)| (sku, (a, r)))
        .collect();
        let processed = sqlx::query_as::<_, (String, i64)>(
            "SELECT consumer, count(*) FROM inventory.processed_messages GROUP BY consumer",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let mut unsent = BTreeMap::new();
        for schema in SCHEMAS {
            let sql = format!("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL");
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.context("outbox")?;
            unsent.insert(schema, n);
        }
        Ok(Self { orders, dead_letters, stock, processed, unsent })
    }

    /// Whether the run has settled: every accepted order final, every expected dead letter
    /// there, every outbox drained.
    pub fn settled(&self, plan: &Plan, outcomes: &[Outcome]) -> bool {
        let final_ = accepted(plan, outcomes)
            .all(|(_, id)| self.orders.get(&id).is_some_and(|(status, _)| status != "pending"));
        let expected_letters = accepted(plan, outcomes).filter(|(kind, _)| *kind == Kind::Failing).count()
            + outcomes.iter().filter(|o| matches!(o, Outcome::Published(_))).count();
        final_ && self.dead_letters.len() >= expected_letters && self.unsent.values().all(|n| *n == 0)
    }
}

/// Accepted orders: (kind, order ID).
pub fn accepted<'a>(plan: &'a Plan, outcomes: &'a [Outcome]) -> impl Iterator<Item = (Kind, Uuid)> + 'a {
    plan.orders.iter().zip(outcomes).filter_map(|(planned, outcome)| match outcome {
        Outcome::Accepted(id) => Some((planned.kind, *id)),
        _ => None,
    })
}

/// The invariants about orders, stock, dead letters and outboxes.
pub fn data(verdicts: &mut Verdicts, plan: &Plan, outcomes: &[Outcome], snap: &Snapshot) {
    let accepted: Vec<(Kind, Uuid)> = accepted(plan, outcomes).collect();

    // Every accepted order is stored, and final.
    let lost: Vec<&Uuid> =
        accepted.iter().filter(|(_, id)| !snap.orders.contains_key(id)).map(|(_, id)| id).collect();
    verdicts.check(
        lost.is_empty(),
        "0 lost",
        format!(
            "{} accepted (202), {} missing from order_api.orders{}",
            accepted.len(),
            lost.len(),
            sample(&lost)
        ),
    );
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pending = Vec::new();
    for (_, id) in &accepted {
        if let Some((status, _)) = snap.orders.get(id) {
            *by_status.entry(status.as_str()).or_default() += 1;
            if status == "pending" {
                pending.push(id);
            }
        }
    }
    verdicts.check(
        pending.is_empty(),
        "every accepted order final",
        format!("{by_status:?}{}", sample(&pending)),
    );

    // Each kind ends as it must.
    let mut wrong: BTreeMap<(Kind, &str), Vec<&Uuid>> = BTreeMap::new();
    for (kind, id) in &accepted {
        if let Some((status, _)) = snap.orders.get(id)
            && status != "pending"
            && !kind.allows(status)
        {
            wrong.entry((*kind, status.as_str())).or_default().push(id);
        }
    }
    let figures = if wrong.is_empty() {
        "ordinary and flaky reserved, failing dead_lettered, unknown SKU rejected, scarce reserved or rejected".into()
    } else {
        wrong
            .iter()
            .map(|((kind, status), ids)| {
                format!("{} {} ended {status}{}", ids.len(), kind.name(), sample(ids))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    verdicts.check(wrong.is_empty(), "every order's outcome as its kind demands", figures);

    // Applied once: one processed_messages row per order the worker decided (reserved or
    // rejected), and the stock moved exactly once per reserved order.
    let decided =
        snap.orders.values().filter(|(status, _)| status == "reserved" || status == "rejected").count();
    let processed = snap.processed.get("inventory-worker").copied().unwrap_or(0);
    verdicts.check(
        usize::try_from(processed).is_ok_and(|p| p == decided),
        "0 reserved twice (each order's message applied once)",
        format!(
            "inventory.processed_messages for inventory-worker: {processed}; orders reserved or rejected: {decided}; all consumers: {:?}",
            snap.processed
        ),
    );
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for (status, items) in snap.orders.values() {
        if status == "reserved" {
            for (sku, quantity) in items {
                *want.entry(sku.as_str()).or_default() += quantity;
            }
        }
    }
    let mut off = Vec::new();
    let mut exact = Vec::new();
    for (sku, initial) in &plan.stock {
        let (available, reserved) = snap.stock.get(sku).copied().unwrap_or((-1, -1));
        let expected = want.get(sku.as_str()).copied().unwrap_or(0);
        let line = format!(
            "{sku} reserved {reserved} (orders say {expected}), available {available} (of {initial})"
        );
        if reserved != expected || available + reserved != *initial {
            off.push(line);
        } else {
            exact.push(format!("{sku} {reserved}"));
        }
    }
    verdicts.check(
        off.is_empty(),
        "stock exact per SKU",
        if off.is_empty() { format!("reserved units: {}", exact.join(", ")) } else { off.join("; ") },
    );

    // Dead letters: exactly one per failing order and per poison message, and no others.
    let mut per_order: HashMap<Uuid, usize> = HashMap::new();
    let mut per_sequence: HashMap<i64, usize> = HashMap::new();
    for (order_id, stream, sequence, _) in &snap.dead_letters {
        if let Some(id) = order_id {
            *per_order.entry(*id).or_default() += 1;
        }
        if stream == "orders_stream" {
            *per_sequence.entry(*sequence).or_default() += 1;
        }
    }
    let failing: Vec<Uuid> =
        accepted.iter().filter(|(k, _)| *k == Kind::Failing).map(|(_, id)| *id).collect();
    let poison: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Published(seq) => i64::try_from(*seq).ok(),
            _ => None,
        })
        .collect();
    let failing_bad: Vec<(Uuid, usize)> = failing
        .iter()
        .map(|id| (*id, per_order.get(id).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    let poison_bad: Vec<(i64, usize)> = poison
        .iter()
        .map(|seq| (*seq, per_sequence.get(seq).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    let failing_set: HashSet<Uuid> = failing.iter().copied().collect();
    let poison_set: HashSet<i64> = poison.iter().copied().collect();
    let stray: Vec<String> = snap
        .dead_letters
        .iter()
        .filter(|(order_id, stream, seq, _)| {
            !(order_id.is_some_and(|id| failing_set.contains(&id))
                || (stream == "orders_stream" && poison_set.contains(seq)))
        })
        .map(|(order_id, stream, seq, reason)| {
            let kind = order_id
                .and_then(|id| accepted.iter().find(|(_, a)| *a == id).map(|(k, _)| k.name()))
                .unwrap_or("?");
            format!(
                "{stream}#{seq} order {order_id:?} ({kind}): {}",
                reason.chars().take(120).collect::<String>()
            )
        })
        .collect();
    verdicts.check(
        failing_bad.is_empty() && poison_bad.is_empty() && stray.is_empty(),
        "every dead letter exactly once",
        format!(
            "{} rows; failing orders {} (not exactly one row: {}{}); poison messages {} (not exactly one row: {}{}); stray rows: {}{}",
            snap.dead_letters.len(),
            failing.len(),
            failing_bad.len(),
            sample(&failing_bad),
            poison.len(),
            poison_bad.len(),
            sample(&poison_bad),
            stray.len(),
            sample(&stray),
        ),
    );

    verdicts.check(
        snap.unsent.values().all(|n| *n == 0),
        "outboxes drained",
        format!("unsent rows: {:?}", snap.unsent),
    );
}

/// Up to five examples, for a breach's figures.
pub fn sample<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.is_empty() { String::new() } else { format!(" e.g. {:?}", &items[..items.len().min(5)]) }
}
