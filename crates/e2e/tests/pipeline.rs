//! The whole pipeline from the outside: the real `order-api` and `inventory-worker` binaries,
//! a nats-server and Postgres, orders placed over HTTP and followed to their final status.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use test_support::{
    http::{OrderApi, order_body},
    stack::Stack,
    wait_until,
};

const SKUS: [&str; 5] = ["WIDGET-1", "WIDGET-2", "GADGET-1", "SCARCE-1", "FLAKY-1"];
const SETTLE: Duration = Duration::from_secs(90);

/// Available and reserved units per SKU.
async fn stock_levels(stack: &Stack) -> HashMap<&'static str, (i64, i64)> {
    let mut levels = HashMap::new();
    for sku in SKUS {
        let stock = stack.inventory().get(sku).await;
        levels.insert(sku, (stock.available, stock.reserved));
    }
    levels
}

/// Waits until no order is pending, then reads every order through `GET /orders/{id}`.
async fn final_orders(stack: &Stack, ids: &[String]) -> Vec<Value> {
    stack.wait_until_no_order_pending(SETTLE).await;
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        let (status, body) = stack.api.get(id).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(body["status"], "pending");
        orders.push(body);
    }
    orders
}

/// Units of each SKU taken by the reserved orders among `orders`.
fn reserved_units(orders: &[Value]) -> BTreeMap<String, i64> {
    let mut units = BTreeMap::new();
    for order in orders.iter().filter(|o| o["status"] == "reserved") {
        for item in order["items"].as_array().unwrap() {
            *units.entry(item["sku"].as_str().unwrap().to_owned()).or_default() +=
                item["quantity"].as_i64().unwrap();
        }
    }
    units
}

/// Stock moved by exactly the reserved quantities: nothing reserved twice, nothing lost.
async fn assert_stock_moved_exactly(stack: &Stack, before: &HashMap<&str, (i64, i64)>, orders: &[Value]) {
    let after = stock_levels(stack).await;
    let units = reserved_units(orders);
    for sku in SKUS {
        let taken = units.get(sku).copied().unwrap_or(0);
        let (available_before, reserved_before) = before[sku];
        let (available_after, reserved_after) = after[sku];
        assert_eq!(available_before - available_after, taken, "available units of {sku}");
        assert_eq!(reserved_after - reserved_before, taken, "reserved units of {sku}");
    }
}

async fn wait_for_empty_consumer(stack: &Stack) {
    wait_until("nothing is left pending in the worker consumer", SETTLE, || async {
        (stack.worker_consumer_backlog().await? == (0, 0)).then_some(())
    })
    .await;
}

async fn processed_by(pool: &PgPool, instance: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inventory.processed_messages WHERE processed_by = $1")
        .bind(instance)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Places `count` ordinary orders, `concurrency` at a time, and returns their IDs.
async fn place_widget_orders(api: OrderApi, count: usize, concurrency: usize) -> Vec<String> {
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move { api.place_ok(&format!("c-{i}"), &[("WIDGET-1", 1 + (i % 2) as u32)], None).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test]
async fn a_few_hundred_concurrent_orders_all_reach_their_final_status_and_stock_moves_exactly_once() {
    let mut stack = Stack::start(2, &[]).await;
    let before = stock_levels(&stack).await;

    // The mix: ordinary orders, orders for scarce stock (10 units for 40 orders), FLAKY- orders
    // (a failed first delivery, then reserved) and requests repeated with the same key.
    let mut requests: Vec<(Value, Option<String>)> = Vec::new();
    for i in 0..200u32 {
        let mut items = vec![(if i % 2 == 0 { "WIDGET-1" } else { "WIDGET-2" }, 1 + i % 3)];
        if i % 4 == 0 {
            items.push(("GADGET-1", 1));
        }
        requests.push((order_body(&format!("c-{i}"), &items), None));
    }
    for i in 0..40 {
        requests.push((order_body(&format!("s-{i}"), &[("SCARCE-1", 1)]), None));
    }
    for i in 0..30 {
        requests.push((order_body(&format!("f-{i}"), &[("FLAKY-1", 2)]), None));
    }
    for k in 0..15 {
        for _ in 0..2 {
            requests.push((order_body(&format!("k-{k}"), &[("WIDGET-2", 1)]), Some(format!("key-{k}"))));
        }
    }
    let api = stack.api.clone();
    let responses: Vec<(Option<String>, Value)> = stream::iter(requests)
        .map(|(body, key)| {
            let api = api.clone();
            async move {
                let response = api.place(&body, key.as_deref()).await;
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                (key, response.json::<Value>().await.unwrap())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    for (key, body) in &responses {
        let id = body["order_id"].as_str().unwrap().to_owned();
        match key {
            Some(key) => by_key.entry(key.clone()).or_default().push(id),
            None => ids.push(id),
        }
    }
    for (key, key_ids) in &by_key {
        assert_eq!(key_ids[0], key_ids[1], "both requests with {key} got the same order");
        ids.push(key_ids[0].clone());
    }
    assert_eq!(ids.len(), 285);

    // The same orders.new messages again, straight to NATS: same logical ID (ce-id), new broker
    // dedupe key, so JetStream stores them and only the workers' idempotency stands in the way.
    let pool = stack.pool().await;
    let js = stack.nats.jetstream().await;
    type OutboxRow = (String, Json<BTreeMap<String, String>>, Vec<u8>);
    let sent: Vec<OutboxRow> =
        sqlx::query_as("SELECT subject, headers, payload FROM order_api.outbox ORDER BY id LIMIT 5")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sent.len(), 5);
    for (subject, headers, payload) in sent {
        let headers =
            shared::messaging::envelope::nats_headers(&headers.0, &uuid::Uuid::now_v7().to_string());
        let ack = js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap();
        assert!(!ack.duplicate, "stored again by the broker");
    }

    let orders = final_orders(&stack, &ids).await;
    let status_of = |prefix: &str| -> Vec<&Value> {
        orders.iter().filter(|o| o["customer_id"].as_str().unwrap().starts_with(prefix)).collect()
    };
    for order in status_of("c-").iter().chain(&status_of("f-")).chain(&status_of("k-")) {
        assert_eq!(order["status"], "reserved", "{order}");
    }
    let scarce = status_of("s-");
    let reserved = scarce.iter().filter(|o| o["status"] == "reserved").count();
    assert_eq!(reserved, 10, "exactly the 10 units in stock were sold");
    for order in scarce.iter().filter(|o| o["status"] != "reserved") {
        assert_eq!(order["status"], "rejected");
        assert!(order["reason"].as_str().unwrap().starts_with("insufficient stock for SCARCE-1"), "{order}");
    }
    assert_stock_moved_exactly(&stack, &before, &orders).await;

    for worker in &stack.workers {
        assert!(processed_by(&pool, &worker.instance).await > 0, "{} did work", worker.instance);
    }
    wait_for_empty_consumer(&stack).await;

    // Graceful stop: SIGTERM, exit code 0.
    assert!(stack.order_api.terminate().await.success());
    for worker in &mut stack.workers {
        assert!(worker.process.terminate().await.success(), "{} exits 0", worker.instance);
    }
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_no_order_and_reserves_none_twice() {
    let mut stack = Stack::start(2, &[("WORKER_BATCH_SIZE", "10")]).await;
    let before = stock_levels(&stack).await;
    let pool = stack.pool().await;

    let placing = tokio::spawn(place_widget_orders(stack.api.clone(), 300, 8));
    wait_until("worker-1 is in the middle of the run", SETTLE, || async {
        (processed_by(&pool, "worker-1").await >= 30).then_some(())
    })
    .await;
    stack.workers[0].process.kill().await;
    let killed_after = processed_by(&pool, "worker-1").await;
    let ids = placing.await.unwrap();

    let orders = final_orders(&stack, &ids).await;
    assert!(orders.iter().all(|o| o["status"] == "reserved"), "every order reserved");
    assert_stock_moved_exactly(&stack, &before, &orders).await;
    assert_eq!(processed_by(&pool, "worker-1").await, killed_after, "the dead worker did nothing more");
    assert!(processed_by(&pool, "worker-2").await > 0);
    wait_for_empty_consumer(&stack).await;
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_finishes_its_batch_and_exits_0() {
    let mut stack = Stack::start(2, &[("WORKER_BATCH_SIZE", "10")]).await;
    let before = stock_levels(&stack).await;
    let pool = stack.pool().await;

    let placing = tokio::spawn(place_widget_orders(stack.api.clone(), 200, 8));
    wait_until("worker-1 is in the middle of the run", SETTLE, || async {
        (processed_by(&pool, "worker-1").await >= 20).then_some(())
    })
    .await;
    let status = stack.workers[0].process.terminate().await;
    assert!(status.success(), "exit status {status}");
    let ids = placing.await.unwrap();

    let orders = final_orders(&stack, &ids).await;
    assert!(orders.iter().all(|o| o["status"] == "reserved"));
    assert_stock_moved_exactly(&stack, &before, &orders).await;
    wait_for_empty_consumer(&stack).await;
}

#[tokio::test]
async fn orders_placed_while_nats_is_down_are_all_processed_once_it_is_back() {
    let mut stack = Stack::start(2, &[]).await;
    let before = stock_levels(&stack).await;

    let mut ids = place_widget_orders(stack.api.clone(), 50, 4).await;
    stack.nats.stop();
    // Orders keep being accepted (202, checked by place_ok) while NATS is down: they wait in the
    // outbox. (Placed after the stop, not alongside it: a fast machine would otherwise have
    // placed them all before NATS went away.)
    ids.extend(place_widget_orders(stack.api.clone(), 100, 4).await);
    stack.nats.start_again().await;

    let orders = final_orders(&stack, &ids).await;
    assert!(orders.iter().all(|o| o["status"] == "reserved"), "every order processed once NATS is back");
    assert_stock_moved_exactly(&stack, &before, &orders).await;
    wait_for_empty_consumer(&stack).await;
}
