//! The review API: list with stable pages, show, replay once, discard with a reason.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use test_support::http::OPERATOR_NAME;

use crate::helpers::*;

#[tokio::test]
async fn dead_letters_are_listed_newest_first_in_stable_pages() {
    let dlq = spawn_dlq().await;
    let mut ids = Vec::new();
    for sequence in 1..=5 {
        ids.push(dlq.seed(order_letter(sequence)).await.to_string());
    }
    ids.reverse();

    let (status, first) = dlq.get("/dead-letters?status=pending&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    // A newer dead letter arriving between pages does not shift the next page.
    dlq.seed(order_letter(6)).await;
    let (_, second) = dlq.get(&format!("/dead-letters?status=pending&limit=2&cursor={cursor}")).await;
    let (_, third) = dlq
        .get(&format!(
            "/dead-letters?status=pending&limit=2&cursor={}",
            second["next_cursor"].as_str().unwrap()
        ))
        .await;

    let page_ids = |page: &serde_json::Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(page_ids(&first), ids[0..2]);
    assert_eq!(page_ids(&second), ids[2..4]);
    assert_eq!(page_ids(&third), ids[4..5]);
    assert!(third["next_cursor"].is_null());
}

#[tokio::test]
async fn bad_list_parameters_and_unknown_ids_are_problems() {
    let dlq = spawn_dlq().await;
    for (query, parameter) in
        [("status=lost", "status"), ("limit=0", "limit"), ("limit=9999", "limit"), ("cursor=x", "cursor")]
    {
        let (status, problem) = dlq.get(&format!("/dead-letters?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(problem["errors"][0]["parameter"], parameter);
    }
    let (status, _) = dlq.get("/dead-letters/0193f1b2-0000-7000-8000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = dlq.get("/dead-letters/nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // What axum's own extractors would answer in plain text is a problem too.
    let (status, problem) = dlq.get("/dead-letters?status=pending&status=discarded").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["errors"][0]["detail"].as_str().unwrap().contains("duplicate field"), "{problem}");
    let (status, problem) = dlq.get("/dead-letters/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["parameter"], "id");
}

#[tokio::test]
async fn a_replay_goes_through_the_outbox_with_the_same_logical_id_and_a_fresh_dedupe_key() {
    let dlq = spawn_dlq().await;
    let letter = order_letter(1);
    let (message_id, payload) = (letter.message_id.unwrap(), letter.payload.clone().unwrap());
    let id = dlq.seed(letter).await;

    let (status, row) =
        dlq.post(&format!("/dead-letters/{id}/replay"), Some(json!({"reason": "fixed"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["status"], "replayed");
    assert_eq!(row["status_changed_by"], OPERATOR_NAME, "the reviewer is the token's name");
    assert_eq!(row["status_reason"], "fixed");

    let (subject, logical, dedupe, sent): (String, uuid::Uuid, String, Vec<u8>) = sqlx::query_as(
        "SELECT subject, message_id, dedupe_id, payload FROM outbox WHERE subject = 'orders.new'",
    )
    .fetch_one(&dlq.pool)
    .await
    .unwrap();
    assert_eq!(subject, "orders.new");
    assert_eq!(logical, message_id, "same logical ID: the worker's idempotency still holds");
    assert_ne!(dedupe, message_id.to_string(), "fresh Nats-Msg-Id: the broker will not drop it");
    assert_eq!(sent, payload, "the original bytes");

    let (status, problem) = dlq.post(&format!("/dead-letters/{id}/replay"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "/problems/not-pending");
}

#[tokio::test]
async fn concurrent_replays_of_one_dead_letter_publish_it_once() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;

    let path = format!("/dead-letters/{id}/replay");
    let answers = join_all((0..8).map(|_| dlq.post(&path, None))).await;

    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let conflicts = answers.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).count();
    assert_eq!((ok, conflicts), (1, 7));
    assert_eq!(dlq.outbox_count("orders.new").await, 1, "replayed once");
}

#[tokio::test]
async fn a_discard_needs_a_reason_and_records_it() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;

    let (status, problem) = dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["pointer"], "#/reason");

    let (status, row) =
        dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({"reason": "customer cancelled"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["status"], "discarded");
    assert_eq!(row["status_reason"], "customer cancelled");
    assert_eq!(row["status_changed_by"], OPERATOR_NAME);

    let (status, _) =
        dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({"reason": "again"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = dlq.post(&format!("/dead-letters/{id}/replay"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a discarded dead letter is not replayed");
}

#[tokio::test]
async fn reviews_are_counted_and_the_pending_gauge_follows_the_table() {
    use test_support::metrics::{scrape, value};
    let dlq = spawn_dlq().await;
    let metrics = scrape(&dlq.base_url).await;
    assert_eq!(value(&metrics, "dead_letters_replayed_total", &[]), Some(0.0), "registered at start-up");
    assert_eq!(value(&metrics, "dead_letters_discarded_total", &[]), Some(0.0));

    let ids =
        [dlq.seed(order_letter(1)).await, dlq.seed(order_letter(2)).await, dlq.seed(order_letter(3)).await];
    let (status, _) = dlq.post(&format!("/dead-letters/{}/replay", ids[0]), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        dlq.post(&format!("/dead-letters/{}/discard", ids[1]), Some(json!({"reason": "duplicate"}))).await;
    assert_eq!(status, StatusCode::OK);
    // Refused reviews count for nothing.
    let (status, _) = dlq.post(&format!("/dead-letters/{}/replay", ids[0]), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let metrics = test_support::wait_until(
        "the pending gauge shows the one left",
        std::time::Duration::from_secs(30),
        || async {
            let metrics = scrape(&dlq.base_url).await;
            (value(&metrics, "dead_letters_pending", &[]) == Some(1.0)).then_some(metrics)
        },
    )
    .await;
    assert_eq!(value(&metrics, "dead_letters_replayed_total", &[]), Some(1.0));
    assert_eq!(value(&metrics, "dead_letters_discarded_total", &[]), Some(1.0));
}
