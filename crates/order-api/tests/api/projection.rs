//! The status projection: outcome events on `order_events.>` become the order's status, once.

use std::time::Duration;

use chrono::Utc;
use contract::events::{OrderRejected, OrderReserved};
use shared::messaging::envelope::OutgoingMessage;
use test_support::wait_until;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

async fn publish(app: &TestApp, message: &OutgoingMessage) {
    let js = app.nats.jetstream().await;
    js.publish_with_headers(message.subject.clone(), message.nats_headers(), message.payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn reserved(order_id: Uuid) -> OutgoingMessage {
    OutgoingMessage::event(
        &OrderReserved { version: 1, order_id, items: vec![], reserved_at: Utc::now() },
        "test",
    )
}

#[tokio::test]
async fn a_reserved_event_makes_the_order_reserved() {
    let app = spawn_app().await;
    let id = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;

    publish(&app, &reserved(id.parse().unwrap())).await;

    let body = app.api.wait_for_status(&id, "reserved", Duration::from_secs(15)).await;
    assert!(body.get("reason").is_none());
    assert!(body["updated_at"].as_str() > body["created_at"].as_str());
}

#[tokio::test]
async fn a_rejected_event_shows_its_reason() {
    let app = spawn_app().await;
    let id = app.api.place_ok("c-1", &[("SCARCE-1", 100)], None).await;
    let event = OrderRejected {
        version: 1,
        order_id: id.parse().unwrap(),
        reason: "insufficient stock for SCARCE-1".into(),
        rejected_at: Utc::now(),
    };

    publish(&app, &OutgoingMessage::event(&event, "test")).await;

    let body = app.api.wait_for_status(&id, "rejected", Duration::from_secs(15)).await;
    assert_eq!(body["reason"], "insufficient stock for SCARCE-1");
}

#[tokio::test]
async fn an_event_with_an_already_processed_id_changes_nothing() {
    let app = spawn_app().await;
    let id = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    let first = reserved(id.parse().unwrap());
    publish(&app, &first).await;
    app.api.wait_for_status(&id, "reserved", Duration::from_secs(15)).await;

    // Pretend a later state the same event ID must not overwrite, then deliver the ID again
    // with a fresh broker dedupe key, so the broker stores it and only idempotency can stop it.
    sqlx::query("UPDATE orders SET status = 'dead_lettered', reason = 'test' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let mut again = first.clone();
    again.dedupe_id = Uuid::now_v7().to_string();
    publish(&app, &again).await;
    // A marker event after it: once the marker is applied, the duplicate has been seen.
    let marker_order = app.api.place_ok("c-2", &[("WIDGET-1", 1)], None).await;
    publish(&app, &reserved(marker_order.parse().unwrap())).await;
    app.api.wait_for_status(&marker_order, "reserved", Duration::from_secs(15)).await;

    let (_, body) = app.api.get(&id).await;
    assert_eq!(body["status"], "dead_lettered", "the duplicate was ignored");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE message_id = $1")
        .bind(first.message_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn a_dead_lettered_order_can_still_become_reserved_but_a_final_status_never_changes() {
    let app = spawn_app().await;
    let replayed = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    let done = app.api.place_ok("c-2", &[("WIDGET-1", 1)], None).await;
    sqlx::query("UPDATE orders SET status = 'dead_lettered', reason = 'failed' WHERE id = $1::uuid")
        .bind(&replayed)
        .execute(&app.pool)
        .await
        .unwrap();
    publish(&app, &reserved(done.parse().unwrap())).await;
    app.api.wait_for_status(&done, "reserved", Duration::from_secs(15)).await;

    let rejection = |order_id: &str| {
        OutgoingMessage::event(
            &OrderRejected {
                version: 1,
                order_id: order_id.parse().unwrap(),
                reason: "late".into(),
                rejected_at: Utc::now(),
            },
            "test",
        )
    };
    publish(&app, &reserved(replayed.parse().unwrap())).await;
    publish(&app, &rejection(&done)).await;
    app.api.wait_for_status(&replayed, "reserved", Duration::from_secs(15)).await;

    let (_, body) = app.api.get(&done).await;
    assert_eq!(body["status"], "reserved", "reserved is final");
}

#[tokio::test]
async fn an_unreadable_event_does_not_stop_the_projection() {
    let app = spawn_app().await;
    let js = app.nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
    headers.insert("ce-type", "order_events.reserved.v1");
    js.publish_with_headers("order_events.reserved", headers, "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let id = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    publish(&app, &reserved(id.parse().unwrap())).await;
    app.api.wait_for_status(&id, "reserved", Duration::from_secs(15)).await;
}

/// `order_events` is pub/sub: a newer service may publish event types this projection does not
/// know. They are acknowledged and ignored, never dead-lettered; the events after them still
/// count.
#[tokio::test]
async fn an_unknown_event_type_is_acknowledged_and_ignored() {
    let app = spawn_app().await;
    let id = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    let mut newcomer = reserved(id.parse().unwrap());
    newcomer.subject = "order_events.gift_wrapped".into();
    newcomer.headers.insert(contract::headers::TYPE.into(), "com.example.order.gift_wrapped".into());
    let client = app.nats.client().await;
    let mut poison = client.subscribe(contract::dead_letter::POISON_SUBJECT).await.unwrap();

    publish(&app, &newcomer).await;
    publish(&app, &reserved(id.parse().unwrap())).await;

    app.api.wait_for_status(&id, "reserved", Duration::from_secs(15)).await;
    let js = app.nats.jetstream().await;
    wait_until("both events are acknowledged", Duration::from_secs(15), || async {
        let stream = js.get_stream("order_events").await.ok()?;
        let info = stream.consumer_info("order-api-projection").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), futures::StreamExt::next(&mut poison))
            .await
            .is_err(),
        "an unknown event type is not poison"
    );
}

/// The projection applies a batch of events with one statement; an order with two events in
/// the batch gets them in their order.
#[tokio::test]
async fn a_batch_of_events_is_applied_at_once_and_two_events_for_one_order_in_their_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for customer in ["c-0", "c-1", "c-2", "c-3"] {
        ids.push(app.api.place_ok(customer, &[("WIDGET-1", 1)], None).await);
    }
    // The projection's next transaction waits for this lock, while the events behind it
    // gather in the stream for the batch after.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    publish(&app, &reserved(ids[0].parse().unwrap())).await;
    app.wait_until_someone_waits_for("orders").await;
    let dead_lettered = OutgoingMessage::event(
        &contract::events::OrderDeadLettered {
            version: 1,
            order_id: ids[1].parse().unwrap(),
            reason: "failed".into(),
            dead_letter_id: Uuid::now_v7(),
            dead_lettered_at: Utc::now(),
        },
        "test",
    );
    for message in [&dead_lettered, &reserved(ids[1].parse().unwrap()), &reserved(ids[2].parse().unwrap())] {
        publish(&app, message).await;
    }
    lock.commit().await.unwrap();

    for id in &ids[..3] {
        app.api.wait_for_status(id, "reserved", Duration::from_secs(15)).await;
    }
    let (_, untouched) = app.api.get(&ids[3]).await;
    assert_eq!(untouched["status"], "pending");
}
