//! Two replicas of every service working together under load, as they would be deployed for
//! availability: two order-apis (sharing the outbox relay through `FOR UPDATE SKIP LOCKED` and
//! the projection's durable consumer), two inventory-workers (sharing theirs), and two
//! dlq-services (sharing the capture consumer and the sweep). The load is spread over both
//! order-apis and carries orders that fail every delivery, and poison messages are published
//! among them, so that dead letters are captured while both dlq-services run.
//!
//! What must hold is [`e2e::final_state`]: no order lost, none reserved twice, the stock exact,
//! each message stored once on its stream (no outbox row sent twice in a way that changes
//! anything), and one dead-letter row per dead message, never two.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::{Duration, Instant};

use e2e::{
    final_state::{self, Expected},
    steady_load::{self, SteadyLoad},
};
use test_support::{
    metrics::{scrape, value},
    stack::Stack,
};
use uuid::Uuid;

/// One order every 10 ms: 100 orders/s, alternately on each order-api.
const PACE: Duration = Duration::from_millis(10);
const ORDERS: usize = 500;
const POISON_MESSAGES: u64 = 10;
const SCARCE_UNITS: i64 = 30;

/// Publishes a message on `orders.new` that no worker can read, as a broken publisher would.
async fn publish_poison(js: &async_nats::jetstream::Context, n: u64) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
    headers.insert("ce-type", "orders.placed.v1");
    let garbage = format!("\u{0}poison {n}: this is not an order").into_bytes();
    js.publish_with_headers("orders.new", headers, garbage.into()).await.unwrap().await.unwrap();
}

/// A counter of `base_url`'s `/metrics` (0 when it has no such sample).
async fn counter(base_url: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(base_url).await, metric, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn two_replicas_of_every_service_under_load_lose_no_order_and_store_and_capture_each_message_once() {
    let started = Instant::now();
    let mut stack = Stack::start_with_dlq(2, &[("DLQ_SWEEP_INTERVAL", "2s")]).await;
    stack.add_order_api().await;
    stack.add_dlq().await;
    let stock_before = final_state::stock_for_the_load(stack.inventory(), SCARCE_UNITS).await;

    let load = SteadyLoad::start(stack.order_apis(), PACE);
    let js = stack.jetstream().await.unwrap();
    for n in 0..POISON_MESSAGES {
        load.wait_for_orders(ORDERS / POISON_MESSAGES as usize).await;
        publish_poison(&js, n).await;
    }
    let placed = load.stop().await;

    let by_status = steady_load::by_status(&placed);
    assert_eq!(by_status.keys().collect::<Vec<_>>(), [&202], "every order accepted: {by_status:?}");
    let accepted = steady_load::accepted(&placed);
    let expected = Expected {
        scarce_units: SCARCE_UNITS,
        poison_messages: POISON_MESSAGES,
        settle: final_state::SETTLE,
    };
    let outcome = final_state::assert_final_state(&stack, &accepted, &stock_before, expected).await;
    assert!(outcome.statuses.contains_key("dead_lettered"), "{:?}", outcome.statuses);

    // Who did the work: each order-api's relay, each dlq-service's capture.
    let mut relayed = Vec::new();
    for api in stack.order_apis() {
        let sent = [("messaging_destination_name", "orders.new")];
        relayed.push(counter(&api.base_url, "messaging_client_sent_messages_total", &sent).await);
    }
    let mut captured = Vec::new();
    for dlq in stack.dlqs() {
        captured.push(counter(&dlq.base_url, "dead_letters_captured_total", &[]).await);
    }
    assert_eq!(captured.iter().sum::<f64>() as i64, outcome.dead_letters, "each capture counted once");
    println!(
        "replicas: {} orders over 2 order-apis (POST p99 {:?}), final {:?}; orders.new relayed per order-api {relayed:?}; {} dead letters ({POISON_MESSAGES} poison), captured per dlq-service {captured:?}; test ran {:?}",
        placed.len(),
        steady_load::p99(placed.iter().map(|p| p.latency).collect()),
        outcome.statuses,
        outcome.dead_letters,
        started.elapsed(),
    );
}
