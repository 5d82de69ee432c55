//! The whole system on a three-node NATS cluster, its streams at three replicas: the node that
//! leads `orders_stream` is killed under a steady load, and later restarted, then another node
//! is stopped and started. No accepted order may be lost, none reserved twice, the stock must
//! move exactly by what was reserved, and each failing order must end as exactly one dead
//! letter (the invariants of [`e2e::final_state`]).
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::{Duration, Instant};

use e2e::{
    final_state::{self, Expected},
    steady_load::{self, SteadyLoad},
};
use test_support::{NatsCluster, stack::Stack, wait_until};

const STREAMS: [&str; 3] = ["orders_stream", "order_events", "orders_unprocessed"];
/// Orders per second the load places, one every 20 ms.
const PACE: Duration = Duration::from_millis(20);
/// Fewer units of the scarce SKU than orders for it.
const SCARCE_UNITS: i64 = 20;
/// A failover can lose a MAX_DELIVERIES advisory: the sweep looks every 2 s, and takes a message
/// as dead once its worker says it did not apply it.
const QUICK_SWEEP: (&str, &str) = ("DLQ_SWEEP_INTERVAL", "2s");

#[tokio::test]
async fn on_a_three_node_cluster_losing_the_orders_stream_leader_under_load_loses_no_order_and_reserves_none_twice()
 {
    let started = Instant::now();
    let mut stack = Stack::start_on_cluster(2, &[QUICK_SWEEP]).await;
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

    let stock_before = final_state::stock_for_the_load(stack.inventory(), SCARCE_UNITS).await;

    let load = SteadyLoad::start(stack.order_apis(), PACE);
    load.wait_for_orders(50).await;

    // The leader of orders_stream dies.
    let leader = stack.nats.leader_of("orders_stream").await.expect("orders_stream has a leader");
    let killed_at = Instant::now();
    stack.nats.kill(leader);
    let new_leader = wait_until("orders_stream elects another leader", Duration::from_secs(30), || async {
        stack.nats.leader_of("orders_stream").await.filter(|n| *n != leader)
    })
    .await;
    let leaderless = killed_at.elapsed();
    load.wait_for_orders(150).await;
    let failover_window = (killed_at, Instant::now());
    stack.nats.restart(leader).await;
    load.wait_for_orders(50).await;

    // Then another node is stopped and started.
    let other = (0..NatsCluster::SIZE).find(|n| *n != leader && *n != new_leader).unwrap();
    stack.nats.kill(other);
    load.wait_for_orders(100).await;
    stack.nats.restart(other).await;
    load.wait_for_orders(50).await;
    let placed = load.stop().await;

    // Every POST answered 202, or 503 (shed or briefly unavailable): never a 500.
    let by_status = steady_load::by_status(&placed);
    assert!(by_status.keys().all(|s| *s == 202 || *s == 503), "answers by status: {by_status:?}");
    let accepted = steady_load::accepted(&placed);
    assert!(accepted.len() >= placed.len() * 9 / 10, "answers by status: {by_status:?}");

    // A dead order whose advisory the failover lost is found by the sweep as quickly as on one
    // server: the workers answer whether they applied a message still in the stream (see
    // `dlq_service::sweep`, "A replicated work queue can remove an acknowledged message minutes
    // late"), so the sweep need not wait out the broker's late removals.
    let expected = Expected { scarce_units: SCARCE_UNITS, poison_messages: 0, settle: final_state::SETTLE };
    let outcome = final_state::assert_final_state(&stack, &accepted, &stock_before, expected).await;

    let during_failover: Vec<Duration> = placed
        .iter()
        .filter(|p| p.sent >= failover_window.0 && p.sent <= failover_window.1)
        .map(|p| p.latency)
        .collect();
    println!(
        "cluster failover: {} orders placed ({by_status:?}), final {:?}, {} dead letters; orders_stream without a leader for {leaderless:?} (node {} killed, node {} took over); POST /orders p99 during the failover {:?} ({} requests), overall {:?}; test ran {:?}",
        placed.len(),
        outcome.statuses,
        outcome.dead_letters,
        stack.nats.name(leader),
        stack.nats.name(new_leader),
        steady_load::p99(during_failover.clone()),
        during_failover.len(),
        steady_load::p99(placed.iter().map(|p| p.latency).collect()),
        started.elapsed(),
    );
}
