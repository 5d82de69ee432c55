//! loadgen against the real system: every kind of order ends where it should, and an
//! overloaded order-api is answered the way it asks, by waiting its `Retry-After`.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use loadgen::{Config, Kind, Load, Mix};
use test_support::{
    metrics::{scrape, value},
    stack::Stack,
    wait_until,
};

const SETTLE: Duration = Duration::from_secs(60);

/// A quiet run of `count` orders against the stack's order-api.
fn config(stack: &Stack, count: u64, rate: f64, mix: Mix) -> Config {
    Config {
        url: stack.api.base_url.parse().unwrap(),
        rate,
        load: Load::Count(count),
        mix,
        wait: SETTLE,
        quiet: true,
        ..Config::default()
    }
}

#[tokio::test]
async fn a_run_with_every_kind_of_order_sees_each_one_reach_the_final_status_it_is_meant_to() {
    let stack = Stack::start_with_dlq(2, &[]).await;
    // 6 cycles of the mix: 36 ordinary orders and 6 of each other kind.
    let mix: Mix = "ordinary=6,scarce=1,flaky=1,fail=1,repeat=1".parse().unwrap();

    let summary = loadgen::run(config(&stack, 60, 100.0, mix)).await.unwrap();
    println!("{summary}");

    let sent: Vec<(Kind, u64)> = summary.sent.iter().map(|(kind, n)| (*kind, *n)).collect();
    assert_eq!(
        sent,
        [(Kind::Ordinary, 36), (Kind::Scarce, 6), (Kind::Flaky, 6), (Kind::Fail, 6), (Kind::Repeat, 6)]
    );
    assert_eq!((summary.placed, summary.not_placed), (60, 0));
    assert_eq!(summary.pending, 0, "every order placed ends final");
    assert_eq!(summary.reserved + summary.rejected + summary.dead_lettered, summary.placed);
    // SCARCE-1 has 10 units and each scarce order asks for 5: two are reserved, four rejected.
    // Ordinary, repeated and flaky orders are all reserved; FAIL-1 orders are dead-lettered.
    assert_eq!(summary.rejected, 4);
    assert_eq!(summary.dead_lettered, 6);
    assert_eq!(summary.reserved, 36 + 6 + 6 + 2);
    assert_eq!((summary.repeats_confirmed, summary.repeats_mismatched), (6, 0));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.retried_after_503, 0);

    let latency = summary.latency.unwrap();
    assert_eq!(latency.orders, 60);
    assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99 && latency.p99 <= latency.max);
    // A dead-lettered order waits out every BackOff step first: it is the slowest.
    assert!(latency.max >= Duration::from_secs(1), "{latency:?}");

    // Twelve requests for the six repeats, and still one order each: 60 orders in all.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM order_api.orders")
        .fetch_one(&stack.pool().await)
        .await
        .unwrap();
    assert_eq!(stored, 60);
}

#[tokio::test]
async fn an_overloaded_order_api_is_retried_after_its_retry_after_and_no_order_is_lost() {
    let mut stack = Stack::start(1, &[("MAX_CONSUMER_LAG", "3"), ("LAG_POLL_INTERVAL", "100ms")]).await;
    // No worker: orders pile up in the queue until order-api sheds load with 503.
    assert!(stack.workers[0].process.terminate().await.success());

    let run = tokio::spawn(loadgen::run(config(&stack, 20, 20.0, Mix::only(Kind::Ordinary))));
    wait_until("order-api has answered 503 for consumer lag", SETTLE, || async {
        let refused =
            value(&scrape(&stack.api.base_url).await, "orders_refused_total", &[("reason", "consumer-lag")]);
        (refused.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    // A worker again: the queue drains, and loadgen's retries are accepted.
    stack.add_worker("worker-2").await;

    let summary = run.await.unwrap().unwrap();
    println!("{summary}");
    assert!(summary.retried_after_503 > 0, "{summary}");
    assert_eq!((summary.placed, summary.not_placed), (20, 0));
    assert_eq!(summary.pending, 0);
    assert_eq!(summary.reserved, 20, "nothing lost: every order reserved");
    assert!(summary.errors.is_empty(), "a 503 retried is not an error: {:?}", summary.errors);

    // Retries with the same Idempotency-Key made no order twice.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM order_api.orders")
        .fetch_one(&stack.pool().await)
        .await
        .unwrap();
    assert_eq!(stored, 20);
}
