//! Capture: advisories, poison copies and last errors become one row each, never none.

use async_nats::HeaderMap;
use base64::Engine;
use contract::{
    dead_letter,
    events::{OrderItem, OrderPlaced},
};
use shared::messaging::envelope::OutgoingMessage;
use uuid::Uuid;

use crate::helpers::*;

const ADVISORY_SUBJECT: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.orders_stream.inventory-worker";

fn advisory(stream_seq: u64) -> String {
    serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": Uuid::new_v4().to_string(),
        "timestamp": "2026-11-22T10:00:00.5Z",
        "stream": "orders_stream",
        "consumer": "inventory-worker",
        "stream_seq": stream_seq,
        "deliveries": 5,
    })
    .to_string()
}

/// Stores an order in `orders_stream`, as order-api would, and returns it and its sequence.
async fn store_order(dlq: &TestDlq) -> (OutgoingMessage, OrderPlaced, u64) {
    let order = OrderPlaced::new("c-1", vec![OrderItem::new("FAIL-1", 1)]);
    let message = OutgoingMessage::event(&order, "order-api");
    let js = dlq.nats.jetstream().await;
    let ack = js
        .publish_with_headers("orders.new", message.nats_headers(), message.payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    (message, order, ack.sequence)
}

async fn publish(dlq: &TestDlq, subject: &str, headers: HeaderMap, payload: Vec<u8>) {
    let js = dlq.nats.jetstream().await;
    js.publish_with_headers(subject.to_owned(), headers, payload.into()).await.unwrap().await.unwrap();
}

#[tokio::test]
async fn an_exhausted_message_is_recorded_once_even_if_its_advisory_arrives_twice() {
    let dlq = spawn_dlq().await;
    let (message, order, sequence) = store_order(&dlq).await;

    for _ in 0..2 {
        publish(&dlq, ADVISORY_SUBJECT, HeaderMap::new(), advisory(sequence).into_bytes()).await;
    }
    dlq.wait_until_captured().await;

    assert_eq!(dlq.rows().await, 1);
    let (_, page) = dlq.get("/dead-letters").await;
    let row = &page["items"][0];
    assert_eq!(row["source_stream"], "orders_stream");
    assert_eq!(row["source_sequence"], sequence);
    assert_eq!(row["subject"], "orders.new");
    assert_eq!(row["message_id"], message.message_id.to_string());
    assert_eq!(row["order_id"], order.order_id.to_string());
    assert_eq!(row["consumer"], "inventory-worker");
    assert_eq!(row["deliveries"], 5);
    assert_eq!(row["status"], "pending");
    assert_eq!(row["payload"]["items"][0]["sku"], "FAIL-1");
    assert_eq!(row["headers"]["ce-type"], "orders.placed.v1");
    assert!(row["headers"].get("Nats-Msg-Id").is_none());
    assert!(row["first_seen_at"].is_string() && row["failed_at"].is_string());

    // The work queue no longer keeps it.
    let js = dlq.nats.jetstream().await;
    let stream = js.get_stream(contract::streams::ORDERS_STREAM).await.unwrap();
    assert!(stream.get_raw_message(sequence).await.is_err(), "deleted from orders_stream");
    // order-api is told, once.
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 1);
}

#[tokio::test]
async fn an_advisory_whose_original_is_gone_is_recorded_with_that_reason() {
    let dlq = spawn_dlq().await;

    publish(&dlq, ADVISORY_SUBJECT, HeaderMap::new(), advisory(424242).into_bytes()).await;
    dlq.wait_for_rows(1).await;

    let (_, page) = dlq.get("/dead-letters").await;
    let row = &page["items"][0];
    assert_eq!(row["reason"], "original message already gone from the stream");
    assert_eq!(row["source_sequence"], 424242);
    assert!(row["payload"].is_null() && row["payload_base64"].is_null());
}

#[tokio::test]
async fn the_last_error_reaches_the_row_whichever_arrives_first() {
    let dlq = spawn_dlq().await;
    let (_, _, first) = store_order(&dlq).await;
    let (_, _, second) = store_order(&dlq).await;
    let note = |sequence: u64| {
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::SOURCE_STREAM, "orders_stream");
        headers.insert(dead_letter::SOURCE_SEQUENCE, sequence.to_string().as_str());
        headers.insert(dead_letter::CONSUMER, "inventory-worker");
        headers.insert(dead_letter::REASON, format!("boom {sequence}").as_str());
        headers
    };

    publish(&dlq, dead_letter::LAST_ERROR_SUBJECT, note(first), Vec::new()).await;
    publish(&dlq, ADVISORY_SUBJECT, HeaderMap::new(), advisory(first).into_bytes()).await;
    publish(&dlq, ADVISORY_SUBJECT, HeaderMap::new(), advisory(second).into_bytes()).await;
    publish(&dlq, dead_letter::LAST_ERROR_SUBJECT, note(second), Vec::new()).await;
    dlq.wait_until_captured().await;

    let errors: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT source_sequence, last_error FROM dead_letters ORDER BY source_sequence")
            .fetch_all(&dlq.pool)
            .await
            .unwrap();
    assert_eq!(
        errors,
        [(first as i64, Some(format!("boom {first}"))), (second as i64, Some(format!("boom {second}")))]
    );
}

#[tokio::test]
async fn a_poison_copy_is_recorded_with_its_reason_and_raw_bytes() {
    let dlq = spawn_dlq().await;
    let mut headers = HeaderMap::new();
    headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
    headers.insert(dead_letter::SOURCE_STREAM, "orders_stream");
    headers.insert(dead_letter::SOURCE_SEQUENCE, "77");
    headers.insert(dead_letter::SOURCE_SUBJECT, "orders.new");
    headers.insert(dead_letter::CONSUMER, "inventory-worker");
    headers.insert(dead_letter::DELIVERIES, "1");
    headers.insert(dead_letter::REASON, "payload is not valid JSON for this event");
    let garbage = b"\xff\x00not an order".to_vec();

    publish(&dlq, dead_letter::POISON_SUBJECT, headers, garbage.clone()).await;
    dlq.wait_for_rows(1).await;

    let (_, page) = dlq.get("/dead-letters").await;
    let row = &page["items"][0];
    assert_eq!(row["reason"], "unprocessable message: payload is not valid JSON for this event");
    assert_eq!(row["source_sequence"], 77);
    assert_eq!(row["subject"], "orders.new");
    assert!(row["payload"].is_null());
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(row["payload_base64"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, garbage);
    assert!(row["headers"].get("Dlq-Reason").is_none(), "routing headers are not the message's");
}

#[tokio::test]
async fn an_unrecognised_message_is_recorded_not_dropped() {
    let dlq = spawn_dlq().await;

    publish(&dlq, "orders_unprocessed.mystery", HeaderMap::new(), b"?".to_vec()).await;
    publish(&dlq, ADVISORY_SUBJECT, HeaderMap::new(), b"{not an advisory".to_vec()).await;
    dlq.wait_for_rows(2).await;

    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY source_sequence")
        .fetch_all(&dlq.pool)
        .await
        .unwrap();
    assert_eq!(reasons, ["unrecognised message on orders_unprocessed", "unreadable MAX_DELIVERIES advisory"]);
}
