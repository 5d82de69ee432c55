//! The invariants a run must keep, checked once its load has settled: from order-api's and the
//! worker's tables, dlq-service's `dead_letters`, and the streams themselves.
//!
//! [`assert_final_state`] checks them all, in order:
//! - every accepted order is stored, and reached a final status that fits what it asked for
//!   (reserved, rejected only for the scarce SKU, dead-lettered exactly for the failing one);
//! - the scarce units are sold out, and no more;
//! - each decided order's message was applied once (one `processed_messages` row), and the
//!   stock moved exactly by the units reserved;
//! - each message was **stored** once: `orders_stream` has taken exactly one message per order
//!   (plus the poison the test published), and `order_events` holds exactly one outcome event
//!   per order, each projected once. An outbox relay that sent a row twice, outside the
//!   broker's duplicate window, would show here;
//! - each dead message has exactly one `dead_letters` row;
//! - `orders_stream`, a work queue, is left empty.

use std::{collections::BTreeMap, time::Duration};

use contract::streams::{EVENTS_STREAM, ORDERS_STREAM};
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use test_support::{
    http::{InventoryApi, Stock},
    stack::{Broker, Stack},
    wait_until,
};

use crate::steady_load::{FAILING_SKU, SCARCE_SKU, SKUS};

/// How long the pipeline may take to settle after the load, on one server.
pub const SETTLE: Duration = Duration::from_secs(90);

/// One row of `order_api.orders`: its status and items.
#[derive(Debug)]
struct StoredOrder {
    status: String,
    items: Vec<(String, i64)>,
}

impl StoredOrder {
    fn asks_for(&self, sku: &str) -> bool {
        self.items.iter().any(|(s, _)| s == sku)
    }
}

/// The test's expectations beyond the accepted orders.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// Units of [`SCARCE_SKU`] in stock when the load started.
    pub scarce_units: i64,
    /// Poison messages the test published on `orders.new` itself (not through order-api).
    pub poison_messages: u64,
    /// How long the pipeline may take to settle after the load: [`SETTLE`], or more where a
    /// test expects a slower path (on a cluster whose workers do not answer the sweep, it
    /// waits `dlq_service::sweep::REPLICATED_REMOVAL_LAG` before it takes a message as dead).
    pub settle: Duration,
}

/// What the run ended as, for the figures a test prints.
#[derive(Debug)]
pub struct FinalState {
    /// Orders by final status.
    pub statuses: BTreeMap<String, usize>,
    /// `dead_letters` rows.
    pub dead_letters: i64,
}

/// Stocks every SKU of the load (plenty of each, `scarce_units` of [`SCARCE_SKU`]) and returns
/// the stock as it is then, for [`assert_final_state`] to compare with.
pub async fn stock_for_the_load(
    inventory: &InventoryApi,
    scarce_units: i64,
) -> BTreeMap<&'static str, Stock> {
    let mut stock = BTreeMap::new();
    for sku in SKUS {
        inventory.set(sku, if sku == SCARCE_SKU { scarce_units } else { 1_000_000 }).await;
        stock.insert(sku, inventory.get(sku).await);
    }
    stock
}

/// Waits until every accepted order reached a final status, then checks every invariant of the
/// module docs, panicking with what is wrong.
pub async fn assert_final_state<B: Broker>(
    stack: &Stack<B>,
    accepted: &[String],
    stock_before: &BTreeMap<&'static str, Stock>,
    expected: Expected,
) -> FinalState {
    stack.wait_until_no_order_pending(expected.settle).await;
    let pool = stack.pool().await;
    let orders = stored_orders(&pool).await;
    assert_none_lost(accepted, &orders);
    let statuses = assert_outcomes_fit_the_items(&orders);
    let reserved = reserved_units(&orders);
    let scarce_orders = orders.values().filter(|o| o.asks_for(SCARCE_SKU)).count() as i64;
    assert_eq!(
        reserved.get(SCARCE_SKU).copied().unwrap_or(0),
        expected.scarce_units.min(scarce_orders),
        "the scarce units are sold out, and no more"
    );
    let decided = count(&statuses, "reserved") + count(&statuses, "rejected");
    assert_eq!(processed(&pool, Consumer::Worker).await, decided as i64, "each order's message applied once");
    assert_stock_moved_exactly(stack.inventory(), stock_before, &reserved).await;
    assert_each_message_stored_once(stack, &pool, orders.len(), expected).await;
    let dead_letters =
        assert_each_dead_letter_captured_once(&pool, count(&statuses, "dead_lettered"), expected).await;
    FinalState { statuses, dead_letters }
}

async fn stored_orders(pool: &PgPool) -> BTreeMap<String, StoredOrder> {
    let rows: Vec<(String, String, Json<Value>)> =
        sqlx::query_as("SELECT id::text, status, items FROM order_api.orders")
            .fetch_all(pool)
            .await
            .expect("read the orders");
    rows.into_iter()
        .map(|(id, status, items)| {
            let items = items
                .0
                .as_array()
                .expect("items is an array")
                .iter()
                .map(|i| {
                    (i["sku"].as_str().expect("sku").to_owned(), i["quantity"].as_i64().expect("quantity"))
                })
                .collect();
            (id, StoredOrder { status, items })
        })
        .collect()
}

fn assert_none_lost(accepted: &[String], orders: &BTreeMap<String, StoredOrder>) {
    let lost: Vec<&String> = accepted.iter().filter(|id| !orders.contains_key(id.as_str())).collect();
    assert!(lost.is_empty(), "{} accepted orders lost: {lost:?}", lost.len());
    assert_eq!(orders.len(), accepted.len(), "no order stored that was not accepted");
}

/// Reserved, rejected only for the scarce SKU, dead-lettered exactly for the failing one.
fn assert_outcomes_fit_the_items(orders: &BTreeMap<String, StoredOrder>) -> BTreeMap<String, usize> {
    let mut statuses = BTreeMap::new();
    for (id, order) in orders {
        *statuses.entry(order.status.clone()).or_default() += 1;
        let fits = match order.status.as_str() {
            "reserved" => !order.asks_for(FAILING_SKU),
            "rejected" => order.asks_for(SCARCE_SKU),
            "dead_lettered" => order.asks_for(FAILING_SKU),
            _ => false,
        };
        assert!(fits, "order {id} ended {} for {:?}", order.status, order.items);
        if order.asks_for(FAILING_SKU) {
            assert_eq!(order.status, "dead_lettered", "order {id} asks for {FAILING_SKU}");
        }
    }
    statuses
}

fn reserved_units(orders: &BTreeMap<String, StoredOrder>) -> BTreeMap<String, i64> {
    let mut units = BTreeMap::new();
    for order in orders.values().filter(|o| o.status == "reserved") {
        for (sku, quantity) in &order.items {
            *units.entry(sku.clone()).or_default() += quantity;
        }
    }
    units
}

fn count(statuses: &BTreeMap<String, usize>, status: &str) -> usize {
    statuses.get(status).copied().unwrap_or(0)
}

/// A durable consumer that records what it applied in its service's `processed_messages`.
#[derive(Debug, Clone, Copy)]
enum Consumer {
    /// inventory-worker's, of `orders.new`.
    Worker,
    /// order-api's projection, of `order_events.>`.
    Projection,
}

/// How many messages `consumer` applied (rows in its service's `processed_messages`).
async fn processed(pool: &PgPool, consumer: Consumer) -> i64 {
    let query = match consumer {
        Consumer::Worker => {
            "SELECT count(*) FROM inventory.processed_messages WHERE consumer = 'inventory-worker'"
        }
        Consumer::Projection => {
            "SELECT count(*) FROM order_api.processed_messages WHERE consumer = 'order-api-projection'"
        }
    };
    sqlx::query_scalar(query).fetch_one(pool).await.expect("count processed messages")
}

async fn assert_stock_moved_exactly(
    inventory: &InventoryApi,
    before: &BTreeMap<&'static str, Stock>,
    reserved: &BTreeMap<String, i64>,
) {
    for (sku, was) in before {
        let now = inventory.get(sku).await;
        let taken = reserved.get(*sku).copied().unwrap_or(0);
        assert_eq!(was.available - now.available, taken, "available units of {sku}");
        assert_eq!(now.reserved - was.reserved, taken, "reserved units of {sku}");
    }
}

/// One stored message per order on each stream (see the module docs), each event projected
/// once, and the work queue left empty.
async fn assert_each_message_stored_once<B: Broker>(
    stack: &Stack<B>,
    pool: &PgPool,
    orders: usize,
    expected: Expected,
) {
    let poison = expected.poison_messages;
    let js = stack.jetstream().await.expect("connect to JetStream");
    let mut work_queue = js.get_stream(ORDERS_STREAM).await.expect("orders_stream");
    let work_queue = work_queue.info().await.expect("orders_stream info").state.clone();
    assert_eq!(work_queue.last_sequence, orders as u64 + poison, "orders_stream stored each order once");
    let mut events = js.get_stream(EVENTS_STREAM).await.expect("order_events");
    let state = events.info().await.expect("order_events info").state.clone();
    if state.messages != orders as u64 {
        let copies = events_stored_more_than_once(&events, state.first_sequence, state.last_sequence).await;
        panic!(
            "order_events holds {} events for {orders} orders; the events of an order stored more than once: {copies:#?}",
            state.messages
        );
    }
    assert_eq!(processed(pool, Consumer::Projection).await, orders as i64, "each outcome projected once");
    wait_until("orders_stream is left empty", expected.settle, || async {
        let mut stream = js.get_stream(ORDERS_STREAM).await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
}

/// One stored copy of an event, as the failure of [`assert_each_message_stored_once`] shows it.
#[derive(Debug)]
#[allow(dead_code)] // Read through Debug, in the panic message.
struct StoredEvent {
    sequence: u64,
    stored_at: String,
    subject: String,
    nats_msg_id: Option<String>,
    ce_id: Option<String>,
}

/// Every event of `stream` whose order has more than one, by order: what tells a broker that
/// stored one message twice (the same `Nats-Msg-Id`) from a publisher that sent two.
async fn events_stored_more_than_once(
    stream: &async_nats::jetstream::stream::Stream,
    first: u64,
    last: u64,
) -> BTreeMap<String, Vec<StoredEvent>> {
    let mut by_order: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
    for sequence in first..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let order = serde_json::from_slice::<Value>(&message.payload)
            .ok()
            .and_then(|v| v["order_id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("(no order_id in message {sequence})"));
        by_order.entry(order).or_default().push(StoredEvent {
            sequence,
            stored_at: message.time.to_string(),
            subject: message.subject.to_string(),
            nats_msg_id: header(contract::headers::NATS_MSG_ID),
            ce_id: header(contract::headers::ID),
        });
    }
    by_order.retain(|_, copies| copies.len() > 1);
    by_order
}

/// One `dead_letters` row per dead-lettered order (by its ID) and one per poison message.
async fn assert_each_dead_letter_captured_once(
    pool: &PgPool,
    dead_lettered: usize,
    expected: Expected,
) -> i64 {
    let settle = expected.settle;
    let expected = dead_lettered as i64 + expected.poison_messages as i64;
    let rows = wait_until("every dead message is captured", settle, || async {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dlq.dead_letters").fetch_one(pool).await.ok()?;
        (rows >= expected).then_some(rows)
    })
    .await;
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id::text, count(*) FROM dlq.dead_letters WHERE order_id IS NOT NULL
         GROUP BY order_id HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("count dead letters by order");
    assert!(twice.is_empty(), "orders with more than one dead letter: {twice:?}");
    let of_orders: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT order_id) FROM dlq.dead_letters WHERE order_id IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .expect("count dead letters of orders");
    assert_eq!(of_orders, dead_lettered as i64, "one dead letter per dead-lettered order");
    assert_eq!(rows, expected, "one dead letter per dead message, none twice");
    rows
}
