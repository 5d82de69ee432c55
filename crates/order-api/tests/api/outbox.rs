//! The outbox: orders accepted while NATS is down are published once it is back; a backlog past
//! its bound turns new orders away with 503 instead of growing without limit.

use std::time::Duration;

use reqwest::StatusCode;
use test_support::{
    http::order_body,
    metrics::{scrape, value},
    wait_until,
};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn orders_accepted_while_nats_is_down_are_published_when_it_is_back() {
    let mut app = spawn_app().await;
    app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    wait_until("the first order is published", Duration::from_secs(10), || async {
        (app.orders_stream_len().await == 1).then_some(())
    })
    .await;

    app.nats.stop();
    for i in 0..10 {
        // Still 202: the order is safe in Postgres.
        app.api.place_ok(&format!("c-{i}"), &[("WIDGET-1", 1)], None).await;
    }
    assert_eq!(app.unsent_outbox_rows().await, 10);

    // What an operator sees meanwhile: the outbox depth rises, its oldest row ages, and the
    // relay's failed publishes are counted by error type.
    wait_until("/metrics shows the backlog and the failed publishes", Duration::from_secs(60), || async {
        let metrics = scrape(&app.api.base_url).await;
        let pending = value(&metrics, "outbox_pending_messages", &[]);
        let age = value(&metrics, "outbox_oldest_pending_age_seconds", &[]).unwrap_or(0.0);
        let failed =
            value(&metrics, "messaging_client_sent_messages_total", &[("error_type", "publish_failed")]);
        (pending == Some(10.0) && age > 0.0 && failed.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;

    app.nats.start_again().await;
    wait_until("every order is published", Duration::from_secs(60), || async {
        (app.unsent_outbox_rows().await == 0).then_some(())
    })
    .await;
    assert_eq!(app.orders_stream_len().await, 11, "each order exactly once in the stream");
    wait_until("/metrics shows the outbox empty", Duration::from_secs(30), || async {
        let metrics = scrape(&app.api.base_url).await;
        (value(&metrics, "outbox_pending_messages", &[]) == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_backlog_past_its_bound_is_answered_503_with_retry_after_and_nothing_accepted_is_lost() {
    let mut app = spawn_app_with(&[("OUTBOX_MAX_BACKLOG", "5")]).await;
    app.nats.stop();

    // Accept orders until the relay has counted the backlog and the API starts shedding load.
    let mut accepted = 0;
    let refused = wait_until("POST /orders answers 503", Duration::from_secs(60), || {
        let api = app.api.clone();
        let n = accepted;
        async move {
            let response = api.place(&order_body(&format!("c-{n}"), &[("WIDGET-1", 1)]), None).await;
            match response.status() {
                StatusCode::ACCEPTED => None,
                _ => Some(response),
            }
        }
    })
    .await;
    accepted = app.orders_count().await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/outbox-backlog");
    assert!(accepted >= 5, "{accepted} accepted before the bound");

    app.nats.start_again().await;
    wait_until("the backlog drains and orders are accepted again", Duration::from_secs(60), || async {
        let response = app.api.place(&order_body("c-after", &[("WIDGET-1", 1)]), Some("after")).await;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    wait_until("every accepted order is published", Duration::from_secs(30), || async {
        (app.unsent_outbox_rows().await == 0).then_some(())
    })
    .await;
    assert_eq!(app.orders_stream_len().await as i64, accepted + 1);
}

/// Sent outbox rows and processed message IDs past their retention are pruned, many batches'
/// worth per pass (at full load ~800 rows/s arrive); younger ones are kept.
#[tokio::test]
async fn sent_outbox_rows_and_processed_ids_past_their_retention_are_pruned_and_younger_ones_kept() {
    let app = spawn_app_with(&[
        ("OUTBOX_RETENTION", "1h"),
        ("PROCESSED_MESSAGES_RETENTION", "30d"),
        ("PRUNE_INTERVAL", "200ms"),
    ])
    .await;
    sqlx::raw_sql(
        "INSERT INTO outbox (subject, message_id, dedupe_id, headers, payload, created_at, sent_at)
         SELECT 'orders.new', gen_random_uuid(), gen_random_uuid()::text, '{}', '\\x00',
                now() - interval '2 hours', now() - interval '2 hours' - n * interval '1 ms'
         FROM generate_series(1, 25000) AS n;
         INSERT INTO outbox (subject, message_id, dedupe_id, headers, payload, sent_at)
         SELECT 'orders.new', gen_random_uuid(), gen_random_uuid()::text, '{}', '\\x00', now()
         FROM generate_series(1, 100);
         INSERT INTO processed_messages (consumer, message_id, processed_by, processed_at)
         SELECT 'test', gen_random_uuid(), 'test', now() - interval '31 days'
         FROM generate_series(1, 25000);
         INSERT INTO processed_messages (consumer, message_id, processed_by)
         SELECT 'test', gen_random_uuid(), 'test' FROM generate_series(1, 10);",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    wait_until("expired rows are pruned", Duration::from_secs(20), || async {
        let outbox = app.outbox_rows().await;
        let processed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM processed_messages").fetch_one(&app.pool).await.unwrap();
        (outbox == 100 && processed == 10).then_some(())
    })
    .await;
}
