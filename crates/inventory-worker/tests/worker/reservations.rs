//! Reserving stock from `orders.new`: once per logical message, all items or none, failures
//! retried with backoff and finally left to JetStream's max-deliveries.

use contract::{
    dead_letter,
    events::{OrderRejected, OrderReserved, decode},
    streams::ORDERS_STREAM,
    subjects::ORDERS_NEW,
};
use futures::StreamExt;
use inventory_worker::reservation::Decision;
use shared::messaging::{consumer::Disposition, envelope::OutgoingMessage};
use test_support::{NatsServer, TestDatabase, wait_until};
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn an_order_reserves_its_stock_and_announces_it_with_a_reserved_event() {
    let (nats, _db, worker) = start_worker().await;
    let js = nats.jetstream().await;
    let mut events = nats.client().await.subscribe("order_events.>").await.unwrap();

    let order = order(&[("WIDGET-1", 2), ("GADGET-1", 1)]);
    publish_order(&js, &order).await;

    let event = next_message(&mut events, "an outcome event").await;
    assert_eq!(event.subject.as_str(), "order_events.reserved");
    let headers = event.headers.as_ref().unwrap();
    assert_eq!(headers.get("ce-type").unwrap().as_str(), "order_events.reserved.v1");
    assert_eq!(headers.get("ce-source").unwrap().as_str(), "/inventory-worker");
    let reserved: OrderReserved = decode(&event.payload).unwrap();
    assert_eq!(reserved.order_id, order.order_id);

    let widgets = worker.inventory.get("WIDGET-1").await;
    assert_eq!((widgets.available, widgets.reserved), (998, 2));
    let gadgets = worker.inventory.get("GADGET-1").await;
    assert_eq!((gadgets.available, gadgets.reserved), (499, 1));
    wait_until("the message is acknowledged", EVENT_TIMEOUT, || async {
        (consumer_state(&js).await == (0, 0, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_same_logical_id_stored_twice_by_the_broker_reserves_once() {
    let (nats, db, worker) = start_worker().await;
    let js = nats.jetstream().await;

    let first = publish_order(&js, &order(&[("WIDGET-1", 5)])).await;
    // The same logical message (same ce-id) under a new broker dedupe key: JetStream stores it
    // again, as it would a replay or a producer outside the duplicate window.
    let mut again = first.clone();
    again.dedupe_id = Uuid::now_v7().to_string();
    publish(&js, &again).await;

    wait_until("both copies are acknowledged", EVENT_TIMEOUT, || async {
        let (pending, ack_pending, _) = consumer_state(&js).await;
        let stream_len = js.get_stream(ORDERS_STREAM).await.ok()?.get_info().await.ok()?.state.messages;
        (pending == 0 && ack_pending == 0 && stream_len == 0).then_some(())
    })
    .await;
    let widgets = worker.inventory.get("WIDGET-1").await;
    assert_eq!((widgets.available, widgets.reserved), (995, 5), "reserved once");
    let pool = db.pool(inventory_worker::SCHEMA).await;
    assert_eq!(processed_count(&pool, first.message_id).await, 1);
    let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(outcomes, 1, "one outcome event");
}

/// The case idempotency is for: a copy that comes back after the first was processed and
/// committed (a redelivery whose ack was lost, a replay, a producer outside the duplicate
/// window), so in another batch, where only `processed_messages` can recognise it.
#[tokio::test]
async fn a_copy_arriving_after_the_first_was_processed_changes_nothing() {
    let (nats, db, worker) = start_worker().await;
    let js = nats.jetstream().await;

    let first = publish_order(&js, &order(&[("WIDGET-1", 5)])).await;
    let processed = || async {
        let stream_len = js.get_stream(ORDERS_STREAM).await.ok()?.get_info().await.ok()?.state.messages;
        (consumer_state(&js).await.1 == 0 && stream_len == 0).then_some(())
    };
    wait_until("the first copy is processed", EVENT_TIMEOUT, processed).await;
    let mut again = first.clone();
    again.dedupe_id = Uuid::now_v7().to_string();
    publish(&js, &again).await;
    wait_until("the second copy is acknowledged", EVENT_TIMEOUT, processed).await;

    let widgets = worker.inventory.get("WIDGET-1").await;
    assert_eq!((widgets.available, widgets.reserved), (995, 5), "reserved once");
    let pool = db.pool(inventory_worker::SCHEMA).await;
    let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(outcomes, 1, "one outcome event");
}

#[tokio::test]
async fn a_resend_inside_the_duplicate_window_is_dropped_by_the_broker() {
    let (nats, _db, _worker) = start_worker().await;
    let js = nats.jetstream().await;
    let message = OutgoingMessage::event(&order(&[("WIDGET-1", 1)]), "test");

    let publish_ack = |message: OutgoingMessage| {
        let js = js.clone();
        async move {
            js.publish_with_headers(ORDERS_NEW, message.nats_headers(), message.payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert!(!publish_ack(message.clone()).await.duplicate);
    assert!(publish_ack(message).await.duplicate, "same Nats-Msg-Id inside the window");
}

#[tokio::test]
async fn short_stock_rejects_the_whole_order_with_a_reason_and_is_not_retried() {
    let (nats, _db, worker) = start_worker().await;
    let js = nats.jetstream().await;
    let mut events = nats.client().await.subscribe("order_events.>").await.unwrap();

    let order = order(&[("WIDGET-1", 1), ("SCARCE-1", 11)]);
    publish_order(&js, &order).await;

    let event = next_message(&mut events, "an outcome event").await;
    assert_eq!(event.subject.as_str(), "order_events.rejected");
    let rejected: OrderRejected = decode(&event.payload).unwrap();
    assert_eq!(rejected.order_id, order.order_id);
    assert_eq!(rejected.reason, "insufficient stock for SCARCE-1: 11 requested, 10 available");
    // All or nothing: the widget in stock was not taken either.
    assert_eq!(worker.inventory.get("WIDGET-1").await.reserved, 0);
    assert_eq!(worker.inventory.get("SCARCE-1").await.available, 10);
    wait_until("the rejection is acknowledged, not redelivered", EVENT_TIMEOUT, || async {
        (consumer_state(&js).await == (0, 0, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unknown_sku_is_rejected() {
    let (nats, _db, _worker) = start_worker().await;
    let js = nats.jetstream().await;
    let mut events = nats.client().await.subscribe("order_events.rejected").await.unwrap();

    publish_order(&js, &order(&[("NO-SUCH-SKU", 1)])).await;

    let event = next_message(&mut events, "a rejection").await;
    let rejected: OrderRejected = decode(&event.payload).unwrap();
    assert_eq!(rejected.reason, "unknown SKU NO-SUCH-SKU");
}

/// Drives the consumer one batch at a time, as the worker's loop does.
#[tokio::test]
async fn a_flaky_order_fails_its_first_delivery_and_is_reserved_on_the_second() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let OwnConsumer { js, pull, consumer, .. } = own_consumer(&nats, &db).await;

    publish_order(&js, &order(&[("FLAKY-1", 3)])).await;
    let next_batch = || async {
        let batch = pull.fetch().max_messages(10).messages().await.ok()?;
        let messages: Vec<_> = batch.filter_map(|m| async { m.ok() }).collect().await;
        (!messages.is_empty()).then_some(messages)
    };

    let first =
        consumer.process(wait_until("the first delivery", EVENT_TIMEOUT, next_batch).await).await.unwrap();
    assert!(
        matches!(&first[0].disposition, Disposition::Retry { reason, .. } if reason.contains("FLAKY-1")),
        "{first:?}"
    );

    let second =
        consumer.process(wait_until("the redelivery", EVENT_TIMEOUT, next_batch).await).await.unwrap();
    assert!(matches!(second[0].disposition, Disposition::Applied(Decision::Reserved)), "{second:?}");
}

#[tokio::test]
async fn a_failing_order_exhausts_its_deliveries_and_stays_in_the_stream() {
    let (nats, _db, worker) = start_worker().await;
    let js = nats.jetstream().await;
    let client = nats.client().await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.orders_stream.inventory-worker")
        .await
        .unwrap();
    let mut last_errors = client.subscribe(dead_letter::LAST_ERROR_SUBJECT).await.unwrap();

    let message = OutgoingMessage::event(&order(&[("FAIL-1", 1)]), "test");
    let sequence = publish(&js, &message).await;

    let advisory = tokio::time::timeout(EVENT_TIMEOUT, advisories.next())
        .await
        .expect("a MAX_DELIVERIES advisory")
        .unwrap();
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
    assert_eq!(advisory["stream_seq"], sequence);
    assert_eq!(advisory["deliveries"], 3);
    // The last attempt's error was published for the dead-letter record.
    let note = next_message(&mut last_errors, "a last-error note").await;
    let note_headers = note.headers.unwrap();
    assert_eq!(note_headers.get(dead_letter::SOURCE_SEQUENCE).unwrap().as_str(), sequence.to_string());
    assert_eq!(
        note_headers.get(dead_letter::REASON).unwrap().as_str(),
        "injected failure: FAIL-1 fails every delivery"
    );

    let stream = js.get_stream(ORDERS_STREAM).await.unwrap();
    let kept = stream.get_raw_message(sequence).await.expect("the message is still in the stream");
    assert_eq!(kept.headers.get("ce-id").unwrap().as_str(), message.message_id.to_string());
    assert_eq!(worker.inventory.get("FAIL-1").await.reserved, 0);
}

#[tokio::test]
async fn a_poison_message_is_copied_to_the_dead_letter_stream_then_terminated_and_the_worker_keeps_serving() {
    let (nats, _db, worker) = start_worker().await;
    let js = nats.jetstream().await;
    let mut copies = nats.client().await.subscribe(dead_letter::POISON_SUBJECT).await.unwrap();

    let mut headers = async_nats::HeaderMap::new();
    let poison_id = Uuid::now_v7();
    headers.insert("ce-id", poison_id.to_string().as_str());
    headers.insert("ce-type", "orders.placed.v1");
    let garbage = "\u{1}definitely not an order";
    let poison =
        js.publish_with_headers(ORDERS_NEW, headers, garbage.into()).await.unwrap().await.unwrap().sequence;
    let unknown_version = OutgoingMessage {
        payload: br#"{"version": 9, "order_id": "x"}"#.to_vec(),
        ..OutgoingMessage::event(&order(&[("WIDGET-1", 1)]), "test")
    };
    let future = publish(&js, &unknown_version).await;
    publish_order(&js, &order(&[("WIDGET-1", 4)])).await;

    wait_until("the good order is reserved", EVENT_TIMEOUT, || async {
        (worker.inventory.get("WIDGET-1").await.reserved == 4).then_some(())
    })
    .await;
    let mut copied = Vec::new();
    while copied.len() < 2 {
        let copy = next_message(&mut copies, "a poison copy").await;
        let header = |name: &str| copy.headers.as_ref().unwrap().get(name).unwrap().as_str().to_owned();
        let sequence: u64 = header(dead_letter::SOURCE_SEQUENCE).parse().unwrap();
        assert_eq!(header(dead_letter::SOURCE_STREAM), "orders_stream");
        assert_eq!(header(dead_letter::SOURCE_SUBJECT), "orders.new");
        assert_eq!(header(dead_letter::CONSUMER), "inventory-worker");
        if sequence == poison {
            assert_eq!(copy.payload.as_ref(), garbage.as_bytes(), "the raw bytes");
            assert_eq!(header("ce-id"), poison_id.to_string());
            assert!(
                header(dead_letter::REASON).contains("not valid JSON"),
                "{}",
                header(dead_letter::REASON)
            );
        } else {
            assert!(header(dead_letter::REASON).contains("version 9 is not supported"));
        }
        copied.push(sequence);
    }
    copied.sort();
    assert_eq!(copied, [poison, future]);

    // Terminated once copied: a work queue deletes what is terminated, and nothing is retried.
    let stream = js.get_stream(ORDERS_STREAM).await.unwrap();
    wait_until("the poison messages are gone from orders_stream", EVENT_TIMEOUT, || async {
        let gone =
            stream.get_raw_message(poison).await.is_err() && stream.get_raw_message(future).await.is_err();
        gone.then_some(())
    })
    .await;
    assert_eq!(consumer_state(&js).await, (0, 0, 0));
}

/// The dead-letter sweep's question, "did you apply this message?": a worker answers it from
/// its record of processed messages, says what is wrong with a question that is not a message
/// ID, and no one answers for a consumer that has no process.
#[tokio::test]
async fn a_worker_tells_the_dead_letter_sweep_which_messages_it_applied() {
    use contract::dead_letter::{AppliedAnswer, applied_query};
    use shared::messaging::consumer::applied::{Asked, ask};
    let (nats, _db, _worker) = start_worker().await;
    let js = nats.jetstream().await;
    let client = nats.client().await;
    let sent = publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    let deadline = std::time::Duration::from_secs(5);

    wait_until("the worker says it applied the order", EVENT_TIMEOUT, || async {
        (ask(&client, ORDERS_STREAM, "inventory-worker", sent.message_id, deadline).await
            == Asked::Applied(true))
        .then_some(())
    })
    .await;
    assert_eq!(
        ask(&client, ORDERS_STREAM, "inventory-worker", Uuid::now_v7(), deadline).await,
        Asked::Applied(false)
    );
    let reply =
        client.request(applied_query(ORDERS_STREAM, "inventory-worker"), "order 42".into()).await.unwrap();
    let answer: AppliedAnswer = serde_json::from_slice(&reply.payload).unwrap();
    assert!(matches!(&answer, AppliedAnswer::Error(why) if why.contains("UUID")), "{answer:?}");
    assert_eq!(
        ask(&client, ORDERS_STREAM, "no-such-consumer", sent.message_id, deadline).await,
        Asked::NoOne
    );
}
