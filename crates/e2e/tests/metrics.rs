//! Queue health you can see: every service's `/metrics` parses as Prometheus text, the series
//! move with the traffic, consumer lag rises and falls, and past a bound orders are shed.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use reqwest::StatusCode;
use test_support::{
    http::order_body,
    metrics::{histogram_observed, scrape, value},
    stack::Stack,
    wait_until,
};

const SETTLE: Duration = Duration::from_secs(60);

/// The workers' lag, as order-api's `/metrics` shows it.
async fn lag_seen_by_order_api(stack: &Stack) -> Option<f64> {
    let metrics = scrape(&stack.api.base_url).await;
    value(&metrics, "orders_consumer_lag_pending", &[("consumer", "inventory-worker")])
}

#[tokio::test]
async fn every_service_serves_prometheus_text_and_the_named_series_move_with_the_traffic() {
    let stack = Stack::start_with_dlq(1, &[("LAG_POLL_INTERVAL", "100ms")]).await;

    let reserved = stack.api.place_ok("c-1", &[("WIDGET-1", 1)], Some("key-1")).await;
    let again = stack.api.place_ok("c-1", &[("WIDGET-1", 1)], Some("key-1")).await;
    assert_eq!(again, reserved, "the same key: the same order");
    let rejected = stack.api.place_ok("c-2", &[("SCARCE-1", 50)], None).await;
    let flaky = stack.api.place_ok("c-3", &[("FLAKY-1", 1)], None).await;
    let failing = stack.api.place_ok("c-4", &[("FAIL-1", 1)], None).await;
    let invalid = stack.api.place(&order_body("", &[("WIDGET-1", 0)]), None).await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    stack.api.wait_for_status(&reserved, "reserved", SETTLE).await;
    stack.api.wait_for_status(&rejected, "rejected", SETTLE).await;
    stack.api.wait_for_status(&flaky, "reserved", SETTLE).await;
    stack.api.wait_for_status(&failing, "dead_lettered", SETTLE).await;

    // order-api: orders accepted and refused, request latency, the outbox, what it published.
    let api = wait_until("order-api's outbox gauge has caught up", SETTLE, || async {
        let metrics = scrape(&stack.api.base_url).await;
        (value(&metrics, "outbox_pending_messages", &[]) == Some(0.0)).then_some(metrics)
    })
    .await;
    assert_eq!(value(&api, "orders_accepted_total", &[]), Some(4.0), "new orders only");
    assert_eq!(value(&api, "orders_replayed_total", &[]), Some(1.0));
    assert_eq!(value(&api, "orders_refused_total", &[("reason", "validation-error")]), Some(1.0));
    assert!(histogram_observed(
        &api,
        "http_server_request_duration_seconds",
        &[("http_route", "/orders"), ("http_request_method", "POST"), ("http_response_status_code", "202")]
    ));
    assert!(value(&api, "outbox_oldest_pending_age_seconds", &[]).is_some());
    assert_eq!(
        value(&api, "messaging_client_sent_messages_total", &[("messaging_destination_name", "orders.new")]),
        Some(4.0)
    );
    assert!(histogram_observed(
        &api,
        "messaging_client_operation_duration_seconds",
        &[("messaging_operation_name", "publish")]
    ));
    assert!(value(&api, "orders_consumer_lag_pending", &[("consumer", "inventory-worker")]).is_some());
    // Where orders wait: accepted → published, and outcome published → status visible.
    assert!(histogram_observed(
        &api,
        "outbox_delay_duration_seconds",
        &[("messaging_destination_name", "orders.new")]
    ));
    assert!(histogram_observed(
        &api,
        "messaging_consumer_delay_duration_seconds",
        &[("messaging_consumer_group_name", "order-api-projection")]
    ));
    let projected = value(
        &api,
        "messaging_client_consumed_messages_total",
        &[("messaging_consumer_group_name", "order-api-projection")],
    );
    assert!(projected.unwrap_or(0.0) >= 4.0, "{projected:?}");

    // inventory-worker: outcomes, processing time, batch sizes, lag.
    let worker = scrape(&stack.workers[0].inventory.base_url).await;
    let consumed =
        |outcome| value(&worker, "messaging_client_consumed_messages_total", &[("outcome", outcome)]);
    assert_eq!(consumed("reserved"), Some(2.0));
    assert_eq!(consumed("rejected"), Some(1.0));
    assert_eq!(consumed("failed"), Some(1.0 + 5.0), "FLAKY once, FAIL five times");
    assert!(histogram_observed(&worker, "messaging_process_duration_seconds", &[("outcome", "reserved")]));
    assert!(histogram_observed(&worker, "messaging_batch_size", &[]));
    // Where orders wait: published → worker committed, and worker committed → outcome published.
    assert!(histogram_observed(
        &worker,
        "messaging_consumer_delay_duration_seconds",
        &[("messaging_consumer_group_name", "inventory-worker")]
    ));
    assert!(histogram_observed(
        &worker,
        "outbox_delay_duration_seconds",
        &[("messaging_destination_name", "order_events.reserved")]
    ));
    assert!(value(&worker, "orders_consumer_lag_ack_pending", &[("consumer", "inventory-worker")]).is_some());
    assert!(value(&worker, "orders_consumer_lag_redelivered", &[("consumer", "inventory-worker")]).is_some());

    // dlq-service: dead letters captured and waiting for review.
    let dlq_url = &stack.dlq.as_ref().unwrap().base_url;
    let dlq = wait_until("dlq-service's pending gauge has caught up", SETTLE, || async {
        let metrics = scrape(dlq_url).await;
        (value(&metrics, "dead_letters_pending", &[]) == Some(1.0)).then_some(metrics)
    })
    .await;
    assert_eq!(value(&dlq, "dead_letters_captured_total", &[("kind", "exhausted")]), Some(1.0));
}

#[tokio::test]
async fn consumer_lag_rises_while_the_workers_are_stopped_and_falls_after() {
    let mut stack = Stack::start(1, &[("LAG_POLL_INTERVAL", "100ms")]).await;
    assert!(stack.workers[0].process.terminate().await.success());

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(stack.api.place_ok(&format!("c-{i}"), &[("WIDGET-1", 1)], None).await);
    }
    wait_until("order-api sees 20 orders waiting for the workers", SETTLE, || async {
        (lag_seen_by_order_api(&stack).await == Some(20.0)).then_some(())
    })
    .await;

    let worker = stack.add_worker("worker-2").await.inventory.base_url.clone();
    wait_until("the lag falls to zero", SETTLE, || async {
        let own =
            value(&scrape(&worker).await, "orders_consumer_lag_pending", &[("consumer", "inventory-worker")]);
        (lag_seen_by_order_api(&stack).await == Some(0.0) && own == Some(0.0)).then_some(())
    })
    .await;
    for id in &ids {
        stack.api.wait_for_status(id, "reserved", SETTLE).await;
    }
}

#[tokio::test]
async fn with_the_workers_stopped_orders_are_shed_with_503_and_retry_after_and_none_accepted_is_lost() {
    let mut stack = Stack::start(1, &[("MAX_CONSUMER_LAG", "5"), ("LAG_POLL_INTERVAL", "100ms")]).await;
    assert!(stack.workers[0].process.terminate().await.success());

    let mut accepted = Vec::new();
    let refused = loop {
        let response = stack.api.place(&order_body("c-1", &[("WIDGET-1", 1)]), None).await;
        if response.status() != StatusCode::ACCEPTED {
            break response;
        }
        accepted.push(
            response.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned(),
        );
        assert!(accepted.len() < 500, "never shed");
    };
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/consumer-lag");
    assert!(accepted.len() >= 5, "accepted up to the bound: {}", accepted.len());
    let refusals =
        value(&scrape(&stack.api.base_url).await, "orders_refused_total", &[("reason", "consumer-lag")]);
    assert_eq!(refusals, Some(1.0));

    stack.add_worker("worker-2").await;
    wait_until("orders are accepted again once the backlog drains", SETTLE, || async {
        let response = stack.api.place(&order_body("c-2", &[("WIDGET-1", 1)]), Some("after")).await;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    for id in &accepted {
        stack.api.wait_for_status(id, "reserved", SETTLE).await;
    }
}

#[tokio::test]
async fn a_message_between_attempts_shows_as_ack_pending_and_redelivered_until_it_is_dead_lettered() {
    // Long enough between the second and third attempts to be seen by a scrape.
    let stack = Stack::start_with_dlq(
        1,
        &[("LAG_POLL_INTERVAL", "100ms"), ("WORKER_BACKOFF", "500ms,5s"), ("WORKER_MAX_DELIVER", "3")],
    )
    .await;
    let worker = stack.workers[0].inventory.base_url.clone();
    let gauges = || async {
        let metrics = scrape(&worker).await;
        let of = |name| value(&metrics, name, &[("consumer", "inventory-worker")]);
        (of("orders_consumer_lag_ack_pending"), of("orders_consumer_lag_redelivered"))
    };
    wait_until("the worker reports its consumer, nothing in flight yet", SETTLE, || async {
        (gauges().await == (Some(0.0), Some(0.0))).then_some(())
    })
    .await;

    stack.api.place_ok("c-1", &[("FAIL-1", 1)], None).await;
    // Failed twice, waiting for its third attempt: delivered and not acknowledged (ack
    // pending), and delivered more than once (redelivered).
    wait_until("the failing order shows as ack pending and redelivered", SETTLE, || async {
        (gauges().await == (Some(1.0), Some(1.0))).then_some(())
    })
    .await;
    // After the last attempt it is a dead letter, and dlq-service deletes it from the work
    // queue (JetStream keeps a max-delivered message otherwise): nothing is pending any more.
    wait_until("the dead-lettered order is no longer pending", SETTLE, || async {
        (gauges().await == (Some(0.0), Some(0.0))).then_some(())
    })
    .await;
}
