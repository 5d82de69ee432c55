//! The dead-letter path from the outside: orders that cannot be processed end as one row each,
//! visible in order-api, reviewable, replayable once.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    http::{DeadLetterApi, OPERATOR_NAME},
    stack::Stack,
    wait_until,
};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);

/// The review API of the stack's dlq-service, as the test operator.
fn review_api(stack: &Stack) -> DeadLetterApi {
    stack.dlq.as_ref().unwrap().api()
}

async fn dead_letters(stack: &Stack) -> Vec<Value> {
    review_api(stack).list().await
}

async fn orders_stream_len(stack: &Stack) -> u64 {
    let js = stack.nats.jetstream().await;
    js.get_stream("orders_stream").await.unwrap().get_info().await.unwrap().state.messages
}

#[tokio::test]
async fn an_order_that_always_fails_ends_as_one_dead_letter_and_shows_dead_lettered() {
    let stack = Stack::start_with_dlq(1, &[]).await;

    let id = stack.api.place_ok("c-1", &[("FAIL-1", 2)], None).await;

    let order = stack.api.wait_for_status(&id, "dead_lettered", SETTLE).await;
    let reason = order["reason"].as_str().unwrap();
    assert!(reason.starts_with("delivery limit reached: 5 attempts failed"), "{reason}");
    assert!(reason.ends_with("last error: injected failure: FAIL-1 fails every delivery"), "{reason}");

    let letters = dead_letters(&stack).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["order_id"], id.as_str());
    assert_eq!(letter["status"], "pending");
    assert_eq!(letter["deliveries"], 5);
    assert_eq!(letter["last_error"], "injected failure: FAIL-1 fails every delivery");
    assert_eq!(letter["payload"]["items"], json!([{"sku": "FAIL-1", "quantity": 2}]));
    assert_eq!(letter["headers"]["ce-type"], "orders.placed.v1");
    assert!(letter["message_id"].is_string());
    wait_until("orders_stream no longer holds the message", SETTLE, || async {
        (orders_stream_len(&stack).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_poison_payload_ends_as_one_dead_letter_with_its_reason_and_bytes_and_orders_keep_flowing() {
    let stack = Stack::start_with_dlq(1, &[]).await;
    let js = stack.nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
    headers.insert("ce-type", "orders.placed.v1");
    let garbage = b"\x00\x01 this is not an order".to_vec();
    js.publish_with_headers("orders.new", headers, garbage.clone().into()).await.unwrap().await.unwrap();

    let good = stack.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    stack.api.wait_for_status(&good, "reserved", SETTLE).await;

    let letters = wait_until("the poison message is recorded", SETTLE, || async {
        let letters = dead_letters(&stack).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert!(
        letter["reason"].as_str().unwrap().starts_with("unprocessable message: payload is not valid JSON"),
        "{letter}"
    );
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(letter["payload_base64"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, garbage);
    assert_eq!(letter["subject"], "orders.new");
    assert_eq!(orders_stream_len(&stack).await, 0, "terminated once copied");
}

#[tokio::test]
async fn dlq_service_killed_while_messages_are_dying_loses_none_of_them() {
    let mut stack = Stack::start_with_dlq(1, &[]).await;
    let pool = stack.pool().await;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dlq.dead_letters").fetch_one(&pool).await.unwrap()
    };

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(stack.api.place_ok(&format!("c-{i}"), &[("FAIL-1", 1)], None).await);
        if i == 1 {
            // The first ones start dying; kill the dead-letter service in the middle of it.
            wait_until("a first dead letter is recorded", SETTLE, || async {
                (rows().await >= 1).then_some(())
            })
            .await;
            stack.dlq.as_mut().unwrap().process.kill().await;
        }
    }
    // While it is down, the others exhaust their deliveries; their advisories wait in
    // orders_unprocessed.
    wait_until("every order has exhausted its deliveries", SETTLE, || async {
        let (pending, ack_pending) = stack.worker_consumer_backlog().await?;
        (pending == 0 && ack_pending == 0).then_some(())
    })
    .await;

    stack.restart_dlq().await;
    for id in &ids {
        stack.api.wait_for_status(id, "dead_lettered", SETTLE).await;
    }
    assert_eq!(rows().await, 6, "one row per order: none lost, none twice");
}

#[tokio::test]
async fn a_replay_inside_the_duplicate_window_is_reserved_once_a_second_replay_is_409_and_a_discard_keeps_its_reason()
 {
    let mut stack = Stack::start_with_dlq(0, &[]).await;
    // A worker with a bug: every delivery fails.
    stack.add_worker_with("broken", &[("INVENTORY_FAILURE_RATE", "1.0")]).await;
    let before = stack.inventory().get("WIDGET-1").await;
    let replayed = stack.api.place_ok("c-1", &[("WIDGET-1", 3)], None).await;
    let discarded = stack.api.place_ok("c-2", &[("WIDGET-1", 4)], None).await;
    stack.api.wait_for_status(&replayed, "dead_lettered", SETTLE).await;
    stack.api.wait_for_status(&discarded, "dead_lettered", SETTLE).await;

    // The fix is deployed.
    assert!(stack.workers[0].process.terminate().await.success());
    stack.add_worker("fixed").await;

    let letters = dead_letters(&stack).await;
    let letter_of = |order: &str| {
        letters.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let (replay_id, discard_id) = (letter_of(&replayed), letter_of(&discarded));

    // Well inside the broker's two-minute duplicate window of the original message.
    let (status, letter) =
        review_api(&stack).review(&replay_id, "replay", Some(json!({"reason": "fixed"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(letter["status"], "replayed");
    assert_eq!(letter["status_changed_by"], OPERATOR_NAME, "the reviewer is the token's name");
    stack.api.wait_for_status(&replayed, "reserved", SETTLE).await;

    let (status, _) = review_api(&stack).review(&replay_id, "replay", None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, letter) = review_api(&stack)
        .review(&discard_id, "discard", Some(json!({"reason": "customer cancelled"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(letter["status_reason"], "customer cancelled");
    let (_, order) = stack.api.get(&discarded).await;
    assert_eq!(order["status"], "dead_lettered", "a discarded order is not processed");

    let after = stack.inventory().get("WIDGET-1").await;
    assert_eq!(
        after.reserved - before.reserved,
        3,
        "the replayed order reserved once, the discarded one never"
    );
    assert_eq!(before.available - after.available, 3);
}

/// Issue 16, row 11, for `order_events`: the projection reads a limits stream, where a lost
/// MAX_DELIVERIES advisory could never be made good, so it gives up on an event itself. An
/// event it cannot apply (here: its order's row stays locked) ends as a dead letter with no
/// advisory involved, and a replay, once the lock is gone, makes the order reserved.
#[tokio::test]
async fn an_event_the_projection_gives_up_on_is_a_dead_letter_without_any_advisory_and_a_replay_applies_it() {
    let quick_give_up = [
        ("PROJECTION_MAX_DELIVER", "2"),
        ("PROJECTION_BACKOFF", "200ms"),
        ("DATABASE_LOCK_TIMEOUT", "200ms"),
    ];
    // No worker: the test publishes the outcome itself, once it holds the order's row.
    let stack = Stack::start_with_dlq(0, &quick_give_up).await;
    let client = stack.nats.client().await;
    let mut advisories = client.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>").await.unwrap();
    let id = stack.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    let pool = stack.db.pool(order_api::SCHEMA).await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *lock)
        .await
        .unwrap();

    let reserved = shared::messaging::envelope::OutgoingMessage::event(
        &contract::events::OrderReserved {
            version: 1,
            order_id: id.parse().unwrap(),
            items: vec![],
            reserved_at: chrono::Utc::now(),
        },
        "test",
    );
    let js = stack.nats.jetstream().await;
    js.publish_with_headers(
        reserved.subject.clone(),
        reserved.nats_headers(),
        reserved.payload.clone().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let letter = wait_until("the projection's dead letter", SETTLE, || async {
        dead_letters(&stack).await.into_iter().find(|l| l["source_stream"] == "order_events")
    })
    .await;
    assert_eq!(letter["consumer"], "order-api-projection");
    assert_eq!(letter["order_id"], id.as_str());
    assert_eq!(letter["deliveries"], 2);
    assert_eq!(letter["message_id"], reserved.message_id.to_string());
    assert!(
        letter["reason"].as_str().unwrap().starts_with("delivery limit reached: 2 attempts failed"),
        "{letter}"
    );
    assert!(letter["last_error"].as_str().unwrap().contains("lock"), "{letter}");

    let projection =
        js.get_stream("order_events").await.unwrap().consumer_info("order-api-projection").await.unwrap();
    assert_eq!(projection.config.max_deliver, -1, "JetStream never gives up on the projection's events");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), futures::StreamExt::next(&mut advisories))
            .await
            .is_err(),
        "no MAX_DELIVERIES advisory was needed"
    );

    lock.rollback().await.unwrap();
    assert_eq!(stack.api.status_of(&id).await.as_deref(), Some("pending"), "given up on, not applied");
    let (status, _) = review_api(&stack).review(letter["id"].as_str().unwrap(), "replay", None).await;
    assert_eq!(status, StatusCode::OK);
    stack.api.wait_for_status(&id, "reserved", SETTLE).await;
}
