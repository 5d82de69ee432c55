//! Faults beyond a lost connection: a database that is up but refuses writes, a row lock held
//! by someone else, a durable consumer that disappears, a pull in flight at shutdown, and a
//! message whose last allowed delivery succeeds. In each, no order is lost and none burns its
//! delivery attempts on a fault that is not its own.

use std::time::Duration;

use async_nats::jetstream;
use contract::streams::ORDERS_STREAM;
use shared::messaging::envelope::OutgoingMessage;
use sqlx::{Connection, PgConnection};
use test_support::{NatsServer, PostgresServer, TestDatabase, wait_until};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Turns every session of the server read-only, or writable again, as a failover to a standby
/// or an operator would: a configuration change that existing sessions pick up on reload.
async fn set_read_only(admin_url: &str, read_only: bool) {
    let mut admin = PgConnection::connect(admin_url).await.unwrap();
    // This session must stay able to change it back.
    sqlx::query("SET default_transaction_read_only = off").execute(&mut admin).await.unwrap();
    let statement = match read_only {
        true => "ALTER SYSTEM SET default_transaction_read_only = on",
        false => "ALTER SYSTEM RESET default_transaction_read_only",
    };
    sqlx::query(statement).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await.unwrap();
}

#[tokio::test]
async fn a_read_only_database_costs_each_message_at_most_one_delivery_attempt() {
    let nats = NatsServer::start().await;
    let postgres = PostgresServer::start().await;
    let db = TestDatabase::on(&postgres.admin_url());
    // 3 deliveries, 100 ms and 200 ms apart: a worker that treated "read-only" as this message's
    // own failure would exhaust every attempt within half a second.
    let worker = spawn_worker(&nats, &db, &[]).await;
    let js = nats.jetstream().await;
    let mut advisories = max_deliveries_advisories(&nats).await;
    publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    wait_for_reserved(&worker.inventory, "WIDGET-1", 1, EVENT_TIMEOUT).await;

    set_read_only(&postgres.admin_url(), true).await;
    let mut first_sequence = None;
    for _ in 0..5 {
        let message = OutgoingMessage::event(&order(&[("WIDGET-1", 2)]), "test");
        first_sequence.get_or_insert(publish(&js, &message).await);
    }
    // The worker takes a first batch, fails to store it, and stops pulling.
    wait_until("the worker has taken orders it cannot store", EVENT_TIMEOUT, || async {
        let info = js.get_stream(ORDERS_STREAM).await.ok()?.consumer_info("inventory-worker").await.ok()?;
        (info.delivered.stream_sequence >= first_sequence?).then_some(())
    })
    .await;
    // The database stays read-only several times as long as every delivery attempt would take.
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_read_only(&postgres.admin_url(), false).await;

    // Every order is reserved once the database is writable.
    wait_for_reserved(&worker.inventory, "WIDGET-1", 11, Duration::from_secs(30)).await;
    assert_no_dead_letter(&mut advisories).await;
}

#[tokio::test]
async fn a_row_lock_held_elsewhere_holds_up_only_the_orders_that_need_that_row() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let worker = spawn_worker(
        &nats,
        &db,
        &[("DATABASE_LOCK_TIMEOUT", "200ms"), ("WORKER_MAX_DELIVER", "50"), ("WORKER_BACKOFF", "100ms")],
    )
    .await;
    let js = nats.jetstream().await;
    let pool = db.pool(inventory_worker::SCHEMA).await;
    // Someone (an operator's open transaction, a stuck session) holds GADGET-1's row.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM inventory WHERE sku = 'GADGET-1' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();

    publish_order(&js, &order(&[("GADGET-1", 1)])).await;
    publish_order(&js, &order(&[("WIDGET-2", 1)])).await;

    // The order for another SKU is reserved while the lock is held.
    wait_for_reserved(&worker.inventory, "WIDGET-2", 1, EVENT_TIMEOUT).await;
    assert_eq!(worker.inventory.get("GADGET-1").await.reserved, 0, "the locked row cannot be reserved yet");

    holder.rollback().await.unwrap();
    // The held-up order is reserved once the lock is released.
    wait_for_reserved(&worker.inventory, "GADGET-1", 1, EVENT_TIMEOUT).await;
}

#[tokio::test]
async fn a_deleted_durable_consumer_is_declared_again_and_orders_flow_again() {
    let (nats, _db, worker) = start_worker().await;
    let js = nats.jetstream().await;
    publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    wait_for_reserved(&worker.inventory, "WIDGET-1", 1, EVENT_TIMEOUT).await;

    // An operator deletes the consumer (`nats consumer rm`), pulls in flight and all.
    js.get_stream(ORDERS_STREAM).await.unwrap().delete_consumer("inventory-worker").await.unwrap();
    publish_order(&js, &order(&[("WIDGET-1", 2)])).await;

    // The consumer is back, and the order reserved.
    wait_for_reserved(&worker.inventory, "WIDGET-1", 3, Duration::from_secs(20)).await;
    let info = js.get_stream(ORDERS_STREAM).await.unwrap().consumer_info("inventory-worker").await.unwrap();
    assert_eq!(info.config.max_deliver, 3, "declared again as the topology defines it");
}

/// A pull that is answered after shutdown was requested is finished and its messages are
/// processed: dropped, they would sit delivered and unacknowledged until their ack wait ran
/// out, each one delivery attempt poorer.
#[tokio::test]
async fn a_pull_in_flight_at_shutdown_loses_no_delivery_attempt() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let OwnConsumer { js, pool, consumer, .. } = own_consumer(&nats, &db).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    wait_until("the consumer waits in a long poll", EVENT_TIMEOUT, || async {
        let info = js.get_stream(ORDERS_STREAM).await.ok()?.consumer_info("inventory-worker").await.ok()?;
        (info.num_waiting > 0).then_some(())
    })
    .await;

    stop.cancel();
    let message = publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops within its long poll")
        .unwrap();

    let (pending, ack_pending, redelivered) = consumer_state(&js).await;
    assert_eq!((ack_pending, redelivered), (0, 0), "nothing left delivered and unacknowledged");
    // Either the pull took the message and it was processed, or the pull had ended first and the
    // message still waits in the stream, never delivered.
    let processed = processed_count(&pool, message.message_id).await;
    assert!((processed, pending) == (1, 0) || (processed, pending) == (0, 1), "{processed} {pending}");
}

/// On its last allowed delivery, a message's ack is confirmed by the server: lost, it would not
/// bring the message back but get a reserved order dead-lettered.
#[tokio::test]
async fn an_order_reserved_on_its_last_delivery_is_not_dead_lettered() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    // FLAKY- fails its first delivery; with 2 deliveries allowed, the second is the last.
    let worker = spawn_worker(&nats, &db, &[("WORKER_MAX_DELIVER", "2"), ("WORKER_BACKOFF", "100ms")]).await;
    let js = nats.jetstream().await;
    let mut advisories = max_deliveries_advisories(&nats).await;

    publish_order(&js, &order(&[("FLAKY-1", 1)])).await;

    // Reserved on its second delivery.
    wait_for_reserved(&worker.inventory, "FLAKY-1", 1, EVENT_TIMEOUT).await;
    wait_until("the ack is recorded", EVENT_TIMEOUT, || async {
        let (pending, ack_pending, _) = consumer_state(&js).await;
        (pending, ack_pending).eq(&(0, 0)).then_some(())
    })
    .await;
    assert_no_dead_letter(&mut advisories).await;
}

/// A Postgres host that vanished (frozen: connections open, nothing answers) must not keep the
/// batch in hand "in progress" for ever: after `WORKER_MAX_IN_PROGRESS` the worker gives it
/// back to JetStream and stops pulling until Postgres answers.
#[tokio::test]
async fn a_frozen_database_does_not_keep_messages_in_progress_past_the_cap() {
    let nats = NatsServer::start().await;
    let mut postgres = PostgresServer::start().await;
    let db = TestDatabase::on(&postgres.admin_url());
    let worker = spawn_worker(
        &nats,
        &db,
        &[("WORKER_MAX_IN_PROGRESS", "1s"), ("WORKER_MAX_DELIVER", "5"), ("WORKER_BACKOFF", "500ms")],
    )
    .await;
    let js = nats.jetstream().await;
    publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    wait_for_reserved(&worker.inventory, "WIDGET-1", 1, EVENT_TIMEOUT).await;

    postgres.freeze();
    publish_order(&js, &order(&[("WIDGET-1", 2)])).await;
    wait_until("the worker took the order", EVENT_TIMEOUT, || async {
        let (pending, ack_pending, _) = consumer_state(&js).await;
        (pending == 0 && ack_pending == 1).then_some(())
    })
    .await;
    // Another worker (here, the test) can take it: it is no longer kept in progress.
    let consumer =
        js.get_stream(ORDERS_STREAM).await.unwrap().get_consumer("inventory-worker").await.unwrap();
    let taken = wait_until("the order is given back, not held in progress", EVENT_TIMEOUT, || async {
        let consumer: jetstream::consumer::PullConsumer = consumer.clone();
        let batch = consumer.fetch().max_messages(1).messages().await.ok()?;
        futures::StreamExt::next(&mut Box::pin(batch)).await?.ok()
    })
    .await;
    assert_eq!(taken.info().unwrap().delivered, 2, "delivered to the frozen worker once, then to the test");
    postgres.thaw();

    wait_for_reserved(&worker.inventory, "WIDGET-1", 3, Duration::from_secs(30)).await;
}
