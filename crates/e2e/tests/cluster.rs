//! The whole system on a three-node NATS cluster, its streams at three replicas: the node that
//! leads `orders_stream` is killed under a steady load, and later restarted, then another node
//! is stopped and started. No accepted order may be lost, none reserved twice, and the stock
//! must move exactly by what was reserved.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;
use test_support::{NatsCluster, http::order_body, stack::Stack, wait_until};

const STREAMS: [&str; 3] = ["orders_stream", "order_events", "orders_unprocessed"];
/// Orders per second the load places, one every 20 ms.
const PACE: Duration = Duration::from_millis(20);
/// Every fifth order asks for the scarce SKU, of which there are fewer units than orders.
const SCARCE_UNITS: i64 = 20;
const SKUS: [&str; 3] = ["WIDGET-1", "WIDGET-2", "SCARCE-1"];

/// One `POST /orders`: when it was sent, how long it took, its status and (if 202) the order.
#[derive(Debug, Clone)]
struct Placed {
    sent: Instant,
    latency: Duration,
    status: StatusCode,
    order_id: Option<String>,
}

/// Places an order every [`PACE`] until `stop` is set, each in a task of its own so a
/// slow answer does not slow the pace.
fn steady_load(
    api: test_support::http::OrderApi,
    placed: Arc<Mutex<Vec<Placed>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PACE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests = tokio::task::JoinSet::new();
        for n in 0u64.. {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (api, placed) = (api.clone(), placed.clone());
            requests.spawn(async move {
                let items = match n % 5 {
                    0 => vec![("SCARCE-1", 1)],
                    1 | 3 => vec![("WIDGET-1", 1 + (n % 3) as u32)],
                    _ => vec![("WIDGET-2", 1), ("WIDGET-1", 1)],
                };
                let sent = Instant::now();
                let response = api.place(&order_body(&format!("cl-{n}"), &items), None).await;
                let latency = sent.elapsed();
                let status = response.status();
                let order_id = if status == StatusCode::ACCEPTED {
                    let body: Value = response.json().await.unwrap();
                    Some(body["order_id"].as_str().unwrap().to_owned())
                } else {
                    None
                };
                placed.lock().unwrap().push(Placed { sent, latency, status, order_id });
            });
        }
        while requests.join_next().await.is_some() {}
    })
}

fn placed_count(placed: &Mutex<Vec<Placed>>) -> usize {
    placed.lock().unwrap().len()
}

/// Waits until the load has placed `more` orders after `from`.
async fn wait_for_orders(placed: &Mutex<Vec<Placed>>, more: usize) {
    let target = placed_count(placed) + more;
    wait_until("the load places more orders", Duration::from_secs(30), || async {
        (placed_count(placed) >= target).then_some(())
    })
    .await;
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies.get((latencies.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
}

#[tokio::test]
async fn on_a_three_node_cluster_losing_the_orders_stream_leader_under_load_loses_no_order_and_reserves_none_twice()
 {
    let started = Instant::now();
    let mut stack = Stack::start_on_cluster(2, &[]).await;
    let js = stack.nats.jetstream().await;

    // Every stream, and the workers' consumer, is kept by all three nodes.
    for name in STREAMS {
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cluster = info.cluster.clone().unwrap();
        assert_eq!(cluster.replicas.len(), 2, "{name} has a leader and two followers: {cluster:?}");
    }
    let consumer =
        js.get_stream("orders_stream").await.unwrap().consumer_info("inventory-worker").await.unwrap();
    let consumer_cluster = consumer.cluster.clone().unwrap();
    assert_eq!(
        consumer_cluster.replicas.len(),
        2,
        "the workers' consumer follows its stream: {consumer_cluster:?}"
    );

    let inventory = stack.inventory().clone();
    inventory.set("WIDGET-1", 1_000_000).await;
    inventory.set("WIDGET-2", 1_000_000).await;
    inventory.set("SCARCE-1", SCARCE_UNITS).await;
    let mut before = BTreeMap::new();
    for sku in SKUS {
        before.insert(sku, inventory.get(sku).await);
    }

    let placed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(stack.api.clone(), placed.clone(), stop.clone());
    wait_for_orders(&placed, 50).await;

    // The leader of orders_stream dies.
    let leader = stack.nats.leader_of("orders_stream").await.expect("orders_stream has a leader");
    let killed_at = Instant::now();
    stack.nats.kill(leader);
    let new_leader = wait_until("orders_stream elects another leader", Duration::from_secs(30), || async {
        stack.nats.leader_of("orders_stream").await.filter(|n| *n != leader)
    })
    .await;
    let leaderless = killed_at.elapsed();
    wait_for_orders(&placed, 150).await;
    let failover_window = (killed_at, Instant::now());
    stack.nats.restart(leader).await;
    wait_for_orders(&placed, 50).await;

    // Then another node is stopped and started.
    let other = (0..NatsCluster::SIZE).find(|n| *n != leader && *n != new_leader).unwrap();
    stack.nats.kill(other);
    wait_for_orders(&placed, 100).await;
    stack.nats.restart(other).await;
    wait_for_orders(&placed, 50).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Every POST answered 202, or 503 (shed or briefly unavailable): never a 500.
    let placed = placed.lock().unwrap().clone();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for p in &placed {
        *by_status.entry(p.status.as_u16()).or_default() += 1;
    }
    assert!(by_status.keys().all(|s| *s == 202 || *s == 503), "answers by status: {by_status:?}");
    let accepted: Vec<&String> = placed.iter().filter_map(|p| p.order_id.as_ref()).collect();
    assert!(accepted.len() >= placed.len() * 9 / 10, "answers by status: {by_status:?}");

    // Every accepted order reaches a final status.
    stack.wait_until_no_order_pending(Duration::from_secs(60)).await;
    let pool = stack.pool().await;
    let rows: Vec<(String, String, sqlx::types::Json<Value>)> =
        sqlx::query_as("SELECT id::text, status, items FROM order_api.orders")
            .fetch_all(&pool)
            .await
            .unwrap();
    let orders: BTreeMap<String, (String, Value)> =
        rows.into_iter().map(|(id, status, items)| (id, (status, items.0))).collect();
    let lost: Vec<&&String> = accepted.iter().filter(|id| !orders.contains_key(id.as_str())).collect();
    assert!(lost.is_empty(), "{} accepted orders lost: {lost:?}", lost.len());
    assert_eq!(orders.len(), accepted.len(), "no order stored that was not accepted");

    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    let mut reserved_units: BTreeMap<String, i64> = BTreeMap::new();
    for (status, items) in orders.values() {
        *statuses.entry(status.as_str()).or_default() += 1;
        let skus: Vec<&str> = items.as_array().unwrap().iter().map(|i| i["sku"].as_str().unwrap()).collect();
        match status.as_str() {
            "reserved" => {
                for item in items.as_array().unwrap() {
                    *reserved_units.entry(item["sku"].as_str().unwrap().to_owned()).or_default() +=
                        item["quantity"].as_i64().unwrap();
                }
            }
            "rejected" => assert_eq!(skus, ["SCARCE-1"], "only scarce orders may be rejected"),
            other => panic!("an order ended {other}: {items}"),
        }
    }
    let scarce_orders = orders.values().filter(|(_, items)| items[0]["sku"] == "SCARCE-1").count() as i64;
    assert_eq!(
        reserved_units.get("SCARCE-1").copied().unwrap_or(0),
        SCARCE_UNITS.min(scarce_orders),
        "the scarce units are sold out, and no more"
    );

    // Applied once: one processed message per decided order, and stock moved exactly.
    let processed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory.processed_messages WHERE consumer = 'inventory-worker'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(processed as usize, orders.len(), "each order's message applied once");
    for sku in SKUS {
        let after = inventory.get(sku).await;
        let taken = reserved_units.get(sku).copied().unwrap_or(0);
        assert_eq!(before[sku].available - after.available, taken, "available units of {sku}");
        assert_eq!(after.reserved - before[sku].reserved, taken, "reserved units of {sku}");
    }

    let during_failover: Vec<Duration> = placed
        .iter()
        .filter(|p| p.sent >= failover_window.0 && p.sent <= failover_window.1)
        .map(|p| p.latency)
        .collect();
    println!(
        "cluster failover: {} orders placed ({by_status:?}), final {statuses:?}; orders_stream without a leader for {leaderless:?} (node {} killed, node {} took over); POST /orders p99 during the failover {:?} ({} requests), overall {:?}; test ran {:?}",
        placed.len(),
        stack.nats.name(leader),
        stack.nats.name(new_leader),
        p99(during_failover.clone()),
        during_failover.len(),
        p99(placed.iter().map(|p| p.latency).collect()),
        started.elapsed(),
    );
}
